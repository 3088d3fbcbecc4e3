//! `connector serve`: the token agent (see [`crate::agent`]).

use super::Context;
use crate::agent::listen::{self, Serving};
use crate::agent::security::{Allowed, Policy};
use crate::agent::server::{Agent, router};
use crate::exit::{Exit, Failure};
use catalyst_connectors::Connection;
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
/// lets requests in flight finish and removes the socket; SIGHUP reloads the configuration.
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
    /// Also run the authorizing proxy on this loopback address: `/<connector>/<path>` is sent
    /// to the connector's api_domain with its token (a 401 for a bad token replaces it once and
    /// retries a request whose body is at most 1 MiB); the agent's TCP rules apply (the
    /// X-Connector-Agent header and the --token-file bearer).
    #[arg(long, value_name = "ADDR")]
    proxy: Option<SocketAddr>,
    /// The bearer token for TCP clients (created, 0600, when missing; default: agent.token
    /// beside the socket).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Only these clients get NAME's tokens: `NAME=uid:UID` or `NAME=gid:GID` (Unix socket
    /// peers) or `NAME=bearer:FILE` (a token in a 0600 file; over TCP that bearer also admits
    /// the request, for NAME only). Repeat for more. NAME must be a configured connector.
    #[arg(long, value_name = "NAME=RULE")]
    allow: Vec<String>,
    /// Let programs of other users in GROUP (name or number) connect: the socket is made 0660
    /// and the directory the agent creates 0750, both of that group. Combine with --allow to
    /// limit connectors to some of them.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Log one line per request on stderr: the peer's uid and gid (or `tcp`), method, path,
    /// status and time. Never a token.
    #[arg(long)]
    access_log: bool,
    /// How often to look in the token store for what other processes changed (revokes, new
    /// refresh tokens, other hosts' tokens). Each look reads the store once or twice per
    /// connector in use: on a `catalyst://` store (a REST call per read) choose seconds. The
    /// CLI's own commands (`exchange`, `authorize`, `revoke`, `refresh`) tell the agent at once
    /// whatever this is.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "250ms")]
    follow_every: std::time::Duration,
    /// Keep a token file: NAME's token written to PATH (absolute) whenever it changes, atomically;
    /// removed when NAME needs re-authorization and when the agent stops. Options:
    /// `format=raw|header|env|json` (default raw: the token alone), `mode=0640` (default 0600),
    /// `group=GROUP`, and last `hook=COMMAND`, run with `sh -c` after each rotation with
    /// CONNECTOR_SINK_PATH, CONNECTOR_SINK_EXPIRES_AT and CONNECTOR_SINK_CONNECTOR set. Repeat
    /// for more files. Checked as often as --follow-every.
    #[arg(long, value_name = "NAME=PATH[,OPTIONS]")]
    sink: Vec<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Failure {
    move |e| Failure::new(Exit::Config, format!("{what}: {e}"))
}

/// Creates `dir` (0700; 0750 and of `group` with a socket group), or, when it exists, leaves
/// it as it is — never chmodded, never chowned: it is not ours — and warns when others can
/// write in it (they could replace the socket).
fn agent_dir(dir: &Path, group: Option<u32>) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if dir.as_os_str().is_empty() {
        return Ok(()); // the current directory
    }
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
                eprintln!(
                    "warning: {} is writable by other users, who could replace the agent's socket; use a directory of your own",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mode = if group.is_some() { 0o750 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(io(format!("cannot create {}", dir.display())))?;
            if let Some(gid) = group {
                chown_group(dir, gid)?;
                // DirBuilder's mode is masked by the umask: set what we created exactly.
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(io(format!("cannot set the mode of {}", dir.display())))?;
            }
            Ok(())
        }
        Err(e) => Err(io(format!("cannot read {}", dir.display()))(e)),
    }
}

/// Gives `path` (created by us) to group `gid`.
fn chown_group(path: &Path, gid: u32) -> Result<(), Failure> {
    std::os::unix::fs::lchown(path, None, Some(gid))
        .map_err(io(format!("cannot give {} to group {gid}", path.display())))
}

