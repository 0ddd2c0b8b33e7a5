//! [`Directory`]: backups as plain SQLite files in one local directory,
//! named by their file names, the one [`BackupStorage`] today.
//!
//! A snapshot is staged under a `.tmp-` name, fsynced and hashed, then
//! published by hard-linking it under each name (a link never replaces an
//! existing file, and is durable after a directory fsync). A delete renames
//! the file to `.deleting-<name>` first. `.lock` is the advisory lock
//! shared with other processes. Every path in the backups directory and
//! every POSIX call on it is here.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::checked::{self, Checker, hash_file, size_mismatch};
use super::local::{self, TempFile, dir_error};
use super::{
    BackupStorage, ByteStream, ChangeStamp, ContentFacts, Described, Listing, NewBytes, Pruned,
    Staged, StagedCopy, StorageLock, StorageStats, Verified, VerifiedCopy,
};
use crate::backup::naming;
use crate::backup::sqlite::{self, Content};
use crate::blocking::blocking;
use crate::error::{Error, Result};

/// How old the directory's last change must be before its mtime is
/// trusted to show the next one (see [`Directory::names_stamp`]).
const NAMES_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Prefix a file takes while it is being deleted, so a crash mid-delete can
/// be told apart from a missing file and finished or undone at start.
const DELETING_PREFIX: &str = ".deleting-";

/// Bytes read at a time while verifying.
const VERIFY_CHUNK: usize = 1 << 20;

/// The backups directory.
pub struct Directory {
    /// Absolute, created mode 0700.
    dir: PathBuf,
}

impl Directory {
    /// The directory at `dir`, created (with parents, mode 0700) if missing.
    /// A failure is the I/O error, for the caller to name the flag.
    pub fn create(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: local::create_dir(dir)?,
        })
    }

    fn deleting(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{DELETING_PREFIX}{name}"))
    }
}

#[async_trait]
impl BackupStorage for Directory {
    async fn recover(&self) -> Result<Vec<String>> {
        local::recover(&self.dir).await
    }

    async fn lock(&self) -> Result<StorageLock> {
        local::lock(&self.dir).await
    }

    async fn stage(
        &self,
        source: &Path,
        what: &str,
        hint: &str,
        cancel: &CancellationToken,
    ) -> Result<Staged> {
        let (source, what, hint) = (source.to_owned(), what.to_owned(), hint.to_owned());
        let (dir, cancel) = (self.dir.clone(), cancel.clone());
        blocking(move || stage_snapshot(&source, &what, &dir, &hint, &cancel)).await
    }

    async fn stage_bytes(
        &self,
        bytes: ByteStream,
        taken_at: DateTime<Utc>,
        hint: &str,
    ) -> Result<Staged> {
        let temp = local::write_stream(&self.dir, hint, bytes)
            .await
            .map_err(dir_error)?;
        let dir = self.dir.clone();
        blocking(move || staged_file(temp, taken_at, &dir)).await
    }

    async fn flush(&self) -> Result<()> {
        let dir = self.dir.clone();
        blocking(move || {
            File::open(&dir)?.sync_all()?;
            Ok(())
        })
        .await
        .map_err(dir_error)
    }

    async fn contains(&self, name: &str) -> Result<bool> {
        let path = self.dir.join(name);
        blocking(move || Ok(fs::symlink_metadata(path).is_ok())).await
    }

