//! The authorizing proxy (`connector serve --proxy 127.0.0.1:PORT`): a client that cannot carry
//! token logic — a tool with a fixed base URL, a PHP app, curl — sends `/<connector>/<path>` to
//! the proxy, which forwards it to the connector's `api_domain` with
//! `Authorization: Zoho-oauthtoken …`, streaming both bodies.
//!
//! The middleware's rules, for every language: on a 401 that says the token is bad
//! ([`Rejection::BadToken`]), the token is replaced once however many requests saw it (only if it
//! is still the current one), and a request whose body can be replayed (none, or a
//! `Content-Length` of at most [`REPLAYABLE`]) is sent again once with the new token; a streamed
//! body is not replayed (its 401 is passed on). The upstream is always the connector's API
//! domain — never a host the client names (no open proxy) — over TLS verified as usual. The agent's
//! TCP rules apply to every request (its header, its bearer token, loopback `Host`, no
//! browser or proxy markers, allow lists); the client's `Authorization` never goes upstream.
//! Tokens are never logged.

use super::server::{Agent, PeerInfo, error_response, refusal};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use catalyst_connectors::rejection::Rejection;
use catalyst_connectors::{AccessToken, Connector};
use std::sync::Arc;

/// Bodies up to this size (with a `Content-Length`) are buffered, so they can be sent again.
pub const REPLAYABLE: u64 = 1024 * 1024;
/// The largest 401 body read to classify it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Headers that belong to one connection, or that the proxy sets itself.
const NOT_FORWARDED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    super::AGENT_HEADER,
];

#[derive(Clone)]
struct Proxy {
    agent: Arc<Agent>,
    /// To the API domains: TLS verified, no redirects followed (a 3xx goes back to the client).
    http: reqwest::Client,
}

/// The proxy's routes: `/{connector}/{*path}`, any method.
pub fn router(agent: Arc<Agent>) -> Result<Router, reqwest::Error> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    Ok(Router::new()
        .route("/{connector}/{*path}", axum::routing::any(forward))
        .with_state(Proxy { agent, http }))
}

/// What a request's body is: replayable bytes, or a stream sent once.
enum Payload {
    Bytes(axum::body::Bytes),
    Stream(Body),
}