/// A group by name or number.
fn group_id(group: &str, flag: &str) -> Result<u32, Failure> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| Failure::new(Exit::Usage, format!("{flag} {group:?}: not a group name")))?;
    // SAFETY: getgrnam(3) with a NUL-terminated name; the record is read at once, before any
    // other call that could overwrite it (the command is single-threaded at this point).
    let record = unsafe { libc::getgrnam(name.as_ptr()) };
    if record.is_null() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{flag} {group:?}: no such group"),
        ));
    }
    // SAFETY: a non-null record from getgrnam points at a valid `struct group`.
    Ok(unsafe { (*record).gr_gid })
}

/// Serves on the listeners until `stop`: TCP (printing its URL) if asked, and the Unix socket.
fn spawn_servers(
    tcp: Option<(tokio::net::TcpListener, PathBuf)>,
    unix: tokio::net::UnixListener,
    serving: Serving,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
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
        servers.spawn(listen::serve(listener, serving.clone(), stop.clone()));
    }
    servers.spawn(listen::serve(unix, serving, stop.clone()));
    servers
}

/// Runs the authorizing proxy on `listener` (see [`crate::agent::proxy`]).
fn serve_proxy(
    servers: &mut tokio::task::JoinSet<()>,
    listener: tokio::net::TcpListener,
    agent: &Arc<Agent>,
    serving: Serving,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), Failure> {
    let app = crate::agent::proxy::router(agent.clone()).map_err(|e| {
        Failure::new(
            Exit::Unexpected,
            format!("cannot start the proxy's HTTP client: {e}"),
        )
    })?;
    let url = listener
        .local_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    println!("{url}");
    eprintln!("connector agent proxy on {url}: /<connector>/<path> goes to the connector's API");
    let serving = Serving { app, ..serving };
    servers.spawn(listen::serve(listener, serving, stop.clone()));
    Ok(())
}

/// Requests in flight finish; a client that keeps a connection open (or has sent half a request)
/// does not hold the agent past the grace period.
async fn drain(mut servers: tokio::task::JoinSet<()>) {
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "connector agent: clients still connected after {} s; closing their connections",
            SHUTDOWN_GRACE.as_secs()
        );
        servers.abort_all();
    }
}

fn sink_group(group: &str) -> Result<u32, Failure> {
    group_id(group, "--sink group")
}

/// The `--sink` files (returned) and the config's `$connector.sinks`, checked: each names a
/// configured connector and a path that is ours to write.
fn sinks(
    specs: &[String],
    connection: &Connection,
) -> Result<Vec<crate::agent::sinks::Sink>, Failure> {
    let parse = |spec: &String| crate::agent::sinks::Sink::parse(spec, sink_group);
    let flags = specs.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    let config = connection
        .sink_specs()
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    for sink in flags.iter().chain(&config) {
        if connection.connector(&sink.name).is_err() {
            return Err(Failure::new(
                Exit::Usage,
                format!(
                    "--sink {}: no connector of that name in the config",
                    sink.name
                ),
            ));
        }
        sink.check_path()?;
    }
    Ok(flags)
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
                format!(
                    "--allow {entry:?}: expected NAME=uid:UID, NAME=gid:GID or NAME=bearer:FILE"
                ),
            )
        };
        let (name, rule) = entry.split_once('=').ok_or_else(bad)?;
        let allowed = match rule.split_once(':') {
            Some(("uid", uid)) => Allowed::Uid(uid.parse().map_err(|_| bad())?),
            Some(("gid", gid)) => Allowed::Gid(gid.parse().map_err(|_| bad())?),
            Some(("bearer", file)) => Allowed::Bearer(tcp_token(Path::new(file))?),
            _ => return Err(bad()),
        };
        out.entry(name.to_owned()).or_default().push(allowed);
    }
    Ok(out)
}

