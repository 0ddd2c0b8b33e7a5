//! Retention: per-owner policies that delete old regular backups, previews
//! of them, and maintenance of the backups directory.
//!
//! What goes is decided by [`plan`], a pure function of one owner's catalog
//! rows; [`OwnerPlan::secure`] then makes sure the owner's newest backup that
//! passes verification stays. Damaged backups count towards no `keep_count`
//! and are never deleted by a policy: a backup found damaged while securing
//! is marked so, and the owner's plan is made again without it. The preview ([`Retention::summary`]) and the
//! deletions ([`Retention::apply`]) run the same two steps under the
//! directory lock, so a preview is exactly what an apply right after deletes,
//! and concurrent runs never delete more than asked. Files are deleted one
//! at a time through [`Backups::remove_locked`] (crash-safe, audited in the
//! catalog's transaction); one that fails is audited and the rest go on.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};

use crate::audit::{NewEvent, Recorder};
use crate::auth::Caller;
use crate::backup::sqlite::Content;
use crate::backup::verify::Health;
use crate::backup::{Backups, DirGuard, SYSTEM_OWNER};
use crate::error::{Error, Result};
use crate::model::backup::{BackupKind, Entry};
use crate::model::settings::KeepCount;

/// Why a backup is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// One of its owner's newest `keep_count` regular backups.
    NewestN,
    /// A protected backup (or one whose kind retention does not manage).
    Protected,
    /// Its owner's newest backup that passes verification, kept because the
    /// newer ones do not.
    NewestVerified,
    /// A system backup, outside every user's policy.
    System,
    /// No regular backup of its owner passes verification, so retention
    /// deletes none of them.
    NoVerifiedBackup,
    /// Marked damaged: counted towards no `keep_count`, left for an
    /// operator to inspect or delete.
    Damaged,
}

/// A backup that stays (by its name among its owner's), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    pub reason: KeepReason,
}

/// What a policy does to one owner's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerPlan {
    pub owner: i64,
    /// The owner's backups.
    pub total: usize,
    /// Of those, the ones retention never deletes by policy.
    pub protected: usize,
    /// Kept backups with their reasons: newest first, then any kept by
    /// [`OwnerPlan::secure`].
    pub keep: Vec<Kept>,
    /// Names of the backups to delete, newest first.
    pub delete: Vec<String>,
}

/// Newest first: by recorded creation time, then file name, descending.
/// File modification times play no part.
fn newest_first(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| b.filename.cmp(&a.filename))
}

/// Regular backups are the ones a policy manages: AUTO and MANUAL, not
/// protected. Anything else (including a kind this code does not know) is
/// treated as protected.
fn is_regular(backup: &Entry) -> bool {
    !backup.is_protected
        && matches!(
            BackupKind::parse(&backup.kind),
            Some(BackupKind::Auto | BackupKind::Manual)
        )
}

/// Plans `keep_count` for `owner`: the owner's newest `keep_count` regular
/// backups stay, older regular ones go; protected backups stay; a system
/// owner's backups all stay. Rows of any other owner are ignored, so a plan
/// can only ever delete its own owner's backups.
pub fn plan(owner: i64, rows: &[Entry], keep_count: usize) -> OwnerPlan {
    let mut mine: Vec<&Entry> = rows.iter().filter(|b| b.owner_user_id == owner).collect();
    mine.sort_by(|a, b| newest_first(a, b));
    let mut plan = OwnerPlan {
        owner,
        total: mine.len(),
        protected: 0,
        keep: Vec::new(),
        delete: Vec::new(),
    };
    let mut regular_kept = 0;
    for backup in mine {
        let reason = if !is_regular(backup) {
            plan.protected += 1;
            if backup.damaged {
                KeepReason::Damaged
            } else {
                KeepReason::Protected
            }
        } else if backup.damaged {
            KeepReason::Damaged
        } else if owner == SYSTEM_OWNER {
            KeepReason::System
        } else if regular_kept < keep_count {
            regular_kept += 1;
            KeepReason::NewestN
        } else {
            plan.delete.push(backup.name.clone());
            continue;
        };
        plan.keep.push(Kept {
            name: backup.name.clone(),
            reason,
        });
    }
    plan
}

