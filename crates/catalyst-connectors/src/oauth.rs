//! The token endpoint client: form-encoded POSTs to Zoho Accounts and a parser for every answer
//! shape Zoho is known to send (see docs/zoho-protocol.md, sections 1–2).

use crate::error::{Error, TransientKind};
use crate::record::lenient_u64;
use crate::secret::{AccessTokenSecret, ClientSecret, ExposeSecret, GrantCode, RefreshToken};
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A successful token response.
#[derive(Debug, Clone)]
pub(crate) struct TokenResponse {
    pub access_token: AccessTokenSecret,
    pub lifetime: Duration,
    pub api_domain: Option<String>,
    pub refresh_token: Option<RefreshToken>,
}

/// The grant being exchanged.
pub(crate) enum Grant<'a> {
    Refresh(&'a RefreshToken),
    Code {
        code: &'a GrantCode,
        redirect_uri: Option<&'a str>,
    },
}

impl Grant<'_> {
    fn label(&self) -> &'static str {
        match self {
            Grant::Refresh(_) => "refresh token",
            Grant::Code { .. } => "grant code",
        }
    }
}

/// Timeouts for token requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpTimeouts {
    pub connect: Duration,
    pub total: Duration,
}

/// A dedicated HTTP client for token endpoints: no redirects, no default headers beyond a
/// user agent, rustls. Built (TLS roots loaded) only when the first request is about to be sent,
/// so a process that finds its token in a store never pays for it.
#[derive(Debug, Clone)]
pub(crate) struct TokenClient {
    timeouts: HttpTimeouts,
    http: Arc<OnceLock<Result<reqwest::Client, String>>>,
}

/// The longest token lifetime believed: a day. Zoho documents one-hour access tokens; an answer
/// that claims more than a day is not believed, and the token is taken to live Zoho's hour (so a
/// token handed out never outlives what Zoho honours by more than that hour's error).
const MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// Zoho's documented access-token lifetime, assumed for an answer that is not believed.
const ZOHO_LIFETIME_SECS: u64 = 3600;

/// The largest token response body we read.
const MAX_BODY: usize = 64 * 1024;

impl TokenClient {
    pub fn new(timeouts: HttpTimeouts) -> Result<Self, Error> {
        Ok(Self {
            timeouts,
            http: Arc::new(OnceLock::new()),
        })
    }

    /// The HTTP client, built on first use.
    fn http(&self) -> Result<&reqwest::Client, Error> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(self.timeouts.connect)
                    .timeout(self.timeouts.total)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("catalyst-connectors/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| error_chain(&e.without_url()))
            })
            .as_ref()
            .map_err(|e| Error::HttpClient(e.clone()))
    }

    /// POSTs one token request and classifies the answer.
    pub async fn request(
        &self,
        connector: &str,
        url: &str,
        client_id: &str,
        client_secret: &ClientSecret,
        grant: Grant<'_>,
    ) -> Result<TokenResponse, Error> {
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", client_id),
            ("client_secret", client_secret.expose_secret()),
        ];
        let mut secrets: Vec<&str> = vec![client_secret.expose_secret()];
        match &grant {
            Grant::Refresh(rt) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", rt.expose_secret()));
                secrets.push(rt.expose_secret());
            }
            Grant::Code { code, redirect_uri } => {
                form.push(("grant_type", "authorization_code"));
                form.push(("code", code.expose_secret()));
                secrets.push(code.expose_secret());
                if let Some(r) = redirect_uri {
                    form.push(("redirect_uri", r));
                }
            }
        }
        let transient = |kind, detail: String| Error::Transient {
            connector: connector.to_owned(),
            kind,
            detail,
        };
        let response = self
            .http()?
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| send_error(connector, e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_body(response)
            .await
            .map_err(|e| transient(classify_reqwest(&e), error_chain(&e.without_url())))?;
        parse_token_response(connector, &grant, status, retry_after, &body, &secrets)
    }
}

impl TokenClient {
    /// Revokes a refresh token: `POST url` with form `token=…`. Success is `{"status":"success"}`.
    pub async fn revoke(
        &self,
        connector: &str,
        url: &str,
        token: &RefreshToken,
    ) -> Result<(), Error> {
        let response = self
            .http()?
            .post(url)
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .map_err(|e| Error::Transient {
                connector: connector.to_owned(),
                kind: classify_reqwest(&e),
                detail: error_chain(&e.without_url()),
            })?;
        let status = response.status();
        let body = read_body(response).await.unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let ok = json
            .as_ref()
            .and_then(|v| v.get("status"))
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("success"));
        if status.is_success() && ok {
            return Ok(());
        }
        if status.is_server_error() {
            return Err(Error::Transient {
                connector: connector.to_owned(),
                kind: TransientKind::ServerError(status.as_u16()),
                detail: "the revoke endpoint answered with a server error".into(),
            });
        }
        let code = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(|c| scrub(c, &[token.expose_secret()]))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        Err(Error::Rejected {
            connector: connector.to_owned(),
            code,
            description: Some(
                "the refresh token was not revoked (unknown or already revoked)".into(),
            ),
        })
    }
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// A request that got no answer: a TLS certificate problem is a configuration error (the URL, or
/// something between us and it, is not who it should be); anything else may pass.
fn send_error(connector: &str, e: reqwest::Error) -> Error {
    let kind = classify_reqwest(&e);
    let detail = error_chain(&e.without_url());
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return Error::Tls {
            connector: connector.to_owned(),
            detail,
        };
    }
    Error::Transient {
        connector: connector.to_owned(),
        kind,
        detail,
    }
}

