//! Every byte the service reads or writes in the backups directory and the
//! source database goes through here, so verification, compression or
//! deduplication later are changes to this module alone.
//!
//! All functions block: call them from `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::{Connection, OpenFlags, backup::StepResult};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How long a backup or restore waits for a lock held by another connection.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Pages copied per backup step of a cancellable copy (4 MiB at 4 KiB
/// pages): how often it looks whether it was cancelled.
const STEP_PAGES: i32 = 1024;

/// Prefix of a snapshot being written; never a backup name (those never
/// start with '.'), and removed at start if a crash left one behind.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Prefix a file takes while it is being deleted, so a crash mid-delete can
/// be told apart from a missing file and finished or undone at start.
pub const DELETING_PREFIX: &str = ".deleting-";

/// Size and checksum of a finished backup file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub size_bytes: i64,
    pub sha256: String,
}

/// Opens a database that must already exist and be SQLite. `what` names it in
/// errors ("the source database"), never with its path.
fn open_existing(path: &Path, what: &str, flags: OpenFlags) -> Result<Connection> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::FailedPrecondition(format!("{what} does not exist")));
        }
        Err(e) => {
            return Err(Error::FailedPrecondition(format!(
                "{what} is unreadable: {e}"
            )));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(Error::FailedPrecondition(format!(
                "{what} is not a regular file"
            )));
        }
        Ok(_) => {}
    }
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| Error::FailedPrecondition(format!("{what} cannot be opened: {e}")))?;
    conn.busy_timeout(LOCK_WAIT)?;
    // Reading the schema fails at once on a file that is not SQLite.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| unreadable(what, e))?;
    Ok(conn)
}

/// A failed read of a database: locked past [`LOCK_WAIT`] (worth a retry)
/// or not SQLite at all.
fn unreadable(what: &str, e: rusqlite::Error) -> Error {
    if matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    ) {
        return Error::FailedPrecondition(format!(
            "{what} stayed locked by another connection for {} s; try again later",
            LOCK_WAIT.as_secs()
        ));
    }
    Error::FailedPrecondition(format!("{what} is not a readable SQLite database: {e}"))
}

/// A failed change to the backups directory, in terms an operator can act
/// on: the directory is gone or not writable (FAILED_PRECONDITION). A full
/// disk and anything else stay I/O errors (RESOURCE_EXHAUSTED, INTERNAL).
pub fn dir_error(error: Error) -> Error {
    let Error::Io(e) = &error else {
        return error;
    };
    match e.kind() {
        ErrorKind::NotFound => Error::FailedPrecondition(
            "the backups directory does not exist; recreate it (or restart the server)".into(),
        ),
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
            Error::FailedPrecondition(format!("the backups directory is not writable: {e}"))
        }
        _ => error,
    }
}

/// Writes a consistent snapshot of the live database at `source` to
/// `dir/filename`, never replacing an existing file.
pub fn snapshot(source: &Path, what: &str, dir: &Path, filename: &str) -> Result<FileFacts> {
    check_free(dir, filename)?;
    let staged = stage_snapshot(source, what, dir, filename, &CancellationToken::new())?;
    staged.link_as(filename)?;
    sync_dir(dir)?;
    Ok(staged.facts)
}

/// Fails with ALREADY_EXISTS when something is at `dir/filename`.
pub fn check_free(dir: &Path, filename: &str) -> Result<()> {
    if fs::symlink_metadata(dir.join(filename)).is_ok() {
        return Err(already_exists(filename));
    }
    Ok(())
}

fn already_exists(filename: &str) -> Error {
    Error::AlreadyExists(format!(
        "backup {} already exists",
        crate::error::quote(filename)
    ))
}

/// A finished, fsynced snapshot under a temporary name, waiting to be
/// linked under one or more backup names; the temporary name goes when it
/// is dropped.
pub struct Staged {
    /// The snapshot's own name, removed when this is dropped.
    temp: TempFile,
    /// The backups directory, where its names are linked.
    dir: PathBuf,
    /// When the copy began: the moment the snapshot shows.
    pub taken_at: DateTime<Utc>,
    /// Size and checksum, the same under every name.
    pub facts: FileFacts,
}

impl Staged {
    /// Links the snapshot under `filename`, failing rather than replacing
    /// an existing file. The name is durable after a [`sync_dir`] (one sync
    /// covers every link made before it). Backups due together share one
    /// snapshot by linking it under each of their names: the file is never
    /// written again, so the names cannot drift apart.
    pub fn link_as(&self, filename: &str) -> Result<()> {
        match fs::hard_link(&self.temp.path, self.dir.join(filename)) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(already_exists(filename)),
            linked => Ok(linked?),
        }
    }
}

