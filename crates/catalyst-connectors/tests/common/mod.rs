//! Shared set-up for the integration tests: an emulator with one client and refresh token, and a
//! connection to it on a manual clock.
#![allow(dead_code)]

use catalyst_connectors::{Connection, ConnectionBuilder, Error, ManualClock, MemoryStore};
use serde_json::json;
use std::sync::Arc;
use zoho_emulator::Emulator;

pub const CLIENT_ID: &str = "1000.TESTCLIENT";
pub const CLIENT_SECRET: &str = "client-secret-value-7f3a";

/// A builder that touches neither the environment nor the user's default store.
pub fn hermetic() -> ConnectionBuilder {
    Connection::builder().ignore_env().store(MemoryStore::new())
}

/// A builder that ignores the environment; the test sets the store.
pub fn hermetic_without_store() -> ConnectionBuilder {
    // No host-local tier either: tests never touch the user's data directory.
    Connection::builder().ignore_env().local_store(None)
}

/// `Connection::from_json`, hermetic.
pub fn from_json(v: &serde_json::Value) -> Result<Connection, Error> {
    hermetic().json(v.clone()).build()
}

pub struct Setup {
    pub emulator: Emulator,
    pub refresh_token: String,
    pub clock: ManualClock,
}

impl Setup {
    pub async fn new() -> Self {
        let emulator = zoho_emulator::start().await.expect("start emulator");
        emulator.add_client(CLIENT_ID, CLIENT_SECRET);
        let refresh_token = emulator.add_refresh_token(CLIENT_ID, "ZohoCRM.users.READ");
        Self {
            emulator,
            refresh_token,
            clock: ManualClock::starting_now(),
        }
    }

    /// The SDK-shaped config of connector `crm`.
    pub fn config(&self) -> serde_json::Value {
        json!({
            "crm": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "auth_url": self.emulator.token_url(),
                "refresh_url": self.emulator.token_url(),
                "refresh_token": self.refresh_token,
            }
        })
    }

    pub fn builder(&self) -> ConnectionBuilder {
        Connection::builder()
            .ignore_env()
            .store(MemoryStore::with_clock(Arc::new(self.clock.clone())))
            .json(self.config())
            .clock(self.clock.clone())
    }

    /// Like `builder()` without the config.
    pub fn bare_builder(&self) -> ConnectionBuilder {
        Connection::builder()
            .ignore_env()
            .local_store(None)
            .store(MemoryStore::with_clock(Arc::new(self.clock.clone())))
            .clock(self.clock.clone())
    }

    pub fn connection(&self) -> Connection {
        self.builder().build().expect("valid config")
    }

    /// Moves both the connector's clock and the emulator's.
    pub fn advance(&self, by: std::time::Duration) {
        self.clock.advance(by);
        self.emulator.advance(by);
    }

    pub fn token_requests(&self) -> u64 {
        self.emulator.stats().token_requests
    }
}

/// Waits (real time, briefly) until the connector has no refresh running.
pub async fn settle(connector: &catalyst_connectors::Connector) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connector.is_refreshing() {
        assert!(
            std::time::Instant::now() < deadline,
            "a refresh did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-process tests. A test binary re-runs itself as the child: each binary that uses these has
// an ignored `child_process` test calling `child_process_main`, selected by CHILD_* variables.

/// The name of the ignored test that runs `child_process_main`.
pub const CHILD_TEST: &str = "child_process";

/// One child process: its own Connection on the store `CHILD_STORE`, `CHILD_CALLERS` concurrent
/// callers, each token printed as `TOKEN …`. With `CHILD_EXIT_AFTER_MS`, it then lingers that long
/// and returns from `main` as a short-lived program does: the runtime is dropped with any
/// background refresh still running.
pub fn child_process_main() {
    use catalyst_connectors::ExposeSecret;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let callers: usize = var("CHILD_CALLERS").parse().unwrap();
    let lease_ms: u64 = var("CHILD_LEASE_MS").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = hermetic_without_store()
            .store_spec(var("CHILD_STORE").parse().unwrap())
            .lease_ttl(std::time::Duration::from_millis(lease_ms))
            .json(json!({"crm": {
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "auth_url": var("CHILD_TOKEN_URL"), "refresh_url": var("CHILD_TOKEN_URL"),
                "refresh_token": var("CHILD_REFRESH_TOKEN"),
            }}))
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let crm = connection.connector("crm").unwrap();
                tokio::spawn(async move { crm.access_token().await })
            })
            .collect();
        for t in tasks {
            println!("TOKEN {}", t.await.unwrap().unwrap().expose_secret());
        }
        if let Ok(ms) = std::env::var("CHILD_EXIT_AFTER_MS") {
            tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap())).await;
        }
    });
}

