//! The credentials a connector mints with, and how they change: a code exchange, a refresh
//! token kept in the store, a revocation.

use super::{AccessToken, Connector};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::governor;
use crate::key;
use crate::oauth::Grant;
use crate::record::RefreshRecord;
use crate::secret::{ExposeSecret, GrantCode, RefreshToken};
use crate::store::looks_encrypted;
use std::sync::Arc;

/// Overrides for [`Connector::exchange_code`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CodeExchange {
    /// The token endpoint to exchange the code at (default: the connector's `auth_url`).
    pub token_url: Option<String>,
    /// The `redirect_uri` to send (default: the connector's `redirect_url`, if any).
    pub redirect_uri: Option<String>,
}

impl CodeExchange {
    /// Exchange at `token_url`.
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = Some(url.into());
        self
    }

    /// Send this `redirect_uri`.
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }
}

/// The result of [`Connector::generate_access_token`].
#[derive(Debug, Clone)]
pub struct GeneratedTokens {
    /// The access token minted by the exchange (already cached by the connector).
    pub access_token: AccessToken,
    /// The refresh token Zoho issued, if it issued one (`access_type=offline`). The connector uses
    /// it from now on; keep it to configure the connector next time.
    pub refresh_token: Option<RefreshToken>,
}

/// The credentials currently used to mint, and what derives from them.
pub(crate) struct Credentials {
    pub(super) refresh_token: Option<RefreshToken>,
    pub(super) key: String,
    pub(super) fingerprint: String,
    /// Where a refresh token obtained at run time is kept (independent of the refresh token).
    pub(super) refresh_key: String,
}

impl Credentials {
    /// Where the mint governor counts mints for this refresh token.
    pub(super) fn governor_key(&self) -> String {
        key::mints_key(&self.fingerprint)
    }

    pub(crate) fn new(
        name: &str,
        config: &ConnectorConfig,
        refresh_token: Option<RefreshToken>,
    ) -> Self {
        let rt = refresh_token
            .as_ref()
            .map(|t| t.expose_secret())
            .unwrap_or("");
        let key = key::sdk_key(
            name,
            &[
                rt,
                &config.client_id,
                config.client_secret.expose_secret(),
                &config.auth_url,
                &config.refresh_url,
                config.redirect_url.as_deref().unwrap_or(""),
            ],
        );
        let fingerprint = key::fingerprint(&config.client_id, rt, &config.refresh_url);
        let refresh_key = key::refresh_token_key(name, &config.client_id, &config.refresh_url);
        Self {
            refresh_token,
            key,
            fingerprint,
            refresh_key,
        }
    }
}

impl Connector {
    /// Exchanges an authorization (grant) code for tokens at `auth_url` (the `authorization_code`
    /// grant; `redirect_uri` is sent when the connector has a `redirect_url`, as server-based
    /// clients need, and omitted for Self Client codes). The refresh token returned becomes this
    /// connector's and is handed back to keep.
    pub async fn generate_access_token(&self, code: &GrantCode) -> Result<GeneratedTokens> {
        self.exchange_code(code, CodeExchange::default()).await
    }

    /// [`generate_access_token`](Self::generate_access_token) with overrides: the token endpoint
    /// of the data centre named in the redirect (`accounts-server`), and the `redirect_uri` the
    /// authorization request used.
    pub async fn exchange_code(
        &self,
        code: &GrantCode,
        with: CodeExchange,
    ) -> Result<GeneratedTokens> {
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        let issued_at = runtime.clock.now_millis();
        let token_url = with.token_url.as_deref().unwrap_or(&config.auth_url);
        let redirect_uri = with
            .redirect_uri
            .as_deref()
            .or(config.redirect_url.as_deref());
        let response = runtime
            .client
            .request(
                &self.inner.name,
                token_url,
                &config.client_id,
                &config.client_secret,
                Grant::Code { code, redirect_uri },
            )
            .await
            .inspect_err(
                |e| tracing::debug!(connector = %self.inner.name, error = %e, "code exchange failed"),
            )?;
        let refresh_token = response.refresh_token.clone();
        let creds = self.inner.creds.load_full();
        let expected = self.stored_generation(&creds).await;
        let access_token = self
            .save_minted(&creds, response, issued_at, expected)
            .await;
        // Zoho counts the access token of a code exchange like a refresh: so does the governor.
        let options = &runtime.options;
        if options.mint_limit > 0 {
            governor::record_mint(
                &*runtime.store,
                &self.inner.creds.load().governor_key(),
                issued_at,
                options.mint_window,
            )
            .await;
        }
        tracing::info!(connector = %self.inner.name, got_refresh_token = refresh_token.is_some(), "grant code exchanged");
        Ok(GeneratedTokens {
            access_token,
            refresh_token,
        })
    }

