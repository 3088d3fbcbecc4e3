//! Issue 15's goal, side by side in one run: token request latency (p50, p99) through the agent
//! over its Unix socket against a bare axum handler returning a constant over the same kind of
//! socket (goal: at most 1.5× it), and requests per second with 64 concurrent clients.
//!
//! Both servers run as their own processes: the agent is `connector serve`; the bare server is
//! this benchmark binary run with `BARE_SERVER=<socket>`. The client is reqwest over the socket.
//! Run with `cargo bench -p connector-cli --bench agent`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SEQUENTIAL: usize = 5_000;
const CONCURRENCY: usize = 64;
const LOAD_FOR: Duration = Duration::from_secs(3);

/// The bare server: one route answering a constant of the agent's answer's size.
async fn bare_server(path: PathBuf) {
    let body = r#"{"access_token":"1000.00000000000000000000000000000000","api_domain":"http://127.0.0.1:1","expires_at":1795961876,"refresh_at":1795960976,"token_type":"Zoho-oauthtoken"}"#;
    let app = axum::Router::new().route(
        "/v1/connectors/{name}/token",
        axum::routing::get(move || async move { ([("content-type", "application/json")], body) }),
    );
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

async fn wait_for(path: &Path) {
    for _ in 0..400 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} did not come up", path.display());
}

fn client(path: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(path)
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client")
}

async fn ask(client: &reqwest::Client) {
    let r = client
        .get("http://agent/v1/connectors/crm/token")
        .header("X-Connector-Agent", "1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("body");
    assert!(body.len() > 50);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (p50, p99) of sequential requests, and requests per second with 64 concurrent clients.
async fn measure(path: &Path) -> (Duration, Duration, f64) {
    let c = client(path);
    for _ in 0..500 {
        ask(&c).await;
    }
    let mut times = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let start = Instant::now();
        ask(&c).await;
        times.push(start.elapsed());
    }
    times.sort();
    let deadline = Instant::now() + LOAD_FOR;
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    ask(&c).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    let rps = total as f64 / started.elapsed().as_secs_f64();
    (percentile(&times, 0.5), percentile(&times, 0.99), rps)
}

fn kill(mut child: Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(path) = std::env::var_os("BARE_SERVER") {
        runtime.block_on(bare_server(PathBuf::from(path)));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: nothing to list
    }
    runtime.block_on(async {
        let emulator = zoho_emulator::start().await.expect("emulator");
        emulator.add_client("1000.BENCH", "bench-secret");
        let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = serde_json::json!({"crm": {
            "client_id": "1000.BENCH", "client_secret": "bench-secret",
            "auth_url": emulator.token_url(), "refresh_url": emulator.token_url(),
            "refresh_token": refresh_token,
        }});
        let config_path = dir.path().join("connectors.json");
        std::fs::write(&config_path, config.to_string()).expect("config");
        let agent_socket = dir.path().join("run").join("agent.sock");
        let bare_socket = dir.path().join("bare.sock");
        let agent = Command::new(support::connector())
            .args(["serve", "--socket"])
            .arg(&agent_socket)
            .env("CONNECTOR_CONFIG", &config_path)
            .env(
                "CONNECTOR_STORE",
                format!("sqlite:{}", dir.path().join("tokens.db").display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent");
        let bare = Command::new(std::env::current_exe().expect("exe"))
            .env("BARE_SERVER", &bare_socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("bare server");
        wait_for(&agent_socket).await;
        wait_for(&bare_socket).await;
        let (a50, a99, arps) = measure(&agent_socket).await;
        let (b50, b99, brps) = measure(&bare_socket).await;
        kill(agent);
        kill(bare);
        println!("agent/unix_socket  (one run, {SEQUENTIAL} sequential requests, then {CONCURRENCY} clients for {}s)", LOAD_FOR.as_secs());
        println!("{:<28} {:>10} {:>10} {:>14}", "", "p50", "p99", "req/s (64)");
        println!("{:<28} {:>10.1?} {:>10.1?} {:>14.0}", "connector serve", a50, a99, arps);
        println!("{:<28} {:>10.1?} {:>10.1?} {:>14.0}", "bare axum, constant", b50, b99, brps);
        println!(
            "{:<28} {:>10.2} {:>10.2} {:>14.2}",
            "ratio agent / bare",
            a50.as_secs_f64() / b50.as_secs_f64(),
            a99.as_secs_f64() / b99.as_secs_f64(),
            arps / brps
        );
        assert_eq!(emulator.stats().token_requests, 1, "one mint for the whole run");
    });
}
