//! Backups: the catalog in the state store and the bytes in backup
//! storage, kept in step, and every operation on them with its
//! authorization and audit.
//!
//! Every change to the set of backups (a new backup, a delete, adopting
//! files other tools dropped in) happens under one lock ([`Backups::lock_dir`]),
//! so a listing or a retention run never sees half of one; the slow part
//! of a backup, the copy, runs outside it.
//!
//! A tour:
//! - here: [`Backups`], what it holds, the lock, and what the rest share;
//! - [`admission`]: copy permits, the bound on waiting, the manual quota;
//! - [`create`]: taking a backup (and the pre-migration snapshot);
//! - [`read`]: get, list, download, restore, and the catalog reads
//!   retention plans with;
//! - [`delete`]: deleting one backup, crash-safely;
//! - [`prune`]: removing stored bytes no backup needs, and the storage's
//!   statistics;
//! - [`reconcile`]: bringing the catalog and the storage into agreement;
//! - [`import`]: moving full copies in the backups directory (older
//!   backups, files other tools drop in) into a repository;
//! - [`verify`] and [`scrub`]: checking bytes against the catalog, on
//!   demand and on a schedule; [`shared_damage`]: damage found in one
//!   backup looked for in every backup that shares its bytes;
//! - [`naming`]: backup names and the file names they are stored under;
//! - [`storage`]: the [`storage::BackupStorage`] trait, the only way to the
//!   bytes, and its directory implementation;
//! - [`source`]: the live source database (restore into it, its checks);
//! - [`sqlite`]: the SQLite mechanics `source` and `storage` share.
//!
//! Nothing here imports tonic; the catalog's queries are `store::backups`.

pub mod admission;
pub mod create;
pub mod delete;
pub mod import;
pub mod naming;
pub mod prune;
pub mod read;
pub mod reconcile;
pub mod scrub;
pub mod shared_damage;
pub mod source;
pub mod sqlite;
pub mod storage;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Mutex, MutexGuard, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::audit::{NewEvent, Recorder};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::backup::BackupKind;
use crate::model::run::Fence;
use crate::store::Store;
use storage::{BackupStorage, ChangeStamp, StorageLock};

pub use create::SharedSnapshot;

/// What a new backup is: its name, owner and kind.
#[derive(Clone, Debug)]
pub struct NewBackup {
    /// Unique among the owner's backups.
    pub name: String,
    pub owner_user_id: i64,
    pub kind: BackupKind,
    /// The most manual backups the owner may have with this one (checked
    /// under the directory lock); `None` for no limit.
    pub manual_quota: Option<u32>,
    /// For a scheduled backup, the scheduler lease it is taken under: it
    /// is catalogued only while that lease holds.
    pub fence: Option<Fence>,
}

impl NewBackup {
    /// A backup without a quota.
    pub fn new(name: String, owner_user_id: i64, kind: BackupKind) -> Self {
        Self {
            name,
            owner_user_id,
            kind,
            manual_quota: None,
            fence: None,
        }
    }
}

/// Which backup a request names: a name, and whose (absent: the caller's,
/// or for an admin the one backup of that name if only one owner has it).
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    pub name: &'a str,
    pub owner: Option<i64>,
}

/// What the operator allows users, beyond what is always allowed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Backups and restores copying at once.
    pub max_concurrent_copies: u32,
    /// Whether a non-admin may download their backups. A backup holds the
    /// whole source, every user's rows, so by default only admins may.
    pub allow_user_downloads: bool,
    /// The most manual backups a non-admin may keep.
    pub max_manual_backups_per_user: u32,
}

