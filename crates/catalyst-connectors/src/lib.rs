//! # catalyst-connectors
//!
//! Always hold a valid OAuth access token for a Zoho service (CRM, WorkDrive, …), the way Zoho
//! Catalyst's connectors promise — without their stampedes and cache-key collisions.
//!
//! A [`Connection`] is a set of named connectors, configured like the official SDKs
//! (`{"crm": {"client_id", "client_secret", "auth_url", "refresh_url", "refresh_token"}}`).
//! [`Connector::access_token`] returns a valid token: from memory (a lock-free read), else from the
//! shared [`TokenStore`], else by minting one — once, however many callers ask at the same time.
//!
//! ```no_run
//! # async fn run() -> Result<(), catalyst_connectors::Error> {
//! use catalyst_connectors::{Connection, ConnectorConfig, DataCenter};
//!
//! let connection = Connection::builder()
//!     .connector(
//!         ConnectorConfig::builder("crm")
//!             .client_id("1000.XXXX")
//!             .client_secret(std::env::var("CRM_CLIENT_SECRET").unwrap_or_default())
//!             .refresh_token(std::env::var("CRM_REFRESH_TOKEN").unwrap_or_default())
//!             .data_center(DataCenter::Eu)
//!             .build()?,
//!     )
//!     .build()?;
//! let crm = connection.connector("crm")?;
//! let token = crm.access_token().await?;
//! // e.g. reqwest: .header("Authorization", token.authorization_header())
//! # let _ = token;
//! # Ok(()) }
//! ```
//!
//! Secrets (client secret, refresh token, access token, grant code) live in redacting types:
//! `Debug` and error messages never show them; [`ExposeSecret`] is the only way to read one.
#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: items behind a feature get a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod catalyst_js;
#[cfg(feature = "catalyst")]
pub mod catalyst_request;
mod clock;
mod config;
mod connection;
mod connector;
mod dc;
mod error;
#[cfg(test)]
mod fuzz;
mod governor;
#[cfg(feature = "testing")]
pub mod key;
#[cfg(not(feature = "testing"))]
mod key;
#[cfg(feature = "middleware")]
pub mod middleware;
mod oauth;
mod record;
pub mod rejection;
mod secret;
pub mod store;
pub mod urls;
pub mod users;

pub use clock::{
    Clock, EpochMillis, ManualClock, SystemClock, millis_to_system_time, system_time_to_millis,
};
pub use config::{CatalystSdk, ConfigErrors, ConfigIssue, ConnectorConfig, ConnectorConfigBuilder};
pub use connection::{Connection, ConnectionBuilder};
pub use connector::{
    AccessToken, CodeExchange, Connector, ConnectorStatus, FailureRecord, GeneratedTokens, Rekeyed,
    TokenSource, TokenState,
};
pub use dc::{DataCenter, UnknownDataCenter};
pub use error::{Error, ErrorKind, Result, RetryClass, TransientKind};
pub use record::{RecordError, TokenRecord};
pub use secret::{
    AccessTokenSecret, ClientSecret, ExposeSecret, GrantCode, RefreshToken, SdkSecretKey,
};
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{
    CasOutcome, EncryptedStore, EncryptionKey, EncryptionKeys, FallbackStore, MemoryStore,
    SpecError, StoreError, StoreErrorKind, StoreSpec, StoredValue, TokenStore, TokenWrite,
};
#[cfg(feature = "catalyst")]
pub use store::{
    CatalystAuth, CatalystCacheStore, CatalystCacheStoreBuilder, CatalystTokenProvider,
};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
