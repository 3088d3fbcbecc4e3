//! End-to-end behaviour of one connector against the emulator.

mod common;

use catalyst_connectors::store::{TokenStore, TokenWrite};
use catalyst_connectors::{
    ConnectorConfig, Error, ExposeSecret, GrantCode, MemoryStore, TokenRecord, TokenSource,
    TransientKind,
};
use common::{CLIENT_ID, CLIENT_SECRET, Setup};
use std::sync::Arc;
use std::time::Duration;
use zoho_emulator::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_cause_one_token_request() {
    let s = Setup::new().await;
    s.emulator.set_latency(Duration::from_millis(200));
    let connection = s.connection();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let crm = connection.connector("crm").unwrap();
        tasks.push(tokio::spawn(async move { crm.access_token().await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let token = t.await.unwrap().expect("every caller gets a token");
        tokens.insert(token.expose_secret().to_owned());
    }
    assert_eq!(s.token_requests(), 1, "one mint for 1000 callers");
    assert_eq!(tokens.len(), 1, "every caller got the same token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_failure() {
    let s = Setup::new().await;
    s.emulator.set_latency(Duration::from_millis(100));
    s.emulator.inject_faults(
        Fault::ErrorWith200 {
            error: "invalid_code".into(),
            description: None,
        },
        1,
    );
    let connection = s.connection();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let crm = connection.connector("crm").unwrap();
        tasks.push(tokio::spawn(async move { crm.access_token().await }));
    }
    for t in tasks {
        let err = t.await.unwrap().expect_err("the one mint failed");
        assert!(
            matches!(err, Error::ReauthorizationRequired { .. }),
            "{err:?}"
        );
    }
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn token_carries_header_api_domain_and_times() {
    let s = Setup::new().await;
    let token = s
        .connection()
        .connector("crm")
        .unwrap()
        .access_token()
        .await
        .unwrap();
    assert_eq!(
        token.authorization_header(),
        format!("Zoho-oauthtoken {}", token.expose_secret())
    );
    assert_eq!(token.api_domain(), Some(s.emulator.url()));
    assert_eq!(token.source(), TokenSource::Minted);
    let lifetime = token
        .expires_at()
        .duration_since(token.issued_at().unwrap())
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(3600));
    let until_refresh = token
        .refresh_at()
        .duration_since(token.issued_at().unwrap())
        .unwrap();
    assert_eq!(until_refresh, Duration::from_secs(45 * 60));
    // The token works against the protected API.
    let users = reqwest::Client::new()
        .get(format!("{}/crm/v8/users", s.emulator.url()))
        .header("Authorization", token.authorization_header())
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_exactly_once() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    let first = crm.access_token().await.unwrap();
    for _ in 0..10 {
        crm.access_token().await.unwrap();
    }
    assert_eq!(s.token_requests(), 1);
    s.advance(Duration::from_secs(3600));
    let second = crm.access_token().await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            crm.access_token().await.unwrap().expose_secret(),
            second.expose_secret()
        );
    }
    assert_eq!(s.token_requests(), 2, "exactly one refresh after expiry");
    assert_ne!(first.expose_secret(), second.expose_secret());
}

#[tokio::test]
async fn short_lived_tokens_are_reused_for_three_quarters_of_their_life() {
    let s = Setup::new().await;
    s.emulator.set_token_lifetime(Duration::from_secs(600));
    let crm = s.connection().connector("crm").unwrap();
    crm.access_token().await.unwrap();
    for _ in 0..449 {
        s.advance(Duration::from_secs(1));
        crm.access_token().await.unwrap();
    }
    assert_eq!(s.token_requests(), 1, "reused for 449 s");
    s.advance(Duration::from_secs(1));
    crm.access_token().await.unwrap();
    common::settle(&crm).await;
    assert_eq!(s.token_requests(), 2, "refreshed at 450 s");
}

#[tokio::test]
async fn refresh_in_moves_the_refresh_point() {
    let s = Setup::new().await;
    let mut config = s.config();
    config["crm"]["refresh_in"] = "60".into();
    let crm = common::hermetic()
        .json(config)
        .clock(s.clock.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(59));
    crm.access_token().await.unwrap();
    assert_eq!(s.token_requests(), 1);
    s.advance(Duration::from_secs(1));
    crm.access_token().await.unwrap();
    common::settle(&crm).await;
    assert_eq!(s.token_requests(), 2);
}

