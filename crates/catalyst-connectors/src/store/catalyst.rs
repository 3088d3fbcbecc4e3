//! Catalyst Cache store (feature `catalyst`): share tokens with a Catalyst project's Node and
//! Python functions through the cache the official SDKs use.
//!
//! - REST: `{origin}/baas/v1/project/{project_id}[/segment/{segment_id}]/cache`; `GET` and `DELETE`
//!   with `?cacheKey=`, `POST` (insert) and `PUT` (update) with `{cache_name, cache_value,
//!   expiry_in_hours}`; headers `Authorization: Zoho-oauthtoken …`, `PROJECT_ID`,
//!   `X-Catalyst-Environment`, `Accept: application/vnd.catalyst.v2+json`.
//! - Keys are the SDKs' `ZC_CONN_<name>:<h5>`; values are JSON *strings* holding the SDKs'
//!   `access_token` and `expires_at` (epoch ms), so the SDKs read what we write; we read their
//!   records (a JSON string from Node, an object from Python) and serve them when the key matches,
//!   as they do. Our records carry a credential fingerprint, and one that does not match is never
//!   served.
//! - Limits are enforced before sending: keys ≤ 50 characters (checked against connector names
//!   when the connection is built), values ≤ 16,000 characters, expiry in whole hours clamped to
//!   1..=48.
//! - **No lease.** Catalyst Cache has no set-if-absent, so it cannot elect one minter among
//!   processes: in-process single flight still holds, and with
//!   [`CatalystCacheStoreBuilder::lease_store`] a Redis or SQLite store provides the lease. The
//!   compare-and-set is read-then-write (best effort), for the same reason.
//! - Catalyst keeps values at most 48 hours: do not rely on it to keep refresh tokens; keep them
//!   in the connector's config or in a SQLite/Redis store.

use super::{CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite};
use crate::DataCenter;
use crate::secret::{AccessTokenSecret, ExposeSecret};
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

const KEY_MAX: usize = 50;
const VALUE_MAX: usize = 16_000;
const HOURS_MAX: u64 = 48;
const GENERATION: &str = "_cc_generation";
const WRAPPED: &str = "_cc_data";
const DELETED: &str = "_cc_deleted";

/// Supplies the OAuth token for Catalyst's own API (scopes `ZohoCatalyst.cache.*`). A
/// [`Connector`](crate::Connector) is one (of another connection, e.g. on a memory or SQLite
/// store); the store knows nothing else about connectors.
#[async_trait]
pub trait CatalystTokenProvider: Send + Sync + fmt::Debug + 'static {
    /// A valid token for Catalyst's API. Errors must not contain secrets.
    async fn catalyst_token(&self) -> crate::Result<AccessTokenSecret>;
}

/// Where the token for Catalyst's own API comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum CatalystAuth {
    /// A provider asked before each request, e.g. a connector.
    Provider(Arc<dyn CatalystTokenProvider>),
    /// A fixed token (e.g. the admin token a Catalyst function receives per request).
    Token(AccessTokenSecret),
}

impl fmt::Debug for CatalystAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Provider(p) => write!(f, "Provider({p:?})"),
            Self::Token(_) => f.write_str("Token([redacted])"),
        }
    }
}

/// Builds a [`CatalystCacheStore`].
#[derive(Debug, Clone)]
pub struct CatalystCacheStoreBuilder {
    project_id: String,
    project_key: Option<String>,
    segment_id: Option<String>,
    origin: Option<String>,
    environment: String,
    auth: Option<CatalystAuth>,
    lease: Option<Arc<dyn TokenStore>>,
    timeout: Duration,
}

impl CatalystCacheStoreBuilder {
    /// Uses this segment instead of the project's default one.
    pub fn segment(mut self, segment_id: impl Into<String>) -> Self {
        self.segment_id = Some(segment_id.into());
        self
    }

