//! [`FallbackStore`]: a shared store (Redis) with a host-local tier (the default SQLite store)
//! behind a circuit breaker. While the shared store is down or hung, processes on this host
//! keep their single flight, mint governor, leases and tokens in the local tier — one mint per
//! host instead of one per process — and go back to the shared store when it answers.
//!
//! Callers see one store; the tiers are this module's business:
//! - records the shared store takes are copied into the local tier, so an outage starts with the
//!   latest token there;
//! - a mint log is kept in both tiers and read as their union (mints made here while Redis was
//!   down still count when it answers, and the other way round); a shared health record is kept
//!   in both and the newer copy is read;
//! - the mint lease is taken in the local tier first and then in the shared one, so processes on
//!   this host exclude each other even while their breakers disagree.
//!
//! A store that fails trips the breaker: for the next seconds (5 s, doubling to a minute while it
//! keeps failing) nothing waits for it, so a hung store costs a caller its timeout once, not per
//! operation.

use super::{
    CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite, generation_of,
};
use crate::key::{Public, public_kind};
use crate::record::{HealthRecord, mint_log};
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

impl FallbackStore {
    /// Copies a write the shared store took into the local tier, whatever the local generation
    /// (best effort).
    async fn mirror(&self, write: TokenWrite<'_>) {
        let copied = async {
            let expected = generation_of(self.local.get(write.key).await)?;
            self.local
                .compare_and_set(TokenWrite { expected, ..write })
                .await
        };
        if let Err(e) = copied.await {
            tracing::debug!(error = %e, "could not copy a record into the local tier");
        }
    }

    /// Marks a refresh-token record written to the local tier only (the shared store was down),
    /// so that it is copied to the shared store when that returns. The marker lives in the local
    /// tier, so the next process on this host finds it, whichever it is.
    async fn mark_local_only(&self, refresh_key: &str) {
        let marker = local_only_marker(refresh_key);
        let marked = async {
            let expected = generation_of(self.local.get(&marker).await)?;
            self.local
                .compare_and_set(TokenWrite::new(&marker, expected, "1", KEEP_REFRESH))
                .await
        };
        if let Err(e) = marked.await {
            tracing::debug!(error = %e, "could not mark a refresh token as kept on this host only");
        }
        tracing::warn!(
            "the shared token store is unreachable: the refresh token is kept on this host only, and is copied to the shared store when a process here next uses the connector after it returns"
        );
    }

    /// The shared store answered `key` (a refresh-token record) absent: if this host kept one
    /// there during an outage, it is copied now (never over one another host wrote meanwhile).
    async fn copy_local_only(&self, key: &str) -> Option<Result<Option<StoredValue>, StoreError>> {
        let marker = local_only_marker(key);
        if !matches!(self.local.get(&marker).await, Ok(Some(_))) {
            return None;
        }
        let Ok(Some(kept)) = self.local.get(key).await else {
            return None;
        };
        let copied = self
            .shared
            .compare_and_set(TokenWrite::new(key, None, &kept.data, KEEP_REFRESH))
            .await;
        if matches!(
            copied,
            Ok(CasOutcome::Written { .. }) | Ok(CasOutcome::Conflict { .. })
        ) {
            // Copied, or another host wrote one first (theirs stays): either way, done.
            let _ = self.local.delete(&marker, None).await;
        }
        match copied {
            Ok(CasOutcome::Written { .. }) => {
                tracing::info!(
                    "a refresh token kept on this host during an outage is now in the shared store"
                );
                Some(self.shared.get(key).await)
            }
            _ => None,
        }
    }

    /// A public record (mint log, shared health) read as one: the union of both tiers' mint
    /// logs, or the newer of their health records. A tier that does not answer is left out.
    async fn get_public(&self, key: &str, kind: Public) -> Result<Option<StoredValue>, StoreError> {
        let shared = if self.shared_up() {
            let result = self.shared.get(key).await;
            self.note(&result);
            result.ok().flatten()
        } else {
            None
        };
        let local = self.local.get(key).await.ok().flatten();
        let (a, b) = match (shared, local) {
            (Some(a), Some(b)) => (a, b),
            (one, other) => return Ok(one.or(other)),
        };
        let data = match kind {
            Public::MintLog => mint_log::to_json(&mint_log::union(
                &mint_log::parse(&a.data),
                &mint_log::parse(&b.data),
            )),
            Public::Health => HealthRecord::newer(&a.data, &b.data).to_owned(),
        };
        Ok(Some(StoredValue {
            generation: a.generation,
            data,
        }))
    }

