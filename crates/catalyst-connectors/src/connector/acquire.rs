//! The acquisition: store read → lease → governor → mint → compare-and-set → shared health.
//!
//! It knows nothing of callers: it is asked for a token of some quality ([`Want`]), given the
//! token in memory to fall back on, and answers with a token and what happened at the token
//! endpoint ([`Outcome`]). Its credentials (the refresh token in use, and the store keys that
//! derive from it) are its own state; the token cell is the connector's.

use super::cell::{Outcome, Policy, refresh_schedule};
use super::credentials::Credentials;
use super::metrics::Metrics;
use super::runtime::Runtime;
use super::token::{AccessToken, TokenInner, TokenSource};
use crate::catalyst_js::{self, TokenSealer};
use crate::clock::{EpochMillis, duration_millis, until};
use crate::config::CatalystSdk;
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::governor::{Decision, Governor};
use crate::oauth::{Grant, TokenResponse};
use crate::record::{RefreshRecord, TokenRecord};
use crate::secret::{AccessTokenSecret, ExposeSecret, RefreshToken};
use crate::store::{CasOutcome, StoreError, StoreErrorKind, TokenWrite, generation_of};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// What token an acquisition may take from the store instead of minting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Any valid token (a stale one too).
    Any,
    /// A fresh token newer than the one held (whose refresh point is passing).
    Newer,
    /// A fresh token valid at least this much longer.
    Lasting(Duration),
    /// None: mint a new one.
    New,
}

/// A token obtained, with the credentials it was obtained with (the connector installs it in
/// memory only if they are still its own).
pub(crate) struct Got {
    pub(crate) token: AccessToken,
    pub(crate) creds: Arc<Credentials>,
}

enum StoreRead {
    /// A fresh token for these credentials.
    Fresh(AccessToken),
    /// A valid token for these credentials, past its refresh point.
    Stale(AccessToken),
    /// Nothing usable; the generation to compare-and-set against.
    Miss(Option<u64>),
    /// A record this connector must not overwrite and cannot read: the encryption key is
    /// missing or another one. Fails the flight with a configuration error.
    Unreadable(Error),
}

enum LeaseWait {
    Token(AccessToken),
    Leased(Option<u64>),
    StoreFailed,
    Failed(Error),
}

/// One connector's way to a token. See the [module docs](self).
pub(crate) struct Acquisition {
    /// Shared by a template and its per-user connectors.
    pub(crate) config: Arc<ConnectorConfig>,
    /// The connector's name (`<template>.<user part>` for per-user connectors).
    pub(crate) name: String,
    /// For per-user connectors: a hash of the user id, kept in refresh-token records.
    pub(crate) subject: Option<Box<str>>,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) metrics: Arc<Metrics>,
    creds: ArcSwap<Credentials>,
    /// With `catalyst_sdk = "js"` and a `secret_key`: seals the access token in records.
    sealer: Option<TokenSealer>,
    /// A digest of the last token an API rejected (see `reject`).
    pub(super) rejected: arc_swap::ArcSwapOption<String>,
}

