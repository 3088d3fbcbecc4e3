//! `connector`: Zoho access tokens for people and scripts.

mod authorize;
mod output;

use catalyst_connectors::{
    Connection, ConnectorConfig, Error, ExposeSecret, GrantCode, MemoryStore, StoreSpec, TokenState,
};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected failure
  2  usage error
  3  configuration error (config file, unknown connector, client rejected by Zoho)
  4  re-authorization needed (refresh token missing, revoked or invalid)
  5  throttled by Zoho or by the mint governor (wait, then retry)
  6  transient failure (network, timeout, Zoho server error): retry later";

/// Valid OAuth access tokens for Zoho services, from Catalyst-style connector configs.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about, after_help = EXIT_CODES)]
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
    #[command(after_help = EXIT_CODES)]
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
    #[command(after_help = EXIT_CODES)]
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
    #[command(after_help = EXIT_CODES)]
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
    #[command(after_help = EXIT_CODES)]
    Refresh {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke NAME's refresh token at Zoho and forget it and its token locally.
    #[command(after_help = EXIT_CODES)]
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

/// A failure to report: one line, an optional hint, an exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (code, hint) = match &e {
            Error::Config(_) => (
                3,
                Some("run `connector config check` to see every problem".to_owned()),
            ),
            Error::UnknownConnector { .. } => (
                3,
                Some("run `connector list` to see the configured names".to_owned()),
            ),
            Error::InvalidClient { .. } => (
                3,
                Some(
                    "check client_id, client_secret and the data centre (dc) in the config"
                        .to_owned(),
                ),
            ),
            Error::StoreOpen(_) => (
                3,
                Some("choose another store with --store or CONNECTOR_STORE".to_owned()),
            ),
            Error::ReauthorizationRequired { connector, .. }
            | Error::MissingRefreshToken { connector } => (
                4,
                Some(format!(
                    "run `connector authorize {connector} --scope …` (server-based client) or `connector exchange {connector} --code …` (Self Client)"
                )),
            ),
            Error::Throttled { .. } => (
                5,
                Some(
                    "wait, then retry; `connector status` shows the mints used in the window"
                        .to_owned(),
                ),
            ),
            e if e.is_transient() => (6, Some("check the network and retry later".to_owned())),
            _ => (1, None),
        };
        Failure {
            code,
            message: e.to_string(),
            hint,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONNECTOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connector: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
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
            ExitCode::from(f.code)
        }
    }
}

fn parse_store(s: &str) -> Result<StoreSpec, String> {
    s.parse()
}

fn find_config(explicit: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let names = ["connectors.json", "connectors.toml"];
    let user_dir = dirs::config_dir().map(|d| d.join("catalyst-connectors"));
    names
        .iter()
        .map(PathBuf::from)
        .chain(user_dir.iter().flat_map(|d| names.iter().map(move |n| d.join(n))))
        .find(|p| p.is_file())
        .ok_or_else(|| Failure {
            code: 3,
            message: "no connector config found".into(),
            hint: Some(
                "pass --config PATH, set CONNECTOR_CONFIG, or create ./connectors.json (see the README's first run)"
                    .into(),
            ),
        })
}

