//! One module per subcommand, and the one place that builds the connection.

pub mod authorize;
pub mod completions;
pub mod config_check;
pub mod demo;
pub mod exchange;
pub mod exec;
pub mod list;
pub mod refresh;
pub mod revoke;
pub mod serve;
pub mod status;
pub mod token;

use crate::exit::{Exit, Failure};
use catalyst_connectors::{
    AccessToken, Connection, ConnectionBuilder, Connector, Error, ExposeSecret, StoreSpec,
};
use serde_json::json;
use std::path::PathBuf;

/// What every subcommand may need: where the config and the store are, and whether to be quiet.
pub struct Context {
    pub config: Option<PathBuf>,
    pub store: Option<StoreSpec>,
    pub quiet: bool,
}

/// Where the config is looked for when neither --config nor CONNECTOR_CONFIG names one.
fn default_config_paths() -> Vec<PathBuf> {
    let names = ["connectors.json", "connectors.toml"];
    let user_dir = dirs::config_dir().map(|d| d.join("catalyst-connectors"));
    names
        .iter()
        .map(PathBuf::from)
        .chain(
            user_dir
                .iter()
                .flat_map(|d| names.iter().map(move |n| d.join(n))),
        )
        .collect()
}

/// Connector names for shell completion: the top-level keys of the config (best effort, never
/// an error: completion must not print anything else).
pub fn names_for_completion() -> Vec<String> {
    let path = std::env::var_os("CONNECTOR_CONFIG")
        .map(PathBuf::from)
        .or_else(|| default_config_paths().into_iter().find(|p| p.is_file()));
    let Some(text) = path.and_then(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t))) else {
        return Vec::new();
    };
    let (path, text) = text;
    let text = text.trim_start_matches('\u{feff}');
    let value: Option<serde_json::Value> = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| serde_json::to_value(t).ok())
    } else {
        serde_json::from_str(text).ok()
    };
    value
        .as_ref()
        .and_then(serde_json::Value::as_object)
        .map(|m| m.keys().filter(|k| !k.starts_with('$')).cloned().collect())
        .unwrap_or_default()
}

impl Context {
    /// A warning on stderr, one line, unless -q.
    pub fn warn(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            let colour = crate::output::stderr_colour();
            eprintln!(
                "{} {message}",
                crate::output::paint("warning:", "33;1", colour)
            );
        }
    }

    /// The config file: `--config`/`CONNECTOR_CONFIG`, else the first of the default places.
    pub fn config_path(&self) -> Result<PathBuf, Failure> {
        if let Some(p) = &self.config {
            return Ok(p.clone());
        }
        let candidates = default_config_paths();
        candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            Failure::new(
                Exit::Config,
                format!("no connector config found (looked for {})", looked.join(", ")),
            )
            .hint(
                "pass --config FILE, set CONNECTOR_CONFIG, or create ./connectors.json (see the README's first run)",
            )
        })
    }

    /// The connection every subcommand uses: the config file and the chosen store.
    pub fn connection(&self) -> Result<Connection, Failure> {
        self.connection_with(|b| b)
    }

    /// [`connection`](Self::connection), with more builder settings.
    pub fn connection_with(
        &self,
        more: impl FnOnce(ConnectionBuilder) -> ConnectionBuilder,
    ) -> Result<Connection, Failure> {
        let path = self.config_path()?;
        let mut builder = more(
            Connection::builder()
                .file(&path)
                .skip_invalid_connectors(true),
        );
        if let Some(spec) = &self.store {
            builder = builder.store_spec(spec.clone());
        }
        let connection = builder.build()?;
        for warning in connection.warnings() {
            self.warn(warning);
        }
        for (name, issues) in connection.skipped() {
            self.warn(format!(
                "connector `{name}` is skipped: {} problem(s) in its config (run `connector config check`)",
                issues.len()
            ));
        }
        if !connection.store_is_shared() {
            self.warn(
                "the token store is memory: tokens live only as long as this process, so every run mints one (Zoho allows 10 per 10 minutes); use the default SQLite store or --store sqlite:PATH",
            );
        }
        Ok(connection)
    }

    /// A failure for `e` from `connector`, with a hint that fits this machine: a refresh token in
    /// the config that hides a newer one in the store is named, with the file to edit.
    pub async fn explain(&self, connector: &Connector, e: Error) -> Failure {
        let overridden = e.needs_reauthorization()
            && connector.config().has_refresh_token()
            && connector.has_stored_refresh_token().await;
        let failure = Failure::from(e);
        if !overridden {
            return failure;
        }
        let file = self
            .config_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "the config".into());
        let name = connector.name();
        failure.hint(format!(
            "the config's refresh_token for `{name}` was rejected, and it hides the newer one `connector authorize` stored: delete the `refresh_token` entry of `{name}` in {file}"
        ))
    }
}

pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub fn token_json(t: &AccessToken) -> serde_json::Value {
    json!({
        "access_token": t.expose_secret(),
        "expires_at": crate::output::epoch_secs(t.expires_at()),
        "refresh_at": crate::output::epoch_secs(t.refresh_at()),
        "api_domain": t.api_domain(),
    })
}
