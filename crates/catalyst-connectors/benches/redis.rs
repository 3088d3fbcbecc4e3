//! A token read from Redis when memory is cold, against a bare `GET` round trip to the same
//! redis-server in the same run. Starts its own redis-server on a free loopback port.

use catalyst_connectors::{Connection, ConnectorConfig, RedisStore};
use criterion::Criterion;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let Ok(mut server) = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server is not installed: nothing to measure");
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("redis://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let emulator = runtime.block_on(zoho_emulator::start()).expect("emulator");
    emulator.add_client("1000.BENCH", "bench-secret");
    let refresh_token = emulator.add_refresh_token("1000.BENCH", "ZohoCRM.users.READ");
    let crm = Connection::builder()
        .ignore_env()
        .store(RedisStore::open(&url).expect("store"))
        .connector(
            ConnectorConfig::builder("crm")
                .client_id("1000.BENCH")
                .client_secret("bench-secret")
                .token_url(emulator.token_url())
                .refresh_token(refresh_token)
                .build()
                .expect("config"),
        )
        .build()
        .expect("connection")
        .connector("crm")
        .expect("crm");
    runtime.block_on(crm.access_token()).expect("first token");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut con = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("connection");
    runtime
        .block_on(
            redis::cmd("SET")
                .arg("bench:plain")
                .arg("x".repeat(300))
                .query_async::<()>(&mut con),
        )
        .expect("set");

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("redis/read_cold_memory", |b| {
        b.to_async(&runtime).iter(|| {
            crm.evict_memory();
            async { black_box(crm.access_token().await.expect("token")) }
        })
    });
    c.bench_function("redis/bare_get_round_trip", |b| {
        b.to_async(&runtime).iter(|| {
            let mut con = con.clone();
            async move {
                black_box(
                    redis::cmd("GET")
                        .arg("bench:plain")
                        .query_async::<Option<String>>(&mut con)
                        .await
                        .expect("get"),
                )
            }
        })
    });
    c.final_summary();
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "no mint while measuring"
    );
    let _ = server.kill();
    let _ = server.wait();
}
