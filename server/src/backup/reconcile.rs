//! Keeping the catalog and the storage in agreement: recovery at start
//! (staged leftovers of a crash), and reconcile, which finishes or undoes
//! interrupted deletes, adopts bytes other tools stored, and drops rows
//! whose bytes are gone.

use std::collections::HashSet;

use chrono::SubsecRound;
use serde_json::json;

use super::storage::ChangeStamp;
use super::{Backups, naming};
use crate::audit::NewEvent;
use crate::error::Result;
use crate::model::backup::Backup;
use crate::store::backups as catalog;

impl Backups {
    /// Removes what a crash left staged in the storage; returns what went.
    pub async fn recover(&self) -> Result<Vec<String>> {
        self.storage.recover().await
    }

    /// Brings the catalog and the storage into agreement: finishes or
    /// undoes deletes a crash interrupted, adopts files without a row (with
    /// the kind and owner their names imply), and drops rows whose file is
    /// gone. What changed is audited as `backup_files.reconciled`.
    pub async fn reconcile(&self) -> Result<()> {
        let _dir = self.lock_dir().await?;
        // Taken before listing: a change during the listing shows next time.
        let stamp = self.names_stamp().await?;
        self.reconcile_locked().await?;
        *self.reconciled.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
        Ok(())
    }

    /// Reconciles unless the storage's names are as they were at the last
    /// reconcile: what a listing needs first, at the cost of a stat or two.
    pub async fn reconcile_if_changed(&self) -> Result<()> {
        let now = self.names_stamp().await?;
        let last = self
            .reconciled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if now.is_some() && now == last {
            return Ok(());
        }
        self.reconcile().await
    }

    /// The stamp of the storage's names and, while there is one, of the
    /// legacy directory's, where other tools drop files to import.
    async fn names_stamp(&self) -> Result<Option<ChangeStamp>> {
        let stored = self.storage.names_stamp().await?;
        let Some(legacy) = &self.legacy else {
            return Ok(stored);
        };
        Ok(match (stored, legacy.names_stamp().await?) {
            (Some(stored), Some(dropped)) => Some(stored.and(&dropped)),
            _ => None,
        })
    }

    async fn reconcile_locked(&self) -> Result<()> {
        // A full copy not imported yet still holds its backup's bytes.
        let legacy = self.import_legacy().await?;
        let listing = self.storage.list().await?;
        let known = catalog::all_filenames(self.db.reads()).await?;
        let mut restored = Vec::new();
        let mut finished = Vec::new();
        for name in &listing.deleting {
            if known.contains(name) && !listing.names.contains(name) {
                self.storage.undo_delete(name).await?;
                restored.push(name.clone());
            } else {
                self.storage.finish_delete(name).await?;
                finished.push(name.clone());
            }
        }
        let stored: HashSet<&String> = listing
            .names
            .iter()
            .chain(restored.iter())
            .chain(legacy.iter())
            .collect();
        let missing: Vec<String> = known
            .iter()
            .filter(|n| !stored.contains(n))
            .cloned()
            .collect();
        let mut adopted = Vec::new();
        for name in listing.names.iter().filter(|n| !known.contains(*n)) {
            let found = match self.storage.describe(name).await {
                Ok(found) => found,
                // Vanished or unreadable since the listing: look again next time.
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "skipping a file that cannot be read");
                    continue;
                }
            };
            let (kind, owner, mut backup_name) = naming::classify(name);
            // A name its owner already uses (a file dropped in beside a
            // catalogued one) is adopted under its file name, unique.
            if catalog::by_name(self.db.reads(), owner, backup_name)
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
                kind,
                size_bytes: found.facts.size_bytes,
                sha256: found.facts.sha256.unwrap_or_default(),
                is_protected: kind.is_protected(),
                created_at: found.modified.trunc_subsecs(6),
                damage: None,
                last_verified_at: None,
                blake3: found.facts.blake3,
                stored_bytes: found.stored_bytes as i64,
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
}
