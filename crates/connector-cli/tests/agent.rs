//! `connector serve` and `connector exec` with real clients (curl, Python's standard library,
//! Node's `http`) against the emulator.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod agent_support;
mod common;

use agent_support::{agent_until, curl, curl_post, output, stop};

use common::Env;

const PYTHON_CLIENT: &str = r#"
import http.client, json, socket, sys
class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("agent")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)
conn = UnixHTTPConnection(sys.argv[1])
conn.request("GET", "/v1/connectors/crm/token", headers={"X-Connector-Agent": "1"})
print(json.load(conn.getresponse())["access_token"])
"#;

const NODE_CLIENT: &str = r#"
const http = require("http");
http.get({socketPath: process.argv[process.argv.length - 1], path: "/v1/connectors/crm/token",
          headers: {"X-Connector-Agent": "1"}}, (res) => {
  let body = "";
  res.on("data", (c) => body += c);
  res.on("end", () => console.log(JSON.parse(body).access_token));
});
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_python_and_node_get_the_same_token_with_one_mint() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();

    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let token = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(v["token_type"], "Zoho-oauthtoken");
    assert!(v["expires_at"].as_u64().unwrap() > v["refresh_at"].as_u64().unwrap());

    let mut py = Command::new("python3");
    py.args(["-c", PYTHON_CLIENT]).arg(&socket);
    let (code, out, err) = output(py).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), token);

    let mut node = Command::new("node");
    node.args(["-e", NODE_CLIENT, "--"]).arg(&socket);
    let (code, out, err) = output(node).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), token);

    // The CLI asks the agent when CONNECTOR_AGENT is set: in a directory without a config, with
    // a store that cannot open, every command that reads tokens still answers (it never opens
    // the config or a store).
    let elsewhere = tempfile::tempdir().unwrap();
    let agent_cli = |args: &[&str]| {
        let mut cli = env.command(args);
        cli.current_dir(elsewhere.path())
            .env("HOME", elsewhere.path())
            .env("XDG_CONFIG_HOME", elsewhere.path())
            .env("CONNECTOR_STORE", "sqlite:/dev/null/cannot-open.db")
            .env("CONNECTOR_AGENT", &socket);
        cli
    };
    let (code, out, err) = output(agent_cli(&["token", "crm"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), token);
    let (code, out, err) = output(agent_cli(&["token", "crm", "--json"])).await;
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["access_token"], token.as_str());
    let (code, out, err) = output(agent_cli(&["token", "crm", "--header"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        format!("Authorization: Zoho-oauthtoken {token}")
    );
    for args in [
        &["status", "crm"][..],
        &["list"],
        &["exec", "-c", "crm", "--", "true"],
    ] {
        let (code, out, err) = output(agent_cli(args)).await;
        assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        assert!(out.contains("crm") || args[0] == "exec", "{args:?}: {out}");
    }
    // --no-agent opens the config and the store (and fails here: there is none).
    let (code, _, err) = output(agent_cli(&["--no-agent", "token", "crm"])).await;
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(env.requests(), 1, "one mint for every client");

    let status = stop(agent);
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket is removed on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_fifty_concurrent_clients_mint_once() {
    let env = Env::new().await;
    env.emulator.set_latency(Duration::from_millis(200));
    let agent = env.serve(&[]).await;
    let script = r#"
import http.client, json, socket, sys, threading
class C(http.client.HTTPConnection):
    def __init__(self, p):
        super().__init__("agent"); self.p = p
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); self.sock.connect(self.p)
tokens, lock = set(), threading.Lock()
def ask():
    c = C(sys.argv[1]); c.request("GET", "/v1/connectors/crm/token", headers={"X-Connector-Agent": "1"})
    r = c.getresponse(); t = json.load(r)["access_token"]
    with lock: tokens.add((r.status, t))
threads = [threading.Thread(target=ask) for _ in range(50)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(sorted(tokens)))
"#;
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new("python3")
                .args(["-c", script])
                .arg(env.socket())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut all = std::collections::BTreeSet::new();
    for out in outs {
        assert!(out.status.success());
        let pairs: Vec<(u16, String)> = serde_json::from_slice(&out.stdout).unwrap();
        all.extend(pairs);
    }
    assert_eq!(
        all.len(),
        1,
        "everyone got the same token with 200: {all:?}"
    );
    assert_eq!(env.requests(), 1, "200 clients in 4 processes, one mint");
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_browser_and_unauthorised_requests_are_refused() {
    let env = Env::new().await;
    let token_file = env.dir.path().join("run").join("tcp.token");
    let agent = env
        .serve(&[
            "--tcp",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .await;
    let socket = env.socket();
    let status = |out: String| out.rsplit_once('\n').unwrap().1.to_owned();
    let (_, out, _) = output(curl(&socket, &[], "/v1/connectors/crm/token")).await;
    assert_eq!(status(out), "403", "no agent header");
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1", "Origin: https://evil.example"],
        "/v1/connectors/crm/token",
    ))
    .await;
    assert_eq!(status(out), "403", "a browser's request");
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1", "X-Forwarded-For: 10.0.0.1"],
        "/healthz",
    ))
    .await;
    assert_eq!(status(out), "403", "through a proxy");
    assert_eq!(env.requests(), 0, "nothing minted for refused requests");
    let meta = std::fs::metadata(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_the_bearer_and_allow_lists_are_enforced() {
    let env = Env::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let token_file = env.dir.path().join("run").join("tcp.token");
    let other = env.dir.path().join("other.token");
    std::fs::write(&other, "0123456789abcdef0123456789abcdef").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let allow = format!("crm=bearer:{}", other.display());
    let agent = env
        .serve(&[
            "--tcp",
            &addr,
            "--token-file",
            token_file.to_str().unwrap(),
            "--allow",
            &allow,
        ])
        .await;
    let bearer = std::fs::read_to_string(&token_file).unwrap();
    let http = reqwest::Client::new();
    let get = |auth: String, path: &str| {
        http.get(format!("http://{addr}{path}"))
            .header("X-Connector-Agent", "1")
            .header("Authorization", auth)
            .send()
    };
    let r = get("Bearer wrong-token-0000000000".into(), "/healthz")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get(format!("Bearer {bearer}"), "/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    // The agent's own token passes the door but not crm's allow list.
    let r = get(format!("Bearer {bearer}"), "/v1/connectors/crm/token")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // On the socket, root (or whoever runs the test) is not on crm's list either.
    let (_, out, _) = output(curl(
        &env.socket(),
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    assert!(out.ends_with("403"), "{out}");
    stop(agent);

    // With our uid on the list, the socket client gets the token.
    let uid = std::fs::metadata(env.dir.path())
        .map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            m.uid()
        })
        .unwrap();
    let allow = format!("crm=uid:{uid}");
    let agent = env.serve(&["--allow", &allow]).await;
    let (_, out, _) = output(curl(
        &env.socket(),
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    assert!(out.ends_with("200"), "{out}");
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_and_removes_the_socket() {
    let env = Env::new().await;
    env.emulator.set_latency(Duration::from_millis(800));
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    let pending = tokio::task::spawn_blocking({
        let mut cmd = curl(
            &socket,
            &["X-Connector-Agent: 1"],
            "/v1/connectors/crm/token",
        );
        move || cmd.output().unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || stop(agent))
        .await
        .unwrap();
    let out = pending.await.unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.ends_with("200"),
        "the request in flight completed: {out}"
    );
    assert!(out.contains("access_token"), "{out}");
    assert!(status.success());
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_tokens_and_exit_codes_and_refuses_without_a_token() {
    let env = Env::new().await;
    let marker = env.dir.path().join("ran");
    let script = format!(
        "test -n \"$ZOHO_CRM_ACCESS_TOKEN\" && test \"$CRM\" = \"$ZOHO_CRM_ACCESS_TOKEN\" && test -n \"$ZOHO_CRM_API_DOMAIN\" && touch {} && exit 7",
        marker.display()
    );
    let (code, _, err) = output(env.command(&[
        "exec", "-c", "crm", "--env", "CRM=crm", "--", "sh", "-c", &script,
    ]))
    .await;
    assert_eq!(code, Some(7), "the command's exit code: {err}");
    assert!(marker.exists(), "the command ran with the tokens");
    std::fs::remove_file(&marker).unwrap();

    // Through a running agent too.
    let agent = env.serve(&[]).await;
    let mut cmd = env.command(&[
        "exec", "-c", "crm", "--env", "CRM=crm", "--", "sh", "-c", &script,
    ]);
    cmd.env("CONNECTOR_AGENT", env.socket());
    let (code, _, err) = output(cmd).await;
    assert_eq!(code, Some(7), "{err}");
    stop(agent);
    std::fs::remove_file(&marker).unwrap();

    // A revoked refresh token: the command is not run, and the exit code says why.
    // (A fresh token store, so nothing cached can be served.)
    env.emulator.revoke(&env.refresh_token);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.dir.path().join(format!("tokens.db{suffix}")));
    }
    let (code, _, err) =
        output(env.command(&["exec", "-c", "crm", "--", "touch", marker.to_str().unwrap()])).await;
    assert!(!marker.exists(), "not run without a token");
    assert!(matches!(code, Some(4)), "{code:?} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reports_of_one_rejected_token_replace_it_once() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    let token_of = |out: &str| {
        let (body, status) = out.rsplit_once('\n').unwrap();
        assert_eq!(status, "200", "{body}");
        serde_json::from_str::<serde_json::Value>(body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    let rejected = token_of(&out);
    let body = serde_json::json!({"access_token": rejected}).to_string();
    let reports: Vec<_> = (0..20)
        .map(|_| {
            let mut cmd = curl_post(&socket, "/v1/connectors/crm/invalidate", &body);
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
        })
        .collect();
    let mut replaced = 0;
    for r in reports {
        let out = String::from_utf8(r.await.unwrap().stdout).unwrap();
        let (body, status) = out.rsplit_once('\n').unwrap();
        assert_eq!(status, "200", "{body}");
        replaced += usize::from(body.contains("\"replaced\":true"));
    }
    assert_eq!(replaced, 1, "replaced once however many report it");
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    let fresh = token_of(&out);
    assert_ne!(fresh, rejected);
    assert_eq!(env.requests(), 2, "exactly one new mint");
    // Reporting the old token again replaces nothing.
    let (_, out, _) = output(curl_post(&socket, "/v1/connectors/crm/invalidate", &body)).await;
    assert!(out.contains("\"replaced\":false"), "{out}");
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    assert_eq!(token_of(&out), fresh);
    assert_eq!(env.requests(), 2);
    // A body that is not a report is a 400 of its own.
    let (_, out, _) = output(curl_post(&socket, "/v1/connectors/crm/invalidate", "{}")).await;
    assert!(out.ends_with("400") && out.contains("bad_report"), "{out}");
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_asked_with_min_ttl_is_409_and_a_bad_min_ttl_400() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token",
    ))
    .await;
    assert!(out.ends_with("200"), "{out}");
    assert!(env.emulator.revoke(&env.refresh_token));
    // The cached token cannot live an hour more: a refresh is needed, and it is refused.
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token?min_ttl=3600",
    ))
    .await;
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "409", "{body}");
    assert!(body.contains("reauthorization_required"), "{body}");
    let (_, out, _) = output(curl(
        &socket,
        &["X-Connector-Agent: 1"],
        "/v1/connectors/crm/token?min_ttl=ten",
    ))
    .await;
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "400", "{body}");
    assert!(
        body.contains("\"bad_min_ttl\"") && !body.contains("--min-ttl"),
        "{body}"
    );
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_browser_markers_and_a_duplicated_header_get_403() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    for extra in [
        &["X-Connector-Agent: 1", "Host: evil.example"][..],
        &["X-Connector-Agent: 1", "Referer: http://evil.example/"],
        &["X-Connector-Agent: 1", "Sec-Fetch-Mode: no-cors"],
        &["X-Connector-Agent: 1", "X-Real-IP: 10.1.2.3"],
        &["X-Connector-Agent: 1", "X-Forwarded-Host: evil.example"],
        &["X-Connector-Agent: 1", "X-Connector-Agent: 0"],
    ] {
        let (_, out, _) = output(curl(&socket, extra, "/v1/connectors/crm/token")).await;
        assert!(out.ends_with("403"), "{extra:?}: {out}");
    }
    // An absolute-form target naming another host.
    let mut absolute = curl(&socket, &["X-Connector-Agent: 1"], "/v1/connectors");
    absolute.args(["--request-target", "http://evil.example/v1/connectors"]);
    let (_, out, _) = output(absolute).await;
    assert!(out.ends_with("403"), "{out}");
    assert_eq!(env.requests(), 0);
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sent_half_a_request_does_not_hold_the_agent_after_sigterm() {
    use std::io::Write as _;
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let mut half = std::os::unix::net::UnixStream::connect(env.socket()).unwrap();
    half.write_all(b"GET /v1/connectors HTTP/1.1\r\nHost: agent\r\nX-Connector-")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || stop(agent))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the agent took {took:?} to exit"
    );
    assert!(status.success(), "{status:?}");
    drop(half);
}

