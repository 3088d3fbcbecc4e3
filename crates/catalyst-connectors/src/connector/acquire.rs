//! One acquisition: store → lease → governor → mint → compare-and-set → install.
//!
//! Runs inside a flight (see [`super::flight`]), once per attempt.

use super::credentials::Credentials;
use super::schedule::{Attempt, Mode};
use super::token::{TokenInner, refresh_schedule};
use super::{AccessToken, Connector, TokenSource};
use crate::clock::{EpochMillis, duration_millis, until};
use crate::error::{Error, Result};
use crate::governor;
use crate::oauth::{Grant, TokenResponse};
use crate::record::{RefreshRecord, TokenRecord};
use crate::secret::{ExposeSecret, RefreshToken};
use crate::store::{CasOutcome, StoreError, StoreErrorKind, TokenWrite, looks_encrypted};
use std::sync::Arc;
use std::time::Duration;

pub(super) enum StoreRead {
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

impl Connector {
    /// The token this process would serve without asking the token endpoint: from memory, else
    /// from the store (installed in memory). `None` when neither holds a valid token.
    pub async fn cached_token(&self) -> Result<Option<AccessToken>> {
        let now = self.inner.runtime.clock.now_millis();
        if let Some(t) = self
            .inner
            .current
            .load_full()
            .filter(|t| now < t.expires_at)
        {
            return Ok(Some(AccessToken(t)));
        }
        let creds = match self.resolve_credentials().await {
            Ok(c) => c,
            Err(Error::MissingRefreshToken { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match self.read_store(&creds).await {
            StoreRead::Fresh(t) | StoreRead::Stale(t) => Some(self.install(&creds, t)),
            StoreRead::Miss(_) => None,
            StoreRead::Unreadable(e) => return Err(e),
        })
    }

    /// Deletes the stored token record (only at `generation`, when given).
    pub(super) async fn delete_stored(&self, generation: Option<u64>) -> Result<bool> {
        let key = self.inner.creds.load().key.clone();
        self.inner
            .runtime
            .store
            .delete(&key, generation)
            .await
            .map_err(|source| Error::Store {
                connector: self.inner.name.clone(),
                source,
            })
    }

    /// The generation stored under the credentials' key, when the store can tell.
    pub(super) async fn stored_generation(&self, creds: &Credentials) -> Option<u64> {
        match self.inner.runtime.store.get(&creds.key).await {
            Ok(v) => v.map(|v| v.generation),
            Err(e) => {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.inner.name, error = %e, "token store read failed");
                None
            }
        }
    }

    /// Store, then lease, then governor, then mint. Runs once per attempt of a flight. Returns
    /// what callers get, and what happened at the token endpoint.
    pub(super) async fn acquire(&self, mode: Mode) -> (Result<AccessToken>, Attempt) {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let creds = match self.resolve_credentials().await {
            Ok(c) => c,
            Err(e) => return (Err(e.clone()), Attempt::Failed(e)),
        };
        let Some(refresh_token) = creds.refresh_token.clone() else {
            let e = Error::MissingRefreshToken {
                connector: name.clone(),
            };
            return (Err(e.clone()), Attempt::Failed(e));
        };
        // A valid token to fall back on if the refresh fails.
        let mut fallback = self
            .inner
            .current
            .load_full()
            .filter(|t| runtime.clock.now_millis() < t.expires_at)
            .map(AccessToken);
        // A background refresh accepts only a token newer than the one it replaces.
        let floor = fallback.as_ref().map_or(i64::MIN, |t| t.0.refresh_at);
        let read = self.read_store(&creds).await;
        if let StoreRead::Unreadable(e) = read {
            return (Err(e.clone()), Attempt::Failed(e));
        }
        if let Some(token) = acceptable(&read, mode, floor, self.inner.runtime.clock.now_millis()) {
            self.inner.metrics.store_hits.increment(1);
            return (Ok(self.install(&creds, token)), Attempt::None);
        }
        let mut expected = read.generation();
        if let StoreRead::Fresh(token) | StoreRead::Stale(token) = read
            && mode != Mode::Force
            && fallback
                .as_ref()
                .is_none_or(|f| token.0.expires_at > f.0.expires_at)
        {
            fallback = Some(token);
        }

        let owner = crate::lease::owner_id();
        let mut leased = false;
        if runtime.store.is_shared() {
            match self.wait_for_lease(&creds, &owner, mode, floor).await {
                LeaseWait::Token(token) => return (Ok(self.install(&creds, token)), Attempt::None),
                LeaseWait::Leased(generation) => {
                    leased = true;
                    expected = generation;
                }
                LeaseWait::StoreFailed => {}
                LeaseWait::Failed(e) => return (Err(e.clone()), Attempt::Failed(e)),
            }
        }

        let outcome = self.mint(&creds, &refresh_token, expected).await;
        if leased {
            // A refusal every process must honour (revoked, throttled) is in the store before the
            // lease goes: the next holder reads it instead of asking Zoho again.
            // (Not when the refusal was read from there.)
            if let Err(e) = &outcome
                && !is_recorded(e)
                && let Some(delay) = self.refusal_delay(e)
            {
                let now = runtime.clock.now_millis();
                self.save_failure(e, 1, now.saturating_add(duration_millis(delay)))
                    .await;
            }
            if let Err(e) = runtime.store.release_lease(&creds.key, &owner).await {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %name, error = %e, "could not release the mint lease; it will expire");
            }
        }
        match outcome {
            Ok(token) => (Ok(token), Attempt::Minted),
            Err(e) => match fallback.filter(|t| runtime.clock.now_millis() < t.0.expires_at) {
                // Serve on failure: the old token is still good.
                Some(token) if mode != Mode::Force => {
                    tracing::warn!(connector = %name, error = %e, "refresh failed; serving the current token until it expires");
                    (Ok(self.install(&creds, token)), Attempt::Failed(e))
                }
                _ => (Err(e.clone()), Attempt::Failed(e)),
            },
        }
    }

