//! Side by side in one run, as whole processes: a warm `connector token` (the token already in
//! the SQLite store; issue 13's goal: at most 3× `/bin/true`), `connector token` asking a running
//! agent (`CONNECTOR_AGENT`, no config; issue 21's goal: at most 2× `/bin/true`), and `/bin/true`.
//!
//! Start-up is most of these runs, and it depends on how the binary is linked: measure the build
//! that ships with `CONNECTOR_BENCH_BIN=target/<host>/release/connector` (made by
//! `packaging/build-release`); without it, the dynamically linked one cargo built.

mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use std::process::{Command, Stdio};

fn startup(c: &mut Criterion) {
    let connector = support::connector();
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
        let status = Command::new(&connector)
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
    let socket = dir.path().join("agent.sock");
    let mut agent = Command::new(&connector)
        .args(["serve", "--socket"])
        .arg(&socket)
        .env("CONNECTOR_CONFIG", &config_path)
        .env("CONNECTOR_STORE", &store)
        .env_remove("CONNECTOR_ENCRYPTION_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let via_agent = || {
        let status = Command::new(&connector)
            .args(["token", "crm"])
            .current_dir(empty.path())
            .env("CONNECTOR_AGENT", &socket)
            .env_remove("CONNECTOR_CONFIG")
            .env("CONNECTOR_STORE", "sqlite:/dev/null/unusable.db")
            .stdout(Stdio::null())
            .status()
            .expect("connector");
        assert!(status.success());
    };
    via_agent();
    let mut group = c.benchmark_group("startup");
    group.bench_function("connector_token_warm", |b| b.iter(token));
    group.bench_function("connector_token_via_agent", |b| b.iter(via_agent));
    group.bench_function("bin_true", |b| {
        b.iter(|| {
            let status = Command::new("/bin/true").status().expect("true");
            assert!(status.success());
        })
    });
    group.finish();
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "no mint while measuring"
    );
}

criterion_group!(benches, startup);
criterion_main!(benches);
