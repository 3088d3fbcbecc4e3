//! The SQLite store: a token read from the file when memory is cold (goal ≤ 50 µs median), with
//! and without encryption; the first read of a new `Connection` against a bare SQLite `SELECT` +
//! JSON parse (goal ≤ 4×); and the multi-process stampede (8 processes × 50 callers on one file).
//!
//! The stampede's child processes are this benchmark binary itself, run with `STAMPEDE_CHILD` set.

use catalyst_connectors::{Connection, ConnectorConfig, EncryptionKey, ExposeSecret, SqliteStore};
use criterion::Criterion;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Duration;

fn config(token_url: &str, refresh_token: &str) -> ConnectorConfig {
    ConnectorConfig::builder("crm")
        .client_id("1000.BENCH")
        .client_secret("bench-secret")
        .token_url(token_url)
        .refresh_token(refresh_token)
        .build()
        .expect("config")
}

fn cold_memory_reads(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let emulator = runtime.block_on(zoho_emulator::start()).expect("emulator");
    emulator.add_client("1000.BENCH", "bench-secret");
    let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, key) in [
        ("plain", None),
        ("encrypted", Some(EncryptionKey::generate())),
    ] {
        let mut builder = Connection::builder()
            .ignore_env()
            .store(SqliteStore::open(dir.path().join(format!("{name}.db"))).expect("store"))
            .connector(config(&emulator.token_url(), &refresh_token));
        if let Some(k) = key {
            builder = builder.encryption_key(k);
        }
        let crm = builder
            .build()
            .expect("connection")
            .connector("crm")
            .expect("crm");
        runtime.block_on(crm.access_token()).expect("first token");
        c.bench_function(&format!("sqlite/read_cold_memory/{name}"), |b| {
            b.to_async(&runtime).iter(|| {
                crm.evict_memory();
                async { black_box(crm.access_token().await.expect("token")) }
            })
        });
    }
    assert_eq!(
        emulator.stats().token_requests,
        2,
        "one mint per store, none while measuring"
    );
}

/// Issues 13's and 22's goal, side by side in one run: the library's first read with memory cold
/// (the first `access_token()` of a new `Connection` on an open store, the token in SQLite)
/// against a bare SQLite `SELECT` + JSON parse of the same record (goal: at most 4× it).
fn first_read_vs_bare_select(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let emulator = runtime.block_on(zoho_emulator::start()).expect("emulator");
    emulator.add_client("1000.BENCH", "bench-secret");
    let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("first.db");
    let store: std::sync::Arc<dyn catalyst_connectors::TokenStore> =
        std::sync::Arc::new(SqliteStore::open(&path).expect("store"));
    let build = || {
        Connection::builder()
            .ignore_env()
            .shared_store(store.clone())
            .connector(config(&emulator.token_url(), &refresh_token))
            .build()
            .expect("connection")
    };
    let key = {
        let crm = build().connector("crm").expect("crm");
        runtime.block_on(crm.access_token()).expect("first token");
        crm.cache_key()
    };
    let mut group = c.benchmark_group("first_read");
    // The first `access_token()` of a connection whose memory is cold: what a long-lived process
    // pays once. Building the connection (config checks) is set up outside the timing.
    group.bench_function("library/first_access_token_cold_memory", |b| {
        b.to_async(&runtime).iter_batched(
            || build().connector("crm").expect("crm"),
            |crm| async move { black_box(crm.access_token().await.expect("token")) },
            criterion::BatchSize::SmallInput,
        )
    });
    let bare = rusqlite::Connection::open(&path).expect("open");
    group.bench_function("bare/sqlite_select_json_parse", |b| {
        b.iter(|| {
            let data: String = bare
                .prepare_cached("SELECT data FROM records WHERE key = ?1 AND expires_at > ?2")
                .expect("prepare")
                .query_row(rusqlite::params![key, 0_i64], |r| r.get(0))
                .expect("row");
            let v: serde_json::Value = serde_json::from_str(&data).expect("json");
            black_box(v)
        })
    });
    group.finish();
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "no mint while measuring"
    );
}

fn stampede(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let emulator = runtime.block_on(zoho_emulator::start()).expect("emulator");
    emulator.add_client("1000.BENCH", "bench-secret");
    emulator.set_latency(Duration::from_millis(50));
    let mut settings = emulator.settings();
    settings.mint_limit = 0; // each iteration mints once; do not throttle the benchmark
    emulator.set_settings(settings);
    let exe = std::env::current_exe().expect("current exe");
    let mut group = c.benchmark_group("sqlite");
    group.sample_size(10);
    group.bench_function("stampede/8_processes_x_50_callers", |b| {
        b.iter(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = dir.path().join("tokens.db");
            let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
            let before = emulator.stats().token_requests;
            let children: Vec<_> = (0..8)
                .map(|_| {
                    Command::new(&exe)
                        .env("STAMPEDE_CHILD", "1")
                        .env("STAMPEDE_DB", &db)
                        .env("STAMPEDE_TOKEN_URL", emulator.token_url())
                        .env("STAMPEDE_REFRESH_TOKEN", &refresh_token)
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("spawn child")
                })
                .collect();
            for mut child in children {
                assert!(child.wait().expect("child").success(), "a child failed");
            }
            assert_eq!(
                emulator.stats().token_requests - before,
                1,
                "one mint per stampede"
            );
        })
    });
    group.finish();
}

/// One child process of the stampede: its own Connection, 50 concurrent callers.
fn child() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let connection = Connection::builder()
            .ignore_env()
            .store(SqliteStore::open(var("STAMPEDE_DB")).expect("store"))
            .connector(config(
                &var("STAMPEDE_TOKEN_URL"),
                &var("STAMPEDE_REFRESH_TOKEN"),
            ))
            .build()
            .expect("connection");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let crm = connection.connector("crm").expect("crm");
                tokio::spawn(async move { crm.access_token().await })
            })
            .collect();
        for t in tasks {
            let token = t.await.expect("task").expect("token");
            black_box(token.expose_secret().len());
        }
    });
}

fn main() {
    if std::env::var_os("STAMPEDE_CHILD").is_some() {
        child();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    cold_memory_reads(&mut c);
    first_read_vs_bare_select(&mut c);
    stampede(&mut c);
    c.final_summary();
}
