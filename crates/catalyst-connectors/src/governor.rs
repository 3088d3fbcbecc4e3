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
use std::time::Duration;

/// How far in the future a mint-log entry may be (clock skew between hosts) before it is treated
/// as damage and ignored.
const SKEW_MS: EpochMillis = 60_000;

/// The governor's answer for one mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Mint.
    Allow,
    /// Do not mint before `frees_at`: `mints` were recorded in the window.
    Refuse { mints: usize, frees_at: EpochMillis },
}

/// The mint governor of one connection. A limit of 0 turns it off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Governor {
    limit: u32,
    window: Duration,
}

impl Governor {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window }
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
        match store.get(key).await {
            Ok(v) => {
                let all = v.map(|v| mint_log::parse(&v.data)).unwrap_or_default();
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
        let (times, readable) = self.mints(store, key, now).await;
        let times = if readable {
            times
        } else {
            vec![now; self.limit as usize]
        };
        if times.len() < self.limit as usize {
            return Decision::Allow;
        }
        Decision::Refuse {
            mints: times.len(),
            frees_at: times
                .first()
                .copied()
                .unwrap_or(now)
                .saturating_add(duration_millis(self.window)),
        }
    }

    /// The error a caller gets for a refusal.
    pub(crate) fn refusal(
        &self,
        connector: &str,
        mints: usize,
        frees_at: EpochMillis,
        now: EpochMillis,
    ) -> Error {
        let retry_after = until(now, frees_at, Duration::from_secs(1));
        Error::Throttled {
            connector: connector.to_owned(),
            code: "mint limit".into(),
            description: Some(format!(
                "{mints} tokens minted for this refresh token in the last {} s (limit {}); a slot frees in {} s",
                self.window.as_secs(),
                self.limit,
                retry_after.as_secs()
            )),
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
                    return;
                }
            };
            let mut times = self.within(times, at);
            times.push(at);
            let data = mint_log::to_json(&times);
            match store
                .compare_and_set(TokenWrite::new(key, expected, &data, self.window))
                .await
            {
                Ok(CasOutcome::Written { .. }) => return,
                Ok(CasOutcome::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(key, error = %e, "mint governor: cannot record a mint");
                    return;
                }
            }
        }
    }

    /// The entries of `times` within the window before `now` (and not in the far future),
    /// oldest first.
    fn within(&self, times: Vec<EpochMillis>, now: EpochMillis) -> Vec<EpochMillis> {
        let since = now.saturating_sub(duration_millis(self.window));
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
        let governor = Governor::new(3, WINDOW);
        for at in [1_000, 2_000, 3_000] {
            assert_eq!(governor.decide(&store, KEY, at).await, Decision::Allow);
            governor.record(&store, KEY, at).await;
        }
        assert_eq!(
            governor.decide(&store, KEY, 4_000).await,
            Decision::Refuse {
                mints: 3,
                frees_at: 601_000
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
        let governor = Governor::new(1, WINDOW);
        governor.record(&store, KEY, 10_000_000).await;
        assert_eq!(governor.decide(&store, KEY, 1_000).await, Decision::Allow);
        let off = Governor::new(0, WINDOW);
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
        let governor = Governor::new(10, WINDOW);
        assert!(matches!(
            governor.decide(&reader, KEY, 5_000).await,
            Decision::Refuse { mints: 10, .. }
        ));
    }
}
