//! Token stores: where minted tokens are shared between connector clones, processes and hosts.
//!
//! A store keeps opaque string records under keys, each with a **generation** number so that a
//! late writer cannot overwrite a newer token (every write is a compare-and-set on the generation),
//! and offers a **lease**: a named, expiring right to mint, so that among many processes sharing a
//! store only one asks the token endpoint. Records are JSON ([`TokenRecord`]) in the official SDKs'
//! format; stores never interpret them.

#[cfg(feature = "catalyst")]
mod catalyst;
pub mod conformance;
mod encrypted;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
pub use self::redis::{DEFAULT_PREFIX as REDIS_DEFAULT_PREFIX, RedisStore};
#[cfg(feature = "catalyst")]
pub use catalyst::{CatalystAuth, CatalystCacheStore, CatalystCacheStoreBuilder};
pub use encrypted::{EncryptedStore, EncryptionKey, KEY_ENV, KEY_FILE_ENV, KeyError};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::clock::{Clock, EpochMillis, SystemClock, duration_millis};
use crate::secret::{AccessTokenSecret, ExposeSecret};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A record as held by a store: opaque data plus its generation (≥ 1 once written).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// Incremented by every successful write of the key.
    pub generation: u64,
    /// The serialized record. It holds an access token: never log it.
    pub data: String,
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredValue")
            .field("generation", &self.generation)
            .field(
                "data",
                &format_args!("[redacted; {} bytes]", self.data.len()),
            )
            .finish()
    }
}

/// The result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened; the record now has this generation.
    Written {
        /// The new generation.
        generation: u64,
    },
    /// Someone else wrote first; nothing was changed.
    Conflict {
        /// The generation now stored (`None` if the key is absent).
        current: Option<u64>,
    },
}

/// One compare-and-set write; see [`TokenStore::compare_and_set`].
#[derive(Clone, Copy)]
pub struct TokenWrite<'a> {
    /// The record's key.
    pub key: &'a str,
    /// The generation the writer last saw (`None`: the key was absent).
    pub expected: Option<u64>,
    /// The serialized record.
    pub data: &'a str,
    /// How long the backend should keep the record.
    pub ttl: Duration,
    /// A refresh-token record to write alongside: `(key, data)`, kept without expiry.
    pub refresh: Option<(&'a str, &'a str)>,
}

impl<'a> TokenWrite<'a> {
    /// A write of `data` at `key`, expected at generation `expected`, kept for `ttl`.
    pub fn new(key: &'a str, expected: Option<u64>, data: &'a str, ttl: Duration) -> Self {
        Self {
            key,
            expected,
            data,
            ttl,
            refresh: None,
        }
    }

    /// Also writes a refresh-token record.
    pub fn with_refresh(mut self, key: &'a str, data: &'a str) -> Self {
        self.refresh = Some((key, data));
        self
    }
}

impl fmt::Debug for TokenWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWrite")
            .field("key", &self.key)
            .field("expected", &self.expected)
            .field("ttl", &self.ttl)
            .field("refresh_key", &self.refresh.map(|r| r.0))
            .finish_non_exhaustive()
    }
}

/// What went wrong in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend cannot be reached right now.
    Unavailable,
    /// The backend refused the operation (permissions, limits).
    Rejected,
    /// The backend's data is damaged.
    Corrupt,
}

/// An error from a [`TokenStore`]. Its message never contains a record's contents.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store} store: {detail}")]
pub struct StoreError {
    /// Which store (e.g. `memory`, `sqlite /path/to/file`).
    pub store: String,
    /// The kind of failure.
    pub kind: StoreErrorKind,
    /// What failed and what to do.
    pub detail: String,
}

impl StoreError {
    /// Builds an error.
    pub fn new(store: impl Into<String>, kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            store: store.into(),
            kind,
            detail: detail.into(),
        }
    }
}

/// A shared home for connector tokens. See the [module docs](self).
///
/// Implementations must make `compare_and_set`, `delete` and the lease operations atomic with
/// respect to every process sharing the store (or document where the backend cannot).
#[async_trait]
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// Reads the record at `key`; `None` when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError>;

    /// Writes `write.data` at `write.key` if the stored generation is `write.expected` (`None`:
    /// only if absent); the store may drop the record after `write.ttl`. When `write.refresh` is
    /// set, that record (a refresh token, no expiry) is written too — whatever the outcome of the
    /// compare-and-set, so a rotated refresh token is never lost — in the same transaction where
    /// the backend has transactions.
    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError>;

    /// Deletes the record at `key`; with `expected`, only if its generation still matches.
    /// Returns whether a record was deleted.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError>;

    /// Tries to take the mint lease for `key` for `ttl`. True if `owner` now holds it (also when it
    /// already did: the lease is then extended).
    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Releases the lease if `owner` still holds it.
    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError>;

    /// Whether other processes can see this store. When false, connectors skip the lease and the
    /// polling for other processes' tokens (a process-local store needs neither).
    fn is_shared(&self) -> bool {
        true
    }

    /// Whether records without a credential fingerprint (written by the official SDKs) may be
    /// served when their key matches, as the SDKs do. Only stores shared with the SDKs say yes.
    fn accepts_unfingerprinted(&self) -> bool {
        false
    }

    /// The longest key the backend accepts, if it has a limit; connectors whose keys would not
    /// fit are refused when the connection is built.
    fn max_key_len(&self) -> Option<usize> {
        None
    }
}

