//! The crate's typed errors. Every message names the connector, says what failed and what to do;
//! none ever contains a secret.

use crate::config::ConfigErrors;
use crate::store::StoreError;
use std::time::Duration;

/// Why a transient failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransientKind {
    /// The token endpoint could not be reached (DNS, connect, reset).
    Network,
    /// The request did not complete within the configured timeout.
    Timeout,
    /// The endpoint answered with a server error (5xx).
    ServerError(u16),
}

impl std::fmt::Display for TransientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Network => f.write_str("network error"),
            Self::Timeout => f.write_str("timed out"),
            Self::ServerError(s) => write!(f, "HTTP {s}"),
        }
    }
}

/// Errors returned by connections and connectors.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; every problem is listed.
    #[error(transparent)]
    Config(#[from] ConfigErrors),

    /// No connector of that name exists in the connection.
    #[error("no connector named `{name}` in this connection (configured: {known})")]
    UnknownConnector {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },

    /// The connector has no refresh token yet.
    #[error(
        "connector `{connector}` has no refresh token: set `refresh_token` in its config, or authorize the connector (a grant-code exchange keeps the refresh token in the token store)"
    )]
    MissingRefreshToken {
        /// The connector.
        connector: String,
    },

    /// The refresh token or grant code was rejected: a person must authorize again.
    #[error(
        "connector `{connector}`: the token endpoint rejected the {grant} ({code}{}): re-authorize connector `{connector}`",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    ReauthorizationRequired {
        /// The connector.
        connector: String,
        /// Which credential was rejected: "refresh token" or "grant code".
        grant: &'static str,
        /// Zoho's error code, e.g. `invalid_code`.
        code: String,
        /// Zoho's description, if any.
        description: Option<String>,
        /// Read from the shared health: another process (or an earlier run) got this refusal,
        /// and nobody asks Zoho again before it passes.
        recorded: bool,
    },

    /// The client configuration is wrong (client id, secret, redirect URL or data centre).
    #[error(
        "connector `{connector}`: the token endpoint rejected the client ({code}{}): check client_id, client_secret, redirect_url and the data centre in its config",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    InvalidClient {
        /// The connector.
        connector: String,
        /// Zoho's error code, e.g. `invalid_client_secret`.
        code: String,
        /// Zoho's description, if any.
        description: Option<String>,
    },

    /// Zoho is throttling token requests for this refresh token.
    #[error(
        "connector `{connector}`: token requests are throttled ({code}{}): wait{} and reuse the tokens you have",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(),
        retry_after.map(|d| format!(" {}s", d.as_secs())).unwrap_or_else(|| " for Zoho's 10-minute window".into())
    )]
    Throttled {
        /// The connector.
        connector: String,
        /// Zoho's error code (`Access Denied`, `access_denied`) or `HTTP 429`.
        code: String,
        /// Zoho's description, if any.
        description: Option<String>,
        /// How long to wait, when known.
        retry_after: Option<Duration>,
        /// Read from the shared health: another process (or an earlier run) was refused, and
        /// nobody asks Zoho again before its window passes.
        recorded: bool,
    },

    /// A failure that may pass: network error, timeout, server error.
    #[error("connector `{connector}`: token endpoint failed ({kind}): {detail}; retry later")]
    Transient {
        /// The connector.
        connector: String,
        /// What kind of failure.
        kind: TransientKind,
        /// A description without secrets.
        detail: String,
    },

    /// The token endpoint's TLS certificate was refused.
    #[error(
        "connector `{connector}`: the token endpoint's TLS certificate was refused ({detail}); check the token URL in its config (and any proxy in between)"
    )]
    Tls {
        /// The connector.
        connector: String,
        /// What the TLS layer said.
        detail: String,
    },

    /// The token endpoint answered something that is not a valid token response.
    #[error(
        "connector `{connector}`: unexpected answer from the token endpoint: {detail}; check that the token URL points at Zoho Accounts"
    )]
    MalformedResponse {
        /// The connector.
        connector: String,
        /// What was wrong, never the body itself.
        detail: String,
    },

    /// The token endpoint refused the request with an error code we do not recognise.
    #[error(
        "connector `{connector}`: the token endpoint refused the request ({code}{}); check the connector's config",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Rejected {
        /// The connector.
        connector: String,
        /// The provider's error code.
        code: String,
        /// The provider's description, if any.
        description: Option<String>,
    },

    /// The token store failed in a way the connector could not work around.
    #[error("connector `{connector}`: token store failed: {source}")]
    Store {
        /// The connector.
        connector: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },

    /// A stored record cannot be read with the configured encryption key (another key wrote it,
    /// or no key is set). It is never overwritten.
    #[error("connector `{connector}`: {detail}")]
    EncryptionKey {
        /// The connector.
        connector: String,
        /// What is wrong, never a key.
        detail: String,
    },

    /// A token in Catalyst Cache is encrypted by the modular JS SDK and this connector has no
    /// `secret_key` to open it (`catalyst_sdk = "js"`). It is never overwritten.
    #[error(
        "connector `{connector}`: {detail}; set `secret_key` in its config to the one the Catalyst JS SDK functions sharing this cache use"
    )]
    SdkSecretKey {
        /// The connector.
        connector: String,
        /// What is wrong, never a key.
        detail: String,
    },

    /// The token endpoint issues tokens that cannot live as long as the caller asked.
    #[error(
        "connector `{connector}`: a token valid for {}s was asked for, but this endpoint's tokens live about {}s; ask for less",
        wanted.as_secs(),
        lifetime.as_secs()
    )]
    LifetimeTooShort {
        /// The connector.
        connector: String,
        /// The minimum lifetime asked for.
        wanted: Duration,
        /// What a fresh token had left.
        lifetime: Duration,
    },

    /// No valid token could be obtained within the wait deadline.
    #[error(
        "connector `{connector}`: no valid token within {}s (the token endpoint is slow or unreachable); retry later",
        deadline.as_secs_f32()
    )]
    DeadlineExceeded {
        /// The connector.
        connector: String,
        /// The deadline that passed.
        deadline: Duration,
    },

    /// A per-user connector could not be made or used.
    #[error("connector `{connector}`: {reason}")]
    InvalidUser {
        /// The connector (template).
        connector: String,
        /// What is wrong.
        reason: String,
    },

    /// A consent `state` was refused: forged, expired, replayed, or for another connector.
    #[error(
        "connector `{connector}`: the consent state was refused ({reason}); start the connection again"
    )]
    InvalidState {
        /// The connector (template).
        connector: String,
        /// Why.
        reason: &'static str,
    },

    /// The token store could not be opened.
    #[error("cannot open the token store: {0}")]
    StoreOpen(#[source] StoreError),

    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client for token requests: {0}")]
    HttpClient(String),
}

