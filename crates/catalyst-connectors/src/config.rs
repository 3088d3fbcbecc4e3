//! Connector configuration: the official SDKs' JSON shape, the same shape in TOML, or a typed
//! builder. Everything is validated when the [`Connection`](crate::Connection) is built, and every
//! problem is reported at once.

use crate::dc::DataCenter;
use crate::secret::{ClientSecret, ExposeSecret, RefreshToken};
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use url::Url;

/// The validated configuration of one connector.
///
/// Secrets are held in redacting types; `Debug` never shows them.
#[derive(Clone, Debug)]
pub struct ConnectorConfig {
    pub(crate) name: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: ClientSecret,
    pub(crate) auth_url: String,
    pub(crate) refresh_url: String,
    pub(crate) refresh_token: Option<RefreshToken>,
    pub(crate) redirect_url: Option<String>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) refresh_in: Option<Duration>,
    pub(crate) api_domain: Option<String>,
}

impl ConnectorConfig {
    /// Starts a typed builder for the connector `name`.
    ///
    /// ```
    /// use catalyst_connectors::{ConnectorConfig, DataCenter};
    /// let crm = ConnectorConfig::builder("crm")
    ///     .client_id("1000.ABC")
    ///     .client_secret("secret")
    ///     .data_center(DataCenter::Eu)
    ///     .refresh_token("1000.refresh")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(crm.refresh_url(), "https://accounts.zoho.eu/oauth/v2/token");
    /// ```
    pub fn builder(name: impl Into<String>) -> ConnectorConfigBuilder {
        ConnectorConfigBuilder {
            name: name.into(),
            raw: RawConnector::default(),
        }
    }

    /// The connector's name (unique within a connection).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OAuth client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The token endpoint used for the authorization-code exchange.
    pub fn auth_url(&self) -> &str {
        &self.auth_url
    }

    /// The token endpoint used to refresh.
    pub fn refresh_url(&self) -> &str {
        &self.refresh_url
    }

    /// The redirect URL registered for the client, if any.
    pub fn redirect_url(&self) -> Option<&str> {
        self.redirect_url.as_deref()
    }

    /// The configured upper bound on a token's lifetime, if any.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// The configured refresh interval, if any.
    pub fn refresh_in(&self) -> Option<Duration> {
        self.refresh_in
    }

    /// The API domain used when the token response names none.
    pub fn default_api_domain(&self) -> Option<&str> {
        self.api_domain.as_deref()
    }

    /// Whether a refresh token is configured.
    pub fn has_refresh_token(&self) -> bool {
        self.refresh_token.is_some()
    }
}

/// Typed builder for [`ConnectorConfig`]; validation happens in [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct ConnectorConfigBuilder {
    name: String,
    raw: RawConnector,
}

impl ConnectorConfigBuilder {
    /// Sets `client_id`.
    pub fn client_id(mut self, v: impl Into<String>) -> Self {
        self.raw.client_id = Some(v.into());
        self
    }
    /// Sets `client_secret`.
    pub fn client_secret(mut self, v: impl Into<String>) -> Self {
        self.raw.client_secret = Some(ClientSecret::new(v.into()));
        self
    }
    /// Sets `auth_url`, the token endpoint for the code exchange.
    pub fn auth_url(mut self, v: impl Into<String>) -> Self {
        self.raw.auth_url = Some(v.into());
        self
    }
    /// Sets `refresh_url`, the token endpoint for refreshing.
    pub fn refresh_url(mut self, v: impl Into<String>) -> Self {
        self.raw.refresh_url = Some(v.into());
        self
    }
    /// Sets both token endpoints to the same URL.
    pub fn token_url(self, v: impl Into<String>) -> Self {
        let v = v.into();
        self.auth_url(v.clone()).refresh_url(v)
    }
    /// Sets `refresh_token`.
    pub fn refresh_token(mut self, v: impl Into<String>) -> Self {
        self.raw.refresh_token = Some(RefreshToken::new(v.into()));
        self
    }
    /// Sets `redirect_url`.
    pub fn redirect_url(mut self, v: impl Into<String>) -> Self {
        self.raw.redirect_url = Some(v.into());
        self
    }
    /// Sets `expires_in`: tokens are assumed to live at most this long.
    pub fn expires_in(mut self, v: Duration) -> Self {
        self.raw.expires_in = Some(Number::Seconds(v.as_secs()));
        self
    }
    /// Sets `refresh_in`: refresh this long after a token is issued (never beyond its expiry).
    pub fn refresh_in(mut self, v: Duration) -> Self {
        self.raw.refresh_in = Some(Number::Seconds(v.as_secs()));
        self
    }
    /// Fills missing token URLs and the default API domain from a data centre.
    pub fn data_center(mut self, dc: DataCenter) -> Self {
        self.raw.dc = Some(dc.code().to_owned());
        self
    }
    /// Sets the API domain used when a token response names none.
    pub fn api_domain(mut self, v: impl Into<String>) -> Self {
        self.raw.api_domain = Some(v.into());
        self
    }

