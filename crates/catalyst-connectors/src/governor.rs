//! The mint governor: at most `limit` mints per refresh token per `window` (Zoho allows 10 per 10
//! minutes), counted by every process that shares the store. It owns the mint log (kept in the
//! store under [`key::mints_key`](crate::key), in the clear) *and* the decision — allow, or refuse
//! until a slot frees — with the rule for a log that cannot be read, in one place.
//!
//! Only the lease holder mints, so reading the log and then recording a mint does not race
//! across processes that share a lease. A store made of tiers ([`FallbackStore`]) shows one log,
//! the union of its tiers'.
//!
//! [`FallbackStore`]: crate::FallbackStore

use crate::clock::{EpochMillis, duration_millis, until};
use crate::error::Error;
use crate::record::mint_log;
use crate::store::{CasOutcome, TokenStore, TokenWrite, generation_of};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Mints this process made but could not write to their log (a full disk, a store outage), by
/// log key. They are counted as if written, and no further mint is allowed until they are written
/// (or have left the window): a store that cannot take the log never lets the governor undercount.
#[derive(Debug, Default)]
pub(crate) struct Unrecorded(Mutex<HashMap<String, Vec<EpochMillis>>>);

impl Unrecorded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<EpochMillis>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How far in the future a mint-log entry may be (clock skew between hosts) before it is treated
/// as damage and ignored.
const SKEW_MS: EpochMillis = 60_000;

/// The governor's answer for one mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Mint.
    Allow,
    /// Do not mint before `frees_at`: `mints` count against `cap`.
    Refuse {
        mints: usize,
        frees_at: EpochMillis,
        cap: Cap,
    },
}

/// Which budget refused a mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    /// `limit` mints per `window` (Zoho: 10 per 10 minutes).
    Window,
    /// Tokens minted within an access token's life (an hour) are still live: Zoho revokes the
    /// oldest past its cap (15 for CRM, 10 in some services' documentation).
    Live,
    /// Mints that only a caller's `min_ttl` asked for (the token held was still before its
    /// refresh point): at most half the window's budget, so one client cannot spend it all.
    Forced,
}

/// How long a Zoho access token lives: a mint within this long is a live token.
pub(crate) const LIVE_WINDOW: Duration = Duration::from_secs(3600);

/// The times in `times` (sorted) after `now - within`.
fn since(times: Vec<EpochMillis>, now: EpochMillis, within: Duration) -> Vec<EpochMillis> {
    let from = now.saturating_sub(duration_millis(within));
    times.into_iter().filter(|t| *t > from).collect()
}

/// The mint governor of one connection. A limit of 0 turns it off.
#[derive(Debug, Clone)]
pub(crate) struct Governor {
    limit: u32,
    window: Duration,
    /// At most this many live tokens per refresh token (0: no live budget).
    live_limit: u32,
    /// What a refusal of the window's budget is (`Forced` for the forced mints' governor).
    cap: Cap,
    unrecorded: Arc<Unrecorded>,
}

impl Governor {
    /// A governor whose unwritten mints are kept in `unrecorded` (one per connection, so that every
    /// connector sharing a refresh token sees them).
    pub(crate) fn new(limit: u32, window: Duration, unrecorded: Arc<Unrecorded>) -> Self {
        Self {
            limit,
            window,
            live_limit: 0,
            cap: Cap::Window,
            unrecorded,
        }
    }

    /// With a budget of `live_limit` live tokens per refresh token (0: none).
    pub(crate) fn with_live_limit(mut self, live_limit: u32) -> Self {
        self.live_limit = live_limit;
        self
    }

    /// The governor of mints that only a `min_ttl` forced: half the window's budget, counted in
    /// a log of its own (beside the main one, which counts them too).
    pub(crate) fn forced(&self) -> Self {
        Self {
            limit: (self.limit / 2).max(1),
            window: self.window,
            live_limit: 0,
            cap: Cap::Forced,
            unrecorded: Arc::clone(&self.unrecorded),
        }
    }

    /// How long log entries are kept: the window, or an access token's life with a live budget.
    fn retention(&self) -> Duration {
        if self.live_limit > 0 {
            self.window.max(LIVE_WINDOW)
        } else {
            self.window
        }
    }

