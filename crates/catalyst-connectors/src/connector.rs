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

use crate::clock::{Clock, EpochMillis, millis_to_system_time};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::key;
use crate::oauth::{Grant, TokenClient, TokenResponse};
use crate::secret::{AccessTokenSecret, ExposeSecret, GrantCode, RefreshToken};
use crate::store::{CasOutcome, TokenRecord, TokenStore, TokenWrite};
use arc_swap::{ArcSwap, ArcSwapOption};
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Tunables shared by every connector of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub lease_ttl: Duration,
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
    fn new(config: &ConnectorConfig, refresh_token: Option<RefreshToken>) -> Self {
        let rt = refresh_token
            .as_ref()
            .map(|t| t.expose_secret())
            .unwrap_or("");
        let key = key::sdk_key(
            &config.name,
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
        let refresh_key =
            key::refresh_token_key(&config.name, &config.client_id, &config.refresh_url);
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
    config: ConnectorConfig,
    runtime: Arc<Runtime>,
    creds: ArcSwap<Credentials>,
    current: ArcSwapOption<TokenInner>,
    flight: Mutex<Option<Flight>>,
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
            .field("name", &self.inner.config.name)
            .field("key", &self.inner.creds.load().key)
            .finish_non_exhaustive()
    }
}

enum StoreRead {
    /// A fresh token for these credentials.
    Fresh(AccessToken),
    /// Nothing usable; the generation to compare-and-set against.
    Miss(Option<u64>),
}

impl Connector {
    pub(crate) fn new(config: ConnectorConfig, runtime: Arc<Runtime>) -> Self {
        let creds = Credentials::new(&config, config.refresh_token.clone());
        Self {
            inner: Arc::new(ConnectorInner {
                config,
                runtime,
                creds: ArcSwap::from_pointee(creds),
                current: ArcSwapOption::empty(),
                flight: Mutex::new(None),
            }),
        }
    }

    /// The connector's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The connector's configuration.
    pub fn config(&self) -> &ConnectorConfig {
        &self.inner.config
    }

    /// The store key of this connector's token: `ZC_CONN_<name>:<hash>`, as the official SDKs use.
    pub fn cache_key(&self) -> String {
        self.inner.creds.load().key.clone()
    }

    /// Returns a valid access token: from memory when fresh, else from the store, else by minting
    /// one. Concurrent callers share one mint.
    pub async fn access_token(&self) -> Result<AccessToken> {
        if let Some(token) = self.fresh_in_memory() {
            tracing::trace!(connector = %self.inner.config.name, "token hit in memory");
            return Ok(token);
        }
        self.join_flight(false).await
    }

    /// Mints a new token now, even if a fresh one is cached, and caches it. Joins an acquisition
    /// already in flight instead of starting a second one.
    pub async fn force_refresh(&self) -> Result<AccessToken> {
        self.inner.current.store(None);
        self.join_flight(true).await
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
        let key = self.inner.creds.load().key.clone();
        let expected = old.as_ref().and_then(|t| t.generation);
        self.inner
            .runtime
            .store
            .delete(&key, expected)
            .await
            .map_err(|source| Error::Store {
                connector: self.inner.config.name.clone(),
                source,
            })?;
        tracing::debug!(connector = %self.inner.config.name, "token invalidated");
        Ok(())
    }

    /// Exchanges an authorization (grant) code for tokens at `auth_url` (the `authorization_code`
    /// grant; `redirect_uri` is sent when the connector has a `redirect_url`, as server-based
    /// clients need, and omitted for Self Client codes). The refresh token returned becomes this
    /// connector's and is handed back to keep.
    pub async fn generate_access_token(&self, code: &GrantCode) -> Result<GeneratedTokens> {
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        let issued_at = runtime.clock.now_millis();
        let response = runtime
            .client
            .request(
                &config.name,
                &config.auth_url,
                &config.client_id,
                &config.client_secret,
                Grant::Code {
                    code,
                    redirect_uri: config.redirect_url.as_deref(),
                },
            )
            .await
            .inspect_err(
                |e| tracing::warn!(connector = %config.name, error = %e, "code exchange failed"),
            )?;
        let refresh_token = response.refresh_token.clone();
        let creds = self.inner.creds.load_full();
        let expected = self.stored_generation(&creds).await;
        let access_token = self
            .save_minted(&creds, response, issued_at, expected)
            .await;
        tracing::info!(connector = %config.name, got_refresh_token = refresh_token.is_some(), "grant code exchanged");
        Ok(GeneratedTokens {
            access_token,
            refresh_token,
        })
    }

