//! What an API's HTTP 401 says about the token that got it: the one classification the
//! middleware and the agent's authorizing proxy (`connector serve --proxy`) act on.

use serde_json::Value;

/// What a 401 body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The token is bad (`INVALID_TOKEN`, `INVALID_OAUTHTOKEN`, `AUTHENTICATION_FAILURE`, or a
    /// body with no recognisable code): replace it and retry.
    BadToken,
    /// The token lacks a scope (`OAUTH_SCOPE_MISMATCH`): a new token cannot help.
    Scope {
        /// The API's code.
        code: String,
        /// The API's message.
        message: Option<String>,
    },
    /// Some other recognised code: pass the 401 through.
    Other,
}

impl Rejection {
    /// Reads a 401's body (Zoho's shapes: `code`, `errorCode`, `error_code`, at the top or in
    /// `data`).
    pub fn of_401_body(body: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Self::BadToken; // no recognisable body
        };
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let code = ["code", "errorCode", "error_code"]
            .iter()
            .find_map(|k| field(&json, k))
            .or_else(|| {
                json.get("data").and_then(|d| {
                    ["errorCode", "error_code", "code"]
                        .iter()
                        .find_map(|k| field(d, k))
                })
            });
        let Some(code) = code else {
            return Self::BadToken;
        };
        match code.to_ascii_uppercase().as_str() {
            "INVALID_TOKEN" | "INVALID_OAUTHTOKEN" | "AUTHENTICATION_FAILURE" => Self::BadToken,
            "OAUTH_SCOPE_MISMATCH" => Self::Scope {
                message: field(&json, "message"),
                code,
            },
            _ => Self::Other,
        }
    }
}
