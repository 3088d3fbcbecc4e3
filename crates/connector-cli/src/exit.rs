//! Exit codes and failures: what the process tells its caller.

use catalyst_connectors::{Error, ErrorKind, RetryClass};

/// The documented exit codes. The discriminant is the code; the README's table and every
/// `--help` footer are checked against [`Exit::ALL`] by tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    Unexpected = 1,
    Usage = 2,
    Config = 3,
    Reauthorize = 4,
    Throttled = 5,
    Transient = 6,
}

impl Exit {
    /// Every code, in order.
    pub const ALL: [Exit; 7] = [
        Exit::Success,
        Exit::Unexpected,
        Exit::Usage,
        Exit::Config,
        Exit::Reauthorize,
        Exit::Throttled,
        Exit::Transient,
    ];

    /// The code as the process returns it.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit code for a kind of failure ([`Error::kind`]), e.g. as recorded in the store by
    /// another process: the CLI's one table over the library's one classification.
    pub fn for_kind(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::ReauthorizationRequired | ErrorKind::MissingRefreshToken => {
                Exit::Reauthorize
            }
            ErrorKind::Throttled => Exit::Throttled,
            ErrorKind::Transient | ErrorKind::Store | ErrorKind::DeadlineExceeded => {
                Exit::Transient
            }
            ErrorKind::LifetimeTooShort => Exit::Usage,
            ErrorKind::Config
            | ErrorKind::UnknownConnector
            | ErrorKind::InvalidClient
            | ErrorKind::Tls
            | ErrorKind::Rejected
            | ErrorKind::MalformedResponse
            | ErrorKind::EncryptionKey
            | ErrorKind::SdkSecretKey
            | ErrorKind::StoreOpen => Exit::Config,
            _ => Exit::Unexpected,
        }
    }

    /// What the code means, as `--help` and the README say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Unexpected => "unexpected failure",
            Exit::Usage => "usage error",
            Exit::Config => {
                "configuration error (config file, unknown connector, client rejected by Zoho, store cannot open)"
            }
            Exit::Reauthorize => "re-authorization needed (no refresh token, or it was revoked)",
            Exit::Throttled => "throttled (by Zoho, or by our mint governor): wait, then retry",
            Exit::Transient => "transient failure (network, timeout, Zoho 5xx): retry later",
        }
    }
}

/// The `--help` footer listing the exit codes, generated from [`Exit::ALL`].
pub fn footer() -> String {
    let mut out = String::from("Exit codes:");
    for e in Exit::ALL {
        out.push_str(&format!("\n  {}  {}", e.code(), e.meaning()));
    }
    out
}

/// A failure to report: one line, an optional hint, an exit code.
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let exit = Exit::for_kind(e.kind());
        let hint = match &e {
            Error::Config(_) => Some("run `connector config check` to see every problem".to_owned()),
            Error::UnknownConnector { .. } => {
                Some("run `connector list` to see the configured names".to_owned())
            }
            Error::InvalidClient { .. } => Some(
                "check client_id, client_secret and the data centre (dc) in the config".to_owned(),
            ),
            Error::Rejected { .. } | Error::MalformedResponse { .. } => Some(
                "check auth_url and refresh_url in the config: they must be Zoho's token endpoint, e.g. https://accounts.zoho.com/oauth/v2/token (or set `dc`)".to_owned(),
            ),
            Error::Tls { .. } => Some(
                "check the token URL; if a proxy inspects TLS, it must be trusted by this machine".to_owned(),
            ),
            Error::StoreOpen(_) => {
                Some("choose another store with --store or CONNECTOR_STORE".to_owned())
            }
            Error::Store { .. } => Some(
                "check that the token store is reachable, or choose another with --store or CONNECTOR_STORE".to_owned(),
            ),
            // The message says which key to set; the command that moves records is the CLI's.
            Error::EncryptionKey { .. } => Some(
                "`connector rekey` rewrites the stored tokens with the first key of CONNECTOR_ENCRYPTION_KEY (see `connector rekey --help`)".to_owned(),
            ),
            Error::SdkSecretKey { connector, .. } => Some(format!(
                "add \"secret_key\" to connector `{connector}` in the config: the passphrase your Catalyst JS SDK functions use"
            )),
            Error::LifetimeTooShort { .. } => Some("ask for less with --min-ttl".to_owned()),
            Error::ReauthorizationRequired { connector, .. }
            | Error::MissingRefreshToken { connector } => Some(reauthorize_hint(connector)),
            e if e.retry_class() == RetryClass::Window => Some(
                "wait, then retry; `connector status` shows the mints used in the window".to_owned(),
            ),
            e if e.is_transient() => Some("check the network and retry later".to_owned()),
            _ => None,
        };
        Failure {
            exit,
            message: e.to_string(),
            hint,
        }
    }
}

/// The commands that give `connector` a refresh token; a per-user connector (`crm.alice`) is
/// named by its template and `--user`.
fn reauthorize_hint(connector: &str) -> String {
    match connector.split_once('.') {
        Some((template, user)) => format!(
            "run `connector authorize {template} --user {user} --scope …` (server-based client) or `connector exchange {template} --user {user} --code …` (Self Client)"
        ),
        None => format!(
            "run `connector authorize {connector} --scope …` (server-based client) or `connector exchange {connector} --code …` (Self Client)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_lists_every_code() {
        let readme = include_str!("../../../README.md");
        for e in Exit::ALL {
            let row = format!("| {} | {} |", e.code(), e.meaning());
            assert!(readme.contains(&row), "README lacks the row `{row}`");
        }
        let rows = readme
            .lines()
            .filter(|l| {
                let l = l.trim_start_matches("| ");
                l.len() > 2 && l.as_bytes()[0].is_ascii_digit() && l[1..].starts_with(" | ")
            })
            .count();
        assert_eq!(
            rows,
            Exit::ALL.len(),
            "the README's exit-code table has extra rows"
        );
    }

    #[test]
    fn discriminants_are_the_codes() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(e.code()), i);
        }
    }
}
