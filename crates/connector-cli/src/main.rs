//! `connector`: Zoho access tokens for people and scripts.

// The doc comments here are clap's help text, read in a terminal: `<NAME>` is meant literally.
#![allow(rustdoc::invalid_html_tags)]

mod agent;
mod commands;
mod exit;
mod output;

use catalyst_connectors::StoreSpec;
use clap::{Args, Parser, Subcommand};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use commands::Context;
use exit::{Exit, Failure, footer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the config and the tokens are: shared by the subcommands that use connectors.
#[derive(Args, Debug, Clone)]
struct Place {
    /// Connector config (.json or .toml, the Catalyst SDKs' shape). Default: $CONNECTOR_CONFIG,
    /// then ./connectors.json, ./connectors.toml, then the same names in the user config
    /// directory (e.g. ~/.config/catalyst-connectors/).
    #[arg(long, env = "CONNECTOR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where tokens are kept and shared: `sqlite:PATH`, `memory:` (this process only),
    /// `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2` (with this host's SQLite store as
    /// the fallback while Redis is down) or
    /// `catalyst://PROJECT_ID[/SEGMENT][?environment=Production&key=PROJECT_KEY]` (with
    /// `$connector.catalyst_auth` in the config). Default: the config's `$connector.store`, else
    /// SQLite in the user data directory.
    #[arg(long, env = "CONNECTOR_STORE", value_parser = parse_store, value_name = "STORE")]
    store: Option<StoreSpec>,
}

/// Valid OAuth access tokens for Zoho services, from Catalyst-style connector configs.
///
/// The first warning of a run (e.g. a token store that cannot be reached) is printed on stderr as
/// one line; -q hides it. CONNECTOR_LOG=warn shows every warning, CONNECTOR_LOG=debug (or any
/// tracing filter, e.g. catalyst_connectors=trace) much more; secrets never appear.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about, long_about, after_help = with_examples(&[
    "connector config check",
    "connector authorize crm --scope ZohoCRM.users.READ",
    "connector token crm",
    "connector status || echo 'a connector needs attention'",
]))]
struct Cli {
    /// Print no warnings, only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Also accepted before the subcommand: `connector --config FILE token crm`.
    #[command(flatten)]
    place: Place,
    #[command(subcommand)]
    command: Command,
}

