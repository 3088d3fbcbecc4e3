//! How an acquisition's credentials change: a code exchange, a refresh token kept in the store
//! (obtained earlier, possibly by another process), a revocation.

use super::acquire::{Acquisition, Got};
use super::credentials::{CodeExchange, Credentials};
use crate::error::{Error, Result};
use crate::oauth::Grant;
use crate::record::RefreshRecord;
use crate::secret::ExposeSecret as _;
use crate::secret::{GrantCode, RefreshToken};
use crate::store::StoreErrorKind;
use std::sync::Arc;

impl Acquisition {
    /// Exchanges a grant code for tokens; the refresh token returned becomes the acquisition's.
    /// Returns the access token minted and the refresh token, if Zoho issued one.
    pub(crate) async fn exchange_code(
        &self,
        code: &GrantCode,
        with: CodeExchange,
    ) -> Result<(Got, Option<RefreshToken>)> {
        let config = &self.config;
        let issued_at = self.runtime.clock.now_millis();
        let token_url = with.token_url.as_deref().unwrap_or(&config.auth_url);
        let redirect_uri = with
            .redirect_uri
            .as_deref()
            .or(config.redirect_url.as_deref());
        let response = self
            .runtime
            .client
            .request(
                &self.name,
                token_url,
                &config.client_id,
                &config.client_secret,
                Grant::Code { code, redirect_uri },
            )
            .await
            .inspect_err(
                |e| tracing::debug!(connector = %self.name, error = %e, "code exchange failed"),
            )?;
        let refresh_token = response.refresh_token.clone();
        let creds = self.creds();
        let expected = self.stored_generation(&creds).await;
        let got = self
            .save_minted(&creds, response, issued_at, expected)
            .await;
        // Zoho counts the access token of a code exchange like a refresh: so does the governor.
        self.governor()
            .record(
                &*self.runtime.store,
                &self.creds().governor_key(),
                issued_at,
            )
            .await;
        tracing::info!(connector = %self.name, got_refresh_token = refresh_token.is_some(), "grant code exchanged");
        Ok((got, refresh_token))
    }

    /// Follows a refresh token kept in the store that another process replaced (an exchange,
    /// an authorization) or removed (a revocation): the acquisition's credentials become the
    /// stored ones. Returns whether they changed. A refresh token in the config is not followed.
    pub(crate) async fn follow_stored_refresh_token(&self) -> bool {
        if self.config.has_refresh_token() {
            return false;
        }
        let creds = self.creds();
        let stored = match self.runtime.store.get(&creds.refresh_key).await {
            Ok(Some(v)) => RefreshRecord::parse(&v.data, &self.config, self.subject.as_deref()),
            Ok(None) => None,
            Err(_) => return false, // unreachable or unreadable: nothing to follow
        };
        if stored == creds.refresh_token {
            return false;
        }
        tracing::info!(connector = %self.name, "the stored refresh token changed in another process; following it");
        self.set_creds(Arc::new(Credentials::new(&self.name, &self.config, stored)));
        true
    }

    /// Whether the token store holds a refresh token for this connector.
    pub(crate) async fn has_stored_refresh_token(&self) -> bool {
        let key = self.creds().refresh_key.clone();
        match self.runtime.store.get(&key).await {
            Ok(Some(v)) => {
                RefreshRecord::parse(&v.data, &self.config, self.subject.as_deref()).is_some()
            }
            _ => false,
        }
    }