/// Binds the socket (0600; 0660 and of `group` with a socket group). Something already at the
/// path is removed only when it is provably a stale socket of a stopped agent: a live agent's
/// socket, or anything that is not a socket (a regular file, a link, a directory), makes the
/// agent refuse to start and is left untouched.
async fn bind_socket(path: &Path, group: Option<u32>) -> Result<tokio::net::UnixListener, Failure> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent() {
        agent_dir(dir, group)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Failure::new(
                Exit::Config,
                format!(
                    "{} exists and is not a socket; it is left untouched",
                    path.display()
                ),
            )
            .hint("pass --socket with another path, or move that file away yourself"));
        }
        Ok(_) => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Failure::new(
                    Exit::Config,
                    format!("an agent is already listening on {}", path.display()),
                )
                .hint("stop it, or pass --socket PATH"));
            }
            std::fs::remove_file(path).map_err(io(format!(
                "cannot remove the stale socket {}",
                path.display()
            )))?;
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(io(format!("cannot listen on {}", path.display())))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    if let Some(gid) = group {
        chown_group(path, gid)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("cannot restrict {}", path.display())))?;
    Ok(listener)
}

/// The loopback TCP listener and its bearer token file (read into `policy`).
async fn bind_tcp(
    (flag, addr): (&str, SocketAddr),
    token_file: Option<PathBuf>,
    socket: &Path,
    policy: &mut Policy,
) -> Result<(tokio::net::TcpListener, PathBuf), Failure> {
    if !addr.ip().is_loopback() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{flag} {addr}: the agent listens on loopback addresses only"),
        ));
    }
    let token_file = token_file.unwrap_or_else(|| {
        socket
            .parent()
            .unwrap_or(Path::new("."))
            .join("agent.token")
    });
    if let Some(dir) = token_file.parent() {
        agent_dir(dir, None)?;
    }
    policy.tcp_token = Some(tcp_token(&token_file)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(io(format!("cannot listen on {addr}")))?;
    Ok((listener, token_file))
}

/// Per-user connectors asked for within this long are kept in step with the store.
const RECENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Keeps every connector in step with the store (see `Connector::follow_store`).
async fn follow_the_store(agent: Arc<Agent>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let connection = agent.connection();
        for name in connection.connector_names() {
            if let Ok(connector) = connection.connector(name) {
                connector.follow_store().await;
                // Per-user connectors in use: the last hour's, as keep-warm.
                for user in connector.users_used_within(RECENT) {
                    user.follow_store().await;
                }
            }
        }
    }
}

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The signals the agent acts on, registered before it says it listens.
struct Signals {
    term: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let register = |kind: SignalKind| {
            signal(kind)
                .map_err(|e| Failure::new(Exit::Unexpected, format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            term: register(SignalKind::terminate())?,
            hangup: register(SignalKind::hangup())?,
        })
    }

    /// Serves until SIGTERM or SIGINT; each SIGHUP reloads the configuration.
    async fn run_until_stopped(&mut self, ctx: &Context, agent: &Agent) {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = self.term.recv() => return,
                _ = self.hangup.recv() => {
                    let mut reloading = vec![sd_notify::NotifyState::Reloading];
                    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                    let _ = sd_notify::notify(&reloading);
                    reload(ctx, agent);
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                }
            }
        }
    }
}

/// SIGHUP: reads the configuration again and serves it — connectors added, removed or changed —
/// while requests in flight finish with the connectors they started with. A configuration that
/// cannot be read, or that would drop a connector being served because its entry is now
/// invalid, is not loaded: the old one keeps serving, and the log says why.
fn reload(ctx: &Context, agent: &Agent) {
    let old = agent.connection();
    let new = match ctx.connection_with(|b| b.keep_warm(true)) {
        Ok(new) => new,
        Err(f) => {
            eprintln!(
                "connector agent: configuration not reloaded, the previous one keeps serving: {}",
                f.message
            );
            return;
        }
    };
    let before: Vec<&str> = old.connector_names().collect();
    if let Some((name, issues)) = new.skipped().find(|(n, _)| before.contains(n)) {
        let why: Vec<String> = issues.iter().map(ToString::to_string).collect();
        eprintln!(
            "connector agent: configuration not reloaded, the previous one keeps serving: connector `{name}` is now invalid: {}",
            why.join("; ")
        );
        return;
    }
    let after: Vec<&str> = new.connector_names().collect();
    let added: Vec<&str> = after
        .iter()
        .copied()
        .filter(|n| !before.contains(n))
        .collect();
    let removed: Vec<&str> = before
        .iter()
        .copied()
        .filter(|n| !after.contains(n))
        .collect();
    for name in agent.policy.allow.keys() {
        if !after.contains(&name.as_str()) {
            eprintln!(
                "connector agent: warning: --allow names connector `{name}`, which the configuration no longer has"
            );
        }
    }
    eprintln!(
        "connector agent: configuration reloaded: {} connector(s){}{}",
        after.len(),
        if added.is_empty() {
            String::new()
        } else {
            format!("; added: {}", added.join(", "))
        },
        if removed.is_empty() {
            String::new()
        } else {
            format!("; removed: {}", removed.join(", "))
        },
    );
    agent.connection.store(Arc::new(new));
}

