//! The connector: one token per name, minted once per expiry and shared.
//!
//! The path of one [`Connector::access_token`] call:
//! 1. **Memory** — a lock-free [`ArcSwapOption`] load; if the token is before its refresh point it is
//!    returned with no I/O and no allocation beyond a reference count.
//! 2. **Single flight** — otherwise the caller joins the connector's one in-flight acquisition (a
//!    shared future kept in the connector until it completes, so a cancelled caller never cancels
//!    it). All waiters get its result, success or error.
//! 3. **Store** — the flight reads the store; a record for these credentials (fingerprint match)
//!    that is still fresh is installed in memory.
//! 4. **Lease** — with a shared store, the flight takes the store's mint lease; a process that does
//!    not get it polls the store for the holder's token, never longer than the lease.
//! 5. **Mint** — one POST to the token endpoint; the record is written with a compare-and-set on the
//!    generation read in step 3, so a late writer never overwrites a newer token.

use crate::clock::{Clock, EpochMillis, duration_millis, millis_to_system_time, until};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::governor;
use crate::key;
use crate::oauth::{Grant, TokenClient, TokenResponse};
use crate::secret::{AccessTokenSecret, ExposeSecret, GrantCode, RefreshToken};
use crate::store::{CasOutcome, TokenRecord, TokenStore, TokenWrite};
use arc_swap::{ArcSwap, ArcSwapOption};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Tunables shared by every connector of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub lease_ttl: Duration,
    /// How long a caller with no valid token waits before a typed error.
    pub wait_deadline: Duration,
    /// How long a permanent failure is remembered before Zoho is asked again.
    pub negative_ttl: Duration,
    /// Backoff between failed refresh attempts: full jitter over `base · 2^n`, capped.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Immediate attempts for a caller that has no valid token (transient failures only).
    pub wait_attempts: u32,
    /// Mint governor: at most `mint_limit` mints per refresh token per `mint_window`.
    pub mint_limit: u32,
    pub mint_window: Duration,
    /// Per-user connectors kept resident per template.
    pub user_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            wait_deadline: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(120),
            wait_attempts: 3,
            mint_limit: 10,
            mint_window: Duration::from_secs(600),
            user_capacity: 10_000,
        }
    }
}

/// What every connector of one connection shares.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub store: Arc<dyn TokenStore>,
    pub clock: Arc<dyn Clock>,
    pub client: TokenClient,
    pub options: Options,
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// Read from the token store (written by this or another process).
    Store,
    /// Minted by this process.
    Minted,
}

struct TokenInner {
    secret: AccessTokenSecret,
    header: String,
    issued_at: Option<EpochMillis>,
    refresh_at: EpochMillis,
    expires_at: EpochMillis,
    api_domain: Option<Arc<str>>,
    generation: Option<u64>,
    source: TokenSource,
}

/// A valid access token. Cheap to clone (one reference count).
///
/// `Debug` never shows the token; read it with [`ExposeSecret::expose_secret`] or
/// [`authorization_header`](Self::authorization_header).
#[derive(Clone)]
pub struct AccessToken(Arc<TokenInner>);

impl AccessToken {
    /// The token as a redacting secret.
    pub fn secret(&self) -> &AccessTokenSecret {
        &self.0.secret
    }

    /// The value of the `Authorization` header Zoho APIs expect: `Zoho-oauthtoken <token>`.
    /// It contains the token: do not log it.
    pub fn authorization_header(&self) -> &str {
        &self.0.header
    }

    /// When the token stops working.
    pub fn expires_at(&self) -> SystemTime {
        millis_to_system_time(self.0.expires_at)
    }

    /// When the connector will mint a replacement.
    pub fn refresh_at(&self) -> SystemTime {
        millis_to_system_time(self.0.refresh_at)
    }

    /// When the token request was sent, if known (unknown for records written by the official SDKs).
    pub fn issued_at(&self) -> Option<SystemTime> {
        self.0.issued_at.map(millis_to_system_time)
    }

    /// The API domain to call with this token (from the token response, else the data centre's).
    pub fn api_domain(&self) -> Option<&str> {
        self.0.api_domain.as_deref()
    }

    /// Where this token came from.
    pub fn source(&self) -> TokenSource {
        self.0.source
    }

    /// The store generation of the record this token was read from or written to, if any.
    pub fn generation(&self) -> Option<u64> {
        self.0.generation
    }
}

impl ExposeSecret for AccessToken {
    fn expose_secret(&self) -> &str {
        self.0.secret.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.0.secret)
            .field("expires_at", &self.0.expires_at)
            .field("refresh_at", &self.0.refresh_at)
            .field("api_domain", &self.0.api_domain)
            .field("source", &self.0.source)
            .finish()
    }
}

/// Overrides for [`Connector::exchange_code`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CodeExchange {
    /// The token endpoint to exchange the code at (default: the connector's `auth_url`).
    pub token_url: Option<String>,
    /// The `redirect_uri` to send (default: the connector's `redirect_url`, if any).
    pub redirect_uri: Option<String>,
}

impl CodeExchange {
    /// Exchange at `token_url`.
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = Some(url.into());
        self
    }

    /// Send this `redirect_uri`.
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }
}

/// The result of [`Connector::generate_access_token`].
#[derive(Debug, Clone)]
pub struct GeneratedTokens {
    /// The access token minted by the exchange (already cached by the connector).
    pub access_token: AccessToken,
    /// The refresh token Zoho issued, if it issued one (`access_type=offline`). The connector uses
    /// it from now on; keep it to configure the connector next time.
    pub refresh_token: Option<RefreshToken>,
}

