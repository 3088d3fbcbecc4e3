//! The conformance suite every [`TokenStore`] must pass — ours (memory, SQLite, …) and yours.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use catalyst_connectors::store::{MemoryStore, conformance::{self, TimeControl}};
//! use catalyst_connectors::ManualClock;
//! use std::sync::Arc;
//! let clock = ManualClock::new(1_700_000_000_000);
//! let store = Arc::new(MemoryStore::with_clock(Arc::new(clock.clone())));
//! conformance::run_all(store, TimeControl::Manual(clock)).await.unwrap();
//! # }
//! ```
//!
//! Each check uses its own keys (prefixed with a random run id), so a shared backend can run the
//! suite while other data lives in it.

use super::{CasOutcome, TokenStore, TokenWrite};
use crate::clock::ManualClock;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How the suite moves the store's time forward to test expiry.
#[derive(Debug, Clone)]
pub enum TimeControl {
    /// The store reads this clock: the suite advances it.
    Manual(ManualClock),
    /// The store uses real time (e.g. a server's): the suite sleeps past short TTLs.
    Real,
}

impl TimeControl {
    async fn pass(&self, d: Duration) {
        match self {
            TimeControl::Manual(c) => c.advance(d),
            TimeControl::Real => tokio::time::sleep(d).await,
        }
    }
}

/// A failed conformance check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check that failed.
    pub check: &'static str,
    /// What was observed.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store conformance check `{}` failed: {}",
            self.check, self.detail
        )
    }
}

impl std::error::Error for Failure {}

type Check = Result<(), Failure>;

macro_rules! ensure {
    ($check:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Failure { check: $check, detail: format!($($fmt)+) });
        }
    };
}

fn store_err(check: &'static str) -> impl Fn(super::StoreError) -> Failure {
    move |e| Failure {
        check,
        detail: format!("store error: {e}"),
    }
}

fn key(run: &str, name: &str) -> String {
    format!("ZC_CONN_conformance-{run}:{name}")
}

const HOUR: Duration = Duration::from_secs(3600);

/// Performs a write that must happen; returns the new generation.
async fn written(
    store: &dyn TokenStore,
    check: &'static str,
    write: TokenWrite<'_>,
    what: &str,
) -> Result<u64, Failure> {
    match store
        .compare_and_set(write)
        .await
        .map_err(store_err(check))?
    {
        CasOutcome::Written { generation } => Ok(generation),
        other => Err(Failure {
            check,
            detail: format!("{what}: {other:?}"),
        }),
    }
}

/// Runs every check; stops at the first failure.
pub async fn run_all(store: Arc<dyn TokenStore>, time: TimeControl) -> Result<(), Failure> {
    let run = format!("{:08x}", rand::random::<u32>());
    get_put_delete(&*store, &run).await?;
    compare_and_set(&*store, &run).await?;
    generations_never_repeat(&*store, &run).await?;
    refresh_records(&*store, &run).await?;
    arbitrary_data(&*store, &run).await?;
    expiry(&*store, &run, &time).await?;
    lease_exclusivity(&*store, &run).await?;
    lease_expiry(&*store, &run, &time).await?;
    concurrent_writers(Arc::clone(&store), &run).await?;
    concurrent_leases(Arc::clone(&store), &run).await?;
    Ok(())
}

/// Absent keys read as `None`; a written record reads back; deletes remove it.
pub async fn get_put_delete(store: &dyn TokenStore, run: &str) -> Check {
    const C: &str = "get_put_delete";
    let k = key(run, "basic");
    ensure!(
        C,
        store.get(&k).await.map_err(store_err(C))?.is_none(),
        "absent key returned a value"
    );
    let generation = written(
        store,
        C,
        TokenWrite::new(&k, None, "v1", HOUR),
        "insert into an absent key",
    )
    .await?;
    ensure!(C, generation >= 1, "generation {generation} < 1");
    let got = store.get(&k).await.map_err(store_err(C))?;
    ensure!(
        C,
        got.as_ref().map(|v| (v.generation, v.data.as_str())) == Some((generation, "v1")),
        "read back {got:?}"
    );
    ensure!(
        C,
        store.delete(&k, None).await.map_err(store_err(C))?,
        "delete reported nothing deleted"
    );
    ensure!(
        C,
        store.get(&k).await.map_err(store_err(C))?.is_none(),
        "deleted key still readable"
    );
    ensure!(
        C,
        !store.delete(&k, None).await.map_err(store_err(C))?,
        "second delete reported a deletion"
    );
    Ok(())
}

