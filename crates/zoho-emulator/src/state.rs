//! The emulator's state: clients, refresh tokens, grant codes, access tokens, Catalyst Cache
//! entries, settings, faults and counters, behind one mutex.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Drop the connection mid-answer: the status line and headers go out, then the connection
    /// closes before the body — what a client sees when the server or a proxy resets it.
    Reset,
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
    /// Successful mints per refresh-token label (see [`Emulator::add_refresh_token_labeled`](crate::Emulator::add_refresh_token_labeled)).
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

pub(crate) struct RefreshTokenEntry {
    pub(crate) client_id: String,
    pub(crate) scope: String,
    pub(crate) label: String,
    pub(crate) revoked: bool,
    pub(crate) mints: VecDeque<i64>,
    pub(crate) live: VecDeque<String>,
}

pub(crate) struct GrantCodeEntry {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) scope: String,
    pub(crate) expires_at: i64,
}

pub(crate) struct AccessTokenEntry {
    pub(crate) refresh_token: String,
    pub(crate) scope: String,
    pub(crate) expires_at: i64,
    pub(crate) revoked: bool,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) one_shot_faults: VecDeque<Fault>,
    pub(crate) offset_ms: i64,
    pub(crate) clients: HashMap<String, String>,
    pub(crate) refresh_tokens: HashMap<String, RefreshTokenEntry>,
    pub(crate) grant_codes: HashMap<String, GrantCodeEntry>,
    pub(crate) access_tokens: HashMap<String, AccessTokenEntry>,
    pub(crate) stats: Stats,
    pub(crate) base_url: String,
    /// Catalyst Cache: (project, segment, key) → entry.
    pub(crate) cache: HashMap<(String, String, String), CacheEntry>,
    /// Catalyst projects and their segments, once any is registered: then others answer 404.
    pub(crate) projects: Option<HashMap<String, Vec<String>>>,
}

pub(crate) struct CacheEntry {
    pub(crate) value: serde_json::Value,
    pub(crate) expires_at: i64,
    pub(crate) hours: u64,
}

impl Inner {
    pub(crate) fn now(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        real.saturating_add(self.offset_ms)
    }

    pub(crate) fn add_refresh_token(
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

    pub(crate) fn add_grant_code(
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

    pub(crate) fn count(&mut self, grant: &str, outcome: &str) {
        *self
            .stats
            .by_grant
            .entry(grant.to_owned())
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
    }

    pub(crate) fn live_tokens(&self) -> u64 {
        let now = self.now();
        self.access_tokens
            .values()
            .filter(|t| !t.revoked && t.expires_at > now)
            .count() as u64
    }
}

pub(crate) type Shared = Arc<Mutex<Inner>>;

pub(crate) fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn random_token(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// What `--state FILE` keeps across restarts: clients and refresh tokens (access tokens, grant
/// codes and counters are short-lived and start afresh).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// Client id → client secret.
    pub clients: BTreeMap<String, String>,
    /// Refresh token → its client, scope, label and whether it was revoked.
    pub refresh_tokens: BTreeMap<String, SavedRefreshToken>,
}

/// A refresh token as `--state FILE` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRefreshToken {
    /// The client it belongs to.
    pub client_id: String,
    /// Its scopes.
    pub scope: String,
    /// Its label (for per-label counters).
    #[serde(default)]
    pub label: String,
    /// Whether it was revoked.
    #[serde(default)]
    pub revoked: bool,
}

impl Inner {
    pub(crate) fn saved(&self) -> SavedState {
        SavedState {
            clients: self
                .clients
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            refresh_tokens: self
                .refresh_tokens
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        SavedRefreshToken {
                            client_id: e.client_id.clone(),
                            scope: e.scope.clone(),
                            label: e.label.clone(),
                            revoked: e.revoked,
                        },
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn restore(&mut self, saved: &SavedState) {
        for (id, secret) in &saved.clients {
            self.clients.insert(id.clone(), secret.clone());
        }
        for (token, e) in &saved.refresh_tokens {
            self.add_refresh_token(&e.client_id, token, &e.scope, &e.label);
            if let Some(entry) = self.refresh_tokens.get_mut(token) {
                entry.revoked = e.revoked;
            }
        }
    }
}
