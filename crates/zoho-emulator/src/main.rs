//! `zoho-emulator`: run the offline Zoho Accounts emulator as a process.

use clap::Parser;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zoho_emulator::{Emulator, SavedState};

/// An offline Zoho Accounts (token endpoint, revoke, consent page), a protected sample API
/// (/crm/v8/users) and Catalyst Cache, with Zoho's limits — for tests, demos and trying the
/// `connector` CLI without a Zoho account.
#[derive(Parser, Debug)]
#[command(version, about, long_about, after_help = AFTER_HELP)]
struct Args {
    /// Print the man page (roff) on stdout and exit (for packagers).
    #[arg(long, hide = true)]
    manpage: bool,
    /// Port to listen on (0 picks a free one; the URL is printed on stdout).
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
    /// Register this refresh token for the client (scope ZohoCRM.users.READ).
    #[arg(long, requires = "client_id")]
    refresh_token: Option<String>,
    /// Lifetime of minted access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime: u64,
    /// Delay before each token answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Keep clients and refresh tokens in this JSON file across restarts (read at start,
    /// written when they change).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// A Catalyst project whose cache exists (`ID` or `ID/SEGMENT`; repeat). Once one is given,
    /// Catalyst Cache requests for any other project or segment answer 404, as Catalyst does;
    /// without any, every project exists.
    #[arg(long, value_name = "ID[/SEGMENT]")]
    catalyst_project: Vec<String>,
}

const AFTER_HELP: &str = "\
Point the connector CLI at it (port 8780 here):
  zoho-emulator --port 8780 --client-id 1000.DEMO --client-secret s --refresh-token 1000.demo-rt &
  cat > connectors.json <<'JSON'
  {\"crm\": {\"client_id\": \"1000.DEMO\", \"client_secret\": \"s\",
           \"auth_url\": \"http://127.0.0.1:8780/oauth/v2/token\",
           \"refresh_url\": \"http://127.0.0.1:8780/oauth/v2/token\",
           \"refresh_token\": \"1000.demo-rt\"}}
  JSON
  connector token crm

Consent page: GET /oauth/v2/auth (Accept and Deny buttons), so `connector authorize` works
against it: leave out refresh_token above and run `connector authorize crm --scope ZohoCRM.users.READ`.

Routes under /__emulator/:
  GET  stats            counters: token requests by grant and outcome, throttled, live tokens…
  GET  settings         token lifetime, latency, limits (mint_limit, mint_window_secs,
  POST settings           live_token_cap), fault, api_domain (POST a JSON object to change);
                          fault: {\"kind\": \"http500\" | \"hang\" (+ \"millis\") | \"reset\" |
                          \"error_with200\" (+ \"error\", \"description\") | \"legacy_expiry\"}
  POST clients          {\"client_id\", \"client_secret\"}
  POST refresh_tokens   {\"client_id\", \"scope\"[, \"label\"]} → {\"refresh_token\"}
  POST grant_codes      {\"client_id\", \"scope\"[, \"redirect_uri\"]} → {\"code\"}
  POST advance          {\"seconds\"}: move the emulator's clock forward";

fn read_state(path: &Path) -> std::io::Result<Option<SavedState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not an emulator state file: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the state atomically (a temporary file renamed over the old one), mode 0600.
fn write_state(path: &Path, state: &SavedState) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&tmp)?, text.as_bytes())?;
    std::fs::rename(tmp, path)
}

/// Saves the state whenever it changed, until Ctrl-C or SIGTERM (`term`, registered before the
/// URL is printed, so a client that saw the URL can stop the emulator cleanly).
async fn serve(
    emulator: &Emulator,
    state: Option<&Path>,
    mut term: tokio::signal::unix::Signal,
) -> std::io::Result<()> {
    let mut last = emulator.saved_state();
    if let Some(path) = state {
        write_state(path, &last)?;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let stop = tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; true }
            _ = term.recv() => true,
            _ = tick.tick() => false,
        };
        if let Some(path) = state {
            let now = emulator.saved_state();
            if now != last {
                write_state(path, &now)?;
                last = now;
            }
        }
        if stop {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.manpage {
        let mut out = std::io::stdout().lock();
        return clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).render(&mut out);
    }
    let emulator = zoho_emulator::start_on(SocketAddr::new(args.bind, args.port)).await?;
    emulator.set_token_lifetime(Duration::from_secs(args.token_lifetime));
    let mut projects = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for project in &args.catalyst_project {
        match project.split_once('/') {
            Some((id, segment)) => projects.entry(id).or_default().push(segment),
            None => {
                projects.entry(project).or_default();
            }
        }
    }
    for (id, segments) in projects {
        emulator.add_catalyst_project(id, &segments);
    }
    emulator.set_latency(Duration::from_millis(args.latency_ms));
    if let Some(saved) = args.state.as_deref().map(read_state).transpose()?.flatten() {
        emulator.restore_state(&saved);
    }
    if let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) {
        emulator.add_client(id, secret);
        if let Some(rt) = &args.refresh_token {
            emulator.add_refresh_token_labeled(id, rt, "ZohoCRM.users.READ", "");
        }
    }
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    println!("{}", emulator.url());
    eprintln!(
        "zoho-emulator listening on {} (token endpoint {}, stats {}/__emulator/stats); Ctrl-C to stop",
        emulator.url(),
        emulator.token_url(),
        emulator.url()
    );
    serve(&emulator, args.state.as_deref(), term).await?;
    emulator.shutdown().await;
    Ok(())
}
