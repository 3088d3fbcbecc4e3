//! One module per subcommand — each defines its arguments and a `run` — and the one place that
//! decides where tokens come from: the running agent (`CONNECTOR_AGENT`) or the config and the
//! stores ([`Context::tokens`]).

pub mod authorize;
pub mod completions;
pub mod config_check;
pub mod demo;
pub mod exchange;
pub mod exec;
pub mod list;
pub mod manpages;
pub mod refresh;
pub mod rekey;
pub mod revoke;
pub mod serve;
pub mod socket;
pub mod status;
pub mod token;

use crate::agent::client::AgentClient;
use crate::exit::{Exit, Failure, footer};
use catalyst_connectors::{
    AccessToken, Connection, ConnectionBuilder, Connector, Error, ExposeSecret, StoreSpec,
};
use clap::{Args, Subcommand};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the config and the tokens are: shared by the subcommands that use connectors.
#[derive(Args, Debug, Clone, Default)]
pub struct Place {
    /// Connector config (.json or .toml, the Catalyst SDKs' shape). Default: $CONNECTOR_CONFIG,
    /// then ./connectors.json, ./connectors.toml, then the same names in the user config
    /// directory (e.g. ~/.config/catalyst-connectors/).
    // The variables are read by `Context::new`, after both places for the flag: a flag before the
    // subcommand wins over the variable (clap's `env` would fill the flag after it first).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where tokens are kept and shared: `sqlite:PATH`, `memory:` (this process only),
    /// `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2` (with this host's SQLite store as
    /// the fallback while Redis is down) or
    /// `catalyst://PROJECT_ID[/SEGMENT][?environment=Production&key=PROJECT_KEY]` (with
    /// `$connector.catalyst_auth` in the config). Default: $CONNECTOR_STORE, then the config's
    /// `$connector.store`, else SQLite in the user data directory.
    #[arg(long, value_parser = parse_store, value_name = "STORE")]
    store: Option<StoreSpec>,
}

fn parse_store(s: &str) -> Result<StoreSpec, catalyst_connectors::SpecError> {
    s.parse()
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    Token(token::Args),
    Authorize(authorize::Args),
    Exchange(exchange::Args),
    Status(status::Args),
    Refresh(refresh::Args),
    Revoke(revoke::Args),
    Rekey(rekey::Args),
    List(list::Args),
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    Completions(completions::Args),
    Serve(serve::Args),
    Socket(socket::Args),
    Exec(exec::Args),
    Demo(demo::Args),
    /// Write the man pages into a directory (for packagers).
    #[command(hide = true)]
    Manpages(manpages::Args),
}

/// What `connector config` does.
#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    Check(config_check::Args),
}

impl Command {
    /// Where this subcommand's config and store are, if it uses any.
    pub fn place(&self) -> Option<&Place> {
        Some(match self {
            Command::Token(a) => &a.place,
            Command::Authorize(a) => &a.place,
            Command::Exchange(a) => &a.place,
            Command::Status(a) => &a.place,
            Command::Refresh(a) => &a.place,
            Command::Revoke(a) => &a.place,
            Command::Rekey(a) => &a.place,
            Command::List(a) => &a.place,
            Command::Config {
                action: ConfigAction::Check(a),
            } => &a.place,
            Command::Serve(a) => &a.place,
            Command::Exec(a) => &a.place,
            Command::Completions(_)
            | Command::Demo(_)
            | Command::Socket(_)
            | Command::Manpages(_) => return None,
        })
    }

    /// Whether this subcommand serves many clients at once (and wants worker threads).
    pub fn serves(&self) -> bool {
        matches!(self, Command::Serve(_))
    }

    /// Runs the subcommand; `exec` returns its command's exit code.
    pub async fn run(self, ctx: &Context) -> Result<ExitCode, Failure> {
        let done = |r: Result<(), Failure>| r.map(|()| ExitCode::from(Exit::Success.code()));
        match self {
            Command::Token(a) => done(token::run(ctx, a).await),
            Command::Authorize(a) => done(authorize::command(ctx, a).await),
            Command::Exchange(a) => done(exchange::run(ctx, a).await),
            Command::Status(a) => done(status::run(ctx, a).await),
            Command::Refresh(a) => done(refresh::run(ctx, a).await),
            Command::Revoke(a) => done(revoke::run(ctx, a).await),
            Command::Rekey(a) => done(rekey::run(ctx, a).await),
            Command::List(a) => done(list::run(ctx, a).await),
            Command::Config {
                action: ConfigAction::Check(_),
            } => done(config_check::run(ctx)),
            Command::Completions(a) => done(completions::run(&a.shell, a.completer.as_deref())),
            Command::Serve(a) => done(serve::run(ctx, a).await),
            Command::Socket(_) => done(socket::run()),
            Command::Exec(a) => exec::run(ctx, a).await,
            Command::Demo(a) => done(demo::run(a).await),
            // main writes the pages (it has the whole command line's definition).
            Command::Manpages(_) => unreachable!("handled in main"),
        }
    }
}