    async fn open(
        &self,
        name: &str,
        expected: &ContentFacts,
        chunk_bytes: usize,
    ) -> Result<ByteStream> {
        let (dir, name, expected) = (self.dir.clone(), name.to_owned(), expected.clone());
        let reader = blocking(move || {
            CheckedReader::open(&dir.join(&name), expected).map_err(|e| gone(e, &dir, &name))
        })
        .await?;
        let chunks = futures_util::stream::unfold(Some(reader), move |reader| async move {
            let mut reader = reader?;
            let read = blocking(move || Ok((reader.next_chunk(chunk_bytes), reader))).await;
            match read {
                // The end, with every byte checked.
                Ok((Ok(chunk), _)) if chunk.is_empty() => None,
                Ok((Ok(chunk), reader)) => Some((Ok(chunk), Some(reader))),
                Ok((Err(e), _)) | Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Box::pin(chunks))
    }

    async fn verify(&self, name: &str, expected: &ContentFacts) -> Result<Verified> {
        let (dir, name, expected) = (self.dir.clone(), name.to_owned(), expected.clone());
        blocking(move || verify_backup(&dir, &name, expected)).await
    }

    async fn stamp(&self, name: &str) -> Result<ChangeStamp> {
        // One stat, on the async thread: a thread hop would cost more, and
        // retention asks once per owner.
        stamp(&self.dir.join(name))
    }

    async fn describe(&self, name: &str) -> Result<Described> {
        let path = self.dir.join(name);
        blocking(move || {
            let file = sqlite::open_regular(&path)?;
            let modified = file.metadata()?.modified()?;
            let facts = hash_file(&file)?;
            Ok(Described {
                stored_bytes: facts.size_bytes as u64,
                facts,
                modified: modified.into(),
            })
        })
        .await
    }

    async fn sniff(&self, names: Vec<String>) -> Result<Vec<Result<Content>>> {
        let dir = self.dir.clone();
        blocking(move || {
            Ok(names
                .iter()
                .map(|name| sqlite::sniff(sqlite::open_regular(&dir.join(name))?))
                .collect())
        })
        .await
    }

    async fn list(&self) -> Result<Listing> {
        let dir = self.dir.clone();
        blocking(move || scan_dir(&dir)).await
    }

    async fn names_stamp(&self) -> Result<Option<ChangeStamp>> {
        use std::os::unix::fs::MetadataExt;
        // Adding, renaming or removing an entry sets the directory's mtime,
        // but to a clock that ticks coarsely: a change within a second of
        // the last may leave it as it was, so a recent one proves nothing.
        let meta = fs::metadata(&self.dir).map_err(|e| dir_error(e.into()))?;
        let settled = meta
            .modified()
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age >= NAMES_SETTLE);
        Ok(settled.then(|| {
            ChangeStamp::new(format!(
                "{}:{}:{}.{}:{}.{}",
                meta.dev(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec()
            ))
        }))
    }

    async fn begin_delete(&self, name: &str) -> Result<bool> {
        // A symlink is renamed and unlinked as a link, never followed.
        match fs::rename(self.dir.join(name), self.deleting(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(dir_error(e.into())),
        }
    }

    async fn finish_delete(&self, name: &str) -> Result<()> {
        // No directory fsync: the catalog row is already gone, and should a
        // power loss undo the unlink, the start-up reconcile finishes the
        // `.deleting-` file it finds.
        fs::remove_file(self.deleting(name))?;
        Ok(())
    }

    async fn undo_delete(&self, name: &str) -> Result<()> {
        fs::rename(self.deleting(name), self.dir.join(name))?;
        Ok(())
    }

    async fn prune(&self) -> Result<Pruned> {
        // A finished delete removed the file: nothing is left to prune.
        Ok(Pruned::default())
    }

    async fn content_key(&self, _name: &str) -> Result<Option<String>> {
        Ok(None)
    }

    async fn damaged_backups(&self) -> Result<Option<Vec<(String, String)>>> {
        // Names of one snapshot share a file, and were checked as one.
        Ok(None)
    }

    async fn stats(&self) -> Result<StorageStats> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.dir.clone();
        blocking(move || {
            // Names of one snapshot are links to one file: counted once.
            let mut files = std::collections::HashMap::new();
            for name in scan_dir(&dir)?.names {
                if let Ok(meta) = fs::symlink_metadata(dir.join(name)) {
                    files.insert((meta.dev(), meta.ino()), meta.len());
                }
            }
            let bytes: u64 = files.values().sum();
            Ok(StorageStats {
                stored_bytes: bytes,
                chunks: files.len() as u64,
                chunk_bytes: bytes,
                packs: 0,
            })
        })
        .await
    }
}

/// A file that is not there: NOT_FOUND, or when the directory itself is
/// gone, the operator's to fix.
fn gone(error: Error, dir: &Path, name: &str) -> Error {
    match error {
        Error::Io(e) if e.kind() == ErrorKind::NotFound && !dir.is_dir() => dir_error(Error::Io(e)),
        Error::Io(e) if e.kind() == ErrorKind::NotFound => {
            Error::NotFound(format!("nothing is stored under {name:?}"))
        }
        e => e,
    }
}

/// A finished, fsynced snapshot under a temporary name, linked under each
/// name it is published as.
struct StagedFile {
    /// The snapshot's own name, removed when this is dropped.
    temp: TempFile,
    /// The backups directory, where its names are linked.
    dir: PathBuf,
    /// Its size: the bytes its first name adds (later ones are links).
    new_bytes: NewBytes,
}

#[async_trait]
impl StagedCopy for StagedFile {
    async fn publish(&self, name: &str) -> Result<u64> {
        let (from, to, name) = (self.temp.path.clone(), self.dir.join(name), name.to_owned());
        blocking(move || match fs::hard_link(from, to) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(super::already_exists(&name)),
            linked => Ok(linked.map_err(|e| dir_error(e.into()))?),
        })
        .await?;
        let added = self.new_bytes.pending();
        self.new_bytes.claimed();
        Ok(added)
    }
}

/// Copies the live database at `source` to a temporary file in `dir`
/// (named after `hint`), fsynced and hashed, ready to be linked. Together
/// with [`StagedFile::publish`] a crash leaves no file or a complete one
/// under a backup's name; `cancel` removes the temporary file.
fn stage_snapshot(
    source: &Path,
    what: &str,
    dir: &Path,
    hint: &str,
    cancel: &CancellationToken,
) -> Result<Staged> {
    let (taken_at, temp) = local::snapshot(source, what, dir, hint, cancel).map_err(dir_error)?;
    staged_file(temp, taken_at, dir)
}

/// The scratch file `temp` (a snapshot taken at `taken_at`) fsynced and
/// hashed, ready to be linked under names in `dir`.
fn staged_file(temp: TempFile, taken_at: DateTime<Utc>, dir: &Path) -> Result<Staged> {
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
    let copy = StagedFile {
        temp,
        dir: dir.to_owned(),
        new_bytes: NewBytes::new(facts.size_bytes as u64),
    };
    Ok(Staged::new(taken_at, facts, Box::new(copy)))
}

/// Checks a backup in `dir` against what the catalog recorded when it was
/// written: its size, its SHA-256, then a full `PRAGMA integrity_check`
/// (quick_check misses index damage).
fn verify_backup(dir: &Path, name: &str, expected: ContentFacts) -> Result<Verified> {
    let path = dir.join(name);
    let mut reader = CheckedReader::open(&path, expected).map_err(|e| match e {
        // Being deleted (renamed, its row not yet gone): nothing is lost.
        Error::Io(e) if e.kind() == ErrorKind::NotFound => {
            if dir.join(format!("{DELETING_PREFIX}{name}")).exists() {
                Error::NotFound(format!("{name:?} is being deleted"))
            } else {
                Error::DataLoss("the backup's file is missing".into())
            }
        }
        e => e,
    })?;
    let before = stamp(&path)?;
    // Size and digest, checked as the bytes are read, as for a download.
    reader.check_to_end()?;
    let conn = checked::open_intact(&path, checked::Holder::Shared)?;
    if stamp(&path)? != before {
        return Err(Error::Unavailable(
            "the backup's file changed while it was verified; verify it again".into(),
        ));
    }
    Ok(Verified {
        stamp: before,
        copy: VerifiedCopy::new(conn),
    })
}

/// Reads a backup's bytes (for a download, or a verification) while
/// checking them against the catalog, so damaged bytes never end as whole:
/// a size that differs fails before the first byte, a digest that differs
/// after the last.
struct CheckedReader {
    file: File,
    checker: Checker,
}

impl CheckedReader {
    /// Opens the file at `path`. Its name holding anything but a regular
    /// file (a symlink, never followed) is damage: what was written is not
    /// there. A size other than the recorded one is [`Error::DataLoss`].
    fn open(path: &Path, expected: ContentFacts) -> Result<Self> {
        let file = sqlite::open_regular(path).map_err(|e| match e {
            Error::Io(e)
                if e.kind() == ErrorKind::InvalidInput || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                Error::DataLoss(
                    "the backup's file was replaced by something other than a file".into(),
                )
            }
            e => e,
        })?;
        let on_disk = file.metadata()?.len();
        if i64::try_from(on_disk).ok() != Some(expected.size_bytes) {
            return Err(size_mismatch(on_disk, &expected));
        }
        Ok(Self {
            file,
            checker: Checker::new(expected),
        })
    }