/// Copies the live database at `source` to a temporary file in `dir`
/// (named after `hint`), fsynced and hashed, ready to be linked.
///
/// The copy runs in one read transaction on the source, so writers on
/// other connections neither block it (WAL) nor restart it. It is copied in
/// steps of [`STEP_PAGES`], and `cancel` stops it between steps (the
/// temporary file is removed). Together with [`Staged::link_as`] a crash
/// leaves no file or a complete one under a backup's name.
pub fn stage_snapshot(
    source: &Path,
    what: &str,
    dir: &Path,
    hint: &str,
    cancel: &CancellationToken,
) -> Result<Staged> {
    let taken_at = Utc::now().trunc_subsecs(6);
    let src = open_existing(source, what, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    check_cancelled(cancel)?;
    let temp = TempFile::create(dir, hint).map_err(dir_error)?;
    {
        let mut dst = Connection::open_with_flags(
            &temp.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A scratch file until it is fsynced and linked below: a crash
        // discards it whole, so it needs neither a journal (a journal file
        // created and deleted per step) nor SQLite's own syncs.
        dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
        // One read transaction across every step: a consistent snapshot
        // that other connections' commits do not restart.
        src.execute_batch("BEGIN")?;
        src.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| unreadable(what, e))?;
        copy_steps(&src, &mut dst, STEP_PAGES, cancel)?;
        // The copy carries the source's WAL flag; a backup file stands alone.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
    }
    drop(src);
    check_cancelled(cancel)?;
    let file = File::open(&temp.path)?;
    // Hash while the kernel writes the file out: both work from the page
    // cache, so the fsync's wait costs no extra time.
    let facts = std::thread::scope(|scope| {
        let synced = scope.spawn(|| file.sync_all());
        let facts = hash_file(&file);
        synced
            .join()
            .map_err(|_| Error::Internal("the fsync thread panicked".into()))??;
        facts
    })?;
    Ok(Staged {
        temp,
        dir: dir.to_owned(),
        taken_at,
        facts,
    })
}

/// Size, SHA-256 and modification time of a regular file in the backups
/// directory (for adopting files other tools dropped in).
pub fn describe(dir: &Path, filename: &str) -> Result<(FileFacts, DateTime<Utc>)> {
    let file = open_backup(dir, filename)?;
    let modified = file.metadata()?.modified()?;
    Ok((hash_file(&file)?, modified.into()))
}

/// A backup whose bytes matched the catalog and passed `PRAGMA
/// integrity_check`, opened read-only. Holding the open connection keeps its
/// content readable even if the file is deleted meanwhile, so what is
/// restored is exactly what was verified.
pub struct VerifiedBackup {
    conn: Connection,
    /// The file as it was verified: a later change to it is noticed.
    pub stamp: FileStamp,
}

/// Checks a backup in `dir` against what the catalog recorded when it was
/// written: its size, its SHA-256, then a full `PRAGMA integrity_check`
/// (quick_check misses index damage). Damage is [`Error::DataLoss`] saying
/// what is wrong; anything else (a locked or unreadable file) is another
/// error, and says nothing about the bytes.
pub fn verify_backup(dir: &Path, filename: &str, expected: &FileFacts) -> Result<VerifiedBackup> {
    let mut reader = CheckedReader::open(dir, filename, expected.clone()).map_err(|e| match e {
        // Being deleted (renamed, its row not yet gone): nothing is lost.
        Error::Io(e)
            if e.kind() == ErrorKind::NotFound
                && !dir.join(format!("{DELETING_PREFIX}{filename}")).exists() =>
        {
            Error::DataLoss("the backup's file is missing".into())
        }
        e => e,
    })?;
    let before = stamp(dir, filename)?;
    // Size and digest, checked as the bytes are read, as for a download.
    reader.check_to_end()?;
    // An empty file opens as an empty database and passes integrity_check.
    match sniff(dir, filename)? {
        Content::Sqlite => {}
        Content::Empty => return Err(Error::DataLoss("the file is empty".into())),
        Content::NotSqlite => {
            return Err(Error::DataLoss("the file is not a SQLite database".into()));
        }
    }
    let conn = open_existing(
        &dir.join(filename),
        "the backup",
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    check_integrity(&conn, "the backup").map_err(|e| match e {
        Error::FailedPrecondition(why) => Error::DataLoss(format!("integrity check: {why}")),
        e => e,
    })?;
    if stamp(dir, filename)? != before {
        return Err(Error::Unavailable(
            "the backup's file changed while it was verified; verify it again".into(),
        ));
    }
    Ok(VerifiedBackup {
        conn,
        stamp: before,
    })
}

/// Opens a catalogued backup's file for reading. Its name holding anything
/// but a regular file (a symlink, never followed) is damage: what was
/// written is not there.
fn open_catalogued(dir: &Path, filename: &str) -> Result<File> {
    open_backup(dir, filename).map_err(|e| match e {
        Error::Io(e)
            if e.kind() == ErrorKind::InvalidInput || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            Error::DataLoss("the backup's file was replaced by something other than a file".into())
        }
        e => e,
    })
}

fn size_mismatch(on_disk: u64, expected: &FileFacts) -> Error {
    Error::DataLoss(format!(
        "size: the file has {on_disk} bytes, the catalog recorded {}",
        expected.size_bytes
    ))
}

/// Bytes read at a time while verifying.
const VERIFY_CHUNK: usize = 1 << 20;

/// The first 12 hex digits of a digest, enough to tell two apart.
fn prefix(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Reads a backup's bytes (for a download, or a verification) while
/// checking them against the catalog, so damaged bytes never end as whole:
/// a size that differs fails before the first byte, a digest that differs
/// after the last.
pub struct CheckedReader {
    file: File,
    expected: FileFacts,
    hasher: ring::digest::Context,
    read: u64,
}

impl CheckedReader {
    /// Opens `dir/filename`; a size other than the recorded one is
    /// [`Error::DataLoss`].
    pub fn open(dir: &Path, filename: &str, expected: FileFacts) -> Result<Self> {
        let file = open_catalogued(dir, filename)?;
        let on_disk = file.metadata()?.len();
        if i64::try_from(on_disk).ok() != Some(expected.size_bytes) {
            return Err(size_mismatch(on_disk, &expected));
        }
        Ok(Self {
            file,
            expected,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            read: 0,
        })
    }

    /// The next at most `max` bytes; empty at the end, once the bytes read
    /// matched the recorded size and digest ([`Error::DataLoss`] if not).
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut chunk = vec![0u8; max];
        let n = self.read_some(&mut chunk)?;
        chunk.truncate(n);
        Ok(chunk)
    }

    /// Reads every byte to the end, checking them as [`Self::next_chunk`]
    /// does, into one reused buffer.
    pub fn check_to_end(&mut self) -> Result<()> {
        let mut buf = vec![0u8; VERIFY_CHUNK];
        while self.read_some(&mut buf)? > 0 {}
        Ok(())
    }

    /// Reads into `buf` and checks what came: too many bytes, or at the
    /// end (0 read) a size or digest other than recorded, is damage.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        self.hasher.update(&buf[..n]);
        let recorded = self.expected.size_bytes;
        if i64::try_from(self.read).ok() > Some(recorded) {
            return Err(size_mismatch(self.read, &self.expected));
        }
        if n == 0 {
            if i64::try_from(self.read).ok() != Some(recorded) {
                return Err(size_mismatch(self.read, &self.expected));
            }
            let digest = hex::encode(self.hasher.clone().finish());
            if digest != self.expected.sha256 {
                return Err(Error::DataLoss(format!(
                    "digest: the file's SHA-256 is {}…, the catalog recorded {}…",
                    prefix(&digest),
                    prefix(&self.expected.sha256)
                )));
            }
        }
        Ok(n)
    }
}