    /// Asks the governor, then the token endpoint; records the mint.
    async fn mint(
        &self,
        creds: &Arc<Credentials>,
        refresh_token: &RefreshToken,
        expected: Option<u64>,
    ) -> Result<AccessToken> {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let options = &runtime.options;
        let now = runtime.clock.now_millis();
        // What another process learnt: a revoked refresh token, or Zoho's throttle.
        if let Some(e) = self.shared_refusal(now).await {
            return Err(e);
        }
        if options.mint_limit > 0 {
            let log = governor::recent_mints(
                &*runtime.store,
                &creds.governor_key(),
                now,
                options.mint_window,
            )
            .await;
            let mints = if log.unreadable {
                vec![now; options.mint_limit as usize]
            } else {
                log.times
            };
            if mints.len() >= options.mint_limit as usize {
                let frees_at = mints
                    .first()
                    .copied()
                    .unwrap_or(now)
                    .saturating_add(duration_millis(options.mint_window));
                let retry_after = until(now, frees_at, Duration::from_secs(1));
                self.inner.metrics.governor_refusals.increment(1);
                tracing::debug!(connector = %name, mints = mints.len(), retry_after_secs = retry_after.as_secs(), "mint governor: limit reached for this refresh token");
                return Err(Error::Throttled {
                    connector: name.clone(),
                    code: "mint limit".into(),
                    description: Some(format!(
                        "{} tokens minted for this refresh token in the last {} s (limit {}); a slot frees in {} s",
                        mints.len(),
                        options.mint_window.as_secs(),
                        options.mint_limit,
                        retry_after.as_secs()
                    )),
                    retry_after: Some(retry_after),
                });
            }
        }
        let issued_at = now;
        tracing::debug!(connector = %name, "minting a token");
        self.inner
            .minting
            .store(true, std::sync::atomic::Ordering::Release);
        let response = runtime
            .client
            .request(
                name,
                &self.inner.config.refresh_url,
                &self.inner.config.client_id,
                &self.inner.config.client_secret,
                Grant::Refresh(refresh_token),
            )
            .await
            .inspect_err(|e| {
                self.inner.metrics.mints_failed.increment(1);
                tracing::debug!(connector = %name, error = %e, "token mint failed");
            });
        self.inner
            .minting
            .store(false, std::sync::atomic::Ordering::Release);
        // A malformed answer counts too: Zoho may well have minted (and counted) a token we
        // cannot use.
        if options.mint_limit > 0
            && matches!(&response, Ok(_) | Err(Error::MalformedResponse { .. }))
        {
            governor::record_mint(
                &*runtime.store,
                &creds.governor_key(),
                issued_at,
                options.mint_window,
            )
            .await;
        }
        let response = response?;
        tracing::info!(connector = %name, lifetime_secs = response.lifetime.as_secs(), "token minted");
        Ok(self.save_minted(creds, response, issued_at, expected).await)
    }

