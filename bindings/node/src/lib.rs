//! The native half of the npm package `catalyst-connectors`: the library's connections and
//! connectors for Node.js, through napi-rs. `index.js` is the API people use (the Catalyst SDKs'
//! shape: `initialize(req).connection(config).getConnector(name).getAccessToken()`); this module
//! is what it calls.
//!
//! Errors cross as `Error`s whose message is `CCERR` + JSON `{"code", "message"}` (the library's
//! error code and message, which never holds a secret); `index.js` turns them into `Error`s
//! with a `.code`.
//!
//! One Tokio runtime per process: napi-rs's, started on first use. A token in memory is read
//! synchronously ([`NativeConnector::fresh_token`]: a lock-free load, no promise, no thread hop),
//! and `index.js` keeps it until its refresh point: a call into a native method costs more than
//! the whole cached path may (measured: ~0.4 µs for an empty method, ~1 µs returning a string).

#![deny(clippy::all)]

use catalyst_connectors::catalyst_request::CatalystCredentials;
use catalyst_connectors::{
    AccessToken, Connection, Connector, ConnectorStatus, Error, ExposeSecret, GrantCode,
    system_time_to_millis,
};
use futures::FutureExt as _;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::collections::HashMap;

/// The marker `index.js` recognises in a native error's message.
const ERROR_MARKER: &str = "CCERR";

fn js_error(code: &str, message: &str) -> napi::Error {
    let body = serde_json::json!({"code": code, "message": message});
    napi::Error::new(Status::GenericFailure, format!("{ERROR_MARKER}{body}"))
}

fn from_library(e: Error) -> napi::Error {
    js_error(e.code(), &e.to_string())
}

/// A token with its times (epoch milliseconds) and API domain.
#[napi(object)]
pub struct TokenInfo {
    /// The access token.
    pub access_token: String,
    /// When it expires (epoch ms).
    pub expires_at: f64,
    /// When it is refreshed (epoch ms).
    pub refresh_at: f64,
    /// Where to call the API with it.
    pub api_domain: Option<String>,
    /// The refresh token a code exchange returned, if any.
    pub refresh_token: Option<String>,
}

fn token_info(t: &AccessToken) -> TokenInfo {
    TokenInfo {
        access_token: t.expose_secret().to_owned(),
        expires_at: system_time_to_millis(t.expires_at()) as f64,
        refresh_at: system_time_to_millis(t.refresh_at()) as f64,
        api_domain: t.api_domain().map(str::to_owned),
        refresh_token: None,
    }
}

/// An app: where connections keep their tokens — a Catalyst project's cache when the request
/// carried its credentials, else the stores every program on this host shares.
#[napi]
pub struct NativeApp {
    catalyst: Option<CatalystCredentials>,
}

#[napi]
impl NativeApp {
    /// From a request's headers (lower-case names); `None` or no `x-zc-projectid`: the host's
    /// stores.
    #[napi(constructor)]
    pub fn new(headers: Option<HashMap<String, String>>) -> Result<Self> {
        let headers = headers.unwrap_or_default();
        let catalyst =
            CatalystCredentials::from_headers(|name| headers.get(name).map(String::as_str))
                .transpose()
                .map_err(|problem| js_error("config", &problem))?;
        Ok(Self { catalyst })
    }

    /// Whether this app keeps tokens in a Catalyst project's cache.
    #[napi(getter)]
    pub fn is_catalyst(&self) -> bool {
        self.catalyst.is_some()
    }

    /// A connection from a config: JSON text (`is_path` false) or a file path.
    #[napi]
    pub fn connection(&self, config: String, is_path: bool) -> Result<NativeConnection> {
        let mut builder = Connection::builder();
        builder = if is_path {
            builder.file(&config)
        } else {
            let value: serde_json::Value = serde_json::from_str(&config).map_err(|e| {
                js_error(
                    "config",
                    &format!("the connection config is not JSON ({e})"),
                )
            })?;
            builder.json(value)
        };
        if let Some(creds) = &self.catalyst {
            // The project's cache is shared with the SDKs: nothing from this process's env.
            let store = creds
                .cache_store(None)
                .map_err(|e| js_error("store_open", &e.to_string()))?;
            builder = builder.ignore_env().store(store);
        }
        let inner = napi::bindgen_prelude::within_runtime_if_available(|| builder.build())
            .map_err(from_library)?;
        Ok(NativeConnection { inner })
    }
}

