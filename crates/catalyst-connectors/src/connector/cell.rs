//! The token cell: the token in memory, the refresh-point arithmetic and the schedule
//! (background refresh claims, backoff, the negative cache), driven by the injectable clock. It
//! knows nothing of stores or HTTP: the connector asks it what to do and tells it what happened.
//!
//! After each flight, [`TokenCell::note`] sets the next attempt time from the failure's
//! [`RetryClass`] (derived from [`ErrorKind`](crate::ErrorKind)): 0 after success; now +
//! full-jitter backoff for `Backoff`; now + Zoho's window for `Window`; now + the negative-cache
//! TTL for `Permanent`, with the error kept for waiting callers.

use super::token::{AccessToken, TokenInner};
use crate::clock::{Clock, EpochMillis, duration_millis};
use crate::error::{Error, RetryClass};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The next attempt time while a background refresh runs.
const IN_FLIGHT: i64 = i64::MAX;

/// How often a connector backing off after a failure looks in the store for a token another
/// process wrote.
const STORE_LOOK_EVERY_MS: EpochMillis = 250;

/// `(refresh_at, expires_at)` for a token requested at `issued_at` that lives `lifetime`.
///
/// The refresh point leaves a margin of `min(15 min, lifetime / 4)`: the official SDKs' 15 minutes
/// for hour-long tokens, while short-lived tokens are still used for most of their life.
/// `refresh_in` moves the refresh point, never beyond the expiry.
pub(crate) fn refresh_schedule(
    issued_at: EpochMillis,
    lifetime: Duration,
    refresh_in: Option<Duration>,
) -> (EpochMillis, EpochMillis) {
    let expires_at = issued_at.saturating_add(duration_millis(lifetime));
    let refresh_after = match refresh_in {
        Some(r) => r.min(lifetime),
        None => lifetime - (lifetime / 4).min(Duration::from_secs(15 * 60)),
    };
    (
        issued_at.saturating_add(duration_millis(refresh_after)),
        expires_at,
    )
}

/// How long to wait after failures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Backoff between failed attempts: full jitter over `base · 2^n`, capped.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long a permanent failure is remembered.
    pub negative_ttl: Duration,
    /// Zoho's throttle window, when a throttle does not say how long.
    pub throttle_window: Duration,
}

impl Policy {
    /// How long every process should refrain from asking Zoho after `e`: Zoho's window for a
    /// throttle, the negative-cache TTL for a permanent failure; `None` for failures each process
    /// may retry on its own schedule.
    pub(crate) fn refusal_delay(&self, e: &Error) -> Option<Duration> {
        match e.retry_class() {
            RetryClass::Window => Some(match e {
                Error::Throttled {
                    retry_after: Some(after),
                    ..
                } => *after,
                _ => self.throttle_window,
            }),
            RetryClass::Permanent => Some(self.negative_ttl),
            RetryClass::Backoff | RetryClass::Immediate => None,
        }
    }
}

/// What a flight did, as the cell needs to know it.
pub(crate) enum Outcome {
    /// No token request was needed (a token was found).
    Found,
    /// A token was minted.
    Minted,
    /// It failed.
    Failed(Error),
}

/// What the cell looked up for a caller.
pub(crate) enum Lookup {
    /// Before its refresh point.
    Fresh(AccessToken),
    /// Past its refresh point, still valid.
    Stale(AccessToken),
    /// No valid token in memory.
    Missing,
}

/// What the connector remembers about its recent refresh attempts.
#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    last_error: Option<(Error, EpochMillis)>,
    /// The error a waiting caller gets while the next attempt is in the future.
    blocking_error: Option<Error>,
    /// When a blocked caller last looked in the store for a token another process wrote.
    store_looked_at: EpochMillis,
}

/// The token in memory and its schedule. See the [module docs](self).
pub(crate) struct TokenCell {
    current: ArcSwapOption<TokenInner>,
    /// Epoch ms before which no refresh is attempted; `IN_FLIGHT` while one runs in the background.
    next_attempt_at: AtomicI64,
    /// Allocated on the first failure only, so healthy connectors stay small.
    health: Mutex<Option<Box<Health>>>,
    waiters: AtomicUsize,
    /// Epoch ms of the last use, to the second (for keep-warm).
    last_used: AtomicI64,
    clock: Arc<dyn Clock>,
    policy: Policy,
}

