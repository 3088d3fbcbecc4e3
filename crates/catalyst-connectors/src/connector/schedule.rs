//! The schedule: when a refresh may run, what is remembered after a failure, and the retries.
//!
//! After each flight, [`Connector::record_outcome`] sets `next_attempt_at` from the failure's
//! [`RetryClass`] (the one classification of errors, in `error.rs`): 0 after success; now +
//! full-jitter backoff for `Backoff`; now + Zoho's window for `Window`; now + the negative-cache
//! TTL for `Permanent`, with the error kept for waiting callers.

use super::{AccessToken, Connector};
use crate::clock::{EpochMillis, duration_millis};
use crate::error::{Error, Result, RetryClass};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `next_attempt_at` while a background refresh runs.
pub(super) const IN_FLIGHT: i64 = i64::MAX;

/// What the connector remembers about its recent refresh attempts.
#[derive(Default)]
pub(super) struct Health {
    pub(super) consecutive_failures: u32,
    pub(super) last_error: Option<(Error, EpochMillis)>,
    /// The error a waiting caller gets while `next_attempt_at` is in the future.
    pub(super) blocking_error: Option<Error>,
    /// When a blocked caller last looked in the store for a token another process wrote.
    pub(super) store_checked_at: EpochMillis,
}

/// Why a flight runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A caller has no valid token and waits: a stale token from the store is good enough, and
    /// transient failures are retried a few times at once.
    Wait,
    /// The token is stale (or about to be): refresh it, nobody waits.
    Background,
    /// `force_refresh`: mint even if the store has a fresh token.
    Force,
    /// A caller waits for a token before its refresh point with at least this much left (see
    /// `access_token_valid_for`): a store token qualifies only then; else mint.
    Fresh(Duration),
}

/// What a flight did at the token endpoint.
pub(super) enum Attempt {
    /// No request was needed (the store had a token).
    None,
    Minted,
    Failed(Error),
}

impl Connector {
    /// Starts a background refresh if the token is within `lead` of its refresh point (or past
    /// it) and no refresh is running or backing off. Used by keep-warm.
    pub(crate) fn refresh_if_due(&self, now: EpochMillis, lead: Duration) -> bool {
        let guard = self.inner.current.load();
        let Some(token) = guard.as_ref() else {
            return false;
        };
        let lead = duration_millis(lead);
        if now < token.refresh_at.saturating_sub(lead) || now >= token.expires_at {
            return false;
        }
        drop(guard);
        self.refresh_in_background(now)
    }

    /// Epoch ms of the last `access_token` call (to the second), 0 if never.
    pub(crate) fn last_used(&self) -> EpochMillis {
        self.inner.last_used.load(Ordering::Relaxed)
    }

    /// The token in memory's `(refresh_at, expires_at)`, if any.
    pub(crate) fn schedule(&self) -> Option<(EpochMillis, EpochMillis)> {
        self.inner
            .current
            .load()
            .as_ref()
            .map(|t| (t.refresh_at, t.expires_at))
    }

    /// Claims the right to start a background refresh and starts it. Returns whether it did.
    pub(super) fn refresh_in_background(&self, now: EpochMillis) -> bool {
        let next = self.inner.next_attempt_at.load(Ordering::Acquire);
        if now < next {
            return false; // backing off, or one is running
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return false; // no runtime to run it on: the next waiting caller refreshes
        }
        if self
            .inner
            .next_attempt_at
            .compare_exchange(next, IN_FLIGHT, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false; // another caller claimed it
        }
        tracing::debug!(connector = %self.inner.name, "refreshing in the background");
        // The flight's own driver task runs it; nobody waits here.
        drop(self.flight_or_start(Mode::Background));
        true
    }

