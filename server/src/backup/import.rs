//! Moving backups kept as full copies in the backups directory into the
//! backup storage: those the server stored before it had a repository, and
//! files other tools drop in (the application's `pre_migration_*.db`).
//!
//! Each keeps its name, kind, owner and creation time. A catalogued one is
//! checked against what the catalog recorded first; a damaged one is
//! imported as it is and keeps its damaged mark. A file goes only once its
//! copy in the storage verifies, so an import stopped anywhere resumes at
//! the next reconcile, and nothing is ever only half moved.

use serde_json::json;

use super::sqlite::Content;
use super::storage::BackupStorage;
use super::verify::{self, Trigger};
use super::{Backups, SYSTEM_OWNER};
use crate::audit::NewEvent;
use crate::error::{Error, Result};
use crate::store::backups as catalog;

/// Bytes per read of a legacy file.
const COPY_CHUNK: usize = 1 << 20;

/// What became of one legacy file.
enum Outcome {
    /// Its copy verified and the file is gone.
    Moved,
    /// Its file stays: not SQLite, or its copy did not verify.
    Kept(String),
}

impl Backups {
    /// Imports every file in the legacy directory; audited as
    /// `backup_files.imported` when anything was found. Returns the names
    /// whose files stay (their bytes are still only there). The caller
    /// holds the lock on the set of backups.
    pub(super) async fn import_legacy(&self) -> Result<Vec<String>> {
        let Some(legacy) = &self.legacy else {
            return Ok(Vec::new());
        };
        let listing = legacy.list().await?;
        // Removals a crash interrupted: finished once the copy is there.
        for name in &listing.deleting {
            match self.storage.contains(name).await? {
                true => legacy.finish_delete(name).await?,
                false => legacy.undo_delete(name).await?,
            }
        }
        let names = match listing.deleting.is_empty() {
            true => listing.names,
            false => legacy.list().await?.names,
        };
        if names.is_empty() {
            return Ok(names);
        }
        let (mut moved, mut kept, mut staying) = (Vec::new(), Vec::new(), Vec::new());
        for name in names {
            let why = match self.import_one(legacy.as_ref(), &name).await {
                Ok(Outcome::Moved) => {
                    moved.push(name);
                    continue;
                }
                Ok(Outcome::Kept(why)) => why,
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot import a backup file yet");
                    e.to_string()
                }
            };
            kept.push(json!({ "file": name, "why": why }));
            staying.push(name);
        }
        tracing::info!(imported = ?moved, kept = kept.len(), "imported backup files into the backup storage");
        let mut change = self.audit.begin().await?;
        for name in &moved {
            // Catalogued ones learn their digest and stored bytes; others
            // are adopted by the reconcile that follows.
            let described = self.storage.describe(name).await?;
            let stored = i64::try_from(described.stored_bytes).unwrap_or(i64::MAX);
            let (sha256, blake3) = (described.facts.sha256, described.facts.blake3);
            catalog::set_storage_facts(
                &*change,
                name,
                sha256.as_deref().unwrap_or_default(),
                blake3.as_deref().unwrap_or_default(),
                stored,
            )
            .await?;
        }
        change.record(
            NewEvent::new("backup_files.imported", SYSTEM_OWNER)
                .details(json!({ "imported": moved, "kept": kept })),
        );
        change.commit().await?;
        Ok(staying)
    }

    async fn import_one(&self, legacy: &dyn BackupStorage, name: &str) -> Result<Outcome> {
        let facts = match self.storage.contains(name).await? {
            // Copied before a crash: only the check and the removal are left.
            true => self.storage.describe(name).await?.facts,
            false => match self.copy_in(legacy, name).await? {
                Some(facts) => facts,
                None => return Ok(Outcome::Kept("not a SQLite database".into())),
            },
        };
        if let Err(e) = self.storage.verify(name, &facts).await {
            return Ok(Outcome::Kept(format!("its copy does not verify: {e}")));
        }
        if legacy.begin_delete(name).await? {
            legacy.finish_delete(name).await?;
        }
        Ok(Outcome::Moved)
    }

    /// Copies legacy file `name` into the storage under its name; returns
    /// the facts of the bytes copied, or `None` for a file that is not
    /// SQLite (left alone).
    async fn copy_in(
        &self,
        legacy: &dyn BackupStorage,
        name: &str,
    ) -> Result<Option<super::storage::ContentFacts>> {
        let row = catalog::by_filename(self.db.reads(), name).await?;
        let (facts, taken_at) = match &row {
            Some(row) => {
                let recorded = verify::recorded_facts(row);
                match legacy.verify(name, &recorded).await {
                    Ok(_) => (recorded, row.created_at),
                    Err(e @ Error::DataLoss(_)) => {
                        // Moved as it is: the catalog keeps what was
                        // recorded, and now the damaged mark.
                        self.found_damaged(row, e, Trigger::Import, SYSTEM_OWNER)
                            .await;
                        (legacy.describe(name).await?.facts, row.created_at)
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let content = legacy.sniff(vec![name.to_owned()]).await?.pop();
                if !matches!(content, Some(Ok(Content::Sqlite))) {
                    return Ok(None);
                }
                let found = legacy.describe(name).await?;
                (found.facts, found.modified)
            }
        };
        let bytes = legacy.open(name, &facts, COPY_CHUNK).await?;
        let staged = self.storage.stage_bytes(bytes, taken_at, name).await?;
        staged.publish(name).await?;
        Ok(Some(facts))
    }

    /// Files dropped in that the import leaves in the backups directory
    /// and the catalog does not name (they are not SQLite), with what
    /// they hold: no backup, but CleanupEmptyBackups judges them too. The
    /// caller holds the lock on the set of backups.
    pub async fn left_beside(&self) -> Result<Vec<(String, Result<Content>)>> {
        let Some(legacy) = &self.legacy else {
            return Ok(Vec::new());
        };
        let known = catalog::all_filenames(self.db.reads()).await?;
        let names: Vec<String> = (legacy.list().await?.names.into_iter())
            .filter(|name| !known.contains(name))
            .collect();
        let contents = legacy.sniff(names.clone()).await?;
        Ok(names.into_iter().zip(contents).collect())
    }

    /// Removes a file [`Backups::left_beside`] named. The caller holds the
    /// lock on the set of backups.
    pub async fn remove_left_beside(&self, name: &str) -> Result<()> {
        if let Some(legacy) = &self.legacy
            && legacy.begin_delete(name).await?
        {
            legacy.finish_delete(name).await?;
        }
        Ok(())
    }
}
