//! Two hosts' agents sharing one Redis store (each with its own local tier): one mint for the
//! fleet, the same token in both hosts' token files, and a revoke and a new authorization made on
//! a third host reaching both agents — files removed, 409 served; then the new token in both
//! files — with no notice sent to them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent_support;
mod common;

use agent_support::{curl, output, stop};
use common::{Env, stderr};

/// A `redis-server` on a free loopback port, stopped on drop. Under CI a missing server fails.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI is set: install it (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (set CI to make this a failure)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One host: its own data directory (the local tier), socket and token file.
struct Host {
    data: PathBuf,
    socket: PathBuf,
    file: PathBuf,
}

impl Host {
    fn new(env: &Env, name: &str) -> Self {
        let root = env.dir.path().join(name);
        std::fs::create_dir_all(root.join("run")).unwrap();
        Self {
            data: root.join("data"),
            socket: root.join("run").join("agent.sock"),
            file: root.join("crm.token"),
        }
    }

    async fn serve(&self, env: &Env, redis: &Redis) -> Child {
        let sink = format!("crm={}", self.file.display());
        let mut args = vec!["serve", "--socket", self.socket.to_str().unwrap()];
        args.extend(["--sink", &sink]);
        let mut child = env
            .command(&args)
            .env("XDG_DATA_HOME", &self.data)
            .env("CONNECTOR_STORE", redis.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..400 {
            if self.file.exists() {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent wrote no token file");
    }

    async fn status(&self) -> String {
        let (_, out, _) = output(curl(
            &self.socket,
            &["X-Connector-Agent: 1"],
            "/v1/connectors/crm/token",
        ))
        .await;
        out.rsplit_once('\n').unwrap().1.to_owned()
    }
}

/// `connector args…` on a third host (its own local tier), on the fleet's Redis, with no agent
/// to notify.
async fn on_third_host(env: &Env, redis: &Redis, args: &[&str]) {
    let third = env.dir.path().join("c");
    let out = env
        .run_with(
            &[
                ("XDG_DATA_HOME", third.to_str().unwrap()),
                ("CONNECTOR_STORE", &redis.url()),
                ("CONNECTOR_AGENT", "/nonexistent/agent.sock"),
            ],
            args,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
}

/// Waits until both hosts' token files satisfy `done` (at most 5 s); returns how long it took.
async fn until_files(
    a: &Host,
    b: &Host,
    what: &str,
    done: impl Fn(Option<String>, Option<String>) -> bool,
) -> Duration {
    let started = Instant::now();
    let read = |f: &Path| std::fs::read_to_string(f).ok();
    while !done(read(&a.file), read(&b.file)) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_agents_on_one_redis_share_a_token_and_follow_a_revoke_and_a_new_authorization() {
    let env = Env::new().await;
    let Some(redis) = Redis::start(env.dir.path()) else {
        return;
    };
    // The fleet keeps the refresh token in Redis, not in the config.
    env.write_config(&[("crm", None)]);
    let code = || {
        env.emulator
            .add_grant_code(common::CLIENT_ID, "ZohoCRM.users.READ", None)
    };
    on_third_host(&env, &redis, &["exchange", "crm", "--code", &code()]).await;
    let (a, b) = (Host::new(&env, "a"), Host::new(&env, "b"));
    let agent_a = a.serve(&env, &redis).await;
    let agent_b = b.serve(&env, &redis).await;
    let token = std::fs::read_to_string(&a.file).unwrap();
    assert_eq!(std::fs::read_to_string(&b.file).unwrap(), token);
    assert_eq!(
        env.requests(),
        1,
        "the exchange's token serves the fleet: no mint"
    );

    // The third host revokes; the agents hear nothing of it but what is in Redis.
    on_third_host(&env, &redis, &["revoke", "crm"]).await;
    let gone = until_files(&a, &b, "both token files removed", |x, y| {
        x.is_none() && y.is_none()
    });
    let gone = gone.await;
    assert_eq!(a.status().await, "409");
    assert_eq!(b.status().await, "409");

    // The third host connects again: both hosts serve the new authorization's token.
    on_third_host(&env, &redis, &["exchange", "crm", "--code", &code()]).await;
    let back = until_files(&a, &b, "the new token in both files", |x, y| {
        x.is_some() && x == y
    });
    let back = back.await;
    assert_ne!(std::fs::read_to_string(&a.file).unwrap(), token);
    assert_eq!(a.status().await, "200");
    assert_eq!(b.status().await, "200");
    assert!(stop(agent_a).success());
    assert!(stop(agent_b).success());
    eprintln!("token files gone {gone:?} after the revoke, back {back:?} after the exchange");
}
