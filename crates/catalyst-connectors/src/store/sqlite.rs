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

use super::{CasOutcome, StoreError, StoreErrorKind, StoredValue, TokenStore, TokenWrite};
use crate::clock::{Clock, EpochMillis, SystemClock, duration_millis};
use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
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
    read: Mutex<Connection>,
    write: Mutex<Connection>,
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
        prepare_file(&path, &label)?;
        let mut write = open_connection(&path, &label)?;
        migrate(&mut write, &path, &label)?;
        let read = open_connection(&path, &label)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                label,
                read: Mutex::new(read),
                write: Mutex::new(write),
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
            let mut conn = lock(&inner.write);
            f(&inner, &mut conn).map_err(|e| classify(&inner.path, &inner.label, e))
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

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection leaves SQLite consistent (transactions roll back).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_error(label: &str, what: String, e: std::io::Error) -> StoreError {
    StoreError::new(label, StoreErrorKind::Unavailable, format!("{what}: {e}"))
}

/// Warns about an existing store file, or its directory, that others can read or write. Neither
/// is changed: they are not (provably) ours — a directory may be shared (`/tmp`, mode 1777) and a
/// file may have been made that way on purpose.
#[cfg(unix)]
fn warn_if_open(path: &Path, is_dir: bool) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if is_dir {
        // Others may write in it without the sticky bit: they could replace the store file.
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            tracing::warn!(directory = %path.display(), mode = format!("{mode:o}"), "the token store's directory is writable by other users, who could replace the store; use a directory of your own");
        }
    } else if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the token store file is readable by other users: `chmod 600` it");
    }
}

fn prepare_file(path: &Path, label: &str) -> Result<(), StoreError> {
    let rejected = |message: String| StoreError::new(label, StoreErrorKind::Rejected, message);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            // Never followed (its target would be opened, created or changed): refused untouched.
            return Err(rejected(format!(
                "{} is a symbolic link; give the path of the database file itself",
                path.display()
            )));
        }
        Ok(meta) if meta.is_dir() => {
            return Err(rejected(format!(
                "{} is a directory: give the path of a database file, e.g. sqlite:{}",
                path.display(),
                path.join("tokens.db").display()
            )));
        }
        _ => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        // Ours: created 0700 (the umask can only take bits away).
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            io_error(
                label,
                format!("cannot create the directory {}", dir.display()),
                e,
            )
        })?;
    }
    // Ours when this creates it: 0600 from the start. O_EXCL never follows a link.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    warn_if_open(dir, true);
                }
                warn_if_open(path, false);
            }
            Ok(())
        }
        Err(e) => Err(io_error(
            label,
            format!("cannot create {}", path.display()),
            e,
        )),
    }
}

fn recovery_hint(path: &Path) -> String {
    format!(
        "{} is damaged or not a token store: move it aside (or delete it) and run again; tokens will be minted again, and refresh tokens kept in it must be authorized again",
        path.display()
    )
}

fn classify(path: &Path, label: &str, e: rusqlite::Error) -> StoreError {
    let code = e.sqlite_error_code();
    match code {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::new(
            label,
            StoreErrorKind::Corrupt,
            format!("{} ({e})", recovery_hint(path)),
        ),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::new(
            label,
            StoreErrorKind::Unavailable,
            format!(
                "the database stayed locked by another process for {}s ({e})",
                BUSY_TIMEOUT.as_secs()
            ),
        ),
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            StoreError::new(
                label,
                StoreErrorKind::Rejected,
                format!(
                    "cannot open {} for writing ({e}): check its permissions",
                    path.display()
                ),
            )
        }
        _ => StoreError::new(label, StoreErrorKind::Unavailable, e.to_string()),
    }
}

/// Runs `f` again while SQLite answers busy/locked without waiting: when several processes open
/// a new file at once, switching it to WAL and creating the schema can be refused outright
/// (SQLite does not call the busy handler there), for up to the busy timeout.
fn retry_busy<T>(
    path: &Path,
    label: &str,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        match f() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other.map_err(|e| classify(path, label, e)),
        }
    }
}

fn open_connection(path: &Path, label: &str) -> Result<Connection, StoreError> {
    // SQLITE_OPEN_NOFOLLOW: a link put at the path after it was checked is refused, not opened.
    let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, label, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, label, e))?;
    // journal_mode returns a row; pragma_update_and_check reads it.
    retry_busy(path, label, || {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
    })?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| classify(path, label, e))?;
    persist_wal(&conn);
    Ok(conn)
}

/// Keeps the `-wal` and `-shm` files when the last connection closes, so a short-lived process
/// (a `connector token` run) does not create and delete two files each time.
fn persist_wal(conn: &Connection) {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: `conn.handle()` is the live `sqlite3*` owned by `conn`, used only for this call on
    // this thread; SQLITE_FCNTL_PERSIST_WAL reads and writes the `int` the pointer refers to,
    // which outlives the call. A failure only means the files are deleted as usual.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        );
    }
}

fn migrate(conn: &mut Connection, path: &Path, label: &str) -> Result<(), StoreError> {
    let version: i64 = retry_busy(path, label, || {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
    })?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::new(
            label,
            StoreErrorKind::Rejected,
            format!(
                "{} was written by a newer catalyst-connectors (schema {version}, this build knows {SCHEMA_VERSION}): upgrade, or point this program at another file",
                path.display()
            ),
        ));
    }
    // An up-to-date file is only read: opening it for a lookup writes nothing.
    if version < SCHEMA_VERSION {
        create_schema(conn, path, label)?;
    }
    // A damaged file can open fine and fail later: check it now, with a clear error.
    let check: String = retry_busy(path, label, || {
        conn.query_row("PRAGMA quick_check", [], |r| r.get(0))
    })?;
    if check != "ok" {
        return Err(StoreError::new(
            label,
            StoreErrorKind::Corrupt,
            recovery_hint(path),
        ));
    }
    Ok(())
}

fn create_schema(conn: &mut Connection, path: &Path, label: &str) -> Result<(), StoreError> {
    retry_busy(path, label, || {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
             key        TEXT PRIMARY KEY NOT NULL,
             generation INTEGER NOT NULL,
             data       TEXT,
             expires_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS leases (
             key        TEXT PRIMARY KEY NOT NULL,
             owner      TEXT NOT NULL,
             expires_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         PRAGMA user_version = 1;",
        )?;
        tx.commit()
    })
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
        let conn = lock(&self.inner.read);
        let mut stmt = conn
            .prepare_cached(
                "SELECT generation, data FROM records WHERE key = ?1 AND data IS NOT NULL AND expires_at > ?2",
            )
            .map_err(|e| classify(&self.inner.path, &self.inner.label, e))?;
        stmt.query_row(params![key, now], |r| {
            Ok(StoredValue {
                generation: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                data: r.get(1)?,
            })
        })
        .optional()
        .map_err(|e| classify(&self.inner.path, &self.inner.label, e))
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
