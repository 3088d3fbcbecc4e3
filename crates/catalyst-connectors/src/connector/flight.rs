//! The single flight: one acquisition at a time, shared by every caller that asks meanwhile.
//!
//! A flight is a shared future kept in its owner's [`SingleFlight`] slot until it completes.
//! Whoever polls it drives it; a caller that gives up (deadline, cancellation) does not cancel it,
//! because a flight that cannot finish at once gets a driver task on the Tokio runtime. Every
//! waiter gets its result, success or error. The slot is cleared by the flight itself, after its
//! work and before its waiters see the result, so a caller that arrives later starts a new one.
//!
//! Generic over what it runs, so it is tested here with a counting fetcher.

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A flight in progress: await it (or a clone) for its result.
pub(crate) type Flight<T> = Shared<BoxFuture<'static, T>>;

/// How a newly started flight is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    /// The starter waits for it: it is polled once at once, and gets a driver task only if it
    /// cannot finish there (a flight that finishes at once costs no task).
    Caller,
    /// Nobody waits: it always runs on a driver task, never in the caller that started it.
    Background,
}

/// Something that owns a [`SingleFlight`] and can be moved into the flight (a cheap clone).
pub(crate) trait FlightOwner: Clone + Send + Sync + 'static {
    /// What a flight yields; every waiter gets a clone.
    type Output: Clone + Send + Sync + 'static;
    /// The owner's flight slot.
    fn single_flight(&self) -> &SingleFlight<Self::Output>;
}

/// The slot holding an owner's flight in progress, if any.
pub(crate) struct SingleFlight<T> {
    slot: Mutex<Option<Flight<T>>>,
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    pub(crate) fn new() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }

    /// The flight running now, if any (to await its end without starting one).
    pub(crate) fn current(&self) -> Option<Flight<T>> {
        self.lock().clone()
    }

    /// Whether a flight is running now.
    pub(crate) fn is_running(&self) -> bool {
        self.lock().is_some()
    }

    // A std mutex, never held across an await.
    fn lock(&self) -> MutexGuard<'_, Option<Flight<T>>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins `owner`'s flight in progress, or starts `run(owner)` as its new flight and makes
    /// sure it runs to the end (see [`Drive`]). Without a Tokio runtime a flight that cannot
    /// finish at once is driven by whoever awaits it.
    pub(crate) fn join_or_start<O, F, Fut>(owner: &O, drive: Drive, run: F) -> Flight<T>
    where
        O: FlightOwner<Output = T>,
        F: FnOnce(O) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut slot = owner.single_flight().lock();
        if let Some(f) = slot.as_ref() {
            return f.clone();
        }
        let work = run(owner.clone());
        let this = owner.clone();
        let f = async move {
            let result = work.await;
            *this.single_flight().lock() = None;
            result
        }
        .boxed()
        .shared();
        *slot = Some(f.clone());
        drop(slot);
        if (drive == Drive::Background || f.clone().now_or_never().is_none())
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let driver = f.clone();
            handle.spawn(async move {
                let _ = driver.await;
            });
        }
        f
    }
}

/// Counts a waiting caller for as long as it lives.
pub(crate) struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{Notify, Semaphore};

    /// A fetcher that counts its runs, finishes only when the test opens its gate, and says
    /// when a run has finished. No test orders itself with sleeps: `join_or_start` is
    /// synchronous (a flight exists as soon as it returns), and the current-thread runtime
    /// runs a driver task's poll to its end before the test task resumes.
    struct Counting {
        flight: SingleFlight<Result<u32, String>>,
        runs: AtomicUsize,
        gate: Semaphore,
        finished: Notify,
        fail: bool,
    }

    #[derive(Clone)]
    struct Owner(Arc<Counting>);

    impl FlightOwner for Owner {
        type Output = Result<u32, String>;
        fn single_flight(&self) -> &SingleFlight<Self::Output> {
            &self.0.flight
        }
    }

    impl Owner {
        fn new(fail: bool) -> Self {
            Self(Arc::new(Counting {
                flight: SingleFlight::new(),
                runs: AtomicUsize::new(0),
                gate: Semaphore::new(0),
                finished: Notify::new(),
                fail,
            }))
        }

        fn fetch(&self, drive: Drive) -> Flight<Result<u32, String>> {
            SingleFlight::join_or_start(self, drive, |o: Owner| async move {
                let n = o.0.runs.fetch_add(1, Ordering::SeqCst) as u32 + 1;
                let permit = o.0.gate.acquire().await.map_err(|e| e.to_string());
                o.0.finished.notify_one();
                let _permit = permit?;
                if o.0.fail {
                    Err(format!("run {n} failed"))
                } else {
                    Ok(n)
                }
            })
        }

        fn runs(&self) -> usize {
            self.0.runs.load(Ordering::SeqCst)
        }

        /// Waits until a run has finished and its driver has cleared the slot.
        async fn finished(&self) {
            self.0.finished.notified().await;
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let owner = Owner::new(false);
        let flights: Vec<_> = (0..50).map(|_| owner.fetch(Drive::Caller)).collect();
        assert!(owner.0.flight.is_running());
        assert_eq!(owner.runs(), 1, "started once, joined 49 times");
        owner.0.gate.add_permits(1);
        let waiters: Vec<_> = flights.into_iter().map(tokio::spawn).collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(1));
        }
        assert_eq!(owner.runs(), 1);
        assert!(!owner.0.flight.is_running(), "the slot is cleared");
        // A later caller starts a new flight.
        owner.0.gate.add_permits(1);
        assert_eq!(owner.fetch(Drive::Caller).await, Ok(2));
        assert_eq!(owner.runs(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_does_not_cancel_the_flight() {
        let owner = Owner::new(false);
        // The starter gives up before the flight can finish (the paused clock runs to the
        // deadline as soon as everything waits).
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), owner.fetch(Drive::Caller)).await;
        assert!(gave_up.is_err());
        assert!(
            owner.0.flight.is_running(),
            "still in flight after its starter left"
        );
        // Nobody waits now; the driver task finishes it.
        owner.0.gate.add_permits(1);
        owner.finished().await;
        assert!(
            !owner.0.flight.is_running(),
            "the driver task completed the flight"
        );
        assert_eq!(owner.runs(), 1);
    }

    #[tokio::test]
    async fn a_joiner_gets_the_result_of_a_flight_its_starter_abandoned() {
        let owner = Owner::new(false);
        let starter = tokio::spawn(owner.fetch(Drive::Caller));
        starter.abort();
        let joiner = tokio::spawn(owner.fetch(Drive::Caller));
        owner.0.gate.add_permits(1);
        assert_eq!(joiner.await.unwrap(), Ok(1));
        assert_eq!(owner.runs(), 1);
    }

    #[tokio::test]
    async fn an_error_reaches_every_waiter() {
        let owner = Owner::new(true);
        let flights: Vec<_> = (0..10).map(|_| owner.fetch(Drive::Caller)).collect();
        owner.0.gate.add_permits(1);
        let waiters: Vec<_> = flights.into_iter().map(tokio::spawn).collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Err("run 1 failed".to_owned()));
        }
        assert_eq!(owner.runs(), 1);
    }

    #[tokio::test]
    async fn a_background_flight_never_runs_in_its_starter() {
        let owner = Owner::new(false);
        owner.0.gate.add_permits(1);
        // Dropped at once: a caller-driven flight that could finish would have run here.
        drop(owner.fetch(Drive::Background));
        assert_eq!(owner.runs(), 0, "not polled by the starter");
        owner.finished().await;
        assert_eq!(owner.runs(), 1);
        assert!(!owner.0.flight.is_running());
    }
}