/// Starts a child process on `store` with `callers` callers and the given lease.
pub fn spawn_child(
    s: &Setup,
    store: &str,
    callers: usize,
    lease: std::time::Duration,
) -> std::process::Child {
    child_command(s, store, callers, lease).spawn().unwrap()
}

/// The command [`spawn_child`] runs, to add variables to.
pub fn child_command(
    s: &Setup,
    store: &str,
    callers: usize,
    lease: std::time::Duration,
) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            CHILD_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CHILD_STORE", store)
        .env("CHILD_TOKEN_URL", s.emulator.token_url())
        .env("CHILD_REFRESH_TOKEN", &s.refresh_token)
        .env("CHILD_CALLERS", callers.to_string())
        .env("CHILD_LEASE_MS", lease.as_millis().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// The tokens a child printed; fails if it failed.
pub fn tokens_of(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness may print its own text before the first line.
    stdout
        .lines()
        .filter_map(|l| l.find("TOKEN ").map(|i| l[i + 6..].to_owned()))
        .collect()
}

/// 8 processes × 50 callers on `store`, emulator latency 200 ms → exactly 1 token request.
pub async fn stampede(s: &Setup, store: &str) {
    s.emulator
        .set_latency(std::time::Duration::from_millis(200));
    let children: Vec<_> = (0..8)
        .map(|_| spawn_child(s, store, 50, std::time::Duration::from_secs(30)))
        .collect();
    let tokens: Vec<String> =
        tokio::task::spawn_blocking(move || children.into_iter().flat_map(tokens_of).collect())
            .await
            .unwrap();
    assert_eq!(tokens.len(), 400, "every caller got a token");
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "all processes share one token"
    );
    assert_eq!(
        s.token_requests(),
        1,
        "one mint for 8 processes × 50 callers"
    );
}

/// The lease holder is SIGKILLed mid-mint; another process mints within the lease: exactly 2
/// token requests in all. Returns how long the takeover took after the kill.
pub async fn sigkill_takeover(s: &Setup, store: &str) -> std::time::Duration {
    sigkill_takeover_with(s, store, std::time::Duration::from_secs(2)).await
}

/// [`sigkill_takeover`] with a lease of `lease`.
pub async fn sigkill_takeover_with(
    s: &Setup,
    store: &str,
    lease: std::time::Duration,
) -> std::time::Duration {
    use std::time::{Duration, Instant};
    s.emulator.set_latency(Duration::from_secs(30)); // the holder's mint hangs
    let mut holder = spawn_child(s, store, 1, lease);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.token_requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "the holder never reached the token endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let killed_at = Instant::now();
    s.emulator.set_latency(Duration::ZERO);
    let next = spawn_child(s, store, 5, lease);
    let tokens = tokio::task::spawn_blocking(move || tokens_of(next))
        .await
        .unwrap();
    let waited = killed_at.elapsed();
    assert_eq!(tokens.len(), 5);
    assert_eq!(
        s.token_requests(),
        2,
        "the dead holder's request and one more"
    );
    // Generous bound for process start-up on a loaded machine; the lease is 2 s.
    assert!(waited < lease + Duration::from_secs(10), "took {waited:?}");
    eprintln!("recovered {waited:?} after the SIGKILL (lease {lease:?})");
    waited
}
