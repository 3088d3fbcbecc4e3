//! # zoho-emulator
//!
//! An offline Zoho Accounts token endpoint and a protected sample API, for tests, demos and your
//! own test suites. Start it in-process with [`start`] (an ephemeral loopback port) or run the
//! `zoho-emulator` binary.
//!
//! It implements what `catalyst-connectors` relies on:
//! - `POST /oauth/v2/token` with the `refresh_token` and `authorization_code` grants (form body or
//!   query string), answering errors the way Zoho does: HTTP 200 with `{"error": …}`;
//! - `POST /oauth/v2/token/revoke?token=…`;
//! - `GET /crm/v8/users`, which requires `Authorization: Zoho-oauthtoken …` and answers HTTP 401
//!   `{"code":"INVALID_TOKEN",…}` for unknown, expired or revoked tokens;
//! - Zoho's limits, on by default: 10 mints per refresh token per 10 minutes (the 11th gets HTTP 200
//!   `{"error":"Access Denied",…}`), and at most 15 live access tokens per refresh token (the 16th
//!   revokes the oldest);
//! - per-run settings: token lifetime, latency, injected [`Fault`]s; a clock that tests can
//!   [`advance`](Emulator::advance);
//! - `GET /__emulator/stats` ([`Stats`]) and admin routes under `/__emulator/` to register clients,
//!   refresh tokens and grant codes over HTTP.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let emulator = zoho_emulator::start().await?;
//! emulator.add_client("1000.CLIENT", "client-secret");
//! let refresh_token = emulator.add_refresh_token("1000.CLIENT", "ZohoCRM.users.READ");
//! println!("token endpoint: {}", emulator.token_url());
//! assert_eq!(emulator.stats().token_requests, 0);
//! # let _ = refresh_token; Ok(()) }
//! ```
#![warn(missing_docs)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A fault to inject into token endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer HTTP 500.
    Http500,
    /// Hold the request this long, then answer HTTP 504 (clients should time out first).
    Hang {
        /// How long to hold the request, in milliseconds.
        millis: u64,
    },
    /// Answer HTTP 200 with `{"error": error, "error_description": description}`.
    ErrorWith200 {
        /// Zoho's error code, e.g. `invalid_code` or `Access Denied`.
        error: String,
        /// Optional description.
        description: Option<String>,
    },
    /// Succeed, but in the legacy shape: `expires_in_sec` in seconds and `expires_in` in
    /// milliseconds.
    LegacyExpiry,
}

/// Counters exposed at `GET /__emulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to the token endpoint, whatever the outcome.
    pub token_requests: u64,
    /// Token requests by grant type, then by outcome (`ok` or the error code answered).
    pub by_grant: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests refused by the mint throttle (`Access Denied`).
    pub throttled: u64,
    /// Requests answered with an injected fault.
    pub faults_injected: u64,
    /// Access tokens currently valid (not expired, not revoked).
    pub live_tokens: u64,
    /// Access tokens revoked because a refresh token exceeded the live-token cap.
    pub evicted_by_cap: u64,
    /// Successful mints per refresh-token label (see [`Emulator::add_refresh_token_labeled`]).
    pub mints_by_label: BTreeMap<String, u64>,
    /// Sample API calls answered 200.
    pub api_ok: u64,
    /// Sample API calls answered 401.
    pub api_unauthorized: u64,
    /// Successful revocations.
    pub revocations: u64,
    /// Catalyst Cache requests by method (`GET`, `POST`, `PUT`, `DELETE`) and outcome.
    pub cache_requests: BTreeMap<String, u64>,
}

/// Per-run settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Lifetime of minted access tokens, in seconds (default 3600).
    pub token_lifetime_secs: u64,
    /// Delay before answering each token request, in milliseconds (default 0).
    pub latency_ms: u64,
    /// Mints allowed per refresh token per window (default 10; 0 disables the throttle).
    pub mint_limit: u32,
    /// The throttle window in seconds (default 600).
    pub mint_window_secs: u64,
    /// Live access tokens allowed per refresh token (default 15; 0 disables the cap).
    pub live_token_cap: u32,
    /// A fault applied to every token request until cleared.
    pub fault: Option<Fault>,
    /// The `api_domain` announced in token responses (default: the emulator's own URL).
    #[serde(default)]
    pub api_domain: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 3600,
            latency_ms: 0,
            mint_limit: 10,
            mint_window_secs: 600,
            live_token_cap: 15,
            fault: None,
            api_domain: None,
        }
    }
}

