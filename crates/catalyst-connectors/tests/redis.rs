//! The Redis store against real `redis-server` processes on free loopback ports: one standalone
//! server and a 3-master cluster. When `CI` is set and redis-server is missing, these tests fail.
#![cfg(feature = "redis")]

mod common;

use catalyst_connectors::store::conformance::{self, TimeControl};
use catalyst_connectors::{
    ExposeSecret, RedisStore, StoreSpec, SystemClock, TokenStore, TokenWrite,
};
use common::Setup;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether redis-server can run here; panics under CI when it cannot.
fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed, and CI is set: install it (apt-get install redis-server)"
        );
        eprintln!("SKIPPED: redis-server is not installed (set CI to make this a failure)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(port: u16, dir: &Path, cluster: bool) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", dir.to_str().expect("utf-8 dir")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = cmd.spawn().expect("start redis-server");
        let server = Self { child, port };
        server.wait_ready();
        server
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.cli(&["ping"]).contains("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Cluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let servers: Vec<Server> = (0..3)
            .map(|_| Server::start(free_port(), dir.path(), true))
            .collect();
        let nodes: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !servers
            .iter()
            .all(|s| s.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { servers, _dir: dir }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

fn standalone() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (Server::start(free_port(), dir.path(), false), dir)
}

fn open(spec: &str) -> Arc<dyn TokenStore> {
    spec.parse::<StoreSpec>()
        .expect("store spec")
        .open(Arc::new(SystemClock))
        .expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_standalone() {
    if !redis_available() {
        return;
    }
    let (server, _dir) = standalone();
    conformance::run_all(open(&server.url()), TimeControl::Real)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    conformance::run_all(open(&cluster.url()), TimeControl::Real)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_have_the_prefix_and_a_ttl_following_the_token() {
    if !redis_available() {
        return;
    }
    let (server, _dir) = standalone();
    let store = RedisStore::builder(server.url())
        .prefix("myapp:")
        .build()
        .unwrap();
    store
        .compare_and_set(TokenWrite::new(
            "ZC_CONN_crm:abcde",
            None,
            "x",
            Duration::from_secs(3000),
        ))
        .await
        .unwrap();
    let keys = server.cli(&["keys", "*"]);
    assert!(keys.contains("myapp:{ZC_CONN_crm}:abcde"), "{keys}");
    let ttl: i64 = server
        .cli(&["ttl", "myapp:{ZC_CONN_crm}:abcde"])
        .trim()
        .parse()
        .unwrap();
    assert!((2990..=3000).contains(&ttl), "{ttl}");
}

// ---------------------------------------------------------------------------------------------
// Multi-process tests (see `common::child_process_main`).

#[test]
#[ignore = "helper: the multi-process tests run it as a child process"]
fn child_process() {
    common::child_process_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_of_fifty_callers_mint_once_standalone() {
    if !redis_available() {
        return;
    }
    let (server, _dir) = standalone();
    common::stampede(&Setup::new().await, &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_of_fifty_callers_mint_once_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    common::stampede(&Setup::new().await, &cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_mint_is_taken_over_within_the_lease() {
    if !redis_available() {
        return;
    }
    let (server, _dir) = standalone();
    common::sigkill_takeover(&Setup::new().await, &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_not_an_outage() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let connection = common::hermetic_without_store()
        .store_spec(server.url().parse().unwrap())
        .clock(s.clock.clone())
        .json(s.config())
        .build()
        .unwrap();
    let crm = connection.connector("crm").unwrap();
    // Redis goes away before the first token.
    server.stop();
    let started = Instant::now();
    let first = crm
        .access_token()
        .await
        .expect("minted directly while Redis is down");
    eprintln!("first token with Redis down after {:?}", started.elapsed());
    for _ in 0..100 {
        assert_eq!(
            crm.access_token().await.unwrap().expose_secret(),
            first.expose_secret()
        );
    }
    assert_eq!(s.token_requests(), 1, "at most one mint in this process");

    // Redis returns: refreshes go back through it (the connection manager reconnects itself).
    let server = Server::start(port, dir.path(), false);
    let store = RedisStore::open(&server.url()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        s.advance(Duration::from_secs(601)); // keep clear of the mint governor's window
        if let Ok(token) = crm.force_refresh().await {
            let stored = store.get(&crm.cache_key()).await.ok().flatten();
            if stored.is_some_and(|v| v.data.contains(token.expose_secret())) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tokens never reached Redis after it returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run_costs_callers_nothing() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Some(Server::start(port, dir.path(), false));
    let s = Setup::new().await;
    let connection = common::hermetic_without_store()
        .store_spec(format!("redis://127.0.0.1:{port}").parse().unwrap())
        .clock(s.clock.clone())
        .json(s.config())
        .build()
        .unwrap();
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Callers, active all along.
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let crm = connection.connector("crm").unwrap();
            let (errors, calls, stop) = (errors.clone(), calls.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if crm.access_token().await.is_err() {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    let crm = connection.connector("crm").unwrap();
    // Simulated hours pass; Redis dies in the second and comes back in the fourth.
    for hour in 0..6 {
        match hour {
            1 => server.take().map(|mut srv| srv.stop()).unwrap_or(()),
            3 => server = Some(Server::start(port, dir.path(), false)),
            _ => {}
        }
        for _ in 0..12 {
            s.advance(Duration::from_secs(300));
            tokio::time::sleep(Duration::from_millis(30)).await;
            common::settle(&crm).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let calls = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(calls > 100, "callers were active: {calls}");
    assert_eq!(
        errors.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no caller error in {calls} calls"
    );
    // Back on Redis: the current token is there.
    let token = crm.access_token().await.unwrap();
    let stored = RedisStore::open(&format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get(&crm.cache_key())
        .await
        .unwrap();
    eprintln!(
        "{calls} calls, 0 errors, {} token requests over 6 simulated hours",
        s.token_requests()
    );
    assert!(
        stored.is_some_and(|v| v.data.contains(token.expose_secret())),
        "the refreshed token is in Redis again"
    );
}

#[test]
fn a_redis_store_can_be_built_outside_a_runtime() {
    // Connections are made on first use, inside the caller's runtime: building never panics.
    let store = RedisStore::open("redis://127.0.0.1:1").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime.block_on(store.get("ZC_CONN_x:00000")).unwrap_err();
    assert_eq!(
        err.kind,
        catalyst_connectors::StoreErrorKind::Unavailable,
        "{err}"
    );
}

/// Makes a CA and a server certificate for 127.0.0.1 with the openssl command.
fn tls_material(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-copy_extensions",
        "copy",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_works_with_a_private_ca_and_refuses_an_untrusted_server() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tls_material(dir.path());
    let port = free_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            "no",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let store = RedisStore::builder(url.as_str())
        .prefix("tls:")
        .root_ca_pem(ca.clone())
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get("ZC_CONN_tls:00000").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS server never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conformance::get_put_delete(&store, "tls").await.unwrap();
    conformance::compare_and_set(&store, "tls").await.unwrap();
    conformance::lease_exclusivity(&store, "tls").await.unwrap();
    // Without the private CA the server is not trusted: a typed store error, never a connection.
    let untrusted = RedisStore::open(&url).unwrap();
    let err = untrusted.get("ZC_CONN_tls:00000").await.unwrap_err();
    assert_eq!(
        err.kind,
        catalyst_connectors::StoreErrorKind::Unavailable,
        "{err}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Issue 16: with Redis down, processes on one host share a local tier (here a temporary SQLite
/// A builder for Redis at `url` with the host-local SQLite tier in `dir`: each `build()` is a new
/// "process" (its own connection, its circuit breaker closed).
fn tiered(s: &Setup, url: &str, dir: &Path) -> catalyst_connectors::ConnectionBuilder {
    let local: StoreSpec = format!("sqlite:{}", dir.join("local.db").display())
        .parse()
        .unwrap();
    common::hermetic_without_store()
        .store_spec(url.parse().unwrap())
        .local_store(Some(local))
        .json(s.config())
}

/// file standing in for the default store): one mint for all, not one per process; with Redis
/// hung (SIGSTOP), a caller pays the Redis timeout once, then the breaker sends it to the local
/// tier without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_or_hung_falls_back_to_the_host_local_tier() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let url = server.url();
    let connect = || {
        tiered(&s, &url, dir.path())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    server.stop();
    // Five "processes" (each its own Connection) while Redis is down.
    let mut tokens = std::collections::BTreeSet::new();
    for _ in 0..5 {
        tokens.insert(
            connect()
                .access_token()
                .await
                .unwrap()
                .expose_secret()
                .to_owned(),
        );
    }
    assert_eq!(tokens.len(), 1, "one token for all");
    assert_eq!(
        s.token_requests(),
        1,
        "one mint for the host while Redis is down"
    );

    // Redis back, then hung.
    let server = Server::start(port, dir.path(), false);
    let crm = connect();
    crm.force_refresh().await.unwrap();
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let hung = connect();
    hung.evict_memory();
    let started = Instant::now();
    let first = hung.access_token().await;
    let first_wait = started.elapsed();
    // The same process again: the breaker is open, nothing waits for Redis.
    hung.evict_memory();
    let started = Instant::now();
    let again = hung.access_token().await;
    let second_wait = started.elapsed();
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(first.is_ok(), "{first:?}");
    assert!(again.is_ok(), "{again:?}");
    assert!(
        first_wait < Duration::from_secs(8),
        "one timeout at most: {first_wait:?}"
    );
    assert!(
        second_wait < Duration::from_millis(500),
        "no second timeout: {second_wait:?}"
    );
    eprintln!("hung Redis: first call {first_wait:?}, then {second_wait:?}");
}

/// Issue 16: the mint governor counts both tiers. Mints recorded in Redis still count while it is
/// down (the local tier has them too), and mints made on the local tier during the outage still
/// count when Redis answers again — before, each tier counted alone and an outage doubled what
/// Zoho saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mint_governor_counts_across_a_redis_outage() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let url = server.url();
    let connect = || {
        tiered(&s, &url, dir.path())
            .mint_limit(4, Duration::from_secs(3600))
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    // The governor's refusal, or the same refusal recorded by an earlier process.
    let is_governor = |r: &Result<_, catalyst_connectors::Error>| matches!(r, Err(catalyst_connectors::Error::Throttled { code, .. }) if code == "mint limit" || code == "recorded");
    for _ in 0..2 {
        connect().force_refresh().await.unwrap();
    }
    assert_eq!(s.token_requests(), 2);

    server.stop();
    for _ in 0..2 {
        connect().force_refresh().await.unwrap();
    }
    assert_eq!(s.token_requests(), 4, "Redis down: two more mints");
    let refused = connect().force_refresh().await;
    assert!(is_governor(&refused), "{refused:?}");
    assert_eq!(
        s.token_requests(),
        4,
        "the two mints recorded in Redis count while it is down"
    );

    // Redis back (empty: it kept nothing across the restart).
    let _server = Server::start(port, dir.path(), false);
    let refused = connect().force_refresh().await;
    assert!(is_governor(&refused), "{refused:?}");
    assert_eq!(
        s.token_requests(),
        4,
        "the mints made during the outage count when Redis is back"
    );
}

/// Issue 16: a revoked refresh token seen while Redis answered still stops this host's other
/// processes without a request while Redis is down (the shared health is kept in both tiers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_stays_known_through_a_redis_outage() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let url = server.url();
    let connect = || {
        tiered(&s, &url, dir.path())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    s.emulator.revoke(&s.refresh_token);
    let err = connect().access_token().await.unwrap_err();
    assert!(err.needs_reauthorization(), "{err:?}");
    let seen = s.token_requests();
    server.stop();
    for _ in 0..3 {
        let err = connect().access_token().await.unwrap_err();
        assert!(err.needs_reauthorization(), "{err:?}");
    }
    assert_eq!(s.token_requests(), seen, "nobody asked Zoho again");
}

/// Issue 16: mints made while Redis is down count even when this host's tier had no mint log yet
/// (the read of a missing log there reports Redis's failure; the mint used to go unrecorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mints_count_while_redis_is_down_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::new().await;
    let url = format!("redis://127.0.0.1:{}", free_port()); // nothing listens there
    let connect = || {
        tiered(&s, &url, dir.path())
            .mint_limit(2, Duration::from_secs(3600))
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    for _ in 0..2 {
        connect().force_refresh().await.unwrap();
    }
    let refused = connect().force_refresh().await;
    assert!(
        matches!(&refused, Err(catalyst_connectors::Error::Throttled { code, .. }) if code == "mint limit"),
        "{refused:?}"
    );
    assert_eq!(s.token_requests(), 2);
}

/// Issue 16: a token kept in Redis is also copied to this host's tier, so when Redis goes down
/// the next process serves it instead of minting another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_starts_with_the_latest_token_on_this_host() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let url = server.url();
    let connect = || {
        tiered(&s, &url, dir.path())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    let first = connect().access_token().await.unwrap();
    server.stop();
    let again = connect().access_token().await.unwrap();
    assert_eq!(again.expose_secret(), first.expose_secret());
    assert_eq!(s.token_requests(), 1, "no mint for the outage");
}

/// Issue 16: a refusal recorded on this host while Redis was down still holds when Redis is back
/// (the newer of the two tiers' records is read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_recorded_during_an_outage_holds_when_redis_is_back() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let url = server.url();
    let connect = || {
        tiered(&s, &url, dir.path())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    server.stop();
    s.emulator.revoke(&s.refresh_token);
    let err = connect().access_token().await.unwrap_err();
    assert!(err.needs_reauthorization(), "{err:?}");
    assert_eq!(s.token_requests(), 1);
    let _server = Server::start(port, dir.path(), false);
    for _ in 0..3 {
        let err = connect().access_token().await.unwrap_err();
        assert!(err.needs_reauthorization(), "{err:?}");
    }
    assert_eq!(s.token_requests(), 1, "refused from this host's record");
}

/// Issue 22: a refresh token obtained while Redis is down is kept on this host, and reaches the
/// other hosts when Redis is back and a process here next uses the connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_from_an_outage_reaches_the_fleet_when_redis_returns() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (host_a, host_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&host_a).unwrap();
    std::fs::create_dir_all(&host_b).unwrap();
    let port = free_port();
    let mut server = Server::start(port, dir.path(), false);
    let s = Setup::new().await;
    let url = server.url();
    let mut config = s.config();
    config["crm"]
        .as_object_mut()
        .unwrap()
        .remove("refresh_token");
    let connect = |host: &Path| {
        let local: StoreSpec = format!("sqlite:{}", host.join("local.db").display())
            .parse()
            .unwrap();
        common::hermetic_without_store()
            .store_spec(url.parse().unwrap())
            .local_store(Some(local))
            .json(config.clone())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    server.stop();
    // Host A exchanges a grant code during the outage: kept in its local tier.
    let code = catalyst_connectors::GrantCode::new(s.emulator.add_grant_code(
        common::CLIENT_ID,
        "ZohoCRM.users.READ",
        None,
    ));
    let generated = connect(&host_a).generate_access_token(&code).await.unwrap();
    let refresh_token = generated.refresh_token.expect("offline access");
    // Redis is back (empty). Host B has nothing yet; host A's next process copies it there.
    let _server = Server::start(port, dir.path(), false);
    let err = connect(&host_b).access_token().await.unwrap_err();
    assert!(
        matches!(err, catalyst_connectors::Error::MissingRefreshToken { .. }),
        "{err:?}"
    );
    connect(&host_a).access_token().await.unwrap();
    let token = connect(&host_b).access_token().await.unwrap();
    assert_eq!(
        s.emulator
            .refresh_token_of(token.expose_secret())
            .as_deref(),
        Some(refresh_token.expose_secret()),
        "host B mints with the refresh token host A obtained during the outage"
    );
}
