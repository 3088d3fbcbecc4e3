//! Asking a running agent (`CONNECTOR_AGENT`) instead of opening stores: what `connector
//! token`, `status` and `exec` do when the variable is set.

use super::{AGENT_ENV, AGENT_HEADER, AGENT_HEADER_VALUE, AGENT_TOKEN_FILE_ENV};
use crate::exit::{Exit, Failure};
use serde_json::Value;
use std::time::Duration;

/// How long a command waits for the agent's answer.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// The agent named by `CONNECTOR_AGENT`, if the variable is set and not blank.
pub fn agent_from_env() -> Option<String> {
    std::env::var(AGENT_ENV)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `/v1/connectors/{name}[/users/{user}]`, each part percent-encoded.
fn connector_path(name: &str, user: Option<&str>) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    match user {
        Some(u) => format!("/v1/connectors/{}/users/{}", enc(name), enc(u)),
        None => format!("/v1/connectors/{}", enc(name)),
    }
}

/// `/v1/connectors/{name}[/users/{user}]/token?min_ttl=…`.
pub(crate) fn token_path(name: &str, user: Option<&str>, min_ttl: Duration) -> String {
    format!(
        "{}/token?min_ttl={}",
        connector_path(name, user),
        min_ttl.as_secs()
    )
}

/// The failure of an agent that cannot be reached or does not answer.
pub(crate) fn unreachable(shown: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::new(
        Exit::Transient,
        format!("the connector agent at {shown} does not answer ({e})"),
    )
    .hint(format!(
        "start it with `connector serve`, or unset {AGENT_ENV}"
    ))
}

/// Tells a running agent — `CONNECTOR_AGENT`'s, else one on the default socket — that this
/// process changed connector `name` (`user`'s), so that it serves the new state now rather than
/// at its next look at the store (within a second). Best effort: no agent, or one that does not
/// answer within a second, is not an error.
pub async fn notify_agent(name: &str, user: Option<&str>) {
    let target = agent_from_env().or_else(|| {
        let socket = super::default_socket();
        socket
            .exists()
            .then(|| socket.to_string_lossy().into_owned())
    });
    let Some(target) = target else { return };
    let Ok(client) = AgentClient::new(&target) else {
        return;
    };
    let mut request = client
        .http
        .post(format!(
            "{}{}/sync",
            client.base,
            connector_path(name, user)
        ))
        .header(AGENT_HEADER, AGENT_HEADER_VALUE)
        .timeout(Duration::from_secs(1));
    if let Some(t) = &client.bearer {
        request = request.bearer_auth(t);
    }
    let _ = request.send().await;
}

/// A client for the agent named by `CONNECTOR_AGENT`.
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
    shown: String,
}

impl AgentClient {
    /// A client for the agent at `target`: a socket path, or `http://127.0.0.1:PORT` (with
    /// `CONNECTOR_AGENT_TOKEN_FILE`).
    pub fn new(target: &str) -> Result<Self, Failure> {
        let build = |b: reqwest::ClientBuilder| {
            // The agent speaks plain HTTP (a socket, or loopback): no TLS roots to load, which
            // would cost a one-shot `connector token` several milliseconds.
            b.timeout(TIMEOUT)
                .no_proxy()
                .tls_certs_only(std::iter::empty())
                .build()
                .map_err(|e| {
                    Failure::new(Exit::Unexpected, format!("cannot make an HTTP client: {e}"))
                })
        };
        if target.starts_with("http://") {
            let file = std::env::var_os(AGENT_TOKEN_FILE_ENV).ok_or_else(|| {
                Failure::new(
                    Exit::Config,
                    format!("{AGENT_ENV} is a TCP address, which needs a bearer token"),
                )
                .hint(format!(
                    "set {AGENT_TOKEN_FILE_ENV} to the agent's token file"
                ))
            })?;
            let token = std::fs::read_to_string(&file).map_err(|e| {
                Failure::new(
                    Exit::Config,
                    format!("cannot read {AGENT_TOKEN_FILE_ENV}: {e}"),
                )
            })?;
            Ok(Self {
                http: build(reqwest::Client::builder())?,
                base: target.trim_end_matches('/').to_owned(),
                bearer: Some(token.trim().to_owned()),
                shown: target.to_owned(),
            })
        } else {
            Ok(Self {
                http: build(reqwest::Client::builder().unix_socket(target))?,
                base: "http://agent".into(),
                bearer: None,
                shown: target.to_owned(),
            })
        }
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), Failure> {
        let mut request = self
            .http
            .get(format!("{}{path}", self.base))
            .header(AGENT_HEADER, AGENT_HEADER_VALUE);
        if let Some(t) = &self.bearer {
            request = request.bearer_auth(t);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(&self.shown, &e))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(|e| {
            Failure::new(
                Exit::Unexpected,
                format!("the connector agent answered oddly: {e}"),
            )
        })?;
        Ok((status, body))
    }

    /// The agent's error body as a failure with the CLI's exit code.
    pub(crate) fn failure(status: u16, body: &Value) -> Failure {
        let exit = body["exit_code"]
            .as_u64()
            .and_then(|c| Exit::ALL.into_iter().find(|e| u64::from(e.code()) == c))
            .unwrap_or(if status == 401 || status == 403 {
                Exit::Config
            } else {
                Exit::Unexpected
            });
        let message = body["message"]
            .as_str()
            .unwrap_or("the agent refused")
            .to_owned();
        let mut failure = Failure::new(exit, message);
        if let Some(h) = body["hint"].as_str() {
            failure = failure.hint(h);
        }
        failure
    }

    /// `GET /v1/connectors/{name}[/users/{user}]/token?min_ttl=…`.
    pub async fn token(
        &self,
        name: &str,
        user: Option<&str>,
        min_ttl: Duration,
    ) -> Result<Value, Failure> {
        match self.get(&token_path(name, user, min_ttl)).await? {
            (200, body) => Ok(body),
            (status, body) => Err(Self::failure(status, &body)),
        }
    }

    /// `GET /v1/connectors`: the connectors the agent serves, with their state.
    pub async fn connectors(&self) -> Result<Vec<Value>, Failure> {
        match self.get("/v1/connectors").await? {
            (200, Value::Array(items)) => Ok(items),
            (status, body) => Err(Self::failure(status, &body)),
        }
    }

    /// `GET /v1/connectors`: the names the agent serves.
    pub async fn names(&self) -> Result<Vec<String>, Failure> {
        match self.get("/v1/connectors").await? {
            (200, Value::Array(items)) => Ok(items
                .iter()
                .filter(|i| i["state"] != "invalid")
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()),
            (status, body) => Err(Self::failure(status, &body)),
        }
    }

    /// `GET /v1/status`: what `connector status --json` shows.
    pub async fn status(&self) -> Result<Value, Failure> {
        match self.get("/v1/status").await? {
            (200 | 503, body @ Value::Array(_)) => Ok(body),
            (status, body) => Err(Self::failure(status, &body)),
        }
    }
}