fn classify_reqwest(e: &reqwest::Error) -> TransientKind {
    if e.is_timeout() {
        TransientKind::Timeout
    } else {
        TransientKind::Network
    }
}

/// The error's message with its sources, e.g. "error sending request: connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}

/// Removes any secret we sent from provider-supplied text before it can reach an error message.
/// Replaces every secret we sent, then shortens (so no cut can leave part of a secret).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "[redacted]");
    }
    out.chars().take(300).collect()
}

/// Classifies a token endpoint answer. Zoho reports errors with HTTP 200 and `{"error": …}`, so
/// the body decides before the status does.
pub(crate) fn parse_token_response(
    connector: &str,
    grant: &Grant<'_>,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    secrets: &[&str],
) -> Result<TokenResponse, Error> {
    let connector = connector.to_owned();
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let obj = json.as_ref().and_then(Value::as_object);
    if let Some(code) = obj
        .and_then(|o| o.get("error"))
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        let code = scrub(code, secrets);
        let description = obj
            .and_then(|o| o.get("error_description"))
            .and_then(Value::as_str)
            .map(|d| scrub(d, secrets));
        return Err(classify_code(
            connector,
            grant,
            code,
            description,
            status,
            retry_after,
        ));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(Error::Throttled {
            connector,
            code: "HTTP 429".into(),
            description: None,
            retry_after,
            recorded: false,
        });
    }
    if status.is_server_error() {
        return Err(Error::Transient {
            connector,
            kind: TransientKind::ServerError(status.as_u16()),
            detail: "the token endpoint answered with a server error".into(),
        });
    }
    if !status.is_success() {
        return Err(Error::Rejected {
            connector,
            code: format!("HTTP {}", status.as_u16()),
            description: None,
        });
    }
    read_success(connector, json.as_ref(), obj)
}

/// Reads a 2xx answer without an `error`: the token, its lifetime, the API domain and any new
/// refresh token.
fn read_success(
    connector: String,
    json: Option<&Value>,
    obj: Option<&serde_json::Map<String, Value>>,
) -> Result<TokenResponse, Error> {
    let malformed = |detail: &str| Error::MalformedResponse {
        connector: connector.clone(),
        detail: detail.to_owned(),
    };
    let obj = match (json, obj) {
        (_, Some(o)) => o,
        (None, _) => return Err(malformed("the body is not JSON")),
        (Some(_), None) => return Err(malformed("the body is not a JSON object")),
    };
    let access_token = match obj.get("access_token") {
        // It goes into an HTTP header: visible ASCII only (no CR/LF, no escape sequences).
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => {
            AccessTokenSecret::new(s.clone())
        }
        Some(Value::String(s)) if !s.is_empty() => {
            return Err(malformed(
                "`access_token` holds characters an HTTP header cannot carry",
            ));
        }
        Some(_) => return Err(malformed("`access_token` is not a non-empty string")),
        None => return Err(malformed("no `access_token` and no `error` in the answer")),
    };
    // Legacy answers carry `expires_in_sec` (seconds) and `expires_in` in milliseconds.
    let seconds = match obj.get("expires_in_sec") {
        Some(v) => lenient_u64(v).ok_or_else(|| malformed("`expires_in_sec` is not a number"))?,
        None => match obj.get("expires_in") {
            Some(v) => lenient_u64(v).ok_or_else(|| malformed("`expires_in` is not a number"))?,
            None => return Err(malformed("no `expires_in` in the answer")),
        },
    };
    if seconds == 0 {
        return Err(malformed("`expires_in` is zero"));
    }
    // Zoho's tokens live an hour; anything beyond a day is not believed.
    let seconds = if seconds > MAX_LIFETIME_SECS {
        tracing::warn!(
            connector = %connector,
            announced_secs = seconds,
            "the token endpoint announced a lifetime of over a day; treating it as Zoho's documented hour"
        );
        ZOHO_LIFETIME_SECS
    } else {
        seconds
    };
    let text = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    // The API domain is where the token will be sent: https (or loopback http) only.
    let api_domain = text("api_domain").filter(|d| {
        let ok = crate::config::check_url(d).is_ok();
        if !ok {
            tracing::warn!(connector = %connector, "ignoring an api_domain that is not an https URL");
        }
        ok
    });
    Ok(TokenResponse {
        access_token,
        lifetime: Duration::from_secs(seconds),
        api_domain,
        refresh_token: text("refresh_token").map(RefreshToken::new),
    })
}

