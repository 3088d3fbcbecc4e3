//! Encryption at rest for any store: XChaCha20-Poly1305 over each record, with the record's key as
//! associated data, so a value can be neither read nor moved to another key without the key.
//!
//! Each value is `ccenc2.<key id>.<nonce ‖ ciphertext>`; the key id (8 hex digits of a SHA-256 of
//! the key, which reveals nothing usable about it) tells "written with another key" apart from
//! "damaged". A value written with another key is a [`StoreErrorKind::Key`] error: the connector
//! reports a configuration problem naming `CONNECTOR_ENCRYPTION_KEY` and never overwrites it. A
//! value that is damaged or was written unencrypted is a [`StoreErrorKind::Damaged`] error carrying
//! its generation: the connector logs a warning, treats it as a miss and overwrites it. Garbage is
//! never served. Without a key, [`Unkeyed`] reports an encrypted record as
//! [`StoreErrorKind::NoKey`].

use super::{CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret as _, SecretBox};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable holding the encryption key (32 bytes, base64 or 64 hex digits).
pub const KEY_ENV: &str = "CONNECTOR_ENCRYPTION_KEY";
/// Environment variable naming a file that holds the encryption key.
pub const KEY_FILE_ENV: &str = "CONNECTOR_ENCRYPTION_KEY_FILE";

/// Values written before key ids (still read).
const PREFIX_V1: &str = "ccenc1.";
const PREFIX: &str = "ccenc2.";
const AAD_DOMAIN: &[u8] = b"catalyst-connectors/record/v1\0";

/// A 256-bit key for encryption at rest. `Debug` never shows it; it is zeroized on drop.
pub struct EncryptionKey(SecretBox<[u8; 32]>);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

impl Clone for EncryptionKey {
    fn clone(&self) -> Self {
        Self::from_bytes(*self.0.expose_secret())
    }
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encryption key {origin}: {problem}")]
pub struct KeyError {
    /// Where the key came from (env variable or file).
    pub origin: String,
    /// What is wrong, never the key itself.
    pub problem: String,
}

impl EncryptionKey {
    /// A short public identifier of the key (8 hex digits of a domain-separated SHA-256), stored
    /// beside every value it encrypts so another key's values are recognised.
    pub fn id(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(b"catalyst-connectors/key-id/v1\0")
            .chain_update(self.0.expose_secret())
            .finalize();
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A new random key.
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The key as standard base64, to store in a key file or a secret manager.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.expose_secret())
    }

    /// Parses 32 bytes given as standard or URL-safe base64, or as 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "not valid hex".to_owned())?
        } else {
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| "not base64 or 64 hex digits".to_owned())?
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| format!("must be 32 bytes, found {}", v.len()))?;
        // A key of one repeated byte (all zeros: what a placeholder or an unset buffer gives) is
        // no secret.
        if bytes.iter().all(|b| *b == bytes[0]) {
            return Err(
                "is one byte repeated 32 times (e.g. all zeros), not a secret: generate one with `openssl rand -base64 32`"
                    .to_owned(),
            );
        }
        Ok(Self::from_bytes(bytes))
    }

    /// Reads a key file (base64 or hex text).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let origin = format!("file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| KeyError {
            origin: origin.clone(),
            problem: format!("cannot read it ({e})"),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                // Not ours to change: said, not fixed.
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the encryption key file is readable by other users: `chmod 600` it"
                );
            }
        }
        Self::parse(&text).map_err(|problem| KeyError { origin, problem })
    }

    /// The key from `CONNECTOR_ENCRYPTION_KEY` or the file named by
    /// `CONNECTOR_ENCRYPTION_KEY_FILE`; `None` when neither is set.
    ///
    /// A variable that is set but empty — what `export K=$(cat missing-file)` gives — is an error,
    /// not "no encryption".
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        for var in [KEY_ENV, KEY_FILE_ENV] {
            if std::env::var_os(var).is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
                return Err(KeyError {
                    origin: format!("in ${var}"),
                    problem:
                        "is set but empty; unset it to store tokens unencrypted, or give the key"
                            .to_owned(),
                });
            }
        }
        if let Some(v) = std::env::var_os(KEY_ENV) {
            let text = v.to_string_lossy();
            return Self::parse(&text).map(Some).map_err(|problem| KeyError {
                origin: format!("in ${KEY_ENV}"),
                problem,
            });
        }
        match std::env::var_os(KEY_FILE_ENV) {
            Some(path) => Self::from_file(Path::new(&path)).map(Some),
            None => Ok(None),
        }
    }
}

/// Whether a stored value was written by an [`EncryptedStore`] (so a store without the key can
/// say "encrypted, and no key is set" instead of "damaged").
fn looks_encrypted(data: &str) -> bool {
    data.starts_with(PREFIX) || data.starts_with(PREFIX_V1)
}

