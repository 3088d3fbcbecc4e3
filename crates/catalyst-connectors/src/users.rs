//! Per-user connectors ([`Connector::for_user`]) and connecting your users' Zoho accounts from a
//! web app: the server-based consent flow, per user.
//!
//! ```no_run
//! # async fn run(connection: catalyst_connectors::Connection) -> Result<(), catalyst_connectors::Error> {
//! use catalyst_connectors::users::{ConsentFlow, StateKey};
//! let flow = ConsentFlow::new(
//!     connection.connector("crm")?,                 // the template
//!     "https://app.example.com/zoho/callback",      // registered with the client
//!     StateKey::generate(),                         // keep one per deployment to verify across hosts
//! );
//! // 1. "Connect your Zoho account": send the browser to the consent page.
//! let start = flow.start("user-42", &["ZohoCRM.users.READ"])?;
//! // … redirect to start.url …
//! // 2. On the callback (`code`, `state`, `accounts-server` query parameters):
//! # let (code, state, server) = (String::new(), String::new(), None::<String>);
//! let (user, crm) = flow.complete(&state, &code.into(), server.as_deref()).await?;
//! // 3. Later, anywhere: the user's own token.
//! let token = connection.connector("crm")?.for_user(&user)?.access_token().await?;
//! # let _ = (crm, token); Ok(()) }
//! ```
//!
//! The `state` is bound to the user and the template, signed (HMAC-SHA256 with the
//! [`StateKey`]), valid 10 minutes, and usable once: its nonce is recorded in the token store, so a
//! replay is refused even on another host sharing the store.

use crate::Connector;
use crate::clock::{duration_millis, until};
use crate::connector::CodeExchange;
use crate::error::{Error, Result};
use crate::secret::GrantCode;
use crate::store::{CasOutcome, TokenWrite};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

/// The key that signs consent states. `Debug` never shows it.
pub struct StateKey(SecretBox<[u8; 32]>);

impl StateKey {
    /// A key from 32 bytes (e.g. from your secret manager), the same on every host.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A random key: states then verify only in this process.
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }
}

impl Clone for StateKey {
    fn clone(&self) -> Self {
        Self::from_bytes(*self.0.expose_secret())
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey([redacted])")
    }
}

/// Where to send the user's browser, and the state it carries.
#[derive(Debug, Clone)]
pub struct ConsentStart {
    /// The consent URL.
    pub url: String,
    /// The signed state (also in `url`).
    pub state: String,
}

/// The per-user server-based flow for one template connector.
#[derive(Debug)]
pub struct ConsentFlow {
    template: Connector,
    redirect_uri: String,
    key: StateKey,
    ttl: Duration,
}

const STATE_TTL: Duration = Duration::from_secs(600);