/// The connector's name in the config.
const NAME_HELP: &str = "The connector's name in the config (see `connector list`)";

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a valid access token for connector NAME.
    ///
    /// The token printed is before its refresh point (never one about to expire): if the cached
    /// one is not, this waits for a refresh. If Zoho cannot be reached, a token that is still
    /// valid is printed with a warning. With CONNECTOR_AGENT set (a socket path, or
    /// http://127.0.0.1:PORT with CONNECTOR_AGENT_TOKEN_FILE), the running agent is asked
    /// instead of the stores.
    #[command(after_help = with_examples(&[
        "connector token crm",
        "curl -H \"$(connector token crm --header)\" https://www.zohoapis.com/crm/v8/users",
        "connector token crm --min-ttl 30m --json",
    ]))]
    Token {
        #[arg(help = NAME_HELP, add = name_candidates())]
        name: String,
        /// Print JSON: access_token, expires_at and refresh_at (Unix seconds), api_domain.
        #[arg(long, conflicts_with = "header")]
        json: bool,
        /// Print the HTTP header: `Authorization: Zoho-oauthtoken …`.
        #[arg(long)]
        header: bool,
        /// The token must stay valid at least this long (e.g. 90s, 10m, 1h); refreshes first if
        /// it would not.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
        min_ttl: Duration,
        #[command(flatten)]
        place: Place,
    },
    /// Authorize connector NAME in a browser (server-based client) and store its refresh token.
    #[command(after_help = with_examples(&[
        "connector authorize crm --scope ZohoCRM.modules.ALL,ZohoCRM.users.READ",
        "connector authorize crm --scope ZohoCRM.users.READ --no-browser --port 0",
    ]))]
    Authorize {
        #[arg(help = NAME_HELP, add = name_candidates())]
        name: String,
        /// Comma-separated scopes, e.g. ZohoCRM.modules.ALL,ZohoCRM.users.READ.
        #[arg(long)]
        scope: String,
        /// Loopback port for the redirect (http://127.0.0.1:PORT/callback); 0 picks a free one.
        /// Not allowed when the connector's redirect_url is a loopback URL: that URL's port is
        /// used.
        #[arg(long)]
        port: Option<u16>,
        /// Print the consent URL only; do not open a browser.
        #[arg(long)]
        no_browser: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        timeout: u64,
        #[command(flatten)]
        place: Place,
    },
    /// Exchange a Self Client grant code (pasted from Zoho's API console) and store the refresh
    /// token.
    #[command(after_help = with_examples(&[
        "connector exchange books --code 1000.4a5b…",
    ]))]
    Exchange {
        #[arg(help = NAME_HELP, add = name_candidates())]
        name: String,
        /// The grant code from Zoho's API console (Self Client → Generate Code; valid minutes).
        #[arg(long)]
        code: String,
        #[command(flatten)]
        place: Place,
    },
    /// Show connectors: token state and source, expiry, next refresh, mints, last error.
    ///
    /// Exits 0 only when every connector shown can give a token now; otherwise with the code
    /// of the worst problem, so it works as a health check. With CONNECTOR_AGENT set, shows
    /// what the running agent sees.
    #[command(after_help = with_examples(&[
        "connector status",
        "connector status crm --json",
        "connector status crm -q || alert 'crm needs attention'",
    ]))]
    Status {
        /// Connectors to show (default: all).
        #[arg(value_name = "NAME", add = name_candidates())]
        names: Vec<String>,
        /// Print JSON, one object per connector.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Mint a new token for NAME now, even if the cached one is fresh.
    #[command(after_help = with_examples(&["connector refresh crm", "connector refresh crm --json"]))]
    Refresh {
        #[arg(help = NAME_HELP, add = name_candidates())]
        name: String,
        /// Print JSON: access_token, expires_at and refresh_at (Unix seconds), api_domain.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Revoke NAME's refresh token at Zoho and forget it and its token locally.
    #[command(after_help = with_examples(&["connector revoke crm"]))]
    Revoke {
        #[arg(help = NAME_HELP, add = name_candidates())]
        name: String,
        #[command(flatten)]
        place: Place,
    },
    /// List the configured connectors and where each one's refresh token is.
    #[command(after_help = with_examples(&["connector list", "connector list --json"]))]
    List {
        /// Print JSON, one object per connector.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the shell code that completes subcommands, options and connector names.
    #[command(after_help = with_examples(&[
        "source <(connector completions bash)      # in ~/.bashrc",
        "connector completions fish > ~/.config/fish/completions/connector.fish",
    ]))]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: String,
    },
    /// Run the token agent: every program on this host asks it for tokens over a Unix socket.
    ///
    /// One process holds every connector's token and refreshes it before it is needed; any
    /// language asks with one HTTP request: `GET /v1/connectors/NAME/token` with the header
    /// `X-Connector-Agent: 1` (others: /v1/connectors, /v1/status, /healthz, /metrics). Requests
    /// with `Origin` or proxy headers are refused; TCP needs a bearer token. SIGTERM or Ctrl-C
    /// lets requests in flight finish and removes the socket.
    #[command(after_help = with_examples(&[
        "connector serve",
        "curl -s --unix-socket $XDG_RUNTIME_DIR/catalyst-connectors/agent.sock -H 'X-Connector-Agent: 1' http://agent/v1/connectors/crm/token",
        "connector serve --tcp 127.0.0.1:8799 --allow crm=uid:1000",
    ]))]
    Serve {
        /// The Unix socket (default: $XDG_RUNTIME_DIR/catalyst-connectors/agent.sock; the
        /// directory is made 0700, the socket 0600).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also listen on this loopback address (e.g. 127.0.0.1:8799); clients must send the
        /// bearer token from --token-file.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<std::net::SocketAddr>,
        /// The bearer token for TCP clients (created, 0600, when missing; default: agent.token
        /// beside the socket).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Only these clients get NAME's tokens: `NAME=uid:UID` (Unix socket peers) or
        /// `NAME=bearer:FILE` (a token in a 0600 file). Repeat for more.
        #[arg(long, value_name = "NAME=RULE")]
        allow: Vec<String>,
        #[command(flatten)]
        place: Place,
    },
    /// Run a command with access tokens in its environment.
    ///
    /// For each connector NAME: ZOHO_<NAME>_ACCESS_TOKEN and ZOHO_<NAME>_API_DOMAIN (NAME in
    /// upper case, other characters as `_`). Signals are passed on to the command, and its exit
    /// code is returned. When a token cannot be had the command is not run, and the exit code
    /// says why (3–6). Uses the agent when CONNECTOR_AGENT is set.
    #[command(after_help = with_examples(&[
        "connector exec -c crm -- python3 sync.py",
        "connector exec -c crm --env CRM_TOKEN=crm --min-ttl 30m -- ./export.sh",
    ]))]
    Exec {
        /// A connector whose token to pass (repeat; default: every configured connector).
        #[arg(short = 'c', long = "connector", value_name = "NAME", add = name_candidates())]
        connectors: Vec<String>,
        /// The tokens must stay valid at least this long (e.g. 10m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "0s")]
        min_ttl: Duration,
        /// Also set VAR to NAME's access token (repeat).
        #[arg(long, value_name = "VAR=NAME")]
        env: Vec<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
        #[command(flatten)]
        place: Place,
    },
    /// Start an emulated Zoho in-process and show 1,000 concurrent callers sharing one token.
    #[command(after_help = with_examples(&["connector demo", "connector demo --callers 10000 --latency-ms 50"]))]
    Demo {
        /// Concurrent callers.
        #[arg(long, default_value_t = 1000)]
        callers: usize,
        /// Emulated latency of each token request, in milliseconds.
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Report every problem in the config at once (unknown keys too); exit 3 if there is any.
    #[command(after_help = with_examples(&["connector config check", "connector config check --config ./connectors.toml"]))]
    Check {
        #[command(flatten)]
        place: Place,
    },
}