/// A set of named connectors sharing one store.
#[napi]
pub struct NativeConnection {
    inner: Connection,
}

#[napi]
impl NativeConnection {
    /// The connector `name`.
    #[napi]
    pub fn connector(&self, name: String) -> Result<NativeConnector> {
        let inner = self.inner.connector(&name).map_err(from_library)?;
        Ok(NativeConnector { inner })
    }

    /// The configured names.
    #[napi]
    pub fn names(&self) -> Vec<String> {
        self.inner.connector_names().map(str::to_owned).collect()
    }
}

/// One connector.
#[napi]
pub struct NativeConnector {
    inner: Connector,
}

#[napi]
impl NativeConnector {
    /// The connector's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// The token in memory if one is valid now (a stale one starts a background refresh), else
    /// `null`: no wait, no promise. `index.js` keeps what it returns until its refresh point, so
    /// a cached `getAccessToken()` does not cross into native code at all.
    #[napi]
    pub fn fresh_token(&self) -> Option<TokenInfo> {
        within_runtime_if_available(|| match self.inner.access_token().now_or_never() {
            Some(Ok(t)) => Some(token_info(&t)),
            _ => None,
        })
    }

    /// A valid token, minted once for all concurrent callers when none is cached.
    #[napi]
    pub async fn access_token(&self) -> Result<TokenInfo> {
        let connector = self.inner.clone();
        let token = connector.access_token().await.map_err(from_library)?;
        Ok(token_info(&token))
    }

    /// Exchanges a grant code; the refresh token becomes the connector's (and is returned).
    #[napi]
    pub async fn generate_access_token(&self, code: String) -> Result<TokenInfo> {
        let connector = self.inner.clone();
        let generated = connector
            .generate_access_token(&GrantCode::new(code))
            .await
            .map_err(from_library)?;
        let mut info = token_info(&generated.access_token);
        info.refresh_token = generated
            .refresh_token
            .map(|r| r.expose_secret().to_owned());
        Ok(info)
    }

    /// Reports a token an API refused (401): replaced once however many report it.
    #[napi]
    pub async fn invalidate(&self, access_token: String) -> Result<bool> {
        let connector = self.inner.clone();
        connector
            .invalidate_token_value(&access_token)
            .await
            .map_err(from_library)
    }

    /// The connector's state, as JSON.
    #[napi]
    pub async fn status(&self) -> Result<String> {
        let connector = self.inner.clone();
        Ok(status_json(&connector.status().await).to_string())
    }

    /// The connector of one of this template's users.
    #[napi]
    pub fn for_user(&self, user_id: String) -> Result<NativeConnector> {
        let inner = self.inner.for_user(&user_id).map_err(from_library)?;
        Ok(NativeConnector { inner })
    }
}

/// A status as plain JSON (times in epoch ms; never a secret).
fn status_json(s: &ConnectorStatus) -> serde_json::Value {
    let ms = |t: Option<std::time::SystemTime>| t.map(system_time_to_millis);
    serde_json::json!({
        "name": s.name,
        "state": format!("{:?}", s.state).to_lowercase(),
        "expiresAt": ms(s.expires_at),
        "refreshAt": ms(s.refresh_at),
        "nextAttemptAt": ms(s.next_attempt_at),
        "refreshing": s.refreshing,
        "mintsInWindow": s.mints_in_window,
        "mintLimit": s.mint_limit,
        "waiters": s.waiters,
        "lastError": s.last_error.as_ref().map(|(e, at)| serde_json::json!({
            "code": e.code(), "message": e.to_string(), "at": system_time_to_millis(*at),
        })),
        "recordedFailure": s.recorded_failure.as_ref().map(|f| serde_json::json!({
            "code": f.code, "message": f.message,
            "at": system_time_to_millis(f.at),
            "nextAttemptAt": ms(f.next_attempt_at),
        })),
    })
}
