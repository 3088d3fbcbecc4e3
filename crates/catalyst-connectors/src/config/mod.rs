//! Connector configuration: the official SDKs' JSON shape, the same shape in TOML, or a typed
//! builder. Everything is validated when the [`Connection`](crate::Connection) is built, and every
//! problem is reported at once.

mod parse;
mod validate;

use parse::{Number, RawConnector};
pub(crate) use parse::{
    Settings, open_to_others, parse_settings, parse_toml_text, parse_value, read_file,
};
pub(crate) use validate::check_url;

use crate::dc::DataCenter;
use crate::secret::{ClientSecret, RefreshToken, SdkSecretKey};
use std::fmt;
use std::time::Duration;

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
    /// At most this many live tokens per refresh token (`None`: the connection's default).
    pub(crate) live_token_limit: Option<u32>,
    pub(crate) api_domain: Option<String>,
    pub(crate) catalyst_sdk: CatalystSdk,
    pub(crate) secret_key: Option<SdkSecretKey>,
}

/// Which official SDK's key and record a connector shares in Catalyst Cache (the setting
/// `catalyst_sdk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CatalystSdk {
    /// `"node-v3"`: zcatalyst-sdk-node 3.x and the Python SDK 1.x — key `ZC_CONN_<name>:<hash>`,
    /// the access token in the clear.
    #[default]
    NodeV3,
    /// `"js"`: the modular JS SDK's `@zcatalyst/connector` — key `ZC_CONN_<name>` (no credential
    /// hash), the access token encrypted with the connector's `secret_key` when it has one
    /// (AES-256-GCM, key by scrypt).
    Js,
}

impl CatalystSdk {
    /// The setting's value: `node-v3` or `js`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeV3 => "node-v3",
            Self::Js => "js",
        }
    }
}

impl std::str::FromStr for CatalystSdk {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "node-v3" => Ok(Self::NodeV3),
            "js" => Ok(Self::Js),
            other => Err(format!(
                "unknown catalyst_sdk `{other}`; use \"node-v3\" (zcatalyst-sdk-node 3.x, Python 1.x; the default) or \"js\" (@zcatalyst/connector)"
            )),
        }
    }
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

    /// `live_token_limit`: at most this many tokens of one refresh token live at once
    /// (`None`: the connection's default, 10).
    pub fn live_token_limit(&self) -> Option<u32> {
        self.live_token_limit
    }

    /// The API domain used when the token response names none.
    pub fn default_api_domain(&self) -> Option<&str> {
        self.api_domain.as_deref()
    }

    /// Whether a refresh token is configured.
    pub fn has_refresh_token(&self) -> bool {
        self.refresh_token.is_some()
    }

    /// Which SDK's key and record this connector shares in Catalyst Cache.
    pub fn catalyst_sdk(&self) -> CatalystSdk {
        self.catalyst_sdk
    }

    /// Whether a `secret_key` (the JS SDK's token encryption) is configured.
    pub fn has_secret_key(&self) -> bool {
        self.secret_key.is_some()
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
    /// Sets `catalyst_sdk`: which SDK's key and record to share in Catalyst Cache.
    pub fn catalyst_sdk(mut self, v: CatalystSdk) -> Self {
        self.raw.catalyst_sdk = Some(v.as_str().to_owned());
        self
    }
    /// Sets `secret_key`: the JS SDK's passphrase for the access token in Catalyst Cache (with
    /// [`CatalystSdk::Js`]).
    pub fn secret_key(mut self, v: impl Into<String>) -> Self {
        self.raw.secret_key = Some(SdkSecretKey::new(v.into()));
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
    /// Sets `live_token_limit`: at most this many of its tokens live at once (1–30).
    pub fn live_token_limit(mut self, n: u32) -> Self {
        self.raw.live_token_limit = Some(Number::Seconds(u64::from(n)));
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
        let built = validate::validate(&self.name, self.raw, &mut issues);
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
        // What a user typed is echoed, except values shaped like tokens (a refresh token pasted
        // as a connector name or a data centre).
        let scrub = crate::secret::scrub_tokens;
        if let Some(c) = &self.connector {
            write!(
                f,
                "{}connector `{}`",
                if wrote { ": " } else { "" },
                scrub(c)
            )?;
            wrote = true;
        }
        if let Some(field) = &self.field {
            write!(
                f,
                "{}field `{}`",
                if wrote { ", " } else { "" },
                scrub(field)
            )?;
            wrote = true;
        }
        write!(
            f,
            "{}{}",
            if wrote { ": " } else { "" },
            scrub(&self.problem)
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use serde_json::json;

    fn parse(v: Value) -> (Vec<ConnectorConfig>, Vec<ConfigIssue>) {
        let mut issues = Vec::new();
        let c = parse_value(&v, None, &mut issues, &mut Vec::new());
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
