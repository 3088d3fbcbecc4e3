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

use super::keys::{EncryptionKey, EncryptionKeys};
use super::{CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Values written before key ids (still read).
const PREFIX_V1: &str = "ccenc1.";
const PREFIX: &str = "ccenc2.";
const AAD_DOMAIN: &[u8] = b"catalyst-connectors/record/v1\0";

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
    keys: Option<&EncryptionKeys>,
) -> Arc<dyn TokenStore> {
    match keys {
        Some(keys) => Arc::new(EncryptedStore::with_keys(store, keys)),
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
                "the token store holds encrypted records and no encryption key is set; set CONNECTOR_ENCRYPTION_KEY (or `$connector.encryption_key_file`) to the key that wrote them",
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
    /// By key id; the first encrypts.
    ciphers: Vec<(String, XChaCha20Poly1305)>,
    plaintext: bool,
}

/// What reading one stored value gave.
enum Opened {
    Plain(String),
    /// Written with the key whose id this is.
    OtherKey(String),
    /// A refresh token stored unencrypted (kept before the key was set).
    Unencrypted,
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
        Self::with_keys(inner, &EncryptionKeys::new(key.clone()))
    }

    /// Wraps `inner`, encrypting with the first of `keys` and decrypting with any.
    pub fn with_keys(inner: Arc<dyn TokenStore>, keys: &EncryptionKeys) -> Self {
        Self {
            inner,
            ciphers: keys
                .iter()
                .map(|k| (k.id(), XChaCha20Poly1305::new(k.expose().into())))
                .collect(),
            plaintext: keys.reads_plaintext(),
        }
    }

    fn current_id(&self) -> &str {
        &self.ciphers[0].0
    }

    fn seal(&self, key: &str, plaintext: &str) -> Result<String, StoreError> {
        let nonce_bytes: [u8; 24] = rand::random();
        let sealed = self.ciphers[0]
            .1
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
            self.current_id(),
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    fn open(&self, key: &str, stored: &str) -> Opened {
        if let Some(rest) = stored.strip_prefix(PREFIX) {
            let Some((id, body)) = rest.split_once('.') else {
                return Opened::Unreadable;
            };
            return match self.ciphers.iter().find(|(i, _)| i == id) {
                Some((_, cipher)) => {
                    decrypt(cipher, key, body).map_or(Opened::Unreadable, Opened::Plain)
                }
                None => Opened::OtherKey(id.to_owned()),
            };
        }
        if let Some(body) = stored.strip_prefix(PREFIX_V1) {
            // Written before key ids: whichever key opens it.
            return self
                .ciphers
                .iter()
                .find_map(|(_, cipher)| decrypt(cipher, key, body))
                .map_or(Opened::Unreadable, Opened::Plain);
        }
        if self.plaintext {
            Opened::Plain(stored.to_owned())
        } else if crate::key::is_refresh_token_key(key) {
            Opened::Unencrypted
        } else {
            Opened::Unreadable
        }
    }
}

/// The plaintext, or `None` when the value does not decrypt under this key for this record key.
fn decrypt(cipher: &XChaCha20Poly1305, key: &str, body: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
    if raw.len() < 24 + 16 {
        return None;
    }
    let (nonce, sealed) = raw.split_at(24);
    let plain = cipher
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
                    "a record was written with a different encryption key (key id {id}; the configured keys' ids are {}); set CONNECTOR_ENCRYPTION_KEY (or `$connector.encryption_key_file`) to the key that wrote it — to rotate, list the new key first and that one after it",
                    self.ciphers.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
            Opened::Unencrypted => Err(StoreError::new(
                "encrypted",
                StoreErrorKind::Key,
                "the refresh token is stored unencrypted (kept before the encryption key was set); run `connector rekey` once to encrypt the store's records with the key, or unset the key",
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
        assert_eq!(again.expose(), k.expose());
        let hex: String = k.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(EncryptionKey::parse(&hex).unwrap().expose(), k.expose());
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
