//! Credentials from the incoming request, for code behind Catalyst's gateway (functions, AppSail):
//! the Rust equivalent of the SDKs' `catalyst.initialize(req)`.
//!
//! Catalyst sends each request's project and admin credentials as `x-zc-*` headers
//! (`x-zc-projectid`, `x-zc-project-key`, `x-zc-environment`, `x-zc-admin-cred-type`,
//! `x-zc-admin-cred-token`). [`CatalystLayer`] reads them and hands the handler a [`CatalystApp`]
//! (as a request extension) whose connectors keep their tokens in that project's Catalyst Cache,
//! in that environment, calling Catalyst with that admin token — shared with the project's Node
//! and Python functions. Apps are kept per project and environment, so a connector's token is in
//! memory after the first request; the admin token is the latest request's.
//!
//! ```no_run
//! # async fn run() {
//! use axum::{Extension, Router, routing::get};
//! use catalyst_connectors::catalyst_request::{CatalystApp, CatalystLayer};
//!
//! let layer = CatalystLayer::new(serde_json::json!({
//!     "crm": {"client_id": "1000.XXXX", "client_secret": "…", "dc": "us", "refresh_token": "1000.yyyy"}
//! }));
//! let app: Router = Router::new()
//!     .route("/", get(|Extension(app): Extension<CatalystApp>| async move {
//!         let crm = app.connector("crm").map_err(|e| e.to_string())?;
//!         let token = crm.access_token().await.map_err(|e| e.to_string())?;
//!         Ok::<_, String>(format!("token until {:?}", token.expires_at()))
//!     }))
//!     .layer(layer);
//! # let _ = app; }
//! ```
//!
//! A request without the credentials gets HTTP 401 with a JSON body naming the missing header;
//! header values never appear in errors or logs.

use crate::connection::Connection;
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::secret::AccessTokenSecret;
use crate::store::{CatalystCacheStore, CatalystTokenProvider};
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The project, environment and connectors of one incoming request.
#[derive(Clone)]
pub struct CatalystApp {
    connection: Connection,
    project_id: Arc<str>,
    environment: Arc<str>,
}

impl fmt::Debug for CatalystApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalystApp")
            .field("project_id", &self.project_id)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

impl CatalystApp {
    /// The connector `name` of the layer's config, on this project's Catalyst Cache.
    pub fn connector(&self, name: &str) -> Result<Connector> {
        self.connection.connector(name)
    }

    /// The connection (all the layer's connectors) for this project and environment.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The project id from `x-zc-projectid`.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The environment from `x-zc-environment` (`Development` when absent).
    pub fn environment(&self) -> &str {
        &self.environment
    }
}

/// The admin token of the latest request for one project: what its store calls Catalyst with.
#[derive(Default)]
struct LatestAdminToken(ArcSwapOption<AccessTokenSecret>);

impl fmt::Debug for LatestAdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LatestAdminToken([redacted])")
    }
}

#[async_trait::async_trait]
impl CatalystTokenProvider for Arc<LatestAdminToken> {
    async fn catalyst_token(&self) -> Result<AccessTokenSecret> {
        self.0
            .load_full()
            .map(|t| (*t).clone())
            .ok_or_else(|| Error::InvalidUser {
                connector: "catalyst".into(),
                reason: "no admin token arrived with the request".into(),
            })
    }
}

/// (project id, environment, project key) → the app and its admin token slot.
type Apps = HashMap<(String, String, String), (CatalystApp, Arc<LatestAdminToken>)>;

struct Shared {
    config: serde_json::Value,
    origin: Option<String>,
    apps: Mutex<Apps>,
}

/// A tower layer that reads a Catalyst request's `x-zc-*` credentials into a [`CatalystApp`].
#[derive(Clone)]
pub struct CatalystLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for CatalystLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalystLayer")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

/// Why a request's Catalyst credentials could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused(String);

/// The Catalyst credentials of one request: what the SDKs' `catalyst.initialize(req)` reads from
/// its `x-zc-*` headers. Used by [`CatalystLayer`] and by the Node and Python packages. `Debug`
/// never shows the admin token.
#[derive(Clone)]
pub struct CatalystCredentials {
    /// `x-zc-projectid`.
    pub project_id: String,
    /// `x-zc-environment` (`Development` when absent).
    pub environment: String,
    /// `x-zc-project-key` (the project id when absent).
    pub project_key: String,
    /// `x-zc-admin-cred-token` (with `x-zc-admin-cred-type: token`).
    pub admin_token: AccessTokenSecret,
}

impl fmt::Debug for CatalystCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalystCredentials")
            .field("project_id", &self.project_id)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

