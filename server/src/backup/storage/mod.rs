//! Backup storage: where backups' bytes live, behind one trait, and the
//! types at its boundary.
//!
//! [`BackupStorage`] is everything the rest of the service may do with
//! stored bytes; [`directory::Directory`] (files in one local directory) is
//! today's implementation, and nothing outside this module touches a path
//! in the backups directory. A second implementation (a content-addressed
//! repository on local disk or in an object store) is an addition: it
//! implements the trait and [`StagedCopy`] and keeps the contract below.
//!
//! # The contract
//! Every implementation guarantees:
//! - **A name exists exactly when it was published** (or when another tool
//!   put bytes under it, which `list` then shows for adoption). Publishing
//!   is create-if-absent: it never replaces what is stored under a name,
//!   and fails with [`Error::AlreadyExists`] instead.
//! - **Publishing is atomic**: a reader sees nothing or every byte under a
//!   name, never part of them, also after a crash. Bytes are never written
//!   again once published, so the names one staged snapshot was published
//!   under cannot drift apart.
//! - **Reads are checked**: bytes are handed out only against the size and
//!   digest the catalog recorded (see [`ContentFacts`]), and any difference is
//!   [`Error::DataLoss`], before the first byte when it can be known then,
//!   else in place of the end. Damaged bytes never pass as whole.
//! - **Deletes are crash-safe** in three steps, begin (the name is gone),
//!   then finish or undo, so a crash between the catalog change and the
//!   bytes' removal is finished or undone at the next start.
//! - **Errors mean**: [`Error::NotFound`], nothing is stored under the name;
//!   [`Error::DataLoss`], the stored bytes are not what was recorded;
//!   [`Error::FailedPrecondition`], the storage itself is unusable (gone,
//!   not writable), the operator's to fix; [`Error::Cancelled`], the
//!   caller's token fired and nothing was kept; anything else (I/O, a full
//!   disk) says nothing about the bytes.
//! - Names are the catalog's file names: one component of ASCII letters,
//!   digits and `._-~`, never starting with `.`.

pub mod checked;
#[cfg(test)]
pub mod contract;
pub mod directory;
pub mod local;
pub mod repository;

use std::path::Path;
use std::pin::Pin;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use super::sqlite::Content;
use crate::error::Result;

/// Publishing under a name that exists.
fn already_exists(name: &str) -> crate::error::Error {
    crate::error::Error::AlreadyExists(format!(
        "backup {} already exists",
        crate::error::quote(name)
    ))
}

/// Size and digests (lowercase hex) of a backup's bytes, as the storage
/// that wrote them computed them: full copies have SHA-256, a repository
/// BLAKE3 (SHA-256 too for backups written before it stopped computing
/// one). Reads are checked against BLAKE3 where it is known, the cheaper
/// of the two, else SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentFacts {
    pub size_bytes: i64,
    pub sha256: Option<String>,
    pub blake3: Option<String>,
}

/// A stored backup's bytes as a stream of chunks, each checked as it is
/// read; see [`BackupStorage::open`].
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>>> + Send>>;

/// A snapshot copied and hashed by [`BackupStorage::stage`], under no name
/// yet. Dropping it discards the staged copy; names it was published under
/// stay.
pub struct Staged {
    /// When the copy began: the moment the snapshot shows (microseconds).
    pub taken_at: DateTime<Utc>,
    /// Size and digests, the same under every name it is published as.
    pub facts: ContentFacts,
    /// The implementation's hold on the staged bytes.
    copy: Box<dyn StagedCopy>,
}

impl Staged {
    pub fn new(taken_at: DateTime<Utc>, facts: ContentFacts, copy: Box<dyn StagedCopy>) -> Self {
        Self {
            taken_at,
            facts,
            copy,
        }
    }

    /// Publishes the snapshot under `name`; see [`StagedCopy::publish`].
    pub async fn publish(&self, name: &str) -> Result<u64> {
        self.copy.publish(name).await
    }
}

/// The stored bytes a staged snapshot added, counted for its first
/// published name alone (publishes of one snapshot are made one at a
/// time, under the storage lock).
pub struct NewBytes(std::sync::atomic::AtomicU64);

impl NewBytes {
    pub fn new(bytes: u64) -> Self {
        Self(bytes.into())
    }

