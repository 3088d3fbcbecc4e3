//! A connection: a validated set of named connectors sharing one store, clock and HTTP client.

use crate::clock::{Clock, SystemClock};
use crate::config::{self, ConfigErrors, ConfigIssue, ConnectorConfig};
use crate::connector::{Connector, Options, Runtime};
use crate::error::{Error, Result};
use crate::oauth::{HttpTimeouts, TokenClient};
use crate::store::{EncryptedStore, EncryptionKey, KeyError, STORE_ENV, StoreSpec, TokenStore};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A set of connectors, like the SDKs' `app.connection({...})`.
///
/// ```no_run
/// # async fn run() -> Result<(), catalyst_connectors::Error> {
/// use catalyst_connectors::Connection;
/// let connection = Connection::from_json(&serde_json::json!({
///     "crm": {
///         "client_id": "1000.XXXX",
///         "client_secret": "…",
///         "dc": "us",
///         "refresh_token": "1000.yyyy"
///     }
/// }))?;
/// let token = connection.connector("crm")?.access_token().await?;
/// println!("calling {} with a token valid until {:?}", token.api_domain().unwrap_or("?"), token.expires_at());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    connectors: Arc<BTreeMap<String, Connector>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("connectors", &self.connectors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Connection {
    /// Starts a builder.
    pub fn builder() -> ConnectionBuilder {
        ConnectionBuilder::default()
    }

    /// Builds a connection from the SDKs' JSON shape with default settings.
    pub fn from_json(value: &Value) -> Result<Self> {
        Self::builder().json(value.clone()).build()
    }

    /// Builds a connection from a `.json` or `.toml` file with default settings.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder().file(path).build()
    }

    /// The connector called `name`. Every call for one name returns a clone sharing one token.
    pub fn connector(&self, name: &str) -> Result<Connector> {
        self.connectors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownConnector {
                name: name.to_owned(),
                known: self
                    .connectors
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The configured connector names, sorted.
    pub fn connector_names(&self) -> impl Iterator<Item = &str> {
        self.connectors.keys().map(String::as_str)
    }
}

enum Source {
    Json(Value),
    File(PathBuf),
    Toml(String),
    Config(Box<ConnectorConfig>),
}

fn key_issue(e: KeyError) -> ConfigIssue {
    ConfigIssue {
        source: None,
        connector: None,
        field: Some("encryption key".into()),
        problem: e.to_string(),
    }
}

/// Builds a [`Connection`] from one or more config sources, validating everything at
/// [`build`](Self::build).
pub struct ConnectionBuilder {
    sources: Vec<Source>,
    store: Option<Arc<dyn TokenStore>>,
    store_spec: Option<StoreSpec>,
    encryption_key: Option<EncryptionKey>,
    use_env: bool,
    clock: Arc<dyn Clock>,
    lease_ttl: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for ConnectionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionBuilder")
            .field("sources", &self.sources.len())
            .field("store", &self.store)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectionBuilder {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            store: None,
            store_spec: None,
            encryption_key: None,
            use_env: true,
            clock: Arc::new(SystemClock),
            lease_ttl: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ConnectionBuilder {
    /// Adds connectors from a JSON value of the SDKs' shape: `{name: {client_id, …}}`.
    pub fn json(mut self, value: Value) -> Self {
        self.sources.push(Source::Json(value));
        self
    }

    /// Adds connectors from a `.json` or `.toml` file (by extension; anything else is read as JSON).
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        self.sources.push(Source::File(path.as_ref().to_owned()));
        self
    }

    /// Adds connectors from TOML text of the same shape (`[crm]` tables).
    pub fn toml_str(mut self, text: impl Into<String>) -> Self {
        self.sources.push(Source::Toml(text.into()));
        self
    }

    /// Adds one connector built with [`ConnectorConfig::builder`].
    pub fn connector(mut self, config: ConnectorConfig) -> Self {
        self.sources.push(Source::Config(Box::new(config)));
        self
    }

    /// Uses `store` to share tokens. Default: the store named by `CONNECTOR_STORE`, else by the
    /// config's `$connector.store`, else SQLite in the user's data directory
    /// ([`StoreSpec::default_store`]).
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Uses an already shared store.
    pub fn shared_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the store named by `spec` (`memory:`, `sqlite:PATH`) when the connection is built.
    pub fn store_spec(mut self, spec: StoreSpec) -> Self {
        self.store_spec = Some(spec);
        self
    }

    /// Encrypts every record at rest with `key` (XChaCha20-Poly1305, bound to the record key).
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// Ignores `CONNECTOR_STORE`, `CONNECTOR_ENCRYPTION_KEY` and `CONNECTOR_ENCRYPTION_KEY_FILE`
    /// (read by default when the code sets no store or key).
    pub fn ignore_env(mut self) -> Self {
        self.use_env = false;
        self
    }

    /// Uses `clock` for every expiry decision (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long a process may hold the right to mint before others take over (default 30 s).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Connect timeout for token requests (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Total timeout for one token request (default 30 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Validates every source and builds the connection. All configuration problems are reported
    /// together in [`Error::Config`].
    pub fn build(self) -> Result<Connection> {
        let mut issues: Vec<ConfigIssue> = Vec::new();
        let mut configs: Vec<(ConnectorConfig, String)> = Vec::new();
        let mut settings = config::Settings::default();
        for (i, source) in self.sources.into_iter().enumerate() {
            let (value, origin, shown) = match source {
                Source::Json(v) => (Some(v), format!("source #{}", i + 1), None),
                Source::File(p) => {
                    let shown = p.display().to_string();
                    (
                        config::read_file(&p, &mut issues),
                        shown.clone(),
                        Some(shown),
                    )
                }
                Source::Toml(t) => {
                    let v = config::parse_toml_text(&t)
                        .map_err(|problem| {
                            issues.push(ConfigIssue {
                                source: None,
                                connector: None,
                                field: None,
                                problem,
                            })
                        })
                        .ok();
                    (v, format!("source #{}", i + 1), None)
                }
                Source::Config(c) => {
                    configs.push((*c, format!("source #{}", i + 1)));
                    continue;
                }
            };
            if let Some(v) = value {
                config::parse_settings(&v, shown.as_deref(), &mut settings, &mut issues);
                let found = config::parse_value(&v, shown.as_deref(), &mut issues);
                configs.extend(found.into_iter().map(|c| (c, origin.clone())));
            }
        }
        let mut by_name: BTreeMap<String, (ConnectorConfig, String)> = BTreeMap::new();
        for (c, origin) in configs {
            if let Some((_, first)) = by_name.get(&c.name) {
                issues.push(ConfigIssue {
                    source: None,
                    connector: Some(c.name.clone()),
                    field: None,
                    problem: format!(
                        "defined more than once ({first} and {origin}); connector names must be unique, or tokens overwrite each other"
                    ),
                });
                continue;
            }
            by_name.insert(c.name.clone(), (c, origin));
        }
        // Store: code, then environment, then config, then the default.
        let env_spec = if self.use_env && self.store.is_none() && self.store_spec.is_none() {
            StoreSpec::from_env().unwrap_or_else(|problem| {
                issues.push(ConfigIssue {
                    source: None,
                    connector: None,
                    field: Some(STORE_ENV.into()),
                    problem,
                });
                None
            })
        } else {
            None
        };
        // Encryption key: code, then environment, then config.
        let mut key = self.encryption_key;
        if key.is_none() && self.use_env {
            key = EncryptionKey::from_env().unwrap_or_else(|e| {
                issues.push(key_issue(e));
                None
            });
        }
        if key.is_none() {
            if let Some(path) = &settings.encryption_key_file {
                key = EncryptionKey::from_file(path)
                    .map_err(|e| issues.push(key_issue(e)))
                    .ok();
            }
        }
        if !issues.is_empty() {
            return Err(Error::Config(ConfigErrors(issues)));
        }
        let client = TokenClient::new(HttpTimeouts {
            connect: self.connect_timeout,
            total: self.request_timeout,
        })?;
        let clock = self.clock;
        let store = match self.store {
            Some(store) => store,
            None => self
                .store_spec
                .or(env_spec)
                .or(settings.store)
                .unwrap_or_else(StoreSpec::default_store)
                .open(Arc::clone(&clock))
                .map_err(Error::StoreOpen)?,
        };
        let store: Arc<dyn TokenStore> = match &key {
            Some(key) => Arc::new(EncryptedStore::new(store, key)),
            None => store,
        };
        let runtime = Arc::new(Runtime {
            store,
            clock,
            client,
            options: Options {
                lease_ttl: self.lease_ttl,
            },
        });
        let connectors = by_name
            .into_iter()
            .map(|(name, (config, _))| (name, Connector::new(config, Arc::clone(&runtime))))
            .collect();
        Ok(Connection {
            connectors: Arc::new(connectors),
        })
    }
}