struct RefreshTokenEntry {
    client_id: String,
    scope: String,
    label: String,
    revoked: bool,
    mints: VecDeque<i64>,
    live: VecDeque<String>,
}

struct GrantCodeEntry {
    client_id: String,
    redirect_uri: Option<String>,
    scope: String,
    expires_at: i64,
}

struct AccessTokenEntry {
    refresh_token: String,
    scope: String,
    expires_at: i64,
    revoked: bool,
}

#[derive(Default)]
struct Inner {
    settings: Settings,
    one_shot_faults: VecDeque<Fault>,
    offset_ms: i64,
    clients: HashMap<String, String>,
    refresh_tokens: HashMap<String, RefreshTokenEntry>,
    grant_codes: HashMap<String, GrantCodeEntry>,
    access_tokens: HashMap<String, AccessTokenEntry>,
    stats: Stats,
    base_url: String,
    /// Catalyst Cache: (project, segment, key) → entry.
    cache: HashMap<(String, String, String), CacheEntry>,
}

struct CacheEntry {
    value: serde_json::Value,
    expires_at: i64,
    hours: u64,
}

impl Inner {
    fn now(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        real.saturating_add(self.offset_ms)
    }

    fn add_refresh_token(
        &mut self,
        client_id: &str,
        refresh_token: &str,
        scope: &str,
        label: &str,
    ) {
        self.refresh_tokens.insert(
            refresh_token.to_owned(),
            RefreshTokenEntry {
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                label: label.to_owned(),
                revoked: false,
                mints: VecDeque::new(),
                live: VecDeque::new(),
            },
        );
    }

    fn add_grant_code(
        &mut self,
        client_id: &str,
        scope: &str,
        redirect_uri: Option<&str>,
    ) -> String {
        let code = random_token("1000.");
        let expires_at = self.now() + 120_000;
        self.grant_codes.insert(
            code.clone(),
            GrantCodeEntry {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.map(str::to_owned),
                scope: scope.to_owned(),
                expires_at,
            },
        );
        code
    }

    fn count(&mut self, grant: &str, outcome: &str) {
        *self
            .stats
            .by_grant
            .entry(grant.to_owned())
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
    }

