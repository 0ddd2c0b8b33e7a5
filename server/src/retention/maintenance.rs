//! Maintenance of the backups: removing empty or foreign files, and old
//! protected backups.

use chrono::Utc;
use serde_json::json;

use super::{Doomed, Retention};
use crate::audit::NewEvent;
use crate::auth::Caller;
use crate::backup::naming;
use crate::backup::sqlite::Content;
use crate::error::{Error, Result};

impl Retention {
    /// CleanupEmptyBackups (admin): deletes zero-byte backups and
    /// unprotected files that are not SQLite databases (by their header). A
    /// protected file that is not empty is left alone, whatever it holds.
    pub async fn cleanup_empty(&self, caller: Caller) -> Result<Vec<String>> {
        let result = async {
            caller.require_admin()?;
            // Files other tools dropped in are judged too.
            self.backups.reconcile().await?;
            let _dir = self.backups.lock_dir().await?;
            let rows = self.backups.entries().await?;
            let judged = self.backups.contents(rows).await?;
            let mut doomed = Vec::new();
            let mut spared = Vec::new();
            for (row, content) in judged {
                let Some(reason) = judge(&row.name, content, row.is_protected, &mut spared)
                else {
                    continue;
                };
                let details = json!({ "owner": row.owner_user_id, "reason": reason, "trigger": "cleanup_empty" });
                doomed.push(Doomed::of(row, details));
            }
            let (mut deleted, mut failed) = self.delete_each(caller.user_id, doomed).await;
            // Beside a repository, dropped files that are not SQLite stay
            // in the directory, outside the catalog.
            for (name, content) in self.backups.left_beside().await? {
                let protected = naming::classify(&name).0.is_protected();
                if judge(&name, content, protected, &mut spared).is_none() {
                    continue;
                }
                match self.backups.remove_left_beside(&name).await {
                    Ok(()) => deleted.push(name),
                    Err(e) => {
                        tracing::warn!(file = %name, error = %e, "could not remove a dropped file; going on with the rest");
                        failed.push(name);
                    }
                }
            }
            self.audit
                .record_or_log(
                    NewEvent::new("backup_retention.cleanup_empty", caller.user_id).details(json!({
                        "deleted": deleted,
                        "failed": failed,
                        "spared_protected": spared,
                    })),
                )
                .await;
            Ok(deleted)
        }
        .await;
        self.audit_error(caller.user_id, "cleanup_empty", result)
            .await
    }

    /// DeleteOldProtectedBackups (admin): deletes protected backups created
    /// more than `days_old` (at least 1) days ago.
    pub async fn delete_old_protected(&self, caller: Caller, days_old: i32) -> Result<Vec<String>> {
        let result = async {
            if days_old < 1 {
                return Err(Error::invalid(
                    "days_old",
                    format!("must be at least 1; got {days_old}"),
                ));
            }
            caller.require_admin()?;
            let cutoff = Utc::now().checked_sub_signed(chrono::Duration::days(days_old.into()));
            // Files other tools dropped in are judged too.
            self.backups.reconcile().await?;
            let _dir = self.backups.lock_dir().await?;
            let rows = self.backups.entries().await?;
            let doomed: Vec<Doomed> = rows
                .into_iter()
                .filter(|b| b.is_protected && cutoff.is_some_and(|c| b.created_at < c))
                .map(|b| {
                    let details = json!({
                        "owner": b.owner_user_id,
                        "reason": "protected and older than days_old",
                        "days_old": days_old,
                        "created_at": b.created_at,
                        "trigger": "cleanup_old_protected",
                    });
                    Doomed::of(b, details)
                })
                .collect();
            let (deleted, failed) = self.delete_each(caller.user_id, doomed).await;
            self.audit
                .record_or_log(
                    NewEvent::new("backup_retention.cleanup_old_protected", caller.user_id)
                        .details(json!({
                            "days_old": days_old,
                            "cutoff": cutoff,
                            "deleted": deleted,
                            "failed": failed,
                        })),
                )
                .await;
            Ok(deleted)
        }
        .await;
        self.audit_error(caller.user_id, "delete_old_protected", result)
            .await
    }
}

/// Why CleanupEmptyBackups removes backup or file `name` holding
/// `content`, or `None` to leave it (a protected one that is not empty
/// joins `spared`).
fn judge(
    name: &str,
    content: Result<Content>,
    protected: bool,
    spared: &mut Vec<String>,
) -> Option<&'static str> {
    match content {
        Ok(Content::Empty) => Some("empty"),
        Ok(Content::NotSqlite) if !protected => Some("not a SQLite database"),
        Ok(Content::NotSqlite) => {
            spared.push(name.to_owned());
            None
        }
        Ok(Content::Sqlite) => None,
        Err(e) => {
            tracing::warn!(backup = %name, error = %e, "cannot inspect a backup; leaving it");
            None
        }
    }
}
