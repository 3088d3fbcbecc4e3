//! Nobody waits, nothing breaks: fault injection against the emulator on a manual clock. Each test
//! counts token requests at the emulator, caller errors, and the simulated time to recovery.

mod common;

use catalyst_connectors::{
    Clock, Connector, Error, ExposeSecret, TokenState, system_time_to_millis,
};
use common::Setup;
use std::time::{Duration, Instant};
use zoho_emulator::Fault;

const SEC: Duration = Duration::from_secs(1);

/// Calls the connector `callers` times, checks every token served is valid now, lets any
/// background refresh finish, and returns the number of errors.
async fn tick(s: &Setup, crm: &Connector, callers: usize) -> (usize, Vec<Error>) {
    let mut errors = Vec::new();
    for _ in 0..callers {
        match crm.access_token().await {
            Ok(t) => assert!(
                system_time_to_millis(t.expires_at()) > s.clock.now_millis(),
                "an expired token was served"
            ),
            Err(e) => errors.push(e),
        }
    }
    common::settle(crm).await;
    (callers - errors.len(), errors)
}

/// Steps `seconds` simulated seconds, one caller per second; returns (errors, request times in
/// seconds since the start of the run).
async fn run(s: &Setup, crm: &Connector, seconds: u64) -> (usize, Vec<u64>) {
    let mut errors = 0;
    let mut requests = Vec::new();
    for second in 0..seconds {
        let before = s.token_requests();
        errors += tick(s, crm, 1).await.1.len();
        for _ in before..s.token_requests() {
            requests.push(second);
        }
        s.advance(SEC);
    }
    (errors, requests)
}

