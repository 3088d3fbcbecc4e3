//! `connector`: Zoho access tokens for people and scripts.

mod commands;
mod exit;
mod output;

use catalyst_connectors::StoreSpec;
use clap::{Parser, Subcommand};
use commands::Context;
use exit::{Exit, Failure, footer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Valid OAuth access tokens for Zoho services, from Catalyst-style connector configs.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about, after_help = footer())]
struct Cli {
    /// Connector config (.json or .toml, the Catalyst SDKs' shape). Default: $CONNECTOR_CONFIG,
    /// then ./connectors.json, ./connectors.toml, then the same names in the user config
    /// directory (e.g. ~/.config/catalyst-connectors/).
    #[arg(long, global = true, env = "CONNECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Where tokens are kept and shared: `sqlite:PATH`, `memory:`, `redis://…`, `rediss://…`,
    /// `redis+cluster://h1:p1,h2:p2` or `catalyst://PROJECT_ID[/SEGMENT]` (with
    /// `$connector.catalyst_auth` in the config). Default: the config's `$connector.store`, else
    /// SQLite in the user data directory.
    #[arg(long, global = true, env = "CONNECTOR_STORE", value_parser = parse_store)]
    store: Option<StoreSpec>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a valid access token for connector NAME.
    #[command(after_help = footer())]
    Token {
        /// The connector's name in the config.
        name: String,
        /// Print JSON: access_token, expires_at and refresh_at (Unix seconds), api_domain.
        #[arg(long, conflicts_with = "header")]
        json: bool,
        /// Print the HTTP header: `Authorization: Zoho-oauthtoken …`.
        #[arg(long)]
        header: bool,
    },
    /// Authorize connector NAME in a browser (server-based client) and store its refresh token.
    #[command(after_help = footer())]
    Authorize {
        name: String,
        /// Comma-separated scopes, e.g. ZohoCRM.modules.ALL,ZohoCRM.users.READ.
        #[arg(long)]
        scope: String,
        /// Loopback port for the redirect (http://127.0.0.1:PORT/callback); 0 picks a free one.
        /// Ignored when the connector's redirect_url is a loopback URL.
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Print the consent URL only; do not open a browser.
        #[arg(long)]
        no_browser: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Exchange a Self Client grant code (pasted from Zoho's API console) and store the refresh
    /// token.
    #[command(after_help = footer())]
    Exchange {
        name: String,
        /// The grant code.
        #[arg(long)]
        code: String,
    },
    /// Show every connector: token state and source, expiry, next refresh, mints in the window.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Mint a new token for NAME now.
    #[command(after_help = footer())]
    Refresh {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke NAME's refresh token at Zoho and forget it and its token locally.
    #[command(after_help = footer())]
    Revoke { name: String },
    /// List the configured connectors.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Start an emulated Zoho in-process and show 1,000 concurrent callers sharing one token.
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
    /// Report every problem in the config at once; exit 3 if there is any.
    Check,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONNECTOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connector: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Unexpected.code());
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(Exit::Success.code()),
        Err(f) => {
            let colour = output::stderr_colour();
            eprintln!(
                "{} {}",
                output::paint("connector:", "31;1", colour),
                f.message.replace('\n', " ")
            );
            if let Some(hint) = f.hint {
                eprintln!("{} {hint}", output::paint("hint:", "33", colour));
            }
            ExitCode::from(f.exit.code())
        }
    }
}

fn parse_store(s: &str) -> Result<StoreSpec, catalyst_connectors::SpecError> {
    s.parse()
}

/// Runs one subcommand.
async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context {
        config: cli.config,
        store: cli.store,
    };
    match cli.command {
        Command::Token { name, json, header } => {
            commands::token::run(&ctx, &name, json, header).await
        }
        Command::Authorize {
            name,
            scope,
            port,
            no_browser,
            timeout,
        } => {
            let options = commands::authorize::Options {
                scope,
                port,
                open_browser: !no_browser,
                timeout: Duration::from_secs(timeout),
            };
            commands::authorize::command(&ctx, &name, options).await
        }
        Command::Exchange { name, code } => commands::exchange::run(&ctx, &name, code).await,
        Command::Status { json } => commands::status::run(&ctx, json).await,
        Command::Refresh { name, json } => commands::refresh::run(&ctx, &name, json).await,
        Command::Revoke { name } => commands::revoke::run(&ctx, &name).await,
        Command::List { json } => commands::list::run(&ctx, json).await,
        Command::Config {
            action: ConfigAction::Check,
        } => commands::config_check::run(&ctx),
        Command::Completions { shell } => {
            commands::completions::run(shell);
            Ok(())
        }
        Command::Demo {
            callers,
            latency_ms,
        } => commands::demo::run(callers, latency_ms).await,
    }
}