/// What [`OwnerPlan::secure`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Safety {
    /// Nothing to delete, so nothing was verified.
    NotNeeded,
    /// `verified`, one of the newest N, passes; `failed` are newer ones of
    /// the newest N that do not.
    Verified {
        verified: String,
        failed: Vec<String>,
    },
    /// None of the newest N passes; `verified`, the newest that does, was
    /// planned for deletion and is kept instead.
    Rescued {
        verified: String,
        failed: Vec<String>,
    },
    /// No regular backup passes; none is deleted.
    NoneVerified { failed: Vec<String> },
}

impl Safety {
    /// Whether a deletion was refused for safety (`backup_retention.safety_check`).
    pub fn refused(&self) -> bool {
        matches!(self, Self::Rescued { .. } | Self::NoneVerified { .. })
    }

    /// The backups that failed verification, newest first.
    pub fn failed(&self) -> &[String] {
        match self {
            Self::NotNeeded => &[],
            Self::Verified { failed, .. }
            | Self::Rescued { failed, .. }
            | Self::NoneVerified { failed } => failed,
        }
    }
}

impl OwnerPlan {
    /// The backups [`OwnerPlan::secure`] asks about, in the order it asks,
    /// until one passes.
    pub fn verification_order(&self) -> impl Iterator<Item = &str> {
        let asks = !self.delete.is_empty();
        self.keep
            .iter()
            .filter(move |k| asks && k.reason == KeepReason::NewestN)
            .map(|k| k.name.as_str())
            .chain(self.delete.iter().map(String::as_str))
    }

    /// Makes sure the owner's newest backup that passes verification is
    /// kept. `passes` is asked about the newest N in order until one passes;
    /// if none does, about the ones planned for deletion, the first that
    /// passes being kept instead; if no backup passes at all, nothing is
    /// deleted. Nothing is verified when nothing would be deleted.
    pub fn secure(&mut self, mut passes: impl FnMut(&str) -> bool) -> Safety {
        if self.delete.is_empty() {
            return Safety::NotNeeded;
        }
        let mut failed = Vec::new();
        let newest: Vec<String> = self
            .keep
            .iter()
            .filter(|k| k.reason == KeepReason::NewestN)
            .map(|k| k.name.clone())
            .collect();
        for name in newest {
            if passes(&name) {
                return Safety::Verified {
                    verified: name,
                    failed,
                };
            }
            failed.push(name);
        }
        for i in 0..self.delete.len() {
            if passes(&self.delete[i]) {
                let verified = self.delete.remove(i);
                self.keep.push(Kept {
                    name: verified.clone(),
                    reason: KeepReason::NewestVerified,
                });
                return Safety::Rescued { verified, failed };
            }
            failed.push(self.delete[i].clone());
        }
        for name in self.delete.drain(..) {
            self.keep.push(Kept {
                name,
                reason: KeepReason::NoVerifiedBackup,
            });
        }
        Safety::NoneVerified { failed }
    }
}

/// Whose backups a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One owner (a user, or 0 for the system, whose backups all stay).
    Owner(i64),
    /// Every owner, each on its own.
    AllOwners,
}

/// Whose backups a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// The caller's own.
    Caller,
    /// One owner's: a user, or 0 for the system.
    Owner(i64),
    /// Every owner's, each on its own.
    All,
}

/// A retention request, its values checked: how many to keep, of whose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub keep_count: KeepCount,
    pub owners: Owners,
}

/// A policy the caller may apply: a `keep_count` and a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub keep_count: KeepCount,
    pub scope: Scope,
}