    /// This process's mints of `key` not yet in the log, within the window at `now`.
    fn unwritten(&self, key: &str, now: EpochMillis) -> Vec<EpochMillis> {
        let mut map = self.unrecorded.lock();
        let Some(times) = map.get_mut(key) else {
            return Vec::new();
        };
        *times = self.within(std::mem::take(times), now);
        let kept = times.clone();
        if kept.is_empty() {
            map.remove(key);
        }
        kept
    }

    /// The limit per window.
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Mint times within the window before `now`, oldest first, and whether the log could be
    /// read. A store that cannot be reached reads as no mints (the governor is a safety net;
    /// Zoho's own throttle still answers); a log this process cannot read for want of the right
    /// key is `unreadable`; entries in the future beyond a minute of skew are ignored (a clock
    /// jump must not lock a refresh token out for years).
    pub(crate) async fn mints(
        &self,
        store: &dyn TokenStore,
        key: &str,
        now: EpochMillis,
    ) -> (Vec<EpochMillis>, bool) {
        let (kept, readable) = self.retained(store, key, now).await;
        (since(kept, now, self.window), readable)
    }

    /// Every mint of `key` kept at `now` (the window's, or an hour's with a live budget), and
    /// whether the log could be read.
    async fn retained(
        &self,
        store: &dyn TokenStore,
        key: &str,
        now: EpochMillis,
    ) -> (Vec<EpochMillis>, bool) {
        match store.get(key).await {
            Ok(v) => {
                let all = v.map(|v| mint_log::parse(&v.data)).unwrap_or_default();
                // Unwritten mints are in no log: added, not merged (two mints may share a
                // millisecond).
                let mut all = all;
                all.extend(self.unwritten(key, now));
                if all.iter().any(|t| *t > now.saturating_add(SKEW_MS)) {
                    tracing::warn!(
                        key,
                        "mint governor: ignoring mint-log entries in the future"
                    );
                }
                (self.within(all, now), true)
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
                (Vec::new(), !e.is_key_problem())
            }
        }
    }

    /// Whether a mint may happen now. A log that exists but cannot be read with this process's
    /// key counts as full: another process is minting for this refresh token.
    pub(crate) async fn decide(
        &self,
        store: &dyn TokenStore,
        key: &str,
        now: EpochMillis,
    ) -> Decision {
        if self.limit == 0 {
            return Decision::Allow;
        }
        // A mint not yet in the log: write it first; until that works, no further mint.
        let unwritten = self.unwritten(key, now);
        if !unwritten.is_empty() {
            if self.write(store, key, &unwritten).await {
                self.unrecorded.lock().remove(key);
            } else {
                return Decision::Refuse {
                    mints: self.limit as usize,
                    frees_at: unwritten[0].saturating_add(duration_millis(self.window)),
                    cap: self.cap,
                };
            }
        }
        let (kept, readable) = self.retained(store, key, now).await;
        let kept = if readable {
            kept
        } else {
            vec![now; self.limit.max(self.live_limit) as usize]
        };
        let over = |times: Vec<EpochMillis>, limit: u32, window: Duration, cap: Cap| {
            (times.len() >= limit as usize).then(|| Decision::Refuse {
                mints: times.len(),
                frees_at: times
                    .first()
                    .copied()
                    .unwrap_or(now)
                    .saturating_add(duration_millis(window)),
                cap,
            })
        };
        let in_window = since(kept.clone(), now, self.window);
        if let Some(refused) = over(in_window, self.limit, self.window, self.cap) {
            return refused;
        }
        if self.live_limit > 0
            && let Some(refused) = over(
                since(kept, now, LIVE_WINDOW),
                self.live_limit,
                LIVE_WINDOW,
                Cap::Live,
            )
        {
            return refused;
        }
        Decision::Allow
    }