    fn live_tokens(&self) -> u64 {
        let now = self.now();
        self.access_tokens
            .values()
            .filter(|t| !t.revoked && t.expires_at > now)
            .count() as u64
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_token(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    url: String,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Starts an emulator on an ephemeral port of 127.0.0.1.
pub async fn start() -> std::io::Result<Emulator> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts an emulator on `addr`.
pub async fn start_on(addr: SocketAddr) -> std::io::Result<Emulator> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let url = format!("http://{local}");
    let state: Shared = Arc::new(Mutex::new(Inner {
        base_url: url.clone(),
        ..Inner::default()
    }));
    let app = router(Arc::clone(&state));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "zoho-emulator server stopped");
        }
    });
    Ok(Emulator {
        url,
        state,
        shutdown: Some(tx),
    })
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Emulator {
    /// The base URL, e.g. `http://127.0.0.1:41234`. Minted tokens name it as their `api_domain`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token endpoint, `{url}/oauth/v2/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/v2/token", self.url)
    }

    /// Registers an OAuth client.
    pub fn add_client(&self, client_id: &str, client_secret: &str) {
        lock(&self.state)
            .clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// Creates a refresh token for `client_id` and returns it.
    pub fn add_refresh_token(&self, client_id: &str, scope: &str) -> String {
        let token = random_token("1000.");
        self.add_refresh_token_labeled(client_id, &token, scope, "");
        token
    }

    /// Registers a given refresh token for `client_id`, with a label under which its mints are
    /// counted in [`Stats::mints_by_label`] (empty: not counted by label).
    pub fn add_refresh_token_labeled(
        &self,
        client_id: &str,
        refresh_token: &str,
        scope: &str,
        label: &str,
    ) {
        lock(&self.state).add_refresh_token(client_id, refresh_token, scope, label);
    }

    /// Creates a one-time grant code for `client_id`, valid two minutes, and returns it. When
    /// `redirect_uri` is given, the exchange must send the same `redirect_uri` (server-based
    /// clients); without it, none may be required (Self Client).
    pub fn add_grant_code(
        &self,
        client_id: &str,
        scope: &str,
        redirect_uri: Option<&str>,
    ) -> String {
        lock(&self.state).add_grant_code(client_id, scope, redirect_uri)
    }

    /// Revokes a refresh token (and its access tokens) or an access token. Returns whether the
    /// token was known.
    pub fn revoke(&self, token: &str) -> bool {
        revoke_token(&mut lock(&self.state), token)
    }

    /// The refresh token that minted `access_token`, if the emulator minted it.
    pub fn refresh_token_of(&self, access_token: &str) -> Option<String> {
        lock(&self.state)
            .access_tokens
            .get(access_token)
            .map(|a| a.refresh_token.clone())
    }

    /// Whether `access_token` is currently accepted by the sample API (minted here, not expired,
    /// not revoked).
    pub fn is_live(&self, access_token: &str) -> bool {
        let inner = lock(&self.state);
        let now = inner.now();
        inner
            .access_tokens
            .get(access_token)
            .is_some_and(|a| !a.revoked && a.expires_at > now)
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        lock(&self.state).settings.clone()
    }

    /// Replaces the settings.
    pub fn set_settings(&self, settings: Settings) {
        lock(&self.state).settings = settings;
    }

    /// Sets the lifetime of minted tokens.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.state).settings.token_lifetime_secs = lifetime.as_secs();
    }

    /// Delays every token answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).settings.latency_ms =
            u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    }

    /// Applies `fault` to every token request until cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        lock(&self.state).settings.fault = fault;
    }

    /// Applies `fault` to the next `count` token requests (before any persistent fault).
    pub fn inject_faults(&self, fault: Fault, count: usize) {
        let mut inner = lock(&self.state);
        inner
            .one_shot_faults
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Moves the emulator's clock forward (token expiry, grant-code expiry, throttle window).
    pub fn advance(&self, by: Duration) {
        let mut inner = lock(&self.state);
        inner.offset_ms = inner
            .offset_ms
            .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let inner = lock(&self.state);
        let mut stats = inner.stats.clone();
        stats.live_tokens = inner.live_tokens();
        stats
    }

    /// Resets the counters (not the registered clients and tokens).
    pub fn reset_stats(&self) {
        lock(&self.state).stats = Stats::default();
    }

    /// Stops the server and waits a moment for it to close its listener.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::task::yield_now().await;
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/oauth/v2/token/revoke", post(revoke))
        .route("/oauth/v2/auth", get(consent_page))
        .route("/oauth/v2/auth/approve", post(approve))
        .route("/crm/v8/users", get(users))
        .route("/__emulator/stats", get(stats))
        .route(
            "/baas/v1/project/{project}/cache",
            get(cache_get)
                .post(cache_put)
                .put(cache_put)
                .delete(cache_delete),
        )
        .route(
            "/baas/v1/project/{project}/segment/{segment}/cache",
            get(cache_get)
                .post(cache_put)
                .put(cache_put)
                .delete(cache_delete),
        )
        .route("/__emulator/clients", post(admin_client))
        .route("/__emulator/refresh_tokens", post(admin_refresh_token))
        .route("/__emulator/grant_codes", post(admin_grant_code))
        .route(
            "/__emulator/settings",
            get(get_settings).post(post_settings),
        )
        .route("/__emulator/advance", post(admin_advance))
        .with_state(state)
}

/// Reads OAuth parameters from the query string and the form body (Zoho accepts both).
fn params(query: Option<String>, body: &[u8]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    if let Some(q) = query {
        out.extend(serde_urlencoded::from_str::<Vec<(String, String)>>(&q).unwrap_or_default());
    }
    out.extend(serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default());
    out
}

fn oauth_error(error: &str, description: Option<&str>) -> Response {
    let mut body = json!({ "error": error });
    if let Some(d) = description {
        body["error_description"] = json!(d);
    }
    // Zoho answers token errors with HTTP 200.
    (StatusCode::OK, axum::Json(body)).into_response()
}

enum Decision {
    Respond(Response),
    Hang(Duration),
}

async fn token(
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
    }
}