    /// Validates and builds the configuration.
    pub fn build(self) -> Result<ConnectorConfig, ConfigErrors> {
        let mut issues = Vec::new();
        let built = validate(&self.name, self.raw, &mut issues);
        match built {
            Some(c) if issues.is_empty() => Ok(c),
            _ => Err(ConfigErrors(issues)),
        }
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where the problem is: a file path or "builder".
    pub source: Option<String>,
    /// The connector concerned, when there is one.
    pub connector: Option<String>,
    /// The field concerned, when there is one.
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if let Some(s) = &self.source {
            write!(f, "{s}")?;
            wrote = true;
        }
        if let Some(c) = &self.connector {
            write!(f, "{}connector `{c}`", if wrote { ": " } else { "" })?;
            wrote = true;
        }
        if let Some(field) = &self.field {
            write!(f, "{}field `{field}`", if wrote { ", " } else { "" })?;
            wrote = true;
        }
        write!(f, "{}{}", if wrote { ": " } else { "" }, self.problem)
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl ConfigErrors {
    /// The individual problems.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid connector configuration: {one}"),
            many => {
                write!(
                    f,
                    "invalid connector configuration ({} problems):",
                    many.len()
                )?;
                for issue in many {
                    write!(f, "\n  - {issue}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Clone, Debug)]
enum Number {
    Seconds(u64),
    Invalid(String),
}

/// Unvalidated fields of one connector, as read from any source.
#[derive(Clone, Debug, Default)]
struct RawConnector {
    client_id: Option<String>,
    client_secret: Option<ClientSecret>,
    auth_url: Option<String>,
    refresh_url: Option<String>,
    refresh_token: Option<RefreshToken>,
    redirect_url: Option<String>,
    expires_in: Option<Number>,
    refresh_in: Option<Number>,
    dc: Option<String>,
    api_domain: Option<String>,
    /// Fields present with the wrong type (already reported; not to be reported missing too).
    mistyped: Vec<String>,
}

const KNOWN_FIELDS: &[&str] = &[
    "client_id",
    "client_secret",
    "auth_url",
    "refresh_url",
    "refresh_token",
    "redirect_url",
    "expires_in",
    "refresh_in",
    "dc",
    "api_domain",
];

/// Reads connector configs from a JSON value of the SDK shape (`{name: {client_id, …}}`), adding
/// every problem to `issues`.
pub(crate) fn parse_value(
    value: &Value,
    source: Option<&str>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<ConnectorConfig> {
    let issue = |connector: Option<&str>, field: Option<&str>, problem: String| ConfigIssue {
        source: source.map(str::to_owned),
        connector: connector.map(str::to_owned),
        field: field.map(str::to_owned),
        problem,
    };
    let Some(map) = value.as_object() else {
        issues.push(issue(
            None,
            None,
            format!(
                "expected an object mapping connector names to their settings, found {}",
                kind_of(value)
            ),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, entry) in map {
        if name.starts_with('$') {
            continue; // connection settings; see `parse_settings`
        }
        let Some(fields) = entry.as_object() else {
            issues.push(issue(
                Some(name),
                None,
                format!("expected an object of settings, found {}", kind_of(entry)),
            ));
            continue;
        };
        let mut local = Vec::new();
        let raw = read_raw(name, fields, &mut local);
        if let Some(c) = validate(name, raw, &mut local) {
            if local.is_empty() {
                out.push(c);
            }
        }
        issues.extend(local.into_iter().map(|mut i| {
            i.source = source.map(str::to_owned);
            i
        }));
    }
    out
}

fn read_raw(
    name: &str,
    fields: &Map<String, Value>,
    issues: &mut Vec<ConfigIssue>,
) -> RawConnector {
    for key in fields.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            tracing::warn!(connector = %name, field = %key, "ignoring unknown connector setting");
        }
    }
    let mut mistyped = Vec::new();
    let mut string = |field: &str| -> Option<String> {
        match fields.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                issues.push(ConfigIssue {
                    source: None,
                    connector: Some(name.to_owned()),
                    field: Some(field.to_owned()),
                    problem: format!("expected a string, found {}", kind_of(other)),
                });
                mistyped.push(field.to_owned());
                None
            }
        }
    };
    let mut raw = RawConnector {
        client_id: string("client_id"),
        client_secret: string("client_secret").map(ClientSecret::new),
        auth_url: string("auth_url"),
        refresh_url: string("refresh_url"),
        refresh_token: string("refresh_token").map(RefreshToken::new),
        redirect_url: string("redirect_url"),
        dc: string("dc"),
        api_domain: string("api_domain"),
        ..RawConnector::default()
    };
    raw.mistyped = mistyped;
    let number = |field: &str| -> Option<Number> {
        match fields.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(match n.as_u64() {
                Some(v) => Number::Seconds(v),
                None => Number::Invalid(n.to_string()),
            }),
            Some(Value::String(s)) => Some(match s.trim().parse::<u64>() {
                Ok(v) => Number::Seconds(v),
                Err(_) => Number::Invalid(format!("{s:?}")),
            }),
            Some(other) => Some(Number::Invalid(kind_of(other).to_owned())),
        }
    };
    raw.expires_in = number("expires_in");
    raw.refresh_in = number("refresh_in");
    raw
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

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
    Ok(())
}

/// Parses a URL and requires https (http only for loopback hosts).
pub(crate) fn check_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if crate::urls::is_loopback(&url) => Ok(url),
        "http" => Err(
            "plain http is allowed only for loopback hosts (localhost, 127.0.0.1, ::1); use https"
                .into(),
        ),
        other => Err(format!("unsupported URL scheme `{other}`; use https")),
    }
}

fn validate(
    name: &str,
    mut raw: RawConnector,
    issues: &mut Vec<ConfigIssue>,
) -> Option<ConnectorConfig> {
    let start = issues.len();
    let mistyped = std::mem::take(&mut raw.mistyped);
    let mut push = |field: Option<&str>, problem: String| {
        issues.push(ConfigIssue {
            source: None,
            connector: Some(name.to_owned()),
            field: field.map(str::to_owned),
            problem,
        })
    };
    if let Err(p) = check_name(name) {
        push(None, p);
    }
    let dc = match raw.dc.as_deref().map(str::parse::<DataCenter>) {
        None => None,
        Some(Ok(dc)) => Some(dc),
        Some(Err(e)) => {
            push(Some("dc"), e.to_string());
            None
        }
    };
    let mut required = |field: &str, v: Option<String>| -> Option<String> {
        match v {
            Some(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(_) => {
                push(Some(field), "is empty".into());
                None
            }
            None if mistyped.iter().any(|m| m == field) => None,
            None => {
                push(Some(field), "is missing".into());
                None
            }
        }
    };
    let client_id = required("client_id", raw.client_id);
    let client_secret = match raw.client_secret {
        Some(s) if !s.expose_secret().trim().is_empty() => Some(s),
        Some(_) => {
            push(Some("client_secret"), "is empty".into());
            None
        }
        None if mistyped.iter().any(|m| m == "client_secret") => None,
        None => {
            push(Some("client_secret"), "is missing".into());
            None
        }
    };
    let dc_url = dc.map(DataCenter::token_url);
    // A `dc` that failed to parse was meant to fill the URLs: do not also report them missing.
    let dc_given = raw.dc.is_some();
    let mut url_field = |field: &str, v: Option<String>, needed: bool| -> Option<String> {
        let v = match v {
            Some(s) if s.trim().is_empty() => {
                push(Some(field), "is empty".into());
                return None;
            }
            Some(s) => s,
            None if needed => match &dc_url {
                Some(u) => u.clone(),
                None if dc_given || mistyped.iter().any(|m| m == field) => return None,
                None => {
                    push(
                        Some(field),
                        "is missing (set it, or set `dc` to use that data centre's token endpoint)"
                            .into(),
                    );
                    return None;
                }
            },
            None => return None,
        };
        match check_url(&v) {
            Ok(_) => Some(v.trim().to_owned()),
            Err(p) => {
                push(Some(field), p);
                None
            }
        }
    };
    let auth_url = url_field("auth_url", raw.auth_url, true);
    let refresh_url = url_field("refresh_url", raw.refresh_url, true);
    let redirect_url = url_field("redirect_url", raw.redirect_url, false);
    let api_domain = url_field("api_domain", raw.api_domain, false);
    let mut seconds = |field: &str, v: Option<Number>| -> Option<Duration> {
        match v {
            None => None,
            Some(Number::Seconds(0)) => {
                push(
                    Some(field),
                    "must be a positive number of seconds, found 0".into(),
                );
                None
            }
            Some(Number::Seconds(s)) => Some(Duration::from_secs(s)),
            Some(Number::Invalid(found)) => {
                push(
                    Some(field),
                    format!(
                        "must be a whole number of seconds (a number or numeric string), found {found}"
                    ),
                );
                None
            }
        }
    };
    let expires_in = seconds("expires_in", raw.expires_in);
    let refresh_in = seconds("refresh_in", raw.refresh_in);
    if issues.len() > start {
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
        api_domain,
    })
}

/// Reads a `.json` or `.toml` file (by extension) into the JSON value model.
pub(crate) fn read_file(path: &Path, issues: &mut Vec<ConfigIssue>) -> Option<Value> {
    let source_issue = |problem: String| ConfigIssue {
        source: Some(path.display().to_string()),
        connector: None,
        field: None,
        problem,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            issues.push(source_issue(format!("cannot read the file ({e})")));
            return None;
        }
    };
    let is_toml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let value = if is_toml {
        parse_toml_text(&text).map_err(source_issue)
    } else {
        serde_json::from_str::<Value>(&text)
            // serde_json's syntax errors name a position, never the content.
            .map_err(|e| source_issue(format!("not valid JSON ({e})")))
    };
    value.map_err(|issue| issues.push(issue)).ok()
}

/// Connection-wide settings, from the reserved top-level `$connector` object of a config:
/// `{"$connector": {"store": "sqlite:/path/tokens.db", "encryption_key_file": "/path/key"}}`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub store: Option<crate::store::StoreSpec>,
    pub encryption_key_file: Option<std::path::PathBuf>,
    /// The connector whose token calls Catalyst's API (for a `catalyst://` store).
    pub catalyst_auth: Option<String>,
}