    pub(crate) fn refusal(
        &self,
        connector: &str,
        (mints, frees_at, cap): (usize, EpochMillis, Cap),
        now: EpochMillis,
    ) -> Error {
        let retry_after = until(now, frees_at, Duration::from_secs(1));
        let secs = retry_after.as_secs();
        let (code, description) = match cap {
            Cap::Window => (
                "mint limit",
                format!(
                    "{mints} tokens minted for this refresh token in the last {} s (limit {}); a slot frees in {secs} s",
                    self.window.as_secs(),
                    self.limit,
                ),
            ),
            Cap::Live => (
                "live token limit",
                format!(
                    "{mints} tokens of this refresh token are still live (limit {}; Zoho revokes the oldest past its cap); a slot frees in {secs} s",
                    self.live_limit,
                ),
            ),
            Cap::Forced => (
                "min_ttl mint limit",
                format!(
                    "{mints} tokens minted in the last {} s only because a caller asked for a longer life (at most {}, half the mint budget); ask for less, or retry in {secs} s",
                    self.window.as_secs(),
                    self.limit,
                ),
            ),
        };
        Error::Throttled {
            connector: connector.to_owned(),
            code: code.into(),
            description: Some(description),
            retry_after: Some(retry_after),
            recorded: false,
        }
    }

    /// Records a mint at `at`, dropping entries older than the window (best effort: a store that
    /// fails is logged).
    pub(crate) async fn record(&self, store: &dyn TokenStore, key: &str, at: EpochMillis) {
        if self.limit == 0 {
            return;
        }
        if !self.write(store, key, &[at]).await {
            // Counted anyway, in memory, until it can be written.
            self.unrecorded
                .lock()
                .entry(key.to_owned())
                .or_default()
                .push(at);
        }
    }