    /// Writes a public record into both tiers (the shared one while it answers), each at its own
    /// generation: a mint log merged with the tier's copy (entries older than the record's TTL
    /// before its newest are dropped), a health record replacing it. Never a conflict: a mint log
    /// only grows, and the newer health record wins when read.
    async fn put_public(
        &self,
        write: TokenWrite<'_>,
        kind: Public,
    ) -> Result<CasOutcome, StoreError> {
        let mut outcome = None;
        if self.shared_up() {
            let result = merge_into(&*self.shared, write, kind).await;
            if !self.note(&result) {
                outcome = Some(result?);
            }
        }
        let local = merge_into(&*self.local, write, kind).await;
        match outcome {
            Some(written) => Ok(written),
            None => local,
        }
    }

    /// With this host's lease held by `owner`: takes the shared lease too (from `dead_owner` if
    /// it holds it), unless the shared store is down — then the local lease is enough. When
    /// another host holds the shared lease, the local one is given back.
    async fn shared_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        dead_owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        if !self.shared_up() {
            return Ok(true);
        }
        let mut result = self.shared.try_acquire_lease(key, owner, ttl).await;
        if let (Ok(false), Some(dead)) = (&result, dead_owner) {
            result = self.shared.take_over_lease(key, dead, owner, ttl).await;
        }
        if self.note(&result) {
            return Ok(true); // the shared store just failed: this host's lease is enough
        }
        if !matches!(result, Ok(true)) {
            let _ = self.local.release_lease(key, owner).await;
        }
        result
    }
}

