//! `connector serve`: the token agent (see [`crate::agent`]).

use super::Context;
use crate::agent::security::{Allowed, Policy};
use crate::agent::server::{Agent, PeerInfo, router};
use crate::exit::{Exit, Failure};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Run the token agent: every program on this host asks it for tokens over a Unix socket.
///
/// One process holds every connector's token and refreshes it before it is needed; any
/// language asks with one HTTP request: `GET /v1/connectors/NAME/token` with the header
/// `X-Connector-Agent: 1` (others: /v1/connectors, /v1/status, /healthz, /metrics). Requests
/// with `Origin` or proxy headers are refused; TCP needs a bearer token. SIGTERM or Ctrl-C
/// lets requests in flight finish and removes the socket.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "connector serve",
    "curl -s --unix-socket $XDG_RUNTIME_DIR/catalyst-connectors/agent.sock -H 'X-Connector-Agent: 1' http://agent/v1/connectors/crm/token",
    "connector serve --tcp 127.0.0.1:8799 --allow crm=uid:1000",
]))]
pub struct Args {
    /// The Unix socket (default: $XDG_RUNTIME_DIR/catalyst-connectors/agent.sock; the
    /// directory is made 0700, the socket 0600).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also listen on this loopback address (e.g. 127.0.0.1:8799); clients must send the
    /// bearer token from --token-file.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// The bearer token for TCP clients (created, 0600, when missing; default: agent.token
    /// beside the socket).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Only these clients get NAME's tokens: `NAME=uid:UID` (Unix socket peers) or
    /// `NAME=bearer:FILE` (a token in a 0600 file). Repeat for more.
    #[arg(long, value_name = "NAME=RULE")]
    allow: Vec<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::new(Exit::Config, format!("{what}: {e}"))
}

/// Creates `dir` (0700) or checks an existing one is not open to others.
fn private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(io(format!("cannot read {}", dir.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(
            format!(
                "{} is open to other users and cannot be made 0700",
                dir.display()
            ),
        ))?;
    }
    Ok(())
}

/// The bearer token for TCP clients: read from `path`, or created there (0600) when missing.
fn tcp_token(path: &Path) -> Result<String, Failure> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(Failure::new(
                    Exit::Config,
                    format!("{} is readable by other users", path.display()),
                )
                .hint(format!("chmod 600 {}", path.display())));
            }
            let t = t.trim().to_owned();
            if t.len() < 16 {
                return Err(Failure::new(
                    Exit::Config,
                    format!(
                        "{} holds a token shorter than 16 characters",
                        path.display()
                    ),
                ));
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            );
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io(format!("cannot create {}", path.display())))?;
            std::io::Write::write_all(&mut file, token.as_bytes())
                .map_err(io(format!("cannot write {}", path.display())))?;
            Ok(token)
        }
        Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
    }
}

/// `NAME=uid:1000` or `NAME=bearer:FILE` (the file holds the token).
fn allow_lists(entries: &[String]) -> Result<BTreeMap<String, Vec<Allowed>>, Failure> {
    let mut out: BTreeMap<String, Vec<Allowed>> = BTreeMap::new();
    for entry in entries {
        let bad = || {
            Failure::new(
                Exit::Usage,
                format!("--allow {entry:?}: expected NAME=uid:UID or NAME=bearer:FILE"),
            )
        };
        let (name, rule) = entry.split_once('=').ok_or_else(bad)?;
        let allowed = match rule.split_once(':') {
            Some(("uid", uid)) => Allowed::Uid(uid.parse().map_err(|_| bad())?),
            Some(("bearer", file)) => Allowed::Bearer(tcp_token(Path::new(file))?),
            _ => return Err(bad()),
        };
        out.entry(name.to_owned()).or_default().push(allowed);
    }
    Ok(out)
}

/// Binds the socket (0600), replacing a stale one but never a live agent's.
async fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, Failure> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(Failure::new(
                Exit::Config,
                format!("an agent is already listening on {}", path.display()),
            )
            .hint("stop it, or pass --socket PATH"));
        }
        std::fs::remove_file(path).map_err(io(format!("cannot remove {}", path.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(io(format!("cannot listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot restrict {}", path.display())))?;
    Ok(listener)
}

/// The loopback TCP listener and its bearer token file (read into `policy`).
async fn bind_tcp(
    addr: SocketAddr,
    token_file: Option<PathBuf>,
    socket: &Path,
    policy: &mut Policy,
) -> Result<(tokio::net::TcpListener, PathBuf), Failure> {
    if !addr.ip().is_loopback() {
        return Err(Failure::new(
            Exit::Usage,
            format!("--tcp {addr}: the agent listens on loopback addresses only"),
        ));
    }
    let token_file = token_file.unwrap_or_else(|| {
        socket
            .parent()
            .unwrap_or(Path::new("."))
            .join("agent.token")
    });
    if let Some(dir) = token_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    policy.tcp_token = Some(tcp_token(&token_file)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(io(format!("cannot listen on {addr}")))?;
    Ok((listener, token_file))
}

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

pub async fn run(ctx: &Context, options: Args) -> Result<(), Failure> {
    // The recorder must be in place before the connectors register their counters.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let connection = ctx.connection_with(|b| b.keep_warm(true))?;
    let socket = options.socket.unwrap_or_else(crate::agent::default_socket);
    let mut policy = Policy {
        allow: allow_lists(&options.allow)?,
        ..Policy::default()
    };
    let tcp = match options.tcp {
        Some(addr) => Some(bind_tcp(addr, options.token_file, &socket, &mut policy).await?),
        None => None,
    };
    let unix = bind_socket(&socket).await?;
    let agent = Arc::new(Agent {
        connection,
        policy,
        metrics,
    });
    let app = router(agent.clone());
    println!("{}", socket.display());
    eprintln!("connector agent listening on {}", socket.display());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    if let Some((listener, token_file)) = tcp {
        let url = listener
            .local_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        println!("{url}");
        eprintln!(
            "connector agent listening on {url} (bearer token in {})",
            token_file.display()
        );
        let app = app.clone();
        let stop = wait_stop(stop_rx.clone());
        servers.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<PeerInfo>(),
            )
            .with_graceful_shutdown(stop)
            .await
        });
    }
    let stop = wait_stop(stop_rx);
    servers.spawn(async move {
        axum::serve(unix, app.into_make_service_with_connect_info::<PeerInfo>())
            .with_graceful_shutdown(stop)
            .await
    });
    shutdown_signal().await;
    eprintln!("connector agent stopping: finishing requests in flight");
    let _ = stop_tx.send(true);
    // Requests in flight finish; a client that keeps a connection open (or has sent half a
    // request) does not hold the agent past the grace period.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = servers.join_next().await {
            if let Ok(Err(e)) = done {
                eprintln!("connector agent: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "connector agent: clients still connected after {} s; closing their connections",
            SHUTDOWN_GRACE.as_secs()
        );
        servers.abort_all();
    }
    let _ = std::fs::remove_file(&socket);
    // A refresh still running may finish (and store its token), within the 10 s after SIGTERM.
    agent
        .connection
        .settle(std::time::Duration::from_secs(3))
        .await;
    Ok(())
}