impl ConsentFlow {
    /// A flow for `template`'s users, redirecting to `redirect_uri`.
    pub fn new(template: Connector, redirect_uri: impl Into<String>, key: StateKey) -> Self {
        Self {
            template,
            redirect_uri: redirect_uri.into(),
            key,
            ttl: STATE_TTL,
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(payload.as_bytes());
        mac
    }

    fn refused(&self, reason: &'static str) -> Error {
        Error::InvalidState {
            connector: self.template.name().to_owned(),
            reason,
        }
    }

    /// The consent URL for `user_id`: `{accounts}/oauth/v2/auth` with the scopes,
    /// `access_type=offline`, `prompt=consent`, the redirect URI and a signed state.
    pub fn start(&self, user_id: &str, scopes: &[&str]) -> Result<ConsentStart> {
        if user_id.is_empty() {
            return Err(Error::InvalidUser {
                connector: self.template.name().to_owned(),
                reason: "the user id is empty".into(),
            });
        }
        let expires = self.template.runtime().clock.now_millis() + duration_millis(self.ttl);
        let payload = serde_json::json!({
            "c": self.template.name(),
            "u": user_id,
            "e": expires,
            "n": format!("{:032x}", rand::random::<u128>()),
        })
        .to_string();
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        let state = format!("{payload}.{tag}");
        let config = self.template.config();
        let url = crate::urls::consent_url(
            config.auth_url(),
            config.client_id(),
            &scopes.join(","),
            &self.redirect_uri,
            &state,
        )
        .map_err(|e| Error::InvalidUser {
            connector: self.template.name().to_owned(),
            reason: format!("cannot build the consent URL from auth_url: {e}"),
        })?;
        Ok(ConsentStart {
            url: url.into(),
            state,
        })
    }

    /// Verifies `state` (signature, template, expiry, single use) and returns its user id.
    pub(crate) async fn verify(&self, state: &str) -> Result<String> {
        let (payload, tag) = state
            .split_once('.')
            .ok_or_else(|| self.refused("malformed"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| self.refused("malformed"))?;
        self.mac(payload)
            .verify_slice(&tag)
            .map_err(|_| self.refused("bad signature"))?;
        let json: serde_json::Value = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| self.refused("malformed"))?;
        let field = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        if field("c").as_deref() != Some(self.template.name()) {
            return Err(self.refused("issued for another connector"));
        }
        let expires = json
            .get("e")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let runtime = self.template.runtime();
        if runtime.clock.now_millis() >= expires {
            return Err(self.refused("expired"));
        }
        let user = field("u")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| self.refused("malformed"))?;
        let nonce = field("n")
            .filter(|n| n.len() == 32)
            .ok_or_else(|| self.refused("malformed"))?;
        // Single use: the first completion records the nonce; a replay finds it.
        let key = format!("ZC_CONN_state:{nonce}");
        let ttl = until(runtime.clock.now_millis(), expires, Duration::from_secs(1));
        match runtime
            .store
            .compare_and_set(TokenWrite::new(&key, None, "used", ttl))
            .await
        {
            Ok(CasOutcome::Written { .. }) => Ok(user),
            Ok(CasOutcome::Conflict { .. }) => Err(self.refused("already used")),
            Err(source) => Err(Error::Store {
                connector: self.template.name().to_owned(),
                source,
            }),
        }
    }

    /// Completes the flow from the redirect's `state`, `code` and `accounts-server`: verifies the
    /// state, exchanges the code (at the data centre the redirect names, if it is a Zoho one or
    /// the configured one), and stores that user's refresh token (encrypted when the connection
    /// has a key). Returns the user id and the user's connector.
    pub async fn complete(
        &self,
        state: &str,
        code: &GrantCode,
        accounts_server: Option<&str>,
    ) -> Result<(String, Connector)> {
        let user = self.verify(state).await?;
        let connector = self.exchange_for(&user, code, accounts_server).await?;
        Ok((user, connector))
    }

    fn token_url_for(&self, server: &str) -> Result<String> {
        crate::urls::exchange_url_for(self.template.config().auth_url(), server).ok_or_else(|| {
            Error::InvalidUser {
                connector: self.template.name().to_owned(),
                reason:
                    "the redirect named an unknown accounts-server; the code was not sent there"
                        .into(),
            }
        })
    }

    /// [`complete`](Self::complete) for a user the caller already knows (e.g. from the URL it
    /// was called at): a state issued for another user is refused before the code is
    /// exchanged.
    pub async fn complete_for_user(
        &self,
        user_id: &str,
        state: &str,
        code: &GrantCode,
        accounts_server: Option<&str>,
    ) -> Result<Connector> {
        let user = self.verify(state).await?;
        if user != user_id {
            return Err(self.refused("issued for another user"));
        }
        self.exchange_for(&user, code, accounts_server).await
    }

    async fn exchange_for(
        &self,
        user: &str,
        code: &GrantCode,
        accounts_server: Option<&str>,
    ) -> Result<Connector> {
        let mut with = CodeExchange::default().redirect_uri(self.redirect_uri.clone());
        if let Some(server) = accounts_server {
            with = with.token_url(self.token_url_for(server)?);
        }
        let connector = self.template.for_user(user)?;
        let generated = connector.exchange_code(code, with).await?;
        if generated.refresh_token.is_none() {
            return Err(Error::InvalidUser {
                connector: connector.name().to_owned(),
                reason: "Zoho returned no refresh token: the consent needs access_type=offline and prompt=consent".into(),
            });
        }
        Ok(connector)
    }

    /// Revokes `user_id`'s refresh token at Zoho and deletes their records locally.
    pub async fn disconnect(&self, user_id: &str) -> Result<()> {
        self.template.disconnect_user(user_id).await
    }
}
