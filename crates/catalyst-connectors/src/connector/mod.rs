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

mod acquire;
pub(crate) mod credentials;
pub(crate) mod flight;
mod fresh;
mod health;
mod schedule;
mod token;

pub use credentials::{CodeExchange, GeneratedTokens};
pub use health::FailureRecord;
pub(crate) use token::TokenInner;
pub use token::{AccessToken, TokenSource};

use self::credentials::Credentials;
use self::flight::{Drive, Flight, FlightOwner, SingleFlight, WaiterGuard};
use self::schedule::{Health, IN_FLIGHT, Mode};
use crate::clock::{EpochMillis, millis_to_system_time};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::governor;
use crate::runtime::Runtime;
use crate::secret::ExposeSecret;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub(crate) struct ConnectorInner {
    /// Shared by a template and its per-user connectors.
    pub(crate) config: Arc<ConnectorConfig>,
    /// The connector's name (`<template>.<user part>` for per-user connectors).
    pub(crate) name: String,
    /// For per-user connectors: a hash of the user id, kept in refresh-token records.
    pub(crate) subject: Option<Box<str>>,
    /// Per-user connectors made from this one, bounded (see [`Connector::for_user`]).
    pub(crate) users: std::sync::OnceLock<quick_cache::sync::Cache<String, Connector>>,
    pub(crate) runtime: Arc<Runtime>,
    creds: ArcSwap<Credentials>,
    current: ArcSwapOption<TokenInner>,
    flight: SingleFlight<Result<AccessToken>>,
    /// Epoch ms before which no refresh is attempted; `IN_FLIGHT` while one runs in the background.
    next_attempt_at: AtomicI64,
    /// Allocated on the first failure only, so healthy connectors stay small.
    health: Mutex<Option<Box<Health>>>,
    waiters: AtomicUsize,
    /// A token request is on the wire: a waiter past its deadline waits for its answer rather
    /// than throw away a token Zoho minted (the request has its own timeout).
    minting: std::sync::atomic::AtomicBool,
    /// Epoch ms of the last `access_token` call, to the second (for keep-warm).
    last_used: AtomicI64,
    pub(crate) metrics: Arc<Metrics>,
}

/// Counters registered once per connector (install your `metrics` recorder before building the
/// connection).
pub(crate) struct Metrics {
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
    pub(crate) inner: Arc<ConnectorInner>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.inner.name)
            .field("key", &self.inner.creds.load().key)
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

    pub(crate) fn assemble(
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
                flight: SingleFlight::new(),
                next_attempt_at: AtomicI64::new(0),
                health: Mutex::new(None),
                waiters: AtomicUsize::new(0),
                minting: std::sync::atomic::AtomicBool::new(false),
                last_used: AtomicI64::new(0),
                metrics,
            }),
        }
    }

    /// The connector's name (`<template>.<user part>` for per-user connectors).
    pub fn name(&self) -> &str {
        &self.inner.name
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
        .times
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
            refreshing: self.inner.flight.is_running(),
            mints_in_window: mints,
            mint_limit: self.inner.runtime.options.mint_limit,
            waiters: self.inner.waiters.load(Ordering::Relaxed),
            recorded_failure: self.recorded_failure().await,
        }
    }

    /// Whether a refresh is running now.
    pub fn is_refreshing(&self) -> bool {
        self.inner.flight.is_running()
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

    /// The path of a caller with no valid token.
    async fn wait_for_token(&self, now: EpochMillis) -> Result<AccessToken> {
        let next = self.inner.next_attempt_at.load(Ordering::Acquire);
        if next != IN_FLIGHT && now < next {
            // A recent attempt failed: answer with its error now rather than hammer the endpoint
            // — unless another process has stored a token since.
            let blocking = self
                .health()
                .as_ref()
                .and_then(|h| h.blocking_error.clone());
            if let Some(e) = blocking {
                return match self.stored_while_blocked(now).await {
                    Some(token) => Ok(token),
                    None => Err(e),
                };
            }
        }
        self.inner.metrics.misses.increment(1);
        let waiting = WaiterGuard::new(&self.inner.waiters);
        let result = self.bounded(self.flight_or_start(Mode::Wait)).await;
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

    /// While this connector backs off after a failure: a valid token another process has stored
    /// since (installed in memory, so the callers after this one find it there). The store is
    /// asked at most every 250 ms, so a blocked connector does not turn every call into a store
    /// round trip.
    async fn stored_while_blocked(&self, now: EpochMillis) -> Option<AccessToken> {
        if !self.inner.runtime.store.is_shared() {
            return None;
        }
        {
            let mut guard = self.health();
            let health = guard.as_mut()?;
            if now.saturating_sub(health.store_checked_at) < 250 {
                return None;
            }
            health.store_checked_at = now;
        }
        self.cached_token()
            .await
            .ok()
            .flatten()
            .filter(|t| now < t.0.expires_at)
    }

    /// Joins the flight in progress, or starts one of `mode` (see [`flight`]). A background
    /// refresh never runs in the caller that triggered it.
    fn flight_or_start(&self, mode: Mode) -> Flight<Result<AccessToken>> {
        let drive = if mode == Mode::Background {
            Drive::Background
        } else {
            Drive::Caller
        };
        SingleFlight::join_or_start(self, drive, move |this: Connector| async move {
            this.run_flight(mode).await
        })
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

impl Connector {
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
}
