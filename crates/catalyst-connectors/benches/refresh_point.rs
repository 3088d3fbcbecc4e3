//! Caller latency across the refresh point: calls made while the token turns stale and a
//! background refresh runs (emulator latency 50 ms) should cost what the hot path costs. Prints
//! p50 / p99 / max over all measured calls, besides criterion's estimate.

use catalyst_connectors::{Connection, ConnectorConfig, ManualClock, MemoryStore};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt as _;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn refresh_point(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let emulator = runtime.block_on(zoho_emulator::start()).expect("emulator");
    emulator.add_client("1000.BENCH", "bench-secret");
    let mut settings = emulator.settings();
    settings.mint_limit = 0;
    settings.live_token_cap = 0;
    settings.latency_ms = 50;
    emulator.set_settings(settings);
    let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
    let clock = ManualClock::starting_now();
    let connection = Connection::builder()
        .ignore_env()
        .store(MemoryStore::with_clock(Arc::new(clock.clone())))
        .clock(clock.clone())
        .mint_limit(0, Duration::from_secs(600))
        .connector(
            ConnectorConfig::builder("crm")
                .client_id("1000.BENCH")
                .client_secret("bench-secret")
                .token_url(emulator.token_url())
                .refresh_token(refresh_token)
                .build()
                .expect("config"),
        )
        .build()
        .expect("connection");
    let crm = connection.connector("crm").expect("crm");
    runtime.block_on(crm.access_token()).expect("first token");

    let samples = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let recorded = Arc::clone(&samples);
    c.bench_function("access_token/across_refresh_point", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut local = Vec::with_capacity(iters as usize);
            for i in 0..iters {
                if i % 1000 == 0 && !crm.is_refreshing() {
                    // Jump to this token's refresh point: the next call finds it stale.
                    let status = runtime.block_on(crm.status());
                    if let Some(at) = status.refresh_at {
                        clock.set(catalyst_connectors::system_time_to_millis(at));
                    }
                }
                let started = Instant::now();
                let token = crm
                    .access_token()
                    .now_or_never()
                    .expect("never waits")
                    .expect("token");
                let took = started.elapsed();
                black_box(token);
                total += took;
                local.push(took);
            }
            recorded.lock().expect("samples").extend(local);
            total
        })
    });
    let mut all = samples.lock().expect("samples").clone();
    all.sort_unstable();
    if !all.is_empty() {
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "across the refresh point: {} calls, p50 {:?}, p99 {:?}, max {:?}; {} token requests",
            all.len(),
            pct(0.50),
            pct(0.99),
            all[all.len() - 1],
            emulator.stats().token_requests
        );
    }
}

criterion_group!(benches, refresh_point);
criterion_main!(benches);
