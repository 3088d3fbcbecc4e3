//! `connector`: Zoho access tokens for people and scripts.

use catalyst_connectors::{
    Connection, ConnectorConfig, Error, ExposeSecret, MemoryStore, StoreSpec,
};
use clap::{Parser, Subcommand};
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
  5  throttled by Zoho (wait, then retry)
  6  transient failure (network, timeout, Zoho server error): retry later";

/// Valid OAuth access tokens for Zoho services, from Catalyst-style connector configs.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Connector config (.json or .toml, the Catalyst SDKs' shape). Default: $CONNECTOR_CONFIG,
    /// then ./connectors.json, then ./connectors.toml.
    #[arg(long, global = true, env = "CONNECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Where tokens are kept and shared: `sqlite:PATH` or `memory:`. Default: the config's
    /// `$connector.store`, else SQLite in the user data directory.
    #[arg(long, global = true, env = "CONNECTOR_STORE", value_parser = parse_store)]
    store: Option<StoreSpec>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a valid access token for connector NAME on stdout.
    #[command(after_help = EXIT_CODES)]
    Token {
        /// The connector's name in the config.
        name: String,
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

struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Config(_)
            | Error::UnknownConnector { .. }
            | Error::InvalidClient { .. }
            | Error::StoreOpen(_) => 3,
            e if e.needs_reauthorization() => 4,
            Error::Throttled { .. } => 5,
            e if e.is_transient() => 6,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
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
            eprintln!("connector: {}", f.message);
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
    ["connectors.json", "connectors.toml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| Failure {
            code: 3,
            message: "no connector config: pass --config PATH, set CONNECTOR_CONFIG, or create ./connectors.json".into(),
        })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Token { name } => {
            let path = find_config(cli.config)?;
            let mut builder = Connection::builder().file(&path);
            if let Some(spec) = cli.store {
                builder = builder.store_spec(spec);
            }
            let connection = builder.build()?;
            let token = connection.connector(&name)?.access_token().await?;
            println!("{}", token.expose_secret());
            Ok(())
        }
        Command::Demo {
            callers,
            latency_ms,
        } => demo(callers, latency_ms).await,
    }
}

async fn demo(callers: usize, latency_ms: u64) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure {
        code: 1,
        message: format!("cannot start the emulator: {e}"),
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
        })
    }
}
