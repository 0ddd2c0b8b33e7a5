//! Taking a backup: stage a snapshot of the source through the storage
//! (within a copy permit), then under the lock publish it under the
//! backup's name and catalog it with its audit event. Also the state
//! store's pre-migration snapshot, which reconcile catalogs.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::source::SOURCE;
use super::storage::{BackupStorage, Staged};
use super::{Backups, NewBackup, SYSTEM_OWNER, check_cancelled, detached, naming};
use crate::audit::NewEvent;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::backup::{Backup, BackupKind};
use crate::store::{self, backups as catalog};

/// One snapshot shared by the backups given it; see
/// [`Backups::snapshot_shared`]. Its staged copy goes when it is dropped.
#[derive(Default)]
pub struct SharedSnapshot(tokio::sync::OnceCell<Arc<Staged>>);

impl Backups {
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
                .details(json!({ "size": b.size_bytes, "sha256": b.sha256, "blake3": b.blake3, "kind": b.kind }))
        };
        // A caller that stops waiting (a client deadline, a dropped
        // connection) cancels the backup: nothing is kept and the task
        // still audits the failure. Once the snapshot is being published
        // the backup completes instead, catalogued as usual.
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
            metrics::counter!(crate::telemetry::STORED_BYTES_ADDED_TOTAL)
                .increment(backup.stored_bytes.max(0) as u64);
        }
        result
    }

    /// The backup itself. `cancel` stops it until the snapshot is
    /// published (nothing is kept); from there on it completes.
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

    /// Stages a snapshot of the source (named after `hint`), within the
    /// bound on concurrent copies.
    async fn stage(&self, hint: &str, cancel: &CancellationToken) -> Result<Staged> {
        let _permit = self.copy_permit(cancel).await?;
        self.storage.stage(&self.source, SOURCE, hint, cancel).await
    }

    /// Publishes a staged snapshot under the new backup's name and catalogs
    /// it with `event`, under the lock.
    async fn catalogue(
        &self,
        staged: &Arc<Staged>,
        new: NewBackup,
        event: impl FnOnce(&Backup) -> NewEvent,
        cancel: &CancellationToken,
    ) -> Result<Backup> {
        let dir_lock = self.lock_dir().await?;
        check_cancelled(cancel)?;
        self.check_admissible(&new).await?;
        let filename = self.file_for(&new).await?;
        let stored_bytes = staged.publish(&filename).await?;
        let row = Backup {
            filename,
            name: new.name,
            owner_user_id: new.owner_user_id,
            kind: new.kind,
            size_bytes: staged.facts.size_bytes,
            sha256: staged.facts.sha256.clone().unwrap_or_default(),
            is_protected: new.kind.is_protected(),
            // Microseconds, the precision page cursors carry.
            created_at: staged.taken_at,
            damage: None,
            last_verified_at: None,
            blake3: staged.facts.blake3.clone(),
            stored_bytes: stored_bytes as i64,
        };
        let committed = async {
            let mut change = self.audit.begin().await?;
            if let Some(fence) = &new.fence
                && store::lease::holds(&*change, fence).await?.is_none()
            {
                return Err(Error::Unavailable(
                    "the scheduler lease was lost before the backup was catalogued; its new \
                     holder runs the slot"
                        .into(),
                ));
            }
            catalog::insert(&*change, row.clone()).await?;
            change.record(event(&row));
            change.commit().await
        }
        .await;
        let committed = match committed {
            Ok(committed) => committed,
            Err(e) => {
                // No catalog row: take the bytes back out so nothing is
                // left under the backup's name.
                if self.storage.begin_delete(&row.filename).await? {
                    self.storage.finish_delete(&row.filename).await?;
                }
                return Err(e);
            }
        };
        // The new name is made durable outside the lock, so concurrent
        // backups share flushes (directory fsyncs) instead of queueing
        // behind each other's. The caller and audit subscribers hear of
        // the backup only once it is durable (a listing may show it a
        // moment earlier). A crash before the flush at worst loses the
        // name, and the start-up reconcile drops the row.
        drop(dir_lock);
        self.storage.flush().await?;
        drop(committed);
        Ok(row)
    }

    /// The name a new backup's bytes are stored under: its name, or for a
    /// user's manual backup whose name another owner's backup has, the name
    /// qualified by its owner. The caller holds the lock.
    async fn file_for(&self, new: &NewBackup) -> Result<String> {
        if new.kind != BackupKind::Manual || new.owner_user_id == SYSTEM_OWNER {
            return Ok(new.name.clone());
        }
        if self.storage.contains(&new.name).await?
            || catalog::by_filename(self.db.reads(), &new.name)
                .await?
                .is_some()
        {
            return Ok(naming::owner_qualified(new.owner_user_id, &new.name));
        }
        Ok(new.name.clone())
    }
}

