//! Pruning the backup storage (on request, and in the background after
//! retention deleted backups), and what the storage holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Backups;
use super::storage::{Pruned, StorageStats};
use crate::audit::NewEvent;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::backups as catalog;
use crate::telemetry;

/// Prunes run one at a time; see [`Backups::prune_soon`].
#[derive(Default)]
pub struct Pruning {
    running: tokio::sync::Mutex<()>,
    /// A background prune is queued and has not started yet.
    queued: AtomicBool,
    /// When the last prune finished (since the server started).
    last: std::sync::Mutex<Option<DateTime<Utc>>>,
}

/// GetRepositoryStats: the catalog's view and the storage's.
#[derive(Clone, Debug)]
pub struct RepositoryStats {
    pub backups: u64,
    /// What full copies of every backup would take.
    pub logical_bytes: u64,
    pub storage: StorageStats,
    pub last_prune_at: Option<DateTime<Utc>>,
    /// The oldest last verification among the backups: by then every one
    /// had been verified. `None` while any backup never was.
    pub last_full_check_at: Option<DateTime<Utc>>,
}

fn admin_only(caller: Caller, what: &str) -> Result<()> {
    if caller.is_admin {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!("only an admin may {what}")))
    }
}

impl Backups {
    /// PruneRepository: admin only, audited as `backup_files.prune`.
    pub async fn prune(&self, caller: Caller) -> Result<Pruned> {
        let result = async {
            admin_only(caller, "prune the backup storage")?;
            self.prune_now(caller.user_id, "request").await
        }
        .await;
        if let Err(e) = &result
            && matches!(e, Error::PermissionDenied(_))
        {
            self.audit
                .record_or_log(NewEvent::new("backup_files.prune", caller.user_id).failed(e))
                .await;
        }
        result
    }

    /// Queues a prune in the background, after retention deleted backups:
    /// while one is queued, another request adds nothing, and a prune
    /// that starts later covers every delete before it.
    pub fn prune_soon(self: &Arc<Self>) {
        if self.pruning.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let backups = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = backups.prune_now(0, "retention").await {
                tracing::warn!(error = %e, "the prune after retention failed; the next one tries again");
            }
        });
    }

    async fn prune_now(&self, actor: i64, trigger: &str) -> Result<Pruned> {
        let _one = self.pruning.running.lock().await;
        self.pruning.queued.store(false, Ordering::Release);
        let result = self.storage.prune().await;
        if trigger == "retention" && result.as_ref().is_ok_and(|p| *p == Pruned::default()) {
            // Storage whose deletes free the bytes at once: nothing happened.
            return result;
        }
        let event = NewEvent::new("backup_files.prune", actor);
        let event = match &result {
            Ok(pruned) => {
                *self.pruning.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Utc::now());
                let reclaimed = pruned.bytes_before.saturating_sub(pruned.bytes_after);
                metrics::counter!(telemetry::PRUNED_BYTES_TOTAL).increment(reclaimed);
                metrics::gauge!(telemetry::STORAGE_STORED_BYTES).set(pruned.bytes_after as f64);
                event.details(json!({
                    "trigger": trigger,
                    "bytes_before": pruned.bytes_before,
                    "bytes_after": pruned.bytes_after,
                    "packs_deleted": pruned.packs_deleted,
                    "packs_written": pruned.packs_written,
                    "unreadable": pruned.unreadable,
                }))
            }
            Err(e) => event.details(json!({ "trigger": trigger })).failed(e),
        };
        self.audit.record_or_log(event).await;
        result
    }

    /// GetRepositoryStats: admin only.
    pub async fn repository_stats(&self, caller: Caller) -> Result<RepositoryStats> {
        admin_only(caller, "see the backup storage's statistics")?;
        let totals = catalog::totals(self.db.reads()).await?;
        let storage = self.storage.stats().await?;
        metrics::gauge!(telemetry::STORAGE_STORED_BYTES).set(storage.stored_bytes as f64);
        metrics::gauge!(telemetry::STORAGE_LOGICAL_BYTES).set(totals.logical_bytes as f64);
        Ok(RepositoryStats {
            backups: totals.backups,
            logical_bytes: totals.logical_bytes,
            storage,
            last_prune_at: *self.pruning.last.lock().unwrap_or_else(|e| e.into_inner()),
            last_full_check_at: totals.all_verified_by,
        })
    }
}
