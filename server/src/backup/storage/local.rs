//! The local directory every storage keeps (`--backups-dir`): scratch
//! files under temporary names, and the lock file shared with the other
//! processes using the same storage.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SubsecRound, Utc};
use tokio_util::sync::CancellationToken;

use super::StorageLock;
use crate::backup::{check_cancelled, sqlite};
use crate::blocking::blocking;
use crate::error::{Error, Result};

/// Prefix of a scratch file; never a backup name (those never start with
/// '.'), and removed at start if a crash left one behind.
pub const TEMP_PREFIX: &str = ".tmp-";

/// The most a single `write` to a local file carries. The size shows in
/// the system time a new file's page cache costs on this project's VMs
/// (Linux 6.18): writing 1 GiB with `dd bs=SIZE conv=fsync` took 0.46 and
/// 0.53 s of it at 128 KiB in two rounds, 0.65 and 1.00 s at 64 KiB, 0.92
/// and 2.88 s at 4 KiB, 3.93 and 1.55 s at 1 MiB. A first CreateBackup,
/// whose 16 MiB packs went out in one write each, spent 1.4-2.2 s in the
/// kernel before and 0.6 s after.
pub const WRITE_BYTES: usize = 128 << 10;

/// A file under a temporary name, removed on drop (names linked to it
/// stay).
pub struct TempFile {
    pub path: PathBuf,
    /// Holds an exclusive `flock` while the file is written, so another
    /// process's start-up cleanup can tell a live write from a crash's
    /// leftover (the lock dies with its process).
    _lock: File,
}

impl TempFile {
    /// Creates the file empty, mode 0600, under a unique temporary name
    /// in `dir` that starts with `hint`.
    pub fn create(dir: &Path, hint: &str) -> Result<Self> {
        let path = dir.join(format!(
            "{TEMP_PREFIX}{hint}-{:016x}",
            rand::random::<u64>()
        ));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| dir_error(e.into()))?;
        lock.lock()?;
        Ok(Self { path, _lock: lock })
    }

    /// A buffered writer to the file, each of its writes at most
    /// [`WRITE_BYTES`].
    pub async fn writer(&self) -> Result<tokio::io::BufWriter<tokio::fs::File>> {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .await?;
        file.set_max_buf_size(WRITE_BYTES);
        Ok(tokio::io::BufWriter::with_capacity(1 << 20, file))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(journal(&self.path));
    }
}

fn journal(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

/// Removes what a crash can leave behind in `dir`: scratch files (with
/// their SQLite journals). Returns their names. One still being written by
/// a live process (this one or another sharing the directory) is locked
/// and left alone.
fn remove_temp_files(dir: &Path) -> Result<Vec<String>> {
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
            if fs::remove_file(journal(&path)).is_ok() {
                removed.push(format!("{name}-journal"));
            }
        }
    }
    Ok(removed)
}

/// [`remove_temp_files`] off the async threads.
pub async fn recover(dir: &Path) -> Result<Vec<String>> {
    let dir = dir.to_owned();
    blocking(move || remove_temp_files(&dir)).await
}

/// The storage lock: `.lock` in `dir`, see [`lock_exclusive`].
pub async fn lock(dir: &Path) -> Result<StorageLock> {
    let path = dir.join(".lock");
    let file = blocking(move || lock_exclusive(&path))
        .await
        .map_err(dir_error)?;
    Ok(StorageLock::new(Box::new(file)))
}

/// Takes an exclusive advisory lock on `path` (created if missing), held
/// until the returned file is dropped or the process dies.
fn lock_exclusive(path: &Path) -> Result<File> {
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

/// Creates `dir` with its parents, mode 0700, if missing, and returns it
/// absolute. A failure is the I/O error, for the caller to name the flag.
pub fn create_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(std::path::absolute(dir)?)
}

/// Writes `bytes` (a checked stream) into a new scratch file in `dir`
/// named after `hint`, not yet synced. Any error in the stream is the
/// error, and the file goes.
pub async fn write_stream(
    dir: &Path,
    hint: &str,
    mut bytes: super::ByteStream,
) -> Result<TempFile> {
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;
    let temp = TempFile::create(dir, hint)?;
    let mut out = temp.writer().await?;
    while let Some(chunk) = bytes.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    Ok(temp)
}

/// Copies a consistent snapshot of the live database at `source` (named
/// `what` in errors) into a new scratch file in `dir` named after `hint`,
/// not yet synced; returns when the snapshot shows (microseconds) and the
/// file. Once `cancel` fires it stops, and the file goes.
pub fn snapshot(
    source: &Path,
    what: &str,
    dir: &Path,
    hint: &str,
    cancel: &CancellationToken,
) -> Result<(DateTime<Utc>, TempFile)> {
    let taken_at = Utc::now().trunc_subsecs(6);
    let src = sqlite::open_source(source, what)?;
    check_cancelled(cancel)?;
    let temp = TempFile::create(dir, hint)?;
    sqlite::snapshot_into(src, what, &temp.path, cancel)?;
    check_cancelled(cancel)?;
    Ok((taken_at, temp))
}
