//! The agent's HTTP server: routes, error bodies, listeners, graceful shutdown.

use super::security::{Peer, Policy};
use crate::commands::status;
use crate::exit::{Exit, Failure};
use crate::output::epoch_secs;
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use catalyst_connectors::{AccessToken, Connection, Error, ErrorKind, ExposeSecret};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What every request handler shares.
pub struct Agent {
    /// The connectors; replaced whole when SIGHUP reloads the config (requests in flight keep
    /// the one they started with).
    pub connection: arc_swap::ArcSwap<Connection>,
    pub policy: Policy,
    pub metrics: Option<PrometheusHandle>,
    /// Signs the consent states this agent issues (made at start; kept across reloads).
    pub state_key: catalyst_connectors::users::StateKey,
}

impl Agent {
    /// The connectors as configured now.
    pub fn connection(&self) -> Arc<Connection> {
        self.connection.load_full()
    }
}

type Shared = State<Arc<Agent>>;

/// The transport's view of a client, for both listeners.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo(pub Peer);

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/connectors/{name}/token", get(token))
        .route("/v1/connectors/{name}/users/{user}/token", get(user_token))
        .route("/v1/connectors/{name}/invalidate", post(invalidate))
        .route(
            "/v1/connectors/{name}/users/{user}/invalidate",
            post(user_invalidate),
        )
        .route(
            "/v1/connectors/{name}/users/{user}/consent",
            post(super::users::consent),
        )
        .route(
            "/v1/connectors/{name}/users/{user}/code",
            post(super::users::code),
        )
        .route(
            "/v1/connectors/{name}/users/{user}",
            axum::routing::delete(super::users::disconnect),
        )
        .route("/v1/connectors/{name}/sync", post(sync))
        .route("/v1/connectors/{name}/users/{user}/sync", post(user_sync))
        .route("/v1/connectors", get(connectors))
        .route("/v1/status", get(status_report))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), guard))
        .with_state(agent)
}

/// Refuses what fails the policy before any handler runs.
async fn guard(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err((status, reason)) =
        agent
            .policy
            .check_request(request.uri(), request.headers(), peer)
    {
        return refusal(status, reason);
    }
    next.run(request).await
}

pub(super) fn refusal(status: StatusCode, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": "refused", "message": reason})),
    )
        .into_response()
}

/// The agent's HTTP status for a kind of failure: its one table over the library's one
/// classification.
fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::UnknownConnector => StatusCode::NOT_FOUND,
        ErrorKind::ReauthorizationRequired | ErrorKind::MissingRefreshToken => StatusCode::CONFLICT,
        ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Transient | ErrorKind::Store | ErrorKind::DeadlineExceeded => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::LifetimeTooShort | ErrorKind::InvalidUser | ErrorKind::InvalidState => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A hint in the HTTP API's terms where the CLI's would name a flag; for a connector that needs
/// a person, the routes and commands that exist for it (`user`: the per-user connector's user).
fn http_hint(
    kind: ErrorKind,
    connector: Option<&str>,
    user: Option<&str>,
    cli_hint: Option<String>,
) -> Option<String> {
    let template = connector.map(|c| c.split_once('.').map_or(c, |(t, _)| t));
    match (kind, template, user) {
        (ErrorKind::LifetimeTooShort, ..) => {
            Some("ask for less with ?min_ttl=SECONDS (tokens of this endpoint live shorter)".into())
        }
        (ErrorKind::ReauthorizationRequired | ErrorKind::MissingRefreshToken, Some(t), Some(u)) => {
            Some(format!(
                "connect the user: POST /v1/connectors/{t}/users/{u}/consent, send the browser to its url, then POST the redirect's code to /v1/connectors/{t}/users/{u}/code (or run `connector authorize {t} --user {u} --scope …` on the agent's host)"
            ))
        }
        (ErrorKind::ReauthorizationRequired | ErrorKind::MissingRefreshToken, Some(t), None) => {
            Some(format!(
                "on the agent's host, run `connector authorize {t} --scope …` (server-based client) or `connector exchange {t} --code …` (Self Client); the agent serves the new refresh token at once"
            ))
        }
        _ => cli_hint,
    }
}

