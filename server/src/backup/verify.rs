//! Verification: a backup's bytes checked against the size and SHA-256 the
//! catalog recorded when it was written, then `PRAGMA integrity_check`.
//!
//! Every read that matters goes through here (restore, on-demand and
//! scheduled verification, retention's choice of a newest intact backup;
//! downloads check as they stream). What a verification finds is recorded
//! in the catalog: `last_verified_at`, and the damage, which makes the
//! backup DATA_LOSS for restores and downloads and keeps it out of every
//! retention count until a later verification finds it whole again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use super::Backups;
use super::storage::{ChangeStamp, ContentFacts, VerifiedCopy};
use crate::audit::NewEvent;
use crate::error::{Error, Result, quote};
use crate::model::backup::Backup;
use crate::store::backups as catalog;

/// Why a backup is verified; audited with the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// VerifyBackup.
    Request,
    /// The scheduled scrub.
    Scrub,
    /// Before a restore.
    Restore,
    /// While a download streams.
    Download,
    /// Retention choosing the newest intact backup.
    Retention,
    /// Moving a full copy into the backup storage.
    Import,
    /// A sweep after damage found in another backup sharing its bytes.
    Shared,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Scrub => "scrub",
            Self::Restore => "restore",
            Self::Download => "download",
            Self::Retention => "retention",
            Self::Import => "import",
            Self::Shared => "shared",
        }
    }

    /// Whether an intact outcome is audited too: verification was the
    /// point of the call. Otherwise only damage is.
    fn audits_intact(self) -> bool {
        matches!(self, Self::Request | Self::Scrub)
    }
}

/// Stored contents the scrub found intact, and when: see
/// [`Backups::scrub_one`].
#[derive(Default)]
pub struct Vouched(Mutex<HashMap<String, (ContentFacts, DateTime<Utc>)>>);

impl Vouched {
    /// Whether content `key`, recorded as `backup`'s facts, was verified
    /// intact less than `every` ago.
    fn vouches(&self, key: &str, backup: &Backup, every: chrono::Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .is_some_and(|(facts, at)| *facts == recorded_facts(backup) && Utc::now() - *at < every)
    }

    /// Content `key` (recorded as `backup`'s facts) was just verified
    /// intact; entries older than `every` go.
    fn remember(&self, key: String, backup: &Backup, every: chrono::Duration) {
        let now = Utc::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, at)| now - *at < every);
        map.insert(key, (recorded_facts(backup), now));
    }
}

/// What the catalog recorded of a backup's bytes.
pub fn recorded_facts(backup: &Backup) -> ContentFacts {
    ContentFacts {
        size_bytes: backup.size_bytes,
        sha256: Some(backup.sha256.clone()).filter(|d| !d.is_empty()),
        blake3: backup.blake3.clone(),
    }
}

/// DATA_LOSS for a backup already marked damaged.
pub fn refuse_damaged(backup: &Backup) -> Result<()> {
    match &backup.damage {
        None => Ok(()),
        Some(damage) => Err(damaged(backup, damage)),
    }
}

fn damaged(backup: &Backup, damage: &str) -> Error {
    Error::DataLoss(format!(
        "backup {} is damaged ({damage}); it is kept for inspection, and VerifyBackup \
         clears the mark once its bytes match again",
        quote(&backup.name)
    ))
}

/// What retention may assume of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Intact,
    /// Marked damaged, now or before.
    Damaged,
    /// It could not be verified (a locked or unreadable file): not to be
    /// counted on, but not known damaged either.
    Unverifiable,
}

/// Verification outcomes since the process started.
#[derive(Debug, Default)]
pub struct Counts {
    intact: AtomicU64,
    damaged: AtomicU64,
}

/// What GetSchedulerStats reports of verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Backups marked damaged now, of every owner.
    pub damaged_now: u64,
    /// Verifications this process found intact since it started.
    pub intact: u64,
    /// Verifications this process found damaged since it started.
    pub damaged: u64,
}

/// Backups known to be intact, by file name, with the stamp their bytes
/// had when verified: unchanged bytes are not read again.
#[derive(Default)]
pub struct VerifiedFiles(Mutex<HashMap<String, ChangeStamp>>);

impl VerifiedFiles {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, ChangeStamp>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, filename: &str, stamp: ChangeStamp) {
        self.map().insert(filename.to_owned(), stamp);
    }

    pub fn forget(&self, filename: &str) {
        self.map().remove(filename);
    }

    fn still_intact(&self, filename: &str, now: &ChangeStamp) -> bool {
        self.map().get(filename) == Some(now)
    }
}

