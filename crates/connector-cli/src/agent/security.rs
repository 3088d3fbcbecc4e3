//! What a request must show before the agent answers it.
//!
//! - the fixed header `X-Connector-Agent: 1` (a server-side request forgery through some web app
//!   on this host, or a browser, cannot set it): else 403;
//! - no browser or proxy markers (`Origin`, `Referer`-less CORS is not enough: any `Origin`,
//!   `X-Forwarded-For`, `Forwarded`, `Via`): else 403;
//! - over TCP, `Authorization: Bearer <token>` with the agent's token (from a 0600 file): else 401;
//! - per-connector allow lists, when given: the peer's uid on the Unix socket (SO_PEERCRED), or
//!   a bearer token: else 403.

use super::{AGENT_HEADER, AGENT_HEADER_VALUE};
use axum::http::{HeaderMap, StatusCode};
use std::collections::BTreeMap;

/// Who is asking, as far as the transport tells.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// The peer's uid (Unix socket only).
    pub uid: Option<u32>,
    /// Whether the request came over TCP.
    pub tcp: bool,
}

/// One entry of a connector's allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A user id (Unix socket peers).
    Uid(u32),
    /// A bearer token (compared in constant time).
    Bearer(String),
}

/// The agent's rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The bearer token TCP clients must send.
    pub tcp_token: Option<String>,
    /// Connector name → who may ask for its tokens (no entry: anyone who passed the rest).
    pub allow: BTreeMap<String, Vec<Allowed>>,
}

/// A refusal: status and reason.
pub type Refusal = (StatusCode, &'static str);

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Constant-time equality of two strings (lengths may differ).
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl Policy {
    /// Checks what every request must show.
    pub fn check_request(&self, headers: &HeaderMap, peer: Peer) -> Result<(), Refusal> {
        if headers.get(AGENT_HEADER).and_then(|v| v.to_str().ok()) != Some(AGENT_HEADER_VALUE) {
            return Err((
                StatusCode::FORBIDDEN,
                "missing the `X-Connector-Agent: 1` header",
            ));
        }
        for marker in ["origin", "x-forwarded-for", "forwarded", "via"] {
            if headers.contains_key(marker) {
                return Err((
                    StatusCode::FORBIDDEN,
                    "requests from browsers or through proxies are refused",
                ));
            }
        }
        if peer.tcp {
            let ok = match (&self.tcp_token, bearer(headers)) {
                (Some(expected), Some(given)) => same(expected, given),
                _ => false,
            };
            if !ok {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "a valid bearer token is required over TCP",
                ));
            }
        }
        Ok(())
    }

    /// Checks the connector's allow list, if it has one.
    pub fn check_connector(
        &self,
        connector: &str,
        headers: &HeaderMap,
        peer: Peer,
    ) -> Result<(), Refusal> {
        let Some(list) = self.allow.get(connector) else {
            return Ok(());
        };
        let token = bearer(headers);
        let allowed = list.iter().any(|a| match a {
            Allowed::Uid(uid) => peer.uid == Some(*uid),
            Allowed::Bearer(t) => token.is_some_and(|given| same(t, given)),
        });
        if allowed {
            Ok(())
        } else {
            Err((
                StatusCode::FORBIDDEN,
                "this client is not on the connector's allow list",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_markers_and_bearer() {
        let policy = Policy {
            tcp_token: Some("t0k".into()),
            ..Policy::default()
        };
        let unix = Peer {
            uid: Some(1),
            tcp: false,
        };
        let tcp = Peer {
            uid: None,
            tcp: true,
        };
        assert_eq!(
            policy.check_request(&headers(&[]), unix).unwrap_err().0,
            403
        );
        let ok = headers(&[("x-connector-agent", "1")]);
        assert!(policy.check_request(&ok, unix).is_ok());
        let browser = headers(&[("x-connector-agent", "1"), ("origin", "http://evil")]);
        assert_eq!(policy.check_request(&browser, unix).unwrap_err().0, 403);
        assert_eq!(policy.check_request(&ok, tcp).unwrap_err().0, 401);
        let wrong = headers(&[("x-connector-agent", "1"), ("authorization", "Bearer t0x")]);
        assert_eq!(policy.check_request(&wrong, tcp).unwrap_err().0, 401);
        let right = headers(&[("x-connector-agent", "1"), ("authorization", "Bearer t0k")]);
        assert!(policy.check_request(&right, tcp).is_ok());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
