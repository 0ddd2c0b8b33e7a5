//! Deleting a backup: DeleteBackup's authorization, and the crash-safe
//! removal of bytes and catalog row that retention uses too.

use serde_json::json;

use super::{Backups, Named};
use crate::audit::NewEvent;
use crate::auth::Caller;
use crate::error::{Error, Result, quote};
use crate::store::backups as catalog;

impl Backups {
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

    /// Deletes a backup's bytes and catalog row crash-safely, recording
    /// `event` with the row's removal: the bytes are taken out from under
    /// their name, the row goes, then the bytes (or, if the row stays, they
    /// are put back). The caller holds the lock.
    pub async fn remove_locked(&self, filename: &str, event: NewEvent) -> Result<()> {
        // Already gone from the storage: still drop the row.
        let taken_out = self.storage.begin_delete(filename).await?;
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
                if taken_out {
                    self.storage.finish_delete(filename).await?;
                }
                Ok(())
            }
            Err(e) => {
                if taken_out {
                    self.storage.undo_delete(filename).await?;
                }
                Err(e)
            }
        }
    }
}
