//! Redacting types for every secret the crate handles.
//!
//! Each secret kind has its own newtype so a client secret can never be passed where a refresh token
//! is expected. None of them implements `Display`; their `Debug` prints only the type name and
//! `[redacted]`. The value is reachable only through [`ExposeSecret::expose_secret`], which makes
//! every place that reads a secret easy to find. Values are zeroized on drop (via [`secrecy`]).

use secrecy::{ExposeSecret as _, SecretString};
use std::fmt;

/// Read access to a secret value. Calls to this are the only way to see a secret.
pub trait ExposeSecret {
    /// The secret value. Do not log it.
    fn expose_secret(&self) -> &str;
}

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }
        }

        impl ExposeSecret for $name {
            fn expose_secret(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self::new(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::new(value)
            }
        }

        impl PartialEq for $name {
            /// Compares in constant time with respect to the contents (length still leaks).
            fn eq(&self, other: &Self) -> bool {
                constant_time_eq(self.expose_secret().as_bytes(), other.expose_secret().as_bytes())
            }
        }

        impl Eq for $name {}
    };
}

secret_type!(
    /// An OAuth client secret (`client_secret`).
    ClientSecret
);
secret_type!(
    /// An OAuth refresh token. It never expires by itself and can mint access tokens: guard it.
    RefreshToken
);
secret_type!(
    /// The bearer value of an OAuth access token.
    AccessTokenSecret
);
secret_type!(
    /// A one-time authorization (grant) code.
    GrantCode
);
secret_type!(
    /// The modular Catalyst JS SDK's `secret_key`: the passphrase that encrypts access tokens in
    /// Catalyst Cache (see [`CatalystSdk::Js`](crate::CatalystSdk::Js)).
    SdkSecretKey
);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = RefreshToken::new("1000.very-secret");
        let shown = format!("{s:?} {:#?}", s);
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(format!("{s:?}"), "RefreshToken([redacted])");
        assert_eq!(s.expose_secret(), "1000.very-secret");
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(ClientSecret::new("a"), ClientSecret::new("a"));
        assert_ne!(ClientSecret::new("a"), ClientSecret::new("b"));
        assert_ne!(ClientSecret::new("a"), ClientSecret::new("ab"));
    }
}

/// `text` with every value shaped like a Zoho token or grant code (`1000.` and at least 16 more
/// lower-case hex digits or dots) replaced by a placeholder: for messages that echo what a user
/// typed, where a refresh token pasted into the wrong field (a data centre, a connector name)
/// must not be shown back.
pub(crate) fn scrub_tokens(text: &str) -> std::borrow::Cow<'_, str> {
    const PREFIX: &str = "1000.";
    const PLACEHOLDER: &str = "1000.[a value shaped like a Zoho token, not shown]";
    let tail_len = |rest: &str| {
        rest.bytes()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'.')
            .count()
    };
    if !text
        .match_indices(PREFIX)
        .any(|(i, _)| tail_len(&text[i + PREFIX.len()..]) >= 16)
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        let tail = tail_len(&rest[i + PREFIX.len()..]);
        out.push_str(&rest[..i]);
        if tail >= 16 {
            out.push_str(PLACEHOLDER);
        } else {
            out.push_str(&rest[i..i + PREFIX.len() + tail]);
        }
        rest = &rest[i + PREFIX.len() + tail..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod scrub_tests {
    use super::scrub_tokens;

    #[test]
    fn token_shaped_values_are_not_echoed_and_the_rest_is() {
        let rt = "1000.0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef";
        let message = format!("unknown data centre `{rt}`: expected us");
        let shown = scrub_tokens(&message);
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(
            shown.starts_with("unknown data centre `1000.[a value"),
            "{shown}"
        );
        assert!(shown.ends_with("`: expected us"));
        // Client ids (upper case) and short values are not secrets.
        assert_eq!(
            scrub_tokens("client 1000.ABCDEF1234567890XYZ"),
            "client 1000.ABCDEF1234567890XYZ"
        );
        assert_eq!(scrub_tokens("version 1000.5"), "version 1000.5");
    }
}
