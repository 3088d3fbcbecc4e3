//! Two hosts' agents sharing one Redis store (each with its own local tier): one mint for the
//! fleet, the same token in both hosts' token files, and a revoke made on a third host reaching
//! both agents — files removed, 409 served — with no notice sent to them.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_agents_on_one_redis_share_a_token_and_both_follow_a_revoke() {
    let env = Env::new().await;
    let Some(redis) = Redis::start(env.dir.path()) else {
        return;
    };
    let (a, b) = (Host::new(&env, "a"), Host::new(&env, "b"));
    let agent_a = a.serve(&env, &redis).await;
    let agent_b = b.serve(&env, &redis).await;
    let token = std::fs::read_to_string(&a.file).unwrap();
    assert_eq!(std::fs::read_to_string(&b.file).unwrap(), token);
    assert_eq!(env.requests(), 1, "one mint for the fleet");

    // A third host revokes; the agents hear nothing from it but what is in Redis.
    let third = env.dir.path().join("c");
    let out = env
        .run_with(
            &[
                ("XDG_DATA_HOME", third.to_str().unwrap()),
                ("CONNECTOR_STORE", &redis.url()),
                ("CONNECTOR_AGENT", "/nonexistent/agent.sock"),
            ],
            &["revoke", "crm"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let revoked = Instant::now();
    while a.file.exists() || b.file.exists() {
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "token files still there 5 s after the revoke"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let followed = revoked.elapsed();
    assert_eq!(a.status().await, "409");
    assert_eq!(b.status().await, "409");
    assert!(stop(agent_a).success());
    assert!(stop(agent_b).success());
    eprintln!("both token files gone {followed:?} after the revoke");
}