/// Snapshots the state store's SQLite file at `state_store` into `storage`
/// as a `pre_migration_*` backup and returns its name. Not catalogued
/// here: the store is about to change shape, and the start-up reconcile
/// adopts it as a protected system backup.
pub async fn pre_migration_snapshot(
    storage: &dyn BackupStorage,
    state_store: &Path,
) -> Result<String> {
    let name = naming::pre_migration_filename(Utc::now());
    let staged = storage
        .stage(
            state_store,
            "the state store",
            &name,
            &CancellationToken::new(),
        )
        .await?;
    staged.publish(&name).await?;
    storage.flush().await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::Recorder;
    use crate::backup::Limits;
    use crate::backup::storage::directory::Directory;
    use crate::model::backup::BackupKind;
    use crate::store::Store;
    use crate::store::lease::{self, Held};
    use crate::store::tests::on_each_backend;

    async fn take(db: &Store, holder: &str, ttl: Duration) -> Held {
        let txn = db.begin_write().await.unwrap();
        let held = lease::take(&txn, holder, ttl)
            .await
            .unwrap()
            .expect("the lease");
        txn.commit().await.unwrap();
        held
    }

    // A scheduler that lost its lease mid-backup (paused past its TTL, as
    // a stalled or partitioned replica is) finishes its snapshot, but the
    // backup is refused and nothing is left under its name; the new
    // holder's backup of the same slot goes in.
    on_each_backend!(
        a_backup_taken_under_a_lost_lease_is_not_catalogued,
        |db: Store| async move {
            let dir = tempfile::tempdir().unwrap();
            let source = dir.path().join("source.db");
            rusqlite::Connection::open(&source)
                .unwrap()
                .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES ('a row');")
                .unwrap();
            let storage = Arc::new(Directory::create(&dir.path().join("backups")).unwrap());
            let limits = Limits {
                max_concurrent_copies: 2,
                allow_user_downloads: false,
                max_manual_backups_per_user: 10,
            };
            let backups = Arc::new(Backups::new(
                db.clone(),
                Recorder::new(db.clone()),
                source,
                storage.clone(),
                limits,
            ));
            let stalled = take(&db, "stalled", Duration::from_millis(1)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let taker = take(&db, "taker", Duration::from_secs(60)).await;
            let scheduled = |fence| NewBackup {
                fence: Some(fence),
                ..NewBackup::new("auto_slot.db".into(), 7, BackupKind::Auto)
            };
            let event = |b: &Backup| {
                NewEvent::new("backup_scheduler.backup_completed", 7)
                    .resource("backup", &b.filename)
            };

            let refused = backups.snapshot(scheduled(stalled.fence), event).await;
            assert!(
                matches!(&refused, Err(Error::Unavailable(m)) if m.contains("lease was lost")),
                "{refused:?}"
            );
            assert!(!storage.contains("auto_slot.db").await.unwrap());
            assert!(
                store::backups::by_filename(db.reads(), "auto_slot.db")
                    .await
                    .unwrap()
                    .is_none()
            );

            let kept = backups
                .snapshot(scheduled(taker.fence), event)
                .await
                .unwrap();
            assert_eq!(kept.filename, "auto_slot.db");
            assert!(storage.contains("auto_slot.db").await.unwrap());
        }
    );
}
