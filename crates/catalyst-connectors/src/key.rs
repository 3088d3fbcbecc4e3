//! Cache keys compatible with the official Catalyst SDKs, and the credential fingerprint that makes
//! their weak 20-bit hash safe to share.

use sha2::{Digest, Sha256};

/// Prefix of every connector key, as in the SDKs.
pub const KEY_PREFIX: &str = "ZC_CONN_";

/// The SDKs' 20-bit hash of the connector's credentials, as five lowercase hex digits.
///
/// Non-empty values of `[refresh_token, client_id, client_secret, auth_url, refresh_url,
/// redirect_url]` are joined with `:`; the Java `String.hashCode` of that string (over UTF-16 code
/// units, wrapping `i32`) is taken, then `(31 + h) & 0xFFFFF` — which equals Java's
/// `Objects.hash(str) & 0xFFFFF`.
pub fn sdk_hash(fields: &[&str]) -> String {
    let mut h: i32 = 0;
    let mut first = true;
    for field in fields.iter().filter(|f| !f.is_empty()) {
        if !first {
            h = h.wrapping_mul(31).wrapping_add(i32::from(b':'));
        }
        first = false;
        for unit in field.encode_utf16() {
            h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
        }
    }
    format!("{:05x}", 31i32.wrapping_add(h) & 0xFFFFF)
}

/// The SDK cache key `ZC_CONN_<name>:<h5>`.
pub fn sdk_key(name: &str, fields: &[&str]) -> String {
    format!("{KEY_PREFIX}{name}:{}", sdk_hash(fields))
}

/// The modular JS SDK's (`@zcatalyst/connector` 0.0.3) cache key `ZC_CONN_<name>`: no credential
/// hash, so every connector of that name shares it — the record's fingerprint is what keeps us
/// from serving a token minted for other credentials.
pub fn js_sdk_key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

/// A strong fingerprint of the credentials a token was minted with: SHA-256 over the client id, the
/// refresh token and the refresh URL, each length-prefixed, as lowercase hex.
///
/// It is stored in each record so a record written for other credentials is never served, whatever
/// the key. It reveals nothing usable about the refresh token.
pub fn fingerprint(client_id: &str, refresh_token: &str, refresh_url: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"catalyst-connectors/fingerprint/v1");
    for part in [client_id, refresh_token, refresh_url] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    to_hex(&hasher.finalize())
}

/// Where the mint governor counts mints for the refresh token with this credential fingerprint:
/// `ZC_CONN_mints:<16 hex digits>`.
pub(crate) fn mints_key(fingerprint: &str) -> String {
    format!(
        "{KEY_PREFIX}mints:{}",
        &fingerprint[..fingerprint.len().min(16)]
    )
}

/// Where the mint governor counts the mints of this refresh token that only a caller's
/// `min_ttl` forced: a mint log of its own (`ZC_CONN_mints:<16 hex digits>`, digits derived from
/// the fingerprint, so it is public like the other logs and never the same key).
pub(crate) fn forced_mints_key(fingerprint: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"catalyst-connectors/forced-mints/v1");
    hasher.update(fingerprint.as_bytes());
    mints_key(&to_hex(&hasher.finalize()))
}

/// Where the shared health of these credentials is kept: `ZC_CONN_health:<16 hex digits>`.
pub(crate) fn health_key(fingerprint: &str) -> String {
    format!(
        "{KEY_PREFIX}health:{}",
        &fingerprint[..fingerprint.len().min(16)]
    )
}

/// A record that holds no secret and must be readable by every process whatever its encryption
/// key ([`public_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Public {
    /// A mint governor's log ([`mints_key`]).
    MintLog,
    /// A shared health record ([`health_key`]).
    Health,
}