/// When a failed refresh may be tried again: what the connector's retries, backoff and negative
/// cache follow ([`Error::retry_class`], derived from [`ErrorKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryClass {
    /// Nothing was asked of Zoho (no refresh token yet): try again as soon as asked, since one
    /// may arrive in the store at any time.
    Immediate,
    /// May pass on its own (network, timeout, 5xx, the store, the wait deadline, an answer that
    /// is not a token response): retried a few times at once by a waiting caller, then with
    /// exponential backoff and full jitter.
    Backoff,
    /// Zoho (or our governor) is throttling: retry when its window frees.
    Window,
    /// Needs a change by a person (configuration, revoked refresh token, an unknown refusal): the
    /// error is remembered for the negative-cache TTL and not retried meanwhile.
    Permanent,
}

/// What kind of failure an [`Error`] is: the one classification every consumer derives its own
/// answer from, each by one table — the retry schedule ([`ErrorKind::retry_class`]), what the
/// shared health records ([`ErrorKind::is_credentials_health`]), the CLI's exit code and the
/// agent's HTTP status. [`ErrorKind::code`] is its stable name; [`ErrorKind::from_code`] reads one
/// back (from the shared health or the agent's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Config`].
    Config,
    /// [`Error::UnknownConnector`].
    UnknownConnector,
    /// [`Error::MissingRefreshToken`].
    MissingRefreshToken,
    /// [`Error::ReauthorizationRequired`].
    ReauthorizationRequired,
    /// [`Error::InvalidClient`].
    InvalidClient,
    /// [`Error::Throttled`].
    Throttled,
    /// [`Error::Transient`].
    Transient,
    /// [`Error::Tls`].
    Tls,
    /// [`Error::MalformedResponse`].
    MalformedResponse,
    /// [`Error::Rejected`].
    Rejected,
    /// [`Error::Store`].
    Store,
    /// [`Error::EncryptionKey`].
    EncryptionKey,
    /// [`Error::SdkSecretKey`].
    SdkSecretKey,
    /// [`Error::LifetimeTooShort`].
    LifetimeTooShort,
    /// [`Error::DeadlineExceeded`].
    DeadlineExceeded,
    /// [`Error::InvalidUser`].
    InvalidUser,
    /// [`Error::InvalidState`].
    InvalidState,
    /// [`Error::StoreOpen`].
    StoreOpen,
    /// [`Error::HttpClient`].
    HttpClient,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 19] = [
        Self::Config,
        Self::UnknownConnector,
        Self::MissingRefreshToken,
        Self::ReauthorizationRequired,
        Self::InvalidClient,
        Self::Throttled,
        Self::Transient,
        Self::Tls,
        Self::MalformedResponse,
        Self::Rejected,
        Self::Store,
        Self::EncryptionKey,
        Self::SdkSecretKey,
        Self::LifetimeTooShort,
        Self::DeadlineExceeded,
        Self::InvalidUser,
        Self::InvalidState,
        Self::StoreOpen,
        Self::HttpClient,
    ];

    /// The stable, machine-readable name: `config`, `unknown_connector`,
    /// `missing_refresh_token`, `reauthorization_required`, `invalid_client`, `throttled`,
    /// `transient`, `tls`, `malformed_response`, `rejected`, `store`, `encryption_key`,
    /// `sdk_secret_key`, `lifetime_too_short`, `deadline_exceeded`, `invalid_user`,
    /// `invalid_state`, `store_open`, `http_client`.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::UnknownConnector => "unknown_connector",
            Self::MissingRefreshToken => "missing_refresh_token",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::InvalidClient => "invalid_client",
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::Tls => "tls",
            Self::MalformedResponse => "malformed_response",
            Self::Rejected => "rejected",
            Self::Store => "store",
            Self::EncryptionKey => "encryption_key",
            Self::SdkSecretKey => "sdk_secret_key",
            Self::LifetimeTooShort => "lifetime_too_short",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::InvalidUser => "invalid_user",
            Self::InvalidState => "invalid_state",
            Self::StoreOpen => "store_open",
            Self::HttpClient => "http_client",
        }
    }

    /// The kind named `code` (see [`code`](Self::code)), if any.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// When a refresh that failed with this kind may be tried again.
    pub const fn retry_class(self) -> RetryClass {
        match self {
            Self::MissingRefreshToken => RetryClass::Immediate,
            Self::Transient | Self::MalformedResponse | Self::Store | Self::DeadlineExceeded => {
                RetryClass::Backoff
            }
            Self::Throttled => RetryClass::Window,
            _ => RetryClass::Permanent,
        }
    }

    /// Whether a failure of this kind is what the token endpoint said about the credentials, and
    /// so belongs in their shared health for every process to see. A key, store or
    /// configuration problem is the process's own (and would hide the others' record).
    pub const fn is_credentials_health(self) -> bool {
        matches!(
            self,
            Self::ReauthorizationRequired
                | Self::InvalidClient
                | Self::Throttled
                | Self::Transient
                | Self::Tls
                | Self::MalformedResponse
                | Self::Rejected
        )
    }

    /// Whether a waiting caller retries this kind at once, a few times: it may pass on its own
    /// and Zoho did not count it (an answer that is not a token response may have been minted
    /// and counted: retrying would mint again).
    pub const fn is_retried_at_once(self) -> bool {
        matches!(self.retry_class(), RetryClass::Backoff)
            && !matches!(self, Self::MalformedResponse)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Error {
    /// What kind of failure this is: the one classification (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) => ErrorKind::Config,
            Self::UnknownConnector { .. } => ErrorKind::UnknownConnector,
            Self::MissingRefreshToken { .. } => ErrorKind::MissingRefreshToken,
            Self::ReauthorizationRequired { .. } => ErrorKind::ReauthorizationRequired,
            Self::InvalidClient { .. } => ErrorKind::InvalidClient,
            Self::Throttled { .. } => ErrorKind::Throttled,
            Self::Transient { .. } => ErrorKind::Transient,
            Self::Tls { .. } => ErrorKind::Tls,
            Self::MalformedResponse { .. } => ErrorKind::MalformedResponse,
            Self::Rejected { .. } => ErrorKind::Rejected,
            Self::Store { .. } => ErrorKind::Store,
            Self::EncryptionKey { .. } => ErrorKind::EncryptionKey,
            Self::SdkSecretKey { .. } => ErrorKind::SdkSecretKey,
            Self::LifetimeTooShort { .. } => ErrorKind::LifetimeTooShort,
            Self::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Self::InvalidUser { .. } => ErrorKind::InvalidUser,
            Self::InvalidState { .. } => ErrorKind::InvalidState,
            Self::StoreOpen(_) => ErrorKind::StoreOpen,
            Self::HttpClient(_) => ErrorKind::HttpClient,
        }
    }

    /// When a refresh that failed with this error may be tried again ([`ErrorKind::retry_class`]).
    pub fn retry_class(&self) -> RetryClass {
        self.kind().retry_class()
    }

    /// Whether retrying later may succeed without anyone changing anything: the
    /// [`Backoff`](RetryClass::Backoff) and [`Window`](RetryClass::Window) classes, except an
    /// answer that is not a token response (retried in case it was a passing fault, but it
    /// usually means the token URL is wrong).
    pub fn is_transient(&self) -> bool {
        matches!(self.retry_class(), RetryClass::Backoff | RetryClass::Window)
            && self.kind() != ErrorKind::MalformedResponse
    }

    /// The stable, machine-readable name of the error's kind ([`ErrorKind::code`]).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// Whether this refusal was read from the shared health (another process, or an earlier
    /// run, was refused) rather than answered by Zoho to this process.
    pub fn is_recorded(&self) -> bool {
        matches!(
            self,
            Self::ReauthorizationRequired { recorded: true, .. }
                | Self::Throttled { recorded: true, .. }
        )
    }

    /// What Zoho said, when it said it: its error code and description.
    pub(crate) fn zoho_details(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::ReauthorizationRequired {
                code, description, ..
            }
            | Self::InvalidClient {
                code, description, ..
            }
            | Self::Throttled {
                code, description, ..
            }
            | Self::Rejected {
                code, description, ..
            } => (Some(code), description.as_deref()),
            _ => (None, None),
        }
    }

    /// The connector the error is about, when it is about one.
    pub fn connector(&self) -> Option<&str> {
        match self {
            Self::UnknownConnector { name, .. } => Some(name),
            Self::MissingRefreshToken { connector }
            | Self::ReauthorizationRequired { connector, .. }
            | Self::InvalidClient { connector, .. }
            | Self::Throttled { connector, .. }
            | Self::Transient { connector, .. }
            | Self::Tls { connector, .. }
            | Self::MalformedResponse { connector, .. }
            | Self::Rejected { connector, .. }
            | Self::Store { connector, .. }
            | Self::EncryptionKey { connector, .. }
            | Self::SdkSecretKey { connector, .. }
            | Self::LifetimeTooShort { connector, .. }
            | Self::DeadlineExceeded { connector, .. }
            | Self::InvalidUser { connector, .. }
            | Self::InvalidState { connector, .. } => Some(connector),
            Self::Config(_) | Self::StoreOpen(_) | Self::HttpClient(_) => None,
        }
    }

    /// Whether a person must authorize the connector again.
    pub fn needs_reauthorization(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::ReauthorizationRequired | ErrorKind::MissingRefreshToken
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_code() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code("recorded"), None);
    }
}