/// Writes succeed only against the generation they expect.
pub async fn compare_and_set(store: &dyn TokenStore, run: &str) -> Check {
    const C: &str = "compare_and_set";
    let k = key(run, "cas");
    let g1 = written(
        store,
        C,
        TokenWrite::new(&k, None, "a", HOUR),
        "first insert",
    )
    .await?;
    let dup = store
        .compare_and_set(TokenWrite::new(&k, None, "b", HOUR))
        .await
        .map_err(store_err(C))?;
    ensure!(
        C,
        dup == CasOutcome::Conflict { current: Some(g1) },
        "insert over an existing record: {dup:?}"
    );
    let stale = store
        .compare_and_set(TokenWrite::new(&k, Some(g1 + 100), "b", HOUR))
        .await
        .map_err(store_err(C))?;
    ensure!(
        C,
        stale == CasOutcome::Conflict { current: Some(g1) },
        "write with a wrong generation: {stale:?}"
    );
    let g2 = written(
        store,
        C,
        TokenWrite::new(&k, Some(g1), "c", HOUR),
        "write with the right generation",
    )
    .await?;
    ensure!(C, g2 > g1, "generation did not grow: {g1} then {g2}");
    let late = store
        .compare_and_set(TokenWrite::new(&k, Some(g1), "late", HOUR))
        .await
        .map_err(store_err(C))?;
    ensure!(
        C,
        matches!(late, CasOutcome::Conflict { .. }),
        "a late writer overwrote a newer record: {late:?}"
    );
    let got = store.get(&k).await.map_err(store_err(C))?;
    ensure!(
        C,
        got.map(|v| v.data) == Some("c".into()),
        "wrong data after writes"
    );
    ensure!(
        C,
        !store.delete(&k, Some(g1)).await.map_err(store_err(C))?,
        "delete with a stale generation deleted"
    );
    ensure!(
        C,
        store.get(&k).await.map_err(store_err(C))?.is_some(),
        "record gone after a refused delete"
    );
    ensure!(
        C,
        store.delete(&k, Some(g2)).await.map_err(store_err(C))?,
        "delete with the current generation refused"
    );
    Ok(())
}

/// A key deleted and written again never reuses a generation (no ABA).
pub async fn generations_never_repeat(store: &dyn TokenStore, run: &str) -> Check {
    const C: &str = "generations_never_repeat";
    let k = key(run, "aba");
    let mut last = 0;
    for round in 0..3 {
        let generation = written(
            store,
            C,
            TokenWrite::new(&k, None, "x", HOUR),
            &format!("round {round}"),
        )
        .await?;
        ensure!(
            C,
            generation > last,
            "round {round}: generation {generation} after {last}"
        );
        last = generation;
        store.delete(&k, None).await.map_err(store_err(C))?;
    }
    Ok(())
}

/// A refresh record written alongside a token is readable, even when the token write conflicts.
pub async fn refresh_records(store: &dyn TokenStore, run: &str) -> Check {
    const C: &str = "refresh_records";
    let k = key(run, "tok");
    let rk = key(run, "rt");
    store
        .compare_and_set(TokenWrite::new(&k, None, "t1", HOUR).with_refresh(&rk, "r1"))
        .await
        .map_err(store_err(C))?;
    let r = store.get(&rk).await.map_err(store_err(C))?;
    ensure!(
        C,
        r.map(|v| v.data) == Some("r1".into()),
        "refresh record not written"
    );
    let out = store
        .compare_and_set(TokenWrite::new(&k, None, "t2", HOUR).with_refresh(&rk, "r2"))
        .await
        .map_err(store_err(C))?;
    ensure!(
        C,
        matches!(out, CasOutcome::Conflict { .. }),
        "token write should conflict: {out:?}"
    );
    let r = store.get(&rk).await.map_err(store_err(C))?;
    ensure!(
        C,
        r.map(|v| v.data) == Some("r2".into()),
        "a rotated refresh token was lost on conflict"
    );
    let t = store.get(&k).await.map_err(store_err(C))?;
    ensure!(
        C,
        t.map(|v| v.data) == Some("t1".into()),
        "the conflicting token write changed the record"
    );
    Ok(())
}

/// Data is stored verbatim, whatever it holds (stores never interpret records).
pub async fn arbitrary_data(store: &dyn TokenStore, run: &str) -> Check {
    const C: &str = "arbitrary_data";
    let samples = [
        String::new(),
        "{not json".to_owned(),
        "naïve ✓ 😀 \"quoted\" \\ \n\t".to_owned(),
        "x".repeat(15_000),
    ];
    for (i, data) in samples.iter().enumerate() {
        let k = key(run, &format!("data{i}"));
        store
            .compare_and_set(TokenWrite::new(&k, None, data, HOUR))
            .await
            .map_err(store_err(C))?;
        let got = store.get(&k).await.map_err(store_err(C))?;
        ensure!(
            C,
            got.map(|v| v.data).as_ref() == Some(data),
            "sample {i} did not round-trip"
        );
    }
    Ok(())
}

/// Records disappear after their TTL.
pub async fn expiry(store: &dyn TokenStore, run: &str, time: &TimeControl) -> Check {
    const C: &str = "expiry";
    let k = key(run, "ttl");
    store
        .compare_and_set(TokenWrite::new(&k, None, "short", Duration::from_secs(1)))
        .await
        .map_err(store_err(C))?;
    ensure!(
        C,
        store.get(&k).await.map_err(store_err(C))?.is_some(),
        "record gone before its TTL"
    );
    time.pass(Duration::from_millis(1_500)).await;
    ensure!(
        C,
        store.get(&k).await.map_err(store_err(C))?.is_none(),
        "record readable after its TTL"
    );
    let out = store
        .compare_and_set(TokenWrite::new(&k, None, "again", HOUR))
        .await
        .map_err(store_err(C))?;
    ensure!(
        C,
        matches!(out, CasOutcome::Written { .. }),
        "an expired key is not absent for writes: {out:?}"
    );
    Ok(())
}

