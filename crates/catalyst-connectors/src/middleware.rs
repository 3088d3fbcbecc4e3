//! A [`reqwest_middleware`] layer that authorizes every request with a connector's token
//! (feature `middleware`).
//!
//! - adds `Authorization: Zoho-oauthtoken <token>` (marked sensitive);
//! - sends requests addressed to [`API_BASE`] (`https://zohoapis.invalid/…`) to the token's
//!   `api_domain` instead, so one client works in every data centre;
//! - on HTTP 401 whose body says `INVALID_TOKEN`, `INVALID_OAUTHTOKEN` or `AUTHENTICATION_FAILURE`
//!   (or carries no recognisable code), forgets that token — only if it is still the current one,
//!   so 50 concurrent 401s cause one mint — and retries the request once with a fresh token, when
//!   the request body can be cloned (a streaming body cannot: the 401 is returned as it came);
//! - never retries `OAUTH_SCOPE_MISMATCH`: the request fails with [`ScopeMismatch`], which says
//!   what to do.
//!
//! ```no_run
//! # async fn run(crm: catalyst_connectors::Connector) -> Result<(), Box<dyn std::error::Error>> {
//! use catalyst_connectors::middleware::{ZohoAuth, api_url};
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(ZohoAuth::new(crm))
//!     .build();
//! let users = client.get(api_url("/crm/v8/users")).send().await?.text().await?;
//! # let _ = users; Ok(()) }
//! ```

use crate::rejection::Rejection;
use crate::{AccessToken, Connector, ExposeSecret};
use http::Extensions;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Request, Response, ResponseBuilderExt as _, StatusCode};
use reqwest_middleware::{Middleware, Next};

/// The placeholder origin for "relative" URLs: requests to it go to the token's `api_domain`.
pub const API_BASE: &str = "https://zohoapis.invalid";

/// `API_BASE` + `path`, e.g. `api_url("/crm/v8/users")`.
pub fn api_url(path: &str) -> String {
    format!("{API_BASE}/{}", path.trim_start_matches('/'))
}

const MAX_ERROR_BODY: usize = 64 * 1024;

/// The middleware. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ZohoAuth {
    connector: Connector,
}

impl ZohoAuth {
    /// Authorizes requests with `connector`'s tokens.
    pub fn new(connector: Connector) -> Self {
        Self { connector }
    }
}

/// The API refused the token's scopes. Retrying with a new token cannot help.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "connector `{connector}`: the API refused the token's scopes ({code}{}); not retried: authorize the connector again with the scopes this call needs",
    message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
)]
pub struct ScopeMismatch {
    /// The connector.
    pub connector: String,
    /// The API's code, `OAUTH_SCOPE_MISMATCH`.
    pub code: String,
    /// The API's message.
    pub message: Option<String>,
}

fn authorize(req: &mut Request, token: &AccessToken) -> reqwest_middleware::Result<()> {
    if req.url().origin().ascii_serialization() == API_BASE {
        let domain = token.api_domain().ok_or_else(|| {
            reqwest_middleware::Error::middleware(NoApiDomain(req.url().path().to_owned()))
        })?;
        let mut resolved = url::Url::parse(domain)
            .and_then(|base| base.join(req.url().path()))
            .map_err(reqwest_middleware::Error::middleware)?;
        resolved.set_query(req.url().query());
        *req.url_mut() = resolved;
    }
    let mut value = HeaderValue::from_str(token.authorization_header())
        .map_err(reqwest_middleware::Error::middleware)?;
    value.set_sensitive(true);
    req.headers_mut().insert(AUTHORIZATION, value);
    Ok(())
}

/// A relative URL was used but the token names no API domain.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot resolve {0}: the token names no api_domain (set `dc` or `api_domain` in the connector's config)"
)]
struct NoApiDomain(String);

#[async_trait::async_trait]
impl Middleware for ZohoAuth {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let token = self
            .connector
            .access_token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        // Kept before the first attempt: the retry needs the original (relative) URL too.
        let retry = req.try_clone();
        authorize(&mut req, &token)?;
        let response = next.clone().run(req, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // Read the (small) error body to classify it; rebuild the response if it goes back.
        let status = response.status();
        let headers = response.headers().clone();
        let url = response.url().clone();
        let version = response.version();
        let mut body = response
            .bytes()
            .await
            .map_err(reqwest_middleware::Error::Reqwest)?
            .to_vec();
        body.truncate(MAX_ERROR_BODY);
        let rebuild = |body: Vec<u8>| -> reqwest_middleware::Result<Response> {
            let mut builder = http::Response::builder()
                .status(status)
                .version(version)
                .url(url.clone());
            if let Some(h) = builder.headers_mut() {
                *h = headers.clone();
            }
            builder
                .body(body)
                .map(Response::from)
                .map_err(reqwest_middleware::Error::middleware)
        };
        match Rejection::of_401_body(&body) {
            Rejection::Scope { code, message } => {
                Err(reqwest_middleware::Error::middleware(ScopeMismatch {
                    connector: self.connector.name().to_owned(),
                    code,
                    message,
                }))
            }
            Rejection::Other => rebuild(body),
            Rejection::BadToken => {
                let replaced = self
                    .connector
                    .invalidate_token(&token)
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?;
                tracing::debug!(connector = %self.connector.name(), replaced, "API answered 401 for the token");
                let Some(mut again) = retry else {
                    // A streaming body cannot be sent twice: hand back the 401.
                    return rebuild(body);
                };
                let fresh = self
                    .connector
                    .access_token()
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?;
                if fresh.expose_secret() == token.expose_secret() {
                    return rebuild(body);
                }
                authorize(&mut again, &fresh)?;
                next.run(again, extensions).await
            }
        }
    }
}
