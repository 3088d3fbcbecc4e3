//! The emulator over HTTP: grants, Zoho's limits, faults, the sample API and the admin routes.

use serde_json::{Value, json};
use std::time::Duration;
use zoho_emulator::{Fault, Stats};

async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn refresh(e: &zoho_emulator::Emulator, rt: &str) -> (u16, Value) {
    post_form(
        &e.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "c"),
            ("client_secret", "s"),
            ("refresh_token", rt),
        ],
    )
    .await
}

async fn call_api(e: &zoho_emulator::Emulator, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/crm/v8/users", e.url()))
        .header("Authorization", format!("Zoho-oauthtoken {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_eleventh_mint_in_ten_minutes_is_throttled_with_http_200() {
    let e = zoho_emulator::start().await.unwrap();
    e.add_client("c", "s");
    let rt = e.add_refresh_token("c", "ZohoCRM.users.READ");
    for _ in 0..10 {
        let (status, body) = refresh(&e, &rt).await;
        assert_eq!(status, 200);
        assert!(body["access_token"].is_string(), "{body}");
        assert_eq!(body["api_domain"], e.url());
    }
    let (status, body) = refresh(&e, &rt).await;
    assert_eq!(status, 200);
    assert_eq!(body["error"], "Access Denied");
    assert_eq!(
        body["error_description"],
        "You have made too many requests continuously. Please try again after some time."
    );
    assert_eq!(e.stats().throttled, 1);
    e.advance(Duration::from_secs(600));
    assert_eq!(
        refresh(&e, &rt).await.1["expires_in"],
        3600,
        "the window slid"
    );
}

#[tokio::test]
async fn the_sixteenth_live_token_revokes_the_oldest() {
    let e = zoho_emulator::start().await.unwrap();
    e.add_client("c", "s");
    let rt = e.add_refresh_token("c", "ZohoCRM.users.READ");
    let mut settings = e.settings();
    settings.mint_limit = 0;
    e.set_settings(settings);
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(
            refresh(&e, &rt).await.1["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(call_api(&e, &tokens[0]).await, 401, "oldest revoked");
    assert_eq!(call_api(&e, &tokens[1]).await, 200);
    assert_eq!(call_api(&e, &tokens[15]).await, 200);
    let stats = e.stats();
    assert_eq!((stats.live_tokens, stats.evicted_by_cap), (15, 1));
}

#[tokio::test]
async fn api_rejects_unknown_expired_and_revoked_tokens() {
    let e = zoho_emulator::start().await.unwrap();
    e.add_client("c", "s");
    let rt = e.add_refresh_token("c", "ZohoCRM.users.READ");
    let t = refresh(&e, &rt).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(call_api(&e, &t).await, 200);
    assert_eq!(call_api(&e, "1000.unknown").await, 401);
    e.advance(Duration::from_secs(3600));
    assert_eq!(call_api(&e, &t).await, 401, "expired");
    let t2 = refresh(&e, &rt).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = post_form(
        &format!("{}/oauth/v2/token/revoke?token={rt}", e.url()),
        &[],
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("success")));
    assert_eq!(
        call_api(&e, &t2).await,
        401,
        "revoking the refresh token kills its access tokens"
    );
    assert_eq!(refresh(&e, &rt).await.1["error"], "invalid_code");
    let body: Value = reqwest::get(format!("{}/crm/v8/users", e.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["code"], "INVALID_TOKEN");
}

#[tokio::test]
async fn client_errors_and_faults() {
    let e = zoho_emulator::start().await.unwrap();
    e.add_client("c", "s");
    let rt = e.add_refresh_token("c", "ZohoCRM.users.READ");
    let (_, body) = post_form(
        &e.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "c"),
            ("client_secret", "bad"),
            ("refresh_token", &rt),
        ],
    )
    .await;
    assert_eq!(body["error"], "invalid_client_secret");
    let (_, body) = post_form(
        &e.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "x"),
            ("client_secret", "s"),
            ("refresh_token", &rt),
        ],
    )
    .await;
    assert_eq!(body["error"], "invalid_client");

    e.inject_faults(Fault::Http500, 1);
    assert_eq!(refresh(&e, &rt).await.0, 500);
    e.inject_faults(Fault::LegacyExpiry, 1);
    let body = refresh(&e, &rt).await.1;
    assert_eq!(
        (body["expires_in_sec"].as_u64(), body["expires_in"].as_u64()),
        (Some(3600), Some(3_600_000))
    );
    e.set_fault(Some(Fault::ErrorWith200 {
        error: "invalid_code".into(),
        description: None,
    }));
    assert_eq!(refresh(&e, &rt).await.1["error"], "invalid_code");
    assert_eq!(refresh(&e, &rt).await.1["error"], "invalid_code");
    e.set_fault(None);
    assert!(refresh(&e, &rt).await.1["access_token"].is_string());
    let stats = e.stats();
    assert_eq!(stats.faults_injected, 4);
    assert_eq!(stats.by_grant["refresh_token"]["ok"], 2);
    assert_eq!(stats.by_grant["refresh_token"]["invalid_code"], 2);
}

