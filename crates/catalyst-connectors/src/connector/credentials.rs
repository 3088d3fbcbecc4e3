//! The credentials a connector mints with, and the store keys that derive from them.

use super::token::AccessToken;
use crate::config::{CatalystSdk, ConnectorConfig};
use crate::key;
use crate::secret::{ExposeSecret, RefreshToken};

/// Overrides for [`Connector::exchange_code`](crate::Connector::exchange_code).
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

/// The result of [`Connector::generate_access_token`](crate::Connector::generate_access_token).
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

    /// Where the mints of this refresh token that only a `min_ttl` forced are counted.
    pub(super) fn forced_governor_key(&self) -> String {
        key::forced_mints_key(&self.fingerprint)
    }

    /// Where this refresh token's shared health is kept.
    pub(super) fn health_key(&self) -> String {
        key::health_key(&self.fingerprint)
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
        let key = match config.catalyst_sdk {
            CatalystSdk::NodeV3 => key::sdk_key(
                name,
                &[
                    rt,
                    &config.client_id,
                    config.client_secret.expose_secret(),
                    &config.auth_url,
                    &config.refresh_url,
                    config.redirect_url.as_deref().unwrap_or(""),
                ],
            ),
            CatalystSdk::Js => key::js_sdk_key(name),
        };
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