/// The credentials currently used to mint, and what derives from them.
struct Credentials {
    refresh_token: Option<RefreshToken>,
    key: String,
    fingerprint: String,
    /// Where a refresh token obtained at run time is kept (independent of the refresh token).
    refresh_key: String,
}

impl Credentials {
    /// Where the mint governor counts mints for this refresh token.
    fn governor_key(&self) -> String {
        format!("{}mints:{}", key::KEY_PREFIX, &self.fingerprint[..16])
    }

    fn new(name: &str, config: &ConnectorConfig, refresh_token: Option<RefreshToken>) -> Self {
        let rt = refresh_token
            .as_ref()
            .map(|t| t.expose_secret())
            .unwrap_or("");
        let key = key::sdk_key(
            name,
            &[
                rt,
                &config.client_id,
                config.client_secret.expose_secret(),
                &config.auth_url,
                &config.refresh_url,
                config.redirect_url.as_deref().unwrap_or(""),
            ],
        );
        let fingerprint = key::fingerprint(&config.client_id, rt, &config.refresh_url);
        let refresh_key = key::refresh_token_key(name, &config.client_id, &config.refresh_url);
        Self {
            refresh_token,
            key,
            fingerprint,
            refresh_key,
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<AccessToken>>>;

struct ConnectorInner {
    /// Shared by a template and its per-user connectors.
    config: Arc<ConnectorConfig>,
    /// The connector's name (`<template>.<user part>` for per-user connectors).
    name: String,
    /// For per-user connectors: a hash of the user id, kept in refresh-token records.
    subject: Option<Box<str>>,
    /// Per-user connectors made from this one, bounded (see [`Connector::for_user`]).
    users: std::sync::OnceLock<quick_cache::sync::Cache<String, Connector>>,
    runtime: Arc<Runtime>,
    creds: ArcSwap<Credentials>,
    current: ArcSwapOption<TokenInner>,
    flight: Mutex<Option<Flight>>,
    /// Epoch ms before which no refresh is attempted; `IN_FLIGHT` while one runs in the background.
    next_attempt_at: AtomicI64,
    /// Allocated on the first failure only, so healthy connectors stay small.
    health: Mutex<Option<Box<Health>>>,
    waiters: AtomicUsize,
    /// Epoch ms of the last `access_token` call, to the second (for keep-warm).
    last_used: AtomicI64,
    metrics: Arc<Metrics>,
}

const IN_FLIGHT: i64 = i64::MAX;

/// What the connector remembers about its recent refresh attempts.
#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    last_error: Option<(Error, EpochMillis)>,
    /// The error a waiting caller gets while `next_attempt_at` is in the future.
    blocking_error: Option<Error>,
}

/// Counters registered once per connector (install your `metrics` recorder before building the
/// connection).
struct Metrics {
    memory_hits: metrics::Counter,
    store_hits: metrics::Counter,
    misses: metrics::Counter,
    mints_ok: metrics::Counter,
    mints_failed: metrics::Counter,
    served_stale: metrics::Counter,
    governor_refusals: metrics::Counter,
    store_errors: metrics::Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let c = |metric: &'static str, extra: Option<(&'static str, &'static str)>| {
            let connector = name.to_owned();
            match extra {
                Some((k, v)) => metrics::counter!(metric, "connector" => connector, k => v),
                None => metrics::counter!(metric, "connector" => connector),
            }
        };
        Self {
            memory_hits: c("catalyst_connectors_hits_total", Some(("layer", "memory"))),
            store_hits: c("catalyst_connectors_hits_total", Some(("layer", "store"))),
            misses: c("catalyst_connectors_misses_total", None),
            mints_ok: c("catalyst_connectors_mints_total", Some(("outcome", "ok"))),
            mints_failed: c(
                "catalyst_connectors_mints_total",
                Some(("outcome", "error")),
            ),
            served_stale: c("catalyst_connectors_served_stale_total", None),
            governor_refusals: c("catalyst_connectors_governor_refusals_total", None),
            store_errors: c("catalyst_connectors_store_errors_total", None),
        }
    }
}

/// Why a flight runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A caller has no valid token and waits: a stale token from the store is good enough, and
    /// transient failures are retried a few times at once.
    Wait,
    /// The token is stale (or about to be): refresh it, nobody waits.
    Background,
    /// `force_refresh`: mint even if the store has a fresh token.
    Force,
}

/// What a flight did at the token endpoint.
enum Attempt {
    /// No request was needed (the store had a token).
    None,
    Minted,
    Failed(Error),
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
            .field("name", &self.inner.name)
            .field("key", &self.inner.creds.load().key)
            .finish_non_exhaustive()
    }
}

