//! Zoho Accounts: `POST /oauth/v2/token` (refresh and code grants) and
//! `POST /oauth/v2/token/revoke`, answering errors as Zoho does (HTTP 200 with `{"error": …}`).

use crate::limits::{apply_fault, mint};
use crate::state::*;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// Reads OAuth parameters from the query string and the form body (Zoho accepts both).
pub(crate) fn params(query: Option<String>, body: &[u8]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    if let Some(q) = query {
        out.extend(serde_urlencoded::from_str::<Vec<(String, String)>>(&q).unwrap_or_default());
    }
    out.extend(serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default());
    out
}

pub(crate) fn oauth_error(error: &str, description: Option<&str>) -> Response {
    let mut body = json!({ "error": error });
    if let Some(d) = description {
        body["error_description"] = json!(d);
    }
    // Zoho answers token errors with HTTP 200.
    (StatusCode::OK, axum::Json(body)).into_response()
}

pub(crate) enum Decision {
    Respond(Response),
    Hang(Duration),
    /// Headers, then the connection drops before the body.
    Reset,
}

pub(crate) async fn token(
    AxumState(state): AxumState<Shared>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(query, &body);
    // Counted on arrival, so a test can see a request that is still being answered.
    let latency = {
        let mut inner = lock(&state);
        inner.stats.token_requests += 1;
        Duration::from_millis(inner.settings.latency_ms)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match decide_token(&state, &p) {
        Decision::Respond(r) => r,
        Decision::Hang(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::GATEWAY_TIMEOUT, "hung").into_response()
        }
        Decision::Reset => {
            // A body that fails at once: hyper has sent the headers and now aborts the
            // connection, as a reset would.
            let reset = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "emulated connection reset",
                ))
            });
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(reset),
            )
                .into_response()
        }
    }
}

pub(crate) fn decide_token(state: &Shared, p: &HashMap<String, String>) -> Decision {
    let mut inner = lock(state);
    let grant = p.get("grant_type").cloned().unwrap_or_default();
    let legacy = match apply_fault(&mut inner, &grant) {
        Ok(legacy) => legacy,
        Err(decision) => return *decision,
    };
    let result = match grant.as_str() {
        "refresh_token" => refresh_grant(&mut inner, p),
        "authorization_code" => code_grant(&mut inner, p),
        _ => Err(("unsupported_grant_type", None)),
    };
    Decision::Respond(match result {
        Ok((access_token, refresh_token, scope)) => {
            inner.count(&grant, "ok");
            let lifetime = inner.settings.token_lifetime_secs;
            let mut body = json!({
                "access_token": access_token,
                "scope": scope,
                "api_domain": inner.settings.api_domain.clone().unwrap_or_else(|| inner.base_url.clone()),
                "token_type": "Bearer",
                "expires_in": lifetime,
            });
            if legacy {
                body["expires_in_sec"] = json!(lifetime);
                body["expires_in"] = json!(lifetime * 1000);
            }
            if let Some(rt) = refresh_token {
                body["refresh_token"] = json!(rt);
            }
            axum::Json(body).into_response()
        }
        Err((code, description)) => {
            if code == "Access Denied" {
                inner.stats.throttled += 1;
            }
            inner.count(&grant, code);
            oauth_error(code, description)
        }
    })
}

pub(crate) type GrantResult =
    Result<(String, Option<String>, String), (&'static str, Option<&'static str>)>;

pub(crate) fn check_client(
    inner: &Inner,
    p: &HashMap<String, String>,
) -> Result<String, (&'static str, Option<&'static str>)> {
    let client_id = p.get("client_id").cloned().unwrap_or_default();
    match inner.clients.get(&client_id) {
        None => Err(("invalid_client", None)),
        Some(secret) if Some(secret) != p.get("client_secret") => {
            Err(("invalid_client_secret", None))
        }
        Some(_) => Ok(client_id),
    }
}

pub(crate) fn refresh_grant(inner: &mut Inner, p: &HashMap<String, String>) -> GrantResult {
    let client_id = check_client(inner, p)?;
    let rt = p.get("refresh_token").cloned().unwrap_or_default();
    let scope = match inner.refresh_tokens.get(&rt) {
        Some(e) if !e.revoked && e.client_id == client_id => e.scope.clone(),
        _ => return Err(("invalid_code", None)),
    };
    let access = mint(inner, &rt)?;
    Ok((access, None, scope))
}

pub(crate) fn code_grant(inner: &mut Inner, p: &HashMap<String, String>) -> GrantResult {
    let client_id = check_client(inner, p)?;
    let code = p.get("code").cloned().unwrap_or_default();
    let now = inner.now();
    let Some(entry) = inner.grant_codes.remove(&code) else {
        return Err(("invalid_code", None));
    };
    if entry.client_id != client_id || entry.expires_at <= now {
        return Err(("invalid_code", None));
    }
    if let Some(expected) = &entry.redirect_uri
        && p.get("redirect_uri") != Some(expected)
    {
        return Err(("invalid_redirect_uri", None));
    }
    let rt = random_token("1000.");
    inner.add_refresh_token(&client_id, &rt, &entry.scope, "");
    let access = mint(inner, &rt)?;
    Ok((access, Some(rt), entry.scope))
}

pub(crate) fn revoke_token(inner: &mut Inner, token: &str) -> bool {
    if let Some(entry) = inner.refresh_tokens.get_mut(token) {
        entry.revoked = true;
        for a in inner
            .access_tokens
            .values_mut()
            .filter(|a| a.refresh_token == token)
        {
            a.revoked = true;
        }
        inner.stats.revocations += 1;
        return true;
    }
    if let Some(a) = inner.access_tokens.get_mut(token) {
        a.revoked = true;
        inner.stats.revocations += 1;
        return true;
    }
    false
}

pub(crate) async fn revoke(
    AxumState(state): AxumState<Shared>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let p = params(query, &body);
    let token = p.get("token").cloned().unwrap_or_default();
    if revoke_token(&mut lock(&state), &token) {
        axum::Json(json!({"status": "success"})).into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "failure", "error": "invalid_token"})),
        )
            .into_response()
    }
}