fn connection(config: Option<PathBuf>, store: Option<StoreSpec>) -> Result<Connection, Failure> {
    let path = find_config(config)?;
    let mut builder = Connection::builder().file(&path);
    if let Some(spec) = store {
        builder = builder.store_spec(spec);
    }
    Ok(builder.build()?)
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn token_json(t: &catalyst_connectors::AccessToken) -> serde_json::Value {
    json!({
        "access_token": t.expose_secret(),
        "expires_at": output::epoch_secs(t.expires_at()),
        "refresh_at": output::epoch_secs(t.refresh_at()),
        "api_domain": t.api_domain(),
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Token { name, json, header } => {
            let token = connection(cli.config, cli.store)?
                .connector(&name)?
                .access_token()
                .await?;
            if json {
                print_json(&token_json(&token));
            } else if header {
                println!("Authorization: {}", token.authorization_header());
            } else {
                println!("{}", token.expose_secret());
            }
            Ok(())
        }
        Command::Authorize {
            name,
            scope,
            port,
            no_browser,
            timeout,
        } => {
            let connection = connection(cli.config, cli.store)?;
            let connector = connection.connector(&name)?;
            let name = authorize::run(
                connector.clone(),
                authorize::Options {
                    scope,
                    port,
                    open_browser: !no_browser,
                    timeout: Duration::from_secs(timeout),
                },
            )
            .await?;
            eprintln!("Connector `{name}` is authorized; its refresh token is in the token store.");
            if connector.config().has_refresh_token() {
                eprintln!(
                    "Note: the config also has a refresh_token for `{name}`, which takes precedence: remove it to use the new one."
                );
            }
            Ok(())
        }
        Command::Exchange { name, code } => {
            let connector = connection(cli.config, cli.store)?.connector(&name)?;
            let generated = connector
                .generate_access_token(&GrantCode::new(code))
                .await?;
            if generated.refresh_token.is_none() {
                return Err(Failure {
                    code: 4,
                    message: format!("Zoho returned no refresh token for connector `{name}`"),
                    hint: Some("generate the code with access type offline".into()),
                });
            }
            eprintln!("Connector `{name}` is authorized; its refresh token is in the token store.");
            Ok(())
        }
        Command::Status { json } => status(connection(cli.config, cli.store)?, json).await,
        Command::Refresh { name, json } => {
            let token = connection(cli.config, cli.store)?
                .connector(&name)?
                .force_refresh()
                .await?;
            if json {
                print_json(&token_json(&token));
            } else {
                println!(
                    "Connector `{name}`: new token, expires {}",
                    output::relative(Some(token.expires_at()))
                );
            }
            Ok(())
        }
        Command::Revoke { name } => {
            let connector = connection(cli.config, cli.store)?.connector(&name)?;
            connector.revoke().await?;
            println!("Connector `{name}`: refresh token revoked at Zoho and forgotten here.");
            if connector.config().has_refresh_token() {
                eprintln!(
                    "Note: the config still holds the revoked refresh_token for `{name}`: remove it."
                );
            }
            Ok(())
        }
        Command::List { json } => list(connection(cli.config, cli.store)?, json).await,
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let path = find_config(cli.config)?;
            match Connection::builder()
                .file(&path)
                .store(MemoryStore::new())
                .build()
            {
                Ok(c) => {
                    let names: Vec<&str> = c.connector_names().collect();
                    println!(
                        "{}: ok, {} connector(s): {}",
                        path.display(),
                        names.len(),
                        names.join(", ")
                    );
                    Ok(())
                }
                Err(Error::Config(errors)) => {
                    for issue in errors.issues() {
                        println!("{issue}");
                    }
                    Err(Failure {
                        code: 3,
                        message: format!(
                            "{} problem(s) in {}",
                            errors.issues().len(),
                            path.display()
                        ),
                        hint: None,
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "connector",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Demo {
            callers,
            latency_ms,
        } => demo(callers, latency_ms).await,
    }
}

async fn status(connection: Connection, json: bool) -> Result<(), Failure> {
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "STATE".into(),
        "SOURCE".into(),
        "EXPIRES".into(),
        "NEXT REFRESH".into(),
        "MINTS/10MIN".into(),
        "LAST ERROR".into(),
    ]];
    let mut out = Vec::new();
    for name in connection.connector_names() {
        let connector = connection.connector(name)?;
        // Load what the store holds, without minting.
        let cached = connector.cached_token().await;
        let status = connector.status().await;
        let state = match status.state {
            TokenState::Empty => "none",
            TokenState::Fresh => "fresh",
            TokenState::Stale => "stale",
            TokenState::Expired => "expired",
            _ => "?",
        };
        let source = match status.source {
            Some(catalyst_connectors::TokenSource::Store) => "store",
            Some(catalyst_connectors::TokenSource::Minted) => "minted",
            _ => "-",
        };
        let last_error = match (&status.last_error, &cached) {
            (Some((e, _)), _) => e.to_string(),
            (None, Err(e)) => e.to_string(),
            _ => "-".into(),
        };
        out.push(json!({
            "name": name,
            "state": state,
            "source": if source == "-" { None } else { Some(source) },
            "expires_at": status.expires_at.map(output::epoch_secs),
            "refresh_at": status.refresh_at.map(output::epoch_secs),
            "mints_in_window": status.mints_in_window,
            "mint_limit": status.mint_limit,
            "last_error": if last_error == "-" { None } else { Some(last_error.clone()) },
        }));
        rows.push(vec![
            name.to_owned(),
            state.into(),
            source.into(),
            output::relative(status.expires_at),
            output::relative(status.refresh_at),
            format!("{}/{}", status.mints_in_window, status.mint_limit),
            last_error,
        ]);
    }
    if json {
        print_json(&serde_json::Value::Array(out));
    } else {
        print!("{}", output::table(&rows, output::stdout_colour()));
    }
    Ok(())
}

async fn list(connection: Connection, json: bool) -> Result<(), Failure> {
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "CLIENT ID".into(),
        "TOKEN URL".into(),
        "REFRESH TOKEN".into(),
    ]];
    let mut out = Vec::new();
    for name in connection.connector_names() {
        let connector = connection.connector(name)?;
        let config = connector.config();
        let refresh = if config.has_refresh_token() {
            "config"
        } else if connector.has_refresh_token().await {
            "store"
        } else {
            "none"
        };
        out.push(json!({
            "name": name,
            "client_id": config.client_id(),
            "refresh_url": config.refresh_url(),
            "refresh_token": refresh,
        }));
        rows.push(vec![
            name.to_owned(),
            config.client_id().to_owned(),
            config.refresh_url().to_owned(),
            refresh.into(),
        ]);
    }
    if json {
        print_json(&serde_json::Value::Array(out));
    } else {
        print!("{}", output::table(&rows, output::stdout_colour()));
    }
    Ok(())
}

async fn demo(callers: usize, latency_ms: u64) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure {
        code: 1,
        message: format!("cannot start the emulator: {e}"),
        hint: None,
    };
    let emulator = zoho_emulator::start().await.map_err(io)?;
    emulator.add_client("1000.DEMOCLIENT", "demo-client-secret");
    let refresh_token = emulator.add_refresh_token("1000.DEMOCLIENT", "ZohoCRM.users.READ");
    emulator.set_latency(Duration::from_millis(latency_ms));
    println!(
        "Started an emulated Zoho Accounts at {} ({latency_ms} ms per token request).",
        emulator.url()
    );

    // The demo keeps its tokens in memory: it never touches your token store.
    let connection = Connection::builder()
        .ignore_env()
        .store(MemoryStore::new())
        .connector(
            ConnectorConfig::builder("crm")
                .client_id("1000.DEMOCLIENT")
                .client_secret("demo-client-secret")
                .token_url(emulator.token_url())
                .refresh_token(refresh_token)
                .build()
                .map_err(Error::from)?,
        )
        .build()?;

    println!("{callers} tasks ask connector `crm` for a token at the same moment…");
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let crm = connection.connector("crm");
            tokio::spawn(async move { crm?.access_token().await })
        })
        .collect();
    let mut served = 0usize;
    let mut failed = 0usize;
    let mut distinct = HashSet::new();
    for task in futures::future::join_all(tasks).await {
        match task {
            Ok(Ok(token)) => {
                served += 1;
                distinct.insert(token.expose_secret().to_owned());
            }
            _ => failed += 1,
        }
    }
    let cold = started.elapsed();
    let cold_requests = emulator.stats().token_requests;

    let crm = connection.connector("crm")?;
    let started = Instant::now();
    for _ in 0..callers {
        crm.access_token().await?;
    }
    let warm = started.elapsed();
    let warm_requests = emulator.stats().token_requests - cold_requests;

    println!();
    println!("  token requests made    {cold_requests}");
    println!(
        "  callers served         {served} ({} distinct token{})",
        distinct.len(),
        if distinct.len() == 1 { "" } else { "s" }
    );
    println!("  callers failed         {failed}");
    println!("  time taken             {} ms", cold.as_millis());
    println!(
        "  then {callers} more calls  {} µs in all, from memory, {warm_requests} token requests",
        warm.as_micros()
    );
    println!();
    println!(
        "The official SDKs send one token request per cold caller ({callers} here); Zoho allows 10 per refresh token per 10 minutes."
    );
    if cold_requests == 1 && warm_requests == 0 && failed == 0 {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: format!(
                "demo expected exactly 1 token request, saw {}",
                cold_requests + warm_requests
            ),
            hint: None,
        })
    }
}