/// Which public record `key` names, if any: a mint log or a shared health record. No
/// connector's own key has this shape (those end in five hex digits or `rt:` and six), and
/// connector names cannot contain `:`.
pub(crate) fn public_kind(key: &str) -> Option<Public> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (kind, hex) = if let Some(hex) = rest.strip_prefix("mints:") {
        (Public::MintLog, hex)
    } else {
        (Public::Health, rest.strip_prefix("health:")?)
    };
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(kind)
}

/// Whether `key` is a public record ([`public_kind`]).
pub(crate) fn is_public(key: &str) -> bool {
    public_kind(key).is_some()
}

/// The key under which a refresh token obtained at run time (code exchange, rotation) is kept:
/// `ZC_CONN_<name>:rt:<6 hex digits of a hash of client id and refresh URL>` (short, to fit
/// Catalyst Cache's 50-character keys; the record itself names the client and URL it is for).
pub fn refresh_token_key(name: &str, client_id: &str, refresh_url: &str) -> String {
    let digest = fingerprint(client_id, "", refresh_url);
    format!("{KEY_PREFIX}{name}:rt:{}", &digest[..6])
}

/// Whether `key` is one of [`refresh_token_key`]'s.
pub(crate) fn is_refresh_token_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.rsplit_once(":rt:"))
        .is_some_and(|(_, hash)| hash.len() == 6 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A per-user subject: the first 128 bits of SHA-256 of the user id, hex. Stored in refresh-token
/// records instead of the id itself.
pub fn user_subject(user_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"catalyst-connectors/user/v1");
    hasher.update(user_id.as_bytes());
    to_hex(&hasher.finalize()[..16])
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    // By table, not `write!("{b:02x}")`: keys are derived on every connector a connection makes,
    // and the formatter machinery was a tenth of a first read.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = "https://accounts.zoho.com/oauth/v2/auth";
    const TOKEN: &str = "https://accounts.zoho.com/oauth/v2/token";

    /// Golden vectors computed by the official Node SDK 3.4.0 (docs/zoho-protocol.md, section 5).
    #[test]
    fn golden_sdk_keys() {
        assert_eq!(
            sdk_key(
                "zohocrm",
                &["1000.refresh", "1000.ABC", "secret", AUTH, TOKEN, ""]
            ),
            "ZC_CONN_zohocrm:c2d33"
        );
        assert_eq!(
            sdk_key(
                "zohocrm",
                &[
                    "1000.refresh",
                    "1000.ABC",
                    "secret",
                    AUTH,
                    TOKEN,
                    "https://example.com/cb"
                ]
            ),
            "ZC_CONN_zohocrm:47285"
        );
        assert_eq!(
            sdk_key("zohocrm", &["", "1000.ABC", "secret", AUTH, TOKEN, ""]),
            "ZC_CONN_zohocrm:a1fc5"
        );
        assert_eq!(
            sdk_key(
                "conn-é",
                &["r", "id", "sécret-😀", "https://a/x", "https://a/y", ""]
            ),
            "ZC_CONN_conn-é:a1fe7"
        );
        assert_eq!(
            sdk_key("x", &["", "a", "b", "c", "d", ""]),
            "ZC_CONN_x:65fbb"
        );
        assert_eq!(
            sdk_hash(&["1000.rt", "1000.cid", "secret", TOKEN, TOKEN]),
            "ea111"
        );
    }

    #[test]
    fn fingerprint_separates_fields() {
        let a = fingerprint("ab", "c", "u");
        let b = fingerprint("a", "bc", "u");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(a, fingerprint("ab", "c", "u"));
    }

    #[test]
    fn the_forced_mints_log_is_a_public_key_of_its_own() {
        let f = fingerprint(
            "1000.A",
            "1000.rt",
            "https://accounts.zoho.com/oauth/v2/token",
        );
        let (log, forced) = (mints_key(&f), forced_mints_key(&f));
        assert_ne!(log, forced);
        assert_eq!(public_kind(&forced), Some(Public::MintLog));
        assert!(forced.len() <= 50, "fits Catalyst's keys");
    }
}