async fn forward(
    State(proxy): State<Proxy>,
    ConnectInfo(PeerInfo(peer)): ConnectInfo<PeerInfo>,
    Path((name, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let policy = &proxy.agent.policy;
    if let Err((status, reason)) = policy
        .check_request(&parts.uri, &parts.headers, peer)
        .and_then(|()| policy.check_connector(&name, &parts.headers, peer))
    {
        return refusal(status, reason);
    }
    let connection = proxy.agent.connection();
    let connector = match connection.connector(&name) {
        Ok(c) => c.clone(),
        Err(e) => return error_response(e, None),
    };
    let mut payload = match payload(&parts.headers, body).await {
        Ok(p) => p,
        Err(response) => return *response,
    };
    let target = Target {
        method: parts.method,
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: forwarded(&parts.headers),
    };
    let replayable = matches!(payload, Payload::Bytes(_));
    let mut retried = false;
    loop {
        let token = match connector.access_token().await {
            Ok(t) => t,
            Err(e) => return error_response(e, None),
        };
        let body = match &payload {
            Payload::Bytes(b) => reqwest::Body::from(b.clone()),
            Payload::Stream(_) => {
                let Payload::Stream(stream) =
                    std::mem::replace(&mut payload, Payload::Bytes(axum::body::Bytes::new()))
                else {
                    unreachable!()
                };
                reqwest::Body::wrap_stream(stream.into_data_stream())
            }
        };
        let upstream = match proxy.send(&token, &target, body).await {
            Ok(r) => r,
            Err(response) => return *response,
        };
        if upstream.status() != StatusCode::UNAUTHORIZED {
            return relay(upstream);
        }
        // A 401: read its (small) body to say whether the token is bad.
        let (status, headers) = (upstream.status(), upstream.headers().clone());
        let body = read_limited(upstream).await;
        if Rejection::of_401_body(&body) == Rejection::BadToken {
            invalidate(&connector, &token).await;
            if replayable && !retried {
                retried = true;
                continue;
            }
        }
        let mut response = (status, body).into_response();
        copy_headers(&headers, response.headers_mut());
        return response;
    }
}

/// The request's body: buffered (replayable) when its `Content-Length` is at most
/// [`REPLAYABLE`], else streamed.
async fn payload(headers: &HeaderMap, body: Body) -> Result<Payload, Box<Response>> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    Ok(match (length, chunked) {
        (Some(n), false) if n <= REPLAYABLE => {
            match axum::body::to_bytes(body, usize::try_from(n).unwrap_or(0)).await {
                Ok(b) => Payload::Bytes(b),
                Err(_) => {
                    return Err(Box::new(refusal(
                        StatusCode::BAD_REQUEST,
                        "the request body was cut short",
                    )));
                }
            }
        }
        (None, false) => Payload::Bytes(axum::body::Bytes::new()),
        _ => Payload::Stream(body),
    })
}

/// Where a request goes, apart from its body.
struct Target {
    method: axum::http::Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl Proxy {
    /// Sends the request to the token's API domain; an error is the client's answer.
    async fn send(
        &self,
        token: &AccessToken,
        target: &Target,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, Box<Response>> {
        let Some(domain) = token.api_domain() else {
            return Err(Box::new(refusal(
                StatusCode::BAD_GATEWAY,
                "the connector's token names no api_domain: set `dc` or `api_domain` in its config",
            )));
        };
        // The path is set on the API domain's URL: whatever it holds, the host stays that one.
        let mut url = url::Url::parse(domain).map_err(|_| {
            Box::new(refusal(
                StatusCode::BAD_GATEWAY,
                "the connector's api_domain is not a URL",
            ))
        })?;
        url.set_path(&format!("/{}", target.path));
        url.set_query(target.query.as_deref());
        let mut request = self
            .http
            .request(target.method.clone(), url)
            .headers(target.headers.clone())
            .body(body);
        let mut auth = header::HeaderValue::from_str(token.authorization_header())
            .map_err(|_| Box::new(refusal(StatusCode::BAD_GATEWAY, "unusable token")))?;
        auth.set_sensitive(true);
        request = request.header(header::AUTHORIZATION, auth);
        request.send().await.map_err(|e| {
            tracing::warn!(error = %e.without_url(), "proxy: the API could not be reached");
            Box::new(refusal(
                StatusCode::BAD_GATEWAY,
                "the connector's API could not be reached",
            ))
        })
    }
}

/// Replaces `token` if it is still the connector's (however many requests saw it: once).
async fn invalidate(connector: &Connector, token: &AccessToken) {
    if let Err(e) = connector.invalidate_token(token).await {
        tracing::warn!(connector = %connector.name(), error = %e, "proxy: could not drop the rejected token from the store");
    }
}

/// The upstream's answer, its body streamed to the client.
fn relay(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    copy_headers(&headers, response.headers_mut());
    response
}

async fn read_limited(mut upstream: reqwest::Response) -> axum::body::Bytes {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = upstream.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY - body.len())]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    axum::body::Bytes::from(body)
}

/// The request's headers that go upstream.
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    copy_headers(headers, &mut out);
    out
}

/// Copies `from`'s end-to-end headers into `to`, except those `to` already has (e.g. the
/// `Content-Length` of a body the proxy rebuilt).
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let present: Vec<HeaderName> = to.keys().cloned().collect();
    for (name, value) in from {
        if !hop_by_hop(name) && !present.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn hop_by_hop(name: &HeaderName) -> bool {
    NOT_FORWARDED.contains(&name.as_str())
}
