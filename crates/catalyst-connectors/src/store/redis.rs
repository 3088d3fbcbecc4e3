//! Redis store: one token for a whole fleet of hosts.
//!
//! - standalone (`redis://`, `rediss://` for TLS) through a reconnecting connection manager, or
//!   Redis Cluster (`redis+cluster://h1:p1,h2:p2`, `rediss+cluster://…`);
//! - each record is a hash `{g: generation, d: data}` whose key TTL follows the token's expiry;
//!   compare-and-set, delete and the lease are Lua scripts, atomic on the server;
//! - keys are `<prefix>{<connector part>}<rest>`: the hash tag keeps a connector's token, lease and
//!   refresh-token records in one cluster slot, so they can be written in one script;
//! - the mint lease is `SET`-if-free with a TTL (re-entrant for its owner), released by
//!   compare-and-delete.
//!
//! Every command has short connect and response timeouts: when Redis is unreachable, store calls
//! fail fast and connectors carry on from memory, minting directly (once per process).

use super::{
    CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite, redact_url,
};
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "catalyst-connectors:";

const TIMEOUT: Duration = Duration::from_millis(1500);

const CAS: &str = r#"
if ARGV[4] ~= nil and KEYS[2] ~= nil then
  redis.call('HINCRBY', KEYS[2], 'g', 1)
  redis.call('HSET', KEYS[2], 'd', ARGV[4])
  redis.call('PERSIST', KEYS[2])
end
local cur = false
if redis.call('HEXISTS', KEYS[1], 'd') == 1 then
  cur = tonumber(redis.call('HGET', KEYS[1], 'g'))
end
local expected = ARGV[1]
local ok
if expected == '' then ok = (cur == false) else ok = (cur ~= false and cur == tonumber(expected)) end
if not ok then
  if cur == false then return {0, -1} end
  return {0, cur}
end
local g = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HSET', KEYS[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, g}
"#;

const DELETE: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then return 0 end
if ARGV[1] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'g')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[1], 'd')
return 1
"#;

const ACQUIRE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

enum Backend {
    Standalone(Box<StandaloneBackend>),
    Cluster(Box<ClusterBackend>),
}

/// The connection manager is made on first use (inside the caller's Tokio runtime) and then
/// reconnects by itself.
struct StandaloneBackend {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: OnceCell<ConnectionManager>,
}

struct ClusterBackend {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

/// A token store in Redis (standalone or cluster). Clones share connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    backend: Backend,
    prefix: String,
    label: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.label)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

/// Builds a [`RedisStore`]: [`RedisStore::builder`].
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    root_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("root_ca_pem", &self.root_ca_pem.is_some())
            .finish()
    }
}