    /// The next at most `max` bytes; empty at the end, once the bytes read
    /// matched the recorded size and digest ([`Error::DataLoss`] if not).
    fn next_chunk(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut chunk = vec![0u8; max];
        let n = self.read_some(&mut chunk)?;
        chunk.truncate(n);
        Ok(chunk)
    }

    /// Reads every byte to the end, checking them as [`Self::next_chunk`]
    /// does, into one reused buffer.
    fn check_to_end(&mut self) -> Result<()> {
        let mut buf = vec![0u8; VERIFY_CHUNK];
        while self.read_some(&mut buf)? > 0 {}
        Ok(())
    }

    /// Reads into `buf` and checks what came; at the end (0 read) the
    /// whole must match.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 {
            self.checker.finish()?;
        } else {
            self.checker.update(&buf[..n])?;
        }
        Ok(n)
    }
}

/// The stamp of the regular file at `path` (a symlink or anything else is
/// an error): device, inode, size, modification and change times. Any
/// write, replacement or `touch` changes it; the change time cannot be set
/// back by user tools.
fn stamp(path: &Path) -> Result<ChangeStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(Error::Io(ErrorKind::InvalidInput.into()));
    }
    Ok(ChangeStamp::new(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )))
}

/// Regular files in the backups directory that can be backups, with the
/// files a crash left mid-delete (their names without the prefix). Symlinks
/// and other non-regular files are skipped: never followed out of the
/// directory.
fn scan_dir(dir: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(original) = name.strip_prefix(DELETING_PREFIX) {
            listing.deleting.push(original.to_owned());
        } else if naming::is_backup_filename(&name) {
            listing.names.push(name);
        }
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_storage_contract() {
        let scratch = tempfile::tempdir().unwrap();
        let storage = Directory::create(&scratch.path().join("backups")).unwrap();
        super::super::contract::check(&storage, scratch.path()).await;
        // The contract lets a storage never give a names stamp; this one
        // must, once its last change is a second old, or listings would
        // reconcile every time.
        tokio::time::sleep(NAMES_SETTLE).await;
        assert!(storage.names_stamp().await.unwrap().is_some());
    }
}