    /// The API origin, e.g. `https://api.catalyst.zoho.eu`. Default: `X_ZOHO_CATALYST_CONSOLE_URL`,
    /// else the US origin.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// The origin of a data centre's Catalyst API.
    pub fn data_center(mut self, dc: DataCenter) -> Result<Self, StoreError> {
        let origin = dc.catalyst_origin().ok_or_else(|| {
            StoreError::new(
                "catalyst cache",
                StoreErrorKind::Rejected,
                format!("Catalyst has no API in the `{dc}` data centre"),
            )
        })?;
        self.origin = Some(origin.into());
        Ok(self)
    }

    /// The environment: `Development` (the default, as in the SDKs) or `Production`. Catalyst
    /// keeps their caches apart, so this must match the functions you share tokens with.
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = env.into();
        self
    }

    /// The project key the SDKs send as `PROJECT_ID` (a function receives it as
    /// `x-zc-project-key`); default: the project id.
    pub fn project_key(mut self, key: impl Into<String>) -> Self {
        self.project_key = Some(key.into());
        self
    }

    /// Calls Catalyst with tokens from `provider`, e.g. a [`Connector`](crate::Connector).
    pub fn token_from(mut self, provider: impl CatalystTokenProvider) -> Self {
        self.auth = Some(CatalystAuth::Provider(Arc::new(provider)));
        self
    }

    /// Calls Catalyst with a fixed token.
    pub fn token(mut self, token: AccessTokenSecret) -> Self {
        self.auth = Some(CatalystAuth::Token(token));
        self
    }

    /// Takes mint leases from another store (Redis or SQLite), so one process mints for all.
    pub fn lease_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.lease = Some(store);
        self
    }

    /// Builds the store.
    pub fn build(self) -> Result<CatalystCacheStore, StoreError> {
        let label = format!("catalyst cache (project {})", self.project_id);
        let auth = self.auth.ok_or_else(|| {
            StoreError::new(
                &label,
                StoreErrorKind::Rejected,
                "no credential for the Catalyst API: set token_from(connector) or token(…)",
            )
        })?;
        let origin = self
            .origin
            .or_else(|| {
                std::env::var("X_ZOHO_CATALYST_CONSOLE_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "https://api.catalyst.zoho.com".into());
        check_origin(&origin)
            .map_err(|problem| StoreError::new(&label, StoreErrorKind::Rejected, problem))?;
        let mut base = format!(
            "{}/baas/v1/project/{}",
            origin.trim_end_matches('/'),
            self.project_id
        );
        if let Some(segment) = &self.segment_id {
            base.push_str(&format!("/segment/{segment}"));
        }
        base.push_str("/cache");
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("catalyst-connectors/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::new(&label, StoreErrorKind::Unavailable, e.to_string()))?;
        Ok(CatalystCacheStore {
            inner: Arc::new(Inner {
                http,
                base,
                origin,
                segment_id: self.segment_id,
                project_key: self.project_key.unwrap_or_else(|| self.project_id.clone()),
                org: std::env::var("X_ZOHO_CATALYST_ORG_ID")
                    .ok()
                    .filter(|s| !s.is_empty()),
                project_id: self.project_id,
                environment: self.environment,
                auth,
                lease: self.lease,
                label,
            }),
        })
    }
}

/// A token store in Catalyst Cache: the official SDKs' keys and records, Catalyst's limits.
#[derive(Clone)]
pub struct CatalystCacheStore {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    origin: String,
    segment_id: Option<String>,
    project_key: String,
    org: Option<String>,
    project_id: String,
    environment: String,
    auth: CatalystAuth,
    lease: Option<Arc<dyn TokenStore>>,
    label: String,
}

impl fmt::Debug for CatalystCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalystCacheStore")
            .field("base", &self.inner.base)
            .field("auth", &self.inner.auth)
            .field("lease", &self.inner.lease)
            .finish()
    }
}

/// A decoded cache value.
pub(crate) enum Decoded {
    Live(StoredValue),
    /// Deleted by us; the generation is kept so it never repeats.
    Tombstone(u64),
    Absent,
}

impl CatalystCacheStore {
    /// Starts a builder for project `project_id`.
    pub fn builder(project_id: impl Into<String>) -> CatalystCacheStoreBuilder {
        CatalystCacheStoreBuilder {
            project_id: project_id.into(),
            project_key: None,
            segment_id: None,
            origin: None,
            environment: "Development".into(),
            auth: None,
            lease: None,
            timeout: Duration::from_secs(10),
        }
    }

    fn err(&self, kind: StoreErrorKind, detail: impl Into<String>) -> StoreError {
        StoreError::new(&self.inner.label, kind, detail)
    }

    async fn token(&self) -> Result<String, StoreError> {
        match &self.inner.auth {
            CatalystAuth::Token(t) => Ok(t.expose_secret().to_owned()),
            CatalystAuth::Provider(p) => p
                .catalyst_token()
                .await
                .map(|t| t.expose_secret().to_owned())
                .map_err(|e| {
                    self.err(
                        StoreErrorKind::Auth,
                        format!("Catalyst's cache is unreachable: no token for its API ({e})"),
                    )
                }),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        query: Option<&str>,
        body: Option<Value>,
    ) -> Result<Option<Value>, StoreError> {
        let token = self.token().await?;
        let mut req = self
            .inner
            .http
            .request(method, &self.inner.base)
            .header("Authorization", format!("Zoho-oauthtoken {token}"))
            .header("PROJECT_ID", &self.inner.project_key)
            .header("X-Catalyst-Environment", &self.inner.environment)
            .header("Environment", &self.inner.environment)
            .header("X-CATALYST-USER", "admin")
            .header("Accept", "application/vnd.catalyst.v2+json");
        if let Some(org) = &self.inner.org {
            req = req.header("CATALYST-ORG", org);
        }
        if let Some(key) = query {
            req = req.query(&[("cacheKey", key)]);
        }
        // Never echo what we sent (the admin token, a cached record) into an error message.
        let mut sent: Vec<String> = vec![token.clone()];
        if let Some(b) = body {
            if let Some(v) = b.get("cache_value").and_then(Value::as_str) {
                sent.push(v.to_owned());
            }
            req = req.json(&b);
        }
        let response = req.send().await.map_err(|e| {
            self.err(
                StoreErrorKind::Unavailable,
                format!("request failed: {}", e.without_url()),
            )
        })?;
        let status = response.status();
        let json: Value = if status == reqwest::StatusCode::NOT_FOUND {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        if json.get("status").and_then(Value::as_str) == Some("success") && status.is_success() {
            return Ok(Some(json.get("data").cloned().unwrap_or(Value::Null)));
        }
        Err(self.failure(status, &json, &sent))
    }

    /// The typed error for an answer that is not a success: 404 (the request itself is wrong: a
    /// missing key is 200 with `cache_value: null`), 401/403 (Catalyst's token), an error envelope.
    fn failure(&self, status: reqwest::StatusCode, json: &Value, sent: &[String]) -> StoreError {
        if status == reqwest::StatusCode::NOT_FOUND {
            return self.err(
                StoreErrorKind::Rejected,
                format!(
                    "Catalyst answered HTTP 404 for the cache of project {} (segment {}, environment {}) at {}: check the project id, the segment id and the origin",
                    self.inner.project_id,
                    self.inner.segment_id.as_deref().unwrap_or("default"),
                    self.inner.environment,
                    self.inner.origin
                ),
            );
        }
        let data = json.get("data");
        let code = data
            .and_then(|d| d.get("error_code"))
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let message = crate::oauth::scrub(
            data.and_then(|d| d.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no message"),
            &sent.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return self.err(
                StoreErrorKind::Auth,
                format!(
                    "Catalyst refused the token for its API (HTTP {} {code}: {message}) for project {}: check the catalyst_auth connector's scopes (ZohoCatalyst.cache.READ, .CREATE, .DELETE) and the project",
                    status.as_u16(),
                    self.inner.project_id
                ),
            );
        }
        let kind = if status.is_server_error() {
            StoreErrorKind::Unavailable
        } else {
            StoreErrorKind::Rejected
        };
        self.err(
            kind,
            format!(
                "Catalyst answered HTTP {} {code}: {message}",
                status.as_u16()
            ),
        )
    }

    async fn read(&self, key: &str) -> Result<Decoded, StoreError> {
        let data = self.send(reqwest::Method::GET, Some(key), None).await?;
        Ok(decode(
            data.as_ref()
                .and_then(|d| d.get("cache_value"))
                .unwrap_or(&Value::Null),
        ))
    }

    async fn write(
        &self,
        key: &str,
        value: String,
        ttl: Duration,
        exists: bool,
    ) -> Result<(), StoreError> {
        check_key(self, key)?;
        if value.chars().count() > VALUE_MAX {
            return Err(self.err(
                StoreErrorKind::Rejected,
                format!(
                    "value for `{key}` is {} characters; Catalyst Cache keeps at most {VALUE_MAX}",
                    value.chars().count()
                ),
            ));
        }
        let hours = ttl.as_secs().div_ceil(3600).clamp(1, HOURS_MAX);
        let method = if exists {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let body = json!({"cache_name": key, "cache_value": value, "expiry_in_hours": hours});
        self.send(method, None, Some(body)).await.map(|_| ())
    }
}

/// https, or plain http to a loopback host (tests, emulators): the admin token and the shared
/// tokens travel in every request.
pub(crate) fn check_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin)
        .map_err(|e| format!("the Catalyst origin {origin:?} is not a URL ({e})"))?;
    if crate::urls::may_carry_secrets(&url) {
        return Ok(());
    }
    Err(format!(
        "the Catalyst origin {} must use https (plain http only for loopback hosts): it carries the Catalyst token and the shared tokens",
        url.origin().ascii_serialization()
    ))
}

fn check_key(store: &CatalystCacheStore, key: &str) -> Result<(), StoreError> {
    let n = key.chars().count();
    if n > KEY_MAX {
        return Err(store.err(
            StoreErrorKind::Rejected,
            format!("key `{key}` is {n} characters; Catalyst Cache keys are at most {KEY_MAX}"),
        ));
    }
    Ok(())
}

/// Our value: the data with a generation. A JSON object gets a `_cc_generation` field (the SDKs
/// ignore it); anything else is wrapped.
pub(crate) fn encode(data: &str, generation: u64) -> String {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(mut obj)) if !obj.contains_key(WRAPPED) => {
            obj.insert(GENERATION.into(), generation.into());
            Value::Object(obj).to_string()
        }
        _ => json!({ WRAPPED: data, GENERATION: generation }).to_string(),
    }
}

pub(crate) fn decode(value: &Value) -> Decoded {
    let (object, raw) = match value {
        Value::Null => return Decoded::Absent,
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => (o, s.clone()),
            // Not ours and not JSON: hand it over as is (the record parser decides).
            _ => {
                return Decoded::Live(StoredValue {
                    generation: 1,
                    data: s.clone(),
                });
            }
        },
        // The Python SDK stores the record as an object.
        Value::Object(o) => (o.clone(), value.to_string()),
        other => {
            return Decoded::Live(StoredValue {
                generation: 1,
                data: other.to_string(),
            });
        }
    };
    let generation = object.get(GENERATION).and_then(Value::as_u64);
    if object.get(DELETED).and_then(Value::as_bool) == Some(true) {
        return Decoded::Tombstone(generation.unwrap_or(1));
    }
    let Some(generation) = generation else {
        // An official SDK's record.
        return Decoded::Live(StoredValue {
            generation: 1,
            data: raw,
        });
    };
    if let Some(Value::String(inner)) = object.get(WRAPPED) {
        return Decoded::Live(StoredValue {
            generation,
            data: inner.clone(),
        });
    }
    let mut plain: Map<String, Value> = object;
    plain.remove(GENERATION);
    Decoded::Live(StoredValue {
        generation,
        data: Value::Object(plain).to_string(),
    })
}

