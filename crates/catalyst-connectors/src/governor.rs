//! The mint governor's log: when this refresh token minted, kept in the token store so that every
//! process sharing the store counts together. Only the lease holder mints, so reading the log and
//! then recording a mint does not race across processes that share a lease.

use crate::clock::{EpochMillis, duration_millis};
use crate::store::{CasOutcome, TokenStore, TokenWrite};
use std::time::Duration;

fn parse(data: &str) -> Vec<EpochMillis> {
    serde_json::from_str::<Vec<EpochMillis>>(data).unwrap_or_default()
}

/// How far in the future a mint-log entry may be (clock skew between hosts) before it is treated
/// as damage and ignored.
const SKEW_MS: EpochMillis = 60_000;

/// A refresh token's mint log as read now.
pub(crate) struct MintLog {
    /// Mint times within the window, oldest first.
    pub times: Vec<EpochMillis>,
    /// The log exists but cannot be read with this process's encryption key: count it as full
    /// (another process is minting for this refresh token).
    pub unreadable: bool,
}

/// Mint times within `window` before `now`, oldest first. A store that cannot be reached reads
/// as no mints (the governor is a safety net; Zoho's own throttle still answers); a log written
/// with another encryption key reads as full; entries in the future beyond a minute of skew are
/// ignored (a clock jump must not lock a refresh token out for years).
pub(crate) async fn recent_mints(
    store: &dyn TokenStore,
    key: &str,
    now: EpochMillis,
    window: Duration,
) -> MintLog {
    let since = now.saturating_sub(duration_millis(window));
    match store.get(key).await {
        Ok(Some(v)) => {
            let all = parse(&v.data);
            let total = all.len();
            let mut times: Vec<EpochMillis> = all
                .into_iter()
                .filter(|t| *t > since && *t <= now.saturating_add(SKEW_MS))
                .collect();
            if times.len() < total && parse(&v.data).iter().any(|t| *t > now + SKEW_MS) {
                tracing::warn!(
                    key,
                    "mint governor: ignoring mint-log entries in the future"
                );
            }
            times.sort_unstable();
            MintLog {
                times,
                unreadable: false,
            }
        }
        Ok(None) => MintLog {
            times: Vec::new(),
            unreadable: false,
        },
        Err(e) => {
            let unreadable = e.kind == crate::store::StoreErrorKind::Key;
            tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
            MintLog {
                times: Vec::new(),
                unreadable,
            }
        }
    }
}

/// Appends a mint at `at`, dropping entries older than the window.
pub(crate) async fn record_mint(
    store: &dyn TokenStore,
    key: &str,
    at: EpochMillis,
    window: Duration,
) {
    let since = at.saturating_sub(duration_millis(window));
    for _ in 0..8 {
        let current = match store.get(key).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
                return;
            }
        };
        let expected = current.as_ref().map(|v| v.generation);
        let mut times: Vec<EpochMillis> = current
            .map(|v| parse(&v.data))
            .unwrap_or_default()
            .into_iter()
            .filter(|t| *t > since && *t <= at.saturating_add(SKEW_MS))
            .collect();
        times.push(at);
        let data = serde_json::to_string(&times).unwrap_or_else(|_| "[]".into());
        match store
            .compare_and_set(TokenWrite::new(key, expected, &data, window))
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
