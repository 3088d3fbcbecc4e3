//! What every connector of one connection shares: the store, the clock, the token client and
//! the tunables.

use crate::clock::Clock;
use crate::oauth::TokenClient;
use crate::store::TokenStore;
use std::sync::Arc;
use std::time::Duration;

/// Tunables shared by every connector of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub lease_ttl: Duration,
    /// How long a caller with no valid token waits before a typed error.
    pub wait_deadline: Duration,
    /// How long a permanent failure is remembered before Zoho is asked again.
    pub negative_ttl: Duration,
    /// Backoff between failed refresh attempts: full jitter over `base · 2^n`, capped.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Immediate attempts for a caller that has no valid token (transient failures only).
    pub wait_attempts: u32,
    /// Mint governor: at most `mint_limit` mints per refresh token per `mint_window`.
    pub mint_limit: u32,
    pub mint_window: Duration,
    /// At most this many live tokens per refresh token (0: no live budget); a connector's
    /// `live_token_limit` overrides it.
    pub live_token_limit: u32,
    /// Per-user connectors kept resident per template.
    pub user_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            wait_deadline: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(120),
            wait_attempts: 3,
            mint_limit: 10,
            mint_window: Duration::from_secs(600),
            live_token_limit: 10,
            user_capacity: 10_000,
        }
    }
}

impl Options {
    /// The token cell's waits after failures.
    pub(crate) fn policy(&self) -> crate::connector::cell::Policy {
        crate::connector::cell::Policy {
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            negative_ttl: self.negative_ttl,
            throttle_window: self.mint_window,
        }
    }
}

/// What every connector of one connection shares.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub store: Arc<dyn TokenStore>,
    pub clock: Arc<dyn Clock>,
    pub client: TokenClient,
    pub options: Options,
    /// Mints the governor could not write to their log, counted in memory.
    pub unrecorded: Arc<crate::governor::Unrecorded>,
}