#[async_trait]
impl TokenStore for CatalystCacheStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        check_key(self, key)?;
        Ok(match self.read(key).await? {
            Decoded::Live(v) => Some(v),
            _ => None,
        })
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        check_key(self, write.key)?;
        if let Some((rkey, rdata)) = write.refresh {
            let (exists, last) = match self.read(rkey).await? {
                Decoded::Live(v) => (true, v.generation),
                Decoded::Tombstone(g) => (true, g),
                Decoded::Absent => (false, 0),
            };
            self.write(
                rkey,
                encode(rdata, last + 1),
                Duration::from_secs(HOURS_MAX * 3600),
                exists,
            )
            .await?;
        }
        let (current, last, exists) = match self.read(write.key).await? {
            Decoded::Live(v) => (Some(v.generation), v.generation, true),
            Decoded::Tombstone(g) => (None, g, true),
            Decoded::Absent => (None, 0, false),
        };
        if current != write.expected {
            return Ok(CasOutcome::Conflict { current });
        }
        let generation = last + 1;
        self.write(write.key, encode(write.data, generation), write.ttl, exists)
            .await?;
        Ok(CasOutcome::Written { generation })
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        check_key(self, key)?;
        let Decoded::Live(v) = self.read(key).await? else {
            return Ok(false);
        };
        if expected.is_some_and(|g| g != v.generation) {
            return Ok(false);
        }
        // What both official SDKs read as an expired token (they refresh), with our generation so
        // it never repeats. An object without `access_token` would crash the Python SDK.
        let tombstone = json!({
            "access_token": "",
            "expires_at": 0,
            "expiry_in_seconds": 0,
            DELETED: true,
            GENERATION: v.generation,
        })
        .to_string();
        self.write(key, tombstone, Duration::from_secs(HOURS_MAX * 3600), true)
            .await?;
        Ok(true)
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match &self.inner.lease {
            Some(l) => l.try_acquire_lease(key, owner, ttl).await,
            None => Ok(true),
        }
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        match &self.inner.lease {
            Some(l) => l.release_lease(key, owner).await,
            None => Ok(()),
        }
    }

    async fn lease_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        match &self.inner.lease {
            Some(l) => l.lease_holder(key).await,
            None => Ok(None),
        }
    }

    async fn take_over_lease(
        &self,
        key: &str,
        dead_owner: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match &self.inner.lease {
            Some(l) => l.take_over_lease(key, dead_owner, owner, ttl).await,
            None => Ok(false),
        }
    }

    /// Shared for leases only when a lease store is configured.
    fn is_shared(&self) -> bool {
        self.inner.lease.is_some()
    }

    fn accepts_unfingerprinted(&self) -> bool {
        true
    }

    fn max_key_len(&self) -> Option<usize> {
        Some(KEY_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_keeps_sdk_fields() {
        let record = r#"{"access_token":"t","expires_at":5}"#;
        let encoded = encode(record, 7);
        let v: Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(v["access_token"], "t", "the SDKs still find their fields");
        let Decoded::Live(back) = decode(&Value::String(encoded)) else {
            panic!()
        };
        assert_eq!(back.generation, 7);
        assert_eq!(
            serde_json::from_str::<Value>(&back.data).unwrap(),
            serde_json::from_str::<Value>(record).unwrap()
        );
        for raw in ["", "{not json", "[1,2]", "plain"] {
            let Decoded::Live(b) = decode(&Value::String(encode(raw, 3))) else {
                panic!()
            };
            assert_eq!((b.generation, b.data.as_str()), (3, raw));
        }
    }
}
