//! The reqwest-middleware layer against the emulator's sample CRM API.
#![cfg(feature = "middleware")]

mod common;

use catalyst_connectors::ExposeSecret;
use catalyst_connectors::middleware::{ScopeMismatch, ZohoAuth, api_url};
use common::{CLIENT_ID, CLIENT_SECRET, Setup};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use std::sync::{Arc, Mutex};

fn client(s: &Setup) -> (ClientWithMiddleware, catalyst_connectors::Connector) {
    let crm = s.connection().connector("crm").unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ZohoAuth::new(crm.clone()))
        .build();
    (client, crm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_run_is_replaced_once_and_the_call_succeeds() {
    let s = Setup::new().await;
    let (client, crm) = client(&s);
    let users: serde_json::Value = client
        .get(api_url("/crm/v8/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    let token = crm.access_token().await.unwrap();
    assert!(s.emulator.revoke(token.expose_secret()));
    let response = client
        .get(api_url("/crm/v8/users?page=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stats = s.emulator.stats();
    assert_eq!(stats.token_requests, 2, "exactly one extra mint");
    assert_eq!(
        (stats.api_ok, stats.api_unauthorized),
        (2, 1),
        "one 401, one retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_401s_on_one_revoked_token_cause_one_mint() {
    let s = Setup::new().await;
    s.emulator
        .set_latency(std::time::Duration::from_millis(100));
    let (client, crm) = client(&s);
    let token = crm.access_token().await.unwrap();
    s.emulator.revoke(token.expose_secret());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get(api_url("/crm/v8/users"))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let stats = s.emulator.stats();
    assert_eq!(
        stats.token_requests, 2,
        "exactly one extra mint for 50 rejected requests"
    );
    assert_eq!(stats.api_ok, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_mismatch_is_not_retried_and_says_why() {
    let s = Setup::new().await;
    let books_only = s
        .emulator
        .add_refresh_token(CLIENT_ID, "ZohoBooks.fullaccess.all");
    let connection = s
        .bare_builder()
        .json(serde_json::json!({"books": {
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": s.emulator.token_url(), "refresh_url": s.emulator.token_url(),
            "refresh_token": books_only}}))
        .build()
        .unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ZohoAuth::new(connection.connector("books").unwrap()))
        .build();
    let err = client
        .get(api_url("/crm/v8/users"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let mismatch = inner
        .downcast_ref::<ScopeMismatch>()
        .expect("a ScopeMismatch");
    assert_eq!(mismatch.code, "OAUTH_SCOPE_MISMATCH");
    assert!(
        err.to_string()
            .contains("authorize the connector again with the scopes"),
        "{err}"
    );
    let stats = s.emulator.stats();
    assert_eq!(
        (stats.token_requests, stats.api_unauthorized),
        (1, 1),
        "no new token, no retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_is_not_retried_and_the_401_comes_back() {
    let s = Setup::new().await;
    let (client, crm) = client(&s);
    let token = crm.access_token().await.unwrap();
    s.emulator.revoke(token.expose_secret());
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![Ok("{\"a\":"), Ok("1}")];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = client
        .get(api_url("/crm/v8/users"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        json["code"], "INVALID_TOKEN",
        "the original body is passed through"
    );
    let stats = s.emulator.stats();
    assert_eq!((stats.api_unauthorized, stats.api_ok), (1, 0), "no retry");
}

/// Records the final URL and answers without the network.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Middleware for Capture {
    async fn handle(
        &self,
        req: reqwest::Request,
        _: &mut http::Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.lock().unwrap().push(req.url().to_string());
        assert!(req.headers()["authorization"].is_sensitive());
        Ok(reqwest::Response::from(http::Response::new("{}")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_urls_go_to_the_tokens_api_domain() {
    let s = Setup::new().await;
    let mut settings = s.emulator.settings();
    settings.api_domain = Some("https://www.zohoapis.eu".into());
    s.emulator.set_settings(settings);
    let capture = Capture::default();
    let crm = s.connection().connector("crm").unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ZohoAuth::new(crm))
        .with(capture.clone())
        .build();
    client
        .get(api_url("crm/v8/users?type=AllUsers"))
        .send()
        .await
        .unwrap();
    client
        .get("https://www.zohoapis.com/crm/v8/org")
        .send()
        .await
        .unwrap();
    assert_eq!(
        *capture.0.lock().unwrap(),
        [
            "https://www.zohoapis.eu/crm/v8/users?type=AllUsers",
            "https://www.zohoapis.com/crm/v8/org"
        ]
    );
}
