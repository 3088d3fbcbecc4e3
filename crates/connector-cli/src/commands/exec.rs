//! `connector exec [-c NAME]… -- COMMAND ARGS…`: run a command with tokens in its environment.

use super::{Context, Tokens};
use crate::exit::{Exit, Failure};
use catalyst_connectors::ExposeSecret;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

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

/// (access token, api domain) per connector, from the agent or the library.
async fn tokens(
    ctx: &Context,
    names: &[String],
    (min_ttl, floor): (Duration, Duration),
) -> Result<BTreeMap<String, (String, Option<String>)>, Failure> {
    let secs = |v: &serde_json::Value| {
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(v.as_u64().unwrap_or(0))
    };
    let mut out = BTreeMap::new();
    let connection = match ctx.tokens()? {
        Tokens::Stores(connection) => connection,
        Tokens::Agent(agent) => {
            let chosen = !names.is_empty();
            let names = if chosen {
                names.to_vec()
            } else {
                agent.names().await?
            };
            check_env_names(&names)?;
            for name in names {
                let body = match agent.token(&name, None, min_ttl).await {
                    Ok(body) => body,
                    Err(f) if !chosen && f.exit == Exit::Reauthorize => {
                        ctx.warn(format!("connector `{name}` is skipped: {}", f.message));
                        continue;
                    }
                    Err(f) => return Err(f),
                };
                let (refresh_at, expires_at) =
                    (secs(&body["refresh_at"]), secs(&body["expires_at"]));
                super::check_floor(&name, refresh_at, expires_at, floor, None)?;
                let token = body["access_token"].as_str().unwrap_or_default().to_owned();
                let domain = body["api_domain"].as_str().map(str::to_owned);
                out.insert(name, (token, domain));
            }
            return Ok(out);
        }
    };
    let chosen = !names.is_empty();
    let names: Vec<String> = if chosen {
        names.to_vec()
    } else {
        connection.connector_names().map(str::to_owned).collect()
    };
    check_env_names(&names)?;
    for name in names {
        let connector = connection.connector(&name)?;
        let token = match connector.access_token_valid_for(min_ttl).await {
            Ok(t) => t,
            // Without -c: a connector never authorized does not stop the others.
            Err(e) if !chosen && e.needs_reauthorization() => {
                ctx.warn(format!("connector `{name}` is skipped: {e}"));
                continue;
            }
            Err(e) => return Err(ctx.explain(&connector, e).await),
        };
        if token.refresh_at() <= std::time::SystemTime::now() {
            let failed = connector.status().await.last_error.map(|(e, _)| e);
            let (refresh_at, expires_at) = (token.refresh_at(), token.expires_at());
            super::check_floor(&name, refresh_at, expires_at, floor, failed.as_ref())?;
        }
        out.insert(
            name,
            (
                token.expose_secret().to_owned(),
                token.api_domain().map(str::to_owned),
            ),
        );
    }
    connection.settle(Duration::from_secs(5)).await;
    Ok(out)
}

/// Runs the command; its exit code becomes ours (128 + the signal if a signal ended it).
pub async fn run(ctx: &Context, options: Args) -> Result<ExitCode, Failure> {
    let Some((program, args)) = options.command.split_first() else {
        return Err(Failure::new(Exit::Usage, "no command to run after `--`"));
    };
    let tokens = tokens(ctx, &options.connectors, (options.min_ttl, options.floor)).await?;
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    if !options.pass_connector_env {
        for var in WITHHELD {
            command.env_remove(var);
        }
    }
    for (name, (token, domain)) in &tokens {
        let var = env_name(name);
        command.env(format!("ZOHO_{var}_ACCESS_TOKEN"), token);
        if let Some(d) = domain {
            command.env(format!("ZOHO_{var}_API_DOMAIN"), d);
        }
    }
    for pair in &options.env {
        let Some((var, name)) = pair.split_once('=') else {
            return Err(Failure::new(
                Exit::Usage,
                format!("--env {pair:?}: expected VAR=NAME"),
            ));
        };
        let Some((token, _)) = tokens.get(name) else {
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