enum StoreRead {
    /// A fresh token for these credentials.
    Fresh(AccessToken),
    /// A valid token for these credentials, past its refresh point.
    Stale(AccessToken),
    /// Nothing usable; the generation to compare-and-set against.
    Miss(Option<u64>),
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
        Self {
            inner: Arc::new(ConnectorInner {
                config,
                name,
                subject,
                users: std::sync::OnceLock::new(),
                runtime,
                creds: ArcSwap::from_pointee(creds),
                current: ArcSwapOption::empty(),
                flight: Mutex::new(None),
                next_attempt_at: AtomicI64::new(0),
                health: Mutex::new(None),
                waiters: AtomicUsize::new(0),
                last_used: AtomicI64::new(0),
                metrics,
            }),
        }
    }

    /// The connector's name (`<template>.<user part>` for per-user connectors).
    pub fn name(&self) -> &str {
        &self.inner.name
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
        if self.inner.subject.is_some() {
            return Err(Error::InvalidUser {
                connector: self.inner.name.clone(),
                reason: "this is already a per-user connector; call for_user on the template"
                    .into(),
            });
        }
        if user_id.is_empty() {
            return Err(Error::InvalidUser {
                connector: self.inner.name.clone(),
                reason: "the user id is empty".into(),
            });
        }
        let capacity = self.inner.runtime.options.user_capacity;
        let users = self
            .inner
            .users
            .get_or_init(|| quick_cache::sync::Cache::new(capacity));
        users.get_or_insert_with(user_id, || Ok(self.make_user(user_id)))
    }

    fn make_user(&self, user_id: &str) -> Connector {
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
        let name = format!("{}.{part}", self.inner.name);
        let creds = Credentials::new(&name, &self.inner.config, None);
        Self::assemble(
            Arc::clone(&self.inner.config),
            name,
            Some(digest.into_boxed_str()),
            creds,
            Arc::clone(&self.inner.runtime),
            Arc::clone(&self.inner.metrics),
        )
    }

    /// Forgets a user's resident connector (its records stay in the store).
    pub(crate) fn evict_user(&self, user_id: &str) {
        if let Some(users) = self.inner.users.get() {
            users.remove(user_id);
        }
    }

    /// How many per-user connectors are resident.
    pub fn resident_users(&self) -> usize {
        self.inner.users.get().map_or(0, |u| u.len())
    }

    /// The runtime's clock and store (for the consent flow).
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The connector's configuration.
    pub fn config(&self) -> &ConnectorConfig {
        &self.inner.config
    }

    /// The longest store key this connector uses (its refresh-token record's).
    pub(crate) fn longest_key_len(&self) -> usize {
        let creds = self.inner.creds.load();
        creds
            .key
            .chars()
            .count()
            .max(creds.refresh_key.chars().count())
    }

    /// The store key of this connector's token: `ZC_CONN_<name>:<hash>`, as the official SDKs use.
    pub fn cache_key(&self) -> String {
        self.inner.creds.load().key.clone()
    }

    /// Returns a valid access token: from memory when fresh, else from the store, else by minting
    /// one. Concurrent callers share one mint.
    ///
    /// A token past its refresh point but not expired (*stale*) is returned at once while one
    /// refresh runs in the background; a failing refresh never fails a caller while the token is
    /// valid. Callers wait only when no valid token exists, and at most the connection's wait
    /// deadline.
    pub async fn access_token(&self) -> Result<AccessToken> {
        let now = self.inner.runtime.clock.now_millis();
        self.touch(now);
        {
            let guard = self.inner.current.load();
            if let Some(token) = guard.as_ref() {
                if now < token.refresh_at {
                    self.inner.metrics.memory_hits.increment(1);
                    return Ok(AccessToken(Arc::clone(token)));
                }
                if now < token.expires_at {
                    self.inner.metrics.served_stale.increment(1);
                    let token = AccessToken(Arc::clone(token));
                    drop(guard);
                    self.refresh_in_background(now);
                    return Ok(token);
                }
            }
        }
        // Boxed so the hot path's future stays small.
        Box::pin(self.wait_for_token(now)).await
    }

    /// Mints a new token now, even if a fresh one is cached, and caches it. Joins an acquisition
    /// already in flight instead of starting a second one. Ignores the backoff after failures,
    /// but not the mint governor.
    pub async fn force_refresh(&self) -> Result<AccessToken> {
        self.inner.current.store(None);
        self.flight_or_start(Mode::Force).await
    }

    /// A snapshot of the connector's state: token, schedule, failures, governor, waiters.
    pub async fn status(&self) -> ConnectorStatus {
        let now = self.inner.runtime.clock.now_millis();
        let current = self.inner.current.load_full();
        let state = match &current {
            None => TokenState::Empty,
            Some(t) if now < t.refresh_at => TokenState::Fresh,
            Some(t) if now < t.expires_at => TokenState::Stale,
            Some(_) => TokenState::Expired,
        };
        let next = self.inner.next_attempt_at.load(Ordering::Acquire);
        let last_error = self
            .health()
            .as_ref()
            .and_then(|h| h.last_error.clone())
            .map(|(e, at)| (e, millis_to_system_time(at)));
        let creds = self.inner.creds.load_full();
        let mints = governor::recent_mints(
            &*self.inner.runtime.store,
            &creds.governor_key(),
            now,
            self.inner.runtime.options.mint_window,
        )
        .await
        .len();
        ConnectorStatus {
            name: self.inner.name.clone(),
            state,
            source: current.as_ref().map(|t| t.source),
            expires_at: current
                .as_ref()
                .map(|t| millis_to_system_time(t.expires_at)),
            refresh_at: current
                .as_ref()
                .map(|t| millis_to_system_time(t.refresh_at)),
            last_error,
            next_attempt_at: (next > now && next != IN_FLIGHT).then(|| millis_to_system_time(next)),
            refreshing: self.lock_flight().is_some(),
            mints_in_window: mints,
            mint_limit: self.inner.runtime.options.mint_limit,
            waiters: self.inner.waiters.load(Ordering::Relaxed),
        }
    }

    /// Whether a refresh is running now.
    pub fn is_refreshing(&self) -> bool {
        self.lock_flight().is_some()
    }

    /// Starts a background refresh if the token is within `lead` of its refresh point (or past
    /// it) and no refresh is running or backing off. Used by keep-warm.
    pub(crate) fn refresh_if_due(&self, now: EpochMillis, lead: Duration) -> bool {
        let guard = self.inner.current.load();
        let Some(token) = guard.as_ref() else {
            return false;
        };
        let lead = duration_millis(lead);
        if now < token.refresh_at.saturating_sub(lead) || now >= token.expires_at {
            return false;
        }
        drop(guard);
        self.refresh_in_background(now)
    }

    /// Epoch ms of the last `access_token` call (to the second), 0 if never.
    pub(crate) fn last_used(&self) -> EpochMillis {
        self.inner.last_used.load(Ordering::Relaxed)
    }

    /// The token in memory's `(refresh_at, expires_at)`, if any.
    pub(crate) fn schedule(&self) -> Option<(EpochMillis, EpochMillis)> {
        self.inner
            .current
            .load()
            .as_ref()
            .map(|t| (t.refresh_at, t.expires_at))
    }

    fn touch(&self, now: EpochMillis) {
        // Written at most once a second, so the hot path stays a read.
        if now - self.inner.last_used.load(Ordering::Relaxed) >= 1000 {
            self.inner.last_used.store(now, Ordering::Relaxed);
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Option<Box<Health>>> {
        self.inner.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_flight(&self) -> std::sync::MutexGuard<'_, Option<Flight>> {
        self.inner.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the right to start a background refresh and starts it. Returns whether it did.
    fn refresh_in_background(&self, now: EpochMillis) -> bool {
        let next = self.inner.next_attempt_at.load(Ordering::Acquire);
        if now < next {
            return false; // backing off, or one is running
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return false; // no runtime to run it on: the next waiting caller refreshes
        }
        if self
            .inner
            .next_attempt_at
            .compare_exchange(next, IN_FLIGHT, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false; // another caller claimed it
        }
        tracing::debug!(connector = %self.inner.name, "refreshing in the background");
        // The flight's own driver task runs it; nobody waits here.
        drop(self.flight_or_start(Mode::Background));
        true
    }

    /// The path of a caller with no valid token.
    async fn wait_for_token(&self, now: EpochMillis) -> Result<AccessToken> {
        let next = self.inner.next_attempt_at.load(Ordering::Acquire);
        if next != IN_FLIGHT && now < next {
            // A recent attempt failed: answer with its error now rather than hammer the endpoint.
            if let Some(e) = self
                .health()
                .as_ref()
                .and_then(|h| h.blocking_error.clone())
            {
                return Err(e);
            }
        }
        self.inner.metrics.misses.increment(1);
        let waiting = WaiterGuard::new(&self.inner.waiters);
        let deadline = self.inner.runtime.options.wait_deadline;
        let flight = self.flight_or_start(Mode::Wait);
        let result = match tokio::time::timeout(deadline, flight).await {
            Ok(r) => r,
            Err(_) => Err(Error::DeadlineExceeded {
                connector: self.inner.name.clone(),
                deadline,
            }),
        };
        drop(waiting);
        if let Ok(token) = &result {
            let now = self.inner.runtime.clock.now_millis();
            if now >= token.0.refresh_at {
                // A stale token from the store: serve it, refresh behind it.
                self.refresh_in_background(now);
            }
        }
        result
    }

    /// Joins the flight in progress, or starts one and makes sure it runs to the end. The flight
    /// is a shared future kept in the connector's slot until it completes. A waiting starter polls
    /// it once at once: a flight that finishes there (a store hit) costs no task; one that must wait
    /// (a mint, a store write) gets a driver task on the Tokio runtime, so a caller that gives up
    /// (deadline, cancellation) leaves it running. Waiting callers poll it too, so its result
    /// reaches them without a thread hop.
    fn flight_or_start(&self, mode: Mode) -> Flight {
        let mut slot = self.lock_flight();
        if let Some(f) = slot.as_ref() {
            return f.clone();
        }
        let this = self.clone();
        let f = async move { this.run_flight(mode).await }.boxed().shared();
        *slot = Some(f.clone());
        drop(slot);
        // A background refresh never runs in the caller that triggered it.
        if mode == Mode::Background || f.clone().now_or_never().is_none() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let driver = f.clone();
                handle.spawn(async move {
                    let _ = driver.await;
                });
            }
        }
        f
    }

    async fn run_flight(&self, mode: Mode) -> Result<AccessToken> {
        let options = &self.inner.runtime.options;
        let mut attempt = 0;
        let (result, outcome) = loop {
            attempt += 1;
            let (result, outcome) = self.acquire(mode).await;
            let retry = mode == Mode::Wait
                && attempt < options.wait_attempts
                && matches!(&outcome, Attempt::Failed(e) if is_transient_failure(e));
            if !retry {
                break (result, outcome);
            }
            let ceiling = Duration::from_millis(100).saturating_mul(1 << attempt.min(10));
            tokio::time::sleep(full_jitter(ceiling)).await;
        };
        self.record_outcome(outcome);
        *self.lock_flight() = None;
        result
    }

    /// Updates the schedule after a flight: when the next attempt may run, and what waiting
    /// callers are told until then.
    fn record_outcome(&self, outcome: Attempt) {
        let options = &self.inner.runtime.options;
        let now = self.inner.runtime.clock.now_millis();
        let mut guard = self.health();
        let next = match outcome {
            Attempt::None => {
                if let Some(health) = guard.as_mut() {
                    health.blocking_error = None;
                }
                let current = self.inner.next_attempt_at.load(Ordering::Acquire);
                if current == IN_FLIGHT { 0 } else { current }
            }
            Attempt::Minted => {
                self.inner.metrics.mints_ok.increment(1);
                if let Some(health) = guard.as_mut() {
                    health.consecutive_failures = 0;
                    health.blocking_error = None;
                }
                0
            }
            Attempt::Failed(e) => {
                let health = guard.get_or_insert_with(Box::default);
                let delay = match &e {
                    Error::Throttled { retry_after, .. } => {
                        retry_after.unwrap_or(options.mint_window)
                    }
                    e if is_transient_failure(e) => {
                        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                        let exp = health.consecutive_failures.saturating_sub(1).min(20);
                        full_jitter(
                            options
                                .backoff_base
                                .saturating_mul(1 << exp)
                                .min(options.backoff_cap),
                        )
                    }
                    Error::MissingRefreshToken { .. } => Duration::ZERO,
                    _ => options.negative_ttl,
                };
                tracing::debug!(connector = %self.inner.name, retry_in_ms = duration_millis(delay), "next refresh attempt scheduled");
                health.last_error = Some((e.clone(), now));
                health.blocking_error = Some(e);
                now.saturating_add(duration_millis(delay))
            }
        };
        self.inner.next_attempt_at.store(next, Ordering::Release);
    }

    /// Forgets `token` if it is still the current one (in memory, and in the store if the stored
    /// record is the one it came from), e.g. after an API rejected it with 401. Returns whether it
    /// was current. Many callers reporting the same bad token cause one refresh, not many: after
    /// the first, the token is no longer current.
    pub async fn invalidate_token(&self, token: &AccessToken) -> Result<bool> {
        let current = self.inner.current.load_full();
        let is_current = current
            .as_ref()
            .is_some_and(|c| c.secret.expose_secret() == token.expose_secret());
        if !is_current {
            return Ok(false);
        }
        let previous = self.inner.current.compare_and_swap(&current, None);
        let swapped = match (&*previous, &current) {
            (Some(p), Some(c)) => Arc::ptr_eq(p, c),
            _ => false,
        };
        if !swapped {
            return Ok(false);
        }
        if let Some(generation) = token.generation() {
            self.delete_stored(Some(generation)).await?;
        }
        tracing::info!(connector = %self.inner.name, "token rejected by the API; it will be replaced");
        Ok(true)
    }

    /// Drops this process's in-memory copy of the token only; the next call reads the store. Useful
    /// when another process is known to have written a newer token, and in benchmarks.
    pub fn evict_memory(&self) {
        self.inner.current.store(None);
    }

    /// Forgets the current token in memory and in the store (e.g. after an API answered 401), so the
    /// next call mints a new one. A newer token written meanwhile by another process is kept.
    pub async fn invalidate(&self) -> Result<()> {
        let old = self.inner.current.swap(None);
        self.delete_stored(old.as_ref().and_then(|t| t.generation))
            .await?;
        tracing::debug!(connector = %self.inner.name, "token invalidated");
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
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        let issued_at = runtime.clock.now_millis();
        let token_url = with.token_url.as_deref().unwrap_or(&config.auth_url);
        let redirect_uri = with
            .redirect_uri
            .as_deref()
            .or(config.redirect_url.as_deref());
        let response = runtime
            .client
            .request(
                &self.inner.name,
                token_url,
                &config.client_id,
                &config.client_secret,
                Grant::Code { code, redirect_uri },
            )
            .await
            .inspect_err(
                |e| tracing::warn!(connector = %self.inner.name, error = %e, "code exchange failed"),
            )?;
        let refresh_token = response.refresh_token.clone();
        let creds = self.inner.creds.load_full();
        let expected = self.stored_generation(&creds).await;
        let access_token = self
            .save_minted(&creds, response, issued_at, expected)
            .await;
        tracing::info!(connector = %self.inner.name, got_refresh_token = refresh_token.is_some(), "grant code exchanged");
        Ok(GeneratedTokens {
            access_token,
            refresh_token,
        })
    }

    /// The token this process would serve without asking the token endpoint: from memory, else
    /// from the store (installed in memory). `None` when neither holds a valid token.
    pub async fn cached_token(&self) -> Result<Option<AccessToken>> {
        let now = self.inner.runtime.clock.now_millis();
        if let Some(t) = self
            .inner
            .current
            .load_full()
            .filter(|t| now < t.expires_at)
        {
            return Ok(Some(AccessToken(t)));
        }
        let creds = match self.resolve_credentials().await {
            Ok(c) => c,
            Err(Error::MissingRefreshToken { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match self.read_store(&creds).await {
            StoreRead::Fresh(t) | StoreRead::Stale(t) => Some(self.install(&creds, t)),
            StoreRead::Miss(_) => None,
        })
    }

    /// Whether a refresh token is available: configured, obtained in this process, or kept in
    /// the store.
    pub async fn has_refresh_token(&self) -> bool {
        self.resolve_credentials()
            .await
            .is_ok_and(|c| c.refresh_token.is_some())
    }

    /// Revokes the refresh token at Zoho (`{refresh_url}/revoke`; this also kills its access
    /// tokens) and forgets it and the token locally: in memory and in the store. A refresh token
    /// written in the connector's config cannot be removed from there: delete it yourself.
    pub async fn revoke(&self) -> Result<()> {
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        let creds = self.resolve_credentials().await?;
        let Some(rt) = creds.refresh_token.clone() else {
            return Err(Error::MissingRefreshToken {
                connector: self.inner.name.clone(),
            });
        };
        let url = format!("{}/revoke", config.refresh_url.trim_end_matches('/'));
        runtime.client.revoke(&self.inner.name, &url, &rt).await?;
        self.inner.current.store(None);
        for key in [&creds.key, &creds.refresh_key] {
            if let Err(e) = runtime.store.delete(key, None).await {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.inner.name, error = %e, "revoked at Zoho, but could not delete the local record");
            }
        }
        let forgotten = Arc::new(Credentials::new(&self.inner.name, config, None));
        self.inner.creds.store(forgotten);
        tracing::info!(connector = %self.inner.name, "refresh token revoked");
        Ok(())
    }

    /// Deletes the stored token record (only at `generation`, when given).
    async fn delete_stored(&self, generation: Option<u64>) -> Result<bool> {
        let key = self.inner.creds.load().key.clone();
        self.inner
            .runtime
            .store
            .delete(&key, generation)
            .await
            .map_err(|source| Error::Store {
                connector: self.inner.name.clone(),
                source,
            })
    }

    /// The generation stored under the credentials' key, when the store can tell.
    async fn stored_generation(&self, creds: &Credentials) -> Option<u64> {
        match self.inner.runtime.store.get(&creds.key).await {
            Ok(v) => v.map(|v| v.generation),
            Err(e) => {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.inner.name, error = %e, "token store read failed");
                None
            }
        }
    }

    /// The credentials to mint with: the configured refresh token, else one kept in the store
    /// (obtained earlier by a code exchange, possibly by another process).
    async fn resolve_credentials(&self) -> Result<Arc<Credentials>> {
        let creds = self.inner.creds.load_full();
        if creds.refresh_token.is_some() {
            return Ok(creds);
        }
        let name = &self.inner.name;
        let missing = || Error::MissingRefreshToken {
            connector: name.clone(),
        };
        let stored = match self.inner.runtime.store.get(&creds.refresh_key).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(missing()),
            Err(e) => {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %name, error = %e, "cannot read the stored refresh token");
                return Err(missing());
            }
        };
        let Some(rt) = RefreshRecord::parse(
            &stored.data,
            &self.inner.config,
            self.inner.subject.as_deref(),
        ) else {
            tracing::warn!(connector = %name, "ignoring a stored refresh token that is damaged or belongs to other credentials");
            return Err(missing());
        };
        tracing::debug!(connector = %name, "using the refresh token kept in the store");
        let fresh = Arc::new(Credentials::new(
            &self.inner.name,
            &self.inner.config,
            Some(rt),
        ));
        // Only replace credentials nobody changed meanwhile.
        let previous = self
            .inner
            .creds
            .compare_and_swap(&creds, Arc::clone(&fresh));
        if Arc::ptr_eq(&*previous, &creds) {
            Ok(fresh)
        } else {
            Ok(self.inner.creds.load_full())
        }
    }

    /// Store, then lease, then governor, then mint. Runs once per attempt of a flight. Returns
    /// what callers get, and what happened at the token endpoint.
    async fn acquire(&self, mode: Mode) -> (Result<AccessToken>, Attempt) {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let creds = match self.resolve_credentials().await {
            Ok(c) => c,
            Err(e) => return (Err(e.clone()), Attempt::Failed(e)),
        };
        let Some(refresh_token) = creds.refresh_token.clone() else {
            let e = Error::MissingRefreshToken {
                connector: name.clone(),
            };
            return (Err(e.clone()), Attempt::Failed(e));
        };
        // A valid token to fall back on if the refresh fails.
        let mut fallback = self
            .inner
            .current
            .load_full()
            .filter(|t| runtime.clock.now_millis() < t.expires_at)
            .map(AccessToken);
        // A background refresh accepts only a token newer than the one it replaces.
        let floor = fallback.as_ref().map_or(i64::MIN, |t| t.0.refresh_at);
        let read = self.read_store(&creds).await;
        if let Some(token) = acceptable(&read, mode, floor) {
            self.inner.metrics.store_hits.increment(1);
            return (Ok(self.install(&creds, token)), Attempt::None);
        }
        let mut expected = read.generation();
        if let StoreRead::Fresh(token) | StoreRead::Stale(token) = read {
            if mode != Mode::Force
                && fallback
                    .as_ref()
                    .is_none_or(|f| token.0.expires_at > f.0.expires_at)
            {
                fallback = Some(token);
            }
        }

        let owner = format!("{}:{:016x}", std::process::id(), rand::random::<u64>());
        let mut leased = false;
        if runtime.store.is_shared() {
            match self.wait_for_lease(&creds, &owner, mode, floor).await {
                LeaseWait::Token(token) => return (Ok(self.install(&creds, token)), Attempt::None),
                LeaseWait::Leased(generation) => {
                    leased = true;
                    expected = generation;
                }
                LeaseWait::StoreFailed => {}
            }
        }

        let outcome = self.mint(&creds, &refresh_token, expected).await;
        if leased {
            if let Err(e) = runtime.store.release_lease(&creds.key, &owner).await {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %name, error = %e, "could not release the mint lease; it will expire");
            }
        }
        match outcome {
            Ok(token) => (Ok(token), Attempt::Minted),
            Err(e) => match fallback.filter(|t| runtime.clock.now_millis() < t.0.expires_at) {
                // Serve on failure: the old token is still good.
                Some(token) if mode != Mode::Force => {
                    tracing::warn!(connector = %name, error = %e, "refresh failed; serving the current token until it expires");
                    (Ok(self.install(&creds, token)), Attempt::Failed(e))
                }
                _ => (Err(e.clone()), Attempt::Failed(e)),
            },
        }
    }

    /// Asks the governor, then the token endpoint; records the mint.
    async fn mint(
        &self,
        creds: &Arc<Credentials>,
        refresh_token: &RefreshToken,
        expected: Option<u64>,
    ) -> Result<AccessToken> {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let options = &runtime.options;
        let now = runtime.clock.now_millis();
        if options.mint_limit > 0 {
            let mints = governor::recent_mints(
                &*runtime.store,
                &creds.governor_key(),
                now,
                options.mint_window,
            )
            .await;
            if mints.len() >= options.mint_limit as usize {
                let frees_at = mints
                    .first()
                    .copied()
                    .unwrap_or(now)
                    .saturating_add(duration_millis(options.mint_window));
                let retry_after = until(now, frees_at, Duration::from_secs(1));
                self.inner.metrics.governor_refusals.increment(1);
                tracing::warn!(connector = %name, mints = mints.len(), retry_after_secs = retry_after.as_secs(), "mint governor: limit reached for this refresh token");
                return Err(Error::Throttled {
                    connector: name.clone(),
                    code: "mint limit".into(),
                    description: Some(format!(
                        "{} tokens minted for this refresh token in the last {} s (limit {}); a slot frees in {} s",
                        mints.len(),
                        options.mint_window.as_secs(),
                        options.mint_limit,
                        retry_after.as_secs()
                    )),
                    retry_after: Some(retry_after),
                });
            }
        }
        let issued_at = now;
        tracing::debug!(connector = %name, "minting a token");
        let response = runtime
            .client
            .request(
                name,
                &self.inner.config.refresh_url,
                &self.inner.config.client_id,
                &self.inner.config.client_secret,
                Grant::Refresh(refresh_token),
            )
            .await
            .inspect_err(|e| {
                self.inner.metrics.mints_failed.increment(1);
                tracing::warn!(connector = %name, error = %e, "token mint failed");
            })?;
        tracing::info!(connector = %name, lifetime_secs = response.lifetime.as_secs(), "token minted");
        if options.mint_limit > 0 {
            governor::record_mint(
                &*runtime.store,
                &creds.governor_key(),
                issued_at,
                options.mint_window,
            )
            .await;
        }
        Ok(self.save_minted(creds, response, issued_at, expected).await)
    }

    async fn read_store(&self, creds: &Credentials) -> StoreRead {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let stored = match runtime.store.get(&creds.key).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::debug!(connector = %name, "token miss in store");
                return StoreRead::Miss(None);
            }
            Err(e) => {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %name, error = %e, "token store read failed; minting without it");
                return StoreRead::Miss(None);
            }
        };
        let record = match TokenRecord::from_json(&stored.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, "ignoring a damaged token record; it will be overwritten");
                return StoreRead::Miss(Some(stored.generation));
            }
        };
        let sdk_record = record.fingerprint.is_none() && runtime.store.accepts_unfingerprinted();
        if !sdk_record && record.fingerprint.as_deref() != Some(creds.fingerprint.as_str()) {
            tracing::debug!(connector = %name, "token record was minted for other credentials; ignoring it");
            return StoreRead::Miss(Some(stored.generation));
        }
        let now = runtime.clock.now_millis();
        if now >= record.expires_at {
            tracing::debug!(connector = %name, "token in store has expired");
            return StoreRead::Miss(Some(stored.generation));
        }
        let stale = now >= record.refresh_at;
        tracing::debug!(connector = %name, stale, "token hit in store");
        let token = self.token_from_record(record, Some(stored.generation), TokenSource::Store);
        if stale {
            StoreRead::Stale(token)
        } else {
            StoreRead::Fresh(token)
        }
    }

    async fn wait_for_lease(
        &self,
        creds: &Credentials,
        owner: &str,
        mode: Mode,
        floor: EpochMillis,
    ) -> LeaseWait {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let ttl = runtime.options.lease_ttl;
        let mut delay = Duration::from_millis(10);
        loop {
            match runtime
                .store
                .try_acquire_lease(&creds.key, owner, ttl)
                .await
            {
                Ok(true) => {
                    // Someone may have written between our read and the lease: read again.
                    let read = self.read_store(creds).await;
                    if let Some(token) = acceptable(&read, mode, floor) {
                        let _ = runtime.store.release_lease(&creds.key, owner).await;
                        return LeaseWait::Token(token);
                    }
                    return LeaseWait::Leased(read.generation());
                }
                Ok(false) => {
                    tracing::debug!(connector = %name, "another process holds the mint lease; waiting for its token");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                    let read = self.read_store(creds).await;
                    if let Some(token) = acceptable(&read, mode, floor) {
                        return LeaseWait::Token(token);
                    }
                }
                Err(e) => {
                    self.inner.metrics.store_errors.increment(1);
                    tracing::warn!(connector = %name, error = %e, "mint lease unavailable; minting without it");
                    return LeaseWait::StoreFailed;
                }
            }
        }
    }

    /// Computes the token's timing, writes it to the store (compare-and-set) and installs it.
    async fn save_minted(
        &self,
        creds: &Arc<Credentials>,
        response: TokenResponse,
        issued_at: EpochMillis,
        expected: Option<u64>,
    ) -> AccessToken {
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        // A new refresh token (code exchange, or a provider that rotates them) becomes the
        // connector's, and is written in the same store transaction as the token.
        let (creds, expected, refresh_record) = match &response.refresh_token {
            Some(rt) if creds.refresh_token.as_ref() != Some(rt) => {
                let fresh = Arc::new(Credentials::new(&self.inner.name, config, Some(rt.clone())));
                self.inner.creds.store(Arc::clone(&fresh));
                let expected = self.stored_generation(&fresh).await;
                let record =
                    RefreshRecord::to_json(rt, config, self.inner.subject.as_deref(), issued_at);
                (fresh, expected, Some(record))
            }
            _ => (Arc::clone(creds), expected, None),
        };
        let creds = &creds;
        let lifetime = config
            .expires_in
            .map_or(response.lifetime, |cap| cap.min(response.lifetime));
        let (refresh_at, expires_at) = refresh_schedule(issued_at, lifetime, config.refresh_in);
        let record = TokenRecord {
            access_token: response.access_token,
            refresh_at,
            expires_at,
            lifetime_secs: lifetime.as_secs(),
            api_domain: response.api_domain.or_else(|| config.api_domain.clone()),
            issued_at: Some(issued_at),
            fingerprint: Some(creds.fingerprint.clone()),
        };
        let now = runtime.clock.now_millis();
        let ttl = until(now, expires_at, Duration::from_secs(1));
        let data = record.to_json();
        let mut write = TokenWrite::new(&creds.key, expected, &data, ttl);
        if let Some(r) = &refresh_record {
            write = write.with_refresh(&creds.refresh_key, r);
        }
        let generation = match runtime.store.compare_and_set(write).await {
            Ok(CasOutcome::Written { generation }) => Some(generation),
            Ok(CasOutcome::Conflict { current }) => {
                tracing::debug!(connector = %self.inner.name, ?current, "a newer token was stored meanwhile; keeping it there");
                None
            }
            Err(e) => {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.inner.name, error = %e, "could not write the token to the store; serving it from memory");
                None
            }
        };
        let token = self.token_from_record(record, generation, TokenSource::Minted);
        self.install(creds, token)
    }

    fn token_from_record(
        &self,
        record: TokenRecord,
        generation: Option<u64>,
        source: TokenSource,
    ) -> AccessToken {
        let header = format!("Zoho-oauthtoken {}", record.access_token.expose_secret());
        AccessToken(Arc::new(TokenInner {
            secret: record.access_token,
            header,
            issued_at: record.issued_at,
            refresh_at: record.refresh_at,
            expires_at: record.expires_at,
            api_domain: record
                .api_domain
                .or_else(|| self.inner.config.api_domain.clone())
                .map(Arc::from),
            generation,
            source,
        }))
    }

    /// Makes `token` the connector's current one, unless the credentials changed meanwhile.
    fn install(&self, creds: &Arc<Credentials>, token: AccessToken) -> AccessToken {
        if Arc::ptr_eq(&self.inner.creds.load(), creds) {
            self.inner.current.store(Some(Arc::clone(&token.0)));
        }
        token
    }
}

