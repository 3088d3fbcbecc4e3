//! Token stores: where minted tokens are shared between connector clones, processes and hosts.
//!
//! A store keeps opaque string records under keys, each with a **generation** number so that a
//! late writer cannot overwrite a newer token (every write is a compare-and-set on the generation),
//! and offers a **lease**: a named, expiring right to mint, so that among many processes sharing a
//! store only one asks the token endpoint. Records are JSON ([`TokenRecord`](crate::TokenRecord)) in the official SDKs'
//! format; stores never interpret them.

#[cfg(feature = "catalyst")]
pub(crate) mod catalyst;
#[cfg(feature = "testing")]
pub mod conformance;
mod encrypted;
mod fallback;
mod keys;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod spec;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
pub use self::redis::{DEFAULT_PREFIX as REDIS_DEFAULT_PREFIX, RedisStore, RedisStoreBuilder};
#[cfg(feature = "catalyst")]
pub use catalyst::{
    CatalystAuth, CatalystCacheStore, CatalystCacheStoreBuilder, CatalystTokenProvider,
};
pub use encrypted::EncryptedStore;
pub(crate) use encrypted::with_key;
pub use fallback::FallbackStore;
pub use keys::{EncryptionKey, EncryptionKeys, KEY_ENV, KEY_FILE_ENV, KeyError};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub(crate) use spec::redact_url;
pub use spec::{STORE_ENV, SpecError, StoreSpec};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// A record as held by a store: opaque data plus its generation (≥ 1 once written).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// Incremented by every successful write of the key.
    pub generation: u64,
    /// The serialized record. It holds an access token: never log it.
    pub data: String,
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredValue")
            .field("generation", &self.generation)
            .field(
                "data",
                &format_args!("[redacted; {} bytes]", self.data.len()),
            )
            .finish()
    }
}

/// The result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened; the record now has this generation.
    Written {
        /// The new generation.
        generation: u64,
    },
    /// Someone else wrote first; nothing was changed.
    Conflict {
        /// The generation now stored (`None` if the key is absent).
        current: Option<u64>,
    },
}

/// One compare-and-set write; see [`TokenStore::compare_and_set`].
#[derive(Clone, Copy)]
pub struct TokenWrite<'a> {
    /// The record's key.
    pub key: &'a str,
    /// The generation the writer last saw (`None`: the key was absent).
    pub expected: Option<u64>,
    /// The serialized record.
    pub data: &'a str,
    /// How long the backend should keep the record.
    pub ttl: Duration,
    /// A refresh-token record to write alongside: `(key, data)`, kept without expiry.
    pub refresh: Option<(&'a str, &'a str)>,
}

impl<'a> TokenWrite<'a> {
    /// A write of `data` at `key`, expected at generation `expected`, kept for `ttl`.
    pub fn new(key: &'a str, expected: Option<u64>, data: &'a str, ttl: Duration) -> Self {
        Self {
            key,
            expected,
            data,
            ttl,
            refresh: None,
        }
    }

    /// Also writes a refresh-token record.
    pub fn with_refresh(mut self, key: &'a str, data: &'a str) -> Self {
        self.refresh = Some((key, data));
        self
    }
}

impl fmt::Debug for TokenWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWrite")
            .field("key", &self.key)
            .field("expected", &self.expected)
            .field("ttl", &self.ttl)
            .field("refresh_key", &self.refresh.map(|r| r.0))
            .finish_non_exhaustive()
    }
}

/// What went wrong in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend cannot be reached right now.
    Unavailable,
    /// The backend refused the operation (permissions, limits).
    Rejected,
    /// The backend's data is damaged.
    Corrupt,
    /// A record is encrypted with a key other than the configured one: a configuration problem,
    /// not damage (the record is never overwritten).
    Key,
    /// A record is encrypted and no encryption key is configured: a configuration problem, not
    /// damage (the record is never overwritten).
    NoKey,
    /// A record is there but cannot be read (damaged, tampered, moved to another key, or written
    /// unencrypted under an encrypted store). Nothing is served from it; a writer replaces it at
    /// this generation.
    Damaged {
        /// The damaged record's generation, to compare-and-set against.
        generation: u64,
    },
    /// The store's own credentials failed (e.g. no token for Catalyst's API): the connector
    /// fails instead of minting around a store it cannot reach.
    Auth,
}

