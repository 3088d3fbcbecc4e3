//! [`FallbackStore`]: a shared store (Redis) with a host-local tier (the default SQLite store)
//! behind a circuit breaker. While the shared store is down or hung, processes on this host
//! keep their single flight, mint governor, leases and tokens in the local tier — one mint per
//! host instead of one per process — and go back to the shared store when it answers. A store
//! that fails trips the breaker: for the next seconds (5 s, doubling to a minute while it keeps
//! failing) nothing waits for it, so a hung store costs a caller its timeout once, not per
//! operation.

use super::{CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FIRST_OPEN: Duration = Duration::from_secs(5);
const LONGEST_OPEN: Duration = Duration::from_secs(60);

/// The breaker's state: closed (`until` is None) or open until an instant.
#[derive(Debug, Default)]
struct Breaker {
    until: Option<Instant>,
    open_for: Duration,
}

/// A shared store (e.g. Redis) with a host-local fallback tier (e.g. the default SQLite store)
/// behind a circuit breaker: while the shared store is down or hung, tokens, leases, the mint
/// governor and shared health live in the local tier, so processes on this host still mint once;
/// a failure opens the breaker for 5 s (doubling to a minute), so a hung store costs a caller one
/// timeout, not one per operation. A local miss while the shared store is down is reported as the
/// shared store's failure.
#[derive(Debug)]
pub struct FallbackStore {
    shared: Arc<dyn TokenStore>,
    local: Arc<dyn TokenStore>,
    breaker: Mutex<Breaker>,
}

impl FallbackStore {
    /// `shared` (e.g. Redis), falling back to `local` (e.g. the default SQLite store).
    pub fn new(shared: Arc<dyn TokenStore>, local: Arc<dyn TokenStore>) -> Self {
        Self {
            shared,
            local,
            breaker: Mutex::new(Breaker::default()),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to try the shared store now (closed, or open long enough to try again).
    fn shared_up(&self) -> bool {
        self.breaker().until.is_none_or(|t| Instant::now() >= t)
    }

    /// Notes a shared-store result: success closes the breaker, unavailability trips it.
    fn note<T>(&self, result: &Result<T, StoreError>) -> bool {
        let mut b = self.breaker();
        match result {
            Ok(_) => {
                if b.until.take().is_some() {
                    tracing::info!(store = ?self.shared, "the shared token store answers again");
                }
                b.open_for = Duration::ZERO;
                false
            }
            Err(e) if e.kind == StoreErrorKind::Unavailable => {
                b.open_for = (b.open_for * 2).clamp(FIRST_OPEN, LONGEST_OPEN);
                if b.until.is_none() {
                    tracing::warn!(error = %e, "the shared token store is unavailable; using this host's local store until it answers");
                }
                b.until = Some(Instant::now() + b.open_for);
                true
            }
            Err(_) => false,
        }
    }
}

/// Runs `$op` on the shared store unless the breaker is open, and on the local store when the
/// shared one is unavailable.
macro_rules! tiered {
    ($self:ident, $store:ident => $op:expr) => {{
        if $self.shared_up() {
            let $store = &$self.shared;
            let result = $op;
            if !$self.note(&result) {
                return result;
            }
        }
        let $store = &$self.local;
        $op
    }};
}

#[async_trait]
impl TokenStore for FallbackStore {
    /// A miss in the local tier while the shared store is down is reported as the shared
    /// store's failure: the record may well be there (a refresh token kept in Redis), and
    /// "absent" would send people to re-authorize for nothing.
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let mut down = None;
        if self.shared_up() {
            let result = self.shared.get(key).await;
            if !self.note(&result) {
                return result;
            }
            down = result.err();
        }
        match self.local.get(key).await {
            Ok(None) => Err(down.unwrap_or_else(|| {
                StoreError::new(
                    "shared",
                    StoreErrorKind::Unavailable,
                    "the shared token store is unavailable (its circuit breaker is open)",
                )
            })),
            other => other,
        }
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        tiered!(self, s => s.compare_and_set(write).await)
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        tiered!(self, s => s.delete(key, expected).await)
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        tiered!(self, s => s.try_acquire_lease(key, owner, ttl).await)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        // Released in both: the lease may have been taken in either tier.
        let _ = self.local.release_lease(key, owner).await;
        tiered!(self, s => s.release_lease(key, owner).await)
    }

    async fn lease_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        tiered!(self, s => s.lease_holder(key).await)
    }

    async fn take_over_lease(
        &self,
        key: &str,
        dead_owner: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        tiered!(self, s => s.take_over_lease(key, dead_owner, owner, ttl).await)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn accepts_unfingerprinted(&self) -> bool {
        self.shared.accepts_unfingerprinted()
    }

    fn max_key_len(&self) -> Option<usize> {
        match (self.shared.max_key_len(), self.local.max_key_len()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn local_tier(&self) -> Option<Arc<dyn TokenStore>> {
        Some(Arc::clone(&self.local))
    }
}
