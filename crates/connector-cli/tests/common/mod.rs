//! The CLI tests' shared set-up: an emulator with one client and one refresh token, a temp dir
//! holding `connectors.json` for connector `crm`, and the `connector` binary run there with a
//! store and data directory of its own (never the user's) and none of the caller's
//! `CONNECTOR_*` settings.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use zoho_emulator::Emulator;

pub const CLIENT_ID: &str = "1000.CLI";
pub const CLIENT_SECRET: &str = "cli-secret";

pub struct Env {
    pub emulator: Emulator,
    pub dir: tempfile::TempDir,
    pub refresh_token: String,
}

impl Env {
    pub async fn new() -> Self {
        let emulator = zoho_emulator::start().await.unwrap();
        emulator.add_client(CLIENT_ID, CLIENT_SECRET);
        let refresh_token = emulator.add_refresh_token(CLIENT_ID, "ZohoCRM.users.READ");
        let env = Self {
            emulator,
            dir: tempfile::tempdir().unwrap(),
            refresh_token,
        };
        env.write_config(&[("crm", Some(&env.refresh_token.clone()))]);
        env
    }

    /// One connector's config for the emulator's client, with `refresh_token` if given.
    pub fn connector_json(&self, refresh_token: Option<&str>) -> serde_json::Value {
        let mut c = serde_json::json!({
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": self.emulator.token_url(), "refresh_url": self.emulator.token_url(),
        });
        if let Some(rt) = refresh_token {
            c["refresh_token"] = rt.into();
        }
        c
    }

    /// Writes `connectors.json` with these connectors (name, refresh token).
    pub fn write_config(&self, connectors: &[(&str, Option<&str>)]) {
        let mut config = serde_json::Map::new();
        for (name, rt) in connectors {
            config.insert((*name).to_owned(), self.connector_json(*rt));
        }
        std::fs::write(
            self.config_path(),
            serde_json::Value::Object(config).to_string(),
        )
        .unwrap();
        // A config with secrets, as a user keeps it (others' read access draws a warning).
        std::fs::set_permissions(
            self.config_path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("connectors.json")
    }

    /// `connector args…` in the temp dir, on its own SQLite store and data directory.
    pub fn command(&self, args: &[&str]) -> Command {
        // CONNECTOR_TEST_BIN runs the tests against another build (e.g. the previous commit's).
        let bin = std::env::var_os("CONNECTOR_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_connector").into());
        let mut cmd = Command::new(bin);
        cmd.current_dir(self.dir.path())
            .env_remove("CONNECTOR_CONFIG")
            .env_remove("CONNECTOR_AGENT")
            .env_remove("CONNECTOR_ENCRYPTION_KEY")
            .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
            .env_remove("CONNECTOR_LOG")
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env(
                "CONNECTOR_STORE",
                format!("sqlite:{}", self.dir.path().join("tokens.db").display()),
            )
            .args(args);
        cmd
    }

    /// Runs `connector args…` with extra environment variables, off the async runtime.
    pub async fn run_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(vars.iter().copied());
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_with(&[], args).await
    }

    /// Token requests the emulator has seen.
    pub fn requests(&self) -> u64 {
        self.emulator.stats().token_requests
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
