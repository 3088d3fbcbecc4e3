//! The mint governor's log: when this refresh token minted, kept in the token store so that every
//! process sharing the store counts together. Only the lease holder mints, so reading the log and
//! then recording a mint does not race across processes that share a lease.

use crate::clock::{EpochMillis, duration_millis};
use crate::store::{CasOutcome, TokenStore, TokenWrite};
use std::time::Duration;

fn parse(data: &str) -> Vec<EpochMillis> {
    serde_json::from_str::<Vec<EpochMillis>>(data).unwrap_or_default()
}

/// Mint times within `window` before `now`, oldest first. A store failure reads as no mints (the
/// governor is a safety net; Zoho's own throttle still answers).
pub(crate) async fn recent_mints(
    store: &dyn TokenStore,
    key: &str,
    now: EpochMillis,
    window: Duration,
) -> Vec<EpochMillis> {
    let since = now.saturating_sub(duration_millis(window));
    match store.get(key).await {
        Ok(Some(v)) => {
            let mut times: Vec<EpochMillis> =
                parse(&v.data).into_iter().filter(|t| *t > since).collect();
            times.sort_unstable();
            times
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(key, error = %e, "mint governor: cannot read the mint log");
            Vec::new()
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
            .filter(|t| *t > since)
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