    /// What the next publish adds: the bytes until one succeeded, then 0.
    pub fn pending(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A publish succeeded: later ones add nothing.
    pub fn claimed(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An implementation's staged bytes, waiting to be published.
#[async_trait]
pub trait StagedCopy: Send + Sync {
    /// Makes the staged bytes readable under `name`, atomically, and never
    /// in place of anything stored there: [`crate::error::Error::AlreadyExists`]
    /// if `name` exists. May be called for several names (backups due
    /// together share one snapshot); each gets the same bytes. The name is
    /// visible at once and durable after the next [`BackupStorage::flush`].
    /// Returns the stored bytes the snapshot added: on its first publish,
    /// 0 on later ones.
    async fn publish(&self, name: &str) -> Result<u64>;
}

/// A backup's content after [`BackupStorage::verify`] found it whole,
/// open as SQLite: what a restore copies from. Holding it keeps that
/// content readable even if the backup is deleted meanwhile, so what is
/// restored is exactly what was verified.
pub struct VerifiedCopy {
    conn: Connection,
    /// What keeps the verified bytes in place while the connection reads
    /// them (a scratch copy), if anything must; dropped after it.
    _holds: Option<Box<dyn Send>>,
}

impl VerifiedCopy {
    pub fn new(conn: Connection) -> Self {
        Self { conn, _holds: None }
    }

    /// The copy `conn` reads, kept until it is dropped by `holds`.
    pub fn holding(conn: Connection, holds: Box<dyn Send>) -> Self {
        Self {
            conn,
            _holds: Some(holds),
        }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// What [`BackupStorage::verify`] yields.
pub struct Verified {
    /// The stored bytes' stamp as they were verified.
    pub stamp: ChangeStamp,
    pub copy: VerifiedCopy,
}

/// Identifies one version of the bytes under a name: any write,
/// replacement or touch gives another. Only compared for equality (the
/// verification cache skips bytes whose stamp did not change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeStamp(String);

impl ChangeStamp {
    pub fn new(stamp: impl Into<String>) -> Self {
        Self(stamp.into())
    }

    /// A stamp that changes when either of two does.
    pub fn and(&self, other: &Self) -> Self {
        Self(format!("{}|{}", self.0, other.0))
    }
}

/// What is stored, for reconciling the catalog with it.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every name with bytes under it that can be a backup, published or
    /// put there by another tool.
    pub names: Vec<String>,
    /// Names whose delete began but neither finished nor was undone (a
    /// crash in between).
    pub deleting: Vec<String>,
}

/// What [`BackupStorage::describe`] found of bytes another tool stored.
#[derive(Clone, Debug)]
pub struct Described {
    pub facts: ContentFacts,
    /// Stored bytes they take, as far as they are theirs alone.
    pub stored_bytes: u64,
    /// When they were last modified: the creation time an adopted backup
    /// gets.
    pub modified: DateTime<Utc>,
}

/// Held while the set of stored names changes; see [`BackupStorage::lock`].
/// Released when dropped.
pub struct StorageLock {
    _held: Box<dyn Send + Sync>,
}

impl StorageLock {
    pub fn new(held: Box<dyn Send + Sync>) -> Self {
        Self { _held: held }
    }
}

/// What a [`BackupStorage::prune`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Stored bytes before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Packs deleted, and written to keep the chunks still referenced.
    pub packs_deleted: u64,
    pub packs_written: u64,
    /// Backups whose chunks could not all be read: while there are any,
    /// every chunk is kept.
    pub unreadable: Vec<String>,
}

/// What the storage holds; see [`BackupStorage::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Bytes of every stored object.
    pub stored_bytes: u64,
    /// Distinct chunks (files, for full copies) and their bytes before
    /// compression.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Pack files; 0 for full copies.
    pub packs: u64,
}

/// Where backups' bytes are stored. Held as `Arc<dyn BackupStorage>`; see
/// the module documentation for the contract every method keeps.
#[async_trait]
pub trait BackupStorage: Send + Sync {
    /// Removes what a crashed process left staged and unpublished, and
    /// returns a description of each thing removed. Bytes another live
    /// process is still staging are left alone.
    async fn recover(&self) -> Result<Vec<String>>;

    /// An exclusive lock shared with every other process using the same
    /// storage, held until the returned value is dropped (or the process
    /// dies). Changes to the set of names are made under it. Storage that
    /// cannot be written still grants it, so reads go on.
    async fn lock(&self) -> Result<StorageLock>;

    /// Copies a consistent snapshot of the live SQLite database at
    /// `source` (named `what` in errors, never by its path) and hashes it,
    /// ready to be published. `hint` may name the staged copy for an
    /// operator. Once `cancel` fires it stops with
    /// [`crate::error::Error::Cancelled`] and keeps nothing; a source that is
    /// missing, not SQLite or locked too long is FAILED_PRECONDITION.
    async fn stage(
        &self,
        source: &Path,
        what: &str,
        hint: &str,
        cancel: &CancellationToken,
    ) -> Result<Staged>;

    /// Stages `bytes` (a checked stream, such as another storage's
    /// [`Self::open`]) as a snapshot taken at `taken_at`, ready to be
    /// published like one [`Self::stage`] took: for moving backups in. An
    /// error in the stream is the error, and nothing is kept.
    async fn stage_bytes(
        &self,
        bytes: ByteStream,
        taken_at: DateTime<Utc>,
        hint: &str,
    ) -> Result<Staged>;

    /// Makes every name published before the call durable: it survives a
    /// crash or power loss. One call covers any number of publishes;
    /// storage whose publish is durable at once returns at once.
    async fn flush(&self) -> Result<()>;

    /// Whether anything is stored under `name`, published or not.
    async fn contains(&self, name: &str) -> Result<bool>;

    /// The bytes under `name` in chunks of at most `chunk_bytes`, checked
    /// against `expected` as they are read: a size that differs is
    /// DATA_LOSS before the first chunk, a digest that differs (or bytes
    /// changing size meanwhile) is DATA_LOSS in place of the end. The
    /// stream ends only after every byte matched; empty bytes are a stream
    /// without chunks. Nothing under `name` is NOT_FOUND; anything but a
    /// plain stored object there (a symlink) is DATA_LOSS.
    async fn open(
        &self,
        name: &str,
        expected: &ContentFacts,
        chunk_bytes: usize,
    ) -> Result<ByteStream>;

    /// Checks the bytes under `name` against `expected` (size, digest),
    /// that they are a non-empty SQLite database, and `PRAGMA
    /// integrity_check`; and that they did not change meanwhile
    /// (UNAVAILABLE: verify again). Damage is DATA_LOSS saying what is
    /// wrong, also for bytes gone from under the name; a name whose delete
    /// is in progress is NOT_FOUND. Any other error says nothing about the
    /// bytes.
    async fn verify(&self, name: &str, expected: &ContentFacts) -> Result<Verified>;

    /// The stamp of the bytes under `name`, cheaply (no read of them).
    async fn stamp(&self, name: &str) -> Result<ChangeStamp>;

    /// Size, digests and modification time of the bytes under `name`, read
    /// whole: for adopting bytes another tool stored.
    async fn describe(&self, name: &str) -> Result<Described>;

    /// What the bytes under each of `names` hold, judged by size and
    /// header alone; one answer per name, in order.
    async fn sniff(&self, names: Vec<String>) -> Result<Vec<Result<Content>>>;

    /// Every stored name, and the deletes a crash left half-done.
    async fn list(&self) -> Result<Listing>;

    /// A stamp of the set of stored names, cheaply: it differs once any
    /// name is added or removed, by any process. `None` when the storage
    /// cannot tell, or a change could still go unseen (one within the
    /// clock tick of the last): then only [`Self::list`] knows.
    async fn names_stamp(&self) -> Result<Option<ChangeStamp>>;

    /// Takes the bytes out from under `name` (the name no longer exists)
    /// but keeps them until [`Self::finish_delete`] or
    /// [`Self::undo_delete`]; the caller holds the lock throughout and
    /// publishes nothing under `name` in between. False, changing nothing,
    /// when nothing is stored under `name`.
    async fn begin_delete(&self, name: &str) -> Result<bool>;

    /// Removes for good the bytes a [`Self::begin_delete`] of `name` took
    /// out.
    async fn finish_delete(&self, name: &str) -> Result<()>;

    /// Puts the bytes a [`Self::begin_delete`] of `name` took out back
    /// under it.
    async fn undo_delete(&self, name: &str) -> Result<()>;

    /// Removes stored bytes that no name references any longer, never
    /// any a name (or a delete in progress, or a snapshot staged
    /// meanwhile) may still read. Storage whose deletes free the bytes at
    /// once has nothing to do.
    async fn prune(&self) -> Result<Pruned>;

    /// What is stored, counted from the storage itself.
    async fn stats(&self) -> Result<StorageStats>;

    /// Every stored backup found damaged (name, what is wrong), each
    /// stored object read once: for storage whose backups share bytes, so
    /// damage found in one is looked for in all. `None` where backups share
    /// nothing.
    async fn damaged_backups(&self) -> Result<Option<Vec<(String, String)>>>;

    /// What identifies the stored bytes under `name` across names: names
    /// with the same key share every stored byte, so verifying one vouches
    /// for the others. `None` where names share nothing.
    async fn content_key(&self, name: &str) -> Result<Option<String>>;
}
