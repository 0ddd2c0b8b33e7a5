//! Retention: per-owner policies that delete old regular backups, previews
//! of them ([`plan`] decides, [`policy`] checks who asks), and maintenance
//! ([`maintenance`]).
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

use serde_json::{Value, json};

use crate::audit::{NewEvent, Recorder};
use crate::auth::Caller;
use crate::backup::verify::Health;
use crate::backup::{Backups, DirGuard};
use crate::error::{Error, Result};
use crate::model::backup::Entry;
use crate::model::settings::KeepCount;

mod maintenance;
pub mod plan;
pub mod policy;

pub use plan::{KeepReason, Kept, OwnerPlan, Safety, plan};
pub use policy::{Owners, Policy, PolicyRequest, Scope};

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
        self.prune_after(&result);
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
        self.prune_after(&result);
        self.audit_error(actor.user_id, "apply", result).await
    }

    /// Prunes the storage in the background once a run deleted backups.
    fn prune_after(&self, result: &Result<Vec<String>>) {
        if result.as_ref().is_ok_and(|deleted| !deleted.is_empty()) {
            self.backups.prune_soon();
        }
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
