//! The modular Catalyst JS SDK's (`@zcatalyst/connector`) encrypted access token, as its public
//! source defines the format (written here from that description; no code of theirs).
//!
//! With a `secret_key`, the record's `access_token` is
//! `base64(utf8("<hex ciphertext>:<hex iv>:<hex tag>:<hex salt>"))`: AES-256-GCM with a 16-byte IV
//! and a 16-byte tag, no associated data, the key derived by scrypt from the UTF-8 `secret_key`
//! and a fresh 16-byte salt (Node's defaults: N = 16384, r = 8, p = 1, 32 bytes). The older form
//! has three parts (no salt) and uses SHA-256 of the `secret_key` as the key; it is read, never
//! written.
//!
//! scrypt costs tens of milliseconds and 16 MiB by design: it runs on Tokio's blocking pool, and
//! the key derived for the last salt seen is kept, so a record is derived for once per process.

use crate::secret::{ExposeSecret, SdkSecretKey};
use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};
use std::sync::Mutex;

/// AES-256-GCM with Node's 16-byte IV.
type Cipher = AesGcm<Aes256, U16>;

/// The parts of a sealed token.
struct Sealed {
    ciphertext: Vec<u8>,
    iv: [u8; 16],
    tag: [u8; 16],
    /// `None` in the older three-part form.
    salt: Option<[u8; 16]>,
}

fn hex(bytes: &[u8]) -> String {
    crate::key::to_hex(bytes)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The sealed parts of `value`, if it has the JS SDK's encrypted shape (a Zoho access token,
/// `1000.…`, never has it).
fn parse(value: &str) -> Option<Sealed> {
    let raw = STANDARD
        .decode(value.trim())
        .or_else(|_| STANDARD_NO_PAD.decode(value.trim()))
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let parts: Vec<&str> = text.split(':').collect();
    if !(3..=4).contains(&parts.len()) || parts[1].len() != 32 || parts[2].len() != 32 {
        return None;
    }
    let sixteen = |s: &str| -> Option<[u8; 16]> { unhex(s)?.try_into().ok() };
    Some(Sealed {
        ciphertext: unhex(parts[0])?,
        iv: sixteen(parts[1])?,
        tag: sixteen(parts[2])?,
        salt: match parts.get(3) {
            Some(s) => Some(sixteen(s)?),
            None => None,
        },
    })
}

/// Whether a stored `access_token` is in the JS SDK's encrypted form.
pub(crate) fn is_sealed(value: &str) -> bool {
    parse(value).is_some()
}

/// Why a sealed token could not be opened: another `secret_key`, or damage. Never says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotOpened;

/// Seals and opens access tokens with one connector's `secret_key`.
pub(crate) struct TokenSealer {
    secret: SdkSecretKey,
    /// The key derived for the last salt seen.
    derived: Mutex<Option<([u8; 16], [u8; 32])>>,
}

impl TokenSealer {
    pub(crate) fn new(secret: SdkSecretKey) -> Self {
        Self {
            secret,
            derived: Mutex::new(None),
        }
    }

    /// The AES key for `salt` (scrypt, on the blocking pool), or for the older form (SHA-256).
    async fn key(&self, salt: Option<[u8; 16]>) -> [u8; 32] {
        let Some(salt) = salt else {
            return Sha256::digest(self.secret.expose_secret().as_bytes()).into();
        };
        let remembered = *self.derived.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, key)) = remembered
            && s == salt
        {
            return key;
        }
        let secret = self.secret.clone();
        let derive = move || {
            // Node's crypto.scryptSync defaults: N = 2^14, r = 8, p = 1; 32 bytes.
            let params = scrypt::Params::new(14, 8, 1, 32)
                .unwrap_or_else(|_| unreachable!("fixed, valid scrypt parameters"));
            let mut key = [0u8; 32];
            scrypt::scrypt(secret.expose_secret().as_bytes(), &salt, &params, &mut key)
                .unwrap_or_else(|_| unreachable!("a 32-byte output is valid for scrypt"));
            key
        };
        let key = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(derive)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            Err(_) => derive(),
        };
        *self.derived.lock().unwrap_or_else(|p| p.into_inner()) = Some((salt, key));
        key
    }

    /// `token` in the JS SDK's current (four-part) form, with a fresh IV and salt.
    pub(crate) async fn seal(&self, token: &str) -> String {
        let iv: [u8; 16] = rand::random();
        let salt: [u8; 16] = rand::random();
        let key = self.key(Some(salt)).await;
        let cipher = Cipher::new((&key).into());
        let mut sealed = cipher
            .encrypt(Nonce::<U16>::from_slice(&iv), token.as_bytes())
            .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any token-sized input"));
        let tag = sealed.split_off(sealed.len() - 16);
        let text = format!("{}:{}:{}:{}", hex(&sealed), hex(&iv), hex(&tag), hex(&salt));
        STANDARD.encode(text)
    }

    /// The token sealed in `value` (either form).
    pub(crate) async fn open(&self, value: &str) -> Result<String, NotOpened> {
        let sealed = parse(value).ok_or(NotOpened)?;
        let key = self.key(sealed.salt).await;
        let cipher = Cipher::new((&key).into());
        let mut body = sealed.ciphertext;
        body.extend_from_slice(&sealed.tag);
        let plain = cipher
            .decrypt(Nonce::<U16>::from_slice(&sealed.iv), body.as_slice())
            .map_err(|_| NotOpened)?;
        String::from_utf8(plain).map_err(|_| NotOpened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(key: &str) -> TokenSealer {
        TokenSealer::new(SdkSecretKey::new(key))
    }

    #[tokio::test]
    async fn sealed_tokens_open_with_their_key_only() {
        let a = sealer("passphrase-a");
        let sealed = a.seal("1000.token").await;
        assert!(is_sealed(&sealed), "{sealed}");
        assert!(!sealed.contains("1000.token"));
        let text = String::from_utf8(STANDARD.decode(&sealed).unwrap()).unwrap();
        assert_eq!(text.split(':').count(), 4, "ciphertext:iv:tag:salt");
        assert_eq!(a.open(&sealed).await.as_deref(), Ok("1000.token"));
        assert_ne!(a.seal("1000.token").await, sealed, "fresh IV and salt");
        assert_eq!(sealer("passphrase-b").open(&sealed).await, Err(NotOpened));
    }

    #[tokio::test]
    async fn the_older_three_part_form_is_read() {
        // Sealed by hand the older way: SHA-256 of the key, no salt.
        let key: [u8; 32] = Sha256::digest(b"old-key").into();
        let iv = [7u8; 16];
        let mut sealed = Cipher::new((&key).into())
            .encrypt(Nonce::<U16>::from_slice(&iv), b"1000.legacy".as_slice())
            .unwrap();
        let tag = sealed.split_off(sealed.len() - 16);
        let value = STANDARD.encode(format!("{}:{}:{}", hex(&sealed), hex(&iv), hex(&tag)));
        assert!(is_sealed(&value));
        assert_eq!(
            sealer("old-key").open(&value).await.as_deref(),
            Ok("1000.legacy")
        );
        assert_eq!(sealer("other").open(&value).await, Err(NotOpened));
    }

    #[test]
    fn zoho_tokens_and_damage_are_not_sealed() {
        for value in [
            "1000.abcdef0123456789.fedcba",
            "",
            "bm90OnNlYWxlZA==",
            "@@@",
        ] {
            assert!(!is_sealed(value), "{value}");
        }
    }
}