fn decide_token(state: &Shared, p: &HashMap<String, String>) -> Decision {
    let mut inner = lock(state);
    let grant = p.get("grant_type").cloned().unwrap_or_default();
    let fault = inner
        .one_shot_faults
        .pop_front()
        .or_else(|| inner.settings.fault.clone());
    let mut legacy = false;
    match fault {
        Some(Fault::Http500) => {
            inner.stats.faults_injected += 1;
            inner.count(&grant, "http_500");
            return Decision::Respond(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": "internal"})),
                )
                    .into_response(),
            );
        }
        Some(Fault::Hang { millis }) => {
            inner.stats.faults_injected += 1;
            inner.count(&grant, "hang");
            return Decision::Hang(Duration::from_millis(millis));
        }
        Some(Fault::ErrorWith200 { error, description }) => {
            inner.stats.faults_injected += 1;
            inner.count(&grant, &error);
            return Decision::Respond(oauth_error(&error, description.as_deref()));
        }
        Some(Fault::LegacyExpiry) => {
            inner.stats.faults_injected += 1;
            legacy = true;
        }
        None => {}
    }
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

type GrantResult = Result<(String, Option<String>, String), (&'static str, Option<&'static str>)>;

fn check_client(
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

const THROTTLE_DESCRIPTION: &str =
    "You have made too many requests continuously. Please try again after some time.";

fn mint(
    inner: &mut Inner,
    refresh_token: &str,
) -> Result<String, (&'static str, Option<&'static str>)> {
    let now = inner.now();
    let settings = inner.settings.clone();
    let window = i64::try_from(settings.mint_window_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let lifetime_ms = i64::try_from(settings.token_lifetime_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let access_token = random_token("1000.");
    let mut evicted = Vec::new();
    let label;
    {
        let Some(entry) = inner.refresh_tokens.get_mut(refresh_token) else {
            return Err(("invalid_code", None));
        };
        while entry.mints.front().is_some_and(|t| *t <= now - window) {
            entry.mints.pop_front();
        }
        if settings.mint_limit > 0 && entry.mints.len() >= settings.mint_limit as usize {
            return Err(("Access Denied", Some(THROTTLE_DESCRIPTION)));
        }
        entry.mints.push_back(now);
        entry.live.push_back(access_token.clone());
        label = entry.label.clone();
    }
    let scope = inner
        .refresh_tokens
        .get(refresh_token)
        .map(|e| e.scope.clone())
        .unwrap_or_default();
    inner.access_tokens.insert(
        access_token.clone(),
        AccessTokenEntry {
            refresh_token: refresh_token.to_owned(),
            scope,
            expires_at: now + lifetime_ms,
            revoked: false,
        },
    );
    // Enforce the live-token cap over tokens that are still live.
    if let Some(entry) = inner.refresh_tokens.get(refresh_token) {
        let live: Vec<String> = entry
            .live
            .iter()
            .filter(|t| {
                inner
                    .access_tokens
                    .get(*t)
                    .is_some_and(|a| !a.revoked && a.expires_at > now)
            })
            .cloned()
            .collect();
        let cap = settings.live_token_cap as usize;
        if cap > 0 && live.len() > cap {
            evicted.extend(live[..live.len() - cap].iter().cloned());
        }
        let keep: VecDeque<String> = live.into_iter().filter(|t| !evicted.contains(t)).collect();
        if let Some(e) = inner.refresh_tokens.get_mut(refresh_token) {
            e.live = keep;
        }
    }
    for t in &evicted {
        if let Some(a) = inner.access_tokens.get_mut(t) {
            a.revoked = true;
        }
        inner.stats.evicted_by_cap += 1;
    }
    if !label.is_empty() {
        *inner.stats.mints_by_label.entry(label).or_default() += 1;
    }
    Ok(access_token)
}

fn refresh_grant(inner: &mut Inner, p: &HashMap<String, String>) -> GrantResult {
    let client_id = check_client(inner, p)?;
    let rt = p.get("refresh_token").cloned().unwrap_or_default();
    let scope = match inner.refresh_tokens.get(&rt) {
        Some(e) if !e.revoked && e.client_id == client_id => e.scope.clone(),
        _ => return Err(("invalid_code", None)),
    };
    let access = mint(inner, &rt)?;
    Ok((access, None, scope))
}

fn code_grant(inner: &mut Inner, p: &HashMap<String, String>) -> GrantResult {
    let client_id = check_client(inner, p)?;
    let code = p.get("code").cloned().unwrap_or_default();
    let now = inner.now();
    let Some(entry) = inner.grant_codes.remove(&code) else {
        return Err(("invalid_code", None));
    };
    if entry.client_id != client_id || entry.expires_at <= now {
        return Err(("invalid_code", None));
    }
    if let Some(expected) = &entry.redirect_uri {
        if p.get("redirect_uri") != Some(expected) {
            return Err(("invalid_redirect_uri", None));
        }
    }
    let rt = random_token("1000.");
    inner.add_refresh_token(&client_id, &rt, &entry.scope, "");
    let access = mint(inner, &rt)?;
    Ok((access, Some(rt), entry.scope))
}

fn revoke_token(inner: &mut Inner, token: &str) -> bool {
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

async fn revoke(
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

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/html; charset=utf-8")], body).into_response()
}

/// `GET /oauth/v2/auth`: the consent page of the server-based flow, with Accept and Deny.
async fn consent_page(AxumState(state): AxumState<Shared>, RawQuery(query): RawQuery) -> Response {
    let p = params(query, &[]);
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let client_id = get("client_id");
    if !lock(&state).clients.contains_key(&client_id) {
        return html(
            StatusCode::BAD_REQUEST,
            "<!doctype html><title>Invalid client</title><h1>Invalid OAuth client</h1>".into(),
        );
    }
    if get("response_type") != "code" || get("redirect_uri").is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            "<!doctype html><title>Invalid request</title><h1>response_type=code and redirect_uri are required</h1>".into(),
        );
    }
    let hidden = ["client_id", "redirect_uri", "scope", "state", "access_type"]
        .iter()
        .map(|k| {
            format!(
                r#"<input type="hidden" name="{k}" value="{}">"#,
                html_escape(&get(k))
            )
        })
        .collect::<String>();
    html(
        StatusCode::OK,
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>Zoho Accounts (emulator): consent</title>
<style>body{{font-family:sans-serif;max-width:34em;margin:3em auto}}button{{font-size:1.1em;padding:.4em 1.2em;margin-right:1em}}</style></head>
<body><h1>Zoho Accounts (emulator)</h1>
<p>The application <b>{client}</b> asks for access to:</p><ul>{scopes}</ul>
<form method="post" action="/oauth/v2/auth/approve">{hidden}
<button id="accept" type="submit" name="decision" value="accept">Accept</button>
<button id="deny" type="submit" name="decision" value="deny">Deny</button></form></body></html>"#,
            client = html_escape(&client_id),
            scopes = get("scope")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| format!("<li>{}</li>", html_escape(s)))
                .collect::<String>(),
        ),
    )
}

