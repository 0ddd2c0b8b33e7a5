//! Backup files: the catalog in the state store and the files in the
//! backups directory, kept in step.
//!
//! Every change to the set of files (a new backup, a delete, adopting files
//! other tools dropped in) happens under one directory lock, so a listing or
//! a retention run never sees half of one; the slow part of a backup, the
//! copy, runs outside it.

pub mod catalog;
pub mod file_io;
pub mod naming;
pub mod scrub;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{SubsecRound, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;

use crate::audit::{NewEvent, Recorder};
use crate::auth::Caller;
use crate::error::{Error, Result, quote};
use crate::store::entity::backup::Model as Backup;

/// Why a backup exists. Stored as its `as_str` in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Auto,
    Manual,
    PreRestore,
    PreMigration,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
            Self::PreRestore => "pre_restore",
            Self::PreMigration => "pre_migration",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Auto,
            Self::Manual,
            Self::PreRestore,
            Self::PreMigration,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Protected backups are never deleted by retention, and only by an
    /// admin with force.
    pub fn is_protected(self) -> bool {
        matches!(self, Self::PreRestore | Self::PreMigration)
    }
}

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
}

impl NewBackup {
    /// A backup without a quota.
    pub fn new(name: String, owner_user_id: i64, kind: BackupKind) -> Self {
        Self {
            name,
            owner_user_id,
            kind,
            manual_quota: None,
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

/// The backups directory, the source database, and the catalog.
pub struct Backups {
    db: DatabaseConnection,
    audit: Recorder,
    /// The live database being backed up.
    source: PathBuf,
    dir: PathBuf,
    /// Serializes changes to the set of files and catalog rows.
    dir_lock: Mutex<()>,
    /// Bounds concurrent copies (backups and restores) so a burst of
    /// requests queues instead of exhausting disk bandwidth or descriptors.
    copies: Semaphore,
    max_copies: u32,
    /// Backups waiting for a copy permit; beyond [`WAITING_PER_COPY`] per
    /// permit more are turned away (RESOURCE_EXHAUSTED) instead of queued.
    waiting: AtomicUsize,
    limits: Limits,
    /// Files known to be intact, so retention does not re-read them.
    verified: verify::VerifiedFiles,
    /// Verification outcomes since start, for GetSchedulerStats.
    verifications: verify::Counts,
}

/// How many backups may wait for each copy permit.
const WAITING_PER_COPY: usize = 4;

/// Counts a backup as waiting for a copy permit while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Held while the set of backup files changes; see [`Backups::lock_dir`].
pub struct DirGuard<'a> {
    _mutex: MutexGuard<'a, ()>,
    _file: std::fs::File,
}

/// One snapshot shared by the backups given it; see
/// [`Backups::snapshot_shared`]. Its temporary file goes when it is dropped.
#[derive(Default)]
pub struct SharedSnapshot(tokio::sync::OnceCell<Arc<file_io::Staged>>);

/// Runs backup work in a task of its own, so a caller that goes away does
/// not interrupt it half-way: it finishes (or fails and cleans up) either way.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Internal(format!("backup task failed: {e}")))?
}

/// Source-database wording for errors: callers see what, never where.
const SOURCE: &str = "the source database";

/// The owner of system backups (pre-restore, pre-migration, adopted files).
pub const SYSTEM_OWNER: i64 = 0;

impl Backups {
    pub fn new(
        db: DatabaseConnection,
        audit: Recorder,
        source: PathBuf,
        dir: PathBuf,
        limits: Limits,
    ) -> Self {
        Self {
            db,
            audit,
            source,
            dir,
            dir_lock: Mutex::new(()),
            copies: Semaphore::new(limits.max_concurrent_copies as usize),
            max_copies: limits.max_concurrent_copies,
            waiting: AtomicUsize::new(0),
            limits,
            verified: verify::VerifiedFiles::default(),
            verifications: verify::Counts::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the directory lock: this process's mutex, then an advisory
    /// lock on `.lock` in the directory, shared with other processes on the
    /// same backups. Retention holds it for a whole run.
    pub async fn lock_dir(&self) -> Result<DirGuard<'_>> {
        let mutex = self.dir_lock.lock().await;
        let path = self.dir.join(".lock");
        let file =
            blocking(move || file_io::lock_exclusive(&path).map_err(file_io::dir_error)).await?;
        Ok(DirGuard {
            _mutex: mutex,
            _file: file,
        })
    }

    /// A copy permit. Waiting for one is bounded: beyond
    /// [`WAITING_PER_COPY`] waiters per permit a backup is turned away at
    /// once rather than queued without limit. `cancel` ends the wait.
    async fn copy_permit(&self, cancel: &CancellationToken) -> Result<SemaphorePermit<'_>> {
        match self.copies.try_acquire() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(shutting_down()),
            Err(TryAcquireError::NoPermits) => {}
        }
        let limit = WAITING_PER_COPY * self.max_copies as usize;
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if ahead >= limit {
            return Err(Error::ResourceExhausted(
                "too many backups in progress; retry later".into(),
            ));
        }
        tokio::select! {
            permit = self.copies.acquire() => permit.map_err(|_| shutting_down()),
            () = cancel.cancelled() => Err(file_io::cancelled()),
        }
    }

