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

mod accounts;
mod admin;
mod api;
mod catalyst_cache;
mod consent;
mod limits;
mod state;

pub use state::{Fault, SavedRefreshToken, SavedState, Settings, Stats};

use accounts::revoke_token;
use accounts::{revoke, token};
use admin::{
    admin_advance, admin_client, admin_grant_code, admin_refresh_token, get_settings,
    post_settings, stats,
};
use api::users;
use axum::Router;
use axum::routing::{get, post};
use catalyst_cache::{cache_delete, cache_get, cache_put};
use consent::{approve, consent_page};
use state::{Inner, Shared, lock, random_token};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

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

    /// Registers a Catalyst project and its cache segments (besides the default one). Once any
    /// project is registered, Catalyst Cache requests for other projects or segments answer
    /// HTTP 404, as Catalyst does; until then every project exists.
    pub fn add_catalyst_project(&self, project_id: &str, segments: &[&str]) {
        lock(&self.state)
            .projects
            .get_or_insert_with(Default::default)
            .insert(
                project_id.to_owned(),
                segments.iter().map(|s| (*s).to_owned()).collect(),
            );
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

    /// Revokes every access token minted so far (as Zoho does when, e.g., a user's tokens are
    /// revoked); returns how many were live.
    pub fn revoke_access_tokens(&self) -> usize {
        let mut inner = lock(&self.state);
        let now = inner.now();
        let mut live = 0;
        for token in inner.access_tokens.values_mut() {
            if !token.revoked && token.expires_at > now {
                live += 1;
            }
            token.revoked = true;
        }
        live
    }

    /// Every access token minted so far (live or not).
    pub fn access_tokens(&self) -> Vec<String> {
        lock(&self.state).access_tokens.keys().cloned().collect()
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

    /// Clients and refresh tokens, to keep across restarts (`--state FILE`).
    pub fn saved_state(&self) -> SavedState {
        lock(&self.state).saved()
    }

    /// Adds the clients and refresh tokens of `saved` (e.g. read from `--state FILE`).
    pub fn restore_state(&self, saved: &SavedState) {
        lock(&self.state).restore(saved);
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
        .route("/crm/v8/files", post(api::upload))
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