/// How long a refresh-token record copied between tiers (and its marker) is kept: as good as
/// forever (a refresh token lives until revoked).
const KEEP_REFRESH: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Whether `key` names a refresh-token record (`ZC_CONN_<name>:rt:<6 hex>`).
fn is_refresh_key(key: &str) -> bool {
    key.rsplit_once(":rt:")
        .is_some_and(|(_, hex)| hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The local-tier marker of a refresh-token record kept there only.
fn local_only_marker(refresh_key: &str) -> String {
    format!("{refresh_key}:local-only")
}

/// Writes a public record into one tier, at that tier's generation (see
/// [`FallbackStore::put_public`]).
async fn merge_into(
    tier: &dyn TokenStore,
    write: TokenWrite<'_>,
    kind: Public,
) -> Result<CasOutcome, StoreError> {
    let written = mint_log::parse(write.data);
    let since = written.iter().max().map_or(i64::MIN, |newest| {
        newest.saturating_sub(crate::clock::duration_millis(write.ttl))
    });
    for _ in 0..8 {
        let read = tier.get(write.key).await;
        let data = match (&read, kind) {
            (Ok(Some(v)), Public::MintLog) => {
                let kept: Vec<_> = mint_log::parse(&v.data)
                    .into_iter()
                    .filter(|t| *t >= since)
                    .collect();
                mint_log::to_json(&mint_log::union(&kept, &written))
            }
            _ => write.data.to_owned(),
        };
        let expected = generation_of(read)?;
        match tier
            .compare_and_set(TokenWrite {
                expected,
                data: &data,
                ..write
            })
            .await?
        {
            CasOutcome::Conflict { .. } => continue,
            written => return Ok(written),
        }
    }
    Err(StoreError::new(
        "fallback",
        StoreErrorKind::Rejected,
        "a public record kept changing while it was merged; try again",
    ))
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
        if let Some(kind) = public_kind(key) {
            return self.get_public(key, kind).await;
        }
        let mut down = None;
        if self.shared_up() {
            let result = self.shared.get(key).await;
            if !self.note(&result) {
                if matches!(result, Ok(None))
                    && is_refresh_key(key)
                    && let Some(copied) = self.copy_local_only(key).await
                {
                    return copied;
                }
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

    /// A write the shared store takes is copied into the local tier too, so that during an
    /// outage this host still has the latest token instead of minting another.
    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        if let Some(kind) = public_kind(write.key) {
            return self.put_public(write, kind).await;
        }
        if self.shared_up() {
            let result = self.shared.compare_and_set(write).await;
            if !self.note(&result) {
                if matches!(result, Ok(CasOutcome::Written { .. })) {
                    self.mirror(write).await;
                }
                return result;
            }
        }
        let result = self.local.compare_and_set(write).await;
        if matches!(result, Ok(CasOutcome::Written { .. }))
            && let Some((refresh_key, _)) = write.refresh
        {
            self.mark_local_only(refresh_key).await;
        }
        result
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        if self.shared_up() {
            let result = self.shared.delete(key, expected).await;
            if !self.note(&result) {
                // The local copy goes too (it is a copy: whatever its generation).
                let _ = self.local.delete(key, None).await;
                return result;
            }
        }
        self.local.delete(key, expected).await
    }

    /// The host-local lease first, then the shared one: processes on this host exclude each other
    /// whichever tier their breaker sends them to (one may still see Redis while another has
    /// given up on it), and the shared lease excludes other hosts while Redis answers.
    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        if !self.local.try_acquire_lease(key, owner, ttl).await? {
            return Ok(false);
        }
        self.shared_lease(key, owner, ttl, None).await
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        // Released in both: the lease is taken in both while the shared store answers.
        let _ = self.local.release_lease(key, owner).await;
        tiered!(self, s => s.release_lease(key, owner).await)
    }

    /// The holder of this host's lease, else of the shared one.
    async fn lease_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some(holder) = self.local.lease_holder(key).await? {
            return Ok(Some(holder));
        }
        tiered!(self, s => s.lease_holder(key).await)
    }

    async fn take_over_lease(
        &self,
        key: &str,
        dead_owner: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let local = if self.local.lease_holder(key).await?.as_deref() == Some(dead_owner) {
            self.local
                .take_over_lease(key, dead_owner, owner, ttl)
                .await?
        } else {
            self.local.try_acquire_lease(key, owner, ttl).await?
        };
        if !local {
            return Ok(false);
        }
        self.shared_lease(key, owner, ttl, Some(dead_owner)).await
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn accepts_unfingerprinted(&self) -> bool {
        self.shared.accepts_unfingerprinted()
    }

    fn degraded(&self) -> Option<String> {
        self.breaker().until.map(|_| {
            "the shared token store does not answer: this host's store stands in (one mint per host, counted there) until it returns".to_owned()
        })
    }

    fn max_key_len(&self) -> Option<usize> {
        match (self.shared.max_key_len(), self.local.max_key_len()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A shared store that can be switched off (every operation then fails as unavailable).
    #[derive(Debug, Default)]
    struct Switch {
        inner: MemoryStore,
        down: AtomicBool,
    }

    impl Switch {
        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::new(
                    "switch",
                    StoreErrorKind::Unavailable,
                    "down",
                ));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl TokenStore for Switch {
        async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
            self.check()?;
            self.inner.get(key).await
        }
        async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
            self.check()?;
            self.inner.compare_and_set(write).await
        }
        async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.delete(key, expected).await
        }
        async fn try_acquire_lease(
            &self,
            key: &str,
            owner: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.try_acquire_lease(key, owner, ttl).await
        }
        async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
            self.check()?;
            self.inner.release_lease(key, owner).await
        }
    }

    /// Two processes on one host whose breakers disagree (one gave up on the shared store, the
    /// other sees it again) still exclude each other; a lease held on another host is respected.
    #[tokio::test]
    async fn processes_whose_breakers_disagree_still_share_one_lease() {
        let ttl = Duration::from_secs(30);
        let shared = Arc::new(Switch::default());
        let local: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        let p = FallbackStore::new(shared.clone(), Arc::clone(&local));
        let q = FallbackStore::new(shared.clone(), Arc::clone(&local));

        shared.down.store(true, Ordering::SeqCst);
        assert!(
            p.try_acquire_lease("k", "p", ttl).await.unwrap(),
            "local only"
        );
        shared.down.store(false, Ordering::SeqCst);
        assert!(
            !q.try_acquire_lease("k", "q", ttl).await.unwrap(),
            "q sees the shared store, p does not: q must still wait for p"
        );
        p.release_lease("k", "p").await.unwrap();
        assert!(q.try_acquire_lease("k", "q", ttl).await.unwrap());
        q.release_lease("k", "q").await.unwrap();

        // Another host holds the shared lease: q gives back this host's lease.
        let other_host = FallbackStore::new(shared.clone(), Arc::new(MemoryStore::new()));
        assert!(other_host.try_acquire_lease("k", "r", ttl).await.unwrap());
        assert!(!q.try_acquire_lease("k", "q", ttl).await.unwrap());
        assert!(
            local.try_acquire_lease("k", "s", ttl).await.unwrap(),
            "this host's lease was given back"
        );
    }
}