/// `impl TokenStore` for a wrapping store: the items given, plus the operations it passes to
/// `self.inner` unchanged (the lease, and what the backend can do).
macro_rules! wrapping_store {
    ($ty:ty { $($items:tt)* }) => {
        #[async_trait::async_trait]
        impl TokenStore for $ty {
        $($items)*

        async fn try_acquire_lease(
            &self,
            key: &str,
            owner: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.inner.try_acquire_lease(key, owner, ttl).await
        }

        async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
            self.inner.release_lease(key, owner).await
        }

        async fn lease_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
            self.inner.lease_holder(key).await
        }

        async fn take_over_lease(
            &self,
            key: &str,
            dead_owner: &str,
            owner: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.inner
                .take_over_lease(key, dead_owner, owner, ttl)
                .await
        }

        fn is_shared(&self) -> bool {
            self.inner.is_shared()
        }

        fn max_key_len(&self) -> Option<usize> {
            self.inner.max_key_len()
        }

        fn degraded(&self) -> Option<String> {
            self.inner.degraded()
        }
        }
    };
}

/// `store` under the connection's encryption key: encrypted with it, or, without one, still
/// telling an encrypted record ([`StoreErrorKind::NoKey`]) from a damaged one.
pub(crate) fn with_key(
    store: Arc<dyn TokenStore>,
    key: Option<&EncryptionKey>,
) -> Arc<dyn TokenStore> {
    match key {
        Some(key) => Arc::new(EncryptedStore::new(store, key)),
        None => Arc::new(Unkeyed::new(store)),
    }
}

/// The store of a connection without an encryption key: passes everything through, and reports
/// an encrypted record as [`StoreErrorKind::NoKey`] — a configuration problem, typed by the
/// store, so no connector has to guess from a record's shape.
pub(crate) struct Unkeyed {
    inner: Arc<dyn TokenStore>,
}

impl Unkeyed {
    pub(crate) fn new(inner: Arc<dyn TokenStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for Unkeyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

wrapping_store!(Unkeyed {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        match self.inner.get(key).await? {
            Some(v) if looks_encrypted(&v.data) => Err(StoreError::new(
                "encrypted",
                StoreErrorKind::NoKey,
                "the token store holds encrypted records and no encryption key is set",
            )),
            other => Ok(other),
        }
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        self.inner.compare_and_set(write).await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        self.inner.delete(key, expected).await
    }

    fn accepts_unfingerprinted(&self) -> bool {
        self.inner.accepts_unfingerprinted()
    }
});

/// A store wrapper that encrypts every record it writes and decrypts every record it reads —
/// except the mint governor's log and the shared health (`ZC_CONN_mints:…`, `ZC_CONN_health:…`),
/// which hold no secret (times, error codes and messages) and are kept in the clear so that
/// processes with different keys still count mints together and honour each other's refusals.
pub struct EncryptedStore {
    inner: Arc<dyn TokenStore>,
    cipher: XChaCha20Poly1305,
    key_id: String,
}

/// What reading one stored value gave.
enum Opened {
    Plain(String),
    /// Written with the key whose id this is.
    OtherKey(String),
    /// Damaged, tampered, moved to another record key, or written unencrypted.
    Unreadable,
}

impl fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner)
            .field("key", &"[redacted]")
            .finish()
    }
}

fn aad(key: &str) -> Vec<u8> {
    [AAD_DOMAIN, key.as_bytes()].concat()
}

impl EncryptedStore {
    /// Wraps `inner`, encrypting with `key`.
    pub fn new(inner: Arc<dyn TokenStore>, key: &EncryptionKey) -> Self {
        Self {
            inner,
            cipher: XChaCha20Poly1305::new(key.0.expose_secret().into()),
            key_id: key.id(),
        }
    }

