//! The mint governor's log: when this refresh token minted, kept in the token store so that every
//! process sharing the store counts together. Only the lease holder mints, so reading the log and
//! then recording a mint does not race across processes that share a lease.
//!
//! Behind a shared store with a host-local tier ([`TokenStore::local_tier`]), the log is kept in
//! both tiers and read as their union: mints made on this host while Redis was down still count
//! when it answers again, and mints recorded in Redis still count while it is down.

use crate::clock::{EpochMillis, duration_millis};
use crate::store::{CasOutcome, StoreErrorKind, TokenStore, TokenWrite};
use std::collections::BTreeMap;
use std::time::Duration;

fn parse(data: &str) -> Vec<EpochMillis> {
    serde_json::from_str::<Vec<EpochMillis>>(data).unwrap_or_default()
}

/// Two tiers' logs as one: a time in both counts as often as the tier that has it most often
/// (the same mints, recorded twice; several mints in one millisecond stay several).
fn union(a: &[EpochMillis], b: &[EpochMillis]) -> Vec<EpochMillis> {
    let count = |times: &[EpochMillis]| {
        let mut n = BTreeMap::<EpochMillis, usize>::new();
        for t in times {
            *n.entry(*t).or_default() += 1;
        }
        n
    };
    let mut merged = count(a);
    for (t, n) in count(b) {
        let m = merged.entry(t).or_default();
        *m = (*m).max(n);
    }
    merged
        .into_iter()
        .flat_map(|(t, n)| std::iter::repeat_n(t, n))
        .collect()
}

/// How far in the future a mint-log entry may be (clock skew between hosts) before it is treated
/// as damage and ignored.
const SKEW_MS: EpochMillis = 60_000;

/// A refresh token's mint log as read now.
#[derive(Debug, Default)]
pub(crate) struct MintLog {
    /// Mint times within the window, oldest first.
    pub times: Vec<EpochMillis>,
    /// The log exists but cannot be read with this process's encryption key: count it as full
    /// (another process is minting for this refresh token).
    pub unreadable: bool,
}

/// Mint times within `window` before `now`, oldest first, from every tier of `store`. A store
/// that cannot be reached reads as no mints (the governor is a safety net; Zoho's own throttle
/// still answers); a log written with another encryption key reads as full; entries in the
/// future beyond a minute of skew are ignored (a clock jump must not lock a refresh token out
/// for years). The same mint recorded in two tiers counts once.
pub(crate) async fn recent_mints(
    store: &dyn TokenStore,
    key: &str,
    now: EpochMillis,
    window: Duration,
) -> MintLog {
    let mut log = read_tier(store, key, now, window).await;
    if let Some(local) = store.local_tier() {
        let other = read_tier(&*local, key, now, window).await;
        log.unreadable |= other.unreadable;
        log.times = union(&log.times, &other.times);
    }
    log
}

async fn read_tier(
    store: &dyn TokenStore,
    key: &str,
    now: EpochMillis,
    window: Duration,
) -> MintLog {
    let since = now.saturating_sub(duration_millis(window));
    match store.get(key).await {
        Ok(Some(v)) => {
            let all = parse(&v.data);
            let latest = now.saturating_add(SKEW_MS);
            if all.iter().any(|t| *t > latest) {
                tracing::warn!(
                    key,
                    store = ?store,
                    "mint governor: ignoring mint-log entries in the future"
                );
            }
            let mut times: Vec<EpochMillis> = all
                .into_iter()
                .filter(|t| *t > since && *t <= latest)
                .collect();
            times.sort_unstable();
            MintLog {
                times,
                unreadable: false,
            }
        }
        Ok(None) => MintLog::default(),
        Err(e) => {
            tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
            MintLog {
                times: Vec::new(),
                unreadable: e.kind == StoreErrorKind::Key,
            }
        }
    }
}

/// Appends a mint at `at`, dropping entries older than the window; behind a host-local tier, the
/// local log is then brought up to the union of both.
pub(crate) async fn record_mint(
    store: &dyn TokenStore,
    key: &str,
    at: EpochMillis,
    window: Duration,
) {
    let written = update(store, key, at, window, |times| {
        times.push(at);
        true
    })
    .await;
    if let Some(local) = store.local_tier() {
        match written {
            Some(written) => {
                update(&*local, key, at, window, |times| {
                    let merged = union(times, &written);
                    let changed = merged.len() != times.len();
                    *times = merged;
                    changed
                })
                .await
            }
            // The shared store failed (or its breaker is open and this host has no log yet): the
            // mint must still count somewhere.
            None => {
                update(&*local, key, at, window, |times| {
                    times.push(at);
                    true
                })
                .await
            }
        };
    }
}

/// Reads the log at `key`, keeps the entries within the window before `at` (and not in the far
/// future), lets `change` edit them (returning whether it did), and writes them back with a
/// compare-and-set. Returns the log as written (or as found, when nothing changed).
async fn update(
    store: &dyn TokenStore,
    key: &str,
    at: EpochMillis,
    window: Duration,
    change: impl Fn(&mut Vec<EpochMillis>) -> bool,
) -> Option<Vec<EpochMillis>> {
    let since = at.saturating_sub(duration_millis(window));
    for _ in 0..8 {
        let current = match store.get(key).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
                return None;
            }
        };
        let expected = current.as_ref().map(|v| v.generation);
        let mut times: Vec<EpochMillis> = current
            .map(|v| parse(&v.data))
            .unwrap_or_default()
            .into_iter()
            .filter(|t| *t > since && *t <= at.saturating_add(SKEW_MS))
            .collect();
        if !change(&mut times) {
            return Some(times);
        }
        let data = serde_json::to_string(&times).unwrap_or_else(|_| "[]".into());
        match store
            .compare_and_set(TokenWrite::new(key, expected, &data, window))
            .await
        {
            Ok(CasOutcome::Written { .. }) => return Some(times),
            Ok(CasOutcome::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(key, error = %e, "mint governor: cannot record a mint");
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::union;

    #[test]
    fn the_union_counts_a_mint_in_both_tiers_once_and_same_millisecond_mints_apart() {
        assert_eq!(union(&[1, 2, 2], &[2, 3]), vec![1, 2, 2, 3]);
        assert_eq!(union(&[5, 5, 5], &[5, 5, 5]), vec![5, 5, 5]);
        assert_eq!(union(&[], &[7]), vec![7]);
    }
}
