//! The SQLite store: conformance, sharing across processes, leases surviving SIGKILL, encryption
//! at rest, damage and permissions.

mod common;

use catalyst_connectors::store::conformance::{self, TimeControl};
use catalyst_connectors::{
    Connection, ConnectorConfig, EncryptedStore, EncryptionKey, EncryptionKeys, Error,
    ExposeSecret, GrantCode, ManualClock, MemoryStore, SqliteStore, StoreErrorKind, StoreSpec,
    TokenRecord, TokenStore, TokenWrite,
};
use common::{CLIENT_ID, CLIENT_SECRET, Setup};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn manual() -> ManualClock {
    ManualClock::new(1_800_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let clock = manual();
    let store = Arc::new(MemoryStore::with_clock(Arc::new(clock.clone())));
    conformance::run_all(store, TimeControl::Manual(clock))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let store = Arc::new(
        SqliteStore::open_with_clock(dir.path().join("t.db"), Arc::new(clock.clone())).unwrap(),
    );
    conformance::run_all(store, TimeControl::Manual(clock))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual();
    let inner = Arc::new(
        SqliteStore::open_with_clock(dir.path().join("t.db"), Arc::new(clock.clone())).unwrap(),
    );
    let store = Arc::new(EncryptedStore::new(inner, &EncryptionKey::generate()));
    conformance::run_all(store, TimeControl::Manual(clock))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_store_handles_on_one_file_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    a.compare_and_set(TokenWrite::new("k", None, "v", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(b.get("k").await.unwrap().unwrap().data, "v");
    assert!(
        a.try_acquire_lease("k", "a", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !b.try_acquire_lease("k", "b", Duration::from_secs(30))
            .await
            .unwrap()
    );
}

/// Content and modification time of the store's three files (a missing one is `None`).
fn on_disk(path: &Path) -> Vec<Option<(Vec<u8>, std::time::SystemTime)>> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let meta = std::fs::metadata(&p).ok()?;
            Some((std::fs::read(&p).ok()?, meta.modified().ok()?))
        })
        .collect()
}

/// Issue 22 item 12: a process that only reads (a warm `connector token`) writes nothing — not
/// the database, not the WAL, not SQLite's index file — and leaves no log for the next to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_process_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let writer = SqliteStore::open(&path).unwrap();
        for i in 0..20 {
            writer
                .compare_and_set(TokenWrite::new(
                    &format!("k{i}"),
                    None,
                    "v",
                    Duration::from_secs(60),
                ))
                .await
                .unwrap();
        }
    }
    let wal = std::fs::metadata(format!("{}-wal", path.display())).unwrap();
    assert_eq!(wal.len(), 0, "the last writer to close empties the WAL");
    let before = on_disk(&path);
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..3 {
        let reader = SqliteStore::open(&path).unwrap();
        assert_eq!(reader.get("k7").await.unwrap().unwrap().data, "v");
        assert!(reader.get("missing").await.unwrap().is_none());
    }
    assert!(
        before == on_disk(&path),
        "opening, reading and closing the store changed a file"
    );
}

/// Another SQLite program that closes the file last deletes the `-wal` and `-shm` files; a store
/// opened after reads and writes, and two handles in one process (one only reading) both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_index_file_is_recreated_and_handles_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let first = SqliteStore::open(&path).unwrap();
    first
        .compare_and_set(TokenWrite::new("k", None, "v", Duration::from_secs(60)))
        .await
        .unwrap();
    drop(first);
    for suffix in ["-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", path.display())).unwrap();
    }
    let reader = SqliteStore::open(&path).unwrap();
    assert_eq!(reader.get("k").await.unwrap().unwrap().data, "v");
    drop(reader);
    // The reader opens read-only (the index file exists again); a second handle then writes.
    let reader = SqliteStore::open(&path).unwrap();
    assert_eq!(reader.get("k").await.unwrap().unwrap().data, "v");
    let writer = SqliteStore::open(&path).unwrap();
    writer
        .compare_and_set(TokenWrite::new("k", Some(1), "w", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(reader.get("k").await.unwrap().unwrap().data, "w");
}

#[cfg(unix)]
#[test]
fn directory_and_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("deeper").join("tokens.db");
    SqliteStore::open(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_corrupt_file_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    std::fs::write(
        &path,
        b"this is not a sqlite database, just some bytes that got here somehow....",
    )
    .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("move it aside"), "{msg}");

    // Through a connection, the error names the file too.
    let err = common::hermetic_without_store()
        .store_spec(StoreSpec::Sqlite(path.clone()))
        .json(serde_json::json!({"crm": {"client_id": "a", "client_secret": "b", "dc": "us"}}))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::StoreOpen(_)), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_truncated_database_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    drop(SqliteStore::open(&path).unwrap());
    // Keep the header, damage the pages.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xA5;
    }
    std::fs::write(&path, bytes).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind, StoreErrorKind::Corrupt, "{err}");
}

