//! [`StoreSpec`]: a store named by a string (`memory:`, `sqlite:PATH`, `redis://…`,
//! `catalyst://…`), and its typed parse errors.

#[cfg(feature = "redis")]
use super::REDIS_DEFAULT_PREFIX;
#[cfg(feature = "redis")]
use super::RedisStore;
#[cfg(feature = "sqlite")]
use super::SqliteStore;
#[cfg(feature = "catalyst")]
use super::StoreErrorKind;
use super::{MemoryStore, StoreError, TokenStore};
use crate::clock::Clock;
use std::fmt;
use std::sync::Arc;

/// Why a store name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// `sqlite:` without a path.
    #[error("`sqlite:` needs a path, e.g. sqlite:/var/lib/app/tokens.db")]
    MissingPath,
    /// `catalyst://` without a project id.
    #[error("`catalyst://` needs a project id, e.g. catalyst://4000000001234")]
    MissingProject,
    /// A store this build was compiled without.
    #[error("this build has no {store} store (cargo feature `{feature}`)")]
    NotBuilt {
        /// The store's name.
        store: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// A `catalyst://` query parameter that does not exist.
    #[error("unknown `catalyst://` parameter `{0}` (known: origin, key, environment)")]
    UnknownParameter(String),
    /// A Catalyst origin that is neither https nor loopback http.
    #[error("{0}")]
    InsecureOrigin(String),
    /// Not a store name at all.
    #[error(
        "unknown store `{0}`: expected `memory:`, `sqlite:PATH`, `redis://…`, `rediss://…`, `redis+cluster://host:port,…` or `catalyst://PROJECT_ID`"
    )]
    Unknown(String),
    /// The store named by an environment variable is invalid.
    #[error("${var}: {source}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with its value.
        #[source]
        source: Box<SpecError>,
    },
}

/// A store named by a string, as in `CONNECTOR_STORE`, the CLI's `--store` and the config's
/// `$connector.store`: `memory:` or `sqlite:PATH`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// A process-local [`MemoryStore`].
    Memory,
    /// A [`SqliteStore`](crate::SqliteStore) at this path.
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    /// A [`RedisStore`](crate::RedisStore): `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`, with an
    /// optional trailing `?prefix=…` for the key prefix.
    #[cfg(feature = "redis")]
    Redis {
        /// The connection URL.
        url: String,
        /// The key prefix.
        prefix: String,
    },
    /// A [`CatalystCacheStore`](crate::CatalystCacheStore):
    /// `catalyst://PROJECT_ID[/SEGMENT_ID][?origin=URL&key=PROJECT_KEY&environment=Production]`. The token for
    /// Catalyst's API comes from the connector named by the config's `$connector.catalyst_auth`.
    #[cfg(feature = "catalyst")]
    Catalyst {
        /// The project id.
        project: String,
        /// The cache segment (default: the project's default segment).
        segment: Option<String>,
        /// The API origin (default: `X_ZOHO_CATALYST_CONSOLE_URL`, else the US origin); https,
        /// or http to a loopback host.
        origin: Option<String>,
        /// The project key sent as `PROJECT_ID` (default: the project id).
        key: Option<String>,
        /// `Development` (default) or `Production`.
        environment: Option<String>,
    },
}

/// A URL with its password replaced, for display (cluster URLs list several hosts and do not
/// parse as one URL: they are shown without their credentials part).
#[cfg(feature = "redis")]
pub(crate) fn redact_url(url: &str) -> String {
    // Everything before the last `@` may be credentials, however the rest parses (a mistyped
    // URL can put the password in what a parser calls the path): show none of it.
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| rest.rsplit_once('@').map(|(_, hosts)| (scheme, hosts)))
    {
        Some((scheme, hosts)) => format!("{scheme}://[redacted]@{hosts}"),
        None => url.to_owned(),
    }
}

/// The environment variable that selects the store.
pub const STORE_ENV: &str = "CONNECTOR_STORE";

impl std::str::FromStr for StoreSpec {
    type Err = SpecError;

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
                    return Err(SpecError::MissingPath);
                }
                return Ok(Self::Sqlite(path.into()));
            }
            #[cfg(not(feature = "sqlite"))]
            {
                let _ = path;
                return Err(SpecError::NotBuilt {
                    store: "SQLite",
                    feature: "sqlite",
                });
            }
        }
        if let Some(rest) = s.strip_prefix("catalyst://") {
            #[cfg(feature = "catalyst")]
            return parse_catalyst(rest);
            #[cfg(not(feature = "catalyst"))]
            {
                let _ = rest;
                return Err(SpecError::NotBuilt {
                    store: "Catalyst Cache",
                    feature: "catalyst",
                });
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
            return Err(SpecError::NotBuilt {
                store: "Redis",
                feature: "redis",
            });
        }
        Err(SpecError::Unknown(s.to_owned()))
    }
}

/// `PROJECT_ID[/SEGMENT_ID][?origin=…&key=…&environment=…]`, after `catalyst://`.
#[cfg(feature = "catalyst")]
fn parse_catalyst(rest: &str) -> Result<StoreSpec, SpecError> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut parts = path.trim_end_matches('/').splitn(2, '/');
    let project = parts.next().unwrap_or_default().to_owned();
    if project.is_empty() {
        return Err(SpecError::MissingProject);
    }
    let segment = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let (mut origin, mut key, mut environment) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "origin" => origin = Some(v.into_owned()),
            "key" => key = Some(v.into_owned()),
            "environment" => environment = Some(v.into_owned()),
            other => return Err(SpecError::UnknownParameter(other.to_owned())),
        }
    }
    if let Some(o) = &origin {
        super::catalyst::check_origin(o).map_err(SpecError::InsecureOrigin)?;
    }
    Ok(StoreSpec::Catalyst {
        project,
        segment,
        origin,
        key,
        environment,
    })
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
                project,
                segment,
                environment,
                ..
            } => {
                match segment {
                    Some(s) => write!(f, "catalyst://{project}/{s}")?,
                    None => write!(f, "catalyst://{project}")?,
                }
                match environment {
                    Some(e) => write!(f, " ({e})"),
                    None => Ok(()),
                }
            }
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
    pub fn from_env() -> Result<Option<Self>, SpecError> {
        match std::env::var(STORE_ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some).map_err(|e| SpecError::Env {
                var: STORE_ENV,
                source: Box::new(e),
            }),
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
            Self::Redis { url, prefix } => Ok(Arc::new(
                RedisStore::builder(url.as_str())
                    .prefix(prefix.as_str())
                    .build()?,
            )),
            #[cfg(feature = "catalyst")]
            Self::Catalyst { .. } => Err(StoreError::new(
                "catalyst cache",
                StoreErrorKind::Rejected,
                "a Catalyst Cache store needs a connector for Catalyst's API: name it in the config's `$connector.catalyst_auth`",
            )),
        }
    }
}
