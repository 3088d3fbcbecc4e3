//! A token with a minimum remaining lifetime, for callers that cannot wait for a background
//! refresh: one-shot processes (the CLI, cron jobs, scripts) and callers that need a token to
//! stay valid for a known time (`--min-ttl`).

use super::flight::WaiterGuard;
use super::schedule::{IN_FLIGHT, Mode};
use super::{AccessToken, Connector};
use crate::clock::{EpochMillis, duration_millis};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Whether `token` is before its refresh point and valid for at least `min_ttl` more.
fn satisfies(token: &AccessToken, now: EpochMillis, min_ttl: EpochMillis) -> bool {
    now < token.0.refresh_at && token.0.expires_at.saturating_sub(now) >= min_ttl
}

impl Connector {
    /// A token before its refresh point with at least `min_ttl` left before it expires. If the
    /// cached token does not qualify, the caller joins (or starts) a refresh and waits for it, at
    /// most the connection's wait deadline — unlike [`access_token`](Self::access_token), which
    /// serves a stale token at once and refreshes in the background (a background refresh dies
    /// with a process that exits).
    ///
    /// If the refresh fails while a token is still valid, that token is returned and the failure
    /// is kept in [`status`](Self::status)`().last_error`. A connector that is backing off after a
    /// failure does not ask Zoho again before its next attempt. Tokens that cannot live `min_ttl`
    /// (the endpoint issues shorter ones) give [`Error::LifetimeTooShort`].
    pub async fn access_token_valid_for(&self, min_ttl: Duration) -> Result<AccessToken> {
        let min = duration_millis(min_ttl);
        let now = self.inner.runtime.clock.now_millis();
        self.touch(now);
        if let Some(token) = self.current_if(|t| satisfies(t, now, min)) {
            self.inner.metrics.memory_hits.increment(1);
            return Ok(token);
        }
        self.inner.metrics.misses.increment(1);
        let waiting = WaiterGuard::new(&self.inner.waiters);
        // A refresh already running (e.g. in the background) may bring what we need.
        if self.inner.flight.is_running() {
            let _ = self.bounded(self.flight_or_start(Mode::Wait)).await;
            let now = self.inner.runtime.clock.now_millis();
            if let Some(token) = self.current_if(|t| satisfies(t, now, min)) {
                return Ok(token);
            }
        }
        let now = self.inner.runtime.clock.now_millis();
        let next = self.inner.next_attempt_at.load(Ordering::Acquire);
        if next != IN_FLIGHT && now < next {
            // Backing off after a failure: serve what is still valid, else the failure.
            if let Some(token) = self.current_if(|t| now < t.0.expires_at) {
                return Ok(token);
            }
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
        let result = self
            .bounded(self.flight_or_start(Mode::Fresh(min_ttl)))
            .await;
        drop(waiting);
        let token = result?;
        let now = self.inner.runtime.clock.now_millis();
        if now < token.0.refresh_at && token.0.expires_at.saturating_sub(now) < min {
            return Err(Error::LifetimeTooShort {
                connector: self.inner.name.clone(),
                wanted: min_ttl,
                lifetime: Duration::from_millis(
                    u64::try_from(token.0.expires_at.saturating_sub(now)).unwrap_or(0),
                ),
            });
        }
        Ok(token)
    }

    /// The token in memory, if `keep` accepts it.
    fn current_if(&self, keep: impl FnOnce(&AccessToken) -> bool) -> Option<AccessToken> {
        let current = self.inner.current.load_full().map(AccessToken)?;
        keep(&current).then_some(current)
    }

    /// Awaits `flight` at most the connection's wait deadline — longer only for a mint already
    /// on the wire (its token would be thrown away; the request has its own timeout).
    pub(super) async fn bounded(
        &self,
        flight: super::flight::Flight<Result<AccessToken>>,
    ) -> Result<AccessToken> {
        let deadline = self.inner.runtime.options.wait_deadline;
        match tokio::time::timeout(deadline, flight.clone()).await {
            Ok(r) => r,
            Err(_) if self.inner.minting.load(Ordering::Acquire) => flight.await,
            Err(_) => Err(Error::DeadlineExceeded {
                connector: self.inner.name.clone(),
                deadline,
            }),
        }
    }

    /// Waits for this connector's refresh in progress, if any, to finish (its result, if it
    /// ran). Used before a process exits, so a refresh it started is not lost.
    pub async fn settle(&self) -> Option<Result<AccessToken>> {
        let flight = self.inner.flight.current()?;
        Some(flight.await)
    }
}