    /// Snapshots the source into a new backup and catalogs it, recording
    /// `event(&backup)` in the same transaction as the catalog row.
    pub async fn snapshot(
        self: &Arc<Self>,
        new: NewBackup,
        event: impl FnOnce(&Backup) -> NewEvent + Send + 'static,
    ) -> Result<Backup> {
        let this = Arc::clone(self);
        detached(async move {
            this.measured_snapshot(new, event, &CancellationToken::new())
                .await
        })
        .await
    }

    /// Like [`Backups::snapshot`], but every backup given the same `shared`
    /// gets the same snapshot, taken by the first of them: backups due at
    /// the same moment show the source at that moment, and it is copied
    /// and hashed once instead of once per backup.
    pub async fn snapshot_shared(
        self: &Arc<Self>,
        shared: &Arc<SharedSnapshot>,
        new: NewBackup,
        event: impl FnOnce(&Backup) -> NewEvent + Send + 'static,
    ) -> Result<Backup> {
        let (this, shared) = (Arc::clone(self), Arc::clone(shared));
        detached(async move {
            let cancel = CancellationToken::new();
            let kind = new.kind;
            let work = async {
                let staged = shared
                    .0
                    .get_or_try_init(|| async {
                        Ok::<_, Error>(Arc::new(this.stage("scheduled", &cancel).await?))
                    })
                    .await?;
                this.catalogue(staged, new, event, &cancel).await
            };
            this.measured(kind, work).await
        })
        .await
    }

    /// [`Backups::snapshot_inner`], counted in the metrics.
    async fn measured_snapshot(
        &self,
        new: NewBackup,
        event: impl FnOnce(&Backup) -> NewEvent,
        cancel: &CancellationToken,
    ) -> Result<Backup> {
        self.measured(new.kind, self.snapshot_inner(new, event, cancel))
            .await
    }