/// An allow list for a name that is not configured would leave the real one open.
fn check_allow_lists(policy: &Policy, connection: &Connection) -> Result<(), Failure> {
    let known: Vec<&str> = connection.connector_names().collect();
    match policy.allow.keys().find(|n| !known.contains(&n.as_str())) {
        Some(unknown) => Err(Failure::new(
            Exit::Usage,
            format!(
                "--allow names connector `{unknown}`, which is not configured (configured: {})",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

pub async fn run(ctx: &Context, options: Args) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    // The recorder must be in place before the connectors register their counters.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    listen::raise_open_files();
    let connection = ctx.connection_with(|b| b.keep_warm(true))?;
    let socket = options.socket.unwrap_or_else(crate::agent::default_socket);
    let mut policy = Policy {
        allow: allow_lists(&options.allow)?,
        ..Policy::default()
    };
    check_allow_lists(&policy, &connection)?;
    let group = options
        .socket_group
        .as_deref()
        .map(|g| group_id(g, "--socket-group"))
        .transpose()?;
    let sinks = sinks(&options.sink, &connection)?;
    let mut tcp = Vec::new();
    for (flag, addr) in [("--tcp", options.tcp), ("--proxy", options.proxy)] {
        tcp.push(match addr {
            Some(a) => {
                Some(bind_tcp((flag, a), options.token_file.clone(), &socket, &mut policy).await?)
            }
            None => None,
        });
    }
    let (proxy, tcp) = (tcp.pop().flatten(), tcp.pop().flatten());
    let unix = bind_socket(&socket, group).await?;
    let agent = Arc::new(Agent {
        connection: arc_swap::ArcSwap::from_pointee(connection),
        policy,
        metrics,
        state_key: catalyst_connectors::users::StateKey::generate(),
    });
    let serving = Serving {
        app: router(agent.clone()),
        slots: Arc::new(tokio::sync::Semaphore::new(listen::MAX_CONNECTIONS)),
        access_log: options.access_log,
    };
    // What other processes change — `connector revoke`, `exchange`, `authorize`, another host
    // through Redis — is served within a second.
    let follower = tokio::spawn(follow_the_store(agent.clone(), options.follow_every));
    println!("{}", socket.display());
    eprintln!("connector agent listening on {}", socket.display());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = spawn_servers(tcp, unix, serving.clone(), &stop_rx);
    if let Some((listener, _)) = proxy {
        serve_proxy(&mut servers, listener, &agent, serving, &stop_rx)?;
    }
    let sink_keeper = tokio::spawn(crate::agent::sinks::keep(
        agent.clone(),
        crate::agent::sinks::Sources {
            flags: sinks,
            group_id: sink_group,
        },
        options.follow_every,
        stop_rx,
    ));
    // Under systemd (Type=notify): ready once the listeners are bound. Without NOTIFY_SOCKET
    // this does nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    signals.run_until_stopped(ctx, &agent).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    eprintln!("connector agent stopping: finishing requests in flight");
    let _ = stop_tx.send(true);
    drain(servers).await;
    follower.abort();
    // The token files go (the keeper removes them on the stop signal).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sink_keeper).await;
    let _ = std::fs::remove_file(&socket);
    // A refresh still running may finish (and store its token), within the 10 s after SIGTERM.
    agent
        .connection()
        .settle(std::time::Duration::from_secs(3))
        .await;
    Ok(())
}