/// Only one owner holds a lease; the holder can extend it; only the holder can release it.
pub async fn lease_exclusivity(store: &dyn TokenStore, run: &str) -> Check {
    const C: &str = "lease_exclusivity";
    let k = key(run, "lease");
    let ttl = Duration::from_secs(30);
    ensure!(
        C,
        store
            .try_acquire_lease(&k, "a", ttl)
            .await
            .map_err(store_err(C))?,
        "free lease refused"
    );
    ensure!(
        C,
        !store
            .try_acquire_lease(&k, "b", ttl)
            .await
            .map_err(store_err(C))?,
        "held lease granted to another owner"
    );
    ensure!(
        C,
        store
            .try_acquire_lease(&k, "a", ttl)
            .await
            .map_err(store_err(C))?,
        "holder could not extend its lease"
    );
    store.release_lease(&k, "b").await.map_err(store_err(C))?;
    ensure!(
        C,
        !store
            .try_acquire_lease(&k, "b", ttl)
            .await
            .map_err(store_err(C))?,
        "a non-holder released the lease"
    );
    store.release_lease(&k, "a").await.map_err(store_err(C))?;
    ensure!(
        C,
        store
            .try_acquire_lease(&k, "b", ttl)
            .await
            .map_err(store_err(C))?,
        "released lease not free"
    );
    ensure!(
        C,
        store.get(&k).await.map_err(store_err(C))?.is_none(),
        "a lease is visible as a record"
    );
    store.release_lease(&k, "b").await.map_err(store_err(C))?;
    Ok(())
}

/// A lease whose holder vanished frees itself after its TTL.
pub async fn lease_expiry(store: &dyn TokenStore, run: &str, time: &TimeControl) -> Check {
    const C: &str = "lease_expiry";
    let k = key(run, "lease-ttl");
    ensure!(
        C,
        store
            .try_acquire_lease(&k, "dead", Duration::from_secs(1))
            .await
            .map_err(store_err(C))?,
        "free lease refused"
    );
    time.pass(Duration::from_millis(1_500)).await;
    ensure!(
        C,
        store
            .try_acquire_lease(&k, "next", Duration::from_secs(30))
            .await
            .map_err(store_err(C))?,
        "expired lease not taken over"
    );
    ensure!(
        C,
        !store
            .try_acquire_lease(&k, "dead", Duration::from_secs(1))
            .await
            .map_err(store_err(C))?,
        "expired holder took the lease back"
    );
    store
        .release_lease(&k, "next")
        .await
        .map_err(store_err(C))?;
    Ok(())
}

/// Many concurrent read-modify-write loops lose no update.
pub async fn concurrent_writers(store: Arc<dyn TokenStore>, run: &str) -> Check {
    const C: &str = "concurrent_writers";
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 10;
    let k = key(run, "counter");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = Arc::clone(&store);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut attempts = 0;
            while done < INCREMENTS {
                attempts += 1;
                if attempts > 10_000 {
                    return Err("too many conflicts".to_owned());
                }
                let current = store.get(&k).await.map_err(|e| e.to_string())?;
                let (expected, n) = match &current {
                    Some(v) => (
                        Some(v.generation),
                        v.data.parse::<usize>().map_err(|e| e.to_string())?,
                    ),
                    None => (None, 0),
                };
                let next = (n + 1).to_string();
                match store
                    .compare_and_set(TokenWrite::new(&k, expected, &next, HOUR))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    CasOutcome::Written { .. } => done += 1,
                    CasOutcome::Conflict { .. } => tokio::task::yield_now().await,
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Failure {
                    check: C,
                    detail: e,
                });
            }
            Err(e) => {
                return Err(Failure {
                    check: C,
                    detail: format!("writer task failed: {e}"),
                });
            }
        }
    }
    let total = store.get(&k).await.map_err(store_err(C))?.map(|v| v.data);
    ensure!(
        C,
        total == Some((WRITERS * INCREMENTS).to_string()),
        "lost updates: counter is {total:?}, expected {}",
        WRITERS * INCREMENTS
    );
    Ok(())
}

/// Of many owners asking at once, exactly one gets the lease.
pub async fn concurrent_leases(store: Arc<dyn TokenStore>, run: &str) -> Check {
    const C: &str = "concurrent_leases";
    let k = key(run, "lease-race");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            let k = k.clone();
            tokio::spawn(async move {
                store
                    .try_acquire_lease(&k, &format!("owner-{i}"), Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(true)) => winners += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(store_err(C)(e)),
            Err(e) => {
                return Err(Failure {
                    check: C,
                    detail: format!("task failed: {e}"),
                });
            }
        }
    }
    ensure!(C, winners == 1, "{winners} owners hold the lease at once");
    Ok(())
}