#[tokio::test]
async fn http_200_with_error_is_a_typed_error_with_zohos_code() {
    let s = Setup::new().await;
    s.emulator.inject_faults(
        Fault::ErrorWith200 {
            error: "invalid_client_secret".into(),
            description: Some("bad secret".into()),
        },
        1,
    );
    let crm = s.connection().connector("crm").unwrap();
    let err = crm.access_token().await.unwrap_err();
    match &err {
        Error::InvalidClient {
            connector,
            code,
            description,
        } => {
            assert_eq!(connector, "crm");
            assert_eq!(code, "invalid_client_secret");
            assert_eq!(description.as_deref(), Some("bad secret"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("connector `crm`"), "{err}");
}

#[tokio::test]
async fn revoked_refresh_token_needs_reauthorization() {
    let s = Setup::new().await;
    assert!(s.emulator.revoke(&s.refresh_token));
    let err = s
        .connection()
        .connector("crm")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(err.needs_reauthorization(), "{err:?}");
    assert!(
        err.to_string().contains("re-authorize connector `crm`"),
        "{err}"
    );
}

#[tokio::test]
async fn zoho_throttling_is_reported_as_throttled() {
    let s = Setup::new().await;
    s.emulator.inject_faults(
        Fault::ErrorWith200 {
            error: "Access Denied".into(),
            description: Some("Token creation throttle limit reached. Please reuse the valid tokens you currently have.".into()),
        },
        1,
    );
    let crm = s.connection().connector("crm").unwrap();
    let err = crm.access_token().await.unwrap_err();
    assert!(
        matches!(err, Error::Throttled { ref code, .. } if code == "Access Denied"),
        "{err:?}"
    );
    assert_eq!(s.token_requests(), 1, "throttling is not retried at once");
}

#[tokio::test]
async fn the_governor_stops_the_eleventh_mint_before_zoho_does() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    for _ in 0..10 {
        crm.force_refresh().await.unwrap();
    }
    let err = crm.force_refresh().await.unwrap_err();
    match &err {
        Error::Throttled {
            code,
            retry_after: Some(after),
            ..
        } => {
            assert_eq!(code, "mint limit");
            assert!(*after <= Duration::from_secs(600), "{after:?}");
        }
        other => panic!("expected the governor's Throttled, got {other:?}"),
    }
    assert!(err.to_string().contains("a slot frees in"), "{err}");
    assert_eq!(s.token_requests(), 10, "the 11th never reached Zoho");
    assert_eq!(
        s.emulator.stats().throttled,
        0,
        "Zoho's lockout never tripped"
    );
    // After the window slides, minting works again.
    s.advance(Duration::from_secs(601));
    crm.force_refresh().await.unwrap();
    assert_eq!(s.token_requests(), 11);
}

#[tokio::test]
async fn legacy_expires_in_sec_answer_is_understood() {
    let s = Setup::new().await;
    s.emulator.inject_faults(Fault::LegacyExpiry, 1);
    let token = s
        .connection()
        .connector("crm")
        .unwrap()
        .access_token()
        .await
        .unwrap();
    let lifetime = token
        .expires_at()
        .duration_since(token.issued_at().unwrap())
        .unwrap();
    assert_eq!(
        lifetime,
        Duration::from_secs(3600),
        "expires_in read as milliseconds"
    );
}

#[tokio::test]
async fn server_errors_and_unreachable_endpoints_are_transient() {
    let s = Setup::new().await;
    // A waiting caller tries 3 times at once; all 3 fail here.
    s.emulator.inject_faults(Fault::Http500, 3);
    let crm = s.connection().connector("crm").unwrap();
    let err = crm.access_token().await.unwrap_err();
    assert_eq!(s.token_requests(), 3);
    assert!(
        matches!(
            err,
            Error::Transient {
                kind: TransientKind::ServerError(500),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    // Until the backoff passes, callers get the error at once, without a request.
    let again = crm.access_token().await.unwrap_err();
    assert!(matches!(again, Error::Transient { .. }), "{again:?}");
    assert_eq!(s.token_requests(), 3);
    // After it, the next call tries again and succeeds.
    s.advance(Duration::from_secs(2));
    crm.access_token().await.unwrap();
    assert_eq!(s.token_requests(), 4);

    let dead = common::from_json(&serde_json::json!({"x": {
        "client_id": "a", "client_secret": "b",
        "auth_url": "http://127.0.0.1:9/oauth/v2/token", "refresh_url": "http://127.0.0.1:9/oauth/v2/token",
        "refresh_token": "r"}}))
    .unwrap();
    let err = dead
        .connector("x")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                kind: TransientKind::Network,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A connection dropped mid-answer is a network failure: retried at once by a waiting caller,
/// an error only when every try is cut.
#[tokio::test]
async fn a_connection_reset_mid_answer_is_transient_and_retried() {
    let s = Setup::new().await;
    s.emulator.inject_faults(Fault::Reset, 2);
    let crm = s.connection().connector("crm").unwrap();
    crm.access_token().await.unwrap();
    assert_eq!(s.token_requests(), 3, "two resets, then the answer");
    assert_eq!(s.emulator.stats().by_grant["refresh_token"]["reset"], 2);

    s.emulator.inject_faults(Fault::Reset, 3);
    let err = crm.force_refresh().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                kind: TransientKind::Network,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_hung_endpoint_times_out() {
    let s = Setup::new().await;
    s.emulator.inject_faults(Fault::Hang { millis: 5_000 }, 3);
    let crm = s
        .builder()
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let err = crm.access_token().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                kind: TransientKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        s.token_requests(),
        3,
        "a waiting caller's attempts are bounded (3), each cut by the timeout"
    );
}

#[tokio::test]
async fn clones_and_lookups_share_one_token() {
    let s = Setup::new().await;
    let connection = s.connection();
    let a = connection.connector("crm").unwrap();
    let b = connection.clone().connector("crm").unwrap();
    let ta = a.access_token().await.unwrap();
    let tb = b.clone().access_token().await.unwrap();
    assert_eq!(ta.expose_secret(), tb.expose_secret());
    assert_eq!(s.token_requests(), 1);
    assert!(matches!(
        connection.connector("nope"),
        Err(Error::UnknownConnector { .. })
    ));
}

#[tokio::test]
async fn two_connections_share_through_a_store() {
    let s = Setup::new().await;
    let store = Arc::new(MemoryStore::new());
    let one = s
        .builder()
        .shared_store(store.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let two = s
        .builder()
        .shared_store(store.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let t1 = one.access_token().await.unwrap();
    let t2 = two.access_token().await.unwrap();
    assert_eq!(t1.expose_secret(), t2.expose_secret());
    assert_eq!(t2.source(), TokenSource::Store);
    assert_eq!(s.token_requests(), 1);
    // The record is in the SDK format under the SDK key.
    let stored = store.get(&one.cache_key()).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(&stored.data).unwrap();
    for field in [
        "access_token",
        "expires_at",
        "expiry_in_seconds",
        "expires_in",
        "api_domain",
        "issued_at",
        "fingerprint",
    ] {
        assert!(json.get(field).is_some(), "record lacks {field}");
    }
    assert!(one.cache_key().starts_with("ZC_CONN_crm:"));
}

#[tokio::test]
async fn a_record_for_other_credentials_is_a_miss() {
    let s = Setup::new().await;
    let store = Arc::new(MemoryStore::new());
    let crm = s
        .builder()
        .shared_store(store.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    // Plant a fresh record under this connector's key, minted for another refresh token (as a
    // 20-bit hash collision would).
    let now = catalyst_connectors::system_time_to_millis(std::time::SystemTime::now());
    let planted = TokenRecord {
        access_token: "1000.someone-elses-token".into(),
        refresh_at: now + 3_000_000,
        expires_at: now + 3_600_000,
        lifetime_secs: 3600,
        api_domain: None,
        issued_at: Some(now),
        fingerprint: Some(catalyst_connectors::key::fingerprint(
            CLIENT_ID,
            "1000.other-user",
            "x",
        )),
    };
    store
        .compare_and_set(TokenWrite::new(
            &crm.cache_key(),
            None,
            &planted.to_json(),
            Duration::from_secs(3600),
        ))
        .await
        .unwrap();
    let token = crm.access_token().await.unwrap();
    assert_ne!(token.expose_secret(), "1000.someone-elses-token");
    assert_eq!(token.source(), TokenSource::Minted);
    assert_eq!(s.token_requests(), 1);
    // Our record replaced it.
    let stored = store.get(&crm.cache_key()).await.unwrap().unwrap();
    assert_eq!(
        TokenRecord::from_json(&stored.data)
            .unwrap()
            .access_token
            .expose_secret(),
        token.expose_secret()
    );
}

#[tokio::test]
async fn a_damaged_record_is_a_miss_and_is_overwritten() {
    let s = Setup::new().await;
    let store = Arc::new(MemoryStore::new());
    let crm = s
        .builder()
        .shared_store(store.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    store
        .compare_and_set(TokenWrite::new(
            &crm.cache_key(),
            None,
            "{not json",
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let token = crm.access_token().await.unwrap();
    let stored = store.get(&crm.cache_key()).await.unwrap().unwrap();
    assert_eq!(stored.generation, 2);
    assert_eq!(
        TokenRecord::from_json(&stored.data)
            .unwrap()
            .access_token
            .expose_secret(),
        token.expose_secret()
    );
}

#[tokio::test]
async fn invalidate_and_force_refresh_mint_new_tokens() {
    let s = Setup::new().await;
    let store = Arc::new(MemoryStore::new());
    let crm = s
        .builder()
        .shared_store(store.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let first = crm.access_token().await.unwrap();
    crm.invalidate().await.unwrap();
    assert!(
        store.get(&crm.cache_key()).await.unwrap().is_none(),
        "invalidate removes the stored record"
    );
    let second = crm.access_token().await.unwrap();
    assert_ne!(first.expose_secret(), second.expose_secret());
    let third = crm.force_refresh().await.unwrap();
    assert_ne!(second.expose_secret(), third.expose_secret());
    assert_eq!(
        crm.access_token().await.unwrap().expose_secret(),
        third.expose_secret()
    );
    assert_eq!(s.token_requests(), 3);
}

#[tokio::test]
async fn generate_access_token_exchanges_a_code_and_adopts_the_refresh_token() {
    let s = Setup::new().await;
    let config = ConnectorConfig::builder("crm")
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .token_url(s.emulator.token_url())
        .build()
        .unwrap();
    let crm = common::hermetic()
        .connector(config)
        .clock(s.clock.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let err = crm.access_token().await.unwrap_err();
    assert!(matches!(err, Error::MissingRefreshToken { .. }), "{err:?}");
    let key_before = crm.cache_key();

    let code = GrantCode::new(
        s.emulator
            .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None),
    );
    let generated = crm.generate_access_token(&code).await.unwrap();
    let refresh_token = generated
        .refresh_token
        .expect("offline exchange returns a refresh token");
    assert_ne!(
        crm.cache_key(),
        key_before,
        "the key covers the refresh token"
    );
    assert_eq!(
        crm.access_token().await.unwrap().expose_secret(),
        generated.access_token.expose_secret()
    );
    // After expiry the adopted refresh token mints.
    s.advance(Duration::from_secs(3600));
    crm.access_token().await.unwrap();
    let stats = s.emulator.stats();
    assert_eq!(stats.by_grant["authorization_code"]["ok"], 1);
    assert_eq!(stats.by_grant["refresh_token"]["ok"], 1);
    // A code is single-use.
    let err = crm.generate_access_token(&code).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ReauthorizationRequired {
                grant: "grant code",
                ..
            }
        ),
        "{err:?}"
    );
    let _ = refresh_token;
}

#[tokio::test]
async fn code_exchange_sends_the_redirect_uri_when_configured() {
    let s = Setup::new().await;
    let redirect = "http://127.0.0.1:8765/callback";
    let crm = ConnectorConfig::builder("crm")
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .token_url(s.emulator.token_url())
        .redirect_url(redirect)
        .build()
        .unwrap();
    let crm = common::hermetic()
        .connector(crm)
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let code = GrantCode::new(s.emulator.add_grant_code(
        CLIENT_ID,
        "ZohoCRM.users.READ",
        Some(redirect),
    ));
    crm.generate_access_token(&code).await.unwrap();
}

#[tokio::test]
async fn expires_in_in_config_caps_the_lifetime() {
    let s = Setup::new().await;
    let mut config = s.config();
    config["crm"]["expires_in"] = 1200.into();
    let crm = common::hermetic()
        .json(config)
        .clock(s.clock.clone())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let token = crm.access_token().await.unwrap();
    let lifetime = token
        .expires_at()
        .duration_since(token.issued_at().unwrap())
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(1200));
}