/// The body and status for a library error (`user`: the per-user route's user).
pub(super) fn error_response(e: Error, user: Option<&str>) -> Response {
    let status = http_status(e.kind());
    let retry_after = match &e {
        Error::Throttled {
            retry_after: Some(d),
            ..
        } => Some(d.as_secs().max(1)),
        _ => None,
    };
    let code = e.code();
    let kind = e.kind();
    let connector = e.connector().map(str::to_owned);
    let failure = Failure::from(e);
    let mut response = (
        status,
        axum::Json(json!({
            "error": code,
            "connector": connector,
            "message": failure.message,
            "hint": http_hint(kind, connector.as_deref(), user, failure.hint),
            "exit_code": failure.exit.code(),
        })),
    )
        .into_response();
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

fn token_body(t: &AccessToken) -> Response {
    let mut response = axum::Json(json!({
        "access_token": t.expose_secret(),
        "token_type": "Zoho-oauthtoken",
        "expires_at": epoch_secs(t.expires_at()),
        "refresh_at": epoch_secs(t.refresh_at()),
        "api_domain": t.api_domain(),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn min_ttl(query: &HashMap<String, String>) -> Result<Duration, Box<Response>> {
    match query.get("min_ttl") {
        None => Ok(Duration::ZERO),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                Box::new(
                    (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({
                            "error": "bad_min_ttl",
                            "message": "min_ttl must be a whole number of seconds",
                            "hint": "ask with ?min_ttl=SECONDS, e.g. ?min_ttl=300",
                        })),
                    )
                        .into_response(),
                )
            }),
    }
}

/// The body of an invalidate report: the token an API refused.
#[derive(serde::Deserialize)]
struct Report {
    access_token: String,
}

/// `POST /v1/connectors/{name}/invalidate` `{"access_token"}`: a client's API call got a 401
/// with this token. Replaced once however many clients report it; a token already replaced is
/// not replaced again. Answers `{"replaced": bool}`.
async fn invalidate(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<axum::Json<Report>, axum::extract::rejection::JsonRejection>,
) -> Response {
    report(&agent, peer, &headers, &name, None, body).await
}

/// `POST /v1/connectors/{name}/users/{user}/invalidate`: the same for a user's connector.
async fn user_invalidate(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path((name, user)): Path<(String, String)>,
    body: Result<axum::Json<Report>, axum::extract::rejection::JsonRejection>,
) -> Response {
    report(&agent, peer, &headers, &name, Some(&user), body).await
}

async fn report(
    agent: &Agent,
    peer: super::security::Peer,
    headers: &HeaderMap,
    name: &str,
    user: Option<&str>,
    body: Result<axum::Json<Report>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err((status, reason)) = agent.policy.check_connector(name, headers, peer) {
        return refusal(status, reason);
    }
    let Ok(axum::Json(report)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "bad_report",
                "message": "the body must be JSON: {\"access_token\": \"<the token that got a 401>\"}",
            })),
        )
            .into_response();
    };
    let connector = match agent.connection().connector(name).and_then(|c| match user {
        Some(u) => c.for_user(u),
        None => Ok(c),
    }) {
        Ok(c) => c,
        Err(e) => return error_response(e, user),
    };
    match connector.invalidate_token_value(&report.access_token).await {
        Ok(replaced) => axum::Json(json!({"replaced": replaced})).into_response(),
        Err(e) => error_response(e, user),
    }
}

async fn token(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err((status, reason)) = agent.policy.check_connector(&name, &headers, peer) {
        return refusal(status, reason);
    }
    let min = match min_ttl(&query) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let connector = match agent.connection().connector(&name) {
        Ok(c) => c,
        Err(e) => return error_response(e, None),
    };
    match connector.access_token_valid_for(min).await {
        Ok(t) => token_body(&t),
        Err(e) => error_response(e, None),
    }
}

async fn user_token(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path((name, user)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err((status, reason)) = agent.policy.check_connector(&name, &headers, peer) {
        return refusal(status, reason);
    }
    let min = match min_ttl(&query) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let connector = match agent
        .connection()
        .connector(&name)
        .and_then(|c| c.for_user(&user))
    {
        Ok(c) => c,
        Err(e) => return error_response(e, Some(&user)),
    };
    match connector.access_token_valid_for(min).await {
        Ok(t) => token_body(&t),
        Err(e) => error_response(e, Some(&user)),
    }
}

/// `POST /v1/connectors/{name}/sync`: another process changed the connector (`connector
/// exchange`, `revoke`, …): serve the store's state now. Answers `{"changed": bool}`.
async fn sync(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    follow(&agent, peer, &headers, &name, None).await
}

/// `POST /v1/connectors/{name}/users/{user}/sync`: the same for a user's connector.
async fn user_sync(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path((name, user)): Path<(String, String)>,
) -> Response {
    follow(&agent, peer, &headers, &name, Some(&user)).await
}

async fn follow(
    agent: &Agent,
    peer: super::security::Peer,
    headers: &HeaderMap,
    name: &str,
    user: Option<&str>,
) -> Response {
    if let Err((status, reason)) = agent.policy.check_connector(name, headers, peer) {
        return refusal(status, reason);
    }
    let connector = agent.connection().connector(name).and_then(|c| match user {
        Some(u) => c.for_user(u),
        None => Ok(c),
    });
    match connector {
        Ok(c) => axum::Json(json!({"changed": c.follow_store().await})).into_response(),
        Err(e) => error_response(e, user),
    }
}

async fn connectors(State(agent): Shared) -> Response {
    let connection = agent.connection();
    let mut out = Vec::new();
    for name in connection.connector_names() {
        let state = match connection.connector(name) {
            Ok(c) => format!("{:?}", c.status().await.state).to_lowercase(),
            Err(_) => "invalid".into(),
        };
        out.push(json!({"name": name, "state": state}));
    }
    for (name, _) in connection.skipped() {
        out.push(json!({"name": name, "state": "invalid"}));
    }
    axum::Json(out).into_response()
}

async fn status_report(State(agent): Shared) -> Response {
    let (report, worst) = status::report(&agent.connection()).await;
    let code = if worst == Exit::Success {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(report)).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(agent): Shared) -> Response {
    match &agent.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => refusal(StatusCode::NOT_FOUND, "metrics are off"),
    }
}
