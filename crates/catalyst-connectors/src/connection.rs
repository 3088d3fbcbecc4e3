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
use std::sync::{Arc, Weak};
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
    _keep_warm: Option<Arc<AbortOnDrop>>,
}

/// Stops the keep-warm task when the last clone of the connection is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keep-warm: refreshes recently used connectors shortly before their refresh point.
async fn keep_warm(
    connectors: Weak<BTreeMap<String, Connector>>,
    clock: Arc<dyn Clock>,
    tick: Duration,
) {
    const RECENT_MS: i64 = 3_600_000;
    let seed: u64 = rand::random();
    loop {
        tokio::time::sleep(tick).await;
        let Some(map) = connectors.upgrade() else {
            return;
        };
        let now = clock.now_millis();
        for connector in map.values() {
            let used = connector.last_used();
            if used == 0 || now - used > RECENT_MS {
                continue;
            }
            let Some((refresh_at, expires_at)) = connector.schedule() else {
                continue;
            };
            // A jitter fixed per token and process: 1–11 % of the margin before the refresh point.
            let u = (seed ^ (refresh_at as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1023
            let margin = u64::try_from(expires_at - refresh_at).unwrap_or(0);
            let lead = margin / 100 + margin * u / (1023 * 10);
            if connector.refresh_if_due(now, Duration::from_millis(lead)) {
                tracing::debug!(
                    connector = connector.name(),
                    lead_ms = lead,
                    "keep-warm refresh started"
                );
            }
        }
    }
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
    options: Options,
    keep_warm: bool,
    keep_warm_tick: Duration,
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
            options: Options::default(),
            keep_warm: false,
            keep_warm_tick: Duration::from_secs(1),
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
        self.options.lease_ttl = ttl;
        self
    }

    /// How long a caller with no valid token waits for one before [`Error::DeadlineExceeded`]
    /// (default 30 s). Callers holding a valid token never wait.
    pub fn wait_deadline(mut self, deadline: Duration) -> Self {
        self.options.wait_deadline = deadline;
        self
    }

    /// How long a permanent failure (revoked refresh token, bad client) is remembered before the
    /// token endpoint is asked again (default 30 s). Meanwhile callers get the remembered error.
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.options.negative_ttl = ttl;
        self
    }

    /// Backoff between failed refreshes: a random delay in `[0, min(cap, base·2ⁿ)]` after the
    /// n-th consecutive transient failure (default base 1 s, cap 120 s).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.options.backoff_base = base;
        self.options.backoff_cap = cap.max(base);
        self
    }

    /// The mint governor: at most `limit` mints per refresh token per `window`, counted in the
    /// store so processes sharing it count together (default 10 per 10 minutes, Zoho's limit;
    /// `0` disables it). At the limit, callers keep the current token if it is valid, else get
    /// [`Error::Throttled`] saying when a slot frees.
    pub fn mint_limit(mut self, limit: u32, window: Duration) -> Self {
        self.options.mint_limit = limit;
        self.options.mint_window = window;
        self
    }

    /// How many per-user connectors ([`Connector::for_user`]) each template keeps resident
    /// (default 10,000); others are rebuilt on use and reload from the store.
    pub fn user_capacity(mut self, users: usize) -> Self {
        self.options.user_capacity = users.max(1);
        self
    }

    /// Keep-warm: a background task refreshes connectors used in the last hour shortly before
    /// their refresh point (with a random 1–11 % of the margin, so hosts do not refresh in
    /// lockstep), so no caller ever waits for a refresh. It stops when the connection is dropped.
    /// Needs a Tokio runtime when the connection is built.
    pub fn keep_warm(mut self, on: bool) -> Self {
        self.keep_warm = on;
        self
    }

    /// How often keep-warm looks at the connectors (default 1 s).
    pub fn keep_warm_interval(mut self, every: Duration) -> Self {
        self.keep_warm_tick = every;
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
        // A Catalyst Cache store gets its API token from a connector of this config, which
        // itself keeps its token in memory (it cannot use the store it authenticates).
        #[allow(unused_mut)]
        let mut catalyst_admin: Option<Connector> = None;
        let store = match self.store {
            Some(store) => store,
            None => {
                let spec = self
                    .store_spec
                    .or(env_spec)
                    .or(settings.store)
                    .unwrap_or_else(StoreSpec::default_store);
                #[cfg(feature = "catalyst")]
                let store = if let StoreSpec::Catalyst {
                    project,
                    segment,
                    origin,
                } = &spec
                {
                    let issue = |problem: String| {
                        Error::Config(ConfigErrors(vec![ConfigIssue {
                            source: None,
                            connector: Some("$connector".into()),
                            field: Some("catalyst_auth".into()),
                            problem,
                        }]))
                    };
                    let name = settings.catalyst_auth.clone().ok_or_else(|| {
                        issue("a `catalyst://` store needs the name of the connector whose token calls Catalyst's API".into())
                    })?;
                    let (config, _) = by_name.get(&name).ok_or_else(|| {
                        issue(format!("no connector named `{name}` in this config"))
                    })?;
                    let admin_runtime = Arc::new(Runtime {
                        store: Arc::new(crate::store::MemoryStore::with_clock(Arc::clone(&clock))),
                        clock: Arc::clone(&clock),
                        client: client.clone(),
                        options: self.options.clone(),
                    });
                    let admin = Connector::new(config.clone(), admin_runtime);
                    let mut builder = crate::store::CatalystCacheStore::builder(project.clone())
                        .token_from(admin.clone());
                    if let Some(s) = segment {
                        builder = builder.segment(s.clone());
                    }
                    if let Some(o) = origin {
                        builder = builder.origin(o.clone());
                    }
                    catalyst_admin = Some(admin);
                    let store: Arc<dyn TokenStore> =
                        Arc::new(builder.build().map_err(Error::StoreOpen)?);
                    store
                } else {
                    spec.open(Arc::clone(&clock)).map_err(Error::StoreOpen)?
                };
                #[cfg(not(feature = "catalyst"))]
                let store = spec.open(Arc::clone(&clock)).map_err(Error::StoreOpen)?;
                store
            }
        };
        let store: Arc<dyn TokenStore> = match &key {
            Some(key) => Arc::new(EncryptedStore::new(store, key)),
            None => store,
        };
        let runtime = Arc::new(Runtime {
            store,
            clock,
            client,
            options: self.options,
        });
        let connectors: Arc<BTreeMap<String, Connector>> = Arc::new(
            by_name
                .into_iter()
                .map(|(name, (config, _))| {
                    let connector = match &catalyst_admin {
                        Some(admin) if admin.name() == name => admin.clone(),
                        _ => Connector::new(config, Arc::clone(&runtime)),
                    };
                    (name, connector)
                })
                .collect(),
        );
        if let Some(max) = runtime.store.max_key_len() {
            let too_long: Vec<ConfigIssue> = connectors
                .values()
                .filter(|c| c.longest_key_len() > max)
                .map(|c| ConfigIssue {
                    source: None,
                    connector: Some(c.name().to_owned()),
                    field: None,
                    problem: format!(
                        "the name is too long for this store, whose keys are at most {max} characters (this connector needs {}): shorten it by {}",
                        c.longest_key_len(),
                        c.longest_key_len() - max
                    ),
                })
                .collect();
            if !too_long.is_empty() {
                return Err(Error::Config(ConfigErrors(too_long)));
            }
        }
        let keep_warm_task = if self.keep_warm {
            let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                Error::Config(ConfigErrors(vec![ConfigIssue {
                    source: None,
                    connector: None,
                    field: Some("keep_warm".into()),
                    problem: "keep-warm needs a Tokio runtime: build the connection inside one"
                        .into(),
                }]))
            })?;
            let task = handle.spawn(keep_warm(
                Arc::downgrade(&connectors),
                Arc::clone(&runtime.clock),
                self.keep_warm_tick,
            ));
            Some(Arc::new(AbortOnDrop(task)))
        } else {
            None
        };
        Ok(Connection {
            connectors,
            _keep_warm: keep_warm_task,
        })
    }
}