impl Policy {
    /// `request` as `caller` may apply it: a non-admin naming another owner
    /// or every owner is PERMISSION_DENIED.
    pub fn authorized(caller: Caller, request: PolicyRequest) -> Result<Self> {
        let scope = match request.owners {
            Owners::All => {
                caller.require_admin()?;
                Scope::AllOwners
            }
            Owners::Caller => Scope::Owner(caller.user_id),
            Owners::Owner(owner) if caller.can_access(owner) => Scope::Owner(owner),
            Owners::Owner(_) => {
                return Err(Error::PermissionDenied(
                    "only an admin may apply retention to another user's backups".into(),
                ));
            }
        };
        Ok(Self {
            keep_count: request.keep_count,
            scope,
        })
    }
}

/// A preview of a policy over its scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: usize,
    pub protected: usize,
    pub keep: Vec<Kept>,
    pub delete: Vec<String>,
}

impl Summary {
    fn add(&mut self, plan: OwnerPlan) {
        self.total += plan.total;
        self.protected += plan.protected;
        self.keep.extend(plan.keep);
        self.delete.extend(plan.delete);
    }
}

/// One owner's plan, secured, with the file behind each of the owner's
/// backup names.
struct Secured {
    plan: OwnerPlan,
    safety: Safety,
    files: HashMap<String, String>,
}

/// A backup a run deletes: its file, its name and owner, and the details
/// its audit event records.
struct Doomed {
    filename: String,
    name: String,
    owner: i64,
    details: Value,
}

impl Doomed {
    fn of(entry: Entry, details: Value) -> Self {
        Self {
            filename: entry.filename,
            name: entry.name,
            owner: entry.owner_user_id,
            details,
        }
    }
}

/// Who started a run, for the audit record.
#[derive(Clone, Copy, Debug)]
struct Actor {
    user_id: i64,
    trigger: &'static str,
}

/// The retention service's domain side.
pub struct Retention {
    audit: Recorder,
    backups: Arc<Backups>,
}

impl Retention {
    pub fn new(audit: Recorder, backups: Arc<Backups>) -> Self {
        Self { audit, backups }
    }

    /// GetRetentionSummary: exactly what [`Retention::apply`] with the same
    /// arguments would delete now, and why every other backup stays.
    pub async fn summary(&self, caller: Caller, request: PolicyRequest) -> Result<Summary> {
        let policy = Policy::authorized(caller, request)?;
        let _dir = self.backups.lock_dir().await?;
        let mut summary = Summary::default();
        for secured in self.secured_plans(policy, caller.user_id).await? {
            summary.add(secured.plan);
        }
        Ok(summary)
    }

    /// ApplyRetentionPolicy: deletes the selected owners' regular backups
    /// beyond their newest `keep_count`. Returns the deleted file names.
    /// `request` is converted (checked) inside, so a bad one is audited like
    /// any refusal.
    pub async fn apply(
        &self,
        caller: Caller,
        request: impl TryInto<PolicyRequest, Error = Error>,
    ) -> Result<Vec<String>> {
        let actor = Actor {
            user_id: caller.user_id,
            trigger: "request",
        };
        let result = async {
            let policy = Policy::authorized(caller, request.try_into()?)?;
            let _dir = self.lock_after_verifying(policy, actor).await?;
            self.apply_locked(actor, policy).await
        }
        .await;
        self.audit_error(actor.user_id, "apply", result).await
    }

    /// The scheduler's step after an automatic backup: applies the owner's
    /// `keep_count` to the owner's backups, audited like
    /// [`Retention::apply`]. Returns the deleted file names.
    pub async fn apply_for_owner(
        &self,
        owner_user_id: i64,
        keep_count: KeepCount,
    ) -> Result<Vec<String>> {
        let actor = Actor {
            user_id: owner_user_id,
            trigger: "scheduler",
        };
        let result = async {
            let policy = Policy {
                keep_count,
                scope: Scope::Owner(owner_user_id),
            };
            let _dir = self.lock_after_verifying(policy, actor).await?;
            self.apply_locked(actor, policy).await
        }
        .await;
        self.audit_error(actor.user_id, "apply", result).await
    }