/// The connector's name in the config.
/// Connector `name`, or its per-user connector for `user`.
pub fn connector_for(
    connection: &catalyst_connectors::Connection,
    name: &str,
    user: Option<&str>,
) -> Result<catalyst_connectors::Connector, crate::exit::Failure> {
    let template = connection.connector(name)?;
    Ok(match user {
        Some(u) => template.for_user(u)?,
        None => template,
    })
}

pub const NAME_HELP: &str = "The connector's name in the config (see `connector list`)";

/// A subcommand's help footer: its examples, then the exit codes.
pub fn with_examples(examples: &[&str]) -> String {
    let mut out = String::from("Examples:");
    for e in examples {
        out.push_str("\n  ");
        out.push_str(e);
    }
    out.push_str("\n\n");
    out.push_str(&footer());
    out
}

/// Completes connector names from the config (dynamic completion).
pub fn name_candidates() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        names_for_completion()
            .into_iter()
            .map(CompletionCandidate::new)
            .collect::<Vec<_>>()
    })
}

/// Where the tokens of a command that reads them come from.
pub enum Tokens {
    /// The running agent named by `CONNECTOR_AGENT`: no config and no secret needed here.
    Agent(AgentClient),
    /// The config and the stores, opened by this process.
    Stores(Connection),
}

/// What every subcommand may need: where the config and the store are, whether to ask a running
/// agent, and whether to be quiet. Resolved once, before the subcommand runs.
pub struct Context {
    config: Option<PathBuf>,
    store: Option<StoreSpec>,
    /// The agent to ask (`CONNECTOR_AGENT`), unless `--no-agent`.
    agent: Option<String>,
    pub quiet: bool,
}

/// Where the config is looked for when neither --config nor CONNECTOR_CONFIG names one.
fn default_config_paths() -> Vec<PathBuf> {
    let names = ["connectors.json", "connectors.toml"];
    let user_dir = dirs::config_dir().map(|d| d.join("catalyst-connectors"));
    names
        .iter()
        .map(PathBuf::from)
        .chain(
            user_dir
                .iter()
                .flat_map(|d| names.iter().map(move |n| d.join(n))),
        )
        .collect()
}

/// Connector names for shell completion: the top-level keys of the config (best effort, never
/// an error: completion must not print anything else).
pub fn names_for_completion() -> Vec<String> {
    let path = std::env::var_os("CONNECTOR_CONFIG")
        .map(PathBuf::from)
        .or_else(|| default_config_paths().into_iter().find(|p| p.is_file()));
    let Some(text) = path.and_then(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t))) else {
        return Vec::new();
    };
    let (path, text) = text;
    let text = text.trim_start_matches('\u{feff}');
    let value: Option<serde_json::Value> = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| serde_json::to_value(t).ok())
    } else {
        serde_json::from_str(text).ok()
    };
    value
        .as_ref()
        .and_then(serde_json::Value::as_object)
        .map(|m| m.keys().filter(|k| !k.starts_with('$')).cloned().collect())
        .unwrap_or_default()
}

impl Context {
    /// The context of a run: options after the subcommand (`inner`) win over the same options
    /// before it (`outer`), which win over `CONNECTOR_CONFIG` and `CONNECTOR_STORE`.
    pub fn new(
        quiet: bool,
        no_agent: bool,
        outer: Place,
        inner: Option<&Place>,
    ) -> Result<Self, Failure> {
        let inner = inner.cloned().unwrap_or_default();
        let variable = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let store = match inner.store.or(outer.store) {
            Some(store) => Some(store),
            None => variable("CONNECTOR_STORE")
                .map(|v| parse_store(&v))
                .transpose()
                .map_err(|e| Failure::new(Exit::Usage, format!("CONNECTOR_STORE: {e}")))?,
        };
        Ok(Self {
            config: inner
                .config
                .or(outer.config)
                .or_else(|| variable("CONNECTOR_CONFIG").map(PathBuf::from)),
            store,
            agent: if no_agent {
                None
            } else {
                crate::agent::client::agent_from_env()
            },
            quiet,
        })
    }

    /// Where tokens come from: the running agent when `CONNECTOR_AGENT` names one (and
    /// `--no-agent` was not given), else the config and the stores. The one place this is
    /// decided, for every command that reads tokens (`token`, `status`, `exec`, `list`).
    pub fn tokens(&self) -> Result<Tokens, Failure> {
        match &self.agent {
            Some(target) => Ok(Tokens::Agent(AgentClient::new(target)?)),
            None => Ok(Tokens::Stores(self.connection()?)),
        }
    }

