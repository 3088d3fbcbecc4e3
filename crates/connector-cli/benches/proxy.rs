//! Issue 24's goal, side by side in one run: a request to the emulator's sample API through the
//! authorizing proxy (`connector serve --proxy`) against the same request sent directly with the
//! token (goal: at most 1.3× it at p50). Requests alternate (direct, proxied, …) on keep-alive
//! connections, so both see the same machine; p50 and p99 of each.
//!
//! A third series is the floor of any proxy: a bare forwarder (this binary run with
//! `BARE_FORWARDER=<api url> <token>`: axum in, reqwest out, a fixed token, no checks) — one more
//! loopback HTTP hop than the direct request.
//!
//! The emulator runs on a runtime (and thread) of its own, the agent and the forwarder as their
//! own processes. Run with `cargo bench -p connector-cli --bench proxy`.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REQUESTS: usize = 5_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts the emulator on a thread of its own; returns its URL, the client's refresh token.
fn emulator() -> (String, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let emulator = zoho_emulator::start().await.expect("emulator");
            emulator.add_client("1000.BENCH", "bench-secret");
            let rt = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
            tx.send((emulator.url().to_owned(), rt)).expect("send");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("emulator started")
}

async fn get(request: reqwest::RequestBuilder) -> Duration {
    let start = Instant::now();
    let r = request.send().await.expect("request");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("body");
    assert!(body.len() > 100);
    start.elapsed()
}

/// The bare forwarder: `/{connector}/{*path}` to `upstream` with `token`, the answer relayed.
async fn bare_forwarder(upstream: String, token: String) {
    use axum::extract::{Path, State};
    let client = reqwest::Client::new();
    let app = axum::Router::new()
        .route(
            "/{connector}/{*path}",
            axum::routing::get(
                |State((client, upstream, token)): State<(reqwest::Client, String, String)>,
                 Path((_, path)): Path<(String, String)>| async move {
                    let r = client
                        .get(format!("{upstream}/{path}"))
                        .header("Authorization", format!("Zoho-oauthtoken {token}"))
                        .send()
                        .await
                        .expect("upstream");
                    let status = r.status();
                    (status, r.bytes().await.expect("body"))
                },
            ),
        )
        .with_state((client, upstream, token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("http://{}", listener.local_addr().expect("addr"));
    axum::serve(listener, app).await.expect("serve");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(spec) = std::env::var("BARE_FORWARDER") {
        let (upstream, token) = spec.split_once(' ').expect("URL TOKEN");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(bare_forwarder(upstream.to_owned(), token.to_owned()));
        return;
    }
    let (url, refresh_token) = emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serde_json::json!({"crm": {
        "client_id": "1000.BENCH", "client_secret": "bench-secret",
        "auth_url": format!("{url}/oauth/v2/token"), "refresh_url": format!("{url}/oauth/v2/token"),
        "refresh_token": refresh_token,
    }});
    let config_path = dir.path().join("connectors.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let socket = dir.path().join("run").join("agent.sock");
    let mut agent = Command::new(support::connector())
        .args(["serve", "--proxy", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .env("CONNECTOR_CONFIG", &config_path)
        .env(
            "CONNECTOR_STORE",
            format!("sqlite:{}", dir.path().join("tokens.db").display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let mut lines = BufReader::new(agent.stdout.take().expect("stdout")).lines();
    let _socket = lines.next().expect("socket line").expect("line");
    let proxy = lines.next().expect("proxy line").expect("line");
    let bearer =
        std::fs::read_to_string(dir.path().join("run").join("agent.token")).expect("bearer");
    let bearer = bearer.trim().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let proxied = || {
            client
                .get(format!("{proxy}/crm/crm/v8/users"))
                .header("X-Connector-Agent", "1")
                .bearer_auth(&bearer)
        };
        // The token the proxy uses (its first request mints it), for the direct requests.
        get(proxied()).await;
        let token = reqwest::Client::builder()
            .unix_socket(socket.as_path())
            .build()
            .expect("client")
            .get("http://agent/v1/connectors/crm/token")
            .header("X-Connector-Agent", "1")
            .send()
            .await
            .expect("token")
            .json::<serde_json::Value>()
            .await
            .expect("json")["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let direct = || {
            client
                .get(format!("{url}/crm/v8/users"))
                .header("Authorization", format!("Zoho-oauthtoken {token}"))
        };
        let mut forwarder = Command::new(std::env::current_exe().expect("exe"))
            .env("BARE_FORWARDER", format!("{url} {token}"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("forwarder");
        let forwarder_url = BufReader::new(forwarder.stdout.take().expect("stdout"))
            .lines()
            .next()
            .expect("url")
            .expect("line");
        let forwarded = || client.get(format!("{forwarder_url}/crm/crm/v8/users"));
        for _ in 0..500 {
            get(direct()).await;
            get(forwarded()).await;
            get(proxied()).await;
        }
        let (mut d, mut f, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REQUESTS {
            d.push(get(direct()).await);
            f.push(get(forwarded()).await);
            p.push(get(proxied()).await);
        }
        let _ = Command::new("kill")
            .arg(forwarder.id().to_string())
            .status();
        let _ = forwarder.wait();
        d.sort();
        f.sort();
        p.sort();
        println!("proxy/crm_v8_users  (one run, {REQUESTS} requests each, in turn)");
        println!("{:<28} {:>10} {:>10}", "", "p50", "p99");
        println!(
            "{:<28} {:>10.1?} {:>10.1?}",
            "through connector serve --proxy",
            percentile(&p, 0.5),
            percentile(&p, 0.99)
        );
        println!(
            "{:<28} {:>10.1?} {:>10.1?}",
            "bare forwarder (the floor)",
            percentile(&f, 0.5),
            percentile(&f, 0.99)
        );
        println!(
            "{:<28} {:>10.1?} {:>10.1?}",
            "direct, same token",
            percentile(&d, 0.5),
            percentile(&d, 0.99)
        );
        println!(
            "{:<28} {:>10.2} {:>10.2}",
            "ratio proxy / direct",
            percentile(&p, 0.5).as_secs_f64() / percentile(&d, 0.5).as_secs_f64(),
            percentile(&p, 0.99).as_secs_f64() / percentile(&d, 0.99).as_secs_f64()
        );
        println!(
            "{:<28} {:>10.2} {:>10.2}",
            "ratio proxy / bare forwarder",
            percentile(&p, 0.5).as_secs_f64() / percentile(&f, 0.5).as_secs_f64(),
            percentile(&p, 0.99).as_secs_f64() / percentile(&f, 0.99).as_secs_f64()
        );
    });
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
}
