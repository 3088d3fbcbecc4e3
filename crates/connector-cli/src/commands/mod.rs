//! One module per subcommand, and the one place that builds the connection.

pub mod authorize;
pub mod completions;
pub mod config_check;
pub mod demo;
pub mod exchange;
pub mod list;
pub mod refresh;
pub mod revoke;
pub mod status;
pub mod token;

use crate::exit::{Exit, Failure};
use catalyst_connectors::{AccessToken, Connection, Connector, ExposeSecret, StoreSpec};
use serde_json::json;
use std::path::PathBuf;

/// What every subcommand may need: where the config and the store are.
pub struct Context {
    pub config: Option<PathBuf>,
    pub store: Option<StoreSpec>,
}

impl Context {
    /// The config file: `--config`/`CONNECTOR_CONFIG`, else the first of the default places.
    pub fn config_path(&self) -> Result<PathBuf, Failure> {
        if let Some(p) = &self.config {
            return Ok(p.clone());
        }
        let names = ["connectors.json", "connectors.toml"];
        let user_dir = dirs::config_dir().map(|d| d.join("catalyst-connectors"));
        names
            .iter()
            .map(PathBuf::from)
            .chain(user_dir.iter().flat_map(|d| names.iter().map(move |n| d.join(n))))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Failure::new(Exit::Config, "no connector config found").hint(
                    "pass --config PATH, set CONNECTOR_CONFIG, or create ./connectors.json (see the README's first run)",
                )
            })
    }

    /// The connection every subcommand uses: the config file and the chosen store.
    pub fn connection(&self) -> Result<Connection, Failure> {
        let path = self.config_path()?;
        let mut builder = Connection::builder().file(&path);
        if let Some(spec) = &self.store {
            builder = builder.store_spec(spec.clone());
        }
        Ok(builder.build()?)
    }

    /// The connector `name` of [`connection`](Self::connection).
    pub fn connector(&self, name: &str) -> Result<Connector, Failure> {
        Ok(self.connection()?.connector(name)?)
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
