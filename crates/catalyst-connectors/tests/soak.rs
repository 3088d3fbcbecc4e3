//! Chaos soak (issue 16): several processes × several connectors on one SQLite store against the
//! emulator with short-lived tokens, while faults are injected at random — SIGKILL of processes
//! (mid-mint or not), token endpoint 500s, hangs, connection resets, Access Denied, a process started
//! with another encryption key (it must fail with a key error, never mint or overwrite), and once per
//! phase a refresh token revoked at Zoho. At the end it checks, from the emulator's own counters and
//! what every caller saw:
//! - Zoho's limit was never hit by us (the emulator's real throttle never answered);
//! - no token was served past its expiry, and none for other credentials;
//! - no caller erred while a valid token existed (one served to any process, still valid) and the
//!   endpoint was up (no fault served within the backoff, hang or throttle window before), nor
//!   while its own process held a valid token;
//! - after the revocation, Zoho was asked with the revoked refresh token at most once per
//!   negative-cache period (plus one), however many processes there were;
//! - no call waited longer than the lease plus one (possibly hung) mint.
//!
//! Short mode (the test suite): `SOAK_SECONDS` (default 15). Long:
//! `SOAK_SECONDS=600 cargo test --release -p catalyst-connectors --all-features --test soak`.
//! A second phase runs the same on Redis (with the host-local SQLite tier behind it), adding
//! Redis killed and restarted, and Redis hung for 2 s (SIGSTOP). `SOAK_ONLY=sqlite|redis` runs
//! one phase.

use catalyst_connectors::{Connection, EncryptionKey, ExposeSecret, SqliteStore};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zoho_emulator::Fault;

