//! Callers without a usable token in memory: they join (or start) the connector's single flight
//! and wait at most the wait deadline; a flight runs the acquisition, retries what may pass for
//! a waiting caller, installs the token and tells the cell and the shared health what happened.

use super::acquire::Want;
use super::cell::Outcome;
use super::flight::{Drive, Flight, SingleFlight};
use super::{AccessToken, Connector};
use crate::clock::{EpochMillis, duration_millis};
use crate::error::{Error, Result};
use std::time::Duration;

/// Whether `token` is before its refresh point and valid for at least `min_ttl` more.
fn lasts(token: &AccessToken, now: EpochMillis, min_ttl: EpochMillis) -> bool {
    now < token.0.refresh_at && token.0.expires_at.saturating_sub(now) >= min_ttl
}

impl Connector {
    /// The path of a caller with no valid token.
    pub(super) async fn wait_for_token(&self, now: EpochMillis) -> Result<AccessToken> {
        // A recent attempt failed: answer with its error now rather than hammer the endpoint —
        // unless another process has stored a token since.
        if let Some(e) = self.inner.cell.blocked(now) {
            return self.stored_while_blocked(now).await.ok_or(e);
        }
        self.inner.acq.metrics.misses.increment(1);
        let waiting = self.inner.cell.waiting();
        let result = self.bounded(self.flight_or_start(Want::Any)).await;
        drop(waiting);
        if let Ok(token) = &result {
            let now = self.inner.cell.now();
            if now >= token.0.refresh_at {
                // A stale token from the store: serve it, refresh behind it.
                self.refresh_in_background(now);
            }
        }
        result
    }

    /// While this connector backs off after a failure: a valid token another process has stored
    /// since (installed in memory, so the callers after this one find it there). The store is
    /// asked at most every 250 ms.
    async fn stored_while_blocked(&self, now: EpochMillis) -> Option<AccessToken> {
        if !self.inner.acq.runtime.store.is_shared() || !self.inner.cell.may_look_in_store(now) {
            return None;
        }
        self.cached_token()
            .await
            .ok()
            .flatten()
            .filter(|t| now < t.0.expires_at)
    }

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
        let cell = &self.inner.cell;
        let min = duration_millis(min_ttl);
        let now = cell.now();
        cell.touch(now);
        if let Some(token) = cell.current().filter(|t| lasts(t, now, min)) {
            self.inner.acq.metrics.memory_hits.increment(1);
            return Ok(token);
        }
        self.inner.acq.metrics.misses.increment(1);
        let waiting = cell.waiting();
        // A refresh already running (e.g. in the background) may bring what we need.
        if self.inner.flight.is_running() {
            let _ = self.bounded(self.flight_or_start(Want::Any)).await;
            let now = cell.now();
            if let Some(token) = cell.current().filter(|t| lasts(t, now, min)) {
                return Ok(token);
            }
        }
        let now = cell.now();
        if cell.backing_off(now) {
            // Backing off after a failure: serve what is still valid, else the failure.
            if let Some(token) = cell.valid(now) {
                return Ok(token);
            }
            if let Some(e) = cell.blocked(now) {
                return self.stored_while_blocked(now).await.ok_or(e);
            }
        }
        let asked_at = cell.now();
        let result = self
            .bounded(self.flight_or_start(Want::Lasting(min_ttl)))
            .await;
        drop(waiting);
        let token = result?;
        let now = cell.now();
        if now < token.0.refresh_at && token.0.expires_at.saturating_sub(now) < min {
            // The refresh failed and the token served instead cannot last: the failure is the
            // answer (e.g. a revoked refresh token), not the lifetime.
            if let Some((e, at)) = cell.last_error()
                && at >= asked_at
            {
                return Err(e);
            }
            return Err(Error::LifetimeTooShort {
                connector: self.name().to_owned(),
                wanted: min_ttl,
                lifetime: Duration::from_millis(
                    u64::try_from(token.0.expires_at.saturating_sub(now)).unwrap_or(0),
                ),
            });
        }
        Ok(token)
    }

    /// Awaits `flight` at most the connection's wait deadline. A flight that outlasts it — a
    /// mint on the wire included — is not thrown away: it goes on on its driver task, installs and
    /// stores its token, and the next caller gets it without another request (a one-shot process
    /// settles running flights before it exits, see [`Connection::settle`](crate::Connection)).
    async fn bounded(&self, flight: Flight<Result<AccessToken>>) -> Result<AccessToken> {
        let deadline = self.inner.acq.runtime.options.wait_deadline;
        match tokio::time::timeout(deadline, flight).await {
            Ok(r) => r,
            Err(_) => Err(Error::DeadlineExceeded {
                connector: self.name().to_owned(),
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

    /// Claims the right to start a background refresh and starts it. Returns whether it did.
    pub(super) fn refresh_in_background(&self, now: EpochMillis) -> bool {
        // Without a runtime to run it on, the next waiting caller refreshes.
        if tokio::runtime::Handle::try_current().is_err() || !self.inner.cell.claim_background(now)
        {
            return false;
        }
        tracing::debug!(connector = %self.name(), "refreshing in the background");
        // The flight's own driver task runs it; nobody waits here.
        drop(self.flight_or_start(Want::Newer));
        true
    }

    /// Joins the flight in progress, or starts one for `want` (see [`super::flight`]). A
    /// background refresh never runs in the caller that triggered it.
    pub(super) fn flight_or_start(&self, want: Want) -> Flight<Result<AccessToken>> {
        let drive = if want == Want::Newer {
            Drive::Background
        } else {
            Drive::Caller
        };
        SingleFlight::join_or_start(self, drive, move |this: Connector| async move {
            this.run_flight(want).await
        })
    }

    /// One flight: the acquisition (retried at once, a few times, for a waiting caller when the
    /// failure may pass and Zoho did not count it), the token installed, the outcome noted.
    async fn run_flight(&self, want: Want) -> Result<AccessToken> {
        let options = &self.inner.acq.runtime.options;
        let someone_waits = matches!(want, Want::Any | Want::Lasting(_));
        let mut attempt = 0;
        let (result, outcome) = loop {
            attempt += 1;
            let held = self.inner.cell.current();
            let (result, outcome) = self.inner.acq.acquire(want, held).await;
            let retry = someone_waits
                && attempt < options.wait_attempts
                && matches!(&outcome, Outcome::Failed(e) if e.kind().is_retried_at_once());
            if !retry {
                break (result, outcome);
            }
            let ceiling = Duration::from_millis(100).saturating_mul(1 << attempt.min(10));
            tokio::time::sleep(super::cell::full_jitter(ceiling)).await;
        };
        let result = result.map(|got| self.install(got));
        self.note(outcome).await;
        result
    }

    /// Tells the cell (the next attempt time) and the shared health (what other processes see)
    /// what a flight did.
    async fn note(&self, outcome: Outcome) {
        let (failures, next) = self.inner.cell.note(&outcome);
        let acq = &self.inner.acq;
        match &outcome {
            Outcome::Failed(e) => {
                tracing::debug!(connector = %self.name(), next_attempt_at = next, "next refresh attempt scheduled");
                // A refusal read from the shared health is there already.
                if !e.is_recorded() {
                    acq.save_failure(e, failures, next).await;
                }
            }
            Outcome::Minted => {
                acq.metrics.mints_ok.increment(1);
                if failures > 0 {
                    acq.clear_failure().await;
                }
            }
            Outcome::Found => {}
        }
    }
}