    /// A backup's work, counted in the metrics.
    async fn measured(
        &self,
        kind: BackupKind,
        work: impl Future<Output = Result<Backup>>,
    ) -> Result<Backup> {
        let kind = kind.as_str();
        let started = std::time::Instant::now();
        let result = work.await;
        let outcome = if result.is_ok() {
            "completed"
        } else {
            "failed"
        };
        metrics::counter!(crate::telemetry::BACKUPS_TOTAL, "kind" => kind, "outcome" => outcome)
            .increment(1);
        if let Ok(backup) = &result {
            metrics::histogram!(crate::telemetry::BACKUP_DURATION_SECONDS, "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(crate::telemetry::BACKUP_SIZE_BYTES, "kind" => kind)
                .record(backup.size_bytes as f64);
        }
        result
    }

    /// The backup itself. `cancel` stops it until the file is linked into
    /// place (nothing is kept); from there on it completes.
    async fn snapshot_inner(
        &self,
        new: NewBackup,
        event: impl FnOnce(&Backup) -> NewEvent,
        cancel: &CancellationToken,
    ) -> Result<Backup> {
        // Not worth a copy if the name is taken or the quota reached
        // (checked again under the lock).
        self.check_admissible(&new).await?;
        let staged = Arc::new(self.stage(&new.name, cancel).await?);
        self.catalogue(&staged, new, event, cancel).await
    }

    /// Copies the source to a temporary file (named after `hint`), within
    /// the bound on concurrent copies.
    async fn stage(&self, hint: &str, cancel: &CancellationToken) -> Result<file_io::Staged> {
        let _permit = self.copy_permit(cancel).await?;
        let (source, dir, hint) = (self.source.clone(), self.dir.clone(), hint.to_owned());
        let copy_cancel = cancel.clone();
        blocking(move || file_io::stage_snapshot(&source, SOURCE, &dir, &hint, &copy_cancel)).await
    }

    /// Links a staged snapshot under the new backup's name and catalogs it
    /// with `event`, under the directory lock.
    async fn catalogue(
        &self,
        staged: &Arc<file_io::Staged>,
        new: NewBackup,
        event: impl FnOnce(&Backup) -> NewEvent,
        cancel: &CancellationToken,
    ) -> Result<Backup> {
        let dir_lock = self.lock_dir().await?;
        file_io::check_cancelled(cancel)?;
        self.check_admissible(&new).await?;
        let filename = self.file_for(&new).await?;
        let (linked, link) = (Arc::clone(staged), filename.clone());
        blocking(move || linked.link_as(&link).map_err(file_io::dir_error)).await?;
        let row = Backup {
            filename,
            name: new.name,
            owner_user_id: new.owner_user_id,
            kind: new.kind.as_str().into(),
            size_bytes: staged.facts.size_bytes,
            sha256: staged.facts.sha256.clone(),
            is_protected: new.kind.is_protected(),
            // Microseconds, the precision page cursors carry.
            created_at: staged.taken_at,
            damage: None,
            last_verified_at: None,
        };
        let committed = async {
            let mut change = self.audit.begin().await?;
            catalog::insert(&*change, row.clone()).await?;
            change.record(event(&row));
            change.commit().await
        }
        .await;
        let committed = match committed {
            Ok(committed) => committed,
            Err(e) => {
                // No catalog row: take the file back out so nothing is left
                // under the backup's name.
                let doomed = file_io::begin_delete(&self.dir, &row.filename)?;
                file_io::finish_delete(&doomed)?;
                return Err(e);
            }
        };
        // The new name is made durable outside the lock, so concurrent
        // backups share directory fsyncs instead of queueing behind each
        // other's. The caller and audit subscribers hear of the backup only
        // once it is durable (a listing may show it a moment earlier). A
        // crash before the fsync at worst loses the link, and the start-up
        // reconcile drops the row.
        drop(dir_lock);
        let dir = self.dir.clone();
        blocking(move || file_io::sync_dir(&dir).map_err(file_io::dir_error)).await?;
        drop(committed);
        Ok(row)
    }

    /// The file a new backup's bytes go to: its name, or for a user's
    /// manual backup whose name another owner's file has, the name
    /// qualified by its owner. The caller holds the directory lock.
    async fn file_for(&self, new: &NewBackup) -> Result<String> {
        if new.kind != BackupKind::Manual || new.owner_user_id == SYSTEM_OWNER {
            return Ok(new.name.clone());
        }
        let (dir, plain) = (self.dir.clone(), new.name.clone());
        let on_disk = blocking(move || Ok(file_io::check_free(&dir, &plain).is_err())).await?;
        if on_disk || catalog::by_filename(&self.db, &new.name).await?.is_some() {
            return Ok(naming::owner_qualified(new.owner_user_id, &new.name));
        }
        Ok(new.name.clone())
    }

    /// Fails when `new`'s name is taken among its owner's backups, or its
    /// owner has as many manual backups as the quota allows.
    async fn check_admissible(&self, new: &NewBackup) -> Result<()> {
        if catalog::by_name(&self.db, new.owner_user_id, &new.name)
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(format!(
                "you already have a backup named {}",
                quote(&new.name)
            )));
        }
        if let Some(quota) = new.manual_quota {
            let have = catalog::count_manual(&self.db, new.owner_user_id).await?;
            if have >= u64::from(quota) {
                return Err(Error::ResourceExhausted(format!(
                    "you have {have} manual backups, the most this server allows \
                     (--max-manual-backups-per-user {quota}); delete some first"
                )));
            }
        }
        Ok(())
    }

    /// CreateBackup: a manual backup owned by the caller. A non-admin may
    /// keep at most `max_manual_backups_per_user` of them.
    pub async fn create(self: &Arc<Self>, caller: Caller, custom: Option<&str>) -> Result<Backup> {
        let filename = match custom {
            Some(name) => naming::validate_custom_filename(name)
                .map_err(|why| Error::invalid("custom_filename", why))?,
            None => naming::manual_filename(Utc::now()),
        };
        let mut new = NewBackup::new(filename.clone(), caller.user_id, BackupKind::Manual);
        if !caller.is_admin {
            new.manual_quota = Some(self.limits.max_manual_backups_per_user);
        }
        let event = move |b: &Backup| {
            NewEvent::new("backup_files.create", caller.user_id)
                .resource("backup", &b.name)
                .details(json!({ "size": b.size_bytes, "sha256": b.sha256, "kind": b.kind }))
        };
        // A caller that stops waiting (a client deadline, a dropped
        // connection) cancels the backup: nothing is kept and the task
        // still audits the failure. Once the file is being linked into
        // place the backup completes instead, catalogued as usual.
        let cancel = CancellationToken::new();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let this = Arc::clone(self);
        detached(async move {
            let result = this.measured_snapshot(new, event, &cancel).await;
            if let Err(e) = &result {
                this.audit_failure("backup_files.create", caller, &filename, e)
                    .await;
            }
            result
        })
        .await
    }

    /// The backup a request names, if the caller may see it. Names are
    /// looked up among the caller's own backups, so another user's backup of
    /// the same name is never found, and its existence never shown. Naming
    /// another owner needs an admin. An admin's bare name that is not one of
    /// their own finds the one backup of that name, if only one owner has it.
    pub async fn get(&self, caller: Caller, named: Named<'_>) -> Result<Backup> {
        let name = named.name;
        let not_found = || Error::NotFound(format!("no backup named {}", quote(name)));
        if !naming::is_backup_filename(name) {
            return Err(not_found());
        }
        if let Some(owner) = named.owner {
            if !caller.can_access(owner) {
                return Err(Error::PermissionDenied(
                    "only an admin may name another user's backup".into(),
                ));
            }
            return catalog::by_name(&self.db, owner, name)
                .await?
                .ok_or_else(not_found);
        }
        if let Some(mine) = catalog::by_name(&self.db, caller.user_id, name).await? {
            return Ok(mine);
        }
        if !caller.is_admin {
            return Err(not_found());
        }
        let mut all = catalog::all_named(&self.db, name).await?;
        match all.len() {
            0 => Err(not_found()),
            1 => Ok(all.remove(0)),
            n => Err(Error::invalid(
                "owner_user_id",
                format!("{n} owners have a backup named {}; say whose", quote(name)),
            )),
        }
    }

    /// One page of the backups the caller may see, newest first, after
    /// adopting files other tools dropped into the directory.
    pub async fn list(
        &self,
        caller: Caller,
        after: Option<&catalog::Cursor>,
        limit: u64,
    ) -> Result<Vec<Backup>> {
        self.reconcile().await?;
        let owner = (!caller.is_admin).then_some(caller.user_id);
        catalog::page(&self.db, owner, after, limit).await
    }

    /// DownloadBackup: the backup and its bytes in chunks of at most
    /// `chunk_bytes` (at least one, empty for an empty file), checked
    /// against the catalog as they are read. A
    /// damaged backup fails with DATA_LOSS: before the first chunk when it is
    /// known or its size is wrong, else in place of the end of the stream.
    /// Admin only, unless the operator allows user downloads: a backup
    /// holds every user's rows of the source. (Another user's backup is
    /// NOT_FOUND first, as everywhere.)
    pub async fn download(
        self: &Arc<Self>,
        caller: Caller,
        named: Named<'_>,
        chunk_bytes: usize,
    ) -> Result<(Backup, mpsc::Receiver<Result<Vec<u8>>>)> {
        let opened = async {
            let backup = self.get(caller, named).await?;
            if !caller.is_admin && !self.limits.allow_user_downloads {
                return Err(Error::PermissionDenied(
                    "a backup holds the whole source database, every user's rows, so only an \
                     admin may download it (the operator can allow users with \
                     --allow-user-downloads)"
                        .into(),
                ));
            }
            verify::refuse_damaged(&backup)?;
            let (dir, file, name) = (
                self.dir.clone(),
                backup.filename.clone(),
                backup.name.clone(),
            );
            let facts = verify::recorded_facts(&backup);
            let reader = blocking(move || {
                file_io::CheckedReader::open(&dir, &file, facts)
                    .map_err(|e| gone_as_not_found(e, &dir, &name))
            })
            .await;
            match reader {
                Ok(reader) => Ok((backup, reader)),
                Err(e) => Err(self
                    .found_damaged(&backup, e, verify::Trigger::Download, caller.user_id)
                    .await),
            }
        }
        .await;
        let mut event =
            NewEvent::new("backup_files.download", caller.user_id).resource("backup", named.name);
        if let Ok((backup, _)) = &opened {
            event = event.subject(backup.owner_user_id);
        }
        self.audit
            .record_outcome(event, &opened, |(b, _)| json!({ "size": b.size_bytes }))
            .await;
        let (backup, reader) = opened?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(Arc::clone(self).stream(backup.clone(), reader, chunk_bytes, caller, tx));
        Ok((backup, rx))
    }

    /// Sends a download's chunks to `tx` until the end (the last chunk, or
    /// one empty chunk for an empty file), a damage found (recorded, sent
    /// as the last item), or the client leaving.
    async fn stream(
        self: Arc<Self>,
        backup: Backup,
        mut reader: file_io::CheckedReader,
        chunk_bytes: usize,
        caller: Caller,
        tx: mpsc::Sender<Result<Vec<u8>>>,
    ) {
        let mut sent_any = false;
        loop {
            let read = blocking(move || Ok((reader.next_chunk(chunk_bytes), reader))).await;
            let (chunk, back) = match read {
                Ok((chunk, back)) => (chunk, Some(back)),
                Err(e) => (Err(e), None),
            };
            let message = match chunk {
                // The end, with every byte checked.
                Ok(bytes) if bytes.is_empty() && sent_any => return,
                Ok(bytes) => Ok(bytes),
                Err(e) => Err(self
                    .found_damaged(&backup, e, verify::Trigger::Download, caller.user_id)
                    .await),
            };
            let last = matches!(&message, Ok(bytes) if bytes.is_empty()) || message.is_err();
            sent_any = true;
            // A failed send means the client went away.
            if tx.send(message).await.is_err() || last {
                return;
            }
            let Some(back) = back else { return };
            reader = back;
        }
    }

    /// RestoreBackup: verify the backup against the catalog, check that the
    /// source can be written, snapshot it (protected), then replace the
    /// source's content. Admin only. A damaged backup is DATA_LOSS and
    /// nothing is touched or taken.
    pub async fn restore(
        self: &Arc<Self>,
        caller: Caller,
        named: Named<'_>,
    ) -> Result<(Backup, Backup)> {
        let result = async {
            caller.require_admin()?;
            let backup = self.get(caller, named).await?;
            // The verified connection keeps the content even if the file is
            // deleted meanwhile: what is restored is what was verified.
            let (backup, verified) = self
                .verify(&backup, verify::Trigger::Restore, caller.user_id)
                .await?;
            let source = self.source.clone();
            blocking(move || file_io::open_writable(&source, SOURCE).map(drop))
                .await
                .map_err(|e| {
                    e.with_note("nothing was changed and no pre-restore backup was taken")
                })?;
            let pre = NewBackup::new(
                naming::pre_restore_filename(Utc::now()),
                SYSTEM_OWNER,
                BackupKind::PreRestore,
            );
            let restored_name = backup.name.clone();
            let pre = self
                .snapshot(pre, move |p| {
                    NewEvent::new("backup_files.pre_restore", caller.user_id)
                        .subject(SYSTEM_OWNER)
                        .resource("backup", &p.name)
                        .details(json!({ "restoring": restored_name, "size": p.size_bytes }))
                })
                .await?;
            let replaced = async {
                let _permit = self.copies.acquire().await.map_err(|_| shutting_down())?;
                let source = self.source.clone();
                blocking(move || file_io::restore(verified, &source, SOURCE)).await
            }
            .await;
            match replaced {
                Ok(()) => Ok((backup, pre)),
                Err(e) => Err(e.with_note(&format!(
                    "the pre-restore backup {:?} taken before it is kept",
                    pre.name
                ))),
            }
        }
        .await;
        let mut event =
            NewEvent::new("backup_files.restore", caller.user_id).resource("backup", named.name);
        if let Ok((backup, _)) = &result {
            event = event.subject(backup.owner_user_id);
        }
        self.audit
            .record_outcome(
                event,
                &result,
                |(_, pre)| json!({ "pre_restore_backup": pre.name }),
            )
            .await;
        result
    }

    /// DeleteBackup. A protected backup needs an admin and `force`.
    pub async fn delete(&self, caller: Caller, named: Named<'_>, force: bool) -> Result<()> {
        let result = async {
            // Looked up under the lock: a backup another deleter (retention)
            // removed meanwhile is NOT_FOUND, never deleted twice.
            let _dir = self.lock_dir().await?;
            let backup = self.get(caller, named).await?;
            if backup.is_protected {
                caller.require_admin()?;
                if !force {
                    return Err(Error::FailedPrecondition(format!(
                        "backup {} is protected; an admin must pass force=true to delete it",
                        quote(&backup.name)
                    )));
                }
            }
            let event = NewEvent::new("backup_files.delete", caller.user_id)
                .subject(backup.owner_user_id)
                .resource("backup", &backup.name)
                .details(json!({ "forced": force, "protected": backup.is_protected }));
            self.remove_locked(&backup.filename, event).await
        }
        .await;
        if let Err(e) = &result {
            self.audit_failure("backup_files.delete", caller, named.name, e)
                .await;
        }
        result
    }

    /// Deletes a backup's file and catalog row crash-safely, recording
    /// `event` with the row's removal. The caller holds the directory lock.
    pub async fn remove_locked(&self, filename: &str, event: NewEvent) -> Result<()> {
        let doomed = file_io::begin_delete(&self.dir, filename);
        let doomed = match doomed {
            Ok(path) => Some(path),
            // Already gone from disk: still drop the row.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_io::dir_error(e)),
        };
        self.verified.forget(filename);
        let committed = async {
            let mut change = self.audit.begin().await?;
            catalog::remove(&*change, filename).await?;
            change.record(event);
            change.commit().await
        }
        .await;
        match committed {
            Ok(committed) => {
                drop(committed);
                if let Some(doomed) = doomed {
                    file_io::finish_delete(&doomed)?;
                }
                Ok(())
            }
            Err(e) => {
                if doomed.is_some() {
                    file_io::undo_delete(&self.dir, filename)?;
                }
                Err(e)
            }
        }
    }

    /// Brings the catalog and the directory into agreement: finishes or
    /// undoes deletes a crash interrupted, adopts files without a row (with
    /// the kind and owner their names imply), and drops rows whose file is
    /// gone. What changed is audited as `backup_files.reconciled`.
    pub async fn reconcile(&self) -> Result<()> {
        let _dir = self.lock_dir().await?;
        let dir = self.dir.clone();
        let scan = blocking(move || file_io::scan_dir(&dir)).await?;
        let known = catalog::all_filenames(&self.db).await?;
        let mut restored = Vec::new();
        let mut finished = Vec::new();
        for name in &scan.deleting {
            if known.contains(name) && !scan.files.contains(name) {
                file_io::undo_delete(&self.dir, name)?;
                restored.push(name.clone());
            } else {
                file_io::finish_delete(
                    &self.dir.join(format!("{}{name}", file_io::DELETING_PREFIX)),
                )?;
                finished.push(name.clone());
            }
        }
        let on_disk: std::collections::HashSet<&String> =
            scan.files.iter().chain(restored.iter()).collect();
        let missing: Vec<String> = known
            .iter()
            .filter(|n| !on_disk.contains(n))
            .cloned()
            .collect();
        let mut adopted = Vec::new();
        for name in scan.files.iter().filter(|n| !known.contains(*n)) {
            let (dir, file) = (self.dir.clone(), name.clone());
            let found = blocking(move || file_io::describe(&dir, &file)).await;
            let (facts, modified) = match found {
                Ok(found) => found,
                // Vanished or unreadable since the scan: look again next time.
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "skipping a file that cannot be read");
                    continue;
                }
            };
            let (kind, owner, mut backup_name) = naming::classify(name);
            // A name its owner already uses (a file dropped in beside a
            // catalogued one) is adopted under its file name, unique.
            if catalog::by_name(&self.db, owner, backup_name)
                .await?
                .is_some()
                || adopted
                    .iter()
                    .any(|b: &Backup| b.owner_user_id == owner && b.name == backup_name)
            {
                backup_name = name.as_str();
            }
            adopted.push(Backup {
                filename: name.clone(),
                name: backup_name.to_owned(),
                owner_user_id: owner,
                kind: kind.as_str().into(),
                size_bytes: facts.size_bytes,
                sha256: facts.sha256,
                is_protected: kind.is_protected(),
                created_at: modified.trunc_subsecs(6),
                damage: None,
                last_verified_at: None,
            });
        }
        if adopted.is_empty() && missing.is_empty() && restored.is_empty() && finished.is_empty() {
            return Ok(());
        }
        let mut change = self.audit.begin().await?;
        for row in &adopted {
            catalog::insert(&*change, row.clone()).await?;
        }
        for name in &missing {
            catalog::remove(&*change, name).await?;
        }
        let adopted_names: Vec<&str> = adopted.iter().map(|b| b.filename.as_str()).collect();
        tracing::info!(adopted = ?adopted_names, missing = ?missing, "reconciled the backups directory");
        let event = NewEvent::new("backup_files.reconciled", 0).details(json!({
            "adopted": adopted_names,
            "removed_missing": missing,
            "delete_undone": restored,
            "delete_finished": finished,
        }));
        change.record(event);
        change.commit().await?;
        Ok(())
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

/// A backup file that vanished (deleted meanwhile) is as if the backup did
/// not exist; a vanished directory is the operator's to fix.
fn gone_as_not_found(error: Error, dir: &Path, name: &str) -> Error {
    match error {
        Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() => {
            file_io::dir_error(Error::Io(e))
        }
        Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Error::NotFound(format!("no backup named {}", quote(name)))
        }
        e => e,
    }
}

/// The error of work refused because the server is shutting down.
fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down".into())
}

/// Runs blocking file or SQLite work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
