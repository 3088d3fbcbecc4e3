//! Runs the whole connector flow with tracing captured at TRACE (ours and every dependency's) and
//! asserts that no secret value appears in the logs, in any error message or in any Debug output.
//! This file holds one test because it installs the process-wide subscriber.

mod common;

use catalyst_connectors::{ConnectorConfig, Error, ExposeSecret, GrantCode, MemoryStore};
use common::{CLIENT_ID, CLIENT_SECRET, Setup};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zoho_emulator::Fault;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_or_debug_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let s = Setup::new().await;
    let mut secrets: Vec<String> = vec![CLIENT_SECRET.into(), s.refresh_token.clone()];
    let mut seen: Vec<String> = Vec::new(); // every error string and Debug rendering

    let store = Arc::new(MemoryStore::new());
    let connection = s.builder().shared_store(store.clone()).build().unwrap();
    seen.push(format!("{connection:?}"));
    let crm = connection.connector("crm").unwrap();
    seen.push(format!("{crm:?} {:?}", crm.config()));

    // Mint, hit, expire, refresh, invalidate, force.
    let t1 = crm.access_token().await.unwrap();
    seen.push(format!("{t1:?}"));
    secrets.push(t1.expose_secret().to_owned());
    crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(3600));
    let t2 = crm.access_token().await.unwrap();
    secrets.push(t2.expose_secret().to_owned());
    crm.invalidate().await.unwrap();
    let t3 = crm.force_refresh().await.unwrap();
    secrets.push(t3.expose_secret().to_owned());
    seen.push(format!("{:?}", store.get_debug(&crm.cache_key()).await));

    // Every failure class, with Zoho descriptions that try to echo secrets back.
    for fault in [
        Fault::ErrorWith200 {
            error: "invalid_code".into(),
            description: Some(format!("token {} is bad", s.refresh_token)),
        },
        Fault::ErrorWith200 {
            error: "invalid_client_secret".into(),
            description: Some(CLIENT_SECRET.into()),
        },
        Fault::ErrorWith200 {
            error: "Access Denied".into(),
            description: None,
        },
        Fault::Http500,
        Fault::Hang { millis: 2_000 },
    ] {
        s.emulator.inject_faults(fault, 1);
        let quick = s
            .builder()
            .request_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = quick
            .connector("crm")
            .unwrap()
            .force_refresh()
            .await
            .unwrap_err();
        seen.push(format!("{err} {err:?}"));
    }

    // A malformed answer that carries a token.
    let bad = common::from_json(&serde_json::json!({"x": {"client_id": "a", "client_secret": CLIENT_SECRET,
        "auth_url": "http://127.0.0.1:9/t", "refresh_url": "http://127.0.0.1:9/t", "refresh_token": s.refresh_token}}))
    .unwrap();
    let err = bad
        .connector("x")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    seen.push(format!("{err} {err:?}"));

    // Code exchange, including a failed one.
    let exchange = common::hermetic()
        .connector(
            ConnectorConfig::builder("ex")
                .client_id(CLIENT_ID)
                .client_secret(CLIENT_SECRET)
                .token_url(s.emulator.token_url())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
        .connector("ex")
        .unwrap();
    let code = s
        .emulator
        .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None);
    secrets.push(code.clone());
    let code = GrantCode::new(code);
    seen.push(format!("{code:?}"));
    let generated = exchange.generate_access_token(&code).await.unwrap();
    seen.push(format!("{generated:?}"));
    secrets.push(generated.access_token.expose_secret().to_owned());
    secrets.push(
        generated
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned(),
    );
    let err: Error = exchange.generate_access_token(&code).await.unwrap_err();
    seen.push(format!("{err} {err:?}"));

    // A per-user connection through the consent flow, and a disconnect.
    let template = common::hermetic()
        .connector(
            ConnectorConfig::builder("users")
                .client_id(CLIENT_ID)
                .client_secret(CLIENT_SECRET)
                .token_url(s.emulator.token_url())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
        .connector("users")
        .unwrap();
    let flow = catalyst_connectors::users::ConsentFlow::new(
        template.clone(),
        "http://127.0.0.1:9/cb",
        catalyst_connectors::users::StateKey::generate(),
    );
    seen.push(format!("{flow:?}"));
    let start = flow.start("alice", &["ZohoCRM.users.READ"]).unwrap();
    let code = s.emulator.add_grant_code(
        CLIENT_ID,
        "ZohoCRM.users.READ",
        Some("http://127.0.0.1:9/cb"),
    );
    secrets.push(code.clone());
    let (_, alice) = flow
        .complete(&start.state, &GrantCode::new(code), None)
        .await
        .unwrap();
    let t = alice.access_token().await.unwrap();
    secrets.push(t.expose_secret().to_owned());
    if let Some(rt) = s.emulator.refresh_token_of(t.expose_secret()) {
        secrets.push(rt);
    }
    seen.push(format!("{alice:?} {:?}", alice.status().await));
    let err = flow
        .complete(&start.state, &GrantCode::new("1000.x"), None)
        .await
        .unwrap_err();
    seen.push(format!("{err} {err:?}"));
    flow.disconnect("alice").await.unwrap();
    let err = alice.access_token().await;
    seen.push(format!("{err:?}"));

    // Config errors quoting nothing.
    let err = common::from_json(&serde_json::json!({"c": {"client_id": "a", "client_secret": CLIENT_SECRET, "auth_url": "nope"}})).unwrap_err();
    seen.push(format!("{err} {err:?}"));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("token minted"), "the capture works: {logs}");
    assert!(logs.contains("connector=crm"), "events name the connector");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        for s in &seen {
            assert!(
                !s.contains(secret.as_str()),
                "a secret reached an error or Debug output: {s}"
            );
        }
    }
}

/// Debug-renders a stored value (which must redact its data).
trait GetDebug {
    async fn get_debug(&self, key: &str) -> String;
}

impl GetDebug for MemoryStore {
    async fn get_debug(&self, key: &str) -> String {
        use catalyst_connectors::TokenStore;
        format!("{:?}", self.get(key).await)
    }
}
