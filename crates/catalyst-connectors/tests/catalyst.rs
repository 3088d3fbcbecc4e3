//! The Catalyst Cache store against the emulator's Catalyst Cache: conformance (the parts that
//! apply), interop with the official SDKs' records, limits, and typed failures.
#![cfg(feature = "catalyst")]

mod common;

use catalyst_connectors::store::conformance;
use catalyst_connectors::{
    AccessTokenSecret, CatalystCacheStore, Connection, Connector, Error, ExposeSecret, MemoryStore,
    StoreErrorKind, TokenSource, TokenStore, TokenWrite, system_time_to_millis,
};
use common::{CLIENT_ID, CLIENT_SECRET, Setup};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const PROJECT: &str = "4000000001234";

/// A connector for Catalyst's own API, on its own (memory) connection.
fn admin(s: &Setup) -> Connector {
    let rt = s.emulator.add_refresh_token(
        CLIENT_ID,
        "ZohoCatalyst.cache.READ,ZohoCatalyst.cache.CREATE,ZohoCatalyst.cache.DELETE",
    );
    Connection::builder()
        .ignore_env()
        .store(MemoryStore::new())
        .json(json!({"catalyst_admin": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": s.emulator.token_url(), "refresh_url": s.emulator.token_url(), "refresh_token": rt}}))
        .build()
        .unwrap()
        .connector("catalyst_admin")
        .unwrap()
}

fn store(s: &Setup) -> CatalystCacheStore {
    store_with(s, admin(s))
}

fn store_with(s: &Setup, admin: Connector) -> CatalystCacheStore {
    CatalystCacheStore::builder(PROJECT)
        .origin(s.emulator.url())
        .token_from(admin)
        .build()
        .unwrap()
}

/// The store as the interop tests use it: the Production environment, as the SDKs are set up.
/// (The SDKs' connectors always use the project's default segment, so the interop cannot use a
/// named one; the segment is covered by `environments_projects_and_segments_are_kept_apart`.)
fn production_store(s: &Setup, admin: Connector) -> CatalystCacheStore {
    CatalystCacheStore::builder(PROJECT)
        .origin(s.emulator.url())
        .environment("Production")
        .token_from(admin)
        .build()
        .unwrap()
}

fn crm_on(s: &Setup, store: CatalystCacheStore) -> Connector {
    s.bare_builder()
        .store(store)
        .json(s.config())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap()
}

/// Writes `value` as an SDK would, over the REST API.
async fn sdk_write(s: &Setup, admin: &Connector, key: &str, value: Value) {
    let token = admin.access_token().await.unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/baas/v1/project/{PROJECT}/cache",
            s.emulator.url()
        ))
        .header("Authorization", token.authorization_header())
        .header("PROJECT_ID", PROJECT)
        .header("Environment", "Development")
        .json(&json!({"cache_name": key, "cache_value": value, "expiry_in_hours": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

fn refresh_grants(s: &Setup) -> u64 {
    s.emulator
        .stats()
        .by_grant
        .get("refresh_token")
        .and_then(|m| m.get("ok"))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_the_parts_that_apply() {
    let s = Setup::new().await;
    let store = store(&s);
    let run = "cc01";
    conformance::get_put_delete(&store, run).await.unwrap();
    conformance::compare_and_set(&store, run).await.unwrap();
    conformance::generations_never_repeat(&store, run)
        .await
        .unwrap();
    conformance::refresh_records(&store, run).await.unwrap();
    conformance::arbitrary_data(&store, run).await.unwrap();
    // Not applicable: sub-hour expiry (Catalyst counts whole hours), leases (no set-if-absent),
    // atomic concurrent compare-and-set (read-then-write over REST).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sdk_record_is_served_without_minting() {
    let s = Setup::new().await;
    let admin = admin(&s);
    let crm = crm_on(&s, store_with(&s, admin.clone()));
    let expires_at = system_time_to_millis(SystemTime::now()) + 40 * 60 * 1000;
    // Byte for byte what zcatalyst-sdk-node 3.4.0 writes: a JSON string.
    let node = format!(
        r#"{{"access_token":"1000.node-token","expiry_in_seconds":3600,"expires_at":{expires_at}}}"#
    );
    sdk_write(&s, &admin, &crm.cache_key(), Value::String(node)).await;
    let before = refresh_grants(&s);
    let token = crm.access_token().await.unwrap();
    assert_eq!(token.expose_secret(), "1000.node-token");
    assert_eq!(token.source(), TokenSource::Store);
    assert_eq!(refresh_grants(&s), before, "read theirs without minting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sdk_record_is_served_without_minting() {
    let s = Setup::new().await;
    let admin = admin(&s);
    let crm = crm_on(&s, store_with(&s, admin.clone()));
    let expires_at = system_time_to_millis(SystemTime::now()) + 40 * 60 * 1000;
    // What zcatalyst-sdk 1.4.0 (Python) writes: an object, with `expires_in`.
    let python =
        json!({"access_token": "1000.python-token", "expires_in": 3600, "expires_at": expires_at});
    sdk_write(&s, &admin, &crm.cache_key(), python).await;
    let before = refresh_grants(&s);
    assert_eq!(
        crm.access_token().await.unwrap().expose_secret(),
        "1000.python-token"
    );
    assert_eq!(refresh_grants(&s), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_records_are_in_the_form_the_sdks_read() {
    let s = Setup::new().await;
    let crm = crm_on(&s, store(&s));
    let token = crm.access_token().await.unwrap();
    let value = s
        .emulator
        .cache_value(PROJECT, None, &crm.cache_key())
        .expect("written");
    let Value::String(text) = value else {
        panic!("the Node SDK needs a JSON string, got {value}");
    };
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["access_token"], token.expose_secret());
    let expires_at = record["expires_at"].as_i64().expect("epoch ms as a number");
    assert_eq!(
        expires_at,
        system_time_to_millis(token.refresh_at()),
        "the SDKs' expires_at is the refresh point"
    );
    assert_eq!(record["expiry_in_seconds"], 3600);
    assert_eq!(
        s.emulator.cache_hours(PROJECT, None, &crm.cache_key()),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_another_fingerprint_is_never_served() {
    let s = Setup::new().await;
    let crm = crm_on(&s, store(&s));
    let expires_at = system_time_to_millis(SystemTime::now()) + 40 * 60 * 1000;
    let foreign = json!({"access_token": "1000.someone-else", "expires_at": expires_at, "expiry_in_seconds": 3600,
        "fingerprint": "0000000000000000000000000000000000000000000000000000000000000000"});
    sdk_write(
        &s,
        &admin(&s),
        &crm.cache_key(),
        Value::String(foreign.to_string()),
    )
    .await;
    let token = crm.access_token().await.unwrap();
    assert_ne!(token.expose_secret(), "1000.someone-else");
    assert_eq!(token.source(), TokenSource::Minted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_50_characters_is_refused_when_the_connection_is_built() {
    let s = Setup::new().await;
    let ok_name = "a".repeat(32); // its longest key (the refresh-token record's) is 50 characters
    let long_name = "a".repeat(33); // 51 characters
    let config = |name: &str| {
        json!({ name: {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "auth_url": s.emulator.token_url(), "refresh_url": s.emulator.token_url(), "refresh_token": "r"}})
    };
    s.bare_builder()
        .store(store(&s))
        .json(config(&ok_name))
        .build()
        .unwrap();
    let err = s
        .bare_builder()
        .store(store(&s))
        .json(config(&long_name))
        .build()
        .unwrap_err();
    let Error::Config(errors) = &err else {
        panic!("{err:?}")
    };
    let msg = errors.to_string();
    assert!(
        msg.contains("keys are at most 50 characters (this connector needs 51)"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_claiming_49_hours_is_stored_for_zohos_hour_and_a_day_long_one_for_a_day() {
    // Catalyst Cache keeps at most 48 hours; a lifetime beyond a day is not believed at all
    // (taken as Zoho's documented hour), so no token reaches that cap.
    let s = Setup::new().await;
    s.emulator
        .set_token_lifetime(Duration::from_secs(49 * 3600));
    let crm = crm_on(&s, store(&s));
    crm.access_token().await.unwrap();
    assert_eq!(
        s.emulator.cache_hours(PROJECT, None, &crm.cache_key()),
        Some(1)
    );
    let s = Setup::new().await;
    s.emulator
        .set_token_lifetime(Duration::from_secs(24 * 3600));
    let crm = crm_on(&s, store(&s));
    crm.access_token().await.unwrap();
    assert_eq!(
        s.emulator.cache_hours(PROJECT, None, &crm.cache_key()),
        Some(24)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_checked_before_sending_and_failures_are_typed() {
    let s = Setup::new().await;
    let store = store(&s);
    let before = s
        .emulator
        .stats()
        .cache_requests
        .get("POST")
        .copied()
        .unwrap_or(0);
    let big = "x".repeat(16_001);
    let err = store
        .compare_and_set(TokenWrite::new(
            "ZC_CONN_crm:00000",
            None,
            &big,
            Duration::from_secs(60),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Rejected);
    assert!(err.to_string().contains("at most 16000"), "{err}");
    assert_eq!(
        s.emulator
            .stats()
            .cache_requests
            .get("POST")
            .copied()
            .unwrap_or(0),
        before,
        "nothing was sent"
    );
    let long_key = format!("ZC_CONN_{}:00000", "k".repeat(40));
    assert!(
        store
            .get(&long_key)
            .await
            .unwrap_err()
            .to_string()
            .contains("at most 50")
    );

    let bad = CatalystCacheStore::builder(PROJECT)
        .origin(s.emulator.url())
        .token(AccessTokenSecret::new("1000.not-a-token"))
        .build()
        .unwrap();
    let err = bad.get("ZC_CONN_crm:00000").await.unwrap_err();
    assert!(err.to_string().contains("INVALID_OAUTHTOKEN"), "{err}");
    assert!(!err.to_string().contains("1000.not-a-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_store_elects_one_minter() {
    let s = Setup::new().await;
    s.emulator.set_latency(Duration::from_millis(100));
    let leases: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
    let make = || {
        CatalystCacheStore::builder(PROJECT)
            .origin(s.emulator.url())
            .token_from(admin(&s))
            .lease_store(leases.clone())
            .build()
            .unwrap()
    };
    // Two connections (as two processes would be) on the same cache, sharing a lease store.
    let a = crm_on(&s, make());
    let b = crm_on(&s, make());
    let before = refresh_grants(&s);
    let (ta, tb) = tokio::join!(a.access_token(), b.access_token());
    assert_eq!(ta.unwrap().expose_secret(), tb.unwrap().expose_secret());
    // Two admin tokens for the two stores, and one crm token.
    assert_eq!(refresh_grants(&s) - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_can_be_chosen_in_the_config() {
    let s = Setup::new().await;
    let admin_rt = s.emulator.add_refresh_token(
        CLIENT_ID,
        "ZohoCatalyst.cache.READ,ZohoCatalyst.cache.CREATE",
    );
    let url = s.emulator.token_url();
    let config = json!({
        "$connector": {
            "store": format!("catalyst://{PROJECT}?origin={}", s.emulator.url()),
            "catalyst_auth": "catalyst_admin",
        },
        "catalyst_admin": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": url, "refresh_url": url, "refresh_token": admin_rt},
        "crm": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": url, "refresh_url": url, "refresh_token": s.refresh_token},
    });
    let connection = Connection::builder()
        .ignore_env()
        .json(config.clone())
        .build()
        .unwrap();
    let crm = connection.connector("crm").unwrap();
    let token = crm.access_token().await.unwrap();
    let stored = s
        .emulator
        .cache_value(PROJECT, None, &crm.cache_key())
        .expect("in Catalyst Cache");
    assert!(stored.as_str().unwrap().contains(token.expose_secret()));
    // The admin connector keeps its own token in memory, not in the cache it authenticates.
    let admin = connection.connector("catalyst_admin").unwrap();
    admin.access_token().await.unwrap();
    assert!(
        s.emulator
            .cache_value(PROJECT, None, &admin.cache_key())
            .is_none()
    );

    let mut missing = config.clone();
    missing["$connector"]
        .as_object_mut()
        .unwrap()
        .remove("catalyst_auth");
    let err = Connection::builder()
        .ignore_env()
        .json(missing)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("`catalyst_auth`"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Interop with the official SDKs themselves: Node 3.4.0 (interop/node) and Python 1.4.0
// (interop/python), both installed by `.ci/run`.

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Node,
    Python,
}

impl Sdk {
    fn dir(self) -> std::path::PathBuf {
        let sub = match self {
            Sdk::Node => "node",
            Sdk::Python => "python",
        };
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../interop")
            .join(sub)
    }

    /// The command that runs the SDK's `get_access_token`, if the SDK is installed.
    fn command(self) -> Option<std::process::Command> {
        let dir = self.dir();
        let (program, script, installed) = match self {
            Sdk::Node => (
                "node".into(),
                dir.join("connector.js"),
                dir.join("node_modules/zcatalyst-sdk-node").is_dir(),
            ),
            Sdk::Python => (
                dir.join("venv/bin/python"),
                dir.join("connector.py"),
                dir.join("venv/bin/python").is_file(),
            ),
        };
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "the {self:?} SDK is not installed in {} and CI is set (see .ci/run)",
                dir.display()
            );
            eprintln!(
                "SKIPPED: the {self:?} SDK is not installed (see .ci/run; set CI to make this a failure)"
            );
            return None;
        }
        let mut cmd = std::process::Command::new::<std::path::PathBuf>(program);
        cmd.arg(script).current_dir(dir);
        Some(cmd)
    }
}

/// Runs the SDK's access-token call for connector `crm` of `s`'s config.
async fn sdk_access_token(mut cmd: std::process::Command, s: &Setup, admin: &Connector) -> String {
    let admin_token = admin
        .access_token()
        .await
        .unwrap()
        .expose_secret()
        .to_owned();
    cmd.env("X_ZOHO_CATALYST_CONSOLE_URL", s.emulator.url())
        .env("INTEROP_PROJECT", PROJECT)
        .env("INTEROP_ADMIN_TOKEN", admin_token)
        .env("INTEROP_CONNECTOR", "crm")
        .env("INTEROP_CLIENT_ID", CLIENT_ID)
        .env("INTEROP_CLIENT_SECRET", CLIENT_SECRET)
        .env("INTEROP_TOKEN_URL", s.emulator.token_url())
        .env("INTEROP_REFRESH_TOKEN", &s.refresh_token)
        .env("INTEROP_ENVIRONMENT", "Production");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN "))
        .expect("a token line")
        .trim()
        .to_owned()
}

async fn sdk_reads_ours(sdk: Sdk) {
    let Some(cmd) = sdk.command() else { return };
    let s = Setup::new().await;
    let admin = admin(&s);
    let crm = crm_on(&s, production_store(&s, admin.clone()));
    let ours = crm.access_token().await.unwrap();
    let before = refresh_grants(&s);
    let theirs = sdk_access_token(cmd, &s, &admin).await;
    assert_eq!(
        theirs,
        ours.expose_secret(),
        "the {sdk:?} SDK served our token"
    );
    assert_eq!(refresh_grants(&s), before, "and minted nothing");
}

async fn we_read_the_sdks(sdk: Sdk) {
    let Some(cmd) = sdk.command() else { return };
    let s = Setup::new().await;
    let admin = admin(&s);
    let theirs = sdk_access_token(cmd, &s, &admin).await;
    let before = refresh_grants(&s);
    let crm = crm_on(&s, production_store(&s, admin.clone()));
    let ours = crm.access_token().await.unwrap();
    assert_eq!(
        ours.expose_secret(),
        theirs,
        "we served the {sdk:?} SDK's token"
    );
    assert_eq!(ours.source(), TokenSource::Store);
    assert_eq!(refresh_grants(&s), before, "and minted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_reads_our_token_without_minting() {
    sdk_reads_ours(Sdk::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_the_node_sdks_token_without_minting() {
    we_read_the_sdks(Sdk::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_our_token_without_minting() {
    sdk_reads_ours(Sdk::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_the_python_sdks_token_without_minting() {
    we_read_the_sdks(Sdk::Python).await;
}

async fn sdk_mints_after_our_delete(sdk: Sdk) {
    let Some(cmd) = sdk.command() else { return };
    let s = Setup::new().await;
    let admin = admin(&s);
    let crm = crm_on(&s, production_store(&s, admin.clone()));
    let ours = crm.access_token().await.unwrap();
    // What the middleware's 401 handling and `connector revoke` do.
    crm.invalidate().await.unwrap();
    let before = refresh_grants(&s);
    let theirs = sdk_access_token(cmd, &s, &admin).await;
    assert_ne!(
        theirs,
        ours.expose_secret(),
        "the {sdk:?} SDK did not serve the deleted token"
    );
    assert_eq!(
        refresh_grants(&s),
        before + 1,
        "the {sdk:?} SDK minted (and did not crash)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_mints_after_our_delete() {
    sdk_mints_after_our_delete(Sdk::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_mints_after_our_delete() {
    sdk_mints_after_our_delete(Sdk::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_projects_and_segments_are_kept_apart() {
    let s = Setup::new().await;
    let admin = admin(&s);
    let make = |env: &str, project: &str, segment: Option<&str>| {
        let mut b = CatalystCacheStore::builder(project)
            .origin(s.emulator.url())
            .environment(env)
            .token_from(admin.clone());
        if let Some(seg) = segment {
            b = b.segment(seg);
        }
        b.build().unwrap()
    };
    let dev = crm_on(&s, make("Development", PROJECT, None));
    let t = dev.access_token().await.unwrap();
    assert!(
        s.emulator
            .cache_value_in("Development", PROJECT, None, &dev.cache_key())
            .is_some()
    );
    assert!(
        s.emulator
            .cache_value_in("Production", PROJECT, None, &dev.cache_key())
            .is_none()
    );
    for other in [
        make("Production", PROJECT, None),
        make("Development", "4000000009999", None),
        make("Development", PROJECT, Some("77")),
    ] {
        let before = refresh_grants(&s);
        let crm = crm_on(&s, other);
        let u = crm.access_token().await.unwrap();
        assert_ne!(u.expose_secret(), t.expose_secret(), "not read across");
        assert_eq!(refresh_grants(&s), before + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_origin_or_a_missing_header_is_a_typed_error_not_a_miss() {
    let s = Setup::new().await;
    let wrong = CatalystCacheStore::builder(PROJECT)
        .origin(format!("{}/nope", s.emulator.url()))
        .token_from(admin(&s))
        .build()
        .unwrap();
    let err = wrong.get("ZC_CONN_crm:00000").await.unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Rejected, "{err}");
    assert!(
        err.to_string().contains("404") && err.to_string().contains("project id"),
        "{err}"
    );
    let write = wrong
        .compare_and_set(catalyst_connectors::TokenWrite::new(
            "ZC_CONN_crm:00000",
            None,
            "{}",
            Duration::from_secs(60),
        ))
        .await;
    assert!(write.is_err(), "a write to a wrong URL is not a success");

    // Plain http to anything but loopback is refused, however it is given.
    let err = CatalystCacheStore::builder(PROJECT)
        .origin("http://192.0.2.2:8080")
        .token(AccessTokenSecret::new("x"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    let err = "catalyst://4000000001234?origin=http://192.0.2.2:8080"
        .parse::<catalyst_connectors::StoreSpec>()
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    let spec: catalyst_connectors::StoreSpec =
        "catalyst://4000000001234/55?key=pk&environment=Production&origin=https://api.catalyst.zoho.eu"
            .parse()
            .unwrap();
    assert_eq!(spec.to_string(), "catalyst://4000000001234/55 (Production)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_drives_the_store_from_the_requests_headers() {
    use axum::extract::Extension;
    use catalyst_connectors::catalyst_request::{CatalystApp, CatalystLayer};
    use tower::ServiceExt as _;

    let s = Setup::new().await;
    let admin_token = admin(&s).access_token().await.unwrap();
    let layer = CatalystLayer::new(s.config()).origin(s.emulator.url());
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|Extension(app): Extension<CatalystApp>| async move {
                let crm = app.connector("crm").unwrap();
                let token = crm.access_token().await.unwrap();
                format!(
                    "{} {} {} {}",
                    app.project_id(),
                    app.environment(),
                    crm.cache_key(),
                    token.expose_secret()
                )
            }),
        )
        .layer(layer);
    let request = || {
        axum::http::Request::builder()
            .uri("/")
            .header("x-zc-projectid", PROJECT)
            .header("x-zc-project-key", "pk-1")
            .header("x-zc-environment", "Production")
            .header("x-zc-admin-cred-type", "token")
            .header("x-zc-admin-cred-token", admin_token.expose_secret())
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let body = |r: axum::response::Response| async move {
        String::from_utf8(
            axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    };
    let r = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = body(r).await;
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(&parts[..2], &[PROJECT, "Production"]);
    // The token is in that project's Production cache, where the SDKs would read it.
    let cached = s
        .emulator
        .cache_value_in("Production", PROJECT, None, parts[2])
        .expect("stored in Production");
    assert!(cached.to_string().contains(parts[3]));
    assert!(s.emulator.cache_value(PROJECT, None, parts[2]).is_none());
    let grants = refresh_grants(&s);
    let r = app.clone().oneshot(request()).await.unwrap();
    assert!(body(r).await.ends_with(parts[3]));
    assert_eq!(
        refresh_grants(&s),
        grants,
        "the second request minted nothing"
    );

    // Without the credentials: a clear 401 that echoes no header value.
    let bare = axum::http::Request::builder()
        .uri("/")
        .header("x-zc-projectid", PROJECT)
        .header("x-zc-admin-cred-type", "token")
        .body(axum::body::Body::empty())
        .unwrap();
    let r = app.clone().oneshot(bare).await.unwrap();
    assert_eq!(r.status(), 401);
    let text = body(r).await;
    assert!(text.contains("x-zc-admin-cred-token"), "{text}");
    assert!(!text.contains(admin_token.expose_secret()));
}

// The modular JS SDK (`@zcatalyst/connector`): its key, its record, its encrypted token. The
// vectors come from Node's own `crypto` (scrypt, AES-256-GCM), driven by a script written to the
// published format.

/// Runs `interop/node/js-sdk-sealer.js`; `None` (or a failure under CI) when Node is not
/// installed.
async fn node_sealer(mode: &str, key: &str, value: &str) -> Option<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../interop/node/js-sdk-sealer.js");
    let mut cmd = std::process::Command::new("node");
    cmd.arg(script).args([mode, key, value]);
    let out = match tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "node: {e} (CI is set)");
            eprintln!("SKIPPED: node is not installed ({e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Connector `crm` sharing the JS SDK's key and record, with `secret_key` when given.
fn js_crm_on(s: &Setup, store: CatalystCacheStore, secret_key: Option<&str>) -> Connector {
    let mut config = s.config();
    config["crm"]["catalyst_sdk"] = json!("js");
    if let Some(k) = secret_key {
        config["crm"]["secret_key"] = json!(k);
    }
    s.bare_builder()
        .store(store)
        .json(config)
        .build()
        .unwrap()
        .connector("crm")
        .unwrap()
}

/// A record as the JS SDK writes it: a JSON string, `expires_at` the refresh point.
fn js_record(access_token: &str, minutes_ahead: i64) -> Value {
    let expires_at = system_time_to_millis(SystemTime::now()) + minutes_ahead * 60 * 1000;
    Value::String(
        json!({"access_token": access_token, "expiry_in_seconds": 3600, "expires_at": expires_at})
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_records_sealed_by_node_are_served_without_minting() {
    for form in ["seal4", "seal3"] {
        let Some(sealed) = node_sealer(form, "shared-passphrase", "1000.js-token").await else {
            return;
        };
        let s = Setup::new().await;
        let admin = admin(&s);
        let crm = js_crm_on(&s, store_with(&s, admin.clone()), Some("shared-passphrase"));
        assert_eq!(crm.cache_key(), "ZC_CONN_crm", "the JS SDK's key: no hash");
        sdk_write(&s, &admin, "ZC_CONN_crm", js_record(&sealed, 45)).await;
        let before = refresh_grants(&s);
        let token = crm.access_token_valid_for(Duration::ZERO).await.unwrap();
        assert_eq!(token.expose_secret(), "1000.js-token", "{form}");
        assert_eq!(
            refresh_grants(&s),
            before,
            "{form}: served without a token request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_sealed_records_open_with_nodes_crypto_and_expire_at_the_refresh_point() {
    let s = Setup::new().await;
    let admin = admin(&s);
    let crm = js_crm_on(&s, store_with(&s, admin.clone()), Some("shared-passphrase"));
    let ours = crm.access_token().await.unwrap();
    let stored = store_with(&s, admin)
        .get("ZC_CONN_crm")
        .await
        .unwrap()
        .unwrap();
    let record: Value = serde_json::from_str(&stored.data).unwrap();
    let sealed = record["access_token"].as_str().unwrap();
    assert_ne!(
        sealed,
        ours.expose_secret(),
        "the token is not stored in the clear"
    );
    let Some(opened) = node_sealer("open", "shared-passphrase", sealed).await else {
        return;
    };
    assert_eq!(opened, ours.expose_secret());
    let ahead_min = (record["expires_at"].as_i64().unwrap()
        - system_time_to_millis(SystemTime::now()))
        / 60_000;
    assert!(
        (30..=60).contains(&ahead_min),
        "expires_at is {ahead_min} min ahead"
    );
    assert_eq!(record["expiry_in_seconds"], 3600);
    assert!(
        record["fingerprint"].is_string(),
        "our credentials binding, beside theirs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_never_serves_a_token_and_mints_once() {
    let Some(sealed) = node_sealer("seal4", "their-passphrase", "1000.theirs").await else {
        return;
    };
    let s = Setup::new().await;
    let admin = admin(&s);
    sdk_write(&s, &admin, "ZC_CONN_crm", js_record(&sealed, 45)).await;
    let before = refresh_grants(&s);
    let crm = js_crm_on(&s, store_with(&s, admin.clone()), Some("our-passphrase"));
    let token = crm.access_token().await.unwrap();
    assert_ne!(token.expose_secret(), "1000.theirs");
    assert_eq!(
        refresh_grants(&s),
        before + 1,
        "one mint replaces the record"
    );
    // Another process with our key reads the replacement: no second mint.
    let again = js_crm_on(&s, store_with(&s, admin), Some("our-passphrase"));
    assert_eq!(
        again.access_token().await.unwrap().expose_secret(),
        token.expose_secret()
    );
    assert_eq!(refresh_grants(&s), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_record_without_a_secret_key_is_a_typed_error_and_left_alone() {
    let Some(sealed) = node_sealer("seal4", "their-passphrase", "1000.theirs").await else {
        return;
    };
    let s = Setup::new().await;
    let admin = admin(&s);
    sdk_write(&s, &admin, "ZC_CONN_crm", js_record(&sealed, 45)).await;
    let before = refresh_grants(&s);
    let crm = js_crm_on(&s, store_with(&s, admin.clone()), None);
    let err = crm.access_token().await.unwrap_err();
    assert!(matches!(err, Error::SdkSecretKey { .. }), "{err:?}");
    assert!(err.to_string().contains("secret_key"), "{err}");
    assert_eq!(refresh_grants(&s), before, "nothing minted");
    let kept = store_with(&s, admin)
        .get("ZC_CONN_crm")
        .await
        .unwrap()
        .unwrap();
    assert!(kept.data.contains(&sealed), "the SDK's record is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_js_records_are_shared_both_ways() {
    let s = Setup::new().await;
    let admin = admin(&s);
    sdk_write(&s, &admin, "ZC_CONN_crm", js_record("1000.plain", 45)).await;
    let crm = js_crm_on(&s, store_with(&s, admin.clone()), None);
    let before = refresh_grants(&s);
    assert_eq!(
        crm.access_token().await.unwrap().expose_secret(),
        "1000.plain"
    );
    assert_eq!(refresh_grants(&s), before);
    // What we mint without a secret_key is in the clear, where the SDK reads it.
    let minted = crm.force_refresh().await.unwrap();
    let stored = store_with(&s, admin)
        .get("ZC_CONN_crm")
        .await
        .unwrap()
        .unwrap();
    let record: Value = serde_json::from_str(&stored.data).unwrap();
    assert_eq!(record["access_token"], minted.expose_secret());
}

#[test]
fn secret_key_needs_the_js_sdk_and_catalyst_sdk_is_checked() {
    let config = |extra: Value| {
        let mut c = json!({"crm": {"client_id": "1000.A", "client_secret": "s",
            "refresh_url": "https://accounts.zoho.com/oauth/v2/token",
            "auth_url": "https://accounts.zoho.com/oauth/v2/token", "refresh_token": "1000.r"}});
        for (k, v) in extra.as_object().unwrap() {
            c["crm"][k] = v.clone();
        }
        Connection::builder()
            .ignore_env()
            .store(MemoryStore::new())
            .json(c)
            .build()
    };
    let err = config(json!({"secret_key": "k"})).unwrap_err().to_string();
    assert!(err.contains("catalyst_sdk"), "{err}");
    assert!(!err.contains("\"k\""), "{err}");
    let err = config(json!({"catalyst_sdk": "js2"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("node-v3"), "{err}");
    let ok = config(json!({"catalyst_sdk": "js", "secret_key": "k"})).unwrap();
    let crm = ok.connector("crm").unwrap();
    assert_eq!(crm.cache_key(), "ZC_CONN_crm");
    assert!(!format!("{crm:?} {:?}", crm.config()).contains("\"k\""));
}