    /// Whether the token store holds a refresh token for this connector (obtained by a code
    /// exchange, e.g. `connector authorize`), whatever the config says. A refresh token in the
    /// config takes precedence over it.
    pub async fn has_stored_refresh_token(&self) -> bool {
        let key = self.inner.creds.load().refresh_key.clone();
        match self.inner.runtime.store.get(&key).await {
            Ok(Some(v)) => {
                RefreshRecord::parse(&v.data, &self.inner.config, self.inner.subject.as_deref())
                    .is_some()
            }
            _ => false,
        }
    }

    /// Whether a refresh token is available: configured, obtained in this process, or kept in
    /// the store.
    pub async fn has_refresh_token(&self) -> bool {
        self.resolve_credentials()
            .await
            .is_ok_and(|c| c.refresh_token.is_some())
    }

    /// Revokes the refresh token at Zoho (`{refresh_url}/revoke`; this also kills its access
    /// tokens) and forgets it and the token locally: in memory and in the store. A refresh token
    /// written in the connector's config cannot be removed from there: delete it yourself.
    pub async fn revoke(&self) -> Result<()> {
        let config = &self.inner.config;
        let runtime = &self.inner.runtime;
        let creds = self.resolve_credentials().await?;
        let Some(rt) = creds.refresh_token.clone() else {
            return Err(Error::MissingRefreshToken {
                connector: self.inner.name.clone(),
            });
        };
        let url = format!("{}/revoke", config.refresh_url.trim_end_matches('/'));
        runtime.client.revoke(&self.inner.name, &url, &rt).await?;
        self.inner.current.store(None);
        for key in [&creds.key, &creds.refresh_key] {
            if let Err(e) = runtime.store.delete(key, None).await {
                self.inner.metrics.store_errors.increment(1);
                tracing::warn!(connector = %self.inner.name, error = %e, "revoked at Zoho, but could not delete the local record");
            }
        }
        let forgotten = Arc::new(Credentials::new(&self.inner.name, config, None));
        self.inner.creds.store(forgotten);
        tracing::info!(connector = %self.inner.name, "refresh token revoked");
        Ok(())
    }

    /// The credentials to mint with: the configured refresh token, else one kept in the store
    /// (obtained earlier by a code exchange, possibly by another process).
    pub(super) async fn resolve_credentials(&self) -> Result<Arc<Credentials>> {
        let creds = self.inner.creds.load_full();
        if creds.refresh_token.is_some() {
            return Ok(creds);
        }
        let name = &self.inner.name;
        let missing = || Error::MissingRefreshToken {
            connector: name.clone(),
        };
        let stored = match self.inner.runtime.store.get(&creds.refresh_key).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(missing()),
            Err(e) => {
                if let Some(problem) = self.key_problem(&e) {
                    return Err(problem);
                }
                self.inner.metrics.store_errors.increment(1);
                tracing::debug!(connector = %name, error = %e, "cannot read the stored refresh token");
                // The store is down, not empty: a transient failure naming the store.
                return Err(Error::Store {
                    connector: name.clone(),
                    source: e,
                });
            }
        };
        if looks_encrypted(&stored.data) {
            return Err(self.no_key_error());
        }
        let Some(rt) = RefreshRecord::parse(
            &stored.data,
            &self.inner.config,
            self.inner.subject.as_deref(),
        ) else {
            tracing::warn!(connector = %name, "ignoring a stored refresh token that is damaged or belongs to other credentials");
            return Err(missing());
        };
        tracing::debug!(connector = %name, "using the refresh token kept in the store");
        let fresh = Arc::new(Credentials::new(
            &self.inner.name,
            &self.inner.config,
            Some(rt),
        ));
        // Only replace credentials nobody changed meanwhile.
        let previous = self
            .inner
            .creds
            .compare_and_swap(&creds, Arc::clone(&fresh));
        if Arc::ptr_eq(&*previous, &creds) {
            Ok(fresh)
        } else {
            Ok(self.inner.creds.load_full())
        }
    }
}