    fn seal(&self, key: &str, plaintext: &str) -> Result<String, StoreError> {
        let nonce_bytes: [u8; 24] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce_bytes),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad(key),
                },
            )
            .map_err(|_| {
                StoreError::new(
                    "encrypted",
                    super::StoreErrorKind::Rejected,
                    "encryption failed",
                )
            })?;
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}.{}",
            self.key_id,
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    fn open(&self, key: &str, stored: &str) -> Opened {
        let body = if let Some(rest) = stored.strip_prefix(PREFIX) {
            match rest.split_once('.') {
                Some((id, _)) if id != self.key_id => return Opened::OtherKey(id.to_owned()),
                Some((_, body)) => body,
                None => return Opened::Unreadable,
            }
        } else if let Some(body) = stored.strip_prefix(PREFIX_V1) {
            body
        } else {
            return Opened::Unreadable;
        };
        self.decrypt(key, body)
            .map_or(Opened::Unreadable, Opened::Plain)
    }

    /// The plaintext, or `None` when the value does not decrypt under this key for this record key.
    fn decrypt(&self, key: &str, body: &str) -> Option<String> {
        let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
        if raw.len() < 24 + 16 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(24);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(key),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

wrapping_store!(EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let Some(v) = self.inner.get(key).await? else {
            return Ok(None);
        };
        // Mint logs and shared health hold no secret and are kept in the clear, so that every
        // process reads them whatever its key (one written encrypted by an older version is
        // still opened below).
        if crate::key::is_public(key) && !looks_encrypted(&v.data) {
            return Ok(Some(v));
        }
        match self.open(key, &v.data) {
            Opened::Plain(data) => Ok(Some(StoredValue {
                generation: v.generation,
                data,
            })),
            Opened::OtherKey(id) => Err(StoreError::new(
                "encrypted",
                StoreErrorKind::Key,
                format!(
                    "a record was written with a different encryption key (key id {id}; the configured key's id is {})",
                    self.key_id
                ),
            )),
            Opened::Unreadable => Err(StoreError::new(
                "encrypted",
                StoreErrorKind::Damaged {
                    generation: v.generation,
                },
                "a stored record does not decrypt with the configured key (damaged, tampered, or written unencrypted); it is treated as missing and replaced",
            )),
        }
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        if crate::key::is_public(write.key) && write.refresh.is_none() {
            return self.inner.compare_and_set(write).await;
        }
        let data = self.seal(write.key, write.data)?;
        let refresh = match write.refresh {
            Some((k, d)) => Some((k, self.seal(k, d)?)),
            None => None,
        };
        let mut sealed = TokenWrite::new(write.key, write.expected, &data, write.ttl);
        if let Some((k, d)) = &refresh {
            sealed = sealed.with_refresh(k, d);
        }
        self.inner.compare_and_set(sealed).await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        self.inner.delete(key, expected).await
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn mint_logs_and_health_are_kept_in_the_clear_and_read_under_any_key() {
        let memory: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        let a = EncryptedStore::new(Arc::clone(&memory), &EncryptionKey::generate());
        let b = EncryptedStore::new(Arc::clone(&memory), &EncryptionKey::generate());
        let log = crate::key::mints_key(&"ab".repeat(32));
        let token = "ZC_CONN_mints:12345";
        for key in [log.as_str(), token] {
            a.compare_and_set(TokenWrite::new(key, None, "[1]", Duration::from_secs(60)))
                .await
                .unwrap();
        }
        assert_eq!(memory.get(&log).await.unwrap().unwrap().data, "[1]");
        assert_eq!(b.get(&log).await.unwrap().unwrap().data, "[1]");
        // A connector named `mints` keeps its token encrypted.
        assert!(looks_encrypted(
            &memory.get(token).await.unwrap().unwrap().data
        ));
        assert!(b.get(token).await.is_err());
        assert!(crate::key::is_public(&crate::key::health_key(
            &"0f".repeat(32)
        )));
        assert!(!crate::key::is_public("ZC_CONN_health:rt:abcdef"));
    }

    #[test]
    fn keys_parse_from_base64_and_hex() {
        let k = EncryptionKey::generate();
        let again = EncryptionKey::parse(&k.to_base64()).unwrap();
        assert_eq!(again.0.expose_secret(), k.0.expose_secret());
        let hex: String =
            k.0.expose_secret()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        assert_eq!(
            EncryptionKey::parse(&hex).unwrap().0.expose_secret(),
            k.0.expose_secret()
        );
        assert!(
            EncryptionKey::parse("c2hvcnQ=")
                .unwrap_err()
                .contains("32 bytes")
        );
        assert_eq!(format!("{k:?}"), "EncryptionKey([redacted])");
    }

    #[tokio::test]
    async fn values_are_bound_to_their_key() {
        let mem = Arc::new(MemoryStore::new());
        let store = EncryptedStore::new(mem.clone(), &EncryptionKey::generate());
        store
            .compare_and_set(TokenWrite::new(
                "a",
                None,
                "secret-a",
                Duration::from_secs(60),
            ))
            .await
            .unwrap();
        let raw = mem.get("a").await.unwrap().unwrap();
        assert!(raw.data.starts_with(PREFIX) && !raw.data.contains("secret-a"));
        assert_eq!(store.get("a").await.unwrap().unwrap().data, "secret-a");
        // Moving the ciphertext to another key makes it unreadable.
        mem.compare_and_set(TokenWrite::new(
            "b",
            None,
            &raw.data,
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
        let damaged = store.get("b").await.unwrap_err();
        assert_eq!(
            damaged.kind,
            StoreErrorKind::Damaged { generation: 1 },
            "{damaged}"
        );
        // Without a key, an encrypted record is a typed "no key" error, not data.
        let keyless = Unkeyed::new(mem.clone());
        assert_eq!(
            keyless.get("a").await.unwrap_err().kind,
            StoreErrorKind::NoKey
        );
        // Another key's value is told apart from a damaged one.
        let other = EncryptedStore::new(mem.clone(), &EncryptionKey::generate());
        let err = other.get("a").await.unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Key, "{err}");
        assert!(
            err.to_string().contains("different encryption key"),
            "{err}"
        );
        assert!(looks_encrypted(&raw.data));
    }
}
