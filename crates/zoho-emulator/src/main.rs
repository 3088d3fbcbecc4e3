//! `zoho-emulator`: run the offline Zoho Accounts emulator as a process.

use clap::Parser;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// An offline Zoho Accounts token endpoint and sample API, for tests and demos.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind (loopback by default).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Register a client with this id (needs --client-secret).
    #[arg(long, requires = "client_secret")]
    client_id: Option<String>,
    /// The registered client's secret.
    #[arg(long)]
    client_secret: Option<String>,
    /// Register this refresh token for the client.
    #[arg(long, requires = "client_id")]
    refresh_token: Option<String>,
    /// Lifetime of minted access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime: u64,
    /// Delay before each token answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let emulator = zoho_emulator::start_on(SocketAddr::new(args.bind, args.port)).await?;
    emulator.set_token_lifetime(Duration::from_secs(args.token_lifetime));
    emulator.set_latency(Duration::from_millis(args.latency_ms));
    if let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) {
        emulator.add_client(id, secret);
        if let Some(rt) = &args.refresh_token {
            emulator.add_refresh_token_labeled(id, rt, "ZohoCRM.users.READ", "");
        }
    }
    println!("{}", emulator.url());
    eprintln!(
        "zoho-emulator listening on {} (token endpoint {}, stats {}/__emulator/stats); Ctrl-C to stop",
        emulator.url(),
        emulator.token_url(),
        emulator.url()
    );
    tokio::signal::ctrl_c().await?;
    emulator.shutdown().await;
    Ok(())
}