fn gaps(times: &[u64]) -> Vec<u64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_for_20_minutes_from_the_refresh_point_causes_no_caller_error() {
    // The refresh point is 30 minutes into the 60-minute token, so a 20-minute outage from it
    // ends before the token expires. (With the default 15-minute margin a 20-minute outage must
    // outlast the token: see the next test.)
    let s = Setup::new().await;
    let mut config = s.config();
    config["crm"]["refresh_in"] = 1800.into();
    let crm = s
        .bare_builder()
        .json(config)
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let first = crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(1800));
    s.emulator.set_fault(Some(Fault::Http500));
    let (errors, requests) = run(&s, &crm, 20 * 60).await;
    assert_eq!(errors, 0, "no caller saw an error during the outage");
    let spacing = gaps(&requests);
    assert!(
        requests.len() >= 5 && requests.len() <= 60,
        "attempts during 20 min: {requests:?}"
    );
    assert!(
        spacing.iter().all(|g| *g <= 121),
        "no gap beyond the 120 s cap: {spacing:?}"
    );
    assert_eq!(
        crm.access_token().await.unwrap().expose_secret(),
        first.expose_secret()
    );

    // The endpoint returns: recovery within one backoff step.
    s.emulator.set_fault(None);
    let mut waited = 0;
    while crm.access_token().await.unwrap().expose_secret() == first.expose_secret() {
        common::settle(&crm).await;
        s.advance(SEC);
        waited += 1;
        assert!(waited <= 121, "not recovered within one backoff step");
    }
    eprintln!(
        "20-min outage: {} attempts, gaps {:?} s, recovered {} s after the endpoint returned",
        requests.len(),
        spacing,
        waited
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_margin_fails_callers_only_after_expiry_and_promptly() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(45 * 60)); // the refresh point
    s.emulator.set_fault(Some(Fault::Http500));
    let (errors_before_expiry, _) = run(&s, &crm, 15 * 60).await;
    assert_eq!(
        errors_before_expiry, 0,
        "the stale token is served until it expires"
    );
    // Expired and still down: errors, typed and without a request per caller.
    let before = s.token_requests();
    let started = Instant::now();
    let mut errors = Vec::new();
    for _ in 0..5 * 60 {
        errors.extend(tick(&s, &crm, 1).await.1);
        s.advance(SEC);
    }
    assert_eq!(errors.len(), 300, "no token exists");
    assert!(
        errors.iter().all(|e| matches!(e, Error::Transient { .. })),
        "{errors:?}"
    );
    let attempts = s.token_requests() - before;
    assert!(
        attempts <= 3 * 12,
        "callers get the remembered error, not a request each: {attempts}"
    );
    eprintln!(
        "5 min expired and down: {attempts} requests for 300 callers in {:?}",
        started.elapsed()
    );
    s.emulator.set_fault(None);
    let mut waited = 0;
    while crm.access_token().await.is_err() {
        s.advance(SEC);
        waited += 1;
        assert!(waited <= 121, "not recovered within one backoff step");
    }
    eprintln!("recovered {waited} s after the endpoint returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_500_in_the_stale_window_are_absorbed() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    let first = crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(45 * 60));
    s.emulator.inject_faults(Fault::Http500, 5);
    let mut errors = 0;
    let mut seconds = 0;
    while crm.access_token().await.unwrap().expose_secret() == first.expose_secret() {
        errors += tick(&s, &crm, 10).await.1.len();
        s.advance(SEC);
        seconds += 1;
        assert!(seconds < 15 * 60, "never recovered");
    }
    assert_eq!(errors, 0);
    assert_eq!(
        s.token_requests(),
        1 + 5 + 1,
        "five failures, then one mint"
    );
    eprintln!("5 × HTTP 500: recovered after {seconds} simulated s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_does_not_delay_callers_holding_a_valid_token() {
    let s = Setup::new().await;
    let crm = s
        .builder()
        .request_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let first = crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(45 * 60));
    s.emulator.inject_faults(Fault::Hang { millis: 10_000 }, 1);
    for _ in 0..100 {
        let t = crm.access_token().await.unwrap();
        assert_eq!(t.expose_secret(), first.expose_secret());
    }
    // The background refresh reaches the endpoint and hangs there.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.token_requests() < 2 {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..100 {
        let t = crm.access_token().await.unwrap();
        assert_eq!(t.expose_secret(), first.expose_secret());
    }
    assert!(
        crm.is_refreshing(),
        "all 200 calls returned while the refresh still hangs"
    );
    assert_eq!(s.token_requests(), 2);
    common::settle(&crm).await; // the request times out after 3 s
    let status = crm.status().await;
    assert!(
        matches!(status.last_error, Some((Error::Transient { .. }, _))),
        "{status:?}"
    );
    s.advance(Duration::from_secs(121));
    tick(&s, &crm, 1).await;
    assert_ne!(
        crm.access_token().await.unwrap().expose_secret(),
        first.expose_secret()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_waits_for_zohos_window() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(45 * 60));
    s.emulator.set_fault(Some(Fault::ErrorWith200 {
        error: "Access Denied".into(),
        description: Some(
            "You have made too many requests continuously. Please try again after some time."
                .into(),
        ),
    }));
    let (errors, requests) = run(&s, &crm, 14 * 60).await;
    assert_eq!(errors, 0);
    assert_eq!(
        requests.len(),
        2,
        "one attempt, then one after the 10-minute window: {requests:?}"
    );
    assert_eq!(requests[1] - requests[0], 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_is_asked_at_most_once_per_negative_cache_period() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    crm.access_token().await.unwrap();
    s.emulator.revoke(&s.refresh_token);
    s.advance(Duration::from_secs(3600));
    let before = s.token_requests();
    let mut errors = Vec::new();
    for _ in 0..5 * 60 {
        errors.extend(tick(&s, &crm, 3).await.1);
        s.advance(SEC);
    }
    assert_eq!(errors.len(), 900);
    assert!(
        errors.iter().all(|e| e.needs_reauthorization()),
        "{:?}",
        errors[0]
    );
    assert!(
        errors[0]
            .to_string()
            .contains("re-authorize connector `crm`")
    );
    let requests = s.token_requests() - before;
    assert!(
        requests <= 11,
        "≤ 1 request per 30 s over 5 minutes, saw {requests}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_callers_across_the_stale_window_never_wait_and_cause_one_mint() {
    let s = Setup::new().await;
    s.emulator.set_latency(Duration::from_millis(300));
    let connection = s.connection();
    let crm = connection.connector("crm").unwrap();
    let first = crm.access_token().await.unwrap();
    s.advance(Duration::from_secs(45 * 60));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = connection.connector("crm").unwrap();
            tokio::spawn(async move { c.access_token().await })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap().expose_secret(),
            first.expose_secret()
        );
    }
    assert!(
        crm.is_refreshing(),
        "every caller returned before the 300 ms mint finished"
    );
    // More callers later in the stale window join nothing and wait for nothing.
    s.advance(Duration::from_secs(60));
    for _ in 0..100 {
        crm.access_token().await.unwrap();
    }
    common::settle(&crm).await;
    assert_eq!(
        s.token_requests(),
        2,
        "exactly one mint for the stale window"
    );
    let status = crm.status().await;
    assert_eq!(status.state, TokenState::Fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_forced_refreshes_in_ten_minutes_send_at_most_ten_mints() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(e) = crm.force_refresh().await {
            assert!(matches!(e, Error::Throttled { .. }), "{e:?}");
            refused += 1;
        }
        s.advance(Duration::from_secs(29));
    }
    let stats = s.emulator.stats();
    assert!(
        stats.token_requests <= 10,
        "{} mints reached Zoho",
        stats.token_requests
    );
    assert_eq!(stats.throttled, 0, "Zoho's own throttle never answered");
    assert_eq!(refused, 10);
    let status = crm.status().await;
    assert_eq!(status.mints_in_window, 10);
    assert_eq!(status.mint_limit, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_warm_refreshes_before_the_token_turns_stale_and_stops_with_the_connection() {
    let s = Setup::new().await;
    let connection = s
        .builder()
        .keep_warm(true)
        .keep_warm_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let crm = connection.connector("crm").unwrap();
    let first = crm.access_token().await.unwrap();
    // 5 s before the refresh point: inside any jitter (1–11 % of the 15-minute margin).
    s.advance(Duration::from_secs(45 * 60 - 5));
    crm.access_token().await.unwrap(); // still fresh: no caller triggers anything
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.token_requests() < 2 {
        assert!(Instant::now() < deadline, "keep-warm did not refresh");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    common::settle(&crm).await;
    let status = crm.status().await;
    assert_eq!(
        status.state,
        TokenState::Fresh,
        "the token never turned stale"
    );
    assert_ne!(
        crm.access_token().await.unwrap().expose_secret(),
        first.expose_secret()
    );

    // Dropped connection: keep-warm stops (the connector clone alone does not keep it alive).
    drop(connection);
    s.advance(Duration::from_secs(45 * 60 - 5));
    crm.access_token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.token_requests(),
        2,
        "no keep-warm refresh after the connection was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_warm_refreshes_a_per_user_connector_used_within_the_hour_and_not_after() {
    let s = Setup::new().await;
    let connection = s
        .builder()
        .keep_warm(true)
        .keep_warm_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let alice = connection
        .connector("crm")
        .unwrap()
        .for_user("alice")
        .unwrap();
    let code = catalyst_connectors::GrantCode::new(s.emulator.add_grant_code(
        common::CLIENT_ID,
        "ZohoCRM.users.READ",
        None,
    ));
    alice.generate_access_token(&code).await.unwrap();
    alice.access_token().await.unwrap();
    let before = s.token_requests();
    s.advance(Duration::from_secs(45 * 60 - 5));
    alice.access_token().await.unwrap(); // still fresh: no caller triggers anything
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.token_requests() == before {
        assert!(
            Instant::now() < deadline,
            "keep-warm did not refresh the user's token"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    common::settle(&alice).await;
    assert_eq!(alice.status().await.state, TokenState::Fresh);

    // Not asked for in over an hour: left to go stale.
    let before = s.token_requests();
    s.advance(Duration::from_secs(61 * 60));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.token_requests(),
        before,
        "an unused user's token was refreshed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_source_schedule_errors_and_waiters() {
    let s = Setup::new().await;
    let crm = s.connection().connector("crm").unwrap();
    let empty = crm.status().await;
    assert_eq!(
        (empty.state, empty.source, empty.waiters),
        (TokenState::Empty, None, 0)
    );
    crm.access_token().await.unwrap();
    let fresh = crm.status().await;
    assert_eq!(fresh.state, TokenState::Fresh);
    assert_eq!(fresh.source, Some(catalyst_connectors::TokenSource::Minted));
    assert_eq!(fresh.mints_in_window, 1);
    assert!(fresh.refresh_at.unwrap() < fresh.expires_at.unwrap());
    s.advance(Duration::from_secs(45 * 60));
    s.emulator.set_fault(Some(Fault::Http500));
    tick(&s, &crm, 1).await;
    let failing = crm.status().await;
    assert_eq!(failing.state, TokenState::Stale);
    assert!(
        failing.last_error.is_some() && failing.next_attempt_at.is_some(),
        "{failing:?}"
    );
    assert!(!failing.refreshing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_bounds_the_caller_and_the_late_token_is_kept() {
    let s = Setup::new().await;
    // A token endpoint that hangs for 4 s; callers wait at most 2 s.
    s.emulator.set_latency(Duration::from_secs(4));
    let crm = s
        .builder()
        .wait_deadline(Duration::from_secs(2))
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let started = Instant::now();
    let err = crm.access_token().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err:?}");
    assert!(
        took < Duration::from_millis(2500),
        "the caller waited {took:?}"
    );
    // The flight went on: its token arrives, is installed, and the next caller gets it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while crm.status().await.state != TokenState::Fresh {
        assert!(Instant::now() < deadline, "the late token was thrown away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = crm.access_token().await.unwrap();
    assert_eq!(token.source(), catalyst_connectors::TokenSource::Minted);
    assert_eq!(
        s.token_requests(),
        1,
        "no second request for the next caller"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_ttl_loop_never_exceeds_zohos_live_token_cap_nor_half_the_mint_budget() {
    let s = Setup::new().await;
    // The lowest cap Zoho documents: 10 live tokens per refresh token.
    let mut settings = s.emulator.settings();
    settings.live_token_cap = 10;
    s.emulator.set_settings(settings);
    let crm = s.connection().connector("crm").unwrap();
    // A client asking every 5 s for a token that lasts 3590 s (of 3600): for 30 minutes.
    let mut throttled = 0;
    let mut mints_per_window = Vec::new();
    for step in 0..360 {
        let before = s.token_requests();
        match crm.access_token_valid_for(Duration::from_secs(3590)).await {
            Ok(t) => assert!(
                system_time_to_millis(t.expires_at()) > s.clock.now_millis(),
                "an expired token was served"
            ),
            Err(Error::Throttled { .. }) => throttled += 1,
            Err(e) => panic!("a refusal must say throttled (exit 5), got {e:?}"),
        }
        common::settle(&crm).await;
        if step % 120 == 0 {
            mints_per_window.push(0);
        }
        *mints_per_window.last_mut().unwrap() += s.token_requests() - before;
        s.advance(Duration::from_secs(5));
    }
    let stats = s.emulator.stats();
    assert_eq!(stats.evicted_by_cap, 0, "Zoho revoked tokens past its cap");
    assert!(stats.live_tokens <= 10, "{} live tokens", stats.live_tokens);
    assert!(throttled > 0, "the loop was never refused");
    for (i, mints) in mints_per_window.iter().enumerate() {
        // The first window has the one mint nothing forced, then at most half of ten.
        assert!(*mints <= 6, "window {i}: {mints} mints");
    }
}
