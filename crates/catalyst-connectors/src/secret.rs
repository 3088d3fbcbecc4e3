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