/// An error from a [`TokenStore`]. Its message never contains a record's contents.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{store} store: {detail}")]
pub struct StoreError {
    /// Which store (e.g. `memory`, `sqlite /path/to/file`).
    pub store: String,
    /// The kind of failure.
    pub kind: StoreErrorKind,
    /// What failed and what to do.
    pub detail: String,
}

impl StoreError {
    /// Builds an error.
    pub fn new(store: impl Into<String>, kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            store: store.into(),
            kind,
            detail: detail.into(),
        }
    }

    /// Whether the error is about the encryption key (another one, or none), never damage.
    pub fn is_key_problem(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Key | StoreErrorKind::NoKey)
    }
}

/// The generation a writer of `key` compares against, from a read of it: a damaged record's
/// generation (so the write replaces it) counts as a generation.
pub(crate) fn generation_of(
    read: Result<Option<StoredValue>, StoreError>,
) -> Result<Option<u64>, StoreError> {
    match read {
        Ok(v) => Ok(v.map(|v| v.generation)),
        Err(StoreError {
            kind: StoreErrorKind::Damaged { generation },
            ..
        }) => Ok(Some(generation)),
        Err(e) => Err(e),
    }
}

/// A shared home for connector tokens. See the [module docs](self).
///
/// Implementations must make `compare_and_set`, `delete` and the lease operations atomic with
/// respect to every process sharing the store (or document where the backend cannot).
#[async_trait]
pub trait TokenStore: Send + Sync + fmt::Debug + 'static {
    /// Reads the record at `key`; `None` when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError>;

    /// Writes `write.data` at `write.key` if the stored generation is `write.expected` (`None`:
    /// only if absent); the store may drop the record after `write.ttl`. When `write.refresh` is
    /// set, that record (a refresh token, no expiry) is written too — whatever the outcome of the
    /// compare-and-set, so a rotated refresh token is never lost — in the same transaction where
    /// the backend has transactions.
    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError>;

    /// Deletes the record at `key`; with `expected`, only if its generation still matches.
    /// Returns whether a record was deleted.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError>;

    /// Tries to take the mint lease for `key` for `ttl`. True if `owner` now holds it (also when it
    /// already did: the lease is then extended).
    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Releases the lease if `owner` still holds it.
    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError>;

    /// Who holds the lease for `key` now, if anyone and if the store can tell (default: it
    /// cannot). Lets a waiter see that the holder's process is gone.
    async fn lease_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// Takes the lease for `key` from `dead_owner`, whose process is known to be gone, if it
    /// still holds it. True if `owner` now holds it. Default: not supported (the lease ends by
    /// its TTL).
    async fn take_over_lease(
        &self,
        key: &str,
        dead_owner: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let _ = (key, dead_owner, owner, ttl);
        Ok(false)
    }

    /// Whether other processes can see this store. When false, connectors skip the lease and the
    /// polling for other processes' tokens (a process-local store needs neither).
    fn is_shared(&self) -> bool {
        true
    }

    /// Whether records without a credential fingerprint (written by the official SDKs) may be
    /// served when their key matches, as the SDKs do. Only stores shared with the SDKs say yes.
    fn accepts_unfingerprinted(&self) -> bool {
        false
    }

    /// The longest key the backend accepts, if it has a limit; connectors whose keys would not
    /// fit are refused when the connection is built.
    fn max_key_len(&self) -> Option<usize> {
        None
    }

    /// Why the store is running degraded now, if it is (a tiered store whose shared tier does
    /// not answer: this host's tier stands in). Known after an operation has tried it.
    fn degraded(&self) -> Option<String> {
        None
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_shown_without_passwords() {
        for url in [
            "redis://:hunter2@127.0.0.1:6379/0",
            "rediss://user:hunter2@cache.example.com:6380",
            "redis+cluster://user:hunter2@10.0.0.1:7000,10.0.0.2:7000",
        ] {
            let spec: StoreSpec = url.parse().unwrap();
            let shown = format!("{spec} {spec:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }
}
