//! The URL rules of the OAuth flows, in one place for the library and the CLI: the consent URL,
//! which accounts server a grant code may be sent to, and where plain http is allowed.

use crate::dc::DataCenter;
use url::{Host, Url};

/// Whether `url` points at a loopback host (`localhost`, `127.0.0.0/8`, `::1`): the only hosts
/// plain http is allowed for.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether a secret may be sent to `url`: https, or plain http to a loopback host (tests,
/// emulators). The one rule for token endpoints, API domains and Catalyst origins.
pub fn may_carry_secrets(url: &Url) -> bool {
    url.scheme() == "https" || (url.scheme() == "http" && is_loopback(url))
}

/// The consent page for a server-based client: `{accounts}/oauth/v2/auth` on the origin of the
/// connector's `auth_url` (its token endpoint), for `client_id`, asking for `scope` (comma-separated) with `access_type=offline` and
/// `prompt=consent` (so Zoho issues a refresh token), the `redirect_uri` and the `state`.
pub fn consent_url(
    auth_url: &str,
    client_id: &str,
    scope: &str,
    redirect_uri: &str,
    state: &str,
) -> Result<Url, url::ParseError> {
    let auth = Url::parse(auth_url)?;
    let mut url = Url::parse(&format!(
        "{}/oauth/v2/auth",
        auth.origin().ascii_serialization()
    ))?;
    url.query_pairs_mut()
        .append_pair("scope", scope)
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("access_type", "offline")
        .append_pair("prompt", "consent")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state);
    Ok(url)
}

/// Where to exchange a grant code whose redirect named `accounts_server` (Zoho's multi-DC
/// `accounts-server` parameter): its `/oauth/v2/token`, when it is a Zoho accounts server over
/// https or the origin of the connector's own `auth_url` (e.g. an emulator). `None` for any other
/// server: a code must never be sent there.
pub fn exchange_url_for(auth_url: &str, accounts_server: &str) -> Option<String> {
    let url = Url::parse(accounts_server).ok()?;
    let origin = url.origin().ascii_serialization();
    let configured = Url::parse(auth_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let zoho = url.scheme() == "https"
        && url
            .host_str()
            .and_then(DataCenter::from_accounts_host)
            .is_some();
    (zoho || origin == configured).then(|| format!("{origin}/oauth/v2/token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH_URL: &str = "http://127.0.0.1:9/oauth/v2/token";

    #[test]
    fn consent_url_asks_for_a_refresh_token() {
        let u = consent_url(
            AUTH_URL,
            "1000.ID",
            "ZohoCRM.users.READ",
            "http://127.0.0.1:1/cb",
            "st",
        )
        .unwrap();
        assert_eq!(u.path(), "/oauth/v2/auth");
        assert_eq!(u.origin().ascii_serialization(), "http://127.0.0.1:9");
        let q: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        for (k, v) in [
            ("access_type", "offline"),
            ("prompt", "consent"),
            ("client_id", "1000.ID"),
            ("state", "st"),
            ("redirect_uri", "http://127.0.0.1:1/cb"),
        ] {
            assert!(q.contains(&(k.into(), v.into())), "{k}: {q:?}");
        }
    }

    #[test]
    fn codes_go_only_to_zoho_or_the_configured_server() {
        let c = AUTH_URL;
        assert_eq!(
            exchange_url_for(c, "https://accounts.zoho.eu").as_deref(),
            Some("https://accounts.zoho.eu/oauth/v2/token")
        );
        assert_eq!(
            exchange_url_for(c, "http://127.0.0.1:9").as_deref(),
            Some("http://127.0.0.1:9/oauth/v2/token")
        );
        assert_eq!(exchange_url_for(c, "http://accounts.zoho.eu"), None);
        assert_eq!(exchange_url_for(c, "https://evil.example"), None);
        assert_eq!(exchange_url_for(c, "not a url"), None);
    }

    #[test]
    fn loopback_hosts() {
        for (u, want) in [
            ("http://localhost:1", true),
            ("http://127.0.0.2", true),
            ("http://[::1]:8", true),
            ("http://10.0.0.1", false),
            ("http://localhost.evil.example", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(u).unwrap()), want, "{u}");
        }
    }
}