    /// A failure another process recorded that makes a mint pointless now, while its wait (the
    /// negative-cache TTL, or Zoho's throttle window) has not passed: the refresh token was
    /// rejected, or Zoho throttles it. The health record is keyed by the credentials'
    /// fingerprint, so new credentials start clean.
    async fn shared_refusal(&self, now: EpochMillis) -> Option<Error> {
        let failure = self.recorded_failure().await?;
        let name = self.inner.name.clone();
        let next = failure
            .next_attempt_at
            .map(crate::clock::system_time_to_millis)
            .unwrap_or(0);
        match failure.code.as_str() {
            "reauthorization_required" if next > now => Some(Error::ReauthorizationRequired {
                connector: name,
                grant: "refresh token",
                code: "recorded".into(),
                description: Some(failure.message),
            }),
            "throttled" if next > now => Some(Error::Throttled {
                connector: name,
                code: "recorded".into(),
                description: Some(failure.message),
                retry_after: Some(until(now, next, Duration::from_secs(1))),
            }),
            _ => None,
        }
    }

    /// The typed error for a store error the connector must not work around: the encryption
    /// key (another one, or none), or the store's own credentials (e.g. no token for Catalyst's
    /// API: minting around it would only spend Zoho's mint budget on tokens nobody can share).
    pub(super) fn key_problem(&self, e: &StoreError) -> Option<Error> {
        match e.kind {
            StoreErrorKind::Key => Some(Error::EncryptionKey {
                connector: self.inner.name.clone(),
                detail: e.detail.clone(),
            }),
            StoreErrorKind::Auth => Some(Error::Store {
                connector: self.inner.name.clone(),
                source: e.clone(),
            }),
            _ => None,
        }
    }

    /// The error for an encrypted record read without a key.
    pub(super) fn no_key_error(&self) -> Error {
        Error::EncryptionKey {
            connector: self.inner.name.clone(),
            detail: "the token store holds encrypted records and no encryption key is set".into(),
        }
    }

