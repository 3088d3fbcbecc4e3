//! Validation of one connector's fields: names, URLs (https unless loopback), numbers, the `dc`.

use super::parse::{Number, RawConnector};
use super::{CatalystSdk, ConfigIssue, ConnectorConfig};
use crate::dc::DataCenter;
use crate::secret::{ClientSecret, ExposeSecret, SdkSecretKey};
use std::time::Duration;
use url::Url;

/// Checks a connector name can form a cache key (`ZC_CONN_<name>:<hash>`).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("connector name is empty".into());
    }
    if name.chars().count() > 100 {
        return Err("connector name is longer than 100 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ':')
    {
        return Err(format!(
            "connector name contains {c:?}, which cannot appear in a cache key (no whitespace, control characters or `:`)"
        ));
    }
    // Invisible and direction-changing characters make a name read as another one.
    if let Some(c) = name.chars().find(|c| {
        matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    }) {
        return Err(format!(
            "connector name contains the invisible character U+{:04X} (a direction or zero-width mark); use printable characters only",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Parses a URL and requires https (http only for loopback hosts).
pub(crate) fn check_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
    if crate::urls::may_carry_secrets(&url) {
        return Ok(url);
    }
    match url.scheme() {
        "http" => Err(
            "plain http is allowed only for loopback hosts (localhost, 127.0.0.1, ::1); use https"
                .into(),
        ),
        other => Err(format!("unsupported URL scheme `{other}`; use https")),
    }
}

/// Collects one connector's problems while its fields are checked.
struct Checker<'a> {
    name: &'a str,
    issues: &'a mut Vec<ConfigIssue>,
    /// Fields present with the wrong type (already reported; not to be reported missing too).
    mistyped: Vec<String>,
    /// The token endpoint of the `dc`, if one was given and parsed.
    dc_url: Option<String>,
    /// Whether a `dc` was given (even one that failed to parse: it was meant to fill the URLs).
    dc_given: bool,
}

impl Checker<'_> {
    fn push(&mut self, field: Option<&str>, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            source: None,
            connector: Some(self.name.to_owned()),
            field: field.map(str::to_owned),
            problem: problem.into(),
        });
    }

    fn mistyped(&self, field: &str) -> bool {
        self.mistyped.iter().any(|m| m == field)
    }

    /// A required, non-empty text field.
    fn required(&mut self, field: &str, v: Option<String>) -> Option<String> {
        match v {
            Some(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(_) => {
                self.push(Some(field), "is empty");
                None
            }
            None if self.mistyped(field) => None,
            None => {
                self.push(Some(field), "is missing");
                None
            }
        }
    }

    fn client_secret(&mut self, v: Option<ClientSecret>) -> Option<ClientSecret> {
        match v {
            Some(s) if !s.expose_secret().trim().is_empty() => Some(s),
            Some(_) => {
                self.push(Some("client_secret"), "is empty");
                None
            }
            None if self.mistyped("client_secret") => None,
            None => {
                self.push(Some("client_secret"), "is missing");
                None
            }
        }
    }

    /// A URL field; `needed` ones default to the `dc`'s token endpoint.
    fn url(&mut self, field: &str, v: Option<String>, needed: bool) -> Option<String> {
        let v = match v {
            Some(s) if s.trim().is_empty() => {
                self.push(Some(field), "is empty");
                return None;
            }
            Some(s) => s,
            None if needed => match &self.dc_url {
                Some(u) => u.clone(),
                None if self.dc_given || self.mistyped(field) => return None,
                None => {
                    self.push(
                        Some(field),
                        "is missing (set it, or set `dc` to use that data centre's token endpoint)",
                    );
                    return None;
                }
            },
            None => return None,
        };
        match check_url(&v) {
            Ok(_) => Some(v.trim().to_owned()),
            Err(p) => {
                self.push(Some(field), p);
                None
            }
        }
    }

    /// `catalyst_sdk` and `secret_key`: a known SDK, and a key only where that SDK uses one.
    fn catalyst_sdk(
        &mut self,
        sdk: Option<String>,
        key: Option<SdkSecretKey>,
    ) -> (CatalystSdk, Option<SdkSecretKey>) {
        let sdk = match sdk.as_deref().map(str::parse::<CatalystSdk>) {
            None => CatalystSdk::default(),
            Some(Ok(sdk)) => sdk,
            Some(Err(problem)) => {
                self.push(Some("catalyst_sdk"), problem);
                CatalystSdk::default()
            }
        };
        let key = key.filter(|k| {
            if k.expose_secret().is_empty() {
                self.push(Some("secret_key"), "is empty; remove it, or set the JS SDK's key");
                return false;
            }
            if sdk != CatalystSdk::Js {
                self.push(
                    Some("secret_key"),
                    "is the modular JS SDK's token encryption: set `catalyst_sdk` to \"js\" too (zcatalyst-sdk-node 3.x and Python 1.x read tokens in the clear)",
                );
                return false;
            }
            true
        });
        (sdk, key)
    }

    /// How many live tokens per refresh token this connector may hold: 1–30 (Zoho's caps are 10
    /// to 30 depending on the service).
    fn live_token_limit(&mut self, v: Option<Number>) -> Option<u32> {
        match v {
            None => None,
            Some(Number::Seconds(n @ 1..=30)) => u32::try_from(n).ok(),
            Some(Number::Seconds(n)) => {
                self.push(
                    Some("live_token_limit"),
                    format!("must be 1 to 30 (Zoho's caps per refresh token), found {n}"),
                );
                None
            }
            Some(Number::Invalid(found)) => {
                self.push(
                    Some("live_token_limit"),
                    format!("must be a whole number, found {found}"),
                );
                None
            }
        }
    }

    /// A positive whole number of seconds.
    fn seconds(&mut self, field: &str, v: Option<Number>) -> Option<Duration> {
        match v {
            None => None,
            Some(Number::Seconds(0)) => {
                self.push(Some(field), "must be a positive number of seconds, found 0");
                None
            }
            Some(Number::Seconds(s)) => Some(Duration::from_secs(s)),
            Some(Number::Invalid(found)) => {
                self.push(
                    Some(field),
                    format!(
                        "must be a whole number of seconds (a number or numeric string), found {found}"
                    ),
                );
                None
            }
        }
    }
}

/// Checks one connector's raw fields; `None` (with the problems in `issues`) if any is wrong.
pub(super) fn validate(
    name: &str,
    mut raw: RawConnector,
    issues: &mut Vec<ConfigIssue>,
) -> Option<ConnectorConfig> {
    let start = issues.len();
    let mut c = Checker {
        name,
        mistyped: std::mem::take(&mut raw.mistyped),
        dc_url: None,
        dc_given: raw.dc.is_some(),
        issues,
    };
    if let Err(p) = check_name(name) {
        c.push(None, p);
    }
    let dc = match raw.dc.as_deref().map(str::parse::<DataCenter>) {
        None => None,
        Some(Ok(dc)) => Some(dc),
        Some(Err(e)) => {
            c.push(Some("dc"), e.to_string());
            None
        }
    };
    c.dc_url = dc.map(DataCenter::token_url);
    let client_id = c.required("client_id", raw.client_id);
    let client_secret = c.client_secret(raw.client_secret);
    let auth_url = c.url("auth_url", raw.auth_url, true);
    let refresh_url = c.url("refresh_url", raw.refresh_url, true);
    let redirect_url = c.url("redirect_url", raw.redirect_url, false);
    let api_domain = c.url("api_domain", raw.api_domain, false);
    let expires_in = c.seconds("expires_in", raw.expires_in);
    let refresh_in = c.seconds("refresh_in", raw.refresh_in);
    let live_token_limit = c.live_token_limit(raw.live_token_limit);
    let (catalyst_sdk, secret_key) = c.catalyst_sdk(raw.catalyst_sdk, raw.secret_key);
    if c.issues.len() > start {
        return None;
    }
    let refresh_url = refresh_url?;
    let api_domain = api_domain.or_else(|| {
        dc.or_else(|| {
            Url::parse(&refresh_url)
                .ok()
                .and_then(|u| u.host_str().and_then(DataCenter::from_accounts_host))
        })
        .map(|dc| dc.api_domain().to_owned())
    });
    Some(ConnectorConfig {
        name: name.to_owned(),
        client_id: client_id?,
        client_secret: client_secret?,
        auth_url: auth_url?,
        refresh_url,
        refresh_token: raw
            .refresh_token
            .filter(|t| !t.expose_secret().trim().is_empty()),
        redirect_url,
        expires_in,
        refresh_in,
        live_token_limit,
        api_domain,
        catalyst_sdk,
        secret_key,
    })
}