fn sqlite_connection(s: &Setup, path: &Path, key: Option<&EncryptionKey>) -> Connection {
    let mut b = common::hermetic_without_store()
        .store(SqliteStore::open_with_clock(path, Arc::new(s.clock.clone())).unwrap())
        .json(s.config())
        .clock(s.clock.clone());
    if let Some(k) = key {
        b = b.encryption_key(k.clone());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn tokens_are_shared_through_the_file_and_encrypted_at_rest() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    let key = EncryptionKey::generate();
    let one = sqlite_connection(&s, &path, Some(&key))
        .connector("crm")
        .unwrap();
    let token = one.access_token().await.unwrap();
    let two = sqlite_connection(&s, &path, Some(&key))
        .connector("crm")
        .unwrap();
    assert_eq!(
        two.access_token().await.unwrap().expose_secret(),
        token.expose_secret()
    );
    assert_eq!(s.token_requests(), 1);
    let on_disk = read_all_bytes(&path);
    assert!(
        !contains(&on_disk, token.expose_secret().as_bytes()),
        "the token is on disk in plain text"
    );
}

#[tokio::test]
async fn a_tampered_record_is_reminted_and_another_keys_record_is_a_key_error() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    let key = EncryptionKey::generate();
    let first = sqlite_connection(&s, &path, Some(&key))
        .connector("crm")
        .unwrap();
    let t1 = first.access_token().await.unwrap();

    // Another key: a configuration error naming the variable, no mint, the record kept.
    let other = sqlite_connection(&s, &path, Some(&EncryptionKey::generate()))
        .connector("crm")
        .unwrap();
    let err = other.access_token().await.unwrap_err();
    assert!(matches!(err, Error::EncryptionKey { .. }), "{err:?}");
    assert!(
        err.to_string().contains("different encryption key"),
        "{err}"
    );
    assert!(
        err.to_string().contains("CONNECTOR_ENCRYPTION_KEY"),
        "{err}"
    );
    assert_eq!(s.token_requests(), 1, "nothing minted with the wrong key");

    // No key at all: the same kind of error, never garbage.
    let plain = sqlite_connection(&s, &path, None).connector("crm").unwrap();
    let err = plain.access_token().await.unwrap_err();
    assert!(matches!(err, Error::EncryptionKey { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no encryption key is set"),
        "{err}"
    );
    assert_eq!(s.token_requests(), 1);

    // Tamper with the stored ciphertext (right key id, bad bytes): damaged, so reminted.
    let raw = SqliteStore::open(&path).unwrap();
    let cache_key = first.cache_key();
    let stored = raw.get(&cache_key).await.unwrap().unwrap();
    let mut tampered = stored.data.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    raw.compare_and_set(TokenWrite::new(
        &cache_key,
        Some(stored.generation),
        &tampered,
        Duration::from_secs(3600),
    ))
    .await
    .unwrap();
    let third = sqlite_connection(&s, &path, Some(&key))
        .connector("crm")
        .unwrap();
    let t3 = third.access_token().await.unwrap();
    assert_ne!(t3.expose_secret(), t1.expose_secret());
    assert_eq!(s.token_requests(), 2, "the tampered record was not served");
}

#[tokio::test]
async fn a_refresh_token_from_a_code_exchange_is_kept_for_other_processes() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    let key = EncryptionKey::generate();
    let connection = |key: &EncryptionKey| {
        common::hermetic_without_store()
            .store(SqliteStore::open_with_clock(&path, Arc::new(s.clock.clone())).unwrap())
            .encryption_key(key.clone())
            .clock(s.clock.clone())
            .connector(
                ConnectorConfig::builder("crm")
                    .client_id(CLIENT_ID)
                    .client_secret(CLIENT_SECRET)
                    .token_url(s.emulator.token_url())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let setup = connection(&key).connector("crm").unwrap();
    let code = GrantCode::new(
        s.emulator
            .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None),
    );
    let generated = setup.generate_access_token(&code).await.unwrap();
    let refresh_token = generated.refresh_token.unwrap();
    assert!(
        !contains(
            &read_all_bytes(&path),
            refresh_token.expose_secret().as_bytes()
        ),
        "refresh token in plain text"
    );

    // A later process whose config has no refresh token finds it in the store.
    s.advance(Duration::from_secs(3600));
    let later = connection(&key).connector("crm").unwrap();
    let token = later.access_token().await.unwrap();
    assert_eq!(token.source(), catalyst_connectors::TokenSource::Minted);
    let stats = s.emulator.stats();
    assert_eq!(stats.by_grant["authorization_code"]["ok"], 1);
    assert_eq!(
        stats.by_grant["refresh_token"]["ok"], 1,
        "minted with the stored refresh token"
    );

    // With another key the stored refresh token is unreadable: a key error, not "authorize".
    let err = connection(&EncryptionKey::generate())
        .connector("crm")
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EncryptionKey { .. }), "{err:?}");
}