#[derive(Debug)]
struct MemoryEntry {
    generation: u64,
    data: String,
    expires_at: EpochMillis,
}

/// A process-local store (the default until a shared one is configured). Clones share contents.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    records: HashMap<String, MemoryEntry>,
    /// Generations survive deletes so a deleted-then-rewritten key never reuses a generation.
    last_generation: HashMap<String, u64>,
    leases: HashMap<String, (String, EpochMillis)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose expiries follow `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemoryInner::default())),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that matters
        // (each operation is a single insert/remove), so recover from poisoning.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let now = self.clock.now_millis();
        let inner = self.lock();
        Ok(inner
            .records
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| StoredValue {
                generation: e.generation,
                data: e.data.clone(),
            }))
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        let TokenWrite {
            key,
            expected,
            data,
            ttl,
            refresh,
        } = write;
        let now = self.clock.now_millis();
        let mut inner = self.lock();
        if let Some((rkey, rdata)) = refresh {
            let generation = inner.last_generation.get(rkey).copied().unwrap_or(0) + 1;
            inner.last_generation.insert(rkey.to_owned(), generation);
            inner.records.insert(
                rkey.to_owned(),
                MemoryEntry {
                    generation,
                    data: rdata.to_owned(),
                    expires_at: i64::MAX,
                },
            );
        }
        let current = inner
            .records
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.generation);
        if current != expected {
            return Ok(CasOutcome::Conflict { current });
        }
        let last = inner.last_generation.get(key).copied().unwrap_or(0);
        let generation = last.max(expected.unwrap_or(0)) + 1;
        inner.last_generation.insert(key.to_owned(), generation);
        inner.records.insert(
            key.to_owned(),
            MemoryEntry {
                generation,
                data: data.to_owned(),
                expires_at: now.saturating_add(duration_millis(ttl)),
            },
        );
        Ok(CasOutcome::Written { generation })
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match (inner.records.get(key), expected) {
            (Some(e), Some(g)) if e.generation != g => Ok(false),
            (Some(_), _) => Ok(inner.records.remove(key).is_some()),
            (None, _) => Ok(false),
        }
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_millis();
        let mut inner = self.lock();
        let free = match inner.leases.get(key) {
            None => true,
            Some((holder, until)) => holder == owner || *until <= now,
        };
        if free {
            inner.leases.insert(
                key.to_owned(),
                (owner.to_owned(), now.saturating_add(duration_millis(ttl))),
            );
        }
        Ok(free)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .leases
            .get(key)
            .is_some_and(|(holder, _)| holder == owner)
        {
            inner.leases.remove(key);
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        false
    }
}

/// A store named by a string, as in `CONNECTOR_STORE`, the CLI's `--store` and the config's
/// `$connector.store`: `memory:` or `sqlite:PATH`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// A process-local [`MemoryStore`].
    Memory,
    /// A [`SqliteStore`] at this path.
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    /// A [`RedisStore`]: `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`, with an
    /// optional trailing `?prefix=…` for the key prefix.
    #[cfg(feature = "redis")]
    Redis {
        /// The connection URL.
        url: String,
        /// The key prefix.
        prefix: String,
    },
    /// A [`CatalystCacheStore`]: `catalyst://PROJECT_ID[/SEGMENT_ID][?origin=URL]`. The token for
    /// Catalyst's API comes from the connector named by the config's `$connector.catalyst_auth`.
    #[cfg(feature = "catalyst")]
    Catalyst {
        /// The project id.
        project: String,
        /// The cache segment (default: the project's default segment).
        segment: Option<String>,
        /// The API origin (default: `X_ZOHO_CATALYST_CONSOLE_URL`, else the US origin).
        origin: Option<String>,
    },
}

/// A URL with its password replaced, for display (cluster URLs list several hosts and do not
/// parse as one URL: they are shown without their credentials part).
#[cfg(feature = "redis")]
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => match url
            .split_once("://")
            .and_then(|(s, rest)| rest.rsplit_once('@').map(|(_, h)| (s, h)))
        {
            Some((scheme, hosts)) => format!("{scheme}://[redacted]@{hosts}"),
            None => url.to_owned(),
        },
    }
}