impl CatalystCredentials {
    /// The credentials in a request's headers (`get` looks one up by lower-case name). `None`
    /// when the request carries no `x-zc-projectid` (not from Catalyst's gateway); an error
    /// naming the header when it carries some but not all (values never appear in it).
    pub fn from_headers<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<std::result::Result<Self, String>> {
        let value = |name: &str| get(name).map(str::trim).filter(|v| !v.is_empty());
        let project = value("x-zc-projectid")?;
        let need = |name: &str| {
            value(name).ok_or_else(|| format!("the Catalyst header `{name}` is missing"))
        };
        let read = || -> std::result::Result<Self, String> {
            if !need("x-zc-admin-cred-type")?.eq_ignore_ascii_case("token") {
                return Err(
                    "`x-zc-admin-cred-type` must be `token` (tickets are not supported)".into(),
                );
            }
            Ok(Self {
                project_id: project.to_owned(),
                environment: value("x-zc-environment")
                    .unwrap_or("Development")
                    .to_owned(),
                project_key: value("x-zc-project-key").unwrap_or(project).to_owned(),
                admin_token: AccessTokenSecret::new(need("x-zc-admin-cred-token")?),
            })
        };
        Some(read())
    }

    /// The project's Catalyst Cache, in this environment, called with this admin token
    /// (`origin`: default `X_ZOHO_CATALYST_CONSOLE_URL`, else the US origin).
    pub fn cache_store(
        &self,
        origin: Option<&str>,
    ) -> std::result::Result<CatalystCacheStore, crate::StoreError> {
        self.cache_store_with(origin, |b| b.token(self.admin_token.clone()))
    }

    fn cache_store_with(
        &self,
        origin: Option<&str>,
        auth: impl FnOnce(crate::CatalystCacheStoreBuilder) -> crate::CatalystCacheStoreBuilder,
    ) -> std::result::Result<CatalystCacheStore, crate::StoreError> {
        let mut store = auth(
            CatalystCacheStore::builder(&self.project_id)
                .environment(&self.environment)
                .project_key(&self.project_key),
        );
        if let Some(o) = origin {
            store = store.origin(o);
        }
        store.build()
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl CatalystLayer {
    /// A layer for the connectors of `config` (the SDKs' JSON shape).
    pub fn new(config: serde_json::Value) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                origin: None,
                apps: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The Catalyst API origin (default: `X_ZOHO_CATALYST_CONSOLE_URL`, else the US origin).
    pub fn origin(self, origin: impl Into<String>) -> Self {
        let shared = Shared {
            config: self.shared.config.clone(),
            origin: Some(origin.into()),
            apps: Mutex::new(HashMap::new()),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    fn app_for(&self, headers: &http::HeaderMap) -> std::result::Result<CatalystApp, Refused> {
        let creds = CatalystCredentials::from_headers(|name| header(headers, name))
            .unwrap_or_else(|| Err("the Catalyst header `x-zc-projectid` is missing".into()))
            .map_err(Refused)?;
        let token = creds.admin_token.clone();
        let slot = (
            creds.project_id.clone(),
            creds.environment.clone(),
            creds.project_key.clone(),
        );
        let mut apps = self.shared.apps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((app, admin)) = apps.get(&slot) {
            admin.0.store(Some(Arc::new(token)));
            return Ok(app.clone());
        }
        let admin = Arc::new(LatestAdminToken::default());
        admin.0.store(Some(Arc::new(token)));
        let store = creds
            .cache_store_with(self.shared.origin.as_deref(), |b| {
                b.token_from(Arc::clone(&admin))
            })
            .map_err(|e| Refused(format!("cannot use the project's Catalyst Cache: {e}")))?;
        let (project, environment) = (creds.project_id.as_str(), creds.environment.as_str());
        // The cache is shared with the SDKs: no encryption, nothing from this process's env.
        let connection = Connection::builder()
            .ignore_env()
            .json(self.shared.config.clone())
            .store(store)
            .build()
            .map_err(|e| Refused(format!("the connector config is invalid: {e}")))?;
        let app = CatalystApp {
            connection,
            project_id: Arc::from(project),
            environment: Arc::from(environment),
        };
        apps.insert(slot, (app.clone(), admin));
        Ok(app)
    }
}

impl<S> tower_layer::Layer<S> for CatalystLayer {
    type Service = CatalystService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatalystService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`CatalystLayer`].
#[derive(Clone, Debug)]
pub struct CatalystService<S> {
    inner: S,
    layer: CatalystLayer,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for CatalystService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match self.layer.app_for(request.headers()) {
            Ok(app) => {
                request.extensions_mut().insert(app);
                Box::pin(self.inner.call(request))
            }
            Err(Refused(reason)) => {
                let body = serde_json::json!({"error": "catalyst_credentials", "message": reason})
                    .to_string();
                let mut response = http::Response::new(ResBody::from(body));
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}
