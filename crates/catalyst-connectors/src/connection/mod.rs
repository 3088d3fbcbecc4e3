//! A connection: a validated set of named connectors sharing one store, clock and HTTP client.

mod build;
#[cfg(feature = "catalyst")]
mod catalyst;
mod keep_warm;

use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigErrors, ConfigIssue, ConnectorConfig};
use crate::connector::Connector;
use crate::connector::runtime::Options;
use crate::error::{Error, Result};
use crate::store::{EncryptionKey, EncryptionKeys, StoreSpec, TokenStore};
use keep_warm::AbortOnDrop;
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
    /// Connectors left out by [`ConnectionBuilder::skip_invalid_connectors`], with their problems.
    invalid: Arc<BTreeMap<String, Vec<ConfigIssue>>>,
    /// Problems that did not stop the build (unknown settings).
    warnings: Arc<Vec<ConfigIssue>>,
    /// The id of the key records are encrypted with, if any.
    key_id: Option<String>,
    /// `$connector.sinks`: token files for an agent to keep.
    sinks: Arc<Vec<String>>,
    _keep_warm: Option<Arc<AbortOnDrop>>,
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
    /// A connector left out for its configuration problems gives them as [`Error::Config`].
    pub fn connector(&self, name: &str) -> Result<Connector> {
        if let Some(issues) = self.invalid.get(name) {
            return Err(Error::Config(ConfigErrors(issues.clone())));
        }
        self.connectors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownConnector {
                // A token pasted as a name is not echoed back.
                name: crate::secret::scrub_tokens(name).into_owned(),
                known: self
                    .connectors
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Waits, at most `timeout`, for refreshes still running in any connector (e.g. started in the
    /// background) to finish and store their tokens. Call it before a short-lived process exits,
    /// so a refresh it started is not lost with it. Returns whether all finished in time.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let all = futures::future::join_all(self.connectors.values().map(Connector::settle));
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Why the token store is running degraded now, if it is: a shared store (Redis, Catalyst
    /// Cache) that does not answer, with this host's store standing in. Known once an
    /// operation has tried it.
    pub fn store_degraded(&self) -> Option<String> {
        // Every connector's: the Catalyst API connector keeps its token in this host's store.
        self.connectors
            .values()
            .find_map(|c| c.runtime().store.degraded())
    }

    /// Whether the token store is shared beyond this process (SQLite, Redis, Catalyst Cache): with
    /// a memory store every process mints its own tokens.
    pub fn store_is_shared(&self) -> bool {
        self.connectors
            .values()
            .next()
            .is_none_or(|c| c.runtime().store.is_shared())
    }

    /// Problems in the configuration that did not stop the build: unknown settings (with a
    /// suggestion when one looks like a typo). `connector config check` treats them as errors.
    pub fn warnings(&self) -> &[ConfigIssue] {
        &self.warnings
    }

    /// The token files the config asks an agent to keep (`$connector.sinks`, in the syntax of
    /// `connector serve --sink`); read by the agent, not the library.
    pub fn sink_specs(&self) -> &[String] {
        &self.sinks
    }

    /// The id of the encryption key records are written with (8 hex digits, nothing secret), or
    /// `None` when the store is not encrypted.
    pub fn encryption_key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The connectors left out because of their configuration problems (only with
    /// [`ConnectionBuilder::skip_invalid_connectors`]), with the problems.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &[ConfigIssue])> {
        self.invalid.iter().map(|(n, i)| (n.as_str(), i.as_slice()))
    }

    /// The configured connector names, sorted.
    pub fn connector_names(&self) -> impl Iterator<Item = &str> {
        self.connectors.keys().map(String::as_str)
    }
}

/// One config source given to the builder.
enum Source {
    Json(Value),
    File(PathBuf),
    Toml(String),
    Config(Box<ConnectorConfig>),
}

/// Builds a [`Connection`] from one or more config sources, validating everything at
/// [`build`](Self::build).
pub struct ConnectionBuilder {
    sources: Vec<Source>,
    store: Option<Arc<dyn TokenStore>>,
    store_spec: Option<StoreSpec>,
    encryption_key: Option<EncryptionKeys>,
    use_env: bool,
    clock: Arc<dyn Clock>,
    options: Options,
    keep_warm: bool,
    keep_warm_tick: Duration,
    connect_timeout: Duration,
    request_timeout: Duration,
    skip_invalid: bool,
    read_plaintext: bool,
    /// The host-local store for the Redis fallback tier and the Catalyst API token: `None` =
    /// the default store; `Some(None)` = none.
    local_store: Option<Option<StoreSpec>>,
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
            skip_invalid: false,
            read_plaintext: false,
            local_store: None,
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
        self.encryption_key = Some(key.into());
        self
    }

    /// With an encryption key, also reads records stored unencrypted (written before the key was
    /// set), so that [`Connector::rekey`] can encrypt them. See
    /// [`EncryptionKeys::reading_plaintext`].
    pub fn reading_plaintext_records(mut self) -> Self {
        self.read_plaintext = true;
        self
    }

    /// Encrypts with the first of `keys` and decrypts with any of them: how a key is rotated
    /// (see [`EncryptionKeys`]).
    pub fn encryption_keys(mut self, keys: EncryptionKeys) -> Self {
        self.encryption_key = Some(keys);
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

    /// At most `limit` tokens of one refresh token live at once (default 10, the lowest cap
    /// Zoho documents; CRM allows 15, Creator 30 — a connector's `live_token_limit` overrides
    /// it; leave room for SDKs that share the refresh token); 0 turns the live budget off.
    /// A mint within an hour of another counts as live.
    pub fn live_token_limit(mut self, limit: u32) -> Self {
        self.options.live_token_limit = limit;
        self
    }

    /// The mint governor: at most `limit` mints per refresh token per `window`, counted in the
    /// store so processes sharing it count together (default 10 per 10 minutes, Zoho's limit;
    /// `0` disables it). At the limit, callers keep the current token if it is valid, else get
    /// [`Error::Throttled`] saying when a slot frees. Mints that only a `min_ttl` asks for (the
    /// token held is still before its refresh point) may use at most half of it.
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

    /// Builds the connection even when some connectors are invalid: they are left out (asking for
    /// one gives its problems as [`Error::Config`]; [`Connection::skipped`] lists them), so one
    /// broken connector does not stop the others. Problems not tied to one connector still fail
    /// the build. Off by default.
    pub fn skip_invalid_connectors(mut self, on: bool) -> Self {
        self.skip_invalid = on;
        self
    }

    /// The host-local store (default: the default SQLite store in the user data directory):
    /// where a Redis store falls back while Redis is down, and where the `catalyst_auth`
    /// connector of a `catalyst://` store keeps its token. `None` turns the local tier off
    /// (the Catalyst token then stays in memory).
    pub fn local_store(mut self, spec: Option<StoreSpec>) -> Self {
        self.local_store = Some(spec);
        self
    }

    /// Validates every source and builds the connection. All configuration problems are reported
    /// together in [`Error::Config`].
    ///
    /// Five steps (see `build.rs`): read the config sources; resolve the store and the encryption
    /// key; open the store; make the connectors (refusing names too long for the store's keys);
    /// start keep-warm.
    pub fn build(self) -> Result<Connection> {
        build::build(self)
    }
}