/// The README's client block in `lang` whose text contains `marker`.
fn readme_block(lang: &str, marker: &str) -> String {
    let readme = include_str!("../../../README.md");
    let fence = format!("```{lang}\n");
    readme
        .split(&fence)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("no ```{lang} block with {marker:?} in the README"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_clients_run_as_pasted_and_fail_loudly() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_connector"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let clients = [
        ("sh", readme_block("sh", "--unix-socket"), "sh", "-c"),
        (
            "python",
            readme_block("python", "X-Connector-Agent"),
            "python3",
            "-c",
        ),
        ("js", readme_block("js", "socketPath"), "node", "-e"),
    ];
    let mut tokens = std::collections::BTreeSet::new();
    for (lang, block, program, flag) in &clients {
        for (name, ok) in [("crm", true), ("nope", false)] {
            let code = block.replace("/v1/connectors/crm/", &format!("/v1/connectors/{name}/"));
            let mut cmd = Command::new(program);
            cmd.args([*flag, code.as_str()])
                .env("PATH", &path)
                .env("CONNECTOR_AGENT", env.socket());
            let (status, out, err) = output(cmd).await;
            if ok {
                assert_eq!(status, Some(0), "{lang}: {out}{err}");
                let token = if *lang == "sh" {
                    serde_json::from_str::<serde_json::Value>(&out).unwrap()["access_token"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                } else {
                    out.trim().to_owned()
                };
                tokens.insert(token);
            } else {
                assert_ne!(status, Some(0), "{lang}: an error must fail: {out}{err}");
                let said = format!("{out}{err}");
                assert!(said.contains("no connector named `nope`"), "{lang}: {said}");
            }
        }
    }
    assert_eq!(
        tokens.len(),
        1,
        "every client got the agent's token: {tokens:?}"
    );
    // Without CONNECTOR_AGENT, the Python client finds the socket with `connector socket`.
    let python = readme_block("python", "X-Connector-Agent");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &python])
        .env("PATH", &path)
        .env_remove("CONNECTOR_AGENT")
        .env(
            "XDG_RUNTIME_DIR",
            env.dir.path().join("run").parent().unwrap(),
        );
    let socket_dir = env.dir.path().join("catalyst-connectors");
    std::fs::create_dir_all(&socket_dir).unwrap();
    std::os::unix::fs::symlink(env.socket(), socket_dir.join("agent.sock")).unwrap();
    let (status, out, err) = output(cmd).await;
    assert_eq!(status, Some(0), "{out}{err}");
    assert!(tokens.contains(out.trim()));
    stop(agent);
}