    pub(super) async fn run_flight(&self, mode: Mode) -> Result<AccessToken> {
        let options = &self.inner.runtime.options;
        let mut attempt = 0;
        let (result, outcome) = loop {
            attempt += 1;
            let (result, outcome) = self.acquire(mode).await;
            // Not an answer Zoho counted but we could not use: retrying would mint again.
            let retry = matches!(mode, Mode::Wait | Mode::Fresh(_))
                && attempt < options.wait_attempts
                && matches!(&outcome, Attempt::Failed(e)
                    if e.retry_class() == RetryClass::Backoff
                        && !matches!(e, Error::MalformedResponse { .. }));
            if !retry {
                break (result, outcome);
            }
            let ceiling = Duration::from_millis(100).saturating_mul(1 << attempt.min(10));
            tokio::time::sleep(full_jitter(ceiling)).await;
        };
        self.record_outcome(outcome).await;
        result
    }

    /// Updates the schedule after a flight: when the next attempt may run, and what waiting
    /// callers are told until then.
    async fn record_outcome(&self, outcome: Attempt) {
        // Shared health: what other processes see in `connector status`.
        match &outcome {
            Attempt::Failed(e) => {
                let (failures, next) = self.note_outcome(&outcome);
                // A refusal read from the shared health is there already.
                if !super::acquire::is_recorded(e) {
                    self.save_failure(e, failures, next).await;
                }
            }
            Attempt::Minted => {
                let (had_failures, _) = self.note_outcome(&outcome);
                if had_failures > 0 {
                    self.clear_failure().await;
                }
            }
            Attempt::None => {
                self.note_outcome(&outcome);
            }
        }
    }

    /// Updates the in-memory schedule; returns the failures in a row before this outcome was
    /// counted (after it, for a failure) and the next attempt time.
    fn note_outcome(&self, outcome: &Attempt) -> (u32, EpochMillis) {
        let options = &self.inner.runtime.options;
        let now = self.inner.runtime.clock.now_millis();
        let mut guard = self.health();
        let mut failures = 0;
        let next = match outcome {
            Attempt::None => {
                if let Some(health) = guard.as_mut() {
                    health.blocking_error = None;
                }
                let current = self.inner.next_attempt_at.load(Ordering::Acquire);
                if current == IN_FLIGHT { 0 } else { current }
            }
            Attempt::Minted => {
                self.inner.metrics.mints_ok.increment(1);
                if let Some(health) = guard.as_mut() {
                    failures = health
                        .consecutive_failures
                        .max(u32::from(health.blocking_error.is_some()));
                    health.consecutive_failures = 0;
                    health.blocking_error = None;
                }
                0
            }
            Attempt::Failed(e) => {
                let health = guard.get_or_insert_with(Box::default);
                let delay = match (self.refusal_delay(e), e.retry_class()) {
                    (Some(refusal), _) => refusal,
                    (None, RetryClass::Backoff) => {
                        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                        let exp = health.consecutive_failures.saturating_sub(1).min(20);
                        full_jitter(
                            options
                                .backoff_base
                                .saturating_mul(1 << exp)
                                .min(options.backoff_cap),
                        )
                    }
                    (None, _) => Duration::ZERO,
                };
                tracing::debug!(connector = %self.inner.name, retry_in_ms = duration_millis(delay), "next refresh attempt scheduled");
                health.last_error = Some((e.clone(), now));
                health.blocking_error = Some(e.clone());
                failures = health.consecutive_failures.max(1);
                now.saturating_add(duration_millis(delay))
            }
        };
        self.inner.next_attempt_at.store(next, Ordering::Release);
        (failures, next)
    }
}

impl Connector {
    /// How long every process should refrain from asking Zoho after `e`: Zoho's window for a
    /// throttle, the negative-cache TTL for a rejected refresh token; `None` for failures each
    /// process may retry on its own schedule.
    pub(super) fn refusal_delay(&self, e: &Error) -> Option<Duration> {
        let options = &self.inner.runtime.options;
        match e.retry_class() {
            RetryClass::Window => Some(match e {
                Error::Throttled {
                    retry_after: Some(after),
                    ..
                } => *after,
                _ => options.mint_window,
            }),
            RetryClass::Permanent => Some(options.negative_ttl),
            RetryClass::Backoff | RetryClass::Immediate => None,
        }
    }
}

/// A uniformly random duration in `[0, ceiling]` ("full jitter").
fn full_jitter(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
}