impl TokenCell {
    pub(crate) fn new(clock: Arc<dyn Clock>, policy: Policy) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            next_attempt_at: AtomicI64::new(0),
            health: Mutex::new(None),
            waiters: AtomicUsize::new(0),
            last_used: AtomicI64::new(0),
            clock,
            policy,
        }
    }

    /// Now, by the cell's clock.
    #[inline]
    pub(crate) fn now(&self) -> EpochMillis {
        self.clock.now_millis()
    }

    /// The token in memory as a caller at `now` sees it: one lock-free load, no allocation
    /// beyond a reference count.
    #[inline]
    pub(crate) fn lookup(&self, now: EpochMillis) -> Lookup {
        let guard = self.current.load();
        match guard.as_ref() {
            Some(t) if now < t.refresh_at => Lookup::Fresh(AccessToken(Arc::clone(t))),
            Some(t) if now < t.expires_at => Lookup::Stale(AccessToken(Arc::clone(t))),
            _ => Lookup::Missing,
        }
    }

    /// The token in memory, valid or not.
    pub(crate) fn current(&self) -> Option<AccessToken> {
        self.current.load_full().map(AccessToken)
    }

    /// The token in memory if it is still valid at `now`.
    pub(crate) fn valid(&self, now: EpochMillis) -> Option<AccessToken> {
        self.current().filter(|t| now < t.0.expires_at)
    }

    /// Makes `token` the one in memory.
    pub(crate) fn install(&self, token: &AccessToken) {
        self.current.store(Some(Arc::clone(&token.0)));
    }

    /// Forgets the token in memory; returns it.
    pub(crate) fn clear(&self) -> Option<AccessToken> {
        self.current.swap(None).map(AccessToken)
    }

    /// Forgets `token` if it is still the one in memory (same secret, not replaced meanwhile).
    /// Returns whether it did: of many callers reporting one bad token, one gets `true`.
    pub(crate) fn forget_if_current(&self, token: &AccessToken) -> bool {
        use crate::secret::ExposeSecret as _;
        let current = self.current.load_full();
        let Some(c) = current.as_ref() else {
            return false;
        };
        if c.secret.expose_secret() != token.0.secret.expose_secret() {
            return false;
        }
        let previous = self.current.compare_and_swap(&current, None);
        matches!(&*previous, Some(p) if Arc::ptr_eq(p, c))
    }

    /// `(refresh_at, expires_at)` of the token in memory, if any.
    pub(crate) fn schedule(&self) -> Option<(EpochMillis, EpochMillis)> {
        self.current
            .load()
            .as_ref()
            .map(|t| (t.refresh_at, t.expires_at))
    }

    /// Notes a use at `now` (written at most once a second, so the hot path stays a read).
    #[inline]
    pub(crate) fn touch(&self, now: EpochMillis) {
        if now - self.last_used.load(Ordering::Relaxed) >= 1000 {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// Epoch ms of the last use (to the second), 0 if never.
    pub(crate) fn last_used(&self) -> EpochMillis {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Counts a waiting caller for as long as the guard lives.
    pub(crate) fn waiting(&self) -> super::flight::WaiterGuard<'_> {
        super::flight::WaiterGuard::new(&self.waiters)
    }

    /// Callers waiting now.
    pub(crate) fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }

    /// Whether the token in memory is valid and within `lead` of its refresh point (or past it).
    pub(crate) fn due(&self, now: EpochMillis, lead: Duration) -> bool {
        self.schedule().is_some_and(|(refresh_at, expires_at)| {
            now >= refresh_at.saturating_sub(duration_millis(lead)) && now < expires_at
        })
    }

    /// Claims the right to start a background refresh at `now`: false while one runs, while
    /// backing off after a failure, or when another caller claimed it first.
    pub(crate) fn claim_background(&self, now: EpochMillis) -> bool {
        let next = self.next_attempt_at.load(Ordering::Acquire);
        now >= next
            && self
                .next_attempt_at
                .compare_exchange(next, IN_FLIGHT, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Whether a failure delays the next attempt past `now`.
    pub(crate) fn backing_off(&self, now: EpochMillis) -> bool {
        self.next_attempt(now).is_some()
    }

    /// The error a caller with no valid token gets at `now` without asking Zoho: the last
    /// failure's, while its wait has not passed.
    pub(crate) fn blocked(&self, now: EpochMillis) -> Option<Error> {
        if !self.backing_off(now) {
            return None;
        }
        self.health().as_ref()?.blocking_error.clone()
    }

    /// Whether a blocked caller may look in the store now (at most every 250 ms, so a blocked
    /// connector does not turn every call into a store round trip).
    pub(crate) fn may_look_in_store(&self, now: EpochMillis) -> bool {
        let mut guard = self.health();
        let Some(health) = guard.as_mut() else {
            return false;
        };
        if now.saturating_sub(health.store_looked_at) < STORE_LOOK_EVERY_MS {
            return false;
        }
        health.store_looked_at = now;
        true
    }

    /// The last failure and when it happened (kept after a later success).
    pub(crate) fn last_error(&self) -> Option<(Error, EpochMillis)> {
        self.health().as_ref()?.last_error.clone()
    }

    /// When the next attempt may run, if a failure delays it past `now`.
    pub(crate) fn next_attempt(&self, now: EpochMillis) -> Option<EpochMillis> {
        let next = self.next_attempt_at.load(Ordering::Acquire);
        (next > now && next != IN_FLIGHT).then_some(next)
    }

    /// Updates the schedule after a flight. Returns the failures in a row before this outcome
    /// was counted (after it, for a failure) and the next attempt time.
    pub(crate) fn note(&self, outcome: &Outcome) -> (u32, EpochMillis) {
        let now = self.now();
        let mut guard = self.health();
        let mut failures = 0;
        let next = match outcome {
            Outcome::Found => {
                if let Some(health) = guard.as_mut() {
                    health.blocking_error = None;
                }
                let current = self.next_attempt_at.load(Ordering::Acquire);
                if current == IN_FLIGHT { 0 } else { current }
            }
            Outcome::Minted => {
                if let Some(health) = guard.as_mut() {
                    failures = health
                        .consecutive_failures
                        .max(u32::from(health.blocking_error.is_some()));
                    health.consecutive_failures = 0;
                    health.blocking_error = None;
                }
                0
            }
            Outcome::Failed(e) => {
                let health = guard.get_or_insert_with(Box::default);
                let delay = match (self.policy.refusal_delay(e), e.retry_class()) {
                    (Some(refusal), _) => refusal,
                    (None, RetryClass::Backoff) => {
                        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                        let exp = health.consecutive_failures.saturating_sub(1).min(20);
                        full_jitter(
                            self.policy
                                .backoff_base
                                .saturating_mul(1 << exp)
                                .min(self.policy.backoff_cap),
                        )
                    }
                    (None, _) => Duration::ZERO,
                };
                health.last_error = Some((e.clone(), now));
                health.blocking_error = Some(e.clone());
                failures = health.consecutive_failures.max(1);
                now.saturating_add(duration_millis(delay))
            }
        };
        self.next_attempt_at.store(next, Ordering::Release);
        (failures, next)
    }

    fn health(&self) -> MutexGuard<'_, Option<Box<Health>>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A uniformly random duration in `[0, ceiling]` ("full jitter").
pub(crate) fn full_jitter(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::connector::token::TokenSource;
    use crate::error::TransientKind;
    use crate::secret::AccessTokenSecret;

    fn cell(clock: &ManualClock) -> TokenCell {
        TokenCell::new(
            Arc::new(clock.clone()),
            Policy {
                backoff_base: Duration::from_secs(1),
                backoff_cap: Duration::from_secs(120),
                negative_ttl: Duration::from_secs(30),
                throttle_window: Duration::from_secs(600),
            },
        )
    }

    fn token(issued_at: EpochMillis, lifetime: Duration) -> AccessToken {
        let (refresh_at, expires_at) = refresh_schedule(issued_at, lifetime, None);
        AccessToken(Arc::new(TokenInner {
            secret: AccessTokenSecret::new("t"),
            header: "Zoho-oauthtoken t".into(),
            issued_at: Some(issued_at),
            refresh_at,
            expires_at,
            api_domain: None,
            generation: None,
            source: TokenSource::Minted,
        }))
    }

    fn transient() -> Error {
        Error::Transient {
            connector: "crm".into(),
            kind: TransientKind::ServerError(500),
            detail: "HTTP 500".into(),
        }
    }

    #[test]
    fn refresh_point_margins() {
        let s = |l, r: Option<u64>| {
            refresh_schedule(0, Duration::from_secs(l), r.map(Duration::from_secs))
        };
        assert_eq!(s(3600, None), (2_700_000, 3_600_000));
        assert_eq!(s(600, None), (450_000, 600_000));
        assert_eq!(s(60, None), (45_000, 60_000));
        assert_eq!(s(3600, Some(600)), (600_000, 3_600_000));
        assert_eq!(s(3600, Some(7200)), (3_600_000, 3_600_000));
    }

    #[test]
    fn a_token_is_fresh_then_stale_then_gone_and_one_caller_claims_its_refresh() {
        let clock = ManualClock::new(1_000_000);
        let cell = cell(&clock);
        assert!(matches!(cell.lookup(cell.now()), Lookup::Missing));
        cell.install(&token(cell.now(), Duration::from_secs(3600)));
        assert!(matches!(cell.lookup(cell.now()), Lookup::Fresh(_)));
        assert!(!cell.due(cell.now(), Duration::from_secs(60)));

        clock.advance(Duration::from_secs(45 * 60 - 30));
        assert!(matches!(cell.lookup(cell.now()), Lookup::Fresh(_)));
        assert!(
            cell.due(cell.now(), Duration::from_secs(60)),
            "within the lead"
        );

        clock.advance(Duration::from_secs(30));
        let Lookup::Stale(stale) = cell.lookup(cell.now()) else {
            panic!("past the refresh point, still valid: stale");
        };
        assert!(cell.claim_background(cell.now()));
        assert!(!cell.claim_background(cell.now()), "one claim at a time");
        assert_eq!(
            cell.next_attempt(cell.now()),
            None,
            "in flight is not a delay"
        );

        clock.advance(Duration::from_secs(15 * 60));
        assert!(
            matches!(cell.lookup(cell.now()), Lookup::Missing),
            "expired"
        );
        assert!(cell.current().is_some() && cell.valid(cell.now()).is_none());
        assert!(cell.forget_if_current(&stale));
        assert!(!cell.forget_if_current(&stale), "forgotten once");
    }

    #[test]
    fn failures_back_off_with_jitter_and_block_waiting_callers_until_then() {
        let clock = ManualClock::new(1_000_000);
        // The n-th failure in a row waits a uniform draw from [0, min(1 s · 2^(n-1), 120 s)]:
        // never more, and (over 40 draws) more than half of it at least once.
        for n in 1..=9u32 {
            let ceiling = (1_000i64 << (n - 1)).min(120_000);
            let draws: Vec<i64> = (0..40)
                .map(|_| {
                    let cell = cell(&clock);
                    let mut next = 0;
                    for _ in 0..n {
                        next = cell.note(&Outcome::Failed(transient())).1;
                    }
                    next - cell.now()
                })
                .collect();
            assert!(
                draws.iter().all(|d| (0..=ceiling).contains(d)),
                "{n}: {draws:?}"
            );
            assert!(draws.iter().any(|d| *d > ceiling / 2), "{n}: {draws:?}");
        }
        let cell = cell(&clock);
        let mut failures = 0;
        while failures < 5 {
            let now = cell.now();
            let (n, next) = cell.note(&Outcome::Failed(transient()));
            failures = n;
            if next > now {
                assert!(matches!(cell.blocked(now), Some(Error::Transient { .. })));
                assert!(cell.blocked(next).is_none(), "the wait has passed");
            }
        }
        // A success clears the block and reports the failures it ends.
        assert_eq!(cell.note(&Outcome::Minted), (5, 0));
        assert!(cell.blocked(cell.now()).is_none());
        assert!(cell.last_error().is_some(), "the last error is kept");
    }

    #[test]
    fn permanent_failures_wait_the_negative_ttl_and_throttles_their_window() {
        let clock = ManualClock::new(1_000_000);
        let cell = cell(&clock);
        let now = cell.now();
        let revoked = Error::ReauthorizationRequired {
            connector: "crm".into(),
            grant: "refresh token",
            code: "invalid_code".into(),
            description: None,
            recorded: false,
        };
        assert_eq!(cell.note(&Outcome::Failed(revoked)).1, now + 30_000);
        let throttled = |after| Error::Throttled {
            connector: "crm".into(),
            code: "Access Denied".into(),
            description: None,
            retry_after: after,
            recorded: false,
        };
        assert_eq!(
            cell.note(&Outcome::Failed(throttled(Some(Duration::from_secs(7)))))
                .1,
            now + 7_000
        );
        assert_eq!(
            cell.note(&Outcome::Failed(throttled(None))).1,
            now + 600_000
        );
        // A blocked caller may look in the store, at most every 250 ms.
        assert!(cell.may_look_in_store(now));
        assert!(!cell.may_look_in_store(now + 100));
        assert!(cell.may_look_in_store(now + 250));
    }
}