/// The stored form of a refresh token obtained at run time.
struct RefreshRecord;

impl RefreshRecord {
    fn to_json(
        rt: &RefreshToken,
        config: &ConnectorConfig,
        subject: Option<&str>,
        obtained_at: EpochMillis,
    ) -> String {
        serde_json::json!({
            "refresh_token": rt.expose_secret(),
            "client_id": config.client_id,
            "refresh_url": config.refresh_url,
            "subject": subject,
            "obtained_at": obtained_at,
        })
        .to_string()
    }

    /// The refresh token, if the record is intact and belongs to this client, endpoint and user.
    fn parse(data: &str, config: &ConnectorConfig, subject: Option<&str>) -> Option<RefreshToken> {
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        let matches = v.get("client_id")?.as_str()? == config.client_id
            && v.get("refresh_url")?.as_str()? == config.refresh_url
            && v.get("subject").and_then(|s| s.as_str()) == subject;
        let rt = v.get("refresh_token")?.as_str().filter(|s| !s.is_empty())?;
        matches.then(|| RefreshToken::new(rt))
    }
}

impl StoreRead {
    /// The generation to compare-and-set against.
    fn generation(&self) -> Option<u64> {
        match self {
            StoreRead::Fresh(t) | StoreRead::Stale(t) => t.generation(),
            StoreRead::Miss(g) => *g,
        }
    }
}

