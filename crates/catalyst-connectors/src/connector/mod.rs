//! The connector: one token per name, minted once per expiry and shared.
//!
//! [`Connector`] is a thin façade over three parts that own their state:
//! - the **token cell** ([`cell`]): the token in memory, the refresh-point arithmetic and the
//!   schedule (background refresh claims, backoff, negative cache), on the injectable clock;
//! - the **acquisition** ([`acquire`]): store read → lease → governor → mint → compare-and-set →
//!   shared health, with the credentials it mints with ([`grants`], [`health`]);
//! - the **governor** ([`crate::governor`]): the mint log and the decision.
//!
//! The path of one [`Connector::access_token`] call:
//! 1. **Memory** — the cell's lock-free load; a token before its refresh point is returned with
//!    no I/O and no allocation beyond a reference count. A stale one is returned too, and the
//!    cell's claim starts one background refresh.
//! 2. **Single flight** — otherwise the caller joins the connector's one in-flight acquisition
//!    ([`flight`]: a shared future kept until it completes, so a cancelled caller never cancels
//!    it), at most the wait deadline. All waiters get its result, success or error.
//! 3. **Acquisition** — store, lease, governor, mint (see [`acquire`]); the façade installs the
//!    token in the cell and tells the cell what happened, which sets the next attempt time.

mod acquire;
mod cell;
mod credentials;
pub(crate) mod flight;
mod grants;
mod health;
pub(crate) mod lease;
mod metrics;
mod rekey;
pub(crate) mod runtime;
mod token;
mod waiting;

pub use credentials::{CodeExchange, GeneratedTokens};
pub use health::FailureRecord;
pub use rekey::Rekeyed;
pub use token::{AccessToken, TokenSource};

use self::acquire::{Acquisition, Got, Want};
use self::cell::{Lookup, TokenCell};
use self::credentials::Credentials;
use self::flight::{FlightOwner, SingleFlight};
use self::metrics::Metrics;
use self::runtime::Runtime;
use crate::clock::{EpochMillis, millis_to_system_time};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::key;
use crate::secret::GrantCode;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

struct ConnectorInner {
    cell: TokenCell,
    acq: Acquisition,
    flight: SingleFlight<Result<AccessToken>>,
    /// Per-user connectors made from this one, bounded (see [`Connector::for_user`]).
    users: std::sync::OnceLock<quick_cache::sync::Cache<String, Connector>>,
}

/// The state of a connector's token, as seen by [`Connector::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenState {
    /// No token in memory.
    Empty,
    /// Before its refresh point.
    Fresh,
    /// Past its refresh point, still valid: served while a refresh runs.
    Stale,
    /// Past its expiry.
    Expired,
}

/// A snapshot of a connector's state, from [`Connector::status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectorStatus {
    /// The connector's name.
    pub name: String,
    /// Fresh, stale, expired or empty.
    pub state: TokenState,
    /// Where the token in memory came from.
    pub source: Option<TokenSource>,
    /// When the token in memory expires.
    pub expires_at: Option<SystemTime>,
    /// When the token in memory is due for refresh.
    pub refresh_at: Option<SystemTime>,
    /// The last refresh failure and when it happened (kept after a later success).
    pub last_error: Option<(Error, SystemTime)>,
    /// When the next refresh may be attempted, if a failure or the governor delays it.
    pub next_attempt_at: Option<SystemTime>,
    /// Whether a refresh is running now.
    pub refreshing: bool,
    /// Mints recorded for this refresh token in the governor's window.
    pub mints_in_window: usize,
    /// The governor's limit.
    pub mint_limit: u32,
    /// Callers waiting for a token right now.
    pub waiters: usize,
    /// The last refresh failure recorded in the store by any process (this one included), if
    /// no process has minted since. Compare its time with the token's to see whether it is
    /// resolved.
    pub recorded_failure: Option<FailureRecord>,
}

