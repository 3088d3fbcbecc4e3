//! Issue 16, in part: faults that used to wedge or mislead one process after another now heal or
//! are shared. Each test failed on the code before.

mod common;

use catalyst_connectors::{
    Connection, EncryptionKey, Error, ExposeSecret, SqliteStore, TokenStore, TokenWrite,
};
use common::{CLIENT_ID, Setup};
use std::sync::Arc;
use std::time::Duration;
use zoho_emulator::Fault;

fn sqlite(s: &Setup, path: &std::path::Path) -> Connection {
    s.bare_builder()
        .store(SqliteStore::open(path).unwrap())
        .json(s.config())
        .wait_deadline(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_at_the_integer_limit_does_not_wedge_writes() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let crm = sqlite(&s, &path).connector("crm").unwrap();
    crm.access_token().await.unwrap();
    raw(&path)
        .execute("UPDATE records SET generation = 9223372036854775807", [])
        .unwrap();
    crm.force_refresh().await.unwrap();
    assert_eq!(s.token_requests(), 2);
    // The record was written: a new process reads it instead of minting.
    let again = sqlite(&s, &path).connector("crm").unwrap();
    again.access_token().await.unwrap();
    assert_eq!(s.token_requests(), 2, "read from the store, not minted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_far_in_the_future_is_not_honoured() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let crm = sqlite(&s, &path).connector("crm").unwrap();
    let key = crm.cache_key();
    let store = SqliteStore::open(&path).unwrap();
    assert!(
        store
            .try_acquire_lease(&key, "4242:dead", Duration::from_secs(30))
            .await
            .unwrap()
    );
    // A clock jump left the lease ten years ahead.
    raw(&path)
        .execute(
            "UPDATE leases SET expires_at = expires_at + 315360000000",
            [],
        )
        .unwrap();
    let started = std::time::Instant::now();
    let token = crm.access_token().await.unwrap();
    assert!(token.expose_secret().starts_with("1000."));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no wait for the phantom lease"
    );
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_log_entries_in_the_future_do_not_count() {
    let s = Setup::new().await;
    let store = Arc::new(catalyst_connectors::MemoryStore::with_clock(Arc::new(
        s.clock.clone(),
    )));
    let fp =
        catalyst_connectors::key::fingerprint(CLIENT_ID, &s.refresh_token, &s.emulator.token_url());
    let key = format!("ZC_CONN_mints:{}", &fp[..16]);
    let far = catalyst_connectors::system_time_to_millis(std::time::SystemTime::now())
        + 8_204_047_317_000;
    let log = serde_json::to_string(&vec![far; 10]).unwrap();
    store
        .compare_and_set(TokenWrite::new(&key, None, &log, Duration::from_secs(600)))
        .await
        .unwrap();
    let crm = s
        .bare_builder()
        .shared_store(store)
        .json(s.config())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    crm.access_token().await.unwrap();
    assert_eq!(
        s.token_requests(),
        1,
        "the governor did not count future entries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_not_retried_and_count_toward_the_governor() {
    let s = Setup::new().await;
    // A 200 whose access_token cannot go into a header.
    let bad = hostile_server(r#"{"access_token":"1000.abc\r\nX-Evil: 1","expires_in":3600}"#).await;
    let crm = s
        .bare_builder()
        .json(serde_json::json!({"crm": {
            "client_id": CLIENT_ID, "client_secret": "x",
            "auth_url": bad.url, "refresh_url": bad.url, "refresh_token": "1000.r"}}))
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let err = crm.access_token().await.unwrap_err();
    assert!(matches!(err, Error::MalformedResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("header"), "{err}");
    assert_eq!(
        bad.hits(),
        1,
        "not retried: a real endpoint would have counted each"
    );
    assert_eq!(
        crm.status().await.mints_in_window,
        1,
        "counted by the governor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_lifetimes_and_api_domains_are_not_believed() {
    let s = Setup::new().await;
    let bad = hostile_server(
        r#"{"access_token":"1000.ok","expires_in":1000000000000,"api_domain":"javascript:alert(1)"}"#,
    )
    .await;
    let crm = s
        .bare_builder()
        .json(serde_json::json!({"crm": {
            "client_id": CLIENT_ID, "client_secret": "x",
            "auth_url": bad.url, "refresh_url": bad.url, "refresh_token": "1000.r"}}))
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let token = crm.access_token().await.unwrap();
    let life = token
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        life <= Duration::from_secs(3600),
        "10^12 s is taken as Zoho's hour: {life:?}"
    );
    // A day or less is believed (Zoho documents an hour; other endpoints a few).
    let day = hostile_server(r#"{"access_token":"1000.day","expires_in":86400}"#).await;
    let books = s
        .bare_builder()
        .json(serde_json::json!({"books": {
            "client_id": CLIENT_ID, "client_secret": "x",
            "auth_url": day.url, "refresh_url": day.url, "refresh_token": "1000.r"}}))
        .build()
        .unwrap()
        .connector("books")
        .unwrap();
    let life = books
        .access_token()
        .await
        .unwrap()
        .expires_at()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(life > Duration::from_secs(86000), "{life:?}");
    assert_ne!(token.api_domain(), Some("javascript:alert(1)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_seen_by_one_process_stops_the_others_without_a_request() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    s.emulator.revoke(&s.refresh_token);
    let first = sqlite(&s, &path).connector("crm").unwrap();
    assert!(
        first
            .access_token()
            .await
            .unwrap_err()
            .needs_reauthorization()
    );
    let before = s.token_requests();
    for _ in 0..5 {
        let other = sqlite(&s, &path).connector("crm").unwrap();
        let err = other.access_token().await.unwrap_err();
        assert!(err.needs_reauthorization(), "{err:?}");
    }
    assert_eq!(s.token_requests(), before, "no process asked Zoho again");
}

/// A store with a fault: writes of shared health that take 300 ms (a slow or remote store), or
/// deletes that do not land (another process wrote the record back, or the delete is still on
/// its way).
#[derive(Debug)]
struct Altered {
    inner: Arc<dyn TokenStore>,
    slow_health: bool,
    deletes_lost: bool,
}

#[async_trait::async_trait]
impl TokenStore for Altered {
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<catalyst_connectors::StoredValue>, catalyst_connectors::StoreError> {
        self.inner.get(key).await
    }
    async fn compare_and_set(
        &self,
        write: TokenWrite<'_>,
    ) -> Result<catalyst_connectors::CasOutcome, catalyst_connectors::StoreError> {
        if self.slow_health && write.key.contains("health:") {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.inner.compare_and_set(write).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, catalyst_connectors::StoreError> {
        if self.deletes_lost {
            return Ok(true);
        }
        self.inner.delete(key, expected).await
    }
    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, catalyst_connectors::StoreError> {
        self.inner.try_acquire_lease(key, owner, ttl).await
    }
    async fn release_lease(
        &self,
        key: &str,
        owner: &str,
    ) -> Result<(), catalyst_connectors::StoreError> {
        self.inner.release_lease(key, owner).await
    }
}

/// The same with the processes asking at once on a store where writing the refusal is slow: the
/// process holding the lease writes the refusal before it lets the lease go, so the next holder
/// reads it instead of asking Zoho (the soak saw four requests in 50 ms when the refusal was
/// written after the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_asking_at_once_send_a_revoked_refresh_token_once() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    s.emulator.revoke(&s.refresh_token);
    s.emulator.set_latency(Duration::from_millis(100));
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let store = Altered {
                inner: Arc::new(SqliteStore::open(&path).unwrap()),
                slow_health: true,
                deletes_lost: false,
            };
            let crm = s
                .bare_builder()
                .store(store)
                .json(s.config())
                .build()
                .unwrap()
                .connector("crm")
                .unwrap();
            tokio::spawn(async move { crm.access_token().await })
        })
        .collect();
    for c in callers {
        let err = c.await.unwrap().unwrap_err();
        assert!(err.needs_reauthorization(), "{err:?}");
    }
    assert_eq!(s.token_requests(), 1, "one request for six processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_seen_by_one_process_is_shared() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    s.emulator.inject_faults(
        Fault::ErrorWith200 {
            error: "Access Denied".into(),
            description: None,
        },
        1,
    );
    let first = sqlite(&s, &path).connector("crm").unwrap();
    assert!(matches!(
        first.access_token().await.unwrap_err(),
        Error::Throttled { .. }
    ));
    let before = s.token_requests();
    for _ in 0..5 {
        let other = sqlite(&s, &path).connector("crm").unwrap();
        assert!(matches!(
            other.access_token().await.unwrap_err(),
            Error::Throttled { .. }
        ));
    }
    assert_eq!(
        s.token_requests(),
        before,
        "each extra request would extend Zoho's lockout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_encryption_keys_on_one_store_do_not_bypass_the_governor() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let keys = [EncryptionKey::generate(), EncryptionKey::generate()];
    for i in 0..14 {
        let crm = s
            .bare_builder()
            .store(SqliteStore::open(&path).unwrap())
            .json(s.config())
            .encryption_key(keys[i % 2].clone())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap();
        let _ = crm.force_refresh().await;
    }
    assert!(
        s.token_requests() <= 10,
        "alternating keys stayed within Zoho's limit: {}",
        s.token_requests()
    );
}

/// A process with another encryption key must not hide the shared health from the others: the
/// health record and the mint log hold no secret and are kept in the clear, so every process reads
/// a refusal whatever its key; and a key error is the process's own and is not recorded (the soak
/// found every process asking Zoho with a revoked refresh token once a record under another key
/// was there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_key_does_not_hide_the_shared_health() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let keys = [EncryptionKey::generate(), EncryptionKey::generate()];
    let connect = |key: &EncryptionKey| {
        s.bare_builder()
            .store(SqliteStore::open(&path).unwrap())
            .json(s.config())
            .encryption_key(key.clone())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    // B asks Zoho first with a revoked refresh token and records the refusal; the A processes
    // read it and do not ask.
    s.emulator.revoke(&s.refresh_token);
    let err = connect(&keys[1]).access_token().await.unwrap_err();
    assert!(err.needs_reauthorization(), "{err:?}");
    for _ in 0..4 {
        let err = connect(&keys[0]).access_token().await.unwrap_err();
        assert!(err.needs_reauthorization(), "{err:?}");
    }
    assert_eq!(
        s.token_requests(),
        1,
        "B's request only; the four A processes were refused from the store"
    );

    // A key error is the process's own: nothing is recorded.
    let s = Setup::new().await;
    let path = dir.path().join("u.db");
    let connect = |key: &EncryptionKey| {
        s.bare_builder()
            .store(SqliteStore::open(&path).unwrap())
            .json(s.config())
            .encryption_key(key.clone())
            .build()
            .unwrap()
            .connector("crm")
            .unwrap()
    };
    connect(&keys[0]).access_token().await.unwrap();
    let err = connect(&keys[1]).access_token().await.unwrap_err();
    assert!(matches!(err, Error::EncryptionKey { .. }), "{err:?}");
    let health: i64 = raw(&path)
        .query_row(
            "SELECT count(*) FROM records WHERE key LIKE '%health:%' AND data != ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(health, 0, "no health record for a key error");
}

/// A process backing off after a failure still serves a token another process stored meanwhile
/// (the 10-minute Redis soak saw callers told "throttled" while a fresh token was in the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_backing_off_serves_a_token_another_process_stored() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    s.emulator.inject_faults(Fault::Http500, 3);
    let p = sqlite(&s, &path).connector("crm").unwrap();
    let err = p.access_token().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(s.token_requests(), 3);
    let q = sqlite(&s, &path).connector("crm").unwrap();
    let minted = q.access_token().await.unwrap();
    assert_eq!(s.token_requests(), 4);
    // P is still backing off (the clock has not moved): it finds Q's token in the store.
    let served = p.access_token().await.unwrap();
    assert_eq!(served.expose_secret(), minted.expose_secret());
    assert_eq!(s.token_requests(), 4, "no request from P");
}

/// A token endpoint that answers every request with `body` (HTTP 200) and counts them.
struct Hostile {
    url: String,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Hostile {
    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn hostile_server(body: &'static str) -> Hostile {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/oauth/v2/token",
        axum::routing::post(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth/v2/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hostile { url, hits }
}

/// Opening a store touches only what it creates: a shared directory keeps its mode and sticky
/// bit, an existing file keeps its mode (a warning instead), and a symbolic link — to a file or to
/// nothing — is refused before anything is changed or created.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_stores_own_files_are_touched() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    // A directory like /tmp: 1777, opened twice.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let path = shared.join("tokens.db");
    drop(SqliteStore::open(&path).unwrap());
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(mode(&shared), 0o1777, "the shared directory was changed");
    assert_eq!(
        mode(&path),
        0o600,
        "a new store file is 0600 from the start"
    );
    // An existing file open to others: warned about, left as it is.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(mode(&path), 0o644);
    // A link standing in for a system file: refused, its target untouched.
    let target = dir.path().join("passwd");
    std::fs::write(&target, "root:x:0:0\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = SqliteStore::open(&link).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(mode(&target), 0o644, "the link's target was chmodded");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");
    // A dangling link: refused, and nothing is created where it points.
    let nowhere = dir.path().join("created-by-sqlite.db");
    let dangling = dir.path().join("dangling.db");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    assert!(SqliteStore::open(&dangling).is_err());
    assert!(!nowhere.exists(), "the dangling link's target was created");
}

/// A token an API rejected is never handed out again, even when the store still holds it: the
/// proxy's 401 wave saw a caller get the rejected token back from the store between the
/// connector forgetting it and the store delete landing, and pass its 401 on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_still_in_the_store_is_not_served_again() {
    let s = Setup::new().await;
    let store = Altered {
        inner: Arc::new(catalyst_connectors::MemoryStore::new()),
        slow_health: false,
        deletes_lost: true,
    };
    let crm = s
        .bare_builder()
        .store(store)
        .json(s.config())
        .build()
        .unwrap()
        .connector("crm")
        .unwrap();
    let rejected = crm.access_token().await.unwrap();
    assert!(crm.invalidate_token(&rejected).await.unwrap());
    let next = crm.access_token().await.unwrap();
    assert_ne!(
        next.secret().expose_secret(),
        rejected.secret().expose_secret(),
        "the rejected token was served again"
    );
    assert_eq!(s.token_requests(), 2);
    // The new one, stored, is served as usual.
    let again = crm.access_token().await.unwrap();
    assert_eq!(
        again.secret().expose_secret(),
        next.secret().expose_secret()
    );
}