const CLIENT_ID: &str = "1000.SOAK";
const CLIENT_SECRET: &str = "soak-secret";
const PROCESSES: usize = 4;
const CONNECTORS: usize = 3;
/// Tokens live 12 s (refresh at 9 s); Zoho's window is scaled to 60 s with its limit of 10.
const LIFETIME: Duration = Duration::from_secs(12);
const WINDOW: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(5);
const HANG: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(4);
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One child process: connectors `c0…` on the store, callers in a loop, one line per call:
/// `OK <name> <token> <expires_at_ms> <elapsed_ms>` or `ERR <name> <code> <held_valid> <elapsed_ms>`.
fn child() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    // SOAK_LOG=debug: each child logs to its stderr, kept in the soak's directory.
    if let Ok(filter) = std::env::var("SOAK_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config: serde_json::Value = serde_json::from_str(&var("SOAK_CONFIG")).unwrap();
        let mut builder = Connection::builder().ignore_env().json(config);
        builder = match std::env::var("SOAK_REDIS") {
            // Redis, with the host-local SQLite tier behind it.
            Ok(url) => builder
                .store_spec(url.parse().unwrap())
                .local_store(Some(format!("sqlite:{}", var("SOAK_DB")).parse().unwrap())),
            Err(_) => builder
                .local_store(None)
                .store(SqliteStore::open(var("SOAK_DB")).unwrap()),
        };
        if let Ok(key) = EncryptionKey::parse(&var("SOAK_KEY")) {
            builder = builder.encryption_key(key);
        }
        let connection = builder
            .lease_ttl(LEASE)
            .wait_deadline(LEASE)
            .mint_limit(10, WINDOW)
            .backoff(Duration::from_millis(250), BACKOFF_CAP)
            .negative_cache_ttl(NEGATIVE_TTL)
            .request_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for i in 0..CONNECTORS {
            for _ in 0..3 {
                let crm = connection.connector(&format!("c{i}")).unwrap();
                let out = out.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let started = Instant::now();
                        let result = crm.access_token().await;
                        let elapsed = started.elapsed().as_millis();
                        let line = match result {
                            Ok(t) => {
                                let exp = t
                                    .expires_at()
                                    .duration_since(UNIX_EPOCH)
                                    .map(|d| d.as_millis())
                                    .unwrap_or(0);
                                format!(
                                    "OK c{i} {} {exp} {elapsed} {}",
                                    t.expose_secret(),
                                    now_ms()
                                )
                            }
                            Err(e) => {
                                let held = crm
                                    .status()
                                    .await
                                    .expires_at
                                    .is_some_and(|t| t > SystemTime::now());
                                format!("ERR c{i} {} {held} {elapsed} {}", e.code(), now_ms())
                            }
                        };
                        {
                            use std::io::Write as _;
                            let mut o = out.lock().unwrap();
                            let _ = writeln!(o, "{line}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[derive(Default)]
struct Seen {
    calls: u64,
    errors: BTreeMap<String, u64>,
    /// Errors the faults call for: a key error in a process with another key, any error of the
    /// revoked connector after its revocation.
    expected_errors: u64,
    /// Other errors: `(at, connector, code, elapsed)`, judged at the end.
    other_errors: Vec<(i64, String, String, String)>,
    errors_while_holding: u64,
    expired: u64,
    foreign: u64,
    worst_wait_ms: u128,
    /// Per connector, `(served at, expires at)` of every token served.
    served: BTreeMap<String, Vec<(i64, i64)>>,
    /// The connector whose refresh token was revoked, and when (epoch ms).
    revoked: Option<(String, i64)>,
}

/// Records when (epoch ms) the token endpoint served a fault and until when it counts as down
/// after it: the backoff (500, reset), the hang plus the backoff, or Zoho's window (Access
/// Denied). Stops when `down` is its last owner.
fn watch_endpoint(emulator: Arc<zoho_emulator::Emulator>, down: Arc<Mutex<Vec<(i64, i64)>>>) {
    std::thread::spawn(move || {
        let mut before = BTreeMap::new();
        loop {
            let stats = emulator.stats();
            let by = stats
                .by_grant
                .get("refresh_token")
                .cloned()
                .unwrap_or_default();
            for (kind, grace) in [
                ("http_500", BACKOFF_CAP),
                ("reset", BACKOFF_CAP),
                ("hang", HANG + BACKOFF_CAP),
                ("Access Denied", WINDOW),
            ] {
                let n = by.get(kind).copied().unwrap_or(0);
                if n > before.get(kind).copied().unwrap_or(0) {
                    // Seen up to a poll late: the fault may have been served 100 ms earlier.
                    let at = now_ms();
                    let until = at + (grace + Duration::from_secs(1)).as_millis() as i64;
                    down.lock().unwrap().push((at - 100, until));
                }
                before.insert(kind, n);
            }
            if Arc::strong_count(&down) == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

fn main() {
    if std::env::var_os("SOAK_CHILD").is_some() {
        child();
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    // `SOAK_ONLY=redis` (or `sqlite`) runs one phase.
    let only = std::env::var("SOAK_ONLY").unwrap_or_default();
    if only != "redis" {
        phase(seconds, None);
    }
    if only == "sqlite" {
        return;
    }
    let redis_found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if redis_found {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let redis = Redis::start(port, dir.path());
        phase(seconds, Some(redis));
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed, and CI is set: install it"
        );
        eprintln!("SKIPPED the Redis phase: redis-server is not installed");
    }
}

/// A redis-server on loopback that the soak kills, restarts and stops.
struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            // Data survives the restarts the soak inflicts, as a production Redis's would.
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        *self = Redis::start(self.port, &self.dir.clone());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One soak on SQLite (`redis` None) or on Redis with the local tier.
fn phase(seconds: u64, mut redis: Option<Redis>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = Arc::new(runtime.block_on(zoho_emulator::start()).unwrap());
    emulator.add_client(CLIENT_ID, CLIENT_SECRET);
    emulator.set_token_lifetime(LIFETIME);
    let mut settings = emulator.settings();
    settings.mint_window_secs = WINDOW.as_secs();
    emulator.set_settings(settings);
    let mut config = serde_json::Map::new();
    let mut refresh_tokens = BTreeMap::new();
    for i in 0..CONNECTORS {
        let rt = format!("1000.soak-rt-{i}");
        emulator.add_refresh_token_labeled(CLIENT_ID, &rt, "ZohoCRM.users.READ", &format!("c{i}"));
        config.insert(
            format!("c{i}"),
            serde_json::json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "auth_url": emulator.token_url(), "refresh_url": emulator.token_url(),
                "refresh_token": rt}),
        );
        refresh_tokens.insert(format!("c{i}"), rt);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("soak.db");
    let config = serde_json::Value::Object(config).to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let redis_url = redis.as_ref().map(Redis::url);
    // Every process encrypts with key A; the key-change fault starts one with key B.
    let keys = [
        EncryptionKey::generate().to_base64(),
        EncryptionKey::generate().to_base64(),
    ];
    let down = Arc::new(Mutex::new(Vec::new()));
    watch_endpoint(Arc::clone(&emulator), Arc::clone(&down));
    let logs = std::sync::atomic::AtomicUsize::new(0);
    let spawn = |seen: Arc<Mutex<Seen>>, key: usize| -> Child {
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(url) = &redis_url {
            command.env("SOAK_REDIS", url);
        }
        let mut child = command
            .env("SOAK_CHILD", "1")
            .env("SOAK_KEY", &keys[key])
            .env("SOAK_DB", &db)
            .env("SOAK_CONFIG", &config)
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("SOAK_LOG") {
                Some(_) => {
                    let n = logs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Stdio::from(
                        std::fs::File::create(dir.path().join(format!("child-{n}.log"))).unwrap(),
                    )
                }
                None => Stdio::null(),
            })
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let emulator_rt = refresh_tokens.clone();
        let emu = Arc::clone(&emulator);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parts: Vec<&str> = line.split(' ').collect();
                let mut s = seen.lock().unwrap();
                s.calls += 1;
                match parts.as_slice() {
                    ["OK", name, token, exp, elapsed, at] => {
                        let (exp, at): (i64, i64) =
                            (exp.parse().unwrap_or(0), at.parse().unwrap_or(0));
                        if exp <= at {
                            s.expired += 1;
                        }
                        if emu
                            .refresh_token_of(token)
                            .is_some_and(|rt| Some(&rt) != emulator_rt.get(*name))
                        {
                            s.foreign += 1;
                        }
                        s.served
                            .entry((*name).to_owned())
                            .or_default()
                            .push((at, exp));
                        s.worst_wait_ms = s.worst_wait_ms.max(elapsed.parse().unwrap_or(0));
                    }
                    ["ERR", name, code, held, elapsed, at] => {
                        let at: i64 = at.parse().unwrap_or(0);
                        *s.errors.entry((*code).to_owned()).or_default() += 1;
                        let revoked = s
                            .revoked
                            .as_ref()
                            .is_some_and(|(n, since)| n == name && at >= *since);
                        if *code == "encryption_key" || revoked {
                            s.expected_errors += 1;
                        } else {
                            if *held == "true" {
                                s.errors_while_holding += 1;
                            }
                            s.other_errors.push((
                                at,
                                (*name).to_owned(),
                                (*code).to_owned(),
                                (*elapsed).to_owned(),
                            ));
                        }
                        s.worst_wait_ms = s.worst_wait_ms.max(elapsed.parse().unwrap_or(0));
                    }
                    _ => {}
                }
            }
        });
        child
    };
    let mut children: Vec<Child> = (0..PROCESSES).map(|_| spawn(seen.clone(), 0)).collect();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut rng = rand::rng();
    use rand::Rng as _;
    // The last connector's refresh token is revoked once, between 40 % and 70 % of the phase.
    let revoke_at = started + Duration::from_secs(seconds).mul_f64(rng.random_range(0.4..0.7));
    let revoked_name = format!("c{}", CONNECTORS - 1);
    let mut revoked = None;
    let invalid_code = |e: &zoho_emulator::Emulator| {
        e.stats()
            .by_grant
            .get("refresh_token")
            .and_then(|b| b.get("invalid_code").copied())
            .unwrap_or(0)
    };
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2000)));
        if revoked.is_none() && Instant::now() >= revoke_at {
            seen.lock().unwrap().revoked = Some((revoked_name.clone(), now_ms()));
            emulator.revoke(&refresh_tokens[&revoked_name]);
            revoked = Some((Instant::now(), invalid_code(&emulator)));
            *faults.entry("refresh token revoked").or_default() += 1;
            continue;
        }
        // Odds per tick (0.5–2 s): SIGKILL 40 %, 500s 15 %, Redis 10 %, hang, reset and another
        // key 5 % each, Access Denied 1 in 80 (each locks a connector out for Zoho's window).
        match rng.random_range(0..80) {
            0..=31 => {
                let i = rng.random_range(0..children.len());
                let _ = children[i].kill();
                let _ = children[i].wait();
                children[i] = spawn(seen.clone(), 0);
                *faults.entry("SIGKILL of a process").or_default() += 1;
            }
            56..=63 if redis.is_some() => {
                let r = redis.as_mut().unwrap();
                if rng.random_bool(0.5) {
                    r.restart();
                    *faults.entry("Redis killed and restarted").or_default() += 1;
                } else {
                    r.signal("-STOP");
                    std::thread::sleep(Duration::from_secs(2));
                    r.signal("-CONT");
                    *faults.entry("Redis hung 2 s (SIGSTOP)").or_default() += 1;
                }
            }
            52..=55 => {
                let i = rng.random_range(0..children.len());
                let _ = children[i].kill();
                let _ = children[i].wait();
                children[i] = spawn(seen.clone(), 1);
                *faults
                    .entry("a process with another encryption key")
                    .or_default() += 1;
            }
            32..=43 => {
                emulator.inject_faults(Fault::Http500, rng.random_range(1..4));
                *faults.entry("token endpoint 500s").or_default() += 1;
            }
            44..=47 => {
                emulator.inject_faults(
                    Fault::Hang {
                        millis: HANG.as_millis() as u64,
                    },
                    1,
                );
                *faults.entry("token endpoint hang").or_default() += 1;
            }
            48..=51 => {
                emulator.inject_faults(Fault::Reset, rng.random_range(1..3));
                *faults.entry("connection reset").or_default() += 1;
            }
            64 => {
                emulator.inject_faults(
                    Fault::ErrorWith200 {
                        error: "Access Denied".into(),
                        description: None,
                    },
                    1,
                );
                *faults.entry("Access Denied").or_default() += 1;
            }
            _ => {}
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    if std::env::var_os("SOAK_LOG").is_some() {
        let kept = dir.keep();
        println!("child logs in {}", kept.display());
    }
    std::thread::sleep(Duration::from_millis(200));
    let stats = emulator.stats();
    let s = seen.lock().unwrap();
    let mints: u64 = stats.mints_by_label.values().sum();
    let on = if redis_url.is_some() {
        "Redis + local SQLite tier"
    } else {
        "SQLite"
    };
    // Requests with the revoked refresh token after the revocation, and the bound: one per
    // negative-cache period, plus one.
    let (errors_with_valid_token, examples) = judge(&s, &down.lock().unwrap());
    let (revoked_requests, revoked_bound) = match revoked {
        Some((at, before)) => (
            invalid_code(&emulator) - before,
            2 + at.elapsed().as_secs() / NEGATIVE_TTL.as_secs(),
        ),
        None => (0, 0),
    };
    println!(
        "chaos soak on {on}: {seconds} s, {PROCESSES} processes x {CONNECTORS} connectors x 3 callers"
    );
    println!("  faults injected     {faults:?}");
    println!("  calls               {}", s.calls);
    println!("  errors              {:?}", s.errors);
    println!(
        "  of which expected   {} (key errors, the revoked connector)",
        s.expected_errors
    );
    println!("  errors, valid token and endpoint up  {errors_with_valid_token} {examples:?}");
    println!("  errors with a token {}", s.errors_while_holding);
    println!("  mints               {mints} ({:?})", stats.mints_by_label);
    println!("  Zoho throttled us   {}", stats.throttled);
    println!("  revoked token asked {revoked_requests} (bound {revoked_bound})");
    println!("  expired / foreign   {} / {}", s.expired, s.foreign);
    println!("  worst wait          {} ms", s.worst_wait_ms);
    assert!(s.calls > 0, "callers ran");
    assert_eq!(
        stats.throttled, 0,
        "our governor kept every refresh token under Zoho's limit"
    );
    assert_eq!(s.expired, 0, "no token served past its expiry");
    assert_eq!(s.foreign, 0, "no token served for other credentials");
    assert_eq!(
        s.errors_while_holding, 0,
        "no caller erred while its process held a valid token"
    );
    assert_eq!(
        errors_with_valid_token, 0,
        "no caller erred while a valid token existed and the endpoint was up: {examples:?}"
    );
    assert!(
        revoked_requests <= revoked_bound,
        "the revoked refresh token was sent {revoked_requests} times (bound {revoked_bound})"
    );
    let bound = (LEASE + HANG + Duration::from_secs(5)).as_millis();
    assert!(
        s.worst_wait_ms <= bound,
        "worst wait {} ms > {bound} ms",
        s.worst_wait_ms
    );
}

/// The errors that came while a token served to some process before them was valid for at least
/// another second and no fault the endpoint served excuses them; with up to five examples.
fn judge(s: &Seen, down: &[(i64, i64)]) -> (u64, Vec<String>) {
    // Per connector: served times in order, with the latest expiry served up to each.
    let latest: BTreeMap<&str, Vec<(i64, i64)>> = s
        .served
        .iter()
        .map(|(name, served)| {
            let mut served = served.clone();
            served.sort_unstable();
            let mut max = i64::MIN;
            for entry in &mut served {
                max = max.max(entry.1);
                entry.1 = max;
            }
            (name.as_str(), served)
        })
        .collect();
    let mut count = 0;
    let mut examples = Vec::new();
    for (at, name, code, elapsed) in &s.other_errors {
        let valid = latest.get(name.as_str()).is_some_and(|served| {
            let i = served.partition_point(|(t, _)| t <= at);
            i > 0 && served[i - 1].1 > at + 1000
        });
        let excused = down.iter().any(|(from, until)| from <= at && at <= until);
        if valid && !excused {
            count += 1;
            if examples.len() < 5 {
                examples.push(format!("{name} {code} after {elapsed} ms"));
            }
        }
    }
    (count, examples)
}
