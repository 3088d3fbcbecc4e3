//! Per-user connectors through the agent, for web apps in any language: start a user's consent,
//! exchange the code the redirect brought, disconnect a user.
//!
//! - `POST /v1/connectors/{name}/users/{user}/consent` `{"scope", "redirect_uri"?}` →
//!   `{"url", "state"}`: send the user's browser to `url`.
//! - `POST /v1/connectors/{name}/users/{user}/code` `{"code", "state"?, "accounts_server"?,
//!   "redirect_uri"?}` → `{"connector", "user", "connected": true}`: the state, when given, must
//!   be one this agent issued for this user (signed, 10 minutes, once).
//! - `DELETE /v1/connectors/{name}/users/{user}` → `{"revoked": true}`.
//!
//! States are signed with a key this agent process makes at start: a consent started before a
//! restart must be started again.

use super::server::{Agent, PeerInfo, error_response, refusal};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use catalyst_connectors::users::ConsentFlow;
use catalyst_connectors::{CodeExchange, Connector, GrantCode, urls};
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<Agent>>;

/// `{"scope": "A,B", "redirect_uri"?}`.
#[derive(serde::Deserialize)]
pub struct ConsentRequest {
    scope: String,
    redirect_uri: Option<String>,
}

/// `{"code", "state"?, "accounts_server"?, "redirect_uri"?}`. Not `Debug`: it holds a code.
#[derive(serde::Deserialize)]
pub struct CodeRequest {
    code: String,
    state: Option<String>,
    accounts_server: Option<String>,
    redirect_uri: Option<String>,
}

fn bad_request(code: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// The template connector `name`, if this peer may use it.
fn template(
    agent: &Agent,
    peer: super::security::Peer,
    headers: &HeaderMap,
    name: &str,
) -> Result<Connector, Box<Response>> {
    if let Err((status, reason)) = agent.policy.check_connector(name, headers, peer) {
        return Err(Box::new(refusal(status, reason)));
    }
    agent
        .connection()
        .connector(name)
        .map_err(|e| Box::new(error_response(e, None)))
}

/// The redirect URI: the request's, else the connector's `redirect_url`.
fn redirect_uri(template: &Connector, asked: Option<String>) -> Result<String, Box<Response>> {
    asked
        .or_else(|| template.config().redirect_url().map(str::to_owned))
        .ok_or_else(|| {
            Box::new(bad_request(
                "no_redirect_uri",
                "give \"redirect_uri\" (registered for the client), or set redirect_url in the connector's config",
            ))
        })
}

/// The error code and message for a body that is not the route's JSON.
type BadBody = (&'static str, &'static str);

const BAD_CONSENT: BadBody = (
    "bad_consent",
    "the body must be JSON: {\"scope\": \"ZohoCRM.users.READ,…\", \"redirect_uri\": \"https://…\"}",
);

const BAD_CODE: BadBody = (
    "bad_code",
    "the body must be JSON: {\"code\": \"1000.…\", \"state\": \"…\", \"accounts_server\": \"https://accounts.zoho.eu\"}",
);

/// What both POST routes start with: the template connector this peer may use, and the body.
fn template_and_body<T>(
    agent: &Agent,
    (peer, headers): (super::security::Peer, &HeaderMap),
    name: &str,
    body: Result<axum::Json<T>, JsonRejection>,
    (code, message): BadBody,
) -> Result<(Connector, T), Box<Response>> {
    let template = template(agent, peer, headers, name)?;
    match body {
        Ok(axum::Json(request)) => Ok((template, request)),
        Err(_) => Err(Box::new(bad_request(code, message))),
    }
}

fn flow(agent: &Agent, template: Connector, redirect_uri: String) -> ConsentFlow {
    ConsentFlow::new(template, redirect_uri, agent.state_key.clone())
}

pub async fn consent(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path((name, user)): Path<(String, String)>,
    body: Result<axum::Json<ConsentRequest>, JsonRejection>,
) -> Response {
    let (template, request) =
        match template_and_body(&agent, (peer, &headers), &name, body, BAD_CONSENT) {
            Ok(both) => both,
            Err(r) => return *r,
        };
    let redirect = match redirect_uri(&template, request.redirect_uri) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let scopes: Vec<&str> = request.scope.split(',').map(str::trim).collect();
    match flow(&agent, template, redirect).start(&user, &scopes) {
        Ok(start) => axum::Json(json!({"url": start.url, "state": start.state})).into_response(),
        Err(e) => error_response(e, Some(&user)),
    }
}

pub async fn code(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path((name, user)): Path<(String, String)>,
    body: Result<axum::Json<CodeRequest>, JsonRejection>,
) -> Response {
    let (template, request) =
        match template_and_body(&agent, (peer, &headers), &name, body, BAD_CODE) {
            Ok(both) => both,
            Err(r) => return *r,
        };
    let code = GrantCode::new(request.code);
    let server = request.accounts_server.as_deref();
    let connected = match request.state {
        Some(state) => {
            let redirect = match redirect_uri(&template, request.redirect_uri) {
                Ok(r) => r,
                Err(r) => return *r,
            };
            flow(&agent, template, redirect)
                .complete_for_user(&user, &state, &code, server)
                .await
        }
        None => exchange_without_state(&template, &user, &code, server, request.redirect_uri).await,
    };
    match connected {
        Ok(_) => {
            axum::Json(json!({"connector": name, "user": user, "connected": true})).into_response()
        }
        Err(e) => error_response(e, Some(&user)),
    }
}

/// A code from a Self Client, or from a consent the web app ran itself: no state to check.
async fn exchange_without_state(
    template: &Connector,
    user: &str,
    code: &GrantCode,
    server: Option<&str>,
    redirect_uri: Option<String>,
) -> catalyst_connectors::Result<Connector> {
    let connector = template.for_user(user)?;
    let mut with = CodeExchange::default();
    if let Some(uri) = redirect_uri.or_else(|| template.config().redirect_url().map(str::to_owned))
    {
        with = with.redirect_uri(uri);
    }
    if let Some(server) = server {
        let url = urls::exchange_url_for(template.config().auth_url(), server).ok_or_else(|| {
            catalyst_connectors::Error::InvalidUser {
                connector: template.name().to_owned(),
                reason: "accounts_server is not a Zoho accounts server (nor the configured one); the code was not sent there".into(),
            }
        })?;
        with = with.token_url(url);
    }
    let generated = connector.exchange_code(code, with).await?;
    if generated.refresh_token.is_none() {
        return Err(catalyst_connectors::Error::InvalidUser {
            connector: connector.name().to_owned(),
            reason: "Zoho returned no refresh token: the consent needs access_type=offline and prompt=consent".into(),
        });
    }
    Ok(connector)
}

pub async fn disconnect(
    State(agent): Shared,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    Path((name, user)): Path<(String, String)>,
) -> Response {
    let template = match template(&agent, peer, &headers, &name) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match template.disconnect_user(&user).await {
        Ok(()) => axum::Json(json!({"revoked": true})).into_response(),
        Err(e) => error_response(e, Some(&user)),
    }
}
