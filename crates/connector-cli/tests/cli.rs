//! The `connector` binary against the emulator: output and exit codes.

use assert_cmd::Command;
use std::path::PathBuf;
use zoho_emulator::{Emulator, Fault};

const CLIENT_ID: &str = "1000.CLI";
const CLIENT_SECRET: &str = "cli-secret";

struct Env {
    emulator: Emulator,
    dir: tempfile::TempDir,
    refresh_token: String,
}

impl Env {
    async fn new() -> Self {
        let emulator = zoho_emulator::start().await.unwrap();
        emulator.add_client(CLIENT_ID, CLIENT_SECRET);
        let refresh_token = emulator.add_refresh_token(CLIENT_ID, "ZohoCRM.users.READ");
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"crm": {
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": emulator.token_url(), "refresh_url": emulator.token_url(),
            "refresh_token": refresh_token,
        }});
        std::fs::write(dir.path().join("connectors.json"), config.to_string()).unwrap();
        Self {
            emulator,
            dir,
            refresh_token,
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("connectors.json")
    }

    /// Runs `connector args…` in the temp dir, off the async runtime.
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::cargo_bin("connector").unwrap();
        cmd.current_dir(self.dir.path())
            .env_remove("CONNECTOR_CONFIG")
            .env_remove("CONNECTOR_ENCRYPTION_KEY")
            .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
            .env(
                "CONNECTOR_STORE",
                format!("sqlite:{}", self.dir.path().join("tokens.db").display()),
            )
            .args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_only_the_token() {
    let env = Env::new().await;
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out);
    assert!(
        token.starts_with("1000.") && token.ends_with('\n') && token.lines().count() == 1,
        "{token:?}"
    );
    assert_eq!(env.emulator.stats().token_requests, 1);
    // A second run reads the token from the SQLite store: no new token request.
    let again = env.run(&["token", "crm"]).await;
    assert_eq!(stdout(&again), token);
    assert_eq!(
        env.emulator.stats().token_requests,
        1,
        "the second run reused the stored token"
    );
    // --config and CONNECTOR_CONFIG work from elsewhere.
    let out = env
        .run(&[
            "--config",
            env.config_path().to_str().unwrap(),
            "token",
            "crm",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_failures_apart() {
    let env = Env::new().await;

    let out = env.run(&["token", "nope"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "unknown connector: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no connector named `nope`"),
        "{}",
        stderr(&out)
    );

    env.emulator.inject_faults(
        Fault::ErrorWith200 {
            error: "Access Denied".into(),
            description: None,
        },
        1,
    );
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(5), "throttled: {}", stderr(&out));

    // A caller with no token tries 3 times at once; all 3 fail here.
    env.emulator.inject_faults(Fault::Http500, 3);
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(6), "transient: {}", stderr(&out));

    env.emulator.revoke(&env.refresh_token);
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(4), "reauth: {}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("re-authorize connector `crm`"), "{err}");
    assert!(stdout(&out).is_empty());

    std::fs::write(env.config_path(), r#"{"crm": {"client_id": "x"}}"#).unwrap();
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(3), "config: {}", stderr(&out));
    assert!(
        stderr(&out).contains("field `client_secret`: is missing"),
        "{}",
        stderr(&out)
    );

    let out = env.run(&["--store", "postgres://x", "token", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad --store is a usage error: {}",
        stderr(&out)
    );

    std::fs::remove_file(env.config_path()).unwrap();
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(3), "no config: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_one_request_for_a_thousand_callers() {
    let env = Env::new().await;
    let out = env.run(&["demo", "--latency-ms", "100"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("token requests made    1\n"), "{text}");
    assert!(
        text.contains("callers served         1000 (1 distinct token)"),
        "{text}"
    );
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::cargo_bin("connector")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("4  re-authorization needed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encryption_key_in_the_environment_encrypts_the_store() {
    let env = Env::new().await;
    let key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    let run = |key: Option<&str>| {
        let mut cmd = Command::cargo_bin("connector").unwrap();
        cmd.current_dir(env.dir.path())
            .env_remove("CONNECTOR_CONFIG")
            .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
            .env(
                "CONNECTOR_STORE",
                format!("sqlite:{}", env.dir.path().join("enc.db").display()),
            )
            .args(["token", "crm"]);
        match key {
            Some(k) => cmd.env("CONNECTOR_ENCRYPTION_KEY", k),
            None => cmd.env_remove("CONNECTOR_ENCRYPTION_KEY"),
        };
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = run(Some(key)).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    let mut on_disk = Vec::new();
    for suffix in ["", "-wal"] {
        on_disk.extend(
            std::fs::read(env.dir.path().join(format!("enc.db{suffix}"))).unwrap_or_default(),
        );
    }
    assert!(
        !on_disk.windows(token.len()).any(|w| w == token.as_bytes()),
        "token stored in plain text"
    );
    // Same key: reused. Bad key: a config error, exit 3.
    assert_eq!(stdout(&run(Some(key)).await.unwrap()).trim(), token);
    assert_eq!(env.emulator.stats().token_requests, 1);
    let out = run(Some("short")).await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CONNECTOR_ENCRYPTION_KEY"),
        "{}",
        stderr(&out)
    );
}
