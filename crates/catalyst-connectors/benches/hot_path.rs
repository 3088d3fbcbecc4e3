//! The hot path: `access_token()` on a valid in-memory token (goal ≤ 100 ns), and a cold
//! acquisition from a shared store for comparison.

use catalyst_connectors::{Connection, ConnectorConfig, MemoryStore};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt as _;
use std::hint::black_box;
use std::sync::Arc;

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (emulator, connection, store) = runtime.block_on(async {
        let emulator = zoho_emulator::start().await.expect("emulator");
        emulator.add_client("1000.BENCH", "bench-secret");
        let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
        let store = Arc::new(MemoryStore::new());
        let connection = Connection::builder()
            .connector(
                ConnectorConfig::builder("crm")
                    .client_id("1000.BENCH")
                    .client_secret("bench-secret")
                    .token_url(emulator.token_url())
                    .refresh_token(refresh_token)
                    .build()
                    .expect("config"),
            )
            .shared_store(store.clone())
            .build()
            .expect("connection");
        connection
            .connector("crm")
            .expect("crm")
            .access_token()
            .await
            .expect("first token");
        (emulator, connection, store)
    });
    let crm = connection.connector("crm").expect("crm");

    c.bench_function("access_token/memory_hit", |b| {
        b.iter(|| {
            let token = crm
                .access_token()
                .now_or_never()
                .expect("ready at once")
                .expect("token");
            black_box(token)
        })
    });

    // Memory evicted: the call reads the (in-process) store and parses the record.
    c.bench_function("access_token/memory_store_hit", |b| {
        b.to_async(&runtime).iter(|| {
            crm.evict_memory();
            async { black_box(crm.access_token().await.expect("token")) }
        })
    });

    // Building a connection (HTTP client and TLS roots included): do it once per process.
    c.bench_function("connection/build", |b| {
        let config = crm.config().clone();
        b.iter(|| {
            black_box(
                Connection::builder()
                    .connector(config.clone())
                    .shared_store(store.clone())
                    .build()
                    .expect("connection"),
            )
        })
    });
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "benchmarks never mint again"
    );
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
