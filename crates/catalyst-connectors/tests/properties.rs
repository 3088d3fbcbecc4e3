//! Property test over random interleavings of callers, clock steps, forced refreshes and endpoint
//! faults, with two users' connectors sharing one store: never an expired token served, never a
//! token minted for the other user's refresh token, never more mints than the governor's limit
//! (so Zoho's own throttle never answers).

mod common;

use catalyst_connectors::{
    Clock, Connection, ExposeSecret, ManualClock, MemoryStore, system_time_to_millis,
};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use zoho_emulator::Fault;

#[derive(Debug, Clone)]
enum Op {
    /// `n` concurrent callers of user `u`'s connector.
    Call {
        user: usize,
        n: usize,
    },
    /// The clock moves (both sides).
    Advance(u64),
    Force {
        user: usize,
    },
    Fault(u8),
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..20usize).prop_map(|(user, n)| Op::Call { user, n }),
        3 => prop_oneof![1..120u64, 600..1200u64, 2000..4000u64].prop_map(Op::Advance),
        1 => (0..2usize).prop_map(|user| Op::Force { user }),
        1 => (0..3u8).prop_map(Op::Fault),
        1 => Just(Op::Heal),
    ]
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let emulator = zoho_emulator::start().await.expect("emulator");
    emulator.add_client(common::CLIENT_ID, common::CLIENT_SECRET);
    let refresh_tokens = [
        emulator.add_refresh_token(common::CLIENT_ID, "s"),
        emulator.add_refresh_token(common::CLIENT_ID, "s"),
    ];
    let clock = ManualClock::starting_now();
    let connector = |name: &str, rt: &str| {
        serde_json::json!({ name: {
            "client_id": common::CLIENT_ID, "client_secret": common::CLIENT_SECRET,
            "auth_url": emulator.token_url(), "refresh_url": emulator.token_url(), "refresh_token": rt,
        }})
    };
    let connection = Connection::builder()
        .ignore_env()
        .store(MemoryStore::with_clock(Arc::new(clock.clone())))
        .clock(clock.clone())
        .request_timeout(Duration::from_millis(100))
        .backoff(Duration::from_millis(500), Duration::from_secs(60))
        .json(connector("alice", &refresh_tokens[0]))
        .json(connector("bob", &refresh_tokens[1]))
        .build()
        .expect("connection");
    let users = [
        connection.connector("alice").expect("alice"),
        connection.connector("bob").expect("bob"),
    ];
    for op in ops {
        match op {
            Op::Call { user, n } => {
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        let c = users[user].clone();
                        tokio::spawn(async move { c.access_token().await })
                    })
                    .collect();
                for t in tasks {
                    if let Ok(token) = t.await.expect("task") {
                        let now = clock.now_millis();
                        prop_assert!(
                            system_time_to_millis(token.expires_at()) > now,
                            "expired token served"
                        );
                        prop_assert!(
                            emulator.is_live(token.expose_secret()),
                            "a dead token was served"
                        );
                        let minted_by = emulator.refresh_token_of(token.expose_secret());
                        prop_assert_eq!(
                            minted_by.as_deref(),
                            Some(refresh_tokens[user].as_str()),
                            "a token minted for the other user was served"
                        );
                    }
                }
            }
            Op::Advance(secs) => {
                clock.advance(Duration::from_secs(secs));
                emulator.advance(Duration::from_secs(secs));
            }
            Op::Force { user } => {
                let _ = users[user].force_refresh().await;
            }
            Op::Fault(kind) => emulator.set_fault(Some(match kind {
                0 => Fault::Http500,
                1 => Fault::Hang { millis: 300 },
                _ => Fault::ErrorWith200 {
                    error: "Access Denied".into(),
                    description: None,
                },
            })),
            Op::Heal => emulator.set_fault(None),
        }
        for u in &users {
            common::settle(u).await;
        }
    }
    prop_assert_eq!(
        emulator.stats().throttled,
        0,
        "more mints than Zoho's limit were attempted"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(check(ops))?;
    }
}