fn check_integrity(conn: &Connection, what: &str) -> Result<()> {
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::FailedPrecondition(format!("{what} cannot be verified: {e}")))?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "{what} fails integrity_check: {}",
            problems.into_iter().take(3).collect::<Vec<_>>().join("; ")
        )))
    }
}

/// Replaces the content of the live database at `source` with the verified
/// backup's, through SQLite itself: other connections see the old or the new
/// database, never a torn one, and SQLite keeps any WAL consistent. The
/// result is checked again before returning.
pub fn restore(backup: VerifiedBackup, source: &Path, what: &str) -> Result<()> {
    let mut dst = open_writable(source, what)?;
    copy_database(&backup.conn, &mut dst).map_err(|e| unwritable(what, e))?;
    check_integrity(&dst, what)
}

/// Opens the live database for writing, failing with FAILED_PRECONDITION
/// naming the cause when it cannot be written (a read-only file, directory
/// or file system), before anything is changed.
pub fn open_writable(source: &Path, what: &str) -> Result<Connection> {
    // Opened for writing (never truncated nor created) to ask the kernel:
    // a read-only file system or file says so here, where SQLite would
    // only fail to open a WAL database.
    match OpenOptions::new().write(true).open(source) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
            ) =>
        {
            return Err(Error::FailedPrecondition(format!(
                "{what} cannot be written: {e}"
            )));
        }
        _ => {}
    }
    let conn = open_existing(source, what, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // SQLite quietly opens a file it may not write read-only.
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(Error::FailedPrecondition(format!(
            "{what} cannot be written: the file is read-only"
        )));
    }
    // A write takes the lock and creates the journal (or WAL files) beside
    // the file: a read-only directory or file system fails here.
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(|e| unwritable(what, e.into()))?;
    Ok(conn)
}

