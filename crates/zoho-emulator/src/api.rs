//! The protected sample API: `GET /crm/v8/users`, and `POST /crm/v8/files` (an upload: the body,
//! streamed, is counted); both answer 401 `INVALID_TOKEN` for an unknown, expired or revoked
//! token.

use crate::state::*;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Checks the request's token (and its CRM scope); counts the answer.
fn authorize(state: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Zoho-oauthtoken "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let mut inner = lock(state);
    let now = inner.now();
    let entry = inner
        .access_tokens
        .get(&token)
        .filter(|a| !a.revoked && a.expires_at > now);
    let scoped = entry.is_some_and(|a| {
        a.scope
            .split(',')
            .any(|s| s.trim().starts_with("ZohoCRM.users") || s.trim() == "ZohoCRM.ALL")
    });
    if entry.is_some() && !scoped {
        inner.stats.api_unauthorized += 1;
        return Err(Box::new((
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope to access this URL", "status": "error"})),
        )
            .into_response()));
    }
    if entry.is_none() {
        inner.stats.api_unauthorized += 1;
        return Err(Box::new((
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"})),
        )
            .into_response()));
    }
    inner.stats.api_ok += 1;
    Ok(())
}

pub(crate) async fn users(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return *refused;
    }
    axum::Json(json!({
        "users": [
            {"id": "4150868000000225013", "full_name": "Patricia Boyle", "email": "patricia.b@zylker.com", "status": "active"},
            {"id": "4150868000000225014", "full_name": "Ravi Kumar", "email": "ravi.k@zylker.com", "status": "active"}
        ],
        "info": {"per_page": 200, "count": 2, "page": 1, "more_records": false}
    }))
    .into_response()
}

/// An upload: the body is read as it streams in and its size answered.
pub(crate) async fn upload(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt as _;
    if let Err(refused) = authorize(&state, &headers) {
        return *refused;
    }
    let mut stream = body.into_data_stream();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => size += bytes.len() as u64,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    axum::Json(
        json!({"data": [{"code": "SUCCESS", "details": {"size": size}, "status": "success"}]}),
    )
    .into_response()
}
