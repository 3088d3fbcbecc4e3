//! The embedded default store: one SQLite file shared by every process on the host.
//!
//! - WAL journal and a busy timeout, so readers never wait and writers queue briefly;
//! - every write is one `BEGIN IMMEDIATE` transaction: compare-and-set and leases are atomic across
//!   processes, and a process killed mid-write leaves the file intact;
//! - the directory is created `0700` and the file `0600` (on Unix);
//! - the mint lease is a row with an owner and an expiry: a process killed while holding it blocks
//!   others for at most the lease TTL.
//!
//! Reads run on the calling thread (a few microseconds, never blocked by writers under WAL);
//! writes and leases run on Tokio's blocking pool, since they may wait for another process's
//! transaction.
//!
//! A read is only a read: a process that only looks tokens up (a warm `connector token`) opens one
//! read-only connection that does not write even SQLite's shared-memory index (`readonly_shm`),
//! and never checkpoints; the writing connection is opened on the first write. The writer keeps
//! the `-wal` and `-shm` files and empties the WAL when it closes last, so the next reader finds
//! nothing to replay.

use super::{CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite};
use crate::clock::{Clock, EpochMillis, SystemClock, duration_millis};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod files;

use files::{Files, classify};

/// Tombstones and expired rows older than this are removed.
const RETENTION_MS: i64 = 24 * 3600 * 1000;

/// A token store in a SQLite file. Clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    label: String,
    files: Arc<Files>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl SqliteStore {
    /// The default location: `<user data dir>/catalyst-connectors/tokens.db` (on Linux
    /// `~/.local/share/catalyst-connectors/tokens.db`, on macOS
    /// `~/Library/Application Support/catalyst-connectors/tokens.db`).
    pub fn default_path() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("catalyst-connectors").join("tokens.db"))
    }

    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// Opens the store with expiries and leases on `clock` (all processes sharing a file must use
    /// the same time source; tests use a [`ManualClock`](crate::ManualClock)).
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let label = format!("sqlite {}", path.display());
        let files = Files::open(&path, &label)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                label,
                files,
                clock,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let run = move || {
            let mut slot = inner.files.writer()?;
            let conn = slot.as_mut().expect("the writer was just opened");
            f(&inner, conn).map_err(|e| classify(&inner.path, &inner.label, e))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => h.spawn_blocking(run).await.map_err(|e| {
                StoreError::new(
                    self.inner.label.clone(),
                    StoreErrorKind::Unavailable,
                    format!("store task failed: {e}"),
                )
            })?,
            Err(_) => run(),
        }
    }
}

/// The live generation at `key`, if any.
fn live_generation(
    tx: &Connection,
    key: &str,
    now: EpochMillis,
) -> Result<Option<u64>, rusqlite::Error> {
    tx.query_row(
        "SELECT generation FROM records WHERE key = ?1 AND data IS NOT NULL AND expires_at > ?2",
        params![key, now],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|g| g.map(|g| u64::try_from(g).unwrap_or(0)))
}

/// The live record at `key`.
fn select(
    conn: &Connection,
    key: &str,
    now: EpochMillis,
) -> Result<Option<StoredValue>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT generation, data FROM records WHERE key = ?1 AND data IS NOT NULL AND expires_at > ?2",
    )?
    .query_row(params![key, now], |r| {
        Ok(StoredValue {
            generation: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            data: r.get(1)?,
        })
    })
    .optional()
}