    /// Revokes the refresh token at Zoho and deletes its records from the store; the
    /// acquisition forgets it.
    pub(crate) async fn revoke(&self) -> Result<()> {
        let creds = self.resolve_credentials().await?;
        let Some(rt) = creds.refresh_token.clone() else {
            return Err(Error::MissingRefreshToken {
                connector: self.name.clone(),
            });
        };
        let url = format!("{}/revoke", self.config.refresh_url.trim_end_matches('/'));
        self.runtime.client.revoke(&self.name, &url, &rt).await?;
        // Only what belongs to the refresh token just revoked is deleted, each record at the
        // generation read (another process's newer write stays): a stored refresh token that is
        // another one — another project's `exchange`, still live at Zoho — is left alone.
        let same_refresh_token = |data: &str| {
            RefreshRecord::parse(data, &self.config, self.subject.as_deref())
                .is_some_and(|stored| stored.expose_secret() == rt.expose_secret())
        };
        let minted_with_it = |data: &str| {
            crate::record::TokenRecord::from_json(data).is_ok_and(|r| {
                r.fingerprint
                    .as_deref()
                    .is_none_or(|f| f == creds.fingerprint)
            })
        };
        for deleted in [
            self.delete_if(&creds.refresh_key, same_refresh_token).await,
            self.delete_if(&creds.key, minted_with_it).await,
        ] {
            if let Err(e) = deleted {
                self.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.name, error = %e, "revoked at Zoho, but could not delete the local record");
            }
        }
        self.set_creds(Arc::new(Credentials::new(&self.name, &self.config, None)));
        tracing::info!(connector = %self.name, "refresh token revoked");
        Ok(())
    }

    /// Deletes the record at `key` if `is_mine` says its data is ours, at the generation read.
    async fn delete_if(
        &self,
        key: &str,
        is_mine: impl Fn(&str) -> bool,
    ) -> std::result::Result<bool, crate::store::StoreError> {
        match self.runtime.store.get(key).await? {
            Some(v) if is_mine(&v.data) => self.runtime.store.delete(key, Some(v.generation)).await,
            _ => Ok(false),
        }
    }

    /// The credentials to mint with: the configured refresh token, else one kept in the store
    /// (obtained earlier by a code exchange, possibly by another process).
    pub(crate) async fn resolve_credentials(&self) -> Result<Arc<Credentials>> {
        let creds = self.creds();
        if creds.refresh_token.is_some() {
            return Ok(creds);
        }
        let missing = || Error::MissingRefreshToken {
            connector: self.name.clone(),
        };
        let stored = match self.runtime.store.get(&creds.refresh_key).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(missing()),
            Err(e) => {
                if let Some(problem) = self.store_problem(&e) {
                    return Err(problem);
                }
                if let StoreErrorKind::Damaged { .. } = e.kind {
                    tracing::warn!(connector = %self.name, error = %e, "ignoring a damaged stored refresh token");
                    return Err(missing());
                }
                self.metrics.store_errors.increment(1);
                tracing::debug!(connector = %self.name, error = %e, "cannot read the stored refresh token");
                // The store is down, not empty: a transient failure naming the store.
                return Err(Error::Store {
                    connector: self.name.clone(),
                    source: e,
                });
            }
        };
        let Some(rt) = RefreshRecord::parse(&stored.data, &self.config, self.subject.as_deref())
        else {
            tracing::warn!(connector = %self.name, "ignoring a stored refresh token that is damaged or belongs to other credentials");
            return Err(missing());
        };
        tracing::debug!(connector = %self.name, "using the refresh token kept in the store");
        let fresh = Arc::new(Credentials::new(&self.name, &self.config, Some(rt)));
        // Only replace credentials nobody changed meanwhile.
        Ok(self.swap_creds(&creds, fresh))
    }

    /// Remembers a token an API rejected: until the next one is minted, a store read that finds
    /// it (still there: this process's delete has not landed yet, or another process wrote it
    /// back) is a miss — so however many callers saw the 401, none is handed that token again.
    pub(crate) fn reject(&self, secret: &str) {
        self.rejected.store(Some(Arc::new(rejected_digest(secret))));
    }

    pub(super) fn was_rejected(&self, secret: &str) -> bool {
        self.rejected
            .load()
            .as_deref()
            .is_some_and(|d| *d == rejected_digest(secret))
    }
}

/// What is kept of a rejected token: a digest, never the token.
fn rejected_digest(secret: &str) -> String {
    use sha2::Digest as _;
    crate::key::to_hex(&sha2::Sha256::digest(secret.as_bytes()))
}
