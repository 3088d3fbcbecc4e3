//! Unit tests of the acquisition: a counting endpoint (the emulator) and a memory store.
use super::*;
use crate::clock::SystemClock;
use crate::oauth::{HttpTimeouts, TokenClient};
use crate::store::{MemoryStore, TokenStore};
use crate::{ConnectorConfig, Error};
use zoho_emulator::{Emulator, Fault};

/// An acquisition on a memory store against the emulator (which counts token requests).
async fn setup(limit: u32) -> (Emulator, Acquisition, Arc<dyn TokenStore>) {
    let emulator = zoho_emulator::start().await.unwrap();
    emulator.add_client("1000.A", "secret");
    let rt = emulator.add_refresh_token("1000.A", "ZohoCRM.users.READ");
    let config = ConnectorConfig::builder("crm")
        .client_id("1000.A")
        .client_secret("secret")
        .token_url(emulator.token_url())
        .refresh_token(rt)
        .build()
        .unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
    let runtime = Arc::new(Runtime {
        store: Arc::clone(&store),
        clock: Arc::new(SystemClock),
        client: TokenClient::new(HttpTimeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(10),
        })
        .unwrap(),
        options: super::super::runtime::Options {
            mint_limit: limit,
            ..Default::default()
        },
        unrecorded: Arc::default(),
    });
    let creds = Credentials::new("crm", &config, config.refresh_token.clone());
    let acq = Acquisition::new(
        Arc::new(config),
        "crm".into(),
        None,
        creds,
        runtime,
        Arc::new(Metrics::new("crm")),
    );
    (emulator, acq, store)
}

#[tokio::test]
async fn one_mint_then_the_store_serves_and_a_new_token_is_minted_only_when_wanted() {
    let (emulator, acq, _store) = setup(10).await;
    let (first, outcome) = acq.acquire(Want::Any, None).await;
    let first = first.unwrap().token;
    assert!(matches!(outcome, Outcome::Minted));
    assert_eq!(emulator.stats().token_requests, 1);

    // The store has it now: any, lasting and newer-than-nothing are served from there.
    for want in [
        Want::Any,
        Want::Lasting(Duration::from_secs(60)),
        Want::Newer,
    ] {
        let (got, outcome) = acq.acquire(want, None).await;
        assert_eq!(got.unwrap().token.expose_secret(), first.expose_secret());
        assert!(matches!(outcome, Outcome::Found), "{want:?}");
    }
    // Newer than the one held, or lasting longer than tokens live: a mint.
    let (_, outcome) = acq.acquire(Want::Newer, Some(first.clone())).await;
    assert!(matches!(outcome, Outcome::Minted));
    let (_, outcome) = acq.acquire(Want::New, None).await;
    assert!(matches!(outcome, Outcome::Minted));
    assert_eq!(emulator.stats().token_requests, 3);
}

#[tokio::test]
async fn the_governor_refuses_before_the_endpoint_is_asked() {
    let (emulator, acq, _store) = setup(2).await;
    for _ in 0..2 {
        acq.acquire(Want::New, None).await.0.unwrap();
    }
    let (refused, outcome) = acq.acquire(Want::New, None).await;
    assert!(
        matches!(&refused, Err(Error::Throttled { code, recorded: false, .. }) if code == "mint limit"),
        "{:?}",
        refused.err()
    );
    assert!(matches!(outcome, Outcome::Failed(_)));
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test]
async fn a_failed_refresh_serves_the_held_token_and_a_revocation_is_shared_typed() {
    let (emulator, acq, _store) = setup(10).await;
    let held = acq.acquire(Want::Any, None).await.0.unwrap().token;
    emulator.set_fault(Some(Fault::Http500));
    let (got, outcome) = acq.acquire(Want::Newer, Some(held.clone())).await;
    assert_eq!(got.unwrap().token.expose_secret(), held.expose_secret());
    assert!(matches!(outcome, Outcome::Failed(Error::Transient { .. })));
    emulator.set_fault(None);

    // Zoho rejects the refresh token: the refusal is recorded where every process reads it,
    // and the next acquisition is refused from there without a request.
    let rt = acq.creds().refresh_token.clone().unwrap();
    assert!(emulator.revoke(rt.expose_secret()));
    let before = emulator.stats().token_requests;
    let (first, _) = acq.acquire(Want::New, None).await;
    let first = first.err().unwrap();
    assert!(matches!(
        first,
        Error::ReauthorizationRequired {
            recorded: false,
            ..
        }
    ));
    // What the connector does after a failed flight (a lease holder does it itself).
    let retry_at = acq.now() + 30_000;
    acq.save_failure(&first, 1, retry_at).await;
    let (second, _) = acq.acquire(Want::New, None).await;
    let second = second.err().unwrap();
    assert!(
        matches!(&second, Error::ReauthorizationRequired { recorded: true, code, .. } if code != "recorded"),
        "{second:?}"
    );
    assert!(!second.to_string().contains("recorded:"), "{second}");
    assert_eq!(emulator.stats().token_requests, before + 1);
    assert_eq!(
        acq.recorded_failure().await.map(|f| f.kind),
        Some(crate::ErrorKind::ReauthorizationRequired)
    );
}