    /// Verifies the policy's backups first (reading files needs no lock),
    /// then takes the directory lock: the locked pass finds every result
    /// cached, so concurrent backups do not queue behind integrity checks.
    async fn lock_after_verifying(&self, policy: Policy, actor: Actor) -> Result<DirGuard<'_>> {
        self.secured_plans(policy, actor.user_id).await?;
        self.backups.lock_dir().await
    }

    /// Plans, secures and deletes. The caller holds the directory lock.
    async fn apply_locked(&self, actor: Actor, policy: Policy) -> Result<Vec<String>> {
        let mut all_deleted = Vec::new();
        for secured in self.secured_plans(policy, actor.user_id).await? {
            let Secured {
                plan,
                safety,
                files,
            } = secured;
            let owner = plan.owner;
            if safety.refused() {
                let kept: Vec<&str> = plan
                    .keep
                    .iter()
                    .filter(|k| {
                        matches!(
                            k.reason,
                            KeepReason::NewestVerified | KeepReason::NoVerifiedBackup
                        )
                    })
                    .map(|k| k.name.as_str())
                    .collect();
                let why = match &safety {
                    Safety::NoneVerified { .. } => {
                        "no backup of this owner passes verification; none is deleted"
                    }
                    _ => "none of the newest keep_count backups passes verification",
                };
                self.audit
                    .record_or_log(
                        NewEvent::new("backup_retention.safety_check", actor.user_id)
                            .subject(owner)
                            .details(json!({
                                "owner": owner,
                                "keep_count": policy.keep_count.get(),
                                "reason": why,
                                "failed_verification": safety.failed(),
                                "kept": kept,
                            })),
                    )
                    .await;
            }
            let doomed = plan.delete.iter().filter_map(|name| {
                let details = json!({
                    "owner": owner,
                    "keep_count": policy.keep_count.get(),
                    "reason": "older than the newest keep_count",
                    "trigger": actor.trigger,
                });
                Some(Doomed {
                    filename: files.get(name)?.clone(),
                    name: name.clone(),
                    owner,
                    details,
                })
            });
            let (deleted, failed) = self.delete_each(actor.user_id, doomed.collect()).await;
            // Every owner named in the request gets a record; with every
            // owner selected, those where something happened.
            let named = matches!(policy.scope, Scope::Owner(_));
            if named || !plan.delete.is_empty() || safety.refused() {
                self.audit
                    .record_or_log(
                        NewEvent::new("backup_retention.applied", actor.user_id)
                            .subject(owner)
                            .details(json!({
                                "owner": owner,
                                "keep_count": policy.keep_count.get(),
                                "deleted": deleted,
                                "failed": failed,
                                "trigger": actor.trigger,
                            })),
                    )
                    .await;
            }
            all_deleted.extend(deleted);
        }
        Ok(all_deleted)
    }

    /// Every selected owner's plan, secured. Under the directory lock the
    /// catalog and the files stay as planned; without it, a pass only fills
    /// the verification cache. A backup found damaged while securing is
    /// marked so, and its owner planned again without it, so a damaged
    /// backup never takes the place of an intact one.
    async fn secured_plans(&self, policy: Policy, actor: i64) -> Result<Vec<Secured>> {
        let owner = match policy.scope {
            Scope::Owner(owner) => Some(owner),
            Scope::AllOwners => None,
        };
        let mut by_owner = self.backups.entries_by_owner(owner).await?;
        if let Some(owner) = owner {
            by_owner.entry(owner).or_default();
        }
        let keep_count = policy.keep_count.get() as usize;
        let mut secured = Vec::with_capacity(by_owner.len());
        for (owner, mut rows) in by_owner {
            let files: HashMap<String, String> = rows
                .iter()
                .map(|e| (e.name.clone(), e.filename.clone()))
                .collect();
            loop {
                let mut plan = plan(owner, &rows, keep_count);
                // Verified ahead, in the order `secure` asks, up to the
                // first intact one: what `secure` then finds.
                let mut health = HashMap::new();
                let mut found_damaged = Vec::new();
                for name in plan.verification_order() {
                    // Every planned name is one of the owner's rows.
                    let Some(filename) = files.get(name) else {
                        continue;
                    };
                    let found = self.backups.health(filename, actor).await;
                    health.insert(name.to_owned(), found);
                    match found {
                        Health::Intact => break,
                        Health::Damaged => found_damaged.push(filename.clone()),
                        Health::Unverifiable => {}
                    }
                }
                let safety = plan.secure(|name| health.get(name) == Some(&Health::Intact));
                if found_damaged.is_empty() {
                    secured.push(Secured {
                        plan,
                        safety,
                        files,
                    });
                    break;
                }
                for row in rows.iter_mut() {
                    row.damaged |= found_damaged.contains(&row.filename);
                }
            }
        }
        Ok(secured)
    }

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
                let reason = match content {
                    Ok(Content::Empty) => "empty",
                    Ok(Content::NotSqlite) if !row.is_protected => "not a SQLite database",
                    Ok(Content::NotSqlite) => {
                        spared.push(row.name);
                        continue;
                    }
                    Ok(Content::Sqlite) => continue,
                    Err(e) => {
                        tracing::warn!(file = %row.filename, error = %e, "cannot inspect a backup; leaving it");
                        continue;
                    }
                };
                let details = json!({ "owner": row.owner_user_id, "reason": reason, "trigger": "cleanup_empty" });
                doomed.push(Doomed::of(row, details));
            }
            let (deleted, failed) = self.delete_each(caller.user_id, doomed).await;
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

    /// Deletes each file through [`Backups::remove_locked`], recording a
    /// `backup_retention.delete` event with `details` in the catalog change's
    /// transaction. A file that cannot be deleted is audited
    /// `backup_retention.delete_error` and the rest go on. The caller holds
    /// the directory lock. Returns (deleted, failed).
    async fn delete_each(&self, actor: i64, doomed: Vec<Doomed>) -> (Vec<String>, Vec<String>) {
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for Doomed {
            filename,
            name,
            owner,
            details,
        } in doomed
        {
            let event = NewEvent::new("backup_retention.delete", actor)
                .subject(owner)
                .resource("backup", &name)
                .details(details.clone());
            let outcome = self.backups.remove_locked(&filename, event).await;
            let Err(e) = outcome else {
                metrics::counter!(crate::telemetry::RETENTION_DELETED_TOTAL).increment(1);
                deleted.push(name);
                continue;
            };
            // The row and its event may have committed before the failure
            // (unlinking the renamed file): then the backup is gone, and the
            // next start finishes removing the file.
            if let Ok(false) = self.backups.is_catalogued(&filename).await {
                tracing::warn!(file = %filename, error = %e, "backup deleted; its file is removed at the next start");
                deleted.push(name);
                continue;
            }
            tracing::warn!(file = %filename, error = %e, "could not delete a backup; going on with the rest");
            self.audit
                .record_or_log(
                    NewEvent::new("backup_retention.delete_error", actor)
                        .subject(owner)
                        .resource("backup", &name)
                        .details(details)
                        .failed(&e),
                )
                .await;
            failed.push(name);
        }
        (deleted, failed)
    }

    /// Audits a failed run as `backup_retention.error` and passes the result on.
    async fn audit_error<T>(&self, actor: i64, operation: &str, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.audit
                .record_or_log(
                    NewEvent::new("backup_retention.error", actor)
                        .resource("retention", operation)
                        .details(json!({ "operation": operation }))
                        .failed(e),
                )
                .await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone};

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
    }

    fn row(name: &str, owner: i64, kind: BackupKind, second: i64) -> Entry {
        Entry {
            filename: format!("file-of-{name}"),
            name: name.into(),
            damaged: false,
            owner_user_id: owner,
            kind: kind.as_str().into(),
            is_protected: kind.is_protected(),
            created_at: at(second),
        }
    }

    fn names(kept: &[Kept], reason: KeepReason) -> Vec<&str> {
        kept.iter()
            .filter(|k| k.reason == reason)
            .map(|k| k.name.as_str())
            .collect()
    }

    #[test]
    fn keeps_the_newest_n_regular_backups_and_deletes_the_rest_newest_first() {
        let rows = vec![
            row("a", 7, BackupKind::Auto, 1),
            row("b", 7, BackupKind::Manual, 2),
            row("c", 7, BackupKind::Auto, 3),
            row("d", 7, BackupKind::Auto, 4),
        ];
        let p = plan(7, &rows, 2);
        assert_eq!(names(&p.keep, KeepReason::NewestN), ["d", "c"]);
        assert_eq!(p.delete, ["b", "a"]);
        assert_eq!((p.total, p.protected), (4, 0));
    }

    #[test]
    fn order_is_by_created_at_then_filename_never_input_order() {
        // Same creation time: the file name breaks the tie, descending.
        let rows = vec![
            row("x-2", 1, BackupKind::Manual, 5),
            row("x-1", 1, BackupKind::Manual, 5),
            row("x-3", 1, BackupKind::Manual, 5),
            row("z-old", 1, BackupKind::Manual, 0),
        ];
        let mut reversed = rows.clone();
        reversed.reverse();
        for rows in [rows, reversed] {
            let p = plan(1, &rows, 2);
            assert_eq!(names(&p.keep, KeepReason::NewestN), ["x-3", "x-2"]);
            assert_eq!(p.delete, ["x-1", "z-old"]);
        }
    }

    #[test]
    fn protected_backups_are_never_deleted_whatever_keep_count() {
        let mut rows = vec![
            row("pre_restore_backup_1.db", 3, BackupKind::PreRestore, 0),
            row("pre_migration_1.db", 3, BackupKind::PreMigration, 1),
        ];
        let mut odd = row("odd", 3, BackupKind::Manual, 2);
        odd.kind = "from-the-future".into();
        rows.push(odd);
        let mut flagged = row("flagged", 3, BackupKind::Manual, 3);
        flagged.is_protected = true;
        rows.push(flagged);
        rows.extend((10..15).map(|i| row(&format!("r{i}"), 3, BackupKind::Auto, i)));
        for keep in 1..=30 {
            let p = plan(3, &rows, keep);
            assert_eq!(p.protected, 4);
            for name in [
                "pre_restore_backup_1.db",
                "pre_migration_1.db",
                "odd",
                "flagged",
            ] {
                assert!(!p.delete.iter().any(|d| d == name), "{name} at keep {keep}");
                assert!(names(&p.keep, KeepReason::Protected).contains(&name));
            }
            assert_eq!(p.delete.len(), 5usize.saturating_sub(keep));
        }
    }

    #[test]
    fn a_plan_never_touches_another_owner_or_the_system() {
        let rows = vec![
            row("mine-1", 2, BackupKind::Auto, 1),
            row("mine-2", 2, BackupKind::Auto, 2),
            row("theirs-1", 3, BackupKind::Auto, 0),
            row("theirs-2", 3, BackupKind::Auto, 3),
            row("system", 0, BackupKind::Manual, 0),
        ];
        let p = plan(2, &rows, 1);
        assert_eq!(p.delete, ["mine-1"]);
        assert_eq!(p.total, 2);
        let system = plan(0, &rows, 1);
        assert!(system.delete.is_empty());
        assert_eq!(names(&system.keep, KeepReason::System), ["system"]);
    }

    #[test]
    fn damaged_backups_count_towards_nothing_and_are_never_deleted() {
        let mut rows: Vec<Entry> = (0..4)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        rows[3].damaged = true; // the newest
        rows[0].damaged = true; // the oldest
        let mut p = plan(1, &rows, 1);
        assert_eq!(names(&p.keep, KeepReason::NewestN), ["b2"]);
        assert_eq!(names(&p.keep, KeepReason::Damaged), ["b3", "b0"]);
        assert_eq!(p.delete, ["b1"]);
        let order: Vec<&str> = p.verification_order().collect();
        assert_eq!(order, ["b2", "b1"]);
        assert!(!p.secure(|name| name == "b2").refused());
        assert_eq!(p.delete, ["b1"]);
    }

    #[test]
    fn nothing_to_verify_when_nothing_goes() {
        let rows = vec![row("a", 1, BackupKind::Auto, 1)];
        assert_eq!(plan(1, &rows, 3).verification_order().count(), 0);
    }

    #[test]
    fn nothing_to_delete_needs_no_verification() {
        let rows = vec![row("a", 1, BackupKind::Auto, 1)];
        let mut p = plan(1, &rows, 3);
        let safety = p.secure(|_| panic!("verified without need"));
        assert_eq!(safety, Safety::NotNeeded);
    }

    #[test]
    fn the_newest_passing_kept_backup_is_enough() {
        let rows: Vec<Entry> = (0..5)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        let mut p = plan(1, &rows, 2);
        let mut asked = Vec::new();
        let safety = p.secure(|name| {
            asked.push(name.to_owned());
            name != "b4"
        });
        assert_eq!(asked, ["b4", "b3"]);
        assert_eq!(
            safety,
            Safety::Verified {
                verified: "b3".into(),
                failed: vec!["b4".into()]
            }
        );
        assert!(!safety.refused());
        assert_eq!(p.delete, ["b2", "b1", "b0"]);
    }

    #[test]
    fn when_no_kept_backup_passes_the_newest_passing_one_is_kept_too() {
        let rows: Vec<Entry> = (0..5)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        let mut p = plan(1, &rows, 2);
        let safety = p.secure(|name| name == "b2" || name == "b0");
        assert_eq!(
            safety,
            Safety::Rescued {
                verified: "b2".into(),
                failed: vec!["b4".into(), "b3".into()]
            }
        );
        assert!(safety.refused());
        assert_eq!(p.delete, ["b1", "b0"]);
        assert_eq!(names(&p.keep, KeepReason::NewestVerified), ["b2"]);
        assert_eq!(names(&p.keep, KeepReason::NewestN), ["b4", "b3"]);
    }

    #[test]
    fn when_nothing_passes_nothing_is_deleted() {
        let rows: Vec<Entry> = (0..4)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        let mut p = plan(1, &rows, 1);
        let safety = p.secure(|_| false);
        assert!(matches!(safety, Safety::NoneVerified { ref failed } if failed.len() == 4));
        assert!(p.delete.is_empty());
        assert_eq!(
            names(&p.keep, KeepReason::NoVerifiedBackup),
            ["b2", "b1", "b0"]
        );
    }

    #[test]
    fn a_policy_needs_an_admin_for_other_owners() {
        let user = Caller {
            user_id: 5,
            is_admin: false,
        };
        let admin = Caller {
            user_id: 1,
            is_admin: true,
        };
        let keep = |n| KeepCount::new(n, "keep_count").unwrap();
        let request = |n, owners| PolicyRequest {
            keep_count: keep(n),
            owners,
        };
        for owners in [Owners::Owner(6), Owners::Owner(0), Owners::All] {
            assert!(matches!(
                Policy::authorized(user, request(3, owners)),
                Err(Error::PermissionDenied(_))
            ));
        }
        assert_eq!(
            Policy::authorized(user, request(3, Owners::Caller)).unwrap(),
            Policy {
                keep_count: keep(3),
                scope: Scope::Owner(5)
            }
        );
        let scope = |caller, owners| {
            Policy::authorized(caller, request(1, owners))
                .unwrap()
                .scope
        };
        assert_eq!(scope(user, Owners::Owner(5)), Scope::Owner(5));
        assert_eq!(scope(admin, Owners::Owner(6)), Scope::Owner(6));
        assert_eq!(scope(admin, Owners::Owner(0)), Scope::Owner(0));
        assert_eq!(scope(admin, Owners::All), Scope::AllOwners);
    }
}
