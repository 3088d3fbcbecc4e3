//! Token files kept by a running agent (`connector serve --sink`): what a PHP app, a shell script
//! or `curl -H @FILE` reads. (Readers against 1,000 rotations: the agent's unit tests.)

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

mod agent_support;
mod common;

use agent_support::{curl_post, output, stop};
use common::{Env, stderr};

async fn until_file(path: &std::path::Path, what: impl Fn(Option<&str>) -> bool) -> bool {
    for _ in 0..200 {
        if what(std::fs::read_to_string(path).ok().as_deref()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_token_files_and_removes_them_when_the_connector_is_revoked() {
    let env = Env::new().await;
    let dir = env.dir.path().join("sinks");
    std::fs::create_dir(&dir).unwrap();
    let (raw, header, json, hooks) = (
        dir.join("crm.token"),
        dir.join("crm.header"),
        dir.join("crm.json"),
        dir.join("hooks.log"),
    );
    let agent = env
        .serve(&[
            "--sink",
            &format!("crm={}", raw.display()),
            "--sink",
            &format!("crm={},format=header,mode=0640", header.display()),
            "--sink",
            &format!(
                "crm={},format=json,hook=echo \"$CONNECTOR_SINK_CONNECTOR $CONNECTOR_SINK_PATH $CONNECTOR_SINK_EXPIRES_AT $*\" >> {}",
                json.display(),
                hooks.display()
            ),
        ])
        .await;
    assert!(until_file(&hooks, |t| t.is_some()).await, "the hook ran");
    let token = std::fs::read_to_string(&raw).unwrap();
    assert!(
        token.starts_with("1000.") && !token.ends_with('\n'),
        "{token:?}"
    );
    let header_text = std::fs::read_to_string(&header).unwrap();
    assert_eq!(
        header_text,
        format!("Authorization: Zoho-oauthtoken {token}\n")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["access_token"], token.as_str());
    assert_eq!(v["connector"], "crm");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&raw), mode(&header), mode(&json)),
        (0o600, 0o640, 0o600)
    );
    // The hook got the path and the expiry, never the token.
    let line = std::fs::read_to_string(&hooks).unwrap();
    assert!(
        line.starts_with(&format!("crm {} ", json.display())),
        "{line}"
    );
    assert!(!line.contains(&token), "{line}");
    // The token is live at Zoho: the file is what to use.
    assert!(env.emulator.is_live(&token));

    // A client reports the token dead: the agent replaces it, and every file follows.
    let (_, out, _) = output(curl_post(
        &env.socket(),
        "/v1/connectors/crm/invalidate",
        &format!("{{\"access_token\": \"{token}\"}}"),
    ))
    .await;
    assert!(out.ends_with("200"), "{out}");
    assert!(
        until_file(&raw, |t| t.is_some_and(|t| t != token)).await,
        "a new token in the file"
    );
    assert!(until_file(&hooks, |t| t.is_some_and(|t| t.lines().count() == 2)).await);

    // Revoked by another process: the files go (no dead token is left to read).
    let out = env.run(&["revoke", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for file in [&raw, &header, &json] {
        assert!(
            until_file(file, |t| t.is_none()).await,
            "{} removed",
            file.display()
        );
    }
    stop(agent);
    assert_eq!(std::fs::read_to_string(&hooks).unwrap().lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_files_go_when_the_agent_stops_and_links_are_refused() {
    let env = Env::new().await;
    let dir = env.dir.path().join("sinks");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("crm.env");
    let agent = env
        .serve(&["--sink", &format!("crm={},format=env", file.display())])
        .await;
    assert!(until_file(&file, |t| t.is_some()).await);
    let env_text = std::fs::read_to_string(&file).unwrap();
    assert!(
        env_text.starts_with("ZOHO_CRM_ACCESS_TOKEN=1000."),
        "{env_text}"
    );
    assert!(env_text.contains("\nZOHO_CRM_EXPIRES_AT="), "{env_text}");
    stop(agent);
    assert!(!file.exists(), "removed at exit");

    // A link at the path is not followed (nor replaced): the agent refuses to start.
    let target = dir.join("elsewhere");
    std::fs::write(&target, "not ours").unwrap();
    std::os::unix::fs::symlink(&target, &file).unwrap();
    let out = env
        .run(&[
            "serve",
            "--socket",
            "/nonexistent/agent.sock",
            "--sink",
            &format!("crm={}", file.display()),
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not ours");
    let out = env.run(&["serve", "--sink", "billing=/tmp/x"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown connector: {}",
        stderr(&out)
    );
}

/// Packages carry man pages generated from the command's own definitions.
#[test]
fn man_pages_are_generated_for_the_command_and_each_subcommand() {
    let env_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector"))
        .arg("manpages")
        .arg(env_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = |name: &str| std::fs::read_to_string(env_dir.path().join(name)).unwrap();
    assert!(page("connector.1").contains(".TH connector 1"));
    let token = page("connector-token.1");
    assert!(token.contains(".TH connector-token 1"), "{token}");
    assert!(
        token.contains("min\\-ttl"),
        "options are documented: {token}"
    );
    assert!(page("connector-serve.1").contains("sink"));
    assert!(
        !env_dir.path().join("connector-manpages.1").exists(),
        "hidden commands have none"
    );
}

/// Token files named in the config (`$connector.sinks`) are kept too, and follow a reload: a
/// sink the new config drops is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_in_the_config_follow_a_reload() {
    let env = Env::new().await;
    let dir = env.dir.path().join("sinks");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("crm.json");
    let write = |sinks: &[String]| {
        let mut config = serde_json::json!({"crm": env.connector_json(Some(&env.refresh_token))});
        config["$connector"] = serde_json::json!({ "sinks": sinks });
        std::fs::write(env.config_path(), config.to_string()).unwrap();
    };
    write(&[format!("crm={},format=json", file.display())]);
    let agent = env.serve(&[]).await;
    assert!(until_file(&file, |t| t.is_some_and(|t| t.contains("access_token"))).await);
    write(&[]);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        until_file(&file, |t| t.is_none()).await,
        "removed after the reload"
    );
    stop(agent);
    // A bad spec in the config stops the agent at start, like a bad --sink.
    write(&["crm=relative".to_owned()]);
    let out = env.run(&["serve", "--socket", "/nonexistent/a.sock"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The agent replaces and removes only its own token files: a file of another program at a sink's
/// path is refused at start and left as it was; the files an agent killed with -9 left behind are
/// taken back by the next one (in every format); a file put in a sink's place while the agent runs
/// is neither replaced nor removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_agents_own_token_files_are_replaced_or_removed() {
    use std::os::unix::fs::MetadataExt as _;
    let env = Env::new().await;
    let dir = env.dir.path().join("sinks");
    std::fs::create_dir(&dir).unwrap();
    let config = dir.join("app.conf");
    std::fs::write(&config, "listen 80\n").unwrap();
    let sink = format!("crm={}", config.display());
    let mut serve = env
        .command(&["serve", "--sink", &sink])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut code = None;
    for _ in 0..400 {
        code = serve.try_wait().unwrap();
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if code.is_none() {
        let _ = serve.kill();
    }
    let out = serve.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        code.and_then(|c| c.code()),
        Some(2),
        "refused at start: {err}"
    );
    assert!(err.contains("is not a token file"), "{err}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "listen 80\n");

    let files: Vec<_> = ["raw", "header", "env", "json"]
        .iter()
        .map(|f| (dir.join(format!("crm.{f}")), *f))
        .collect();
    let sinks: Vec<String> = files
        .iter()
        .map(|(p, f)| format!("crm={},format={f}", p.display()))
        .collect();
    let args: Vec<&str> = sinks.iter().flat_map(|s| ["--sink", s.as_str()]).collect();
    let mut agent = env.serve(&args).await;
    for (path, _) in &files {
        assert!(until_file(path, |t| t.is_some()).await, "{path:?}");
    }
    let before: Vec<u64> = files
        .iter()
        .map(|(p, _)| std::fs::metadata(p).unwrap().ino())
        .collect();
    agent.kill().unwrap(); // -9: the files stay
    agent.wait().unwrap();
    let agent = env.serve(&args).await;
    for ((path, _), old) in files.iter().zip(&before) {
        let taken_back = until_file(path, |_| std::fs::metadata(path).unwrap().ino() != *old);
        assert!(taken_back.await, "{path:?} rewritten by the new agent");
    }
    // Another program's file in the raw sink's place.
    let raw = &files[0].0;
    let theirs = dir.join("theirs");
    std::fs::write(&theirs, "not a token\n").unwrap();
    std::fs::rename(&theirs, raw).unwrap();
    assert!(stop(agent).success());
    assert_eq!(std::fs::read_to_string(raw).unwrap(), "not a token\n");
    for (path, _) in &files[1..] {
        assert!(!path.exists(), "{path:?} removed at exit");
    }
}