#[tokio::test]
async fn code_grant_checks_redirect_uri_and_is_single_use() {
    let e = zoho_emulator::start().await.unwrap();
    e.add_client("c", "s");
    let code = e.add_grant_code("c", "scope", Some("http://127.0.0.1:1/cb"));
    let form = |code: &str, redirect: &str| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("client_id", "c".into()),
            ("client_secret", "s".into()),
            ("code", code.into()),
            ("redirect_uri", redirect.into()),
        ]
    };
    let send = |f: Vec<(&'static str, String)>| {
        let url = e.token_url();
        async move {
            reqwest::Client::new()
                .post(url)
                .form(&f)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        send(form(&code, "http://evil/cb")).await["error"],
        "invalid_redirect_uri"
    );
    let code = e.add_grant_code("c", "scope", Some("http://127.0.0.1:1/cb"));
    let body = send(form(&code, "http://127.0.0.1:1/cb")).await;
    assert!(
        body["refresh_token"].as_str().unwrap().starts_with("1000."),
        "{body}"
    );
    assert_eq!(
        send(form(&code, "http://127.0.0.1:1/cb")).await["error"],
        "invalid_code"
    );
    let late = e.add_grant_code("c", "scope", None);
    e.advance(Duration::from_secs(121));
    assert_eq!(
        send(form(&late, "")).await["error"],
        "invalid_code",
        "codes expire after 2 minutes"
    );
}

#[tokio::test]
async fn admin_routes_register_over_http() {
    let e = zoho_emulator::start().await.unwrap();
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/__emulator/{path}", e.url());
    http.post(admin("clients"))
        .json(&json!({"client_id": "c", "client_secret": "s"}))
        .send()
        .await
        .unwrap();
    let rt: Value = http
        .post(admin("refresh_tokens"))
        .json(&json!({"client_id": "c", "label": "alice"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rt = rt["refresh_token"].as_str().unwrap().to_owned();
    http.post(admin("settings")).json(&json!({"token_lifetime_secs": 60, "latency_ms": 0, "mint_limit": 10, "mint_window_secs": 600, "live_token_cap": 15, "fault": null})).send().await.unwrap();
    assert_eq!(refresh(&e, &rt).await.1["expires_in"], 60);
    http.post(admin("advance"))
        .json(&json!({"seconds": 61}))
        .send()
        .await
        .unwrap();
    let stats: Stats = http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.mints_by_label["alice"], 1);
    assert_eq!(stats.live_tokens, 0, "the minute-long token expired");
}

/// Starts the binary with `--state FILE`; returns it and its URL.
fn start_binary(state: &std::path::Path) -> (std::process::Child, String) {
    start_binary_with(&["--state", state.to_str().unwrap()])
}

/// Starts the binary with `args`; returns it and its URL.
fn start_binary_with(args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zoho-emulator"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

#[tokio::test]
async fn state_file_keeps_clients_and_refresh_tokens_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emulator.json");
    let http = reqwest::Client::new();
    let (mut first, url) = start_binary(&state);
    http.post(format!("{url}/__emulator/clients"))
        .json(&serde_json::json!({"client_id": "1000.KEEP", "client_secret": "s"}))
        .send()
        .await
        .unwrap();
    let rt: serde_json::Value = http
        .post(format!("{url}/__emulator/refresh_tokens"))
        .json(&serde_json::json!({"client_id": "1000.KEEP", "scope": "ZohoCRM.users.READ"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rt = rt["refresh_token"].as_str().unwrap().to_owned();
    // Written within a second of the change (wait up to 10 s on a loaded machine).
    for _ in 0..100 {
        if std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&rt)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // SIGTERM by pid (kill(1)), then reap.
    std::process::Command::new("kill")
        .arg(first.id().to_string())
        .status()
        .unwrap();
    first.wait().unwrap();
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("1000.KEEP"), "{saved}");

    let (mut second, url) = start_binary(&state);
    let answer: serde_json::Value = http
        .post(format!("{url}/oauth/v2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "1000.KEEP"),
            ("client_secret", "s"),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["access_token"].is_string(), "{answer}");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test]
async fn catalyst_cache_requires_catalysts_headers() {
    let zoho = zoho_emulator::start().await.unwrap();
    zoho.add_client("1000.C", "s");
    let rt = zoho.add_refresh_token("1000.C", "ZohoCatalyst.cache.READ");
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(zoho.token_url())
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "1000.C"),
            ("client_secret", "s"),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!(
        "Zoho-oauthtoken {}",
        token["access_token"].as_str().unwrap()
    );
    let url = format!("{}/baas/v1/project/1/cache?cacheKey=k", zoho.url());
    let without_project = http
        .get(&url)
        .header("Authorization", &auth)
        .header("Environment", "Development")
        .send()
        .await
        .unwrap();
    assert_eq!(without_project.status(), 400);
    let without_env = http
        .get(&url)
        .header("Authorization", &auth)
        .header("PROJECT_ID", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(without_env.status(), 400);
    let complete = http
        .get(&url)
        .header("Authorization", &auth)
        .header("PROJECT_ID", "1")
        .header("Environment", "Development")
        .send()
        .await
        .unwrap();
    assert_eq!(
        complete.status(),
        200,
        "a miss is 200 with cache_value null"
    );
}

#[tokio::test]
async fn the_binary_answers_404_for_catalyst_projects_it_was_not_given() {
    let (mut child, url) = start_binary_with(&[
        "--catalyst-project",
        "4000",
        "--catalyst-project",
        "4000/777",
    ]);
    let http = reqwest::Client::new();
    let status = |project: &'static str, segment: Option<&'static str>| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let path = match segment {
                Some(s) => format!("{url}/baas/v1/project/{project}/segment/{s}/cache"),
                None => format!("{url}/baas/v1/project/{project}/cache"),
            };
            http.get(path)
                .query(&[("cacheKey", "k")])
                .header("project_id", project)
                .header("Authorization", "Zoho-oauthtoken 1000.x")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("4001", None).await, 404, "an unknown project");
    assert_eq!(status("4000", Some("778")).await, 404, "an unknown segment");
    assert_ne!(status("4000", None).await, 404);
    assert_ne!(status("4000", Some("777")).await, 404);
    let _ = child.kill();
    let _ = child.wait();
}
