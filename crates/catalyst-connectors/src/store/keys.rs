//! Encryption keys: one key ([`EncryptionKey`]) and the ring a store is opened with
//! ([`EncryptionKeys`]: the first key encrypts, every key decrypts — how keys are rotated).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret as _, SecretBox};
use std::fmt;
use std::path::Path;

/// Environment variable holding the encryption key (32 bytes, base64 or 64 hex digits).
pub const KEY_ENV: &str = "CONNECTOR_ENCRYPTION_KEY";
/// Environment variable naming a file that holds the encryption key.
pub const KEY_FILE_ENV: &str = "CONNECTOR_ENCRYPTION_KEY_FILE";

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

    /// The key's bytes, for the cipher.
    pub(super) fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
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

    /// Reads a key file (base64 or hex text). A file of several keys gives its first: use
    /// [`EncryptionKeys::from_file`] to read them all.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        EncryptionKeys::from_file(path).map(EncryptionKeys::into_current)
    }

    /// The key from `CONNECTOR_ENCRYPTION_KEY` or the file named by
    /// `CONNECTOR_ENCRYPTION_KEY_FILE`; `None` when neither is set. Of several keys, the first:
    /// use [`EncryptionKeys::from_env`] to read them all.
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        Ok(EncryptionKeys::from_env()?.map(EncryptionKeys::into_current))
    }
}

/// The keys a store is opened with: the first encrypts every record written; every one decrypts.
/// This is how a key is rotated — list the new key first and the old one after it, run
/// `connector rekey` (or let the next writes move the records), then drop the old key.
///
/// Written as text (in `CONNECTOR_ENCRYPTION_KEY` or a key file), keys are separated by
/// whitespace, commas or lines; in a file, a line starting with `#` is a comment.
#[derive(Clone, Debug)]
pub struct EncryptionKeys {
    keys: Vec<EncryptionKey>,
    plaintext: bool,
}

impl From<EncryptionKey> for EncryptionKeys {
    fn from(key: EncryptionKey) -> Self {
        Self::new(key)
    }
}

impl EncryptionKeys {
    /// One key, encrypting and decrypting.
    pub fn new(current: EncryptionKey) -> Self {
        Self {
            keys: vec![current],
            plaintext: false,
        }
    }

    /// Also decrypts with `key` (an earlier key), never encrypting with it.
    pub fn with_previous(mut self, key: EncryptionKey) -> Self {
        if self.keys.iter().all(|k| k.id() != key.id()) {
            self.keys.push(key);
        }
        self
    }

    /// Also reads records stored unencrypted (written before a key was set). Meant for moving a
    /// store to encryption (`connector rekey`): otherwise an unencrypted refresh token under a key
    /// is an error, since anyone able to write the store could have put it there.
    pub fn reading_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// The key that encrypts.
    pub fn current(&self) -> &EncryptionKey {
        &self.keys[0]
    }

    fn into_current(self) -> EncryptionKey {
        self.keys.into_iter().next().expect("never empty")
    }

    /// Every key, the current one first.
    pub fn iter(&self) -> impl Iterator<Item = &EncryptionKey> {
        self.keys.iter()
    }

    /// Whether records stored unencrypted are read.
    pub fn reads_plaintext(&self) -> bool {
        self.plaintext
    }

    /// Parses one key or several (see the type's documentation).
    pub fn parse(text: &str) -> Result<Self, String> {
        let words: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|w| !w.is_empty())
            .collect();
        let mut keys = words.iter().enumerate().map(|(i, word)| {
            EncryptionKey::parse(word).map_err(|problem| match words.len() {
                1 => problem,
                _ => format!("key {} of {}: {problem}", i + 1, words.len()),
            })
        });
        let mut ring = Self::new(keys.next().ok_or("holds no key")??);
        for key in keys {
            ring = ring.with_previous(key?);
        }
        Ok(ring)
    }

    /// Reads a key file: one key, or several (the first encrypts).
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

    /// The keys from `CONNECTOR_ENCRYPTION_KEY` or the file named by
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0000000000000000000000000000000000000000000000000000000000000001";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000002";

    fn ids(keys: &EncryptionKeys) -> Vec<String> {
        keys.iter().map(EncryptionKey::id).collect()
    }

    #[test]
    fn several_keys_the_first_encrypts() {
        let a = EncryptionKey::parse(A).unwrap().id();
        let b = EncryptionKey::parse(B).unwrap().id();
        for text in [
            format!("{B} {A}"),
            format!("{B},{A}"),
            format!("# new\n{B}\n\n# old, until rekeyed\n{A}\n"),
            format!("{B}\n{A}\n{B}"),
        ] {
            let keys = EncryptionKeys::parse(&text).unwrap();
            assert_eq!(ids(&keys), [b.clone(), a.clone()], "{text:?}");
            assert_eq!(keys.current().id(), b);
        }
        assert_eq!(EncryptionKey::parse(A).unwrap().id(), a);
    }

    #[test]
    fn a_bad_key_is_named_by_position_never_shown() {
        let bad = "c2VjcmV0LWJ1dC10b28tc2hvcnQ=";
        let err = EncryptionKeys::parse(&format!("{A} {bad}")).unwrap_err();
        assert!(err.starts_with("key 2 of 2:"), "{err}");
        assert!(!err.contains(bad) && !err.contains(A), "{err}");
        assert_eq!(
            EncryptionKeys::parse("# only a comment\n").unwrap_err(),
            "holds no key"
        );
    }
}