/// Reads `$connector` settings (names starting with `$` are reserved for settings).
pub(crate) fn parse_settings(
    value: &Value,
    source: Option<&str>,
    settings: &mut Settings,
    issues: &mut Vec<ConfigIssue>,
) {
    let Some(map) = value.as_object() else {
        return;
    };
    let mut issue = |field: Option<&str>, problem: String| {
        issues.push(ConfigIssue {
            source: source.map(str::to_owned),
            connector: Some("$connector".into()),
            field: field.map(str::to_owned),
            problem,
        })
    };
    for (name, entry) in map.iter().filter(|(n, _)| n.starts_with('$')) {
        if name != "$connector" {
            issue(
                None,
                format!(
                    "`{name}`: names starting with `$` are reserved; the settings object is `$connector`"
                ),
            );
            continue;
        }
        let Some(fields) = entry.as_object() else {
            issue(
                None,
                format!("expected an object, found {}", kind_of(entry)),
            );
            continue;
        };
        for (field, v) in fields {
            match (field.as_str(), v.as_str()) {
                ("store", Some(s)) => match s.parse() {
                    Ok(spec) => settings.store = Some(spec),
                    Err(e) => issue(Some("store"), e.to_string()),
                },
                ("encryption_key_file", Some(p)) => settings.encryption_key_file = Some(p.into()),
                ("catalyst_auth", Some(name)) => settings.catalyst_auth = Some(name.to_owned()),
                ("store" | "encryption_key_file" | "catalyst_auth", None) => issue(
                    Some(field),
                    format!("expected a string, found {}", kind_of(v)),
                ),
                _ => issue(
                    Some(field),
                    "unknown setting (known: store, encryption_key_file, catalyst_auth)".into(),
                ),
            }
        }
    }
}

