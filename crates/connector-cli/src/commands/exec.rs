//! `connector exec [-c NAME]… -- COMMAND ARGS…`: run a command with tokens in its environment.

use super::{Context, Tokens};
use crate::exit::{Exit, Failure};
use catalyst_connectors::ExposeSecret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Run a command with access tokens in its environment.
///
/// For each connector NAME: ZOHO_<NAME>_ACCESS_TOKEN and ZOHO_<NAME>_API_DOMAIN (NAME in
/// upper case, other characters as `_`; two names that give one variable are refused). With
/// -c, every named connector must give a token; without, every configured connector that has a
/// refresh token does (those never authorized are skipped with a warning). Signals are passed
/// on to the command, and its exit code is returned as a shell does (127 not found, 126 not
/// executable, 128+N killed by signal N). When a token cannot be had the command is not run,
/// and the exit code says why (3–6). The command does not inherit what could decrypt or mint
/// (CONNECTOR_ENCRYPTION_KEY, CONNECTOR_ENCRYPTION_KEY_FILE, CONNECTOR_CONFIG, CONNECTOR_STORE,
/// CONNECTOR_AGENT_TOKEN_FILE) unless --pass-connector-env. Uses the agent when CONNECTOR_AGENT
/// is set.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&[
    "connector exec -c crm -- python3 sync.py",
    "connector exec -c crm --env CRM_TOKEN=crm --min-ttl 30m -- ./export.sh",
]))]
pub struct Args {
    /// A connector whose token to pass (repeat; default: every configured connector).
    #[arg(short = 'c', long = "connector", value_name = "NAME", add = super::name_candidates())]
    connectors: Vec<String>,
    /// The tokens must stay valid at least this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
    min_ttl: Duration,
    /// A token past its refresh point (its refresh failed) is passed only with at least this
    /// much life left; less exits 5 (throttled) or 6 (transient) without running the command.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = super::DEFAULT_FLOOR)]
    floor: Duration,
    /// Also set VAR to NAME's access token (repeat).
    #[arg(long, value_name = "VAR=NAME")]
    env: Vec<String>,
    /// Let the command inherit CONNECTOR_ENCRYPTION_KEY(_FILE), CONNECTOR_CONFIG,
    /// CONNECTOR_STORE and CONNECTOR_AGENT_TOKEN_FILE (by default it gets access tokens only,
    /// and cannot read the stored refresh tokens through them).
    #[arg(long)]
    pass_connector_env: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    pub(super) place: super::Place,
}

/// `ZOHO_<NAME>_ACCESS_TOKEN`'s `<NAME>`: upper case, anything but letters and digits as `_`.
pub fn env_name(connector: &str) -> String {
    connector
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// What lets a process decrypt the store, find it, or ask a TCP agent: not for the command.
const WITHHELD: [&str; 5] = [
    "CONNECTOR_ENCRYPTION_KEY",
    "CONNECTOR_ENCRYPTION_KEY_FILE",
    "CONNECTOR_CONFIG",
    "CONNECTOR_STORE",
    "CONNECTOR_AGENT_TOKEN_FILE",
];

/// Refuses names that give one variable (`crm-eu`, `crm.eu`, `crm_eu` → `ZOHO_CRM_EU_…`).
fn check_env_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), Failure> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for name in names {
        let var = env_name(name);
        if let Some(other) = seen.insert(var.clone(), name) {
            return Err(Failure::new(
                Exit::Usage,
                format!(
                    "connectors `{other}` and `{name}` would both set ZOHO_{var}_ACCESS_TOKEN"
                ),
            )
            .hint("choose connectors with -c, and give one of them another variable with --env VAR=NAME"));
        }
    }
    Ok(())
}

/// One connector's token as fetched for the command.
#[derive(Clone)]
struct Fetched {
    token: String,
    domain: Option<String>,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

/// Where the command's tokens come from, kept while it runs (its token files are refreshed from
/// it).
enum Source {
    Agent(crate::agent::client::AgentClient),
    Stores(catalyst_connectors::Connection),
}

impl Source {
    /// The connectors to fetch: those named with -c, else every configured one.
    async fn names(&self, chosen: &[String]) -> Result<Vec<String>, Failure> {
        if !chosen.is_empty() {
            return Ok(chosen.to_vec());
        }
        match self {
            Self::Agent(agent) => agent.names().await,
            Self::Stores(c) => Ok(c.connector_names().map(str::to_owned).collect()),
        }
    }