impl RedisStoreBuilder {
    /// The key prefix (default [`DEFAULT_PREFIX`]), so several apps can share one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// For TLS (`rediss://`): trust certificates that chain to this CA (PEM) instead of the
    /// public web roots, e.g. a private CA.
    pub fn root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_ca_pem = Some(pem.into());
        self
    }

    /// Makes the store. Nothing connects yet: the first command connects (and reconnects after
    /// failures), inside the caller's runtime.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        for (scheme, node_scheme) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = self.url.strip_prefix(scheme) {
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((a, h)) => (format!("{a}@"), h),
                    None => (String::new(), rest),
                };
                let nodes: Vec<String> = hosts
                    .trim_end_matches('/')
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{node_scheme}{auth}{h}"))
                    .collect();
                return self.cluster(&nodes);
            }
        }
        self.standalone()
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.root_ca_pem.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    fn standalone(self) -> Result<RedisStore, StoreError> {
        let label = format!("redis {}", redact_url(&self.url));
        let client = match self.certificates() {
            Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs),
            None => redis::Client::open(self.url.as_str()),
        }
        .map_err(|e| {
            StoreError::new(
                &label,
                StoreErrorKind::Rejected,
                format!("invalid Redis URL or TLS set-up: {e}"),
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore::assemble(
            Backend::Standalone(Box::new(StandaloneBackend {
                client,
                config,
                manager: OnceCell::new(),
            })),
            self.prefix,
            label,
        ))
    }

    fn cluster(self, nodes: &[String]) -> Result<RedisStore, StoreError> {
        let label = format!(
            "redis cluster {}",
            nodes
                .iter()
                .map(|n| redact_url(n))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(2);
        if let Some(certs) = self.certificates() {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(|e| {
            StoreError::new(
                &label,
                StoreErrorKind::Rejected,
                format!("invalid cluster nodes: {e}"),
            )
        })?;
        Ok(RedisStore::assemble(
            Backend::Cluster(Box::new(ClusterBackend {
                client,
                connection: OnceCell::new(),
            })),
            self.prefix,
            label,
        ))
    }
}

impl RedisStore {
    /// A builder for a store at `url`: `redis://[user:password@]host:port[/db]`, `rediss://…` for
    /// TLS, or `redis+cluster://[user:password@]h1:p1,h2:p2` (`rediss+cluster://` for TLS) for a
    /// Redis Cluster reached through any of its nodes.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            root_ca_pem: None,
        }
    }

    /// `RedisStore::builder(url).build()`: the store at `url` with the default prefix.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    fn assemble(backend: Backend, prefix: String, label: String) -> Self {
        Self {
            inner: std::sync::Arc::new(Inner {
                backend,
                prefix,
                label,
            }),
        }
    }

    /// `<prefix>{<connector part>}<rest>`: the part before the second `:` (e.g. `ZC_CONN_crm`) is
    /// the cluster hash tag.
    fn redis_key(&self, key: &str) -> String {
        let (tag, rest) = match key.find(':') {
            Some(i) => key.split_at(i),
            None => (key, ""),
        };
        format!("{}{{{tag}}}{rest}", self.inner.prefix)
    }

    fn error(&self, e: redis::RedisError) -> StoreError {
        let kind = if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            StoreErrorKind::Unavailable
        } else {
            StoreErrorKind::Rejected
        };
        StoreError::new(&self.inner.label, kind, e.to_string())
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match &self.inner.backend {
            Backend::Standalone(standalone) => {
                let manager = standalone
                    .manager
                    .get_or_try_init(|| {
                        ConnectionManager::new_with_config(
                            standalone.client.clone(),
                            standalone.config.clone(),
                        )
                    })
                    .await
                    .map_err(|e| self.error(e))?;
                let mut con = manager.clone();
                query(&mut con, cmd).await.map_err(|e| self.error(e))
            }
            Backend::Cluster(cluster) => {
                let con = cluster
                    .connection
                    .get_or_try_init(|| cluster.client.get_async_connection())
                    .await
                    .map_err(|e| self.error(e))?;
                let mut con = con.clone();
                query(&mut con, cmd).await.map_err(|e| self.error(e))
            }
        }
    }

    fn eval(script: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

async fn query<C: ConnectionLike + Send, T: redis::FromRedisValue>(
    con: &mut C,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    cmd.query_async(con).await
}

/// Whether two store keys share a cluster hash tag (the part before the first `:`).
fn same_tag(a: &str, b: &str) -> bool {
    let tag = |k: &str| k.split(':').next().map(str::to_owned);
    tag(a) == tag(b)
}

fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.redis_key(key)).arg("g").arg("d");
        let (generation, data): (Option<u64>, Option<String>) = self.run(&cmd).await?;
        Ok(match (generation, data) {
            (Some(generation), Some(data)) => Some(StoredValue { generation, data }),
            _ => None,
        })
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        let key = self.redis_key(write.key);
        let expected = write.expected.map(|g| g.to_string()).unwrap_or_default();
        let ttl = ttl_ms(write.ttl);
        let refresh_key = write.refresh.map(|(k, _)| self.redis_key(k));
        let mut keys = vec![key.as_str()];
        let mut args = vec![expected.as_str(), write.data, ttl.as_str()];
        if let (Some(rk), Some((_, rdata))) = (&refresh_key, write.refresh) {
            if same_tag(write.key, write.refresh.map_or("", |r| r.0)) {
                keys.push(rk);
                args.push(rdata);
            } else {
                // Different cluster slots: write the refresh record on its own, first.
                let mut cmd = redis::cmd("HSET");
                cmd.arg(rk).arg("d").arg(rdata);
                let _: i64 = self.run(&cmd).await?;
            }
        }
        let (written, generation): (i64, i64) = self.run(&Self::eval(CAS, &keys, &args)).await?;
        Ok(if written == 1 {
            CasOutcome::Written {
                generation: u64::try_from(generation).unwrap_or(0),
            }
        } else {
            CasOutcome::Conflict {
                current: u64::try_from(generation).ok(),
            }
        })
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        let expected = expected.map(|g| g.to_string()).unwrap_or_default();
        let key = self.redis_key(key);
        let deleted: i64 = self.run(&Self::eval(DELETE, &[&key], &[&expected])).await?;
        Ok(deleted == 1)
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let lease = format!("{}:lease", self.redis_key(key));
        let ttl = ttl_ms(ttl);
        let got: i64 = self
            .run(&Self::eval(ACQUIRE, &[&lease], &[owner, &ttl]))
            .await?;
        Ok(got == 1)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let lease = format!("{}:lease", self.redis_key(key));
        let _: i64 = self.run(&Self::eval(RELEASE, &[&lease], &[owner])).await?;
        Ok(())
    }
}