/// `connector serve extra…` run to its end (it must refuse to start): (exit code, stderr).
async fn serve_refused(env: &Env, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["serve"];
    args.extend_from_slice(extra);
    let mut cmd = env.command(&args);
    cmd.stdout(Stdio::null());
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("the agent must refuse, not run")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_agents_own_files_are_touched() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new().await;
    // A regular file where the socket would go survives, and the agent refuses to start.
    let file = env.dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let (code, err) = serve_refused(&env, &["--socket", file.to_str().unwrap()]).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // An allow list for a connector that is not configured is an error, not an open door.
    let (code, err) = serve_refused(&env, &["--allow", "crn=uid:0"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("crn"), "{err}");
    // A shared 1777 directory keeps its mode and sticky bit.
    let shared = env.dir.path().join("shared-tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("agent.sock");
    let mut agent = env
        .command(&["serve", "--socket", socket.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(mode, 0o1777, "the directory is not ours: never chmodded");
    // A relative --socket works (in the current directory).
    let relative = env
        .command(&["serve", "--socket", "relative.sock"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(env.dir.path().join("relative.sock"))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the agent listens on a relative socket path");
    stop(relative);
}

/// Runs `cmd` as the Unix user `user` (the tests run as root in CI).
fn as_user(user: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", program]).args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_of_other_users_in_the_socket_group_get_tokens_and_others_cannot_connect() {
    if unsafe_geteuid() != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root to create test users"
        );
        eprintln!("SKIPPED: creating Unix users needs root");
        return;
    }
    let group = "ccagent-clients";
    let inside = "ccagent-in";
    let outside = "ccagent-out";
    let run = |program: &str, args: &[&str]| {
        let _ = Command::new(program).args(args).output();
    };
    run("groupadd", &["-f", group]);
    run(
        "useradd",
        &["-M", "-N", "-G", group, "-s", "/usr/sbin/nologin", inside],
    );
    run("useradd", &["-M", "-N", "-s", "/usr/sbin/nologin", outside]);
    let env = Env::new().await;
    // The test's own temporary directory must be traversable by the other users.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = env.serve(&["--socket-group", group]).await;
    let socket = env.socket();
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let sock_mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!((dir_mode, sock_mode), (0o750, 0o660));
    let request = |user: &str| {
        as_user(
            user,
            "curl",
            &[
                "-s",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                socket.to_str().unwrap(),
                "-H",
                "X-Connector-Agent: 1",
                "http://agent/v1/connectors/crm/token",
            ],
        )
    };
    let (code, out, err) = output(request(inside)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.ends_with("200") && out.contains("access_token"),
        "{out}"
    );
    let (code, out, _) = output(request(outside)).await;
    assert_ne!(
        code,
        Some(0),
        "a user outside the group cannot connect: {out}"
    );
    assert!(!out.contains("access_token"));
    stop(agent);
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_a_revoke_made_by_another_process() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    let (status, _, _) = agent_until(&socket, Duration::ZERO, |_, _| true).await;
    assert_eq!(status, "200");
    let revoked = env.run(&["revoke", "crm"]).await;
    assert!(revoked.status.success(), "{}", common::stderr(&revoked));
    let (status, body, took) =
        agent_until(&socket, Duration::from_secs(3), |s, _| s == "409").await;
    assert_eq!(status, "409", "{body}");
    assert_eq!(body["error"], "reauthorization_required");
    assert!(
        took < Duration::from_secs(1),
        "served the revoked token for {took:?}"
    );
    stop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_an_exchange_made_by_another_process() {
    let env = Env::new().await;
    env.write_config(&[("crm", None)]);
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    let (status, body, _) = agent_until(&socket, Duration::ZERO, |_, _| true).await;
    assert_eq!(status, "409", "no refresh token yet: {body}");
    let env = &env;
    let exchange = |code: String| async move {
        let out = env.run(&["exchange", "crm", "--code", &code]).await;
        assert!(out.status.success(), "{}", common::stderr(&out));
    };
    let code = || {
        env.emulator
            .add_grant_code(common::CLIENT_ID, "ZohoCRM.users.READ", None)
    };
    let minted_with = |body: &serde_json::Value| {
        env.emulator
            .refresh_token_of(body["access_token"].as_str().unwrap_or_default())
    };
    // A first authorization: the agent serves a token of its refresh token.
    exchange(code()).await;
    let (status, body, _) = agent_until(&socket, Duration::from_secs(3), |s, _| s == "200").await;
    assert_eq!(status, "200", "{body}");
    let first = minted_with(&body).expect("a token of the first refresh token");
    // A new authorization in another process: within a second, a token of the new one.
    exchange(code()).await;
    let (_, body, took) = agent_until(&socket, Duration::from_secs(3), |s, b| {
        s == "200" && minted_with(b).is_some_and(|rt| rt != first)
    })
    .await;
    let second = minted_with(&body);
    assert!(
        second.is_some() && second.as_deref() != Some(first.as_str()),
        "still serving the old refresh token's token after {took:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    stop(agent);
}

/// `connector token` through the agent takes a short path (no full command line, no async
/// runtime); whatever it does not handle itself must come out exactly as the full command line
/// says it: errors with their exit code and hint, help, flags before the subcommand, an agent
/// that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_through_the_agent_answers_as_the_full_command_line_does() {
    let env = Env::new().await;
    let agent = env.serve(&[]).await;
    let socket = env.socket();
    let elsewhere = tempfile::tempdir().unwrap();
    let cli = |socket: &Path, args: &[&str]| {
        let mut cli = env.command(args);
        cli.current_dir(elsewhere.path())
            .env("XDG_CONFIG_HOME", elsewhere.path())
            .env_remove("CONNECTOR_CONFIG")
            .env("CONNECTOR_STORE", "sqlite:/dev/null/cannot-open.db")
            .env("CONNECTOR_AGENT", socket);
        cli
    };
    let (code, token, err) = output(cli(&socket, &["token", "crm"])).await;
    assert_eq!(code, Some(0), "{err}");
    // Flags before the subcommand, a config that does not exist (the agent needs none), a
    // lifetime the token has.
    let args = [
        "-q",
        "--config",
        "/nonexistent.json",
        "token",
        "crm",
        "--min-ttl",
        "10m",
    ];
    let (code, out, err) = output(cli(&socket, &args)).await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(0), token.as_str(), "")
    );
    // The agent's refusals: the message, the hint, the exit code.
    let (code, out, err) = output(cli(&socket, &["token", "crn"])).await;
    assert_eq!((code, out.as_str()), (Some(3), ""), "{err}");
    assert!(err.starts_with("error: no connector named `crn`"), "{err}");
    assert!(err.contains("\nhint: "), "{err}");
    // --floor holds the agent's token to the same rule as a store's.
    let (code, out, err) = output(cli(&socket, &["token", "crm", "--floor", "2h"])).await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (Some(0), token.as_str(), "")
    );
    // What the short path leaves to the full command line.
    let (code, out, _) = output(cli(&socket, &["token", "--help"])).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("Usage: connector token"), "{out}");
    let (code, _, err) = output(cli(&socket, &["token", "crm", "--jsn"])).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("unexpected argument '--jsn'"), "{err}");
    let (code, _, err) = output(cli(&socket, &["token"])).await;
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(env.requests(), 1, "one mint for all of it");
    // A lifetime no token has (a mint is tried: the agent cannot know before).
    let (code, _, err) = output(cli(&socket, &["token", "crm", "--min-ttl", "2h"])).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("hint: "), "{err}");

    assert!(stop(agent).success());
    let gone = elsewhere.path().join("gone.sock");
    drop(std::os::unix::net::UnixListener::bind(&gone).unwrap());
    let (code, out, err) = output(cli(&gone, &["token", "crm"])).await;
    assert_eq!((code, out.as_str()), (Some(6), ""), "{err}");
    assert!(err.contains("does not answer"), "{err}");
    assert!(
        err.contains("hint: start it with `connector serve`"),
        "{err}"
    );
}