    /// NAME's token, valid at least `min_ttl` (and `floor`, past its refresh point); `Ok(None)`
    /// when `optional` and the connector was never authorized.
    async fn fetch(
        &self,
        ctx: &Context,
        name: &str,
        (min_ttl, floor): (Duration, Duration),
        optional: bool,
    ) -> Result<Option<Fetched>, Failure> {
        let secs = |v: &serde_json::Value| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(v.as_u64().unwrap_or(0))
        };
        let fetched = match self {
            Self::Agent(agent) => {
                let body = match agent.token(name, None, min_ttl).await {
                    Ok(body) => body,
                    Err(f) if optional && f.exit == Exit::Reauthorize => {
                        ctx.warn(format!("connector `{name}` is skipped: {}", f.message));
                        return Ok(None);
                    }
                    Err(f) => return Err(f),
                };
                Fetched {
                    token: body["access_token"].as_str().unwrap_or_default().to_owned(),
                    domain: body["api_domain"].as_str().map(str::to_owned),
                    refresh_at: secs(&body["refresh_at"]),
                    expires_at: secs(&body["expires_at"]),
                }
            }
            Self::Stores(connection) => {
                let connector = connection.connector(name)?;
                let token = match connector.access_token_valid_for(min_ttl).await {
                    Ok(t) => t,
                    // Without -c: a connector never authorized does not stop the others.
                    Err(e) if optional && e.needs_reauthorization() => {
                        ctx.warn(format!("connector `{name}` is skipped: {e}"));
                        return Ok(None);
                    }
                    Err(e) => return Err(ctx.explain(&connector, e).await),
                };
                if token.refresh_at() <= SystemTime::now() {
                    let failed = connector.status().await.last_error.map(|(e, _)| e);
                    let (refresh_at, expires_at) = (token.refresh_at(), token.expires_at());
                    super::check_floor(name, refresh_at, expires_at, floor, failed.as_ref())?;
                }
                Fetched {
                    token: token.expose_secret().to_owned(),
                    domain: token.api_domain().map(str::to_owned),
                    refresh_at: token.refresh_at(),
                    expires_at: token.expires_at(),
                }
            }
        };
        if let Self::Agent(_) = self {
            super::check_floor(name, fetched.refresh_at, fetched.expires_at, floor, None)?;
        }
        Ok(Some(fetched))
    }
}

/// The token per connector, from the agent or the library.
async fn tokens(
    ctx: &Context,
    source: &Source,
    chosen: &[String],
    limits: (Duration, Duration),
) -> Result<BTreeMap<String, Fetched>, Failure> {
    let names = source.names(chosen).await?;
    check_env_names(&names)?;
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(f) = source.fetch(ctx, &name, limits, chosen.is_empty()).await? {
            out.insert(name, f);
        }
    }
    if let Source::Stores(connection) = source {
        connection.settle(Duration::from_secs(5)).await;
    }
    Ok(out)
}

/// A directory of our own (0700) for the command's token files: under `$XDG_RUNTIME_DIR` when
/// set, else the temporary directory. Created here, so removed here.
fn token_dir() -> Result<PathBuf, Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "connector-exec-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    // mkdir never follows a link and fails if anything is there: the directory is ours.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            Failure::new(
                Exit::Unexpected,
                format!(
                    "cannot create a directory for the token files in {}: {e}",
                    base.display()
                ),
            )
        })?;
    Ok(dir)
}

/// Writes `token` to `path` atomically (0600): a reader sees the old token or the new, never a mix.
fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    crate::agent::sinks::write_atomically(path, token.as_bytes(), 0o600, None).map(drop)
}

/// Keeps NAME's token file fresh while the command runs: a new token is fetched at the current
/// one's refresh point and written in its place; a failed refresh is retried every few seconds
/// while the current token, still valid, stays in the file.
async fn keep_fresh(
    ctx: &Context,
    source: &Source,
    name: String,
    path: PathBuf,
    mut current: Fetched,
) {
    let (min_ttl, floor) = (Duration::ZERO, Duration::ZERO);
    let mut retry = false;
    loop {
        let until = |t: SystemTime| t.duration_since(SystemTime::now()).unwrap_or_default();
        let wait = if retry {
            until(current.expires_at)
                .min(Duration::from_secs(2))
                .max(Duration::from_millis(200))
        } else {
            until(current.refresh_at)
        };
        tokio::time::sleep(wait).await;
        match source.fetch(ctx, &name, (min_ttl, floor), false).await {
            Ok(Some(next)) if next.token != current.token => {
                if let Err(e) = write_token_file(&path, &next.token) {
                    eprintln!("connector exec: cannot write {}: {e}", path.display());
                }
                current = next;
                retry = false;
            }
            // The same token (its refresh failed, it is still valid), or an error: soon again.
            _ => retry = true,
        }
    }
}

