//! Keep-warm: a task that refreshes recently used connectors (per-user ones too) shortly before their refresh point,
//! so callers never meet a stale token. It holds a `Weak` to the connector map and ends when the
//! connection is dropped (and is aborted by the connection's drop guard).

use crate::clock::Clock;
use crate::connector::Connector;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Stops the keep-warm task when the last clone of the connection is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keep-warm: refreshes recently used connectors shortly before their refresh point.
pub(crate) async fn keep_warm(
    connectors: Weak<BTreeMap<String, Connector>>,
    clock: Arc<dyn Clock>,
    tick: Duration,
) {
    const RECENT_MS: i64 = 3_600_000;
    let seed: u64 = rand::random();
    loop {
        tokio::time::sleep(tick).await;
        let Some(map) = connectors.upgrade() else {
            return;
        };
        let now = clock.now_millis();
        let users = map
            .values()
            .flat_map(|c| c.users_used_within(Duration::from_millis(RECENT_MS as u64)));
        let all: Vec<Connector> = map.values().cloned().chain(users).collect();
        for connector in &all {
            let used = connector.last_used();
            if used == 0 || now - used > RECENT_MS {
                continue;
            }
            let Some((refresh_at, expires_at)) = connector.schedule() else {
                continue;
            };
            // A jitter fixed per token and process: 1–11 % of the margin before the refresh point.
            let u = (seed ^ (refresh_at as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1023
            let margin = u64::try_from(expires_at - refresh_at).unwrap_or(0);
            let lead = margin / 100 + margin * u / (1023 * 10);
            if connector.refresh_if_due(now, Duration::from_millis(lead)) {
                tracing::debug!(
                    connector = connector.name(),
                    lead_ms = lead,
                    "keep-warm refresh started"
                );
            }
        }
    }
}
