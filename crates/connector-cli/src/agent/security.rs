//! What a request must show before the agent answers it.
//!
//! - the fixed header `X-Connector-Agent: 1`, exactly once (a server-side request forgery through
//!   some web app on this host, or a browser, cannot set it): else 403;
//! - no browser or proxy markers (`Origin`, `Referer`, `Sec-Fetch-*` — but a lone
//!   `Sec-Fetch-Mode: cors`, which Node's `fetch` sends —, `X-Forwarded-For`,
//!   `X-Forwarded-Host`, `X-Real-IP`, `Forwarded`, `Via`): else 403;
//! - a `Host` (and, in an absolute-form request target, an authority) naming the agent: `agent`,
//!   `localhost`, `127.0.0.1` or `[::1]`, with the listener's port over TCP — so a DNS-rebound
//!   name or a request meant for another host is refused: else 403;
//! - over TCP, `Authorization: Bearer <token>` with the agent's token (from a 0600 file), or the
//!   bearer of a connector's allow list (then good for that connector only): else 401;
//! - per-connector allow lists, when given: the peer's uid on the Unix socket (SO_PEERCRED), or
//!   a bearer token: else 403.

use super::{AGENT_HEADER, AGENT_HEADER_VALUE};
use axum::http::{HeaderMap, StatusCode, Uri};
use std::collections::BTreeMap;

/// Who is asking, as far as the transport tells.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// The peer's uid (Unix socket only).
    pub uid: Option<u32>,
    /// The peer's gid (Unix socket only).
    pub gid: Option<u32>,
    /// Whether the request came over TCP.
    pub tcp: bool,
    /// The listener's port (TCP only): what a `Host` must name.
    pub local_port: Option<u16>,
}

/// Headers only browsers and proxies send.
const BROWSER_OR_PROXY: [&str; 7] = [
    "origin",
    "referer",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "via",
];

/// Whether `name` is fetch metadata only a browser sends: every `Sec-Fetch-*` header, except a
/// lone `Sec-Fetch-Mode: cors` — what Node's `fetch` (undici) sends; a browser always sends
/// `Sec-Fetch-Site` and `Sec-Fetch-Dest` with it.
fn browser_fetch_metadata(name: &str, headers: &HeaderMap) -> bool {
    match name {
        "sec-fetch-mode" => headers.get(name).is_none_or(|v| v != "cors"),
        _ => name.starts_with("sec-fetch-"),
    }
}

/// Whether `authority` (a `Host` value) names this agent.
fn names_the_agent(authority: &str, peer: Peer) -> bool {
    let Ok(parsed) = authority.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
    let local = matches!(host, "127.0.0.1" | "::1") || host.eq_ignore_ascii_case("localhost");
    if peer.tcp {
        // DNS rebinding: a browser sends the attacker's name; the port must be ours too.
        return local && parsed.port_u16() == peer.local_port;
    }
    local || host.eq_ignore_ascii_case("agent")
}

/// One entry of a connector's allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A user id (Unix socket peers).
    Uid(u32),
    /// A group id (Unix socket peers whose primary group it is).
    Gid(u32),
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
    pub fn check_request(&self, uri: &Uri, headers: &HeaderMap, peer: Peer) -> Result<(), Refusal> {
        let mut agent = headers.get_all(AGENT_HEADER).iter();
        if agent.next().and_then(|v| v.to_str().ok()) != Some(AGENT_HEADER_VALUE)
            || agent.next().is_some()
        {
            return Err((
                StatusCode::FORBIDDEN,
                "the `X-Connector-Agent: 1` header must be sent once",
            ));
        }
        let marked = BROWSER_OR_PROXY.iter().any(|m| headers.contains_key(*m))
            || headers
                .keys()
                .any(|k| browser_fetch_metadata(k.as_str(), headers));
        if marked {
            return Err((
                StatusCode::FORBIDDEN,
                "requests from browsers or through proxies are refused",
            ));
        }
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok());
        let target = uri.authority().map(|a| a.as_str());
        let named = match (host, target) {
            (Some(h), Some(t)) => h.eq_ignore_ascii_case(t) && names_the_agent(h, peer),
            (Some(h), None) => names_the_agent(h, peer),
            (None, _) => false,
        };
        if !named {
            return Err((
                StatusCode::FORBIDDEN,
                "the request's Host does not name this agent (use http://agent/… on the socket, http://127.0.0.1:PORT/… over TCP)",
            ));
        }
        if peer.tcp {
            // One Authorization header: the agent's TCP token, or a connector's allow-list
            // bearer (which `check_connector` then holds to that connector).
            let ok = bearer(headers).is_some_and(|given| {
                self.tcp_token.as_deref().is_some_and(|t| same(t, given))
                    || self
                        .allow
                        .values()
                        .flatten()
                        .any(|a| matches!(a, Allowed::Bearer(t) if same(t, given)))
            });
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
            Allowed::Gid(gid) => peer.gid == Some(*gid),
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
            gid: Some(1),
            tcp: false,
            local_port: None,
        };
        let tcp = Peer {
            uid: None,
            gid: None,
            tcp: true,
            local_port: Some(8799),
        };
        let path: Uri = "/v1/connectors".parse().unwrap();
        let check = |h: &HeaderMap, peer| policy.check_request(&path, h, peer);
        assert_eq!(
            check(&headers(&[("host", "agent")]), unix).unwrap_err().0,
            403
        );
        let ok = headers(&[("x-connector-agent", "1"), ("host", "agent")]);
        assert!(check(&ok, unix).is_ok());
        for marker in [
            ("origin", "http://evil"),
            ("referer", "http://evil/"),
            ("sec-fetch-mode", "no-cors"),
            ("sec-fetch-site", "cross-site"),
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-host", "evil"),
        ] {
            let marked = headers(&[("x-connector-agent", "1"), ("host", "agent"), marker]);
            assert_eq!(check(&marked, unix).unwrap_err().0, 403, "{marker:?}");
        }
        let mut twice = ok.clone();
        twice.append("x-connector-agent", "0".parse().unwrap());
        assert_eq!(
            check(&twice, unix).unwrap_err().0,
            403,
            "a duplicated header"
        );
        let tcp_ok = |auth: &str| {
            headers(&[
                ("x-connector-agent", "1"),
                ("host", "127.0.0.1:8799"),
                ("authorization", auth),
            ])
        };
        assert_eq!(
            check(
                &headers(&[("x-connector-agent", "1"), ("host", "127.0.0.1:8799")]),
                tcp
            )
            .unwrap_err()
            .0,
            401
        );
        assert_eq!(check(&tcp_ok("Bearer t0x"), tcp).unwrap_err().0, 401);
        assert!(check(&tcp_ok("Bearer t0k"), tcp).is_ok());
        // DNS rebinding and other hosts: the Host must name the agent (and its port over TCP).
        for host in [
            "evil.example:8799",
            "127.0.0.1:80",
            "localhost",
            "agent:8799",
        ] {
            let mut h = tcp_ok("Bearer t0k");
            h.insert("host", host.parse().unwrap());
            assert_eq!(check(&h, tcp).unwrap_err().0, 403, "{host}");
        }
        let absolute: Uri = "http://evil.example/v1/connectors".parse().unwrap();
        assert_eq!(
            policy.check_request(&absolute, &ok, unix).unwrap_err().0,
            403
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