    /// Adds `new` to the log (compare-and-set, retried on conflicts); whether it was written.
    async fn write(&self, store: &dyn TokenStore, key: &str, new: &[EpochMillis]) -> bool {
        let Some(&latest) = new.iter().max() else {
            return true;
        };
        for _ in 0..8 {
            let read = store.get(key).await;
            let times = match &read {
                Ok(v) => v
                    .as_ref()
                    .map(|v| mint_log::parse(&v.data))
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let expected = match generation_of(read) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
                    return false;
                }
            };
            let mut times = times;
            times.extend_from_slice(new);
            let times = self.within(times, latest);
            let data = mint_log::to_json(&times);
            match store
                .compare_and_set(TokenWrite::new(key, expected, &data, self.window))
                .await
            {
                Ok(CasOutcome::Written { .. }) => return true,
                Ok(CasOutcome::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(key, error = %e, "mint governor: cannot record a mint; counting it in memory");
                    return false;
                }
            }
        }
        false
    }

    fn within(&self, times: Vec<EpochMillis>, now: EpochMillis) -> Vec<EpochMillis> {
        let since = now.saturating_sub(duration_millis(self.retention()));
        let latest = now.saturating_add(SKEW_MS);
        let mut kept: Vec<_> = times
            .into_iter()
            .filter(|t| *t > since && *t <= latest)
            .collect();
        kept.sort_unstable();
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EncryptedStore, EncryptionKey, MemoryStore};
    use std::sync::Arc;

    const KEY: &str = "ZC_CONN_mints:0123456789abcdef";
    const WINDOW: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn the_limit_refuses_until_the_oldest_mint_leaves_the_window() {
        let store = MemoryStore::new();
        let governor = Governor::new(3, WINDOW, Arc::default());
        for at in [1_000, 2_000, 3_000] {
            assert_eq!(governor.decide(&store, KEY, at).await, Decision::Allow);
            governor.record(&store, KEY, at).await;
        }
        assert_eq!(
            governor.decide(&store, KEY, 4_000).await,
            Decision::Refuse {
                mints: 3,
                frees_at: 601_000,
                cap: Cap::Window,
            }
        );
        // The first mint leaves the window.
        assert_eq!(governor.decide(&store, KEY, 601_001).await, Decision::Allow);
        // Recording drops what left the window.
        governor.record(&store, KEY, 601_001).await;
        let (times, readable) = governor.mints(&store, KEY, 601_001).await;
        assert_eq!((times, readable), (vec![2_000, 3_000, 601_001], true));
    }

    #[tokio::test]
    async fn a_log_in_the_far_future_is_ignored_and_a_limit_of_zero_is_off() {
        let store = MemoryStore::new();
        let governor = Governor::new(1, WINDOW, Arc::default());
        governor.record(&store, KEY, 10_000_000).await;
        assert_eq!(governor.decide(&store, KEY, 1_000).await, Decision::Allow);
        let off = Governor::new(0, WINDOW, Arc::default());
        off.record(&store, KEY, 1_000).await;
        assert_eq!(off.decide(&store, KEY, 1_000).await, Decision::Allow);
    }

    #[tokio::test]
    async fn a_log_this_process_cannot_read_counts_as_full() {
        // A mint log encrypted by an older version, read under another key.
        let memory: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        let writer = EncryptedStore::new(Arc::clone(&memory), &EncryptionKey::generate());
        let sealed_elsewhere = "ZC_CONN_crm:abcde";
        writer
            .compare_and_set(TokenWrite::new(sealed_elsewhere, None, "[1]", WINDOW))
            .await
            .unwrap();
        let sealed = memory.get(sealed_elsewhere).await.unwrap().unwrap().data;
        memory
            .compare_and_set(TokenWrite::new(KEY, None, &sealed, WINDOW))
            .await
            .unwrap();
        let reader = EncryptedStore::new(Arc::clone(&memory), &EncryptionKey::generate());
        let governor = Governor::new(10, WINDOW, Arc::default());
        assert!(matches!(
            governor.decide(&reader, KEY, 5_000).await,
            Decision::Refuse { mints: 10, .. }
        ));
    }

    /// A store that reads but cannot write while `full` (a full disk).
    #[derive(Debug, Default)]
    struct FullDisk {
        inner: MemoryStore,
        full: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl TokenStore for FullDisk {
        async fn get(
            &self,
            key: &str,
        ) -> Result<Option<crate::store::StoredValue>, crate::store::StoreError> {
            self.inner.get(key).await
        }
        async fn compare_and_set(
            &self,
            write: TokenWrite<'_>,
        ) -> Result<CasOutcome, crate::store::StoreError> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError::new(
                    "test",
                    crate::store::StoreErrorKind::Unavailable,
                    "database or disk is full",
                ));
            }
            self.inner.compare_and_set(write).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<u64>,
        ) -> Result<bool, crate::store::StoreError> {
            self.inner.delete(key, expected).await
        }
        async fn try_acquire_lease(
            &self,
            key: &str,
            owner: &str,
            ttl: Duration,
        ) -> Result<bool, crate::store::StoreError> {
            self.inner.try_acquire_lease(key, owner, ttl).await
        }
        async fn release_lease(
            &self,
            key: &str,
            owner: &str,
        ) -> Result<(), crate::store::StoreError> {
            self.inner.release_lease(key, owner).await
        }
    }

    #[tokio::test]
    async fn a_mint_that_could_not_be_logged_is_counted_and_blocks_until_written() {
        let store = FullDisk::default();
        let governor = Governor::new(10, WINDOW, Arc::default());
        governor.record(&store, KEY, 1_000).await;
        store.full.store(true, std::sync::atomic::Ordering::SeqCst);
        // Two mints on a full disk: neither reaches the log, both are counted.
        governor.record(&store, KEY, 2_000).await;
        let (times, _) = governor.mints(&store, KEY, 2_500).await;
        assert_eq!(times, vec![1_000, 2_000], "the unwritten mint is counted");
        assert!(
            matches!(
                governor.decide(&store, KEY, 3_000).await,
                Decision::Refuse {
                    frees_at: 602_000,
                    ..
                }
            ),
            "no further mint while one is unrecorded"
        );
        // The disk has room again: the unrecorded mint is written first, then minting resumes.
        store.full.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(governor.decide(&store, KEY, 4_000).await, Decision::Allow);
        let logged = mint_log::parse(&store.inner.get(KEY).await.unwrap().unwrap().data);
        assert_eq!(logged, vec![1_000, 2_000]);
        // Another process (an empty memory of its own) sees both.
        let other = Governor::new(10, WINDOW, Arc::default());
        assert_eq!(other.mints(&store, KEY, 4_000).await.0.len(), 2);
    }
}