/// A failed write to the live database: read-only is the operator's to fix
/// (FAILED_PRECONDITION), anything else stays as it is.
fn unwritable(what: &str, error: Error) -> Error {
    let Error::Sqlite(e) = &error else {
        return error;
    };
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            Error::FailedPrecondition(format!("{what} cannot be written: {e}"))
        }
        _ => error,
    }
}

/// One-step online backup from `src` into `dst`, waiting out locks held by
/// other connections for up to [`LOCK_WAIT`].
fn copy_database(src: &Connection, dst: &mut Connection) -> Result<()> {
    copy_steps(src, dst, -1, &CancellationToken::new())
}

/// Online backup from `src` into `dst`, `pages` at a time (-1: all in one
/// step), stopping between steps once `cancel` fires and waiting out locks
/// held by other connections for up to [`LOCK_WAIT`].
///
/// `sqlite3_interrupt` cannot stop a copy (`sqlite3_backup_step` never
/// looks at it), hence the steps.
fn copy_steps(
    src: &Connection,
    dst: &mut Connection,
    pages: i32,
    cancel: &CancellationToken,
) -> Result<()> {
    let backup = rusqlite::backup::Backup::new(src, dst)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        check_cancelled(cancel)?;
        match backup.step(pages)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            StepResult::Busy | StepResult::Locked => {
                return Err(Error::FailedPrecondition(
                    "the database stayed locked by another connection; try again later".into(),
                ));
            }
            _ => return Err(Error::Internal("unexpected backup step result".into())),
        }
    }
}

/// The error of a backup whose caller stopped waiting.
pub fn cancelled() -> Error {
    Error::Cancelled(
        "the backup was cancelled: the caller stopped waiting; nothing was kept".into(),
    )
}

/// Fails with [`cancelled`] once `cancel` fired.
pub fn check_cancelled(cancel: &CancellationToken) -> Result<()> {
    if cancel.is_cancelled() {
        return Err(cancelled());
    }
    Ok(())
}

/// Size and SHA-256 of an open file, read from its current offset.
///
/// ring's SHA-256 (OpenSSL's assembly) hashes about 1.8 times as fast as
/// the sha2 crate on CPUs without SHA instructions; on a 1 GiB backup that
/// is seconds.
pub fn hash_file(mut file: &File) -> Result<FileFacts> {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    // Small backups are common (many users, small databases): no 1 MiB
    // buffer to zero for a file of a few pages.
    let len = file.metadata()?.len().clamp(4096, 1 << 20);
    let mut buf = vec![0u8; len as usize];
    let mut size: i64 = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as i64;
    }
    Ok(FileFacts {
        size_bytes: size,
        sha256: hex::encode(hasher.finish()),
    })
}

/// Opens a regular file in the backups directory for reading, never
/// following a symlink (`O_NOFOLLOW`).
pub fn open_backup(dir: &Path, filename: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(filename))?;
    if !file.metadata()?.is_file() {
        return Err(Error::Io(ErrorKind::InvalidInput.into()));
    }
    Ok(file)
}

/// What a backup file holds, judged by its size and header alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Zero bytes.
    Empty,
    /// Not empty, but without the SQLite header.
    NotSqlite,
    /// Starts with the SQLite header.
    Sqlite,
}

/// Classifies a regular file in the backups directory by size and header
/// (never following a symlink).
pub fn sniff(dir: &Path, filename: &str) -> Result<Content> {
    let mut file = open_backup(dir, filename)?;
    if file.metadata()?.len() == 0 {
        return Ok(Content::Empty);
    }
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) if &header == b"SQLite format 3\0" => Ok(Content::Sqlite),
        Ok(()) => Ok(Content::NotSqlite),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Content::NotSqlite),
        Err(e) => Err(e.into()),
    }
}