    /// The generation stored under the credentials' key, when the store can tell.
    async fn stored_generation(&self, creds: &Credentials) -> Option<u64> {
        match self.inner.runtime.store.get(&creds.key).await {
            Ok(v) => v.map(|v| v.generation),
            Err(e) => {
                tracing::warn!(connector = %self.inner.config.name, error = %e, "token store read failed");
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
        let name = &self.inner.config.name;
        let missing = || Error::MissingRefreshToken {
            connector: name.clone(),
        };
        let stored = match self.inner.runtime.store.get(&creds.refresh_key).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(missing()),
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, "cannot read the stored refresh token");
                return Err(missing());
            }
        };
        let Some(rt) = RefreshRecord::parse(&stored.data, &self.inner.config) else {
            tracing::warn!(connector = %name, "ignoring a stored refresh token that is damaged or belongs to other credentials");
            return Err(missing());
        };
        tracing::debug!(connector = %name, "using the refresh token kept in the store");
        let fresh = Arc::new(Credentials::new(&self.inner.config, Some(rt)));
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

    fn fresh_in_memory(&self) -> Option<AccessToken> {
        let guard = self.inner.current.load();
        let token = guard.as_ref()?;
        (self.inner.runtime.clock.now_millis() < token.refresh_at)
            .then(|| AccessToken(Arc::clone(token)))
    }

