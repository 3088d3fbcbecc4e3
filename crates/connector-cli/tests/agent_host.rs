//! The agent as a host's long-lived service: reloading its configuration on SIGHUP, serving
//! while many clients hold connections open, cutting clients that never finish a request, and
//! its access log.

use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent_support;
mod common;

use agent_support::{curl, output, stop};
use common::Env;

/// Starts the agent with its stderr in a file of the test's directory; returns the child and
/// the log's path.
async fn serve_logged(env: &Env, extra: &[&str]) -> (Child, std::path::PathBuf) {
    serve_limited(env, extra, None).await
}

/// The same, with the agent's soft limit of open files set to `soft_files` (as a distribution's
/// default of 1024, or less, would), if given.
async fn serve_limited(
    env: &Env,
    extra: &[&str],
    soft_files: Option<u64>,
) -> (Child, std::path::PathBuf) {
    use std::os::unix::process::CommandExt as _;
    let socket = env.socket();
    let log = env.dir.path().join("agent.log");
    let mut args = vec!["serve", "--socket", socket.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut command = env.command(&args);
    if let Some(soft) = soft_files {
        // SAFETY: between fork and exec only async-signal-safe calls (getrlimit, setrlimit).
        unsafe {
            command.pre_exec(move || {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = soft.min(limit.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            return (child, log);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "the agent did not start: {}",
        std::fs::read_to_string(&log).unwrap()
    );
}

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The status and body of `GET path`.
async fn get(env: &Env, path: &str) -> (String, serde_json::Value) {
    let (_, out, _) = output(curl(&env.socket(), &["X-Connector-Agent: 1"], path)).await;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (
        status.to_owned(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

/// Asks `path` until it answers `want` or `within` passes.
async fn until_status(env: &Env, path: &str, want: &str, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let (status, _) = get(env, path).await;
        if status == want || started.elapsed() > within {
            return (status, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_an_added_connector_and_a_broken_config_keeps_the_old_one() {
    let env = Env::new().await;
    let (agent, log) = serve_logged(&env, &[]).await;
    let rt = env.refresh_token.clone();
    assert_eq!(get(&env, "/v1/connectors/books/token").await.0, "404");

    env.write_config(&[("crm", Some(&rt)), ("books", Some(&rt))]);
    hangup(&agent);
    let (status, took) = until_status(
        &env,
        "/v1/connectors/books/token",
        "200",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        status, "200",
        "the added connector is not served after {took:?}"
    );

    // A config that does not parse: the agent stays up and serves the previous one.
    std::fs::write(env.config_path(), "{ not json").unwrap();
    hangup(&agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&env, "/v1/connectors/books/token").await.0, "200");
    assert_eq!(get(&env, "/v1/connectors/crm/token").await.0, "200");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("configuration not reloaded"),
        "the log does not say why: {logged}"
    );

    // Removing a connector is a reload too.
    env.write_config(&[("crm", Some(&rt))]);
    hangup(&agent);
    let (status, _) = until_status(
        &env,
        "/v1/connectors/books/token",
        "404",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status, "404");
    assert!(stop(agent).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_500_idle_connections_a_new_client_is_served_within_a_second() {
    let env = Env::new().await;
    // Started with a soft limit of 256 open files: the connections, not the descriptors, bound.
    let (agent, _) = serve_limited(&env, &[], Some(256)).await;
    let socket = env.socket();
    // 500 clients that connect and send nothing, or half a request.
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /v1/connectors HTTP/1.1\r\nHost: agent\r\n")
                .unwrap();
        }
        idle.push(s);
    }
    let started = Instant::now();
    let (status, body) = get(&env, "/v1/connectors/crm/token").await;
    let took = started.elapsed();
    assert_eq!(status, "200", "{body}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    drop(idle);
    assert!(stop(agent).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_is_cut() {
    let env = Env::new().await;
    let (agent, _) = serve_logged(&env, &[]).await;
    let mut half = std::os::unix::net::UnixStream::connect(env.socket()).unwrap();
    half.write_all(b"GET /v1/connectors HTTP/1.1\r\nHost: agent\r\nX-Connector-")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        half.read_to_end(&mut buf).map(|_| buf)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    // Cut: the connection ends (hyper may answer 408 first) well before the client's 15 s.
    let answer = read.expect("the agent closed the connection");
    assert!(
        answer.is_empty() || String::from_utf8_lossy(&answer).contains("408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(took < Duration::from_secs(10), "cut after {took:?}");
    assert!(stop(agent).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_peer_and_never_a_token() {
    let env = Env::new().await;
    let (agent, log) = serve_logged(&env, &["--access-log"]).await;
    let (status, body) = get(&env, "/v1/connectors/crm/token").await;
    assert_eq!(status, "200");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(stop(agent).success());
    let logged = std::fs::read_to_string(&log).unwrap();
    // SAFETY: geteuid/getegid take no arguments and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let line = format!("access uid={uid} gid={gid} GET /v1/connectors/crm/token 200");
    assert!(logged.contains(&line), "no `{line}` in: {logged}");
    assert!(!logged.contains(&token), "the token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping() {
    let env = Env::new().await;
    let notify = env.dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = env.socket();
    let mut agent = env
        .command(&["serve", "--socket", socket.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    // Ready means the socket answers.
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
    hangup(&agent);
    let reloading = next();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(next().contains("READY=1"));
    Command::new("kill")
        .arg(agent.id().to_string())
        .status()
        .unwrap();
    assert!(next().contains("STOPPING=1"));
    assert!(agent.wait().unwrap().success());
}