/// Identifies one version of a file: same device, inode, size, modification
/// and change times. Any write, replacement or `touch` changes it; the change
/// time cannot be set back by user tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The stamp of a regular file in the backups directory (a symlink or
/// anything else is an error).
pub fn stamp(dir: &Path, filename: &str) -> Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(dir.join(filename))?;
    if !meta.is_file() {
        return Err(Error::Io(ErrorKind::InvalidInput.into()));
    }
    Ok(FileStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

/// Deletes a backup file crash-safely in two steps: [`begin_delete`] renames
/// it to a `.deleting-` name (so it is no longer under its backup name), the
/// caller commits the catalog change, then [`finish_delete`] unlinks it.
/// A symlink is renamed and unlinked as a link, never followed.
pub fn begin_delete(dir: &Path, filename: &str) -> Result<PathBuf> {
    let doomed = dir.join(format!("{DELETING_PREFIX}{filename}"));
    fs::rename(dir.join(filename), &doomed)?;
    Ok(doomed)
}

/// Puts a file back after the catalog change failed.
pub fn undo_delete(dir: &Path, filename: &str) -> Result<()> {
    fs::rename(
        dir.join(format!("{DELETING_PREFIX}{filename}")),
        dir.join(filename),
    )?;
    Ok(())
}

/// Unlinks a file [`begin_delete`] renamed. No directory fsync: the
/// catalog row is already gone, and should a power loss undo the unlink,
/// the start-up reconcile finishes the `.deleting-` file it finds.
pub fn finish_delete(doomed: &Path) -> Result<()> {
    fs::remove_file(doomed)?;
    Ok(())
}

/// Makes the directory's entries (new links, renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// A file under a temporary name, removed on drop (names linked to it
/// stay).
struct TempFile {
    path: PathBuf,
    /// Holds an exclusive `flock` while the file is written, so another
    /// process's start-up cleanup can tell a live write from a crash's
    /// leftover (the lock dies with its process).
    _lock: File,
}

impl TempFile {
    /// Creates the file empty, mode 0600, under a unique temporary name.
    fn create(dir: &Path, filename: &str) -> Result<Self> {
        let path = dir.join(format!(
            "{TEMP_PREFIX}{filename}-{:016x}",
            rand::random::<u64>()
        ));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        lock.lock()?;
        Ok(Self { path, _lock: lock })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes what a crash can leave behind in the backups directory:
/// temporary snapshot files. Returns their names.
/// A snapshot still being written by a live process (this one or another
/// sharing the directory) is locked and left alone; its SQLite journal
/// goes with it.
pub fn remove_temp_files(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with(TEMP_PREFIX) || name.ends_with("-journal") {
            continue;
        }
        let path = dir.join(&name);
        let abandoned = match File::open(&path) {
            Ok(file) => file.try_lock().is_ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if abandoned {
            fs::remove_file(&path)?;
            removed.push(name.clone());
            let journal = dir.join(format!("{name}-journal"));
            if fs::remove_file(&journal).is_ok() {
                removed.push(format!("{name}-journal"));
            }
        }
    }
    Ok(removed)
}

/// Takes an exclusive advisory lock on `path` (created if missing), held
/// until the returned file is dropped or the process dies. Serializes work
/// across processes: migrations, changes to the backups directory.
pub fn lock_exclusive(path: &Path) -> Result<File> {
    let opened = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path);
    let file = match opened {
        // A read-only file system still takes locks on an existing file
        // opened for reading: listing and downloading go on.
        Err(e) if e.kind() == ErrorKind::ReadOnlyFilesystem => File::open(path)?,
        opened => opened?,
    };
    file.lock()?;
    Ok(file)
}

/// Regular files in the backups directory that can be backups, with the
/// files a crash left mid-delete (their names without the prefix). Symlinks
/// and other non-regular files are skipped: never followed out of the
/// directory.
pub fn scan_dir(dir: &Path) -> Result<DirScan> {
    let mut scan = DirScan::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(original) = name.strip_prefix(DELETING_PREFIX) {
            scan.deleting.push(original.to_owned());
        } else if super::naming::is_backup_filename(&name) {
            scan.files.push(name);
        }
    }
    Ok(scan)
}

#[derive(Debug, Default)]
pub struct DirScan {
    pub files: Vec<String>,
    pub deleting: Vec<String>,
}

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}