/// Issue 22 item 10 in the library: a key set on an unencrypted store, then rotated; the refresh
/// token from the one code exchange serves throughout, and the old key is not needed after
/// `rekey`.
#[tokio::test]
async fn keys_rotate_and_plaintext_moves_to_encrypted_with_rekey() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    let connection = |keys: Option<EncryptionKeys>| {
        let mut b = common::hermetic_without_store()
            .store(SqliteStore::open_with_clock(&path, Arc::new(s.clock.clone())).unwrap())
            .clock(s.clock.clone())
            .connector(
                ConnectorConfig::builder("crm")
                    .client_id(CLIENT_ID)
                    .client_secret(CLIENT_SECRET)
                    .token_url(s.emulator.token_url())
                    .build()
                    .unwrap(),
            );
        if let Some(keys) = keys {
            b = b.encryption_keys(keys);
        }
        b.build().unwrap().connector("crm").unwrap()
    };
    let code = GrantCode::new(
        s.emulator
            .add_grant_code(CLIENT_ID, "ZohoCRM.users.READ", None),
    );
    let refresh_token = connection(None)
        .generate_access_token(&code)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    let stored_in_clear = || {
        contains(
            &read_all_bytes(&path),
            refresh_token.expose_secret().as_bytes(),
        )
    };
    assert!(stored_in_clear());
    let old = EncryptionKey::generate();
    let new = EncryptionKey::generate();

    // A key on the unencrypted store: a key error (never "no refresh token"), until rekey.
    let err = connection(Some(old.clone().into()))
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EncryptionKey { .. }), "{err:?}");
    assert!(err.to_string().contains("rekey"), "{err}");
    let moved = connection(Some(EncryptionKeys::new(old.clone()).reading_plaintext()))
        .rekey()
        .await
        .unwrap();
    assert!(moved.refresh_token && moved.access_token, "{moved:?}");
    assert!(!stored_in_clear(), "the refresh token is encrypted now");
    connection(Some(old.clone().into()))
        .access_token()
        .await
        .unwrap();

    // Rotation: new first, old after; rekey; the new key alone then mints with the stored
    // refresh token, and the old key alone no longer reads it.
    connection(Some(
        EncryptionKeys::new(new.clone()).with_previous(old.clone()),
    ))
    .rekey()
    .await
    .unwrap();
    s.advance(Duration::from_secs(3600));
    let token = connection(Some(new.clone().into()))
        .access_token()
        .await
        .unwrap();
    assert_eq!(token.source(), catalyst_connectors::TokenSource::Minted);
    let err = connection(Some(old.into()))
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EncryptionKey { .. }), "{err:?}");
    let stats = s.emulator.stats();
    assert_eq!(
        stats.by_grant["authorization_code"]["ok"], 1,
        "one authorization"
    );
}

fn read_all_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(b) = std::fs::read(&p) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Multi-process tests (see `common::child_process_main`).

#[test]
#[ignore = "helper: the multi-process tests run it as a child process"]
fn child_process() {
    common::child_process_main();
}