/// The backup storage, the source database, and the catalog.
pub struct Backups {
    db: Store,
    audit: Recorder,
    /// The live database being backed up.
    source: PathBuf,
    /// Where the backups' bytes are: the only way to them.
    storage: Arc<dyn BackupStorage>,
    /// Serializes changes to the set of backups and catalog rows within
    /// this process; the storage's lock does across processes.
    dir_lock: Mutex<()>,
    /// Bounds concurrent copies (backups and restores) so a burst of
    /// requests queues instead of exhausting disk bandwidth or descriptors.
    copies: Semaphore,
    max_copies: u32,
    /// Backups waiting for a copy permit; beyond
    /// [`admission::WAITING_PER_COPY`] per permit more are turned away
    /// (RESOURCE_EXHAUSTED) instead of queued.
    waiting: AtomicUsize,
    limits: Limits,
    /// Backups known to be intact, so retention does not re-read them.
    verified: verify::VerifiedFiles,
    /// Verification outcomes since start, for GetSchedulerStats.
    verifications: verify::Counts,
    /// Stored contents the scrub found intact, vouching for backups that
    /// share them.
    vouched: verify::Vouched,
    /// The storage's names as of the last reconcile: a listing whose
    /// storage still shows them needs no reconcile first.
    reconciled: std::sync::Mutex<Option<ChangeStamp>>,
    /// Prunes, one at a time, and when the last one finished.
    pruning: prune::Pruning,
    /// The backups directory as full copies, when the storage is another
    /// (a repository): what is found there is imported.
    legacy: Option<Arc<dyn BackupStorage>>,
    /// Wakes the shared-damage sweep ([`shared_damage`]), once started.
    sweeper: std::sync::OnceLock<tokio::sync::mpsc::Sender<()>>,
}

/// Held while the set of backups changes; see [`Backups::lock_dir`].
pub struct DirGuard<'a> {
    _mutex: MutexGuard<'a, ()>,
    _storage: StorageLock,
}

/// The owner of system backups (pre-restore, pre-migration, adopted files).
pub const SYSTEM_OWNER: i64 = 0;

impl Backups {
    pub fn new(
        db: Store,
        audit: Recorder,
        source: PathBuf,
        storage: Arc<dyn BackupStorage>,
        limits: Limits,
    ) -> Self {
        Self {
            db,
            audit,
            source,
            storage,
            dir_lock: Mutex::new(()),
            copies: Semaphore::new(limits.max_concurrent_copies as usize),
            max_copies: limits.max_concurrent_copies,
            waiting: AtomicUsize::new(0),
            limits,
            verified: verify::VerifiedFiles::default(),
            verifications: verify::Counts::default(),
            vouched: verify::Vouched::default(),
            reconciled: std::sync::Mutex::new(None),
            pruning: prune::Pruning::default(),
            legacy: None,
            sweeper: std::sync::OnceLock::new(),
        }
    }

    /// Imports what `legacy` (full copies in the backups directory) holds
    /// at every reconcile; see [`import`].
    pub fn with_legacy(mut self, legacy: Arc<dyn BackupStorage>) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// Takes the lock on the set of backups: this process's mutex, then
    /// the storage's lock, shared with other processes on the same backups.
    /// Retention holds it for a whole run.
    pub async fn lock_dir(&self) -> Result<DirGuard<'_>> {
        let mutex = self.dir_lock.lock().await;
        let storage = self.storage.lock().await?;
        Ok(DirGuard {
            _mutex: mutex,
            _storage: storage,
        })
    }

    async fn audit_failure(&self, event_type: &str, caller: Caller, filename: &str, error: &Error) {
        self.audit
            .record_or_log(
                NewEvent::new(event_type, caller.user_id)
                    .resource("backup", filename)
                    .failed(error),
            )
            .await;
    }

    /// Waits for running copies to finish and refuses new ones: the last
    /// step of a graceful shutdown.
    pub async fn drain(&self) {
        let _ = self.copies.acquire_many(self.max_copies).await;
        self.copies.close();
    }
}

/// Runs backup work in a task of its own, so a caller that goes away does
/// not interrupt it half-way: it finishes (or fails and cleans up) either way.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Internal(format!("backup task failed: {e}")))?
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