    async fn join_flight(&self, force: bool) -> Result<AccessToken> {
        let flight = {
            let mut slot = self.inner.flight.lock().unwrap_or_else(|p| p.into_inner());
            if !force {
                if let Some(token) = self.fresh_in_memory() {
                    return Ok(token);
                }
            }
            match slot.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let f = self.start_flight(force);
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        flight.await
    }

    /// The flight is a shared future kept in the connector's slot until it completes: whichever
    /// waiter polls it drives it, so it needs no task of its own, and a cancelled caller does not
    /// cancel it (the slot keeps it, and the next caller resumes it).
    fn start_flight(&self, force: bool) -> Flight {
        let this = self.clone();
        async move {
            let result = this.acquire(force).await;
            *this.inner.flight.lock().unwrap_or_else(|p| p.into_inner()) = None;
            result
        }
        .boxed()
        .shared()
    }

    /// Store, then lease, then mint. Runs once per flight.
    async fn acquire(&self, force: bool) -> Result<AccessToken> {
        let name = &self.inner.config.name;
        let runtime = &self.inner.runtime;
        let creds = self.resolve_credentials().await?;
        let Some(refresh_token) = creds.refresh_token.clone() else {
            return Err(Error::MissingRefreshToken {
                connector: name.clone(),
            });
        };
        let mut expected = match self.read_store(&creds).await {
            StoreRead::Fresh(token) if !force => return Ok(self.install(&creds, token)),
            StoreRead::Fresh(token) => token.generation(),
            StoreRead::Miss(generation) => generation,
        };

        let owner = format!("{}:{:016x}", std::process::id(), rand::random::<u64>());
        let mut leased = false;
        if runtime.store.is_shared() {
            match self.wait_for_lease(&creds, &owner, force).await {
                LeaseWait::Token(token) => return Ok(self.install(&creds, token)),
                LeaseWait::Leased(generation) => {
                    leased = true;
                    expected = generation;
                }
                LeaseWait::StoreFailed => {}
            }
        }

        let issued_at = runtime.clock.now_millis();
        tracing::debug!(connector = %name, "minting a token");
        let result = runtime
            .client
            .request(
                name,
                &self.inner.config.refresh_url,
                &self.inner.config.client_id,
                &self.inner.config.client_secret,
                Grant::Refresh(&refresh_token),
            )
            .await;
        let outcome = match result {
            Ok(response) => {
                tracing::info!(connector = %name, lifetime_secs = response.lifetime.as_secs(), "token minted");
                Ok(self
                    .save_minted(&creds, response, issued_at, expected)
                    .await)
            }
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, "token mint failed");
                Err(e)
            }
        };
        if leased {
            if let Err(e) = runtime.store.release_lease(&creds.key, &owner).await {
                tracing::warn!(connector = %name, error = %e, "could not release the mint lease; it will expire");
            }
        }
        outcome
    }

    async fn read_store(&self, creds: &Credentials) -> StoreRead {
        let name = &self.inner.config.name;
        let runtime = &self.inner.runtime;
        let stored = match runtime.store.get(&creds.key).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::debug!(connector = %name, "token miss in store");
                return StoreRead::Miss(None);
            }
            Err(e) => {
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
        if record.fingerprint.as_deref() != Some(creds.fingerprint.as_str()) {
            tracing::debug!(connector = %name, "token record was minted for other credentials; ignoring it");
            return StoreRead::Miss(Some(stored.generation));
        }
        if runtime.clock.now_millis() >= record.refresh_at {
            tracing::debug!(connector = %name, "token in store is due for refresh");
            return StoreRead::Miss(Some(stored.generation));
        }
        tracing::debug!(connector = %name, "token hit in store");
        StoreRead::Fresh(self.token_from_record(
            record,
            Some(stored.generation),
            TokenSource::Store,
        ))
    }

    async fn wait_for_lease(&self, creds: &Credentials, owner: &str, force: bool) -> LeaseWait {
        let name = &self.inner.config.name;
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
                    return match self.read_store(creds).await {
                        StoreRead::Fresh(token) if !force => {
                            let _ = runtime.store.release_lease(&creds.key, owner).await;
                            LeaseWait::Token(token)
                        }
                        StoreRead::Fresh(token) => LeaseWait::Leased(token.generation()),
                        StoreRead::Miss(generation) => LeaseWait::Leased(generation),
                    };
                }
                Ok(false) => {
                    tracing::debug!(connector = %name, "another process holds the mint lease; waiting for its token");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                    if let StoreRead::Fresh(token) = self.read_store(creds).await {
                        if !force {
                            return LeaseWait::Token(token);
                        }
                    }
                }
                Err(e) => {
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
                let fresh = Arc::new(Credentials::new(config, Some(rt.clone())));
                self.inner.creds.store(Arc::clone(&fresh));
                let expected = self.stored_generation(&fresh).await;
                let record = RefreshRecord::to_json(rt, config, issued_at);
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
        let ttl = Duration::from_millis(u64::try_from(expires_at - now).unwrap_or(0).max(1000));
        let data = record.to_json();
        let mut write = TokenWrite::new(&creds.key, expected, &data, ttl);
        if let Some(r) = &refresh_record {
            write = write.with_refresh(&creds.refresh_key, r);
        }
        let generation = match runtime.store.compare_and_set(write).await {
            Ok(CasOutcome::Written { generation }) => Some(generation),
            Ok(CasOutcome::Conflict { current }) => {
                tracing::debug!(connector = %config.name, ?current, "a newer token was stored meanwhile; keeping it there");
                None
            }
            Err(e) => {
                tracing::warn!(connector = %config.name, error = %e, "could not write the token to the store; serving it from memory");
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
    fn to_json(rt: &RefreshToken, config: &ConnectorConfig, obtained_at: EpochMillis) -> String {
        serde_json::json!({
            "refresh_token": rt.expose_secret(),
            "client_id": config.client_id,
            "refresh_url": config.refresh_url,
            "obtained_at": obtained_at,
        })
        .to_string()
    }

    /// The refresh token, if the record is intact and belongs to this client and endpoint.
    fn parse(data: &str, config: &ConnectorConfig) -> Option<RefreshToken> {
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        let matches = v.get("client_id")?.as_str()? == config.client_id
            && v.get("refresh_url")?.as_str()? == config.refresh_url;
        let rt = v.get("refresh_token")?.as_str().filter(|s| !s.is_empty())?;
        matches.then(|| RefreshToken::new(rt))
    }
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
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let expires_at = issued_at.saturating_add(ms(lifetime));
    let refresh_after = match refresh_in {
        Some(r) => r.min(lifetime),
        None => lifetime - (lifetime / 4).min(Duration::from_secs(15 * 60)),
    };
    (issued_at.saturating_add(ms(refresh_after)), expires_at)
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