impl Acquisition {
    pub(crate) fn new(
        config: Arc<ConnectorConfig>,
        name: String,
        subject: Option<Box<str>>,
        creds: Credentials,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sealer: config.secret_key.clone().map(TokenSealer::new),
            config,
            name,
            subject,
            runtime,
            metrics,
            creds: ArcSwap::from_pointee(creds),
            rejected: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// The credentials in use.
    pub(crate) fn creds(&self) -> Arc<Credentials> {
        self.creds.load_full()
    }

    /// Replaces the credentials in use.
    pub(super) fn set_creds(&self, creds: Arc<Credentials>) {
        self.creds.store(creds);
    }

    /// Replaces `expected` with `fresh` unless someone changed them meanwhile; returns the
    /// credentials now in use.
    pub(super) fn swap_creds(
        &self,
        expected: &Arc<Credentials>,
        fresh: Arc<Credentials>,
    ) -> Arc<Credentials> {
        let previous = self.creds.compare_and_swap(expected, Arc::clone(&fresh));
        if Arc::ptr_eq(&*previous, expected) {
            fresh
        } else {
            self.creds()
        }
    }

    /// Whether `creds` are still the ones in use.
    pub(crate) fn is_current(&self, creds: &Arc<Credentials>) -> bool {
        Arc::ptr_eq(&self.creds.load(), creds)
    }

    /// The governor of this connection.
    pub(crate) fn governor(&self) -> Governor {
        let options = &self.runtime.options;
        Governor::new(
            options.mint_limit,
            options.mint_window,
            Arc::clone(&self.runtime.unrecorded),
        )
        .with_live_limit(
            self.config
                .live_token_limit
                .unwrap_or(options.live_token_limit),
        )
    }

    fn now(&self) -> EpochMillis {
        self.runtime.clock.now_millis()
    }

    fn policy(&self) -> Policy {
        self.runtime.options.policy()
    }

    /// A valid token from the store for the current credentials, if there is one.
    pub(crate) async fn stored(&self) -> Result<Option<Got>> {
        let creds = match self.resolve_credentials().await {
            Ok(c) => c,
            Err(Error::MissingRefreshToken { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match self.read_store(&creds).await {
            StoreRead::Fresh(token) | StoreRead::Stale(token) => Some(Got { token, creds }),
            StoreRead::Miss(_) => None,
            StoreRead::Unreadable(e) => return Err(e),
        })
    }

    /// Store, then lease, then governor, then mint, for a token of quality `want`; `held` is
    /// the token in memory, served if the refresh fails while it is valid. Returns the answer
    /// and what happened at the token endpoint.
    pub(crate) async fn acquire(
        &self,
        want: Want,
        held: Option<AccessToken>,
    ) -> (Result<Got>, Outcome) {
        let creds = match self.resolve_credentials().await {
            Ok(c) => c,
            Err(e) => return (Err(e.clone()), Outcome::Failed(e)),
        };
        let Some(refresh_token) = creds.refresh_token.clone() else {
            let e = Error::MissingRefreshToken {
                connector: self.name.clone(),
            };
            return (Err(e.clone()), Outcome::Failed(e));
        };
        let mut fallback = held.filter(|t| self.now() < t.0.expires_at);
        // A refresh of a stale token accepts only a token newer than the one it replaces.
        let floor = fallback.as_ref().map_or(i64::MIN, |t| t.0.refresh_at);
        let read = self.read_store(&creds).await;
        if let StoreRead::Unreadable(e) = read {
            return (Err(e.clone()), Outcome::Failed(e));
        }
        if let Some(token) = acceptable(&read, want, floor, self.now()) {
            self.metrics.store_hits.increment(1);
            return (Ok(Got { token, creds }), Outcome::Found);
        }
        let mut expected = read.generation();
        if let StoreRead::Fresh(token) | StoreRead::Stale(token) = read
            && want != Want::New
            && fallback
                .as_ref()
                .is_none_or(|f| token.0.expires_at > f.0.expires_at)
        {
            fallback = Some(token);
        }
        let owner = super::lease::owner_id();
        let mut leased = false;
        if self.runtime.store.is_shared() {
            match self.wait_for_lease(&creds, &owner, want, floor).await {
                LeaseWait::Token(token) => return (Ok(Got { token, creds }), Outcome::Found),
                LeaseWait::Leased(generation) => {
                    leased = true;
                    expected = generation;
                }
                LeaseWait::StoreFailed => {}
                LeaseWait::Failed(e) => return (Err(e.clone()), Outcome::Failed(e)),
            }
        }
        // A mint only the caller's min_ttl asks for: the token at hand is not due yet.
        let forced = matches!(want, Want::Lasting(_))
            && fallback
                .as_ref()
                .is_some_and(|t| self.now() < t.0.refresh_at);
        let outcome = self.mint(&creds, &refresh_token, expected, forced).await;
        if leased {
            self.release_lease(&creds, &owner, outcome.as_ref().err())
                .await;
        }
        match outcome {
            Ok(got) => (Ok(got), Outcome::Minted),
            // Serve on failure: the old token is still good.
            Err(e) => match fallback.filter(|t| self.now() < t.0.expires_at) {
                Some(token) if want != Want::New => {
                    tracing::warn!(connector = %self.name, error = %e, "refresh failed; serving the current token until it expires");
                    (Ok(Got { token, creds }), Outcome::Failed(e))
                }
                _ => (Err(e.clone()), Outcome::Failed(e)),
            },
        }
    }

    /// Gives the mint lease back. A refusal every process must honour (revoked, throttled) is
    /// in the store first: the next holder reads it instead of asking Zoho again (not when the
    /// refusal was read from there).
    async fn release_lease(&self, creds: &Credentials, owner: &str, failure: Option<&Error>) {
        if let Some(e) = failure
            && !e.is_recorded()
            && let Some(delay) = self.policy().refusal_delay(e)
        {
            let next = self.now().saturating_add(duration_millis(delay));
            self.save_failure(e, 1, next).await;
        }
        if let Err(e) = self.runtime.store.release_lease(&creds.key, owner).await {
            self.metrics.store_errors.increment(1);
            tracing::warn!(connector = %self.name, error = %e, "could not release the mint lease; it will expire");
        }
    }

    /// Asks the shared health and the governor, then the token endpoint; records the mint.
    async fn mint(
        &self,
        creds: &Arc<Credentials>,
        refresh_token: &RefreshToken,
        expected: Option<u64>,
        forced: bool,
    ) -> Result<Got> {
        let now = self.now();
        // What another process learnt: a revoked refresh token, or Zoho's throttle.
        if let Some(e) = self.refused_by_others(now).await {
            return Err(e);
        }
        let governor = self.governor();
        let log = creds.governor_key();
        // Mints a min_ttl forced are also counted apart: at most half the budget.
        let forced = forced.then(|| (governor.forced(), creds.forced_governor_key()));
        let mut checks = vec![(&governor, log.as_str())];
        if let Some((g, key)) = &forced {
            checks.push((g, key.as_str()));
        }
        for (g, key) in checks {
            if let Decision::Refuse {
                mints,
                frees_at,
                cap,
            } = g.decide(&*self.runtime.store, key, now).await
            {
                self.metrics.governor_refusals.increment(1);
                tracing::debug!(connector = %self.name, mints, ?cap, "mint governor: a budget is spent for this refresh token");
                return Err(g.refusal(&self.name, (mints, frees_at, cap), now));
            }
        }
        tracing::debug!(connector = %self.name, "minting a token");
        let response = self
            .runtime
            .client
            .request(
                &self.name,
                &self.config.refresh_url,
                &self.config.client_id,
                &self.config.client_secret,
                Grant::Refresh(refresh_token),
            )
            .await
            .inspect_err(|e| {
                self.metrics.mints_failed.increment(1);
                tracing::debug!(connector = %self.name, error = %e, "token mint failed");
            });
        // A malformed answer counts too: Zoho may well have minted (and counted) a token we
        // cannot use.
        if matches!(&response, Ok(_) | Err(Error::MalformedResponse { .. })) {
            governor.record(&*self.runtime.store, &log, now).await;
            if let Some((g, key)) = &forced {
                g.record(&*self.runtime.store, key, now).await;
            }
        }
        let response = response?;
        tracing::info!(connector = %self.name, lifetime_secs = response.lifetime.as_secs(), "token minted");
        Ok(self.save_minted(creds, response, now, expected).await)
    }

    /// The typed error for a store error the connector must not work around: the encryption
    /// key (another one, or none), or the store's own credentials (e.g. no token for Catalyst's
    /// API: minting around it would only spend Zoho's mint budget on tokens nobody can share).
    pub(super) fn store_problem(&self, e: &StoreError) -> Option<Error> {
        match e.kind {
            StoreErrorKind::Key | StoreErrorKind::NoKey => Some(Error::EncryptionKey {
                connector: self.name.clone(),
                detail: e.detail.clone(),
            }),
            StoreErrorKind::Auth => Some(Error::Store {
                connector: self.name.clone(),
                source: e.clone(),
            }),
            _ => None,
        }
    }

    /// Deletes the stored token record (only at `generation`, when given).
    pub(crate) async fn delete_stored(&self, generation: Option<u64>) -> Result<bool> {
        let key = self.creds.load().key.clone();
        self.runtime
            .store
            .delete(&key, generation)
            .await
            .map_err(|source| Error::Store {
                connector: self.name.clone(),
                source,
            })
    }

    /// The generation stored under the credentials' key, when the store can tell.
    pub(super) async fn stored_generation(&self, creds: &Credentials) -> Option<u64> {
        match generation_of(self.runtime.store.get(&creds.key).await) {
            Ok(g) => g,
            Err(e) => {
                self.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.name, error = %e, "token store read failed");
                None
            }
        }
    }

    async fn read_store(&self, creds: &Credentials) -> StoreRead {
        let stored = match self.runtime.store.get(&creds.key).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::debug!(connector = %self.name, "token miss in store");
                return StoreRead::Miss(None);
            }
            Err(e) => {
                if let Some(problem) = self.store_problem(&e) {
                    return StoreRead::Unreadable(problem);
                }
                if let StoreErrorKind::Damaged { generation } = e.kind {
                    tracing::warn!(connector = %self.name, error = %e, "ignoring a damaged token record; it will be overwritten");
                    return StoreRead::Miss(Some(generation));
                }
                self.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.name, error = %e, "token store read failed; minting without it");
                return StoreRead::Miss(None);
            }
        };
        let mut record = match TokenRecord::from_json(&stored.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(connector = %self.name, error = %e, "ignoring a damaged token record; it will be overwritten");
                return StoreRead::Miss(Some(stored.generation));
            }
        };
        if let Err(read) = self.unseal(&mut record, stored.generation).await {
            return read;
        }
        let sdk_record =
            record.fingerprint.is_none() && self.runtime.store.accepts_unfingerprinted();
        if !sdk_record && record.fingerprint.as_deref() != Some(creds.fingerprint.as_str()) {
            tracing::debug!(connector = %self.name, "token record was minted for other credentials; ignoring it");
            return StoreRead::Miss(Some(stored.generation));
        }
        let now = self.now();
        if now >= record.expires_at {
            tracing::debug!(connector = %self.name, "token in store has expired");
            return StoreRead::Miss(Some(stored.generation));
        }
        if self.was_rejected(record.access_token.expose_secret()) {
            tracing::debug!(connector = %self.name, "the token in store is one an API rejected");
            return StoreRead::Miss(Some(stored.generation));
        }
        let stale = now >= record.refresh_at;
        tracing::debug!(connector = %self.name, stale, "token hit in store");
        let token = self.token_from_record(record, Some(stored.generation), TokenSource::Store);
        if stale {
            StoreRead::Stale(token)
        } else {
            StoreRead::Fresh(token)
        }
    }

    /// Opens a token the modular JS SDK sealed (`catalyst_sdk = "js"`): without a `secret_key`
    /// the record is a configuration error (never overwritten); one that does not open with ours
    /// is never served, and is replaced by the next mint.
    async fn unseal(&self, record: &mut TokenRecord, generation: u64) -> Result<(), StoreRead> {
        let sealed = record.access_token.expose_secret();
        if self.config.catalyst_sdk != CatalystSdk::Js || !catalyst_js::is_sealed(sealed) {
            return Ok(());
        }
        let Some(sealer) = &self.sealer else {
            return Err(StoreRead::Unreadable(Error::SdkSecretKey {
                connector: self.name.clone(),
                detail: "the access token in Catalyst Cache is encrypted by the Catalyst JS SDK and no secret_key is set".into(),
            }));
        };
        match sealer.open(sealed).await {
            Ok(token) => {
                record.access_token = AccessTokenSecret::new(token);
                Ok(())
            }
            Err(_) => {
                tracing::warn!(connector = %self.name, "the access token in Catalyst Cache does not decrypt with this connector's secret_key (another key, or damage); it will be replaced");
                Err(StoreRead::Miss(Some(generation)))
            }
        }
    }

    /// Takes the mint lease, or waits for the holder's token (polling the store). A holder
    /// that died on this host is not waited for.
    async fn wait_for_lease(
        &self,
        creds: &Credentials,
        owner: &str,
        want: Want,
        floor: EpochMillis,
    ) -> LeaseWait {
        let store = &self.runtime.store;
        let ttl = self.runtime.options.lease_ttl;
        let mut delay = Duration::from_millis(10);
        loop {
            let held = match store.try_acquire_lease(&creds.key, owner, ttl).await {
                Ok(true) => true,
                Ok(false) => match store.lease_holder(&creds.key).await {
                    Ok(Some(holder))
                        if super::lease::is_dead(&holder)
                            && store
                                .take_over_lease(&creds.key, &holder, owner, ttl)
                                .await
                                .unwrap_or(false) =>
                    {
                        tracing::warn!(connector = %self.name, holder = %holder, "took over the mint lease of a process that is gone");
                        true
                    }
                    _ => false,
                },
                Err(e) => {
                    self.metrics.store_errors.increment(1);
                    tracing::warn!(connector = %self.name, error = %e, "mint lease unavailable; minting without it");
                    return LeaseWait::StoreFailed;
                }
            };
            if !held {
                tracing::debug!(connector = %self.name, "another process holds the mint lease; waiting for its token");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
            // Held: someone may have written between our read and the lease. Not held: the
            // holder's token may be there now.
            let read = self.read_store(creds).await;
            let found = match &read {
                StoreRead::Unreadable(e) => Some(LeaseWait::Failed(e.clone())),
                read => acceptable(read, want, floor, self.now()).map(LeaseWait::Token),
            };
            match (found, held) {
                (Some(answer), true) => {
                    let _ = store.release_lease(&creds.key, owner).await;
                    return answer;
                }
                (Some(answer), false) => return answer,
                (None, true) => return LeaseWait::Leased(read.generation()),
                (None, false) => {}
            }
        }
    }

    /// Computes the token's timing, writes it to the store (compare-and-set).
    pub(super) async fn save_minted(
        &self,
        creds: &Arc<Credentials>,
        response: TokenResponse,
        issued_at: EpochMillis,
        expected: Option<u64>,
    ) -> Got {
        let config = &self.config;
        // A new refresh token (code exchange, or a provider that rotates them) becomes the
        // connector's, and is written in the same store transaction as the token.
        let (creds, expected, refresh_record) = match &response.refresh_token {
            Some(rt) if creds.refresh_token.as_ref() != Some(rt) => {
                let fresh = Arc::new(Credentials::new(&self.name, config, Some(rt.clone())));
                self.set_creds(Arc::clone(&fresh));
                let expected = self.stored_generation(&fresh).await;
                let record = RefreshRecord::to_json(rt, config, self.subject.as_deref(), issued_at);
                (fresh, expected, Some(record))
            }
            _ => (Arc::clone(creds), expected, None),
        };
        let lifetime = config
            .expires_in
            .map_or(response.lifetime, |cap| cap.min(response.lifetime));
        let (refresh_at, expires_at) = refresh_schedule(issued_at, lifetime, config.refresh_in);
        let record = TokenRecord {
            access_token: response.access_token,
            refresh_at,
            expires_at,
            lifetime_secs: lifetime.as_secs(),
            api_domain: response.api_domain.or_else(|| config.api_domain.clone()),
            issued_at: Some(issued_at),
            fingerprint: Some(creds.fingerprint.clone()),
        };
        let ttl = until(self.now(), expires_at, Duration::from_secs(1));
        let data = match &self.sealer {
            Some(sealer) => {
                let sealed = sealer.seal(record.access_token.expose_secret()).await;
                record.to_json_with_token(&sealed)
            }
            None => record.to_json(),
        };
        let mut write = TokenWrite::new(&creds.key, expected, &data, ttl);
        if let Some(r) = &refresh_record {
            write = write.with_refresh(&creds.refresh_key, r);
        }
        let generation = match self.runtime.store.compare_and_set(write).await {
            Ok(CasOutcome::Written { generation }) => Some(generation),
            Ok(CasOutcome::Conflict { current }) => {
                tracing::debug!(connector = %self.name, ?current, "a newer token was stored meanwhile; keeping it there");
                None
            }
            Err(e) => {
                self.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.name, error = %e, "could not write the token to the store; serving it from memory");
                None
            }
        };
        let token = self.token_from_record(record, generation, TokenSource::Minted);
        Got { token, creds }
    }

    fn token_from_record(
        &self,
        record: TokenRecord,
        generation: Option<u64>,
        source: TokenSource,
    ) -> AccessToken {
        let header = format!("Zoho-oauthtoken {}", record.access_token.expose_secret());
        AccessToken(Arc::new(TokenInner {
            secret: record.access_token,
            header,
            issued_at: record.issued_at,
            refresh_at: record.refresh_at,
            expires_at: record.expires_at,
            api_domain: record
                .api_domain
                .or_else(|| self.config.api_domain.clone())
                .map(Arc::from),
            generation,
            source,
        }))
    }
}

impl StoreRead {
    /// The generation to compare-and-set against.
    fn generation(&self) -> Option<u64> {
        match self {
            StoreRead::Fresh(t) | StoreRead::Stale(t) => t.generation(),
            StoreRead::Miss(g) => *g,
            StoreRead::Unreadable(_) => None,
        }
    }
}

/// The stored token an acquisition for `want` may use instead of minting (`floor` is the
/// refresh point of the token held in memory).
fn acceptable(
    read: &StoreRead,
    want: Want,
    floor: EpochMillis,
    now: EpochMillis,
) -> Option<AccessToken> {
    match (want, read) {
        (Want::Any, StoreRead::Fresh(t) | StoreRead::Stale(t)) => Some(t.clone()),
        (Want::Newer, StoreRead::Fresh(t)) if t.0.refresh_at > floor => Some(t.clone()),
        (Want::Lasting(min), StoreRead::Fresh(t))
            if t.0.expires_at.saturating_sub(now) >= duration_millis(min) =>
        {
            Some(t.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "acquire_tests.rs"]
mod tests;
