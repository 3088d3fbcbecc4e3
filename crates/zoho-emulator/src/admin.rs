//! `/__emulator/*`: counters, settings, and registering clients, refresh tokens and grant codes
//! over HTTP; moving the emulator's clock.

use crate::state::*;
use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

pub(crate) async fn stats(AxumState(state): AxumState<Shared>) -> Response {
    let inner = lock(&state);
    let mut s = inner.stats.clone();
    s.live_tokens = inner.live_tokens();
    axum::Json(s).into_response()
}

pub(crate) async fn get_settings(AxumState(state): AxumState<Shared>) -> Response {
    axum::Json(lock(&state).settings.clone()).into_response()
}

pub(crate) async fn post_settings(
    AxumState(state): AxumState<Shared>,
    axum::Json(s): axum::Json<Settings>,
) -> Response {
    lock(&state).settings = s.clone();
    axum::Json(s).into_response()
}

#[derive(Deserialize)]
pub(crate) struct NewClient {
    client_id: String,
    client_secret: String,
}

pub(crate) async fn admin_client(
    AxumState(state): AxumState<Shared>,
    axum::Json(c): axum::Json<NewClient>,
) -> Response {
    lock(&state)
        .clients
        .insert(c.client_id.clone(), c.client_secret);
    axum::Json(json!({"client_id": c.client_id})).into_response()
}

#[derive(Deserialize)]
pub(crate) struct NewRefreshToken {
    client_id: String,
    refresh_token: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    label: String,
}

pub(crate) async fn admin_refresh_token(
    AxumState(state): AxumState<Shared>,
    axum::Json(r): axum::Json<NewRefreshToken>,
) -> Response {
    let token = r.refresh_token.unwrap_or_else(|| random_token("1000."));
    lock(&state).add_refresh_token(&r.client_id, &token, &r.scope, &r.label);
    axum::Json(json!({"refresh_token": token})).into_response()
}

#[derive(Deserialize)]
pub(crate) struct NewGrantCode {
    client_id: String,
    #[serde(default)]
    scope: String,
    redirect_uri: Option<String>,
}

pub(crate) async fn admin_grant_code(
    AxumState(state): AxumState<Shared>,
    axum::Json(g): axum::Json<NewGrantCode>,
) -> Response {
    let code = lock(&state).add_grant_code(&g.client_id, &g.scope, g.redirect_uri.as_deref());
    axum::Json(json!({"code": code})).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Advance {
    seconds: u64,
}

pub(crate) async fn admin_advance(
    AxumState(state): AxumState<Shared>,
    axum::Json(a): axum::Json<Advance>,
) -> Response {
    let mut inner = lock(&state);
    inner.offset_ms = inner.offset_ms.saturating_add(
        i64::try_from(a.seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    );
    axum::Json(json!({"advanced_seconds": a.seconds})).into_response()
}
