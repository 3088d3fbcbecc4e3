//! The `connector` binary against the emulator: output and exit codes.

use assert_cmd::Command;

use zoho_emulator::Fault;

mod common;

use common::{CLIENT_ID, CLIENT_SECRET, Env, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_only_the_token() {
    let env = Env::new().await;
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out);
    assert!(
        token.starts_with("1000.") && token.ends_with('\n') && token.lines().count() == 1,
        "{token:?}"
    );
    assert_eq!(env.emulator.stats().token_requests, 1);
    // A second run reads the token from the SQLite store: no new token request.
    let again = env.run(&["token", "crm"]).await;
    assert_eq!(stdout(&again), token);
    assert_eq!(
        env.emulator.stats().token_requests,
        1,
        "the second run reused the stored token"
    );
    // --config and CONNECTOR_CONFIG work from elsewhere.
    let out = env
        .run(&[
            "--config",
            env.config_path().to_str().unwrap(),
            "token",
            "crm",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_failures_apart() {
    let env = Env::new().await;

    let out = env.run(&["token", "nope"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "unknown connector: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no connector named `nope`"),
        "{}",
        stderr(&out)
    );

    env.emulator.inject_faults(
        Fault::ErrorWith200 {
            error: "Access Denied".into(),
            description: None,
        },
        1,
    );
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(5), "throttled: {}", stderr(&out));
    // The throttle is now recorded in the store and answers every process without a request
    // until Zoho's window passes: start the next scenario from a fresh store.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.dir.path().join(format!("tokens.db{suffix}")));
    }

    // A caller with no token tries 3 times at once; all 3 fail here.
    env.emulator.inject_faults(Fault::Http500, 3);
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(6), "transient: {}", stderr(&out));

    env.emulator.revoke(&env.refresh_token);
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(4), "reauth: {}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one line and a hint: {err}");
    assert!(lines[0].contains("re-authorize connector `crm`"), "{err}");
    assert_eq!(
        lines[1],
        "hint: run `connector authorize crm --scope …` (server-based client) or `connector exchange crm --code …` (Self Client)"
    );
    assert!(
        !err.contains('\x1b'),
        "no colour when stderr is not a terminal"
    );
    assert!(stdout(&out).is_empty());

    std::fs::write(env.config_path(), r#"{"crm": {"client_id": "x"}}"#).unwrap();
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(3), "config: {}", stderr(&out));
    assert!(
        stderr(&out).contains("field `client_secret`: is missing"),
        "{}",
        stderr(&out)
    );

    let out = env.run(&["--store", "postgres://x", "token", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad --store is a usage error: {}",
        stderr(&out)
    );

    std::fs::remove_file(env.config_path()).unwrap();
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(3), "no config: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_one_request_for_a_thousand_callers() {
    let env = Env::new().await;
    let out = env.run(&["demo", "--latency-ms", "100"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("token requests made    1\n"), "{text}");
    assert!(
        text.contains("callers served         1000 (1 distinct token)"),
        "{text}"
    );
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::cargo_bin("connector")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("4  re-authorization needed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encryption_key_in_the_environment_encrypts_the_store() {
    let env = Env::new().await;
    let key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    let run = |key: Option<&str>| {
        let mut cmd = Command::cargo_bin("connector").unwrap();
        cmd.current_dir(env.dir.path())
            .env_remove("CONNECTOR_CONFIG")
            .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
            .env(
                "CONNECTOR_STORE",
                format!("sqlite:{}", env.dir.path().join("enc.db").display()),
            )
            .args(["token", "crm"]);
        match key {
            Some(k) => cmd.env("CONNECTOR_ENCRYPTION_KEY", k),
            None => cmd.env_remove("CONNECTOR_ENCRYPTION_KEY"),
        };
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = run(Some(key)).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    let mut on_disk = Vec::new();
    for suffix in ["", "-wal"] {
        on_disk.extend(
            std::fs::read(env.dir.path().join(format!("enc.db{suffix}"))).unwrap_or_default(),
        );
    }
    assert!(
        !on_disk.windows(token.len()).any(|w| w == token.as_bytes()),
        "token stored in plain text"
    );
    // Same key: reused. Bad key: a config error, exit 3.
    assert_eq!(stdout(&run(Some(key)).await.unwrap()).trim(), token);
    assert_eq!(env.emulator.stats().token_requests, 1);
    let out = run(Some("short")).await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CONNECTOR_ENCRYPTION_KEY"),
        "{}",
        stderr(&out)
    );
}

/// Writes a config for connector `crm` without a refresh token (it will come from authorize or
/// exchange), with an optional redirect_url.
fn config_without_refresh_token(env: &Env, redirect: Option<&str>) {
    let mut crm = serde_json::json!({
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "auth_url": env.emulator.token_url(), "refresh_url": env.emulator.token_url(),
    });
    if let Some(r) = redirect {
        crm["redirect_url"] = r.into();
    }
    std::fs::write(
        env.config_path(),
        serde_json::json!({"crm": crm}).to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_json_and_header_forms() {
    let env = Env::new().await;
    let out = env.run(&["token", "crm", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["access_token"].as_str().unwrap().starts_with("1000."));
    assert_eq!(v["api_domain"], env.emulator.url());
    assert!(v["expires_at"].as_u64().unwrap() > v["refresh_at"].as_u64().unwrap());
    let out = env.run(&["token", "crm", "--header"]).await;
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "Authorization: Zoho-oauthtoken {}",
            v["access_token"].as_str().unwrap()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_list_refresh_status_and_revoke() {
    let env = Env::new().await;
    config_without_refresh_token(&env, None);
    let out = env.run(&["list"]).await;
    assert!(stdout(&out).contains("crm   1000.CLI"), "{}", stdout(&out));
    assert!(
        stdout(&out).lines().nth(1).unwrap().ends_with("none"),
        "{}",
        stdout(&out)
    );
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "no refresh token yet: {}",
        stderr(&out)
    );

    // Self Client: a code pasted from the console.
    let code = env
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    let out = env.run(&["exchange", "crm", "--code", &code]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.run(&["exchange", "crm", "--code", &code]).await;
    assert_eq!(out.status.code(), Some(4), "a used code: {}", stderr(&out));
    let out = env.run(&["list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["refresh_token"], "store");

    let out = env.run(&["status"]).await;
    let text = stdout(&out);
    assert!(text.starts_with("NAME  STATE  SOURCE  EXPIRES"), "{text}");
    assert!(text.contains("crm   fresh  store   in 59m"), "{text}");
    let out = env.run(&["refresh", "crm", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.run(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["state"], "fresh");
    assert_eq!(
        v[0]["mints_in_window"], 2,
        "the code exchange and the refresh are both counted, as Zoho counts them"
    );
    let stats = env.emulator.stats();
    assert_eq!(stats.by_grant["authorization_code"]["ok"], 1);
    assert_eq!(
        stats.by_grant["refresh_token"]["ok"], 1,
        "refresh used the stored refresh token"
    );

    let out = env.run(&["revoke", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.emulator.stats().revocations, 1);
    let out = env.run(&["list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v[0]["refresh_token"].is_null(), "forgotten locally: {v}");
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = env.run(&["revoke", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "nothing left to revoke: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_reports_every_problem() {
    let env = Env::new().await;
    let out = env.run(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok, 1 connector(s): crm"),
        "{}",
        stdout(&out)
    );
    std::fs::write(
        env.config_path(),
        r#"{"crm": {"client_id": "x", "auth_url": "http://example.com/t"}, "bad name": {}}"#,
    )
    .unwrap();
    let out = env.run(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    for expected in [
        "connector `crm`, field `client_secret`: is missing",
        "connector `crm`, field `auth_url`: plain http is allowed only for loopback hosts",
        "connector `bad name`: connector name contains ' '",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    assert!(stderr(&out).contains("problem(s) in"), "{}", stderr(&out));
}

#[test]
fn completions_are_generated() {
    let out = Command::cargo_bin("connector")
        .unwrap()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("COMPLETE=") && stdout(&out).contains("complete "),
        "bash registration calls the binary back: {}",
        stdout(&out)
    );
    let out = Command::cargo_bin("connector")
        .unwrap()
        .args(["completions", "nushell"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Starts `connector authorize` and returns the child and the consent URL it printed.
fn start_authorize(env: &Env, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("connector"));
    cmd.current_dir(env.dir.path())
        .env_remove("CONNECTOR_CONFIG")
        .env_remove("CONNECTOR_ENCRYPTION_KEY")
        .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
        .env(
            "CONNECTOR_STORE",
            format!("sqlite:{}", env.dir.path().join("tokens.db").display()),
        )
        .args([
            "authorize",
            "crm",
            "--scope",
            "ZohoCRM.users.READ",
            "--no-browser",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_over_http_stores_a_working_refresh_token() {
    let env = Env::new().await;
    config_without_refresh_token(&env, None);
    let (child, consent) = start_authorize(&env, &["--port", "0", "--timeout", "60"]);
    assert!(
        consent.starts_with(&format!("{}/oauth/v2/auth?", env.emulator.url())),
        "{consent}"
    );
    for part in [
        "response_type=code",
        "access_type=offline",
        "client_id=1000.CLI",
        "state=",
    ] {
        assert!(consent.contains(part), "{consent} lacks {part}");
    }
    // What the browser does: load the consent page, press Accept, follow the redirect.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(&consent)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"accept\""), "{page}");
    let url = url::Url::parse(&consent).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let redirect = http
        .post(format!("{}/oauth/v2/auth/approve", env.emulator.url()))
        .form(&[
            ("client_id", q["client_id"].as_str()),
            ("redirect_uri", q["redirect_uri"].as_str()),
            ("scope", q["scope"].as_str()),
            ("state", "forged-state"),
            ("decision", "accept"),
        ])
        .send()
        .await
        .unwrap();
    let forged = redirect.headers()["location"].to_str().unwrap().to_owned();
    let answer = http.get(&forged).send().await.unwrap();
    assert_eq!(
        answer.status(),
        400,
        "a redirect with another state is refused"
    );
    let redirect = http
        .post(format!("{}/oauth/v2/auth/approve", env.emulator.url()))
        .form(&[
            ("client_id", q["client_id"].as_str()),
            ("redirect_uri", q["redirect_uri"].as_str()),
            ("scope", q["scope"].as_str()),
            ("state", q["state"].as_str()),
            ("decision", "accept"),
        ])
        .send()
        .await
        .unwrap();
    let callback = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.contains("accounts-server="), "{callback}");
    let done = http
        .get(&callback)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(done.contains("You can close this tab"), "{done}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The stored refresh token works: a forced refresh mints with it.
    let out = env.run(&["refresh", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stats = env.emulator.stats();
    assert_eq!(stats.by_grant["authorization_code"]["ok"], 1);
    assert_eq!(stats.by_grant["refresh_token"]["ok"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_denied_and_timed_out() {
    let env = Env::new().await;
    config_without_refresh_token(&env, None);
    let (child, consent) = start_authorize(&env, &["--port", "0", "--timeout", "60"]);
    let url = url::Url::parse(&consent).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = http
        .post(format!("{}/oauth/v2/auth/approve", env.emulator.url()))
        .form(&[
            ("redirect_uri", q["redirect_uri"].as_str()),
            ("state", q["state"].as_str()),
            ("decision", "deny"),
        ])
        .send()
        .await
        .unwrap();
    let callback = redirect.headers()["location"].to_str().unwrap().to_owned();
    http.get(&callback).send().await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("access_denied"), "{}", stderr(&out));

    let (child, _) = start_authorize(&env, &["--port", "0", "--timeout", "1"]);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    // An unfinished consent is not a network problem: the connector still needs authorizing.
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no redirect within 1s"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_authorize_takes_the_pasted_redirect_url_and_checks_its_state() {
    use std::io::Write as _;
    let env = Env::new().await;
    config_without_refresh_token(&env, None);
    // The browser runs on another machine: stdin is where the user pastes.
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("connector"));
    cmd.current_dir(env.dir.path())
        .env_remove("CONNECTOR_CONFIG")
        .env_remove("CONNECTOR_ENCRYPTION_KEY")
        .env_remove("CONNECTOR_ENCRYPTION_KEY_FILE")
        .env(
            "CONNECTOR_STORE",
            format!("sqlite:{}", env.dir.path().join("tokens.db").display()),
        )
        .args([
            "authorize",
            "crm",
            "--scope",
            "ZohoCRM.users.READ",
            "--no-browser",
            "--port",
            "0",
            "--timeout",
            "60",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut consent = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut consent,
    )
    .unwrap();
    let url = url::Url::parse(consent.trim()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    let redirect_uri = q["redirect_uri"].clone();
    // The browser accepted; what it was sent to (it could not load it, on this other host):
    let code =
        env.emulator
            .add_grant_code(common::CLIENT_ID, "ZohoCRM.users.READ", Some(&redirect_uri));
    let mut stdin = child.stdin.take().unwrap();
    // Another authorization's URL first (its state differs): refused, the prompt goes on.
    writeln!(stdin, "{redirect_uri}?code={code}&state=not-this-one").unwrap();
    writeln!(stdin, "{redirect_uri}?code={code}&state={}", q["state"]).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("its state differs"), "{err}");
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
}

/// `connector token` is parsed on its own (not through the whole command line): the global flags
/// keep their meaning wherever they stand — `-q` before or after the subcommand, `--config` and
/// `--store` before it, `--no-agent` past a `CONNECTOR_AGENT` that names no agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_keeps_every_global_flag() {
    let env = Env::new().await;
    // A config others can read draws a warning, which -q hides.
    std::fs::set_permissions(
        env.config_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let warned = env.run(&["token", "crm"]).await;
    assert_eq!(warned.status.code(), Some(0), "{}", stderr(&warned));
    assert!(
        stderr(&warned).contains("readable by other users"),
        "{}",
        stderr(&warned)
    );
    let token = stdout(&warned);
    for args in [&["-q", "token", "crm"][..], &["token", "crm", "--quiet"]] {
        let out = env.run(args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
        assert_eq!(stdout(&out), token, "{args:?}");
    }
    // --config and --store before the subcommand, from a directory with neither.
    let elsewhere = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", env.dir.path().join("tokens.db").display());
    let config = env.config_path();
    let out = env
        .command(&[
            "-q",
            "--config",
            config.to_str().unwrap(),
            "--store",
            &store,
            "token",
            "crm",
        ])
        .current_dir(elsewhere.path())
        .env("CONNECTOR_STORE", "sqlite:/dev/null/unusable.db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), token, "the stored token, from --store");
    // --no-agent: the stores, not the agent CONNECTOR_AGENT names (none is running there).
    let absent = env.dir.path().join("no-agent.sock");
    let absent = absent.to_str().unwrap();
    let asked = env
        .run_with(&[("CONNECTOR_AGENT", absent)], &["token", "crm"])
        .await;
    assert_eq!(asked.status.code(), Some(6), "{}", stderr(&asked));
    let out = env
        .run_with(
            &[("CONNECTOR_AGENT", absent)],
            &["-q", "--no-agent", "token", "crm"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), token);
    assert_eq!(env.requests(), 1, "one mint, then the stored token");
    // A CONNECTOR_STORE that does not parse is a usage error that does not repeat the value (a
    // `catalyst://` one may hold a project key).
    let out = env
        .run_with(
            &[("CONNECTOR_STORE", "catalyst://?key=PROJECT-KEY-123")],
            &["token", "crm"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("CONNECTOR_STORE"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("PROJECT-KEY-123"),
        "{}",
        stderr(&out)
    );
}
