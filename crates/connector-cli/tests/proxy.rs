//! The authorizing proxy (`connector serve --proxy`): clients with no token logic — curl,
//! Python's urllib, Node's fetch — reach the connector's API through it; a wave of 401s after
//! Zoho revoked the token costs one mint; other hosts are refused; uploads stream through.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

mod agent_support;
mod common;

use agent_support::{output, stop};
use common::Env;

struct Proxied {
    agent: Child,
    url: String,
    bearer: String,
}

/// Starts the agent with the proxy on a free loopback port; reads its URL from stdout.
fn serve_proxy(env: &Env, extra: &[&str]) -> Proxied {
    let socket = env.socket();
    let mut args = vec![
        "serve",
        "--socket",
        socket.to_str().unwrap(),
        "--proxy",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut agent = env
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    let _socket = lines.next().unwrap().unwrap();
    let url = lines.next().unwrap().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let bearer = std::fs::read_to_string(socket.parent().unwrap().join("agent.token")).unwrap();
    Proxied {
        agent,
        url,
        bearer: bearer.trim().to_owned(),
    }
}

fn curl(p: &Proxied, args: &[&str], path: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(["-H", "X-Connector-Agent: 1"])
        .args(["-H", &format!("Authorization: Bearer {}", p.bearer)])
        .args(args)
        .arg(format!("{}{path}", p.url));
    cmd
}

/// (status, body) of a curl run.
async fn answer(cmd: Command) -> (String, String) {
    let (_, out, err) = output(cmd).await;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", "000"));
    assert!(err.is_empty(), "{err}");
    (status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_python_and_node_reach_the_api_and_a_401_wave_costs_one_mint() {
    let env = Env::new().await;
    let p = serve_proxy(&env, &[]);
    let (status, body) = answer(curl(&p, &[], "/crm/crm/v8/users")).await;
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("Patricia Boyle"), "{body}");
    assert_eq!(env.emulator.stats().token_requests, 1);

    // Python's urllib, then Node's fetch: the same request, no token logic.
    let python = format!(
        "import urllib.request as u\nr = u.urlopen(u.Request('{}/crm/crm/v8/users', headers={{'X-Connector-Agent': '1', 'Authorization': 'Bearer {}'}}))\nprint(r.status, r.read().decode())",
        p.url, p.bearer
    );
    let (code, out, err) = output({
        let mut c = Command::new("python3");
        c.args(["-c", &python]);
        c
    })
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("200 ") && out.contains("Ravi Kumar"),
        "{out}"
    );

    // Every live token revoked at Zoho: 50 concurrent fetches all succeed, with one new mint.
    assert!(env.emulator.revoke_access_tokens() >= 1);
    let node = format!(
        "const h = {{'X-Connector-Agent': '1', 'Authorization': 'Bearer {}'}};
         Promise.all(Array.from({{length: 50}}, () => fetch('{}/crm/crm/v8/users', {{headers: h}})
           .then(async r => {{ const j = await r.json(); return [r.status, j.users ? j.users.length : JSON.stringify(j)]; }})))
         .then(rs => console.log(JSON.stringify(rs)));",
        p.bearer, p.url
    );
    let (code, out, err) = output({
        let mut c = Command::new("node");
        c.args(["-e", &node]);
        c
    })
    .await;
    assert_eq!(code, Some(0), "{err}");
    let results: Vec<(u16, serde_json::Value)> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(results.len(), 50);
    assert!(
        results.iter().all(|r| *r == (200, serde_json::json!(2))),
        "{results:?}"
    );
    assert_eq!(
        env.emulator.stats().token_requests,
        2,
        "one mint for the whole wave"
    );
    stop(p.agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_through_and_other_hosts_are_refused() {
    let env = Env::new().await;
    let mut p = serve_proxy(&env, &["--access-log"]);
    let file = env.dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'z'; 3 * 1024 * 1024 + 7]).unwrap();
    // Chunked from stdin (no length known in advance): streamed, not buffered.
    let mut cmd = curl(
        &p,
        &[
            "-X",
            "POST",
            "-T",
            "-",
            "-H",
            "Content-Type: application/octet-stream",
        ],
        "/crm/crm/v8/files",
    );
    cmd.stdin(std::fs::File::open(&file).unwrap());
    let (status, body) = answer(cmd).await;
    assert_eq!(status, "200", "{body}");
    assert!(
        body.contains(&format!("\"size\":{}", 3 * 1024 * 1024 + 7)),
        "{body}"
    );

    // A replayable upload (with a length, under 1 MiB) after the token was revoked: replaced and
    // sent again. A streamed one is not replayed: its 401 comes back, and the next one works.
    let small = env.dir.path().join("small.bin");
    std::fs::write(&small, vec![b'a'; 1000]).unwrap();
    assert!(env.emulator.revoke_access_tokens() >= 1);
    let data = format!("@{}", small.display());
    let (status, body) = answer(curl(&p, &["--data-binary", &data], "/crm/crm/v8/files")).await;
    assert_eq!(status, "200", "{body}");
    assert!(env.emulator.revoke_access_tokens() >= 1);
    let mut cmd = curl(&p, &["-X", "POST", "-T", "-"], "/crm/crm/v8/files");
    cmd.stdin(std::fs::File::open(&small).unwrap());
    let (status, body) = answer(cmd).await;
    assert_eq!(status, "401", "a stream is not replayed: {body}");
    let mut cmd = curl(&p, &["-X", "POST", "-T", "-"], "/crm/crm/v8/files");
    cmd.stdin(std::fs::File::open(&small).unwrap());
    assert_eq!(answer(cmd).await.0, "200", "the token was replaced");

    // Another host, as a forward proxy would be asked: refused (Host must name the proxy).
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", &p.url])
        .args(["-H", "X-Connector-Agent: 1"])
        .args(["-H", &format!("Authorization: Bearer {}", p.bearer)])
        .arg("http://example.com/crm/crm/v8/users");
    assert_eq!(output(cmd).await.1, "403");
    // A path cannot change the host: `//host/…` stays on the API domain.
    let (status, _) = answer(curl(
        &p,
        &["--path-as-is"],
        "/crm//example.com/crm/v8/users",
    ))
    .await;
    assert_eq!(status, "404", "the emulator (the API domain) answered");
    // Without the agent's header or bearer: refused; an unknown connector: 404.
    let (_, out, _) = output({
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}/crm/crm/v8/users", p.url),
        ]);
        c
    })
    .await;
    assert_eq!(out, "403");
    assert_eq!(
        answer(curl(&p, &[], "/billing/crm/v8/users")).await.0,
        "404"
    );

    // The log names requests, never a token.
    let tokens = env.emulator.access_tokens();
    let mut stderr = p.agent.stderr.take().unwrap();
    stop(p.agent);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("/crm/crm/v8/files"), "{log}");
    assert!(!tokens.iter().any(|t| log.contains(t.as_str())), "{log}");
    assert!(!log.contains(&p.bearer), "{log}");
}