/// `POST /oauth/v2/auth/approve`: issues a grant code and redirects to the client, as Zoho does
/// (`code`, `location`, `accounts-server`, `state`).
async fn approve(AxumState(state): AxumState<Shared>, body: Bytes) -> Response {
    let p = params(None, &body);
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let query = if get("decision") == "accept" {
        let mut inner = lock(&state);
        let code = inner.add_grant_code(&get("client_id"), &get("scope"), Some(&redirect_uri));
        let server = inner.base_url.clone();
        serde_urlencoded::to_string([
            ("code", code.as_str()),
            ("location", "us"),
            ("accounts-server", server.as_str()),
            ("state", get("state").as_str()),
        ])
    } else {
        serde_urlencoded::to_string([("error", "access_denied"), ("state", get("state").as_str())])
    }
    .unwrap_or_default();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    (
        StatusCode::FOUND,
        [("location", format!("{redirect_uri}{sep}{query}"))],
    )
        .into_response()
}

/// Catalyst Cache limits.
const CACHE_KEY_MAX: usize = 50;
const CACHE_VALUE_MAX: usize = 16_000;
const CACHE_HOURS_MAX: u64 = 48;

fn cache_failure(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "failure", "data": {"error_code": code, "message": message}})),
    )
        .into_response()
}