/// A named connector. Cheap to clone; all clones from one [`Connection`](crate::Connection) share
/// one token.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.inner.acq.name)
            .field("key", &self.inner.acq.creds().key)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub(crate) fn new(config: ConnectorConfig, runtime: Arc<Runtime>) -> Self {
        let name = config.name.clone();
        let creds = Credentials::new(&name, &config, config.refresh_token.clone());
        let metrics = Arc::new(Metrics::new(&name));
        Self::assemble(Arc::new(config), name, None, creds, runtime, metrics)
    }

    fn assemble(
        config: Arc<ConnectorConfig>,
        name: String,
        subject: Option<Box<str>>,
        creds: Credentials,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cell = TokenCell::new(Arc::clone(&runtime.clock), runtime.options.policy());
        let acq = Acquisition::new(config, name, subject, creds, runtime, metrics);
        Self {
            inner: Arc::new(ConnectorInner {
                cell,
                acq,
                flight: SingleFlight::new(),
                users: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The connector's name (`<template>.<user part>` for per-user connectors).
    pub fn name(&self) -> &str {
        &self.inner.acq.name
    }

    /// The runtime's clock and store (for the consent flow).
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.acq.runtime
    }

    /// The connector's configuration.
    pub fn config(&self) -> &ConnectorConfig {
        &self.inner.acq.config
    }

    /// The longest store key this connector uses (its refresh-token record's).
    pub(crate) fn longest_key_len(&self) -> usize {
        let creds = self.inner.acq.creds();
        creds
            .key
            .chars()
            .count()
            .max(creds.refresh_key.chars().count())
    }

    /// The store key of this connector's token: `ZC_CONN_<name>:<hash>`, as the official SDKs use.
    pub fn cache_key(&self) -> String {
        self.inner.acq.creds().key.clone()
    }

    /// Returns a valid access token: from memory when fresh, else from the store, else by minting
    /// one. Concurrent callers share one mint.
    ///
    /// A token past its refresh point but not expired (*stale*) is returned at once while one
    /// refresh runs in the background; a failing refresh never fails a caller while the token is
    /// valid. Callers wait only when no valid token exists, and at most the connection's wait
    /// deadline.
    pub async fn access_token(&self) -> Result<AccessToken> {
        let cell = &self.inner.cell;
        let now = cell.now();
        cell.touch(now);
        match cell.lookup(now) {
            Lookup::Fresh(token) => {
                self.inner.acq.metrics.memory_hits.increment(1);
                Ok(token)
            }
            Lookup::Stale(token) => {
                self.inner.acq.metrics.served_stale.increment(1);
                self.refresh_in_background(now);
                Ok(token)
            }
            // Boxed so the hot path's future stays small.
            Lookup::Missing => Box::pin(self.wait_for_token(now)).await,
        }
    }

    /// Mints a new token now, even if a fresh one is cached, and caches it. Joins an acquisition
    /// already in flight instead of starting a second one. Ignores the backoff after failures,
    /// but not the mint governor.
    pub async fn force_refresh(&self) -> Result<AccessToken> {
        self.inner.cell.clear();
        self.flight_or_start(Want::New).await
    }

    /// A snapshot of the connector's state: token, schedule, failures, governor, waiters.
    pub async fn status(&self) -> ConnectorStatus {
        let (cell, acq) = (&self.inner.cell, &self.inner.acq);
        let now = cell.now();
        let current = cell.current();
        let state = match &current {
            None => TokenState::Empty,
            Some(t) if now < t.0.refresh_at => TokenState::Fresh,
            Some(t) if now < t.0.expires_at => TokenState::Stale,
            Some(_) => TokenState::Expired,
        };
        let governor = acq.governor();
        let (mints, _) = governor
            .mints(&*acq.runtime.store, &acq.creds().governor_key(), now)
            .await;
        ConnectorStatus {
            name: acq.name.clone(),
            state,
            source: current.as_ref().map(|t| t.0.source),
            expires_at: current.as_ref().map(AccessToken::expires_at),
            refresh_at: current.as_ref().map(AccessToken::refresh_at),
            last_error: cell
                .last_error()
                .map(|(e, at)| (e, millis_to_system_time(at))),
            next_attempt_at: cell.next_attempt(now).map(millis_to_system_time),
            refreshing: self.inner.flight.is_running(),
            mints_in_window: mints.len(),
            mint_limit: governor.limit(),
            waiters: cell.waiters(),
            recorded_failure: acq.recorded_failure().await,
        }
    }

    /// Whether a refresh is running now.
    pub fn is_refreshing(&self) -> bool {
        self.inner.flight.is_running()
    }

    /// The last failure recorded in the store by any process, if any (behind Redis, the newer of
    /// its record and this host's: one written while Redis was down is only here).
    pub async fn recorded_failure(&self) -> Option<FailureRecord> {
        self.inner.acq.recorded_failure().await
    }

    /// The token this process would serve without asking the token endpoint: from memory, else
    /// from the store (installed in memory). `None` when neither holds a valid token.
    pub async fn cached_token(&self) -> Result<Option<AccessToken>> {
        if let Some(token) = self.inner.cell.valid(self.inner.cell.now()) {
            return Ok(Some(token));
        }
        Ok(self.inner.acq.stored().await?.map(|got| self.install(got)))
    }

    /// Forgets `token` if it is still the current one (in memory, and in the store if the stored
    /// record is the one it came from), e.g. after an API rejected it with 401. Returns whether it
    /// was current. Many callers reporting the same bad token cause one refresh, not many: after
    /// the first, the token is no longer current.
    pub async fn invalidate_token(&self, token: &AccessToken) -> Result<bool> {
        if !self.inner.cell.forget_if_current(token) {
            return Ok(false);
        }
        self.inner
            .acq
            .reject(crate::secret::ExposeSecret::expose_secret(token.secret()));
        if let Some(generation) = token.generation() {
            self.inner.acq.delete_stored(Some(generation)).await?;
        }
        tracing::info!(connector = %self.name(), "token rejected by the API; it will be replaced");
        Ok(true)
    }

    /// [`invalidate_token`](Self::invalidate_token) for a token known only by its value (a
    /// client in another language, or another process, reporting the token that got a 401).
    /// Returns whether it was the current one; a token already replaced is not replaced again.
    pub async fn invalidate_token_value(&self, access_token: &str) -> Result<bool> {
        use crate::secret::ExposeSecret as _;
        match self.inner.cell.current() {
            Some(current) if current.expose_secret() == access_token => {
                self.invalidate_token(&current).await
            }
            _ => Ok(false),
        }
    }

    /// For long-lived processes (an agent, a server): notices what other processes changed in the
    /// store since this connector last read it — a refresh token replaced (`connector exchange`,
    /// `authorize`) or removed (`revoke`), the token record deleted or replaced — and drops the
    /// token in memory, so the next call reads the store (or refuses, if the refresh token is
    /// gone). Two store reads; call it every second or so. Returns whether anything changed.
    pub async fn follow_store(&self) -> bool {
        let (cell, acq) = (&self.inner.cell, &self.inner.acq);
        if acq.follow_stored_refresh_token().await {
            cell.clear();
            return true;
        }
        let Some(generation) = cell.current().and_then(|t| t.generation()) else {
            return false;
        };
        let key = acq.creds().key.clone();
        let stored = match acq.runtime.store.get(&key).await {
            Ok(v) => v.map(|v| v.generation),
            Err(_) => return false,
        };
        if stored == Some(generation) {
            return false;
        }
        tracing::info!(connector = %self.name(), "the stored token was deleted or replaced in another process; reading the store again");
        cell.clear();
        true
    }

    /// Drops this process's in-memory copy of the token only; the next call reads the store. Useful
    /// when another process is known to have written a newer token, and in benchmarks.
    pub fn evict_memory(&self) {
        self.inner.cell.clear();
    }

    /// Forgets the current token in memory and in the store (e.g. after an API answered 401), so the
    /// next call mints a new one. A newer token written meanwhile by another process is kept.
    pub async fn invalidate(&self) -> Result<()> {
        let old = self.inner.cell.clear();
        self.inner
            .acq
            .delete_stored(old.as_ref().and_then(AccessToken::generation))
            .await?;
        tracing::debug!(connector = %self.name(), "token invalidated");
        Ok(())
    }

    /// Exchanges an authorization (grant) code for tokens at `auth_url` (the `authorization_code`
    /// grant; `redirect_uri` is sent when the connector has a `redirect_url`, as server-based
    /// clients need, and omitted for Self Client codes). The refresh token returned becomes this
    /// connector's and is handed back to keep.
    pub async fn generate_access_token(&self, code: &GrantCode) -> Result<GeneratedTokens> {
        self.exchange_code(code, CodeExchange::default()).await
    }

    /// [`generate_access_token`](Self::generate_access_token) with overrides: the token endpoint
    /// of the data centre named in the redirect (`accounts-server`), and the `redirect_uri` the
    /// authorization request used.
    pub async fn exchange_code(
        &self,
        code: &GrantCode,
        with: CodeExchange,
    ) -> Result<GeneratedTokens> {
        let (got, refresh_token) = self.inner.acq.exchange_code(code, with).await?;
        Ok(GeneratedTokens {
            access_token: self.install(got),
            refresh_token,
        })
    }

    /// Whether the token store holds a refresh token for this connector (obtained by a code
    /// exchange, e.g. `connector authorize`), whatever the config says. A refresh token in the
    /// config takes precedence over it.
    pub async fn has_stored_refresh_token(&self) -> bool {
        self.inner.acq.has_stored_refresh_token().await
    }

    /// Whether a refresh token is available: configured, obtained in this process, or kept in
    /// the store.
    pub async fn has_refresh_token(&self) -> bool {
        self.inner
            .acq
            .resolve_credentials()
            .await
            .is_ok_and(|c| c.refresh_token.is_some())
    }

    /// Revokes the refresh token at Zoho (`{refresh_url}/revoke`; this also kills its access
    /// tokens) and forgets it and the token locally: in memory and in the store. A refresh token
    /// written in the connector's config cannot be removed from there: delete it yourself.
    pub async fn revoke(&self) -> Result<()> {
        self.inner.acq.revoke().await?;
        self.inner.cell.clear();
        Ok(())
    }

    /// Rewrites this connector's stored records — its access token and the refresh token kept in
    /// the store — with the connection's current encryption key: after a key is rotated (new key
    /// first, old one after it; see [`EncryptionKeys`](crate::EncryptionKeys)), or set on a store
    /// that was unencrypted (open the connection with
    /// [`EncryptionKeys::reading_plaintext`](crate::EncryptionKeys::reading_plaintext)). Mints
    /// first when no live token is stored (one mint, counted as usual). Records written later use
    /// the current key anyway.
    pub async fn rekey(&self) -> Result<Rekeyed> {
        self.access_token().await?;
        self.inner.acq.rekey().await
    }

    /// The connector for `user_id` made from this one (the template): same client, URLs and
    /// scopes; its own refresh token (from the store, where [`complete_consent`] put it), its own
    /// token and its own keys in every store. Connectors for recently used users stay resident
    /// (at most the connection's `user_capacity`); an evicted user's connector is rebuilt on next
    /// use and reloads from the store. Lookup is O(1); each user has its own single flight.
    ///
    /// The store name is `<template>.<user>`, with user ids longer than 12 characters, or not
    /// made of letters, digits, `_` and `-`, replaced by a hash (so keys fit Catalyst Cache's 50
    /// characters). Refresh-token records carry a full hash of the user id, and token records a
    /// fingerprint of the user's refresh token, so even colliding keys never serve one user's
    /// token to another.
    ///
    /// [`complete_consent`]: crate::users::ConsentFlow::complete
    pub fn for_user(&self, user_id: &str) -> Result<Connector> {
        let acq = &self.inner.acq;
        let invalid = |reason: &str| Error::InvalidUser {
            connector: acq.name.clone(),
            reason: reason.into(),
        };
        if acq.subject.is_some() {
            return Err(invalid(
                "this is already a per-user connector; call for_user on the template",
            ));
        }
        if user_id.is_empty() {
            return Err(invalid("the user id is empty"));
        }
        let capacity = acq.runtime.options.user_capacity;
        let users = self
            .inner
            .users
            .get_or_init(|| quick_cache::sync::Cache::new(capacity));
        users.get_or_insert_with(user_id, || Ok(self.make_user(user_id)))
    }

    fn make_user(&self, user_id: &str) -> Connector {
        let acq = &self.inner.acq;
        let plain = user_id.len() <= 12
            && user_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let digest = key::user_subject(user_id);
        let part = if plain {
            user_id.to_owned()
        } else {
            format!("h{}", &digest[..11])
        };
        let name = format!("{}.{part}", acq.name);
        let creds = Credentials::new(&name, &acq.config, None);
        Self::assemble(
            Arc::clone(&acq.config),
            name,
            Some(digest.into_boxed_str()),
            creds,
            Arc::clone(&acq.runtime),
            Arc::clone(&acq.metrics),
        )
    }

    /// Forgets a user's resident connector (its records stay in the store).
    pub(crate) fn evict_user(&self, user_id: &str) {
        if let Some(users) = self.inner.users.get() {
            users.remove(user_id);
        }
    }

    /// Revokes `user_id`'s refresh token at Zoho, deletes that user's records and forgets the
    /// user's resident connector: what "disconnect my Zoho account" does.
    pub async fn disconnect_user(&self, user_id: &str) -> Result<()> {
        self.for_user(user_id)?.revoke().await?;
        self.evict_user(user_id);
        Ok(())
    }

    /// The resident per-user connectors whose token was asked for within `within` (to the
    /// second): what keep-warm refreshes and a host agent keeps in step with the store.
    pub fn users_used_within(&self, within: Duration) -> Vec<Connector> {
        let Some(users) = self.inner.users.get() else {
            return Vec::new();
        };
        let now = self.inner.acq.runtime.clock.now_millis();
        let within = crate::clock::duration_millis(within);
        users
            .iter()
            .map(|(_, user)| user)
            .filter(|user| {
                let used = user.last_used();
                used != 0 && now - used <= within
            })
            .collect()
    }

    /// How many per-user connectors are resident.
    pub fn resident_users(&self) -> usize {
        self.inner.users.get().map_or(0, |u| u.len())
    }

    /// Starts a background refresh if the token is within `lead` of its refresh point (or past
    /// it) and no refresh is running or backing off. Used by keep-warm.
    pub(crate) fn refresh_if_due(&self, now: EpochMillis, lead: Duration) -> bool {
        self.inner.cell.due(now, lead) && self.refresh_in_background(now)
    }

    /// Epoch ms of the last `access_token` call (to the second), 0 if never.
    pub(crate) fn last_used(&self) -> EpochMillis {
        self.inner.cell.last_used()
    }

    /// The token in memory's `(refresh_at, expires_at)`, if any.
    pub(crate) fn schedule(&self) -> Option<(EpochMillis, EpochMillis)> {
        self.inner.cell.schedule()
    }

    /// Makes an obtained token the one in memory, unless the credentials changed meanwhile.
    fn install(&self, got: Got) -> AccessToken {
        if self.inner.acq.is_current(&got.creds) {
            self.inner.cell.install(&got.token);
        }
        got.token
    }
}

#[cfg(feature = "catalyst")]
#[async_trait::async_trait]
impl crate::store::CatalystTokenProvider for Connector {
    async fn catalyst_token(&self) -> Result<crate::AccessTokenSecret> {
        Ok(self.access_token().await?.secret().clone())
    }
}

impl FlightOwner for Connector {
    type Output = Result<AccessToken>;

    fn single_flight(&self) -> &SingleFlight<Result<AccessToken>> {
        &self.inner.flight
    }
}