    /// A warning on stderr, one line, unless -q.
    pub fn warn(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            let colour = crate::output::stderr_colour();
            eprintln!(
                "{} {message}",
                crate::output::paint("warning:", "33;1", colour)
            );
        }
    }

    /// The config file: `--config`/`CONNECTOR_CONFIG`, else the first of the default places.
    pub fn config_path(&self) -> Result<PathBuf, Failure> {
        if let Some(p) = &self.config {
            return Ok(p.clone());
        }
        let candidates = default_config_paths();
        candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            Failure::new(
                Exit::Config,
                format!("no connector config found (looked for {})", looked.join(", ")),
            )
            .hint(
                "pass --config FILE, set CONNECTOR_CONFIG, or create ./connectors.json (see the README's first run)",
            )
        })
    }

    /// The connection every subcommand uses: the config file and the chosen store.
    pub fn connection(&self) -> Result<Connection, Failure> {
        self.connection_with(|b| b)
    }

    /// [`connection`](Self::connection), with more builder settings.
    pub fn connection_with(
        &self,
        more: impl FnOnce(ConnectionBuilder) -> ConnectionBuilder,
    ) -> Result<Connection, Failure> {
        let path = self.config_path()?;
        let mut builder = more(
            Connection::builder()
                .file(&path)
                .skip_invalid_connectors(true),
        );
        if let Some(spec) = &self.store {
            builder = builder.store_spec(spec.clone());
        }
        let connection = builder.build()?;
        for warning in connection.warnings() {
            self.warn(warning);
        }
        for (name, issues) in connection.skipped() {
            self.warn(format!(
                "connector `{name}` is skipped: {} problem(s) in its config (run `connector config check`)",
                issues.len()
            ));
        }
        if !connection.store_is_shared() {
            self.warn(
                "the token store is memory: tokens live only as long as this process, so every run mints one (Zoho allows 10 per 10 minutes); use the default SQLite store or --store sqlite:PATH",
            );
        }
        Ok(connection)
    }

    /// A failure for `e` from `connector`, with a hint that fits this machine: a refresh token in
    /// the config that hides a newer one in the store is named, with the file to edit.
    pub async fn explain(&self, connector: &Connector, e: Error) -> Failure {
        let overridden = e.needs_reauthorization()
            && connector.config().has_refresh_token()
            && connector.has_stored_refresh_token().await;
        let failure = Failure::from(e);
        if !overridden {
            return failure;
        }
        let file = self
            .config_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "the config".into());
        let name = connector.name();
        failure.hint(format!(
            "the config's refresh_token for `{name}` was rejected, and it hides the newer one `connector authorize` stored: delete the `refresh_token` entry of `{name}` in {file}"
        ))
    }
}

/// The least life a token past its refresh point (its refresh failed) must have left to be
/// handed to another program by a one-shot command (`token`, `exec`): that program needs time to
/// use it. A token before its refresh point is always handed out.
pub const DEFAULT_FLOOR: &str = "60s";

/// Refuses a token past its refresh point with less than `floor` left (`failed`: why its refresh
/// failed, if known): exit 5 when the refresh was throttled, else 6, saying when to retry.
pub fn check_floor(
    name: &str,
    refresh_at: std::time::SystemTime,
    expires_at: std::time::SystemTime,
    floor: std::time::Duration,
    failed: Option<&Error>,
) -> Result<(), Failure> {
    let now = std::time::SystemTime::now();
    let left = expires_at.duration_since(now).unwrap_or_default();
    if now < refresh_at || left >= floor {
        return Ok(());
    }
    let (exit, retry) = match failed {
        Some(Error::Throttled { retry_after, .. }) => (
            Exit::Throttled,
            retry_after.map_or_else(
                || "later".to_owned(),
                |d| format!("in {} s", d.as_secs().max(1)),
            ),
        ),
        _ => (Exit::Transient, "shortly".to_owned()),
    };
    let why = failed.map_or_else(String::new, |e| format!(" (the refresh failed: {e})"));
    Err(Failure::new(
        exit,
        format!(
            "connector `{name}`: the only token at hand expires in {} s, under the {} s a program is handed{why}",
            left.as_secs(),
            floor.as_secs()
        ),
    )
    .hint(format!("retry {retry}; --floor sets the least life a token must have left")))
}

pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub fn token_json(t: &AccessToken) -> serde_json::Value {
    json!({
        "access_token": t.expose_secret(),
        "expires_at": crate::output::epoch_secs(t.expires_at()),
        "refresh_at": crate::output::epoch_secs(t.refresh_at()),
        "api_domain": t.api_domain(),
    })
}
