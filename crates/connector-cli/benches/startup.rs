//! Issue 13's goal, side by side in one run: a warm `connector token` (the token already in the
//! SQLite store) against `/bin/true`, as whole processes (goal: at most 3× `/bin/true`).

use criterion::{Criterion, criterion_group, criterion_main};
use std::process::{Command, Stdio};

fn startup(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let emulator = runtime.block_on(zoho_emulator::start()).expect("emulator");
    emulator.add_client("1000.BENCH", "bench-secret");
    let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serde_json::json!({"crm": {
        "client_id": "1000.BENCH", "client_secret": "bench-secret",
        "auth_url": emulator.token_url(), "refresh_url": emulator.token_url(),
        "refresh_token": refresh_token,
    }});
    let config_path = dir.path().join("connectors.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let store = format!("sqlite:{}", dir.path().join("tokens.db").display());
    let token = || {
        let status = Command::new(env!("CARGO_BIN_EXE_connector"))
            .args(["token", "crm"])
            .env("CONNECTOR_CONFIG", &config_path)
            .env("CONNECTOR_STORE", &store)
            .env_remove("CONNECTOR_ENCRYPTION_KEY")
            .stdout(Stdio::null())
            .status()
            .expect("connector");
        assert!(status.success());
    };
    token(); // mint once; every measured run reads the store
    let mut group = c.benchmark_group("startup");
    group.bench_function("connector_token_warm", |b| b.iter(token));
    group.bench_function("bin_true", |b| {
        b.iter(|| {
            let status = Command::new("/bin/true").status().expect("true");
            assert!(status.success());
        })
    });
    group.finish();
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "no mint while measuring"
    );
}

criterion_group!(benches, startup);
criterion_main!(benches);