    pub(super) async fn read_store(&self, creds: &Credentials) -> StoreRead {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let stored = match runtime.store.get(&creds.key).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::debug!(connector = %name, "token miss in store");
                return StoreRead::Miss(None);
            }
            Err(e) => {
                if let Some(problem) = self.key_problem(&e) {
                    return StoreRead::Unreadable(problem);
                }
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %name, error = %e, "token store read failed; minting without it");
                return StoreRead::Miss(None);
            }
        };
        if looks_encrypted(&stored.data) {
            return StoreRead::Unreadable(self.no_key_error());
        }
        let record = match TokenRecord::from_json(&stored.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, "ignoring a damaged token record; it will be overwritten");
                return StoreRead::Miss(Some(stored.generation));
            }
        };
        let sdk_record = record.fingerprint.is_none() && runtime.store.accepts_unfingerprinted();
        if !sdk_record && record.fingerprint.as_deref() != Some(creds.fingerprint.as_str()) {
            tracing::debug!(connector = %name, "token record was minted for other credentials; ignoring it");
            return StoreRead::Miss(Some(stored.generation));
        }
        let now = runtime.clock.now_millis();
        if now >= record.expires_at {
            tracing::debug!(connector = %name, "token in store has expired");
            return StoreRead::Miss(Some(stored.generation));
        }
        let stale = now >= record.refresh_at;
        tracing::debug!(connector = %name, stale, "token hit in store");
        let token = self.token_from_record(record, Some(stored.generation), TokenSource::Store);
        if stale {
            StoreRead::Stale(token)
        } else {
            StoreRead::Fresh(token)
        }
    }

    async fn wait_for_lease(
        &self,
        creds: &Credentials,
        owner: &str,
        mode: Mode,
        floor: EpochMillis,
    ) -> LeaseWait {
        let name = &self.inner.name;
        let runtime = &self.inner.runtime;
        let ttl = runtime.options.lease_ttl;
        let mut delay = Duration::from_millis(10);
        loop {
            let held = match runtime
                .store
                .try_acquire_lease(&creds.key, owner, ttl)
                .await
            {
                Ok(true) => true,
                // A holder that died (on this host) is not waited for.
                Ok(false) => match runtime.store.lease_holder(&creds.key).await {
                    Ok(Some(holder))
                        if crate::lease::is_dead(&holder)
                            && runtime
                                .store
                                .take_over_lease(&creds.key, &holder, owner, ttl)
                                .await
                                .unwrap_or(false) =>
                    {
                        tracing::warn!(connector = %name, holder = %holder, "took over the mint lease of a process that is gone");
                        true
                    }
                    _ => false,
                },
                Err(e) => {
                    self.inner.metrics.store_errors.increment(1);
                    tracing::warn!(connector = %name, error = %e, "mint lease unavailable; minting without it");
                    return LeaseWait::StoreFailed;
                }
            };
            if held {
                // Someone may have written between our read and the lease: read again.
                let read = self.read_store(creds).await;
                if let StoreRead::Unreadable(e) = read {
                    let _ = runtime.store.release_lease(&creds.key, owner).await;
                    return LeaseWait::Failed(e);
                }
                if let Some(token) = acceptable(&read, mode, floor, runtime.clock.now_millis()) {
                    let _ = runtime.store.release_lease(&creds.key, owner).await;
                    return LeaseWait::Token(token);
                }
                return LeaseWait::Leased(read.generation());
            }
            tracing::debug!(connector = %name, "another process holds the mint lease; waiting for its token");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
            let read = self.read_store(creds).await;
            if let StoreRead::Unreadable(e) = read {
                return LeaseWait::Failed(e);
            }
            if let Some(token) = acceptable(&read, mode, floor, runtime.clock.now_millis()) {
                return LeaseWait::Token(token);
            }
        }
    }

    /// Computes the token's timing, writes it to the store (compare-and-set) and installs it.
    pub(super) async fn save_minted(
        &self,
        creds: &Arc<Credentials>,
        response: TokenResponse,
        issued_at: EpochMillis,
        expected: Option<u64>,
    ) -> AccessToken {
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        // A new refresh token (code exchange, or a provider that rotates them) becomes the
        // connector's, and is written in the same store transaction as the token.
        let (creds, expected, refresh_record) = match &response.refresh_token {
            Some(rt) if creds.refresh_token.as_ref() != Some(rt) => {
                let fresh = Arc::new(Credentials::new(&self.inner.name, config, Some(rt.clone())));
                self.inner.creds.store(Arc::clone(&fresh));
                let expected = self.stored_generation(&fresh).await;
                let record =
                    RefreshRecord::to_json(rt, config, self.inner.subject.as_deref(), issued_at);
                (fresh, expected, Some(record))
            }
            _ => (Arc::clone(creds), expected, None),
        };
        let creds = &creds;
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
        let now = runtime.clock.now_millis();
        let ttl = until(now, expires_at, Duration::from_secs(1));
        let data = record.to_json();
        let mut write = TokenWrite::new(&creds.key, expected, &data, ttl);
        if let Some(r) = &refresh_record {
            write = write.with_refresh(&creds.refresh_key, r);
        }
        let generation = match runtime.store.compare_and_set(write).await {
            Ok(CasOutcome::Written { generation }) => Some(generation),
            Ok(CasOutcome::Conflict { current }) => {
                tracing::debug!(connector = %self.inner.name, ?current, "a newer token was stored meanwhile; keeping it there");
                None
            }
            Err(e) => {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.inner.name, error = %e, "could not write the token to the store; serving it from memory");
                None
            }
        };
        let token = self.token_from_record(record, generation, TokenSource::Minted);
        self.install(creds, token)
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
                .or_else(|| self.inner.config.api_domain.clone())
                .map(Arc::from),
            generation,
            source,
        }))
    }

    /// Makes `token` the connector's current one, unless the credentials changed meanwhile.
    pub(super) fn install(&self, creds: &Arc<Credentials>, token: AccessToken) -> AccessToken {
        if Arc::ptr_eq(&self.inner.creds.load(), creds) {
            self.inner.current.store(Some(Arc::clone(&token.0)));
        }
        token
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

/// The stored token a flight of `mode` may use instead of minting: a waiting caller takes any
/// valid one; a background refresh only a fresh one newer than the token it replaces (`floor` is
/// that token's refresh point); a caller asking for a minimum lifetime a fresh one that has it;
/// a forced refresh none.
fn acceptable(
    read: &StoreRead,
    mode: Mode,
    floor: EpochMillis,
    now: EpochMillis,
) -> Option<AccessToken> {
    match (mode, read) {
        (Mode::Wait, StoreRead::Fresh(t) | StoreRead::Stale(t)) => Some(t.clone()),
        (Mode::Background, StoreRead::Fresh(t)) if t.0.refresh_at > floor => Some(t.clone()),
        (Mode::Fresh(min), StoreRead::Fresh(t))
            if t.0.expires_at.saturating_sub(now) >= duration_millis(min) =>
        {
            Some(t.clone())
        }
        _ => None,
    }
}

enum LeaseWait {
    Token(AccessToken),
    Leased(Option<u64>),
    StoreFailed,
    Failed(Error),
}

/// Whether `e` is a refusal read from the shared health (see `shared_refusal`), not a new one.
pub(super) fn is_recorded(e: &Error) -> bool {
    matches!(e, Error::ReauthorizationRequired { code, .. } | Error::Throttled { code, .. } if code == "recorded")
}
