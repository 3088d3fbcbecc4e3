//! The CLI names the real cause: each test here failed on the code before issue 13 (wrong or
//! missing encryption key, store down, a config refresh token hiding a newer stored one, a
//! broken neighbour, unknown settings, a stale token in a one-shot process, status as a health
//! check, the last error seen from another process).

use std::time::Duration;

mod common;

use common::{CLIENT_ID, Env, stderr, stdout};

const KEY_A: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const KEY_B: &str = "0000000000000000000000000000000000000000000000000000000000000002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_or_missing_encryption_key_is_a_configuration_error() {
    let env = Env::new().await;
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_A)], &["token", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.requests(), 1);

    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_B)], &["token", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(3), "wrong key: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("different encryption key"), "{err}");
    assert!(err.contains("CONNECTOR_ENCRYPTION_KEY"), "{err}");
    assert!(
        !err.contains("authorize"),
        "no re-authorization for a key problem: {err}"
    );

    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(3), "missing key: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no encryption key is set"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.requests(), 1, "no mint with the wrong or a missing key");

    // The same holds for a refresh token kept in the store (no refresh_token in the config).
    env.write_config(&[("crm", None)]);
    let code = env
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    let out = env
        .run_with(
            &[("CONNECTOR_ENCRYPTION_KEY", KEY_A)],
            &["exchange", "crm", "--code", &code],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_B)], &["token", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("CONNECTOR_ENCRYPTION_KEY"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_transient_and_named() {
    let env = Env::new().await;
    env.write_config(&[("crm", None)]);
    let out = env
        .run(&["token", "crm", "--store", "redis://127.0.0.1:1"])
        .await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("redis"), "names the store: {err}");
    assert!(!err.contains("has no refresh token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_refresh_token_hiding_a_stored_one_is_named_with_its_file() {
    let env = Env::new().await;
    // A refresh token obtained by a code exchange is stored; the config still holds an old one.
    let code = env
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    let out = env.run(&["exchange", "crm", "--code", &code]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("takes precedence") && stderr(&out).contains("connectors.json"),
        "warned at exchange time: {}",
        stderr(&out)
    );
    // The old one is revoked: the error says what to delete from which file.
    env.emulator.revoke(&env.refresh_token);
    let out = env.run(&["refresh", "crm"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("delete the `refresh_token` entry of `crm`")
            && err.contains("connectors.json"),
        "{err}"
    );
    assert!(
        !err.contains("connector authorize crm"),
        "no authorize loop: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_neighbour_and_unknown_keys_do_not_stop_a_valid_connector() {
    let env = Env::new().await;
    let mut config = serde_json::Map::new();
    let mut crm = env.connector_json(Some(&env.refresh_token));
    crm["clientsecret"] = "typo".into();
    config.insert("crm".into(), crm);
    config.insert("desk".into(), serde_json::json!({"client_id": "x"}));
    std::fs::write(
        env.config_path(),
        serde_json::Value::Object(config).to_string(),
    )
    .unwrap();

    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("did you mean `client_secret`"), "{err}");
    assert!(err.contains("connector `desk` is skipped"), "{err}");

    let out = env.run(&["token", "desk"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("client_secret"), "{}", stderr(&out));

    // config check reports all of it and fails.
    let out = env.run(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("clientsecret") && text.contains("desk"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_files_say_one_thing_each() {
    let env = Env::new().await;
    let one = env.connector_json(Some(&env.refresh_token)).to_string();
    // Duplicate connector and duplicate field.
    let dup =
        format!(r#"{{"crm": {one}, "crm": {one}, "x": {{"client_id": "a", "client_id": "b"}}}}"#);
    std::fs::write(env.config_path(), dup).unwrap();
    let out = env.run(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    assert!(
        text.contains("connector `crm` is defined more than once"),
        "{text}"
    );
    assert!(
        text.contains("field `client_id`: set more than once"),
        "{text}"
    );

    // A byte-order mark is accepted.
    std::fs::write(env.config_path(), format!("\u{feff}{{\"crm\": {one}}}")).unwrap();
    let out = env.run(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // A name with a direction override is refused.
    std::fs::write(env.config_path(), format!("{{\"crm\u{202e}x\": {one}}}")).unwrap();
    let out = env.run(&["config", "check"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).contains("U+202E"), "{}", stdout(&out));

    // A numeric TOML secret too large for an integer is not echoed.
    let toml = env.dir.path().join("c.toml");
    std::fs::write(
        &toml,
        "[crm]\nclient_id = \"1000.X\"\nclient_secret = 98765432109876543210987\ndc = \"us\"\n",
    )
    .unwrap();
    let out = env
        .run(&["config", "check", "--config", toml.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(3));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("98765432109876543210987"), "{all}");

    // A mistyped dc is one problem, not three.
    std::fs::write(
        env.config_path(),
        r#"{"crm": {"client_id": "a", "client_secret": "b", "dc": "mars"}}"#,
    )
    .unwrap();
    let out = env.run(&["config", "check"]).await;
    let text = stdout(&out);
    assert!(text.contains("`dc`"), "{text}");
    assert!(!text.contains("auth_url"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_process_never_prints_a_token_past_its_refresh_point() {
    let env = Env::new().await;
    // Four-second tokens: refresh point at 3 s.
    env.emulator.set_token_lifetime(Duration::from_secs(4));
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first = stdout(&out);
    assert_eq!(env.requests(), 1);
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(stdout(&out), first, "a fresh token, not the stale one");
    assert_eq!(env.requests(), 2, "exactly one more mint");
    // And the next run finds it fresh in the store.
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.requests(), 2);

    // --min-ttl longer than the endpoint's tokens live: a usage error, no mint storm.
    let out = env.run(&["token", "crm", "--min-ttl", "1h"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--min-ttl"), "{}", stderr(&out));
    assert_eq!(env.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_a_health_check_and_shows_what_another_process_saw() {
    let env = Env::new().await;
    env.write_config(&[("crm", Some(&env.refresh_token.clone())), ("desk", None)]);
    // desk has no refresh token: status fails with the re-authorize code.
    let out = env.run(&["status"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    // crm alone is healthy (it can mint).
    let out = env.run(&["status", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // A worker process sees the refresh token rejected…
    env.emulator.revoke(&env.refresh_token);
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(4));
    // …and status, in another process, shows it and fails.
    let out = env.run(&["status", "crm", "--json"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["recorded_failure"]["code"], "reauthorization_required");
    assert!(
        v[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_code"),
        "{v}"
    );
    assert_eq!(v[0]["healthy"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_fails_when_nothing_could_be_kept() {
    let env = Env::new().await;
    env.write_config(&[("crm", None)]);
    let code = env
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    let out = env
        .run(&["exchange", "crm", "--code", &code, "--store", "memory:"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // The refresh token is not lost with the spent grant code: it is on stdout.
    assert!(stdout(&out).trim().starts_with("1000."), "{}", stdout(&out));
    assert!(stderr(&out).contains("not kept"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_variable_an_all_zero_key_and_an_open_key_file_are_not_taken_silently() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new().await;
    // `export CONNECTOR_ENCRYPTION_KEY=$(cat missing-file)`: an error, not "unencrypted".
    for var in ["CONNECTOR_ENCRYPTION_KEY", "CONNECTOR_ENCRYPTION_KEY_FILE"] {
        let out = env.run_with(&[(var, "")], &["token", "crm"]).await;
        assert_eq!(out.status.code(), Some(3), "{var}: {}", stderr(&out));
        assert!(stderr(&out).contains("set but empty"), "{}", stderr(&out));
    }
    let zeros = "0".repeat(64);
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", &zeros)], &["token", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a secret"), "{}", stderr(&out));
    assert_eq!(
        env.requests(),
        0,
        "nothing minted under a key that is no key"
    );
    // A key file others can read works, with a warning, and keeps its mode.
    let file = env.dir.path().join("key");
    std::fs::write(&file, KEY_A).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env
        .run_with(
            &[("CONNECTOR_ENCRYPTION_KEY_FILE", file.to_str().unwrap())],
            &["token", "crm"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("readable by other users"),
        "{}",
        stderr(&out)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_command_never_hands_out_a_token_under_the_floor() {
    let env = Env::new().await;
    // Twenty-second tokens: their refresh point is 5 s before they expire.
    env.emulator.set_token_lifetime(Duration::from_secs(20));
    let out = env.run(&["token", "crm", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let refresh_at = json["refresh_at"].as_u64().unwrap();
    // The token endpoint fails from now on; wait until the token is past its refresh point.
    env.emulator.set_fault(Some(zoho_emulator::Fault::Http500));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // (refresh_at is in whole seconds: up to one more.)
    tokio::time::sleep(Duration::from_secs_f64(
        (refresh_at as f64 - now + 1.2).max(0.0),
    ))
    .await;
    // A program that can use a token within a second may ask for that.
    let out = env.run(&["token", "crm", "--floor", "1s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), json["access_token"]);
    // Under a minute left and the refresh failing: not printed, exit 6, saying when to retry.
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "a token was printed");
    assert!(stderr(&out).contains("under the 60 s"), "{}", stderr(&out));
    let out = env.run(&["exec", "-c", "crm", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(6), "exec: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_in_one_project_leaves_anothers_stored_refresh_token_alone() {
    let env = Env::new().await;
    // Project A: no refresh token in its config; it got one by `exchange` (in the shared store).
    env.write_config(&[("crm", None)]);
    let code = env
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    let out = env.run(&["exchange", "crm", "--code", &code]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Project B: the same client and connector name, its own refresh token in its config.
    let b = env.dir.path().join("b.json");
    let config = serde_json::json!({"crm": env.connector_json(Some(&env.refresh_token))});
    std::fs::write(&b, config.to_string()).unwrap();
    std::fs::set_permissions(&b, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = env
        .run(&["revoke", "crm", "--config", b.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A still works, with its own refresh token (still live at Zoho).
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "A lost its credential: {}",
        stderr(&out)
    );
    let token = stdout(&out);
    let used = env.emulator.refresh_token_of(token.trim());
    assert!(used.is_some() && used.as_deref() != Some(env.refresh_token.as_str()));
    // A's own revoke removes it.
    let out = env.run(&["revoke", "crm"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

/// Issue 22 item 10: a key is introduced on an unencrypted store, then rotated, and the refresh
/// token obtained once keeps working throughout — never a new authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_introduced_and_rotated_without_a_new_authorization() {
    let env = Env::new().await;
    env.write_config(&[("crm", None)]);
    let code = env
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    let out = env.run(&["exchange", "crm", "--code", &code]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let exchanged_token = stdout(&env.run(&["token", "crm"]).await);

    // A key set on the unencrypted store: a configuration error that names the way out.
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_A)], &["token", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("connector rekey"), "{}", stderr(&out));
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_A)], &["rekey"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("refresh token and access token"),
        "{}",
        stdout(&out)
    );
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_A)], &["token", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        exchanged_token,
        "the stored token, moved, not a new one"
    );
    let out = env.run(&["token", "crm"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "encrypted now: {}",
        stderr(&out)
    );

    // Rotation: the new key first, the old after it; rekey; then the new key alone.
    let both = format!("{KEY_B}\n{KEY_A}");
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", &both)], &["token", "crm"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "both keys read: {}",
        stderr(&out)
    );
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", &both)], &["rekey", "crm"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_B)], &["refresh", "crm"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the new key alone: {}",
        stderr(&out)
    );
    let out = env
        .run_with(&[("CONNECTOR_ENCRYPTION_KEY", KEY_A)], &["token", "crm"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "the old key alone: {}",
        stderr(&out)
    );
    let stats = env.emulator.stats();
    assert_eq!(
        stats.by_grant["authorization_code"]["ok"], 1,
        "one authorization"
    );
    assert!(!stderr(&out).contains(&exchanged_token));

    // No key set: nothing to rekey to.
    let out = env.run(&["rekey"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}