/// Runs the command; its exit code becomes ours (128 + the signal if a signal ended it).
pub async fn run(ctx: &Context, options: Args) -> Result<ExitCode, Failure> {
    let Some((program, args)) = options.command.split_first() else {
        return Err(Failure::new(Exit::Usage, "no command to run after `--`"));
    };
    let source = match ctx.tokens()? {
        Tokens::Agent(agent) => Source::Agent(agent),
        Tokens::Stores(connection) => Source::Stores(connection),
    };
    let limits = (options.min_ttl, options.floor);
    let tokens = tokens(ctx, &source, &options.connectors, limits).await?;
    let dir = token_dir()?;
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    if !options.pass_connector_env {
        for var in WITHHELD {
            command.env_remove(var);
        }
    }
    let mut refreshers = Vec::new();
    for (name, fetched) in &tokens {
        let var = env_name(name);
        command.env(format!("ZOHO_{var}_ACCESS_TOKEN"), &fetched.token);
        if let Some(d) = &fetched.domain {
            command.env(format!("ZOHO_{var}_API_DOMAIN"), d);
        }
        let path = dir.join(format!("{var}.token"));
        if let Err(e) = write_token_file(&path, &fetched.token) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Failure::new(
                Exit::Unexpected,
                format!("cannot write {}: {e}", path.display()),
            ));
        }
        command.env(format!("ZOHO_{var}_TOKEN_FILE"), &path);
        refreshers.push(keep_fresh(
            ctx,
            &source,
            name.clone(),
            path,
            fetched.clone(),
        ));
    }
    // The token files are kept fresh for as long as the command runs, then dropped.
    let refresh = async {
        futures::future::join_all(refreshers).await;
        std::future::pending::<()>().await;
    };
    let code = tokio::select! {
        code = run_child(command, program, &options.env, &tokens) => code,
        () = refresh => Ok(ExitCode::FAILURE),
    };
    // Ours: created above.
    let _ = std::fs::remove_dir_all(&dir);
    code
}

/// Spawns the command with `--env` pairs added and waits for it; its exit code as a shell gives it.
async fn run_child(
    mut command: tokio::process::Command,
    program: &str,
    pairs: &[String],
    tokens: &BTreeMap<String, Fetched>,
) -> Result<ExitCode, Failure> {
    for pair in pairs {
        let Some((var, name)) = pair.split_once('=') else {
            return Err(Failure::new(
                Exit::Usage,
                format!("--env {pair:?}: expected VAR=NAME"),
            ));
        };
        let Some(Fetched { token, .. }) = tokens.get(name) else {
            return Err(Failure::new(
                Exit::Usage,
                format!("--env {pair:?}: connector `{name}` is not among those exec fetched"),
            ));
        };
        command.env(var, token);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        // As a shell says it: 127 for a command not found, 126 for one that cannot run.
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("connector exec: cannot run {program:?}: {e}");
            return Ok(ExitCode::from(code));
        }
    };
    let status = forward_signals(&mut child).await?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Waits for the child, passing SIGINT, SIGTERM, SIGHUP and SIGQUIT on to it.
async fn forward_signals(
    child: &mut tokio::process::Child,
) -> Result<std::process::ExitStatus, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind| {
        signal(kind)
            .map_err(|e| Failure::new(Exit::Unexpected, format!("cannot watch signals: {e}")))
    };
    let mut int = listen(SignalKind::interrupt())?;
    let mut term = listen(SignalKind::terminate())?;
    let mut hup = listen(SignalKind::hangup())?;
    let mut quit = listen(SignalKind::quit())?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    loop {
        let sig = tokio::select! {
            status = child.wait() => {
                return status.map_err(|e| Failure::new(Exit::Unexpected, format!("cannot wait for the command: {e}")));
            }
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
            _ = quit.recv() => libc::SIGQUIT,
        };
        if let Some(pid) = pid {
            // SAFETY: kill(2) with the pid of our own child and a valid signal number; it
            // touches no memory of ours.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}