/// Parses TOML text into the JSON value model, with errors that name a line but never quote the
/// text (it may hold secrets).
pub(crate) fn parse_toml_text(text: &str) -> Result<Value, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match line {
            Some(l) => format!("not valid TOML at line {l}: {}", e.message()),
            None => format!("not valid TOML: {}", e.message()),
        }
    })?;
    serde_json::to_value(table).map_err(|e| format!("unsupported TOML value ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> (Vec<ConnectorConfig>, Vec<ConfigIssue>) {
        let mut issues = Vec::new();
        let c = parse_value(&v, None, &mut issues);
        (c, issues)
    }

    #[test]
    fn sdk_shape_with_numeric_strings_and_dc() {
        let (c, issues) = parse(json!({
            "crm": {"client_id": "1000.A", "client_secret": "s", "dc": "eu",
                     "refresh_token": "1000.r", "expires_in": "3600", "refresh_in": 1800},
        }));
        assert!(issues.is_empty(), "{issues:?}");
        let c = &c[0];
        assert_eq!(c.auth_url(), "https://accounts.zoho.eu/oauth/v2/token");
        assert_eq!(c.default_api_domain(), Some("https://www.zohoapis.eu"));
        assert_eq!(c.expires_in(), Some(Duration::from_secs(3600)));
        assert_eq!(c.refresh_in(), Some(Duration::from_secs(1800)));
    }

    #[test]
    fn api_domain_inferred_from_known_accounts_host() {
        let (c, _) = parse(json!({"crm": {"client_id": "a", "client_secret": "s",
            "auth_url": "https://accounts.zoho.in/oauth/v2/token",
            "refresh_url": "https://accounts.zoho.in/oauth/v2/token"}}));
        assert_eq!(c[0].default_api_domain(), Some("https://www.zohoapis.in"));
    }
}