/// A subcommand's help footer: its examples, then the exit codes.
fn with_examples(examples: &[&str]) -> String {
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
fn name_candidates() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        commands::names_for_completion()
            .into_iter()
            .map(CompletionCandidate::new)
            .collect::<Vec<_>>()
    })
}

fn main() -> ExitCode {
    // `COMPLETE=bash connector` (see `connector completions`) answers the shell, then exits.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            let exit = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
            return ExitCode::from(exit.code());
        }
    };
    init_logging(cli.quiet);
    // One thread: a command does one thing, and starting worker threads costs more than it
    // saves; the agent serves many clients at once.
    let builder = if matches!(cli.command, Command::Serve { .. }) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Unexpected.code());
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(f) => {
            let colour = output::stderr_colour();
            eprintln!(
                "{} {}",
                output::paint("error:", "31;1", colour),
                f.message.replace('\n', " ")
            );
            if let Some(hint) = f.hint {
                eprintln!("{} {hint}", output::paint("hint:", "33", colour));
            }
            ExitCode::from(f.exit.code())
        }
    }
}

/// Warnings from the library go to stderr, one line each, without colour unless stderr is a
/// terminal; `-q` hides them; `CONNECTOR_LOG` (a tracing filter, e.g. `debug`) overrides both.
fn init_logging(quiet: bool) {
    let default = if quiet {
        "off"
    } else {
        "catalyst_connectors=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONNECTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    if std::env::var_os("CONNECTOR_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(output::stderr_colour())
            .with_target(false)
            .without_time()
            .compact()
            .init();
    } else {
        // By default: the first warning only, as one line; the rest would repeat its cause.
        tracing_subscriber::registry()
            .with(filter)
            .with(output::FirstWarning::default())
            .init();
    }
}

fn parse_store(s: &str) -> Result<StoreSpec, catalyst_connectors::SpecError> {
    s.parse()
}

/// Runs one subcommand; `exec` returns its command's exit code.
async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Exec {
        connectors,
        min_ttl,
        env,
        command,
        place,
    } = cli.command
    {
        let ctx = Context {
            config: place.config.or(cli.place.config),
            store: place.store.or(cli.place.store),
            quiet: cli.quiet,
        };
        let options = commands::exec::Options {
            connectors,
            min_ttl,
            env,
            command,
        };
        return commands::exec::run(&ctx, options).await;
    }
    run_command(cli)
        .await
        .map(|()| ExitCode::from(Exit::Success.code()))
}

/// Runs a subcommand that reports only success or a failure.
async fn run_command(cli: Cli) -> Result<(), Failure> {
    // Options after the subcommand win over the same options before it.
    let outer = cli.place;
    let ctx = |place: Place| Context {
        config: place.config.or_else(|| outer.config.clone()),
        store: place.store.or_else(|| outer.store.clone()),
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Token {
            name,
            json,
            header,
            min_ttl,
            place,
        } => {
            let format = commands::token::Format::from_flags(json, header);
            commands::token::run(&ctx(place), &name, format, min_ttl).await
        }
        Command::Authorize {
            name,
            scope,
            port,
            no_browser,
            timeout,
            place,
        } => {
            let options = commands::authorize::Options {
                scope,
                port,
                open_browser: !no_browser,
                timeout: Duration::from_secs(timeout),
            };
            commands::authorize::command(&ctx(place), &name, options).await
        }
        Command::Exchange { name, code, place } => {
            commands::exchange::run(&ctx(place), &name, code).await
        }
        Command::Status { names, json, place } => {
            commands::status::run(&ctx(place), &names, json).await
        }
        Command::Refresh { name, json, place } => {
            commands::refresh::run(&ctx(place), &name, json).await
        }
        Command::Revoke { name, place } => commands::revoke::run(&ctx(place), &name).await,
        Command::List { json, place } => commands::list::run(&ctx(place), json).await,
        Command::Config {
            action: ConfigAction::Check { place },
        } => commands::config_check::run(&ctx(place)),
        Command::Completions { shell } => commands::completions::run(&shell),
        Command::Serve {
            socket,
            tcp,
            token_file,
            allow,
            place,
        } => {
            let options = commands::serve::Options {
                socket,
                tcp,
                token_file,
                allow,
            };
            commands::serve::run(&ctx(place), options).await
        }
        Command::Exec { .. } => Ok(()),
        Command::Demo {
            callers,
            latency_ms,
        } => commands::demo::run(callers, latency_ms).await,
    }
}