fn classify_code(
    connector: String,
    grant: &Grant<'_>,
    code: String,
    description: Option<String>,
    status: StatusCode,
    retry_after: Option<Duration>,
) -> Error {
    let normalized = code.trim().to_ascii_lowercase().replace(' ', "_");
    match normalized.as_str() {
        "invalid_code" | "invalid_grant" | "invalid_token" | "invalid_refresh_token" => {
            Error::ReauthorizationRequired {
                connector,
                grant: grant.label(),
                code,
                description,
                recorded: false,
            }
        }
        "invalid_client"
        | "invalid_client_secret"
        | "invalid_redirect_uri"
        | "redirect_uri_mismatch"
        | "unauthorized_client" => Error::InvalidClient {
            connector,
            code,
            description,
        },
        "access_denied" => Error::Throttled {
            connector,
            code,
            description,
            retry_after,
            recorded: false,
        },
        _ if status.is_server_error() => Error::Transient {
            connector,
            kind: TransientKind::ServerError(status.as_u16()),
            detail: format!("the token endpoint answered error `{code}`"),
        },
        _ => Error::Rejected {
            connector,
            code,
            description,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<TokenResponse, Error> {
        let rt = RefreshToken::new("1000.refresh-secret");
        parse_token_response(
            "crm",
            &Grant::Refresh(&rt),
            StatusCode::from_u16(status).unwrap(),
            None,
            body.as_bytes(),
            &["1000.refresh-secret"],
        )
    }

    #[test]
    fn success_in_seconds_with_strings() {
        let r = parse(200, r#"{"access_token":"a","expires_in":"3600","api_domain":"https://www.zohoapis.eu","token_type":"Bearer"}"#).unwrap();
        assert_eq!(r.lifetime, Duration::from_secs(3600));
        assert_eq!(r.api_domain.as_deref(), Some("https://www.zohoapis.eu"));
        assert!(r.refresh_token.is_none());
    }

    #[test]
    fn legacy_milliseconds() {
        let r = parse(
            200,
            r#"{"access_token":"a","expires_in_sec":3600,"expires_in":3600000}"#,
        )
        .unwrap();
        assert_eq!(r.lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn errors_with_http_200_are_classified() {
        let e = parse(200, r#"{"error":"invalid_code"}"#).unwrap_err();
        assert!(
            matches!(&e, Error::ReauthorizationRequired { code, .. } if code == "invalid_code"),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("re-authorize connector `crm`"),
            "{e}"
        );
        let e = parse(200, r#"{"error":"Access Denied","error_description":"You have made too many requests continuously. Please try again after some time.","status":"failure"}"#).unwrap_err();
        assert!(matches!(e, Error::Throttled { .. }), "{e:?}");
        let e = parse(200, r#"{"error":"invalid_client_secret"}"#).unwrap_err();
        assert!(matches!(e, Error::InvalidClient { .. }), "{e:?}");
        let e = parse(200, r#"{"error":"something_new"}"#).unwrap_err();
        assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
    }

    #[test]
    fn status_classes() {
        assert!(matches!(
            parse(503, "oops").unwrap_err(),
            Error::Transient {
                kind: TransientKind::ServerError(503),
                ..
            }
        ));
        assert!(matches!(
            parse(429, "").unwrap_err(),
            Error::Throttled { .. }
        ));
        assert!(matches!(
            parse(404, "<html>").unwrap_err(),
            Error::Rejected { .. }
        ));
        assert!(matches!(
            parse(200, "<html>").unwrap_err(),
            Error::MalformedResponse { .. }
        ));
        assert!(matches!(
            parse(200, r#"{"access_token":"a"}"#).unwrap_err(),
            Error::MalformedResponse { .. }
        ));
        assert!(matches!(
            parse(200, r#"{"access_token":"a","expires_in":"x"}"#).unwrap_err(),
            Error::MalformedResponse { .. }
        ));
    }

    #[test]
    fn malformed_answers_never_echo_the_token() {
        let e = parse(200, r#"{"access_token":"1000.leaky","expires_in":"soon"}"#).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("1000.leaky"));
    }

    #[test]
    fn provider_text_is_scrubbed() {
        let e = parse(
            200,
            r#"{"error":"invalid_code","error_description":"bad token 1000.refresh-secret"}"#,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("1000.refresh-secret"), "{e}");
    }
}
