//! The token agent (`connector serve`): one process per host holds every connector's token,
//! refreshes it before anyone needs it (keep-warm), and answers any program that asks over a
//! Unix socket (or, on request, loopback TCP) with HTTP/1.1 JSON — like the clouds' metadata
//! services, with their defences against request forgery.
//!
//! API (every request must carry `X-Connector-Agent: 1`; see [`security`]):
//! - `GET /v1/connectors/{name}/token[?min_ttl=SECONDS]` and
//!   `GET /v1/connectors/{name}/users/{user}/token` → `access_token`, `token_type`,
//!   `expires_at`, `refresh_at` (Unix seconds), `api_domain`;
//! - `POST /v1/connectors/{name}[/users/{user}]/invalidate` (a token an API refused) and
//!   `…/sync` (another process changed the connector: look in the store now);
//! - per-user: `POST …/users/{user}/consent`, `POST …/users/{user}/code`, `DELETE …/users/{user}`
//!   (see [`users`]);
//! - `GET /v1/connectors` (names and states), `GET /v1/status` (as `connector status --json`),
//!   `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! Errors are JSON: `{"error": <code>, "connector", "message", "hint", "exit_code"}` with a fitting
//! HTTP status.

pub mod client;
pub mod listen;
pub mod proxy;
pub mod quick;
pub mod security;
pub mod server;
pub mod sinks;
pub mod users;

/// The header every request must carry (like GCE's `Metadata-Flavor: Google`): a browser or a
/// server-side request forgery cannot add it to a request it makes someone send.
pub const AGENT_HEADER: &str = "x-connector-agent";
/// Its value.
pub const AGENT_HEADER_VALUE: &str = "1";
/// The environment variable naming a running agent (socket path, or `http://127.0.0.1:PORT`).
pub const AGENT_ENV: &str = "CONNECTOR_AGENT";
/// With a TCP agent URL: the file holding its bearer token.
pub const AGENT_TOKEN_FILE_ENV: &str = "CONNECTOR_AGENT_TOKEN_FILE";

/// The default socket, the same for a login shell and a cron job (which has no
/// `XDG_RUNTIME_DIR`): `$XDG_RUNTIME_DIR/catalyst-connectors/agent.sock`, else the user's runtime
/// directory `/run/user/<uid>` when it exists and is theirs (what `XDG_RUNTIME_DIR` names in a
/// login session), else `/tmp/catalyst-connectors-<uid>/agent.sock`. `connector socket` prints it.
pub fn default_socket() -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let uid = current_uid();
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let run = std::path::PathBuf::from(format!("/run/user/{uid}"));
            std::fs::metadata(&run)
                .is_ok_and(|m| m.is_dir() && m.uid() == uid)
                .then_some(run)
        });
    let dir = match runtime_dir {
        Some(d) => d.join("catalyst-connectors"),
        None => std::env::temp_dir().join(format!("catalyst-connectors-{uid}")),
    };
    dir.join("agent.sock")
}

/// This process's effective user id.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}
