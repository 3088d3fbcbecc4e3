//! The `metrics` counters, read back through a debugging recorder. One test: it installs the
//! process-wide recorder before any connection is built.

mod common;

use catalyst_connectors::Error;
use common::Setup;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::collections::HashMap;
use std::time::Duration;
use zoho_emulator::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_hits_misses_mints_stale_serves_refusals_and_store_errors() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    crm.access_token().await.unwrap(); // miss + mint
    for _ in 0..5 {
        crm.access_token().await.unwrap(); // memory hits
    }
    s.advance(Duration::from_secs(45 * 60));
    s.emulator.set_fault(Some(Fault::Http500));
    crm.access_token().await.unwrap(); // served stale; the background refresh fails
    common::settle(&crm).await;
    s.emulator.set_fault(None);
    for _ in 0..20 {
        let _ = crm.force_refresh().await; // the governor refuses after 10 mints in the window
    }
    let err = crm.force_refresh().await.unwrap_err();
    assert!(matches!(err, Error::Throttled { .. }), "{err:?}");

    // A store that fails: Redis-style outage modelled by a store that always errors.
    let broken = s
        .bare_builder()
        .store(Failing)
        .json(serde_json::json!({"down": s.config()["crm"].clone()}))
        .build()
        .unwrap()
        .connector("down")
        .unwrap();
    s.advance(Duration::from_secs(601));
    broken
        .access_token()
        .await
        .expect("a store outage is not an outage");

    let counters: HashMap<(String, Vec<(String, String)>), u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                let (kind_key, labels) = (key.key().name().to_owned(), {
                    let mut l: Vec<(String, String)> = key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    l.sort();
                    l
                });
                Some(((kind_key, labels), n))
            }
            _ => None,
        })
        .collect();
    let get = |name: &str, connector: &str, extra: Option<(&str, &str)>| {
        let mut labels = vec![("connector".to_owned(), connector.to_owned())];
        if let Some((k, v)) = extra {
            labels.push((k.to_owned(), v.to_owned()));
        }
        labels.sort();
        counters
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        get(
            "catalyst_connectors_hits_total",
            "crm",
            Some(("layer", "memory"))
        ),
        5
    );
    assert!(get("catalyst_connectors_misses_total", "crm", None) >= 1);
    assert_eq!(
        get("catalyst_connectors_served_stale_total", "crm", None),
        1
    );
    assert_eq!(
        get(
            "catalyst_connectors_mints_total",
            "crm",
            Some(("outcome", "error"))
        ),
        1
    );
    // The first mint, then 10 forced ones (the first is outside the 10-minute window by then).
    assert_eq!(
        get(
            "catalyst_connectors_mints_total",
            "crm",
            Some(("outcome", "ok"))
        ),
        11
    );
    assert!(get("catalyst_connectors_governor_refusals_total", "crm", None) >= 1);
    assert!(get("catalyst_connectors_store_errors_total", "down", None) >= 2);
}

/// A store whose every operation fails, as an unreachable Redis does.
#[derive(Debug)]
struct Failing;

#[async_trait::async_trait]
impl catalyst_connectors::TokenStore for Failing {
    async fn get(
        &self,
        _: &str,
    ) -> Result<Option<catalyst_connectors::StoredValue>, catalyst_connectors::StoreError> {
        Err(down())
    }
    async fn compare_and_set(
        &self,
        _: catalyst_connectors::TokenWrite<'_>,
    ) -> Result<catalyst_connectors::CasOutcome, catalyst_connectors::StoreError> {
        Err(down())
    }
    async fn delete(
        &self,
        _: &str,
        _: Option<u64>,
    ) -> Result<bool, catalyst_connectors::StoreError> {
        Err(down())
    }
    async fn try_acquire_lease(
        &self,
        _: &str,
        _: &str,
        _: Duration,
    ) -> Result<bool, catalyst_connectors::StoreError> {
        Err(down())
    }
    async fn release_lease(&self, _: &str, _: &str) -> Result<(), catalyst_connectors::StoreError> {
        Err(down())
    }
}

fn down() -> catalyst_connectors::StoreError {
    catalyst_connectors::StoreError::new(
        "test",
        catalyst_connectors::StoreErrorKind::Unavailable,
        "down",
    )
}