/// The environment variable that selects the store.
pub const STORE_ENV: &str = "CONNECTOR_STORE";

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "memory:" || s == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(path) = s.strip_prefix("sqlite:") {
            #[cfg(feature = "sqlite")]
            {
                let path = path.strip_prefix("//").unwrap_or(path);
                if path.is_empty() {
                    return Err("`sqlite:` needs a path, e.g. sqlite:/var/lib/app/tokens.db".into());
                }
                return Ok(Self::Sqlite(path.into()));
            }
            #[cfg(not(feature = "sqlite"))]
            {
                let _ = path;
                return Err("this build has no SQLite store (cargo feature `sqlite`)".into());
            }
        }
        if let Some(rest) = s.strip_prefix("catalyst://") {
            #[cfg(feature = "catalyst")]
            {
                let (path, origin) = match rest.split_once("?origin=") {
                    Some((p, o)) => (p, Some(o.to_owned())),
                    None => (rest, None),
                };
                let mut parts = path.trim_end_matches('/').splitn(2, '/');
                let project = parts.next().unwrap_or_default().to_owned();
                if project.is_empty() {
                    return Err(
                        "`catalyst://` needs a project id, e.g. catalyst://4000000001234".into(),
                    );
                }
                let segment = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
                return Ok(Self::Catalyst {
                    project,
                    segment,
                    origin,
                });
            }
            #[cfg(not(feature = "catalyst"))]
            {
                let _ = rest;
                return Err(
                    "this build has no Catalyst Cache store (cargo feature `catalyst`)".into(),
                );
            }
        }
        if [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
        ]
        .iter()
        .any(|p| s.starts_with(p))
        {
            #[cfg(feature = "redis")]
            {
                let (url, prefix) = match s.rsplit_once("?prefix=") {
                    Some((u, p)) => (u.to_owned(), p.to_owned()),
                    None => (s.to_owned(), REDIS_DEFAULT_PREFIX.to_owned()),
                };
                return Ok(Self::Redis { url, prefix });
            }
            #[cfg(not(feature = "redis"))]
            return Err("this build has no Redis store (cargo feature `redis`)".into());
        }
        Err(format!(
            "unknown store `{s}`: expected `memory:`, `sqlite:PATH`, `redis://…`, `rediss://…` or `redis+cluster://host:port,…`"
        ))
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory:"),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            #[cfg(feature = "redis")]
            Self::Redis { url, .. } => f.write_str(&redact_url(url)),
            #[cfg(feature = "catalyst")]
            Self::Catalyst {
                project, segment, ..
            } => match segment {
                Some(s) => write!(f, "catalyst://{project}/{s}"),
                None => write!(f, "catalyst://{project}"),
            },
        }
    }
}

impl fmt::Debug for StoreSpec {
    /// As `Display`: passwords in URLs are redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSpec({self})")
    }
}

impl StoreSpec {
    /// The store named by `CONNECTOR_STORE`, if set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(STORE_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .parse()
                .map(Some)
                .map_err(|e| format!("${STORE_ENV}: {e}")),
            _ => Ok(None),
        }
    }

    /// The default store: SQLite in the user's data directory (see
    /// [`SqliteStore::default_path`]), or memory when there is no such directory or no SQLite.
    pub fn default_store() -> Self {
        #[cfg(feature = "sqlite")]
        if let Some(p) = SqliteStore::default_path() {
            return Self::Sqlite(p);
        }
        Self::Memory
    }

    /// Opens the store.
    pub fn open(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn TokenStore>, StoreError> {
        match self {
            Self::Memory => Ok(Arc::new(MemoryStore::with_clock(clock))),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(p) => Ok(Arc::new(SqliteStore::open_with_clock(p, clock)?)),
            #[cfg(feature = "redis")]
            Self::Redis { url, prefix } => Ok(Arc::new(RedisStore::from_url(url, prefix)?)),
            #[cfg(feature = "catalyst")]
            Self::Catalyst { .. } => Err(StoreError::new(
                "catalyst cache",
                StoreErrorKind::Rejected,
                "a Catalyst Cache store needs a connector for Catalyst's API: name it in the config's `$connector.catalyst_auth`",
            )),
        }
    }
}

