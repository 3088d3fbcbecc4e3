//! Per-user connectors from one template: isolation, the consent flow, revocation, bounds.

mod common;

use catalyst_connectors::key;
use catalyst_connectors::users::{ConsentFlow, StateKey};
use catalyst_connectors::{Connector, Error, ExposeSecret, GrantCode, MemoryStore};
use common::{CLIENT_ID, CLIENT_SECRET, Setup};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const REDIRECT: &str = "http://127.0.0.1:9/zoho/callback";

fn template(s: &Setup) -> Connector {
    s.bare_builder()
        .json(
            json!({"crm": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": s.emulator.token_url(), "refresh_url": s.emulator.token_url()}}),
        )
        .build()
        .unwrap()
        .connector("crm")
        .unwrap()
}

/// What the user's browser does: accept on the consent page; returns the redirect's parameters.
async fn consent(s: &Setup, url: &str) -> HashMap<String, String> {
    let url = url::Url::parse(url).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/oauth/v2/auth/approve", s.emulator.url()))
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
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(REDIRECT));
    location.query_pairs().into_owned().collect()
}

async fn connect(s: &Setup, flow: &ConsentFlow, user: &str) -> Connector {
    let start = flow.start(user, &["ZohoCRM.users.READ"]).unwrap();
    let back = consent(s, &start.url).await;
    assert_eq!(back["state"], start.state);
    let (who, connector) = flow
        .complete(
            &back["state"],
            &GrantCode::new(back["code"].clone()),
            back.get("accounts-server").map(String::as_str),
        )
        .await
        .unwrap();
    assert_eq!(who, user);
    connector
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_of_one_template_each_get_only_their_own_token() {
    let s = Setup::new().await;
    s.emulator.set_latency(Duration::from_millis(50));
    let crm = template(&s);
    let flow = ConsentFlow::new(crm.clone(), REDIRECT, StateKey::generate());
    let alice = connect(&s, &flow, "alice").await;
    let bob = connect(&s, &flow, "bob@example.com").await;
    assert_eq!(alice.name(), "crm.alice");
    assert!(
        bob.name().starts_with("crm.h") && bob.name().len() == 16,
        "{}",
        bob.name()
    );
    assert_ne!(alice.cache_key(), bob.cache_key());
    s.advance(Duration::from_secs(3600)); // both must mint with their own refresh tokens
    let mut tasks = Vec::new();
    for i in 0..100 {
        let user = if i % 2 == 0 {
            "alice"
        } else {
            "bob@example.com"
        };
        let c = crm.for_user(user).unwrap();
        tasks.push(tokio::spawn(async move {
            (user, c.access_token().await.unwrap())
        }));
    }
    let mut minted_by: HashMap<&str, std::collections::HashSet<String>> = HashMap::new();
    for t in tasks {
        let (user, token) = t.await.unwrap();
        let rt = s
            .emulator
            .refresh_token_of(token.expose_secret())
            .expect("minted by the emulator");
        minted_by.entry(user).or_default().insert(rt);
    }
    assert_eq!(minted_by["alice"].len(), 1);
    assert_eq!(minted_by["bob@example.com"].len(), 1);
    assert_ne!(
        minted_by["alice"], minted_by["bob@example.com"],
        "each user's tokens come from their own refresh token"
    );
    assert_eq!(
        s.emulator.stats().by_grant["refresh_token"]["ok"],
        2,
        "one mint per user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_20_bit_key_collision_never_cross_serves() {
    let s = Setup::new().await;
    let url = s.emulator.token_url();
    let fields = |rt: &str| {
        [
            rt.to_owned(),
            CLIENT_ID.to_owned(),
            CLIENT_SECRET.to_owned(),
            url.clone(),
            url.clone(),
            String::new(),
        ]
    };
    let key_of = |rt: &str| {
        let f = fields(rt);
        key::sdk_key("crm", &f.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let alice_rt = s.refresh_token.clone();
    let target = key_of(&alice_rt);
    // Brute-force a second refresh token whose SDK key is the same (about 2^20 tries).
    let bob_rt = (0u64..)
        .map(|i| format!("1000.collision{i}"))
        .find(|rt| key_of(rt) == target)
        .unwrap();
    s.emulator
        .add_refresh_token_labeled(CLIENT_ID, &bob_rt, "ZohoCRM.users.READ", "bob");
    let store = Arc::new(MemoryStore::new());
    let connection = |rt: &str| {
        common::hermetic_without_store()
            .shared_store(store.clone())
            .clock(s.clock.clone())
            .json(
                json!({"crm": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "auth_url": url, "refresh_url": url, "refresh_token": rt}}),
            )
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    let alice = connection(&alice_rt);
    let bob = connection(&bob_rt);
    assert_eq!(alice.cache_key(), bob.cache_key(), "the keys collide");
    for round in 0..3 {
        for (who, c, rt) in [("alice", &alice, &alice_rt), ("bob", &bob, &bob_rt)] {
            c.evict_memory(); // read the shared store every time
            let token = c.access_token().await.unwrap();
            assert_eq!(
                s.emulator.refresh_token_of(token.expose_secret()).as_ref(),
                Some(rt),
                "round {round}: {who} was served a token minted for the other"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_replayed_and_foreign_states_are_refused() {
    let s = Setup::new().await;
    let crm = template(&s);
    let flow = ConsentFlow::new(crm.clone(), REDIRECT, StateKey::generate());
    let start = flow.start("alice", &["ZohoCRM.users.READ"]).unwrap();
    let back = consent(&s, &start.url).await;
    let code = GrantCode::new(back["code"].clone());
    let refused = |e: Error, why: &str| match e {
        Error::InvalidState { reason, .. } => assert_eq!(reason, why),
        other => panic!("expected InvalidState({why}), got {other:?}"),
    };
    // Forged: another user's id with the same signature.
    let (payload, tag) = start.state.split_once('.').unwrap();
    let forged_payload = base64_swap_user(payload, "mallory");
    refused(
        flow.complete(&format!("{forged_payload}.{tag}"), &code, None)
            .await
            .unwrap_err(),
        "bad signature",
    );
    // Signed by another key.
    let other = ConsentFlow::new(crm.clone(), REDIRECT, StateKey::generate());
    refused(
        other.complete(&start.state, &code, None).await.unwrap_err(),
        "bad signature",
    );
    // The real one works once, and only once.
    flow.complete(&start.state, &code, None).await.unwrap();
    refused(
        flow.complete(&start.state, &code, None).await.unwrap_err(),
        "already used",
    );
    // Expired.
    let late = flow.start("bob", &["ZohoCRM.users.READ"]).unwrap();
    s.advance(Duration::from_secs(601));
    refused(
        flow.complete(&late.state, &code, None).await.unwrap_err(),
        "expired",
    );
    // An accounts-server that is neither Zoho's nor the configured one never gets the code.
    let fresh = flow.start("carol", &["ZohoCRM.users.READ"]).unwrap();
    let err = flow
        .complete(&fresh.state, &code, Some("https://evil.example"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown accounts-server"), "{err}");
}

fn base64_swap_user(payload: &str, user: &str) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut v: serde_json::Value = serde_json::from_slice(&e.decode(payload).unwrap()).unwrap();
    v["u"] = user.into();
    e.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_gets_a_typed_error_and_others_are_unaffected() {
    let s = Setup::new().await;
    let crm = template(&s);
    let flow = ConsentFlow::new(crm.clone(), REDIRECT, StateKey::generate());
    let alice = connect(&s, &flow, "alice").await;
    let bob = connect(&s, &flow, "bob").await;
    let bob_rt = s
        .emulator
        .refresh_token_of(bob.access_token().await.unwrap().expose_secret())
        .unwrap();
    s.emulator.revoke(&bob_rt);
    s.advance(Duration::from_secs(3600));
    assert!(alice.access_token().await.is_ok());
    let err = crm
        .for_user("bob")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ReauthorizationRequired { connector, .. } if connector == "crm.bob"),
        "{err:?}"
    );
    assert!(alice.access_token().await.is_ok(), "alice is unaffected");

    // Disconnect alice: revoked at Zoho, gone locally.
    let before = s.emulator.stats().revocations;
    flow.disconnect("alice").await.unwrap();
    assert_eq!(s.emulator.stats().revocations, before + 1);
    let err = crm
        .for_user("alice")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingRefreshToken { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_users_are_bounded_and_evicted_users_reload_from_the_store() {
    let s = Setup::new().await;
    let crm = s
        .bare_builder()
        .user_capacity(50)
        .json(
            json!({"crm": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "auth_url": s.emulator.token_url(), "refresh_url": s.emulator.token_url()}}),
        )
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let flow = ConsentFlow::new(crm.clone(), REDIRECT, StateKey::generate());
    let first = connect(&s, &flow, "user0").await;
    let token = first.access_token().await.unwrap();
    for i in 1..500 {
        crm.for_user(&format!("user{i}")).unwrap();
    }
    assert!(
        crm.resident_users() <= 60,
        "{} resident",
        crm.resident_users()
    );
    // user0 was evicted: a new connector, the same token from the store, no mint.
    let mints = s.emulator.stats().token_requests;
    let again = crm.for_user("user0").unwrap().access_token().await.unwrap();
    assert_eq!(again.expose_secret(), token.expose_secret());
    assert_eq!(s.emulator.stats().token_requests, mints);
    assert!(matches!(
        crm.for_user("user0").unwrap().for_user("x"),
        Err(Error::InvalidUser { .. })
    ));
}
