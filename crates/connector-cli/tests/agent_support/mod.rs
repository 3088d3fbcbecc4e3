//! What the agent tests share: starting `connector serve` on a socket of the test's own, and
//! asking it with curl.
#![allow(dead_code)]

use crate::common::Env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

impl Env {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("agent.sock")
    }

    /// Starts `connector serve --socket … extra…` and waits until the socket answers.
    pub async fn serve(&self, extra: &[&str]) -> Child {
        let socket = self.socket();
        let mut args = vec!["serve", "--socket", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent did not start");
    }
}

/// Runs a program off the async runtime; returns (exit code, stdout, stderr).
pub async fn output(mut cmd: Command) -> (Option<i32>, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn curl(socket: &Path, headers: &[&str], path: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
    ])
    .arg(socket);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://agent{path}"));
    cmd
}

pub fn stop(mut child: Child) -> std::process::ExitStatus {
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap()
}

/// `curl -X POST` with a JSON body to the agent.
pub fn curl_post(socket: &Path, path: &str, body: &str) -> Command {
    let mut cmd = curl(
        socket,
        &["X-Connector-Agent: 1", "Content-Type: application/json"],
        path,
    );
    cmd.args(["-X", "POST", "--data", body]);
    cmd
}

/// Asks the agent for crm's token until `done(status, body)` holds or `within` passes; returns
/// the last answer and how long it took.
pub async fn agent_until(
    socket: &Path,
    within: Duration,
    done: impl Fn(&str, &serde_json::Value) -> bool,
) -> (String, serde_json::Value, Duration) {
    let started = std::time::Instant::now();
    loop {
        let (_, out, _) = output(curl(
            socket,
            &["X-Connector-Agent: 1"],
            "/v1/connectors/crm/token",
        ))
        .await;
        let (body, status) = out.rsplit_once('\n').unwrap();
        let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        if done(status, &body) || started.elapsed() > within {
            return (status.to_owned(), body, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
