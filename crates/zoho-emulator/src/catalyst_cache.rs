//! Catalyst Cache: `GET/POST/PUT/DELETE /baas/v1/project/{project}[/segment/{segment}]/cache`
//! with Catalyst's limits and answers.

use crate::Emulator;
use crate::accounts::params;
use crate::state::*;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;

/// Catalyst Cache limits.
pub(crate) const CACHE_KEY_MAX: usize = 50;
pub(crate) const CACHE_VALUE_MAX: usize = 16_000;
pub(crate) const CACHE_HOURS_MAX: u64 = 48;

pub(crate) fn cache_failure(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "failure", "data": {"error_code": code, "message": message}})),
    )
        .into_response()
}

/// 404 for a project or segment that does not exist (when projects are registered).
pub(crate) fn cache_exists(
    inner: &Inner,
    path: &HashMap<String, String>,
) -> Result<(), Box<Response>> {
    let Some(projects) = &inner.projects else {
        return Ok(());
    };
    let project = path.get("project").map(String::as_str).unwrap_or_default();
    let known = match (projects.get(project), path.get("segment")) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(segments), Some(s)) => segments.contains(s),
    };
    if known {
        Ok(())
    } else {
        Err(Box::new(cache_failure(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such project or segment",
        )))
    }
}

/// Checks the headers Catalyst requires: `PROJECT_ID`, the environment (`Environment` or
/// `X-Catalyst-Environment`), and `Authorization: Zoho-oauthtoken …` with a live access token.
pub(crate) fn cache_auth(inner: &Inner, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if !headers.contains_key("project_id") {
        return Err(Box::new(cache_failure(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "the PROJECT_ID header is missing",
        )));
    }
    if environment(headers).is_none() {
        return Err(Box::new(cache_failure(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "the Environment header is missing",
        )));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Zoho-oauthtoken "))
        .unwrap_or_default();
    let now = inner.now();
    if inner
        .access_tokens
        .get(token)
        .is_some_and(|a| !a.revoked && a.expires_at > now)
    {
        Ok(())
    } else {
        Err(Box::new(cache_failure(
            StatusCode::UNAUTHORIZED,
            "INVALID_OAUTHTOKEN",
            "invalid oauth token",
        )))
    }
}

pub(crate) type CachePath = axum::extract::Path<HashMap<String, String>>;

/// The request's environment: `Environment`, else `X-Catalyst-Environment`.
fn environment(headers: &HeaderMap) -> Option<String> {
    ["environment", "x-catalyst-environment"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Where a request's values live: environments, projects and segments are kept apart (the
/// project part is `<environment>/<project id>`).
pub(crate) fn cache_slot(path: &HashMap<String, String>, headers: &HeaderMap) -> (String, String) {
    (
        format!(
            "{}/{}",
            environment(headers).unwrap_or_else(|| "Development".into()),
            path.get("project").cloned().unwrap_or_default()
        ),
        path.get("segment")
            .cloned()
            .unwrap_or_else(|| "default".into()),
    )
}

pub(crate) fn cache_data(
    inner: &Inner,
    key: &str,
    value: serde_json::Value,
    expires_at: i64,
    hours: u64,
) -> serde_json::Value {
    let ttl = (expires_at - inner.now()).max(0);
    json!({
        "cache_name": key,
        "cache_value": value,
        "expires_in": format!("{} ms from now", ttl),
        "expiry_in_hours": hours.to_string(),
        "ttl_in_milliseconds": ttl.to_string(),
        "project_details": {"project_name": "emulated", "id": "1"},
        "segment_details": {"segment_name": "Default", "id": "1"},
    })
}

pub(crate) async fn cache_get(
    AxumState(state): AxumState<Shared>,
    axum::extract::Path(path): CachePath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&state);
    *inner.stats.cache_requests.entry("GET".into()).or_default() += 1;
    if let Err(r) = cache_exists(&inner, &path).and_then(|()| cache_auth(&inner, &headers)) {
        return *r;
    }
    let key = params(query, &[]).remove("cacheKey").unwrap_or_default();
    let (project, segment) = cache_slot(&path, &headers);
    let now = inner.now();
    let found = inner
        .cache
        .get(&(project, segment, key.clone()))
        .filter(|e| e.expires_at > now)
        .map(|e| (e.value.clone(), e.expires_at, e.hours));
    // A miss is HTTP 200 with cache_value null, as Catalyst answers.
    let data = match found {
        Some((value, expires_at, hours)) => cache_data(&inner, &key, value, expires_at, hours),
        None => json!({"cache_name": key, "cache_value": null}),
    };
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

pub(crate) async fn cache_put(
    AxumState(state): AxumState<Shared>,
    method: axum::http::Method,
    axum::extract::Path(path): CachePath,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = lock(&state);
    *inner
        .stats
        .cache_requests
        .entry(method.to_string())
        .or_default() += 1;
    if let Err(r) = cache_exists(&inner, &path).and_then(|()| cache_auth(&inner, &headers)) {
        return *r;
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return cache_failure(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "the body is not JSON",
        );
    };
    let key = body["cache_name"].as_str().unwrap_or_default().to_owned();
    let value = body["cache_value"].clone();
    let hours = match &body["expiry_in_hours"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Null => Some(CACHE_HOURS_MAX),
        _ => None,
    };
    if key.is_empty() || key.chars().count() > CACHE_KEY_MAX {
        return cache_failure(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "cache_name must be 1 to 50 characters",
        );
    }
    let length = match &value {
        serde_json::Value::String(s) => s.chars().count(),
        other => other.to_string().chars().count(),
    };
    if length > CACHE_VALUE_MAX {
        return cache_failure(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "cache_value exceeds 16000 characters",
        );
    }
    let Some(hours) = hours.filter(|h| (1..=CACHE_HOURS_MAX).contains(h)) else {
        return cache_failure(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "expiry_in_hours must be 1 to 48",
        );
    };
    let (project, segment) = cache_slot(&path, &headers);
    let expires_at = inner.now() + i64::try_from(hours).unwrap_or(48) * 3_600_000;
    inner.cache.insert(
        (project, segment, key.clone()),
        CacheEntry {
            value: value.clone(),
            expires_at,
            hours,
        },
    );
    let data = cache_data(&inner, &key, value, expires_at, hours);
    (
        StatusCode::CREATED,
        axum::Json(json!({"status": "success", "data": data})),
    )
        .into_response()
}

pub(crate) async fn cache_delete(
    AxumState(state): AxumState<Shared>,
    axum::extract::Path(path): CachePath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&state);
    *inner
        .stats
        .cache_requests
        .entry("DELETE".into())
        .or_default() += 1;
    if let Err(r) = cache_exists(&inner, &path).and_then(|()| cache_auth(&inner, &headers)) {
        return *r;
    }
    let key = params(query, &[]).remove("cacheKey").unwrap_or_default();
    let (project, segment) = cache_slot(&path, &headers);
    // As Catalyst does, the key stays with a null value.
    if let Some(e) = inner.cache.get_mut(&(project, segment, key.clone())) {
        e.value = serde_json::Value::Null;
    }
    axum::Json(json!({"status": "success", "data": {"cache_name": key, "cache_value": null}}))
        .into_response()
}

impl Emulator {
    /// The raw Catalyst Cache value stored under `key` in the Development environment (default
    /// segment when `segment` is `None`), as an SDK would read it.
    pub fn cache_value(
        &self,
        project: &str,
        segment: Option<&str>,
        key: &str,
    ) -> Option<serde_json::Value> {
        self.cache_value_in("Development", project, segment, key)
    }

    /// [`cache_value`](Self::cache_value) in `environment` (`Development` or `Production`).
    pub fn cache_value_in(
        &self,
        environment: &str,
        project: &str,
        segment: Option<&str>,
        key: &str,
    ) -> Option<serde_json::Value> {
        let inner = lock(&self.state);
        inner
            .cache
            .get(&(
                format!("{environment}/{project}"),
                segment.unwrap_or("default").to_owned(),
                key.to_owned(),
            ))
            .map(|e| e.value.clone())
    }

    /// The expiry in hours the value under `key` (Development) was stored with.
    pub fn cache_hours(&self, project: &str, segment: Option<&str>, key: &str) -> Option<u64> {
        let inner = lock(&self.state);
        inner
            .cache
            .get(&(
                format!("Development/{project}"),
                segment.unwrap_or("default").to_owned(),
                key.to_owned(),
            ))
            .map(|e| e.hours)
    }
}