/// Checks `Authorization: Zoho-oauthtoken …` against the emulator's live access tokens.
fn cache_auth(inner: &Inner, headers: &HeaderMap) -> Result<(), Box<Response>> {
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

type CachePath = axum::extract::Path<HashMap<String, String>>;

fn cache_slot(path: &HashMap<String, String>) -> (String, String) {
    (
        path.get("project").cloned().unwrap_or_default(),
        path.get("segment")
            .cloned()
            .unwrap_or_else(|| "default".into()),
    )
}

fn cache_data(
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

async fn cache_get(
    AxumState(state): AxumState<Shared>,
    axum::extract::Path(path): CachePath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&state);
    *inner.stats.cache_requests.entry("GET".into()).or_default() += 1;
    if let Err(r) = cache_auth(&inner, &headers) {
        return *r;
    }
    let key = params(query, &[]).remove("cacheKey").unwrap_or_default();
    let (project, segment) = cache_slot(&path);
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

async fn cache_put(
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
    if let Err(r) = cache_auth(&inner, &headers) {
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
    let (project, segment) = cache_slot(&path);
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

async fn cache_delete(
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
    if let Err(r) = cache_auth(&inner, &headers) {
        return *r;
    }
    let key = params(query, &[]).remove("cacheKey").unwrap_or_default();
    let (project, segment) = cache_slot(&path);
    // As Catalyst does, the key stays with a null value.
    if let Some(e) = inner.cache.get_mut(&(project, segment, key.clone())) {
        e.value = serde_json::Value::Null;
    }
    axum::Json(json!({"status": "success", "data": {"cache_name": key, "cache_value": null}}))
        .into_response()
}

impl Emulator {
    /// The raw Catalyst Cache value stored under `key` (default segment when `segment` is
    /// `None`), as an SDK would read it.
    pub fn cache_value(
        &self,
        project: &str,
        segment: Option<&str>,
        key: &str,
    ) -> Option<serde_json::Value> {
        let inner = lock(&self.state);
        inner
            .cache
            .get(&(
                project.to_owned(),
                segment.unwrap_or("default").to_owned(),
                key.to_owned(),
            ))
            .map(|e| e.value.clone())
    }

    /// The expiry in hours the value under `key` was stored with.
    pub fn cache_hours(&self, project: &str, segment: Option<&str>, key: &str) -> Option<u64> {
        let inner = lock(&self.state);
        inner
            .cache
            .get(&(
                project.to_owned(),
                segment.unwrap_or("default").to_owned(),
                key.to_owned(),
            ))
            .map(|e| e.hours)
    }
}

async fn users(AxumState(state): AxumState<Shared>, headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Zoho-oauthtoken "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let mut inner = lock(&state);
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
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope to access this URL", "status": "error"})),
        )
            .into_response();
    }
    if entry.is_none() {
        inner.stats.api_unauthorized += 1;
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"})),
        )
            .into_response();
    }
    inner.stats.api_ok += 1;
    axum::Json(json!({
        "users": [
            {"id": "4150868000000225013", "full_name": "Patricia Boyle", "email": "patricia.b@zylker.com", "status": "active"},
            {"id": "4150868000000225014", "full_name": "Ravi Kumar", "email": "ravi.k@zylker.com", "status": "active"}
        ],
        "info": {"per_page": 200, "count": 2, "page": 1, "more_records": false}
    }))
    .into_response()
}

async fn stats(AxumState(state): AxumState<Shared>) -> Response {
    let inner = lock(&state);
    let mut s = inner.stats.clone();
    s.live_tokens = inner.live_tokens();
    axum::Json(s).into_response()
}

async fn get_settings(AxumState(state): AxumState<Shared>) -> Response {
    axum::Json(lock(&state).settings.clone()).into_response()
}

async fn post_settings(
    AxumState(state): AxumState<Shared>,
    axum::Json(s): axum::Json<Settings>,
) -> Response {
    lock(&state).settings = s.clone();
    axum::Json(s).into_response()
}

#[derive(Deserialize)]
struct NewClient {
    client_id: String,
    client_secret: String,
}

async fn admin_client(
    AxumState(state): AxumState<Shared>,
    axum::Json(c): axum::Json<NewClient>,
) -> Response {
    lock(&state)
        .clients
        .insert(c.client_id.clone(), c.client_secret);
    axum::Json(json!({"client_id": c.client_id})).into_response()
}

#[derive(Deserialize)]
struct NewRefreshToken {
    client_id: String,
    refresh_token: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    label: String,
}

async fn admin_refresh_token(
    AxumState(state): AxumState<Shared>,
    axum::Json(r): axum::Json<NewRefreshToken>,
) -> Response {
    let token = r.refresh_token.unwrap_or_else(|| random_token("1000."));
    lock(&state).add_refresh_token(&r.client_id, &token, &r.scope, &r.label);
    axum::Json(json!({"refresh_token": token})).into_response()
}

#[derive(Deserialize)]
struct NewGrantCode {
    client_id: String,
    #[serde(default)]
    scope: String,
    redirect_uri: Option<String>,
}

async fn admin_grant_code(
    AxumState(state): AxumState<Shared>,
    axum::Json(g): axum::Json<NewGrantCode>,
) -> Response {
    let code = lock(&state).add_grant_code(&g.client_id, &g.scope, g.redirect_uri.as_deref());
    axum::Json(json!({"code": code})).into_response()
}

#[derive(Deserialize)]
struct Advance {
    seconds: u64,
}

async fn admin_advance(
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
