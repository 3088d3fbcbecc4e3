//! `connector demo`: an emulated Zoho in-process, and many callers sharing one token.

use crate::exit::{Exit, Failure};
use catalyst_connectors::{Connection, ConnectorConfig, Error, ExposeSecret, MemoryStore};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Start an emulated Zoho in-process and show 1,000 concurrent callers sharing one token.
#[derive(clap::Args, Debug)]
#[command(after_help = super::with_examples(&["connector demo", "connector demo --callers 10000 --latency-ms 50"]))]
pub struct Args {
    /// Concurrent callers.
    #[arg(long, default_value_t = 1000)]
    callers: usize,
    /// Emulated latency of each token request, in milliseconds.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let (callers, latency_ms) = (args.callers, args.latency_ms);
    let io = |e: std::io::Error| {
        Failure::new(Exit::Unexpected, format!("cannot start the emulator: {e}"))
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
    let (served, failed, distinct) = stampede(&connection, callers).await;
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
        distinct,
        if distinct == 1 { "" } else { "s" }
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
        Err(Failure::new(
            Exit::Unexpected,
            format!(
                "demo expected exactly 1 token request, saw {}",
                cold_requests + warm_requests
            ),
        ))
    }
}

/// `callers` tasks ask for a token at once: (served, failed, distinct tokens).
async fn stampede(connection: &Connection, callers: usize) -> (usize, usize, usize) {
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
    (served, failed, distinct.len())
}
