//! Injectable wall clock. Every expiry decision in the crate reads time through [`Clock`], so tests
//! can move time forward by an hour without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the unit of every timestamp in token records (as in the
/// official SDKs' `expires_at`).
pub type EpochMillis = i64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_millis(&self) -> EpochMillis;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> EpochMillis {
        system_time_to_millis(SystemTime::now())
    }
}

/// Converts a [`SystemTime`] to epoch milliseconds (negative before 1970).
pub fn system_time_to_millis(t: SystemTime) -> EpochMillis {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_millis(d),
        Err(e) => -duration_millis(e.duration()),
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> EpochMillis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The time from `now` until `at`, at least `floor`.
pub(crate) fn until(now: EpochMillis, at: EpochMillis, floor: Duration) -> Duration {
    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0)).max(floor)
}

/// Converts epoch milliseconds to a [`SystemTime`].
pub fn millis_to_system_time(ms: EpochMillis) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// ```
/// use catalyst_connectors::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_millis(), 3_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `start` (epoch milliseconds).
    pub fn new(start: EpochMillis) -> Self {
        Self(Arc::new(AtomicI64::new(start)))
    }

    /// A clock starting at the current real time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_millis())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_millis(by), Ordering::SeqCst);
    }

    /// Sets the clock to `to` (epoch milliseconds).
    pub fn set(&self, to: EpochMillis) {
        self.0.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> EpochMillis {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_system_time() {
        for ms in [0, 1, 1_700_000_000_123, -5_000] {
            assert_eq!(system_time_to_millis(millis_to_system_time(ms)), ms);
        }
    }
}