/// A token record in the official SDKs' format plus our own fields.
///
/// Serialized as JSON: `access_token` and `expires_at` (epoch ms of the refresh point) are what the
/// SDKs read; `expiry_in_seconds` and `expires_in` give the lifetime; `api_domain`, `issued_at`
/// (epoch ms when the request was sent) and `fingerprint` (see [`crate::key::fingerprint`]) are ours.
#[derive(Clone)]
pub struct TokenRecord {
    /// The access token.
    pub access_token: AccessTokenSecret,
    /// Epoch ms at which the token should be refreshed (the SDKs' `expires_at`).
    pub refresh_at: EpochMillis,
    /// Epoch ms at which the token stops working.
    pub expires_at: EpochMillis,
    /// The lifetime the token endpoint announced, in seconds.
    pub lifetime_secs: u64,
    /// The API domain from the token response.
    pub api_domain: Option<String>,
    /// Epoch ms at which the token request was sent, when known.
    pub issued_at: Option<EpochMillis>,
    /// The credentials fingerprint, absent in records written by the official SDKs.
    pub fingerprint: Option<String>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("access_token", &self.access_token)
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .field("lifetime_secs", &self.lifetime_secs)
            .field("api_domain", &self.api_domain)
            .field("issued_at", &self.issued_at)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token record is not usable: {0}")]
pub struct RecordError(String);

impl TokenRecord {
    /// Serializes the record to its JSON form.
    pub fn to_json(&self) -> String {
        json!({
            "access_token": self.access_token.expose_secret(),
            "expires_at": self.refresh_at,
            "expiry_in_seconds": self.lifetime_secs,
            "expires_in": self.lifetime_secs,
            "api_domain": self.api_domain,
            "issued_at": self.issued_at,
            "fingerprint": self.fingerprint,
        })
        .to_string()
    }

    /// Parses a record written by this crate or by an official SDK. Accepts the value as a JSON
    /// object or as a JSON string holding one, and numbers sent as strings. Errors never quote the
    /// data.
    pub fn from_json(data: &str) -> Result<Self, RecordError> {
        let value: Value =
            serde_json::from_str(data).map_err(|_| RecordError("not valid JSON".into()))?;
        let value = match value {
            Value::String(inner) => serde_json::from_str(&inner)
                .map_err(|_| RecordError("string value is not valid JSON".into()))?,
            v => v,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| RecordError("not a JSON object".into()))?;
        let access_token = match obj.get("access_token") {
            Some(Value::String(s)) if !s.is_empty() => AccessTokenSecret::new(s.clone()),
            _ => return Err(RecordError("`access_token` missing or not a string".into())),
        };
        let refresh_at = obj
            .get("expires_at")
            .and_then(as_i64)
            .ok_or_else(|| RecordError("`expires_at` missing or not a number".into()))?;
        let lifetime_secs = obj
            .get("expiry_in_seconds")
            .or_else(|| obj.get("expires_in"))
            .and_then(as_i64)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        let issued_at = obj.get("issued_at").and_then(as_i64);
        let expires_at = match issued_at {
            Some(at) if lifetime_secs > 0 => at.saturating_add(
                i64::try_from(lifetime_secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            ),
            // SDK records carry only the refresh point: treat it as the end of life too.
            _ => refresh_at,
        };
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            access_token,
            refresh_at: refresh_at.min(expires_at),
            expires_at,
            lifetime_secs,
            api_domain: text("api_domain"),
            issued_at,
            fingerprint: text("fingerprint"),
        })
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_reads_sdk_forms() {
        let r = TokenRecord {
            access_token: AccessTokenSecret::new("1000.tok"),
            refresh_at: 2_000,
            expires_at: 3_601_000,
            lifetime_secs: 3600,
            api_domain: Some("https://www.zohoapis.com".into()),
            issued_at: Some(1_000),
            fingerprint: Some("ab".into()),
        };
        let back = TokenRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back.access_token.expose_secret(), "1000.tok");
        assert_eq!(
            (back.refresh_at, back.expires_at, back.lifetime_secs),
            (2_000, 3_601_000, 3600)
        );
        assert_eq!(back.fingerprint.as_deref(), Some("ab"));

        // Node SDK: a JSON string holding the record.
        let node = serde_json::to_string(
            &r#"{"access_token":"t","expiry_in_seconds":3600,"expires_at":"5000"}"#,
        )
        .unwrap();
        let n = TokenRecord::from_json(&node).unwrap();
        assert_eq!(
            (n.refresh_at, n.expires_at, n.fingerprint),
            (5000, 5000, None)
        );
        // Python SDK: an object with `expires_in`.
        let p = TokenRecord::from_json(r#"{"access_token":"t","expires_in":3600,"expires_at":7}"#)
            .unwrap();
        assert_eq!(p.lifetime_secs, 3600);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_urls_are_shown_without_passwords() {
        for url in [
            "redis://:hunter2@127.0.0.1:6379/0",
            "rediss://user:hunter2@cache.example.com:6380",
            "redis+cluster://user:hunter2@10.0.0.1:7000,10.0.0.2:7000",
        ] {
            let spec: StoreSpec = url.parse().unwrap();
            let shown = format!("{spec} {spec:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn corrupt_records_are_errors_without_content() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"access_token":5}"#,
            r#"{"access_token":"secret-x"}"#,
        ] {
            let e = TokenRecord::from_json(bad).unwrap_err();
            assert!(!e.to_string().contains("secret-x"));
        }
    }
}
