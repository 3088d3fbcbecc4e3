//! The token handed to callers ([`AccessToken`]).

use crate::clock::{EpochMillis, millis_to_system_time};
use crate::secret::{AccessTokenSecret, ExposeSecret};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// Read from the token store (written by this or another process).
    Store,
    /// Minted by this process.
    Minted,
}

pub(crate) struct TokenInner {
    pub(crate) secret: AccessTokenSecret,
    pub(crate) header: String,
    pub(crate) issued_at: Option<EpochMillis>,
    pub(crate) refresh_at: EpochMillis,
    pub(crate) expires_at: EpochMillis,
    pub(crate) api_domain: Option<Arc<str>>,
    pub(crate) generation: Option<u64>,
    pub(crate) source: TokenSource,
}

/// A valid access token. Cheap to clone (one reference count).
///
/// `Debug` never shows the token; read it with [`ExposeSecret::expose_secret`] or
/// [`authorization_header`](Self::authorization_header).
#[derive(Clone)]
pub struct AccessToken(pub(crate) Arc<TokenInner>);

impl AccessToken {
    /// The token as a redacting secret.
    pub fn secret(&self) -> &AccessTokenSecret {
        &self.0.secret
    }

    /// The value of the `Authorization` header Zoho APIs expect: `Zoho-oauthtoken <token>`.
    /// It contains the token: do not log it.
    pub fn authorization_header(&self) -> &str {
        &self.0.header
    }

    /// When the token stops working.
    pub fn expires_at(&self) -> SystemTime {
        millis_to_system_time(self.0.expires_at)
    }

    /// When the connector will mint a replacement.
    pub fn refresh_at(&self) -> SystemTime {
        millis_to_system_time(self.0.refresh_at)
    }

    /// When the token request was sent, if known (unknown for records written by the official SDKs).
    pub fn issued_at(&self) -> Option<SystemTime> {
        self.0.issued_at.map(millis_to_system_time)
    }

    /// The API domain to call with this token (from the token response, else the data centre's).
    pub fn api_domain(&self) -> Option<&str> {
        self.0.api_domain.as_deref()
    }

    /// Where this token came from.
    pub fn source(&self) -> TokenSource {
        self.0.source
    }

    /// The store generation of the record this token was read from or written to, if any.
    pub fn generation(&self) -> Option<u64> {
        self.0.generation
    }
}

impl ExposeSecret for AccessToken {
    fn expose_secret(&self) -> &str {
        self.0.secret.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.0.secret)
            .field("expires_at", &self.0.expires_at)
            .field("refresh_at", &self.0.refresh_at)
            .field("api_domain", &self.0.api_domain)
            .field("source", &self.0.source)
            .finish()
    }
}