/// Writes `data` at `key` with the next generation (generations never repeat for a key).
fn upsert(
    tx: &Connection,
    key: &str,
    data: &str,
    expires_at: EpochMillis,
) -> Result<u64, rusqlite::Error> {
    tx.query_row(
        "INSERT INTO records (key, generation, data, expires_at) VALUES (?1, 1, ?2, ?3)
         ON CONFLICT(key) DO UPDATE SET
             -- A damaged generation (negative, or near the integer limit) restarts rather than
             -- overflowing into a REAL that no later read accepts.
             generation = CASE WHEN generation < 0 OR generation >= 9007199254740991 THEN 1
                               ELSE generation + 1 END,
             data = excluded.data, expires_at = excluded.expires_at
         RETURNING generation",
        params![key, data, expires_at],
        |r| r.get::<_, i64>(0),
    )
    .map(|g| u64::try_from(g).unwrap_or(0))
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let now = self.inner.clock.now_millis();
        self.inner.files.read_with(|conn| select(conn, key, now))
    }

    async fn compare_and_set(&self, write: TokenWrite<'_>) -> Result<CasOutcome, StoreError> {
        let key = write.key.to_owned();
        let data = write.data.to_owned();
        let expected = write.expected;
        let ttl = duration_millis(write.ttl);
        let refresh = write.refresh.map(|(k, d)| (k.to_owned(), d.to_owned()));
        self.blocking(move |inner, conn| {
            let now = inner.clock.now_millis();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some((rkey, rdata)) = &refresh {
                upsert(&tx, rkey, rdata, i64::MAX)?;
            }
            let current = live_generation(&tx, &key, now)?;
            let outcome = if current == expected {
                let generation = upsert(&tx, &key, &data, now.saturating_add(ttl))?;
                CasOutcome::Written { generation }
            } else {
                CasOutcome::Conflict { current }
            };
            tx.execute(
                "DELETE FROM records WHERE expires_at < ?1",
                params![now.saturating_sub(RETENTION_MS)],
            )?;
            tx.execute("DELETE FROM leases WHERE expires_at < ?1", params![now])?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner, conn| {
            let now = inner.clock.now_millis();
            let expected = expected.map(|g| i64::try_from(g).unwrap_or(i64::MAX));
            // A tombstone (data NULL) keeps the generation, so it is never reused.
            let changed = conn.execute(
                "UPDATE records SET data = NULL
                 WHERE key = ?1 AND data IS NOT NULL AND expires_at > ?2 AND (?3 IS NULL OR generation = ?3)",
                params![key, now, expected],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn try_acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let owner = owner.to_owned();
        let ttl = duration_millis(ttl);
        self.blocking(move |inner, conn| {
            let now = inner.clock.now_millis();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let holder: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, expires_at FROM leases WHERE key = ?1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            // A lease ending further ahead than any lease we grant (a clock jump, damage) is
            // not honoured: it would lock every process out until then.
            let impossible = now.saturating_add(ttl.saturating_mul(2)).saturating_add(60_000);
            let free = match &holder {
                None => true,
                Some((h, until)) if *until > impossible => {
                    tracing::warn!(key = %key, holder = %h, "ignoring a mint lease that ends implausibly far in the future");
                    true
                }
                Some((h, until)) => *h == owner || *until <= now,
            };
            if free {
                tx.execute(
                    "INSERT INTO leases (key, owner, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                    params![key, owner, now.saturating_add(ttl)],
                )?;
            }
            tx.commit()?;
            Ok(free)
        })
        .await
    }

    async fn lease_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner, conn| {
            let now = inner.clock.now_millis();
            conn.query_row(
                "SELECT owner FROM leases WHERE key = ?1 AND expires_at > ?2",
                params![key, now],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .await
    }

    async fn take_over_lease(
        &self,
        key: &str,
        dead_owner: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (key, dead, owner) = (key.to_owned(), dead_owner.to_owned(), owner.to_owned());
        let ttl = duration_millis(ttl);
        self.blocking(move |inner, conn| {
            let now = inner.clock.now_millis();
            let changed = conn.execute(
                "UPDATE leases SET owner = ?3, expires_at = ?4 WHERE key = ?1 AND owner = ?2",
                params![key, dead, owner, now.saturating_add(ttl)],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        let owner = owner.to_owned();
        self.blocking(move |_, conn| {
            conn.execute(
                "DELETE FROM leases WHERE key = ?1 AND owner = ?2",
                params![key, owner],
            )?;
            Ok(())
        })
        .await
    }
}