/// The stored token a flight of `mode` may use instead of minting: a waiting caller takes any
/// valid one; a background refresh only a fresh one newer than the token it replaces (`floor` is
/// that token's refresh point); a forced refresh none.
fn acceptable(read: &StoreRead, mode: Mode, floor: EpochMillis) -> Option<AccessToken> {
    match (mode, read) {
        (Mode::Wait, StoreRead::Fresh(t) | StoreRead::Stale(t)) => Some(t.clone()),
        (Mode::Background, StoreRead::Fresh(t)) if t.0.refresh_at > floor => Some(t.clone()),
        _ => None,
    }
}

/// Counts a waiting caller for as long as it lives.
struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Failures worth retrying soon: the endpoint may answer next time.
fn is_transient_failure(e: &Error) -> bool {
    matches!(
        e,
        Error::Transient { .. }
            | Error::MalformedResponse { .. }
            | Error::Store { .. }
            | Error::DeadlineExceeded { .. }
    )
}

/// A uniformly random duration in `[0, ceiling]` ("full jitter").
fn full_jitter(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
}

enum LeaseWait {
    Token(AccessToken),
    Leased(Option<u64>),
    StoreFailed,
}

/// `(refresh_at, expires_at)` for a token requested at `issued_at` that lives `lifetime`.
///
/// The refresh point leaves a margin of `min(15 min, lifetime / 4)`: the official SDKs' 15 minutes
/// for hour-long tokens, while short-lived tokens are still used for most of their life.
/// `refresh_in` moves the refresh point, never beyond the expiry.
pub(crate) fn refresh_schedule(
    issued_at: EpochMillis,
    lifetime: Duration,
    refresh_in: Option<Duration>,
) -> (EpochMillis, EpochMillis) {
    let expires_at = issued_at.saturating_add(duration_millis(lifetime));
    let refresh_after = match refresh_in {
        Some(r) => r.min(lifetime),
        None => lifetime - (lifetime / 4).min(Duration::from_secs(15 * 60)),
    };
    (
        issued_at.saturating_add(duration_millis(refresh_after)),
        expires_at,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_margins() {
        let s = |l, r: Option<u64>| {
            refresh_schedule(0, Duration::from_secs(l), r.map(Duration::from_secs))
        };
        assert_eq!(s(3600, None), (2_700_000, 3_600_000));
        assert_eq!(s(600, None), (450_000, 600_000));
        assert_eq!(s(60, None), (45_000, 60_000));
        assert_eq!(s(3600, Some(600)), (600_000, 3_600_000));
        assert_eq!(s(3600, Some(7200)), (3_600_000, 3_600_000));
    }
}