impl Backups {
    /// Verifies `backup` and records the outcome. Intact: the backup as now
    /// recorded, and its verified content. Damaged (or marked so already):
    /// DATA_LOSS saying what is wrong. Any other error (a locked or
    /// unreadable file) says nothing about the bytes and records nothing.
    pub async fn verify(
        &self,
        backup: &Backup,
        trigger: Trigger,
        actor: i64,
    ) -> Result<(Backup, VerifiedCopy)> {
        if trigger != Trigger::Request && trigger != Trigger::Scrub {
            refuse_damaged(backup)?;
        }
        let checked = self
            .storage
            .verify(&backup.filename, &recorded_facts(backup))
            .await;
        match checked {
            Ok(verified) => {
                self.verified.remember(&backup.filename, verified.stamp);
                let backup = self.record(backup, None, trigger, actor).await?;
                Ok((backup, verified.copy))
            }
            // Being deleted: nothing is lost.
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!(
                "no backup named {}",
                quote(&backup.name)
            ))),
            Err(e) => Err(self.found_damaged(backup, e, trigger, actor).await),
        }
    }

    /// VerifyBackup: verifies a backup the caller may see, audited either
    /// way, within the bound on concurrent copies.
    pub async fn verify_named(
        &self,
        caller: crate::auth::Caller,
        named: super::Named<'_>,
    ) -> Result<Backup> {
        let result = async {
            let backup = self.get(caller, named).await?;
            let _permit = self.queued_permit().await?;
            self.verify(&backup, Trigger::Request, caller.user_id)
                .await
                .map(|(backup, _)| backup)
        }
        .await;
        if let Err(e) = &result
            && !matches!(e, Error::DataLoss(_))
        {
            self.audit_failure("backup_files.verify", caller, named.name, e)
                .await;
        }
        result
    }

    /// What retention may assume of the backup in `filename`: an unchanged
    /// file found intact before is not read again; damage found is recorded.
    pub async fn health(&self, filename: &str, actor: i64) -> Health {
        if let Ok(now) = self.storage.stamp(filename).await
            && self.verified.still_intact(filename, &now)
        {
            return Health::Intact;
        }
        let backup = match catalog::by_filename(self.db.reads(), filename).await {
            Ok(Some(backup)) => backup,
            Ok(None) => return Health::Unverifiable,
            Err(e) => {
                tracing::warn!(file = %filename, error = %e, "cannot read a backup's catalog row");
                return Health::Unverifiable;
            }
        };
        match self.verify(&backup, Trigger::Retention, actor).await {
            Ok(_) => Health::Intact,
            Err(Error::DataLoss(_)) => Health::Damaged,
            Err(e) => {
                tracing::warn!(file = %filename, error = %e, "backup cannot be verified");
                Health::Unverifiable
            }
        }
    }

    /// Verifies one backup for the scrub, within the bound on concurrent
    /// copies. Damage is an outcome, recorded; an error means the backup
    /// could not be verified.
    ///
    /// Backups whose stored bytes are the same (a repository stores
    /// identical snapshots once) are read once per `every`: one verified
    /// intact within it vouches for the others recorded with the same
    /// size and SHA-256, which are then recorded as verified. Damage to
    /// shared bytes is marked on every backup holding them by the sweep.
    pub async fn scrub_one(&self, backup: &Backup, every: chrono::Duration) -> Result<()> {
        let content = self.storage.content_key(&backup.filename).await?;
        if let Some(key) = &content
            && backup.damage.is_none()
            && self.vouched.vouches(key, backup, every)
        {
            self.record(backup, None, Trigger::Scrub, super::SYSTEM_OWNER)
                .await?;
            return Ok(());
        }
        let _permit = self.queued_permit().await?;
        match self
            .verify(backup, Trigger::Scrub, super::SYSTEM_OWNER)
            .await
        {
            Ok(_) => {
                if let Some(key) = content {
                    self.vouched.remember(key, backup, every);
                }
                Ok(())
            }
            Err(Error::DataLoss(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Records damage when `error` is DATA_LOSS, and returns the error to
    /// give the caller (naming the backup); other errors pass unchanged.
    pub(super) async fn found_damaged(
        &self,
        backup: &Backup,
        error: Error,
        trigger: Trigger,
        actor: i64,
    ) -> Error {
        let Error::DataLoss(damage) = error else {
            return error;
        };
        self.verified.forget(&backup.filename);
        match self.record(backup, Some(&damage), trigger, actor).await {
            // Deleted while it was verified: nothing was lost.
            Err(gone @ Error::NotFound(_)) => return gone,
            Err(e) => {
                tracing::error!(error = %e, backup = %backup.name, "could not record the damage");
            }
            Ok(_) => {}
        }
        tracing::error!(backup = %backup.name, file = %backup.filename, %damage, trigger = trigger.as_str(), "backup is damaged");
        if trigger != Trigger::Shared {
            self.sweep_soon();
        }
        damaged(backup, &damage)
    }

    /// Records a verification's outcome in the catalog with its audit event
    /// (for damage, and for intact outcomes of requests and the scrub), and
    /// counts it. Returns the backup as now recorded, or NOT_FOUND (and
    /// records nothing) when it was deleted meanwhile.
    async fn record(
        &self,
        backup: &Backup,
        damage: Option<&str>,
        trigger: Trigger,
        actor: i64,
    ) -> Result<Backup> {
        let at = Utc::now().trunc_subsecs(6);
        let mut change = self.audit.begin().await?;
        if !catalog::record_verification(&*change, &backup.filename, damage, at).await? {
            return Err(Error::NotFound(format!(
                "no backup named {}",
                quote(&backup.name)
            )));
        }
        let audited = (damage.is_some() || trigger.audits_intact()).then(|| {
            let event = NewEvent::new("backup_files.verify", actor)
                .subject(backup.owner_user_id)
                .resource("backup", &backup.name)
                .details(json!({
                    "trigger": trigger.as_str(),
                    "owner": backup.owner_user_id,
                    "size": backup.size_bytes,
                    "sha256": backup.sha256,
                    "blake3": backup.blake3,
                }));
            match damage {
                None => event,
                Some(damage) => event.failed(&damaged(backup, damage)),
            }
        });
        if let Some(event) = audited {
            change.record(event);
        }
        change.commit().await?;
        let (counter, outcome) = match damage {
            None => (&self.verifications.intact, "intact"),
            Some(_) => (&self.verifications.damaged, "damaged"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::VERIFICATIONS_TOTAL, "outcome" => outcome).increment(1);
        if damage.is_some() != backup.damage.is_some() {
            self.refresh_damaged_gauge().await;
        }
        let mut now = backup.clone();
        now.damage = damage.map(str::to_owned);
        now.last_verified_at = Some(at);
        Ok(now)
    }

    /// Damaged backups now, and this process's verification outcomes.
    pub async fn verification_stats(&self) -> Result<Stats> {
        Ok(Stats {
            damaged_now: catalog::count_damaged(self.db.reads()).await?,
            intact: self.verifications.intact.load(Ordering::Relaxed),
            damaged: self.verifications.damaged.load(Ordering::Relaxed),
        })
    }

    /// Sets the `backup_damaged` gauge to the catalog's count.
    pub async fn refresh_damaged_gauge(&self) {
        match catalog::count_damaged(self.db.reads()).await {
            Ok(n) => metrics::gauge!(crate::telemetry::DAMAGED).set(n as f64),
            Err(e) => tracing::warn!(error = %e, "cannot count damaged backups"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backup::BackupKind;

    fn backup(sha256: &str) -> Backup {
        Backup {
            filename: "a.db".into(),
            name: "a.db".into(),
            owner_user_id: 1,
            kind: BackupKind::Manual,
            size_bytes: 4096,
            sha256: sha256.into(),
            is_protected: false,
            created_at: Utc::now(),
            damage: None,
            last_verified_at: None,
            blake3: None,
            stored_bytes: 0,
        }
    }

    #[test]
    fn verified_content_vouches_only_for_the_same_facts_within_the_interval() {
        let vouched = Vouched::default();
        let hour = chrono::Duration::hours(1);
        let (a, other) = (backup(&"a".repeat(64)), backup(&"b".repeat(64)));
        assert!(!vouched.vouches("k", &a, hour));
        vouched.remember("k".into(), &a, hour);
        assert!(vouched.vouches("k", &a, hour));
        assert!(!vouched.vouches("k", &other, hour), "other recorded facts");
        assert!(!vouched.vouches("j", &a, hour), "other content");
        assert!(
            !vouched.vouches("k", &a, chrono::Duration::zero()),
            "too old"
        );
    }
}