/// A store spec for a file that does not exist yet: the processes create it together, as on a
/// host's first run.
fn sqlite_spec(db: &Path) -> String {
    format!("sqlite:{}", db.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_of_fifty_callers_mint_once() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    common::stampede(&s, &sqlite_spec(&dir.path().join("tokens.db"))).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_mint_blocks_others_at_most_the_lease() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    common::sigkill_takeover(&s, &sqlite_spec(&dir.path().join("tokens.db"))).await;
}

/// Issue 16: a holder killed mid-mint on this host is recognised as dead (pid, boot and start
/// time in its owner name), so the next process takes the lease at once instead of waiting out a
/// 30-second lease.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over_at_once() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let waited = common::sigkill_takeover_with(
        &s,
        &sqlite_spec(&dir.path().join("tokens.db")),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        waited < Duration::from_secs(10),
        "took {waited:?} with a 30 s lease"
    );
}

/// Issue 16, item 2: a process that serves the stale token, starts the background refresh (taking
/// the lease, its request on the wire) and exits does not strand the lease: the first process
/// after expiry takes it at once instead of waiting out 30 s.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_exiting_mid_refresh_does_not_strand_its_lease() {
    let s = Setup::new().await;
    s.emulator.set_token_lifetime(Duration::from_secs(8)); // refresh point at 6 s
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_spec(&dir.path().join("tokens.db"));
    let lease = Duration::from_secs(30);
    let run = |child: std::process::Child| async move {
        tokio::task::spawn_blocking(move || common::tokens_of(child))
            .await
            .unwrap()
    };
    let minted_at = Instant::now();
    let first = run(common::spawn_child(&s, &store, 1, lease)).await;
    assert_eq!(s.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(6300).saturating_sub(minted_at.elapsed())).await;

    // The stale window: served at once, then the process exits with its refresh in flight.
    s.emulator.set_latency(Duration::from_secs(30));
    let exiting = common::child_command(&s, &store, 1, lease)
        .env("CHILD_EXIT_AFTER_MS", "500")
        .spawn()
        .unwrap();
    assert_eq!(run(exiting).await, first, "the stale token, served at once");
    assert_eq!(
        s.token_requests(),
        2,
        "its refresh reached Zoho before it exited"
    );

    tokio::time::sleep(Duration::from_millis(8200).saturating_sub(minted_at.elapsed())).await;
    s.emulator.set_latency(Duration::ZERO);
    let started = Instant::now();
    let tokens = run(common::spawn_child(&s, &store, 5, lease)).await;
    let waited = started.elapsed();
    assert_eq!(tokens.len(), 5);
    assert!(tokens.iter().all(|t| *t == tokens[0] && *t != first[0]));
    assert_eq!(s.token_requests(), 3, "one more mint");
    assert!(
        waited < Duration::from_secs(10),
        "took {waited:?} with a 30 s lease"
    );
    eprintln!("first call after expiry took {waited:?}");
}

#[cfg(unix)]
#[test]
fn kill_9_during_writes_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokens.db");
    drop(SqliteStore::open(&db).unwrap());
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "writer_process", "--nocapture"])
            .env("WRITER_DB", &db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + 100 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let store = SqliteStore::open(&db).expect("the file survives kill -9");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let value = rt.block_on(store.get("ZC_CONN_writer:00000")).unwrap();
        let n: u64 = value
            .expect("a committed value")
            .data
            .parse()
            .expect("a whole value, not a torn one");
        assert!(n > 0);
    }
}

#[test]
#[ignore = "helper: kill_9_during_writes_never_corrupts runs it as a child process"]
fn writer_process() {
    let db = std::env::var("WRITER_DB").unwrap();
    let store = SqliteStore::open(db).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let key = "ZC_CONN_writer:00000";
        loop {
            let cur = store.get(key).await.unwrap();
            let (gen_, n) = cur
                .map(|v| (Some(v.generation), v.data.parse::<u64>().unwrap()))
                .unwrap_or((None, 0));
            let big = format!("{}", n + 1);
            store
                .compare_and_set(TokenWrite::new(key, gen_, &big, Duration::from_secs(3600)))
                .await
                .unwrap();
        }
    });
}

#[tokio::test]
async fn records_on_disk_are_in_the_sdk_format() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    let crm = sqlite_connection(&s, &path, None).connector("crm").unwrap();
    let token = crm.access_token().await.unwrap();
    let raw = SqliteStore::open(&path)
        .unwrap()
        .get(&crm.cache_key())
        .await
        .unwrap()
        .unwrap();
    let record = TokenRecord::from_json(&raw.data).unwrap();
    assert_eq!(record.access_token.expose_secret(), token.expose_secret());
    assert_eq!(record.lifetime_secs, 3600);
}
