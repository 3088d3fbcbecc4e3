//! Opening a store file: checks before touching it, the read-only reader and the writer, one
//! pair of connections per file in a process, the schema, and SQLite's errors classified.

use super::super::{StoreError, StoreErrorKind};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

const SCHEMA_VERSION: i64 = 1;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One file's connections, shared by every store handle on that file in this process.
///
/// Shared because SQLite shares a file's WAL index mapping between all connections to it in a
/// process, set up by the first: had a read-only reader mapped it read-only, a writer opened later
/// beside it could not write. So the writer goes first, and the reader is reopened after it.
pub(super) struct Files {
    path: PathBuf,
    label: String,
    read: Mutex<Connection>,
    /// Opened on the first write (or at open, for a file that needs its schema).
    write: Mutex<Option<Connection>>,
}

/// A file's device and inode: what identifies it whatever the path it is reached by.
type FileId = (u64, u64);

/// The files open in this process.
static OPEN: Mutex<Vec<(FileId, Weak<Files>)>> = Mutex::new(Vec::new());

impl Files {
    /// Checks the path, creates the file if missing and opens it — or joins this process's
    /// connections to it.
    pub(super) fn open(path: &Path, label: &str) -> Result<Arc<Self>, StoreError> {
        let created = prepare_file(path, label)?;
        let id = file_id(path)
            .map_err(|e| io_error(label, format!("cannot read {}", path.display()), e))?;
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, files)| files.strong_count() > 0);
        if let Some(files) = open
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, f)| f.upgrade())
        {
            return Ok(files);
        }
        let files = Arc::new(Self::open_new(path, label, created)?);
        open.push((id, Arc::downgrade(&files)));
        Ok(files)
    }

    fn open_new(path: &Path, label: &str, created: bool) -> Result<Self, StoreError> {
        // A new file, or one without the index file a read-only reader needs, is set up by the
        // writer first (its first transaction creates the index); an existing store is opened
        // for reading only.
        let write = if created || !shm_present(path) {
            let mut writer = open_writer(path, label)?;
            migrate(&mut writer, path, label)?;
            Some(writer)
        } else {
            None
        };
        let files = Self {
            path: path.to_owned(),
            label: label.to_owned(),
            read: Mutex::new(open_reader(path, label)?),
            write: Mutex::new(write),
        };
        let version =
            files.read_with(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))?;
        check_version(version, path, label)?;
        if version < SCHEMA_VERSION {
            // Another process is creating the file: this one finishes the setup if it has not.
            let mut slot = files.writer()?;
            migrate(
                slot.as_mut().expect("the writer was just opened"),
                path,
                label,
            )?;
        }
        // A damaged file can open fine and fail later: it is checked now, with a clear error.
        let check: String =
            files.read_with(|c| c.query_row("PRAGMA quick_check", [], |r| r.get(0)))?;
        if check != "ok" {
            return Err(StoreError::new(
                label,
                StoreErrorKind::Corrupt,
                recovery_hint(path),
            ));
        }
        Ok(files)
    }

    /// The writing connection, opened if this is the first write. The reader closes first and
    /// reopens after it, so the WAL index is mapped for writing (see [`Files`]).
    pub(super) fn writer(&self) -> Result<MutexGuard<'_, Option<Connection>>, StoreError> {
        let mut slot = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let mut read = lock(&self.read);
            let placeholder =
                Connection::open_in_memory().map_err(|e| classify(&self.path, &self.label, e))?;
            drop(std::mem::replace(&mut *read, placeholder));
            let writer = open_writer(&self.path, &self.label);
            *read = open_reader(&self.path, &self.label)?;
            *slot = Some(writer?);
        }
        Ok(slot)
    }

    /// Runs a read on the read-only connection — or on the writer, when the reader may not: the
    /// WAL index needs rebuilding (no process has it open and it is stale, or another SQLite
    /// program that closed last deleted it), which only a writer may do.
    pub(super) fn read_with<T>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let read = retry_busy(&self.path, &self.label, || f(&lock(&self.read)));
        match read {
            Err(StoreError {
                kind: StoreErrorKind::Rejected,
                ..
            }) => {
                let mut slot = self.writer()?;
                let writer = slot.as_mut().expect("the writer was just opened");
                retry_busy(&self.path, &self.label, || f(writer))
            }
            other => other,
        }
    }
}

/// The [`FileId`] of `path`.
#[cfg(unix)]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::canonicalize(path)?.hash(&mut h);
    Ok((0, h.finish()))
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

/// Checks the path and creates the file (and its directory) if missing; true when it created it.
fn prepare_file(path: &Path, label: &str) -> Result<bool, StoreError> {
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
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    warn_if_open(dir, true);
                }
                warn_if_open(path, false);
            }
            Ok(false)
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

pub(super) fn classify(path: &Path, label: &str, e: rusqlite::Error) -> StoreError {
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

/// The writing connection: WAL, a busy timeout, the `-wal`/`-shm` files kept and the WAL emptied
/// when it closes last.
fn open_writer(path: &Path, label: &str) -> Result<Connection, StoreError> {
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
    // With the WAL kept, this empties it when the last connection closes (after its checkpoint):
    // the next process to open the file has no log to replay.
    conn.pragma_update(None, "journal_size_limit", 0)
        .map_err(|e| classify(path, label, e))?;
    persist_wal(&conn);
    Ok(conn)
}

/// The reading connection: read-only, down to SQLite's shared-memory index (`readonly_shm`), so a
/// lookup writes nothing and a process that only reads never checkpoints.
fn open_reader(path: &Path, label: &str) -> Result<Connection, StoreError> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(reader_uri(path), flags)
        .map_err(|e| classify(path, label, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, label, e))?;
    Ok(conn)
}

/// `file:` URI of `path` for a read-only reader (`%`, `?` and `#` escaped; a path that starts
/// with `//` is not read as an authority).
#[cfg(unix)]
fn reader_uri(path: &Path) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let mut uri = b"file:".to_vec();
    if path.is_absolute() {
        uri.extend_from_slice(b"//");
    }
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.extend_from_slice(format!("%{b:02X}").as_bytes()),
            _ => uri.push(b),
        }
    }
    uri.extend_from_slice(b"?mode=ro&readonly_shm=1");
    PathBuf::from(std::ffi::OsString::from_vec(uri))
}

/// Without Unix's `readonly_shm`, the reader opens the file read-only by name.
#[cfg(not(unix))]
fn reader_uri(path: &Path) -> PathBuf {
    path.to_owned()
}

/// Whether the WAL index file a read-only reader needs exists (a writer creates it and keeps it).
fn shm_present(path: &Path) -> bool {
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    std::fs::symlink_metadata(shm).is_ok_and(|m| m.is_file())
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

/// Refuses a file written by a newer build.
fn check_version(version: i64, path: &Path, label: &str) -> Result<(), StoreError> {
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
    Ok(())
}

/// Creates the schema of a file that has none (or an older one).
fn migrate(writer: &mut Connection, path: &Path, label: &str) -> Result<(), StoreError> {
    let version = retry_busy(path, label, || {
        writer.pragma_query_value(None, "user_version", |r| r.get(0))
    })?;
    check_version(version, path, label)?;
    if version < SCHEMA_VERSION {
        create_schema(writer, path, label)?;
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
