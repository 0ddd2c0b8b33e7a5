//! `backup.v1.BackupScheduler`.

use backup_proto as pb;
use backup_proto::backup_scheduler_server::BackupScheduler;
use chrono::Utc;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::timestamp;
use crate::paging::page_size;
use crate::schedule::Stats;
use crate::schedule::settings::{self, RawUpdate, Settings};

const LISTING: &str = "backup_settings";

pub struct BackupSchedulerApi {
    app: Shared,
}

impl BackupSchedulerApi {
    pub fn new(app: Shared) -> Self {
        Self { app }
    }

    async fn stats(&self) -> Result<pb::SchedulerStats, Status> {
        let mut stats = pb::SchedulerStats::from(self.app.scheduler.stats().await?);
        let verified = self.app.backups.verification_stats().await?;
        stats.damaged_backups = i64::try_from(verified.damaged_now).unwrap_or(i64::MAX);
        stats.verifications_passed = i64::try_from(verified.intact).unwrap_or(i64::MAX);
        stats.verifications_failed = i64::try_from(verified.damaged).unwrap_or(i64::MAX);
        stats.verify_interval_seconds =
            i64::try_from(self.app.verify_interval.as_secs()).unwrap_or(i64::MAX);
        Ok(stats)
    }
}

fn frequency(name: &str) -> pb::Frequency {
    match name {
        "daily" => pb::Frequency::Daily,
        "weekly" => pb::Frequency::Weekly,
        "monthly" => pb::Frequency::Monthly,
        _ => pb::Frequency::Unspecified,
    }
}

impl From<Settings> for pb::BackupSettings {
    fn from(s: Settings) -> Self {
        Self {
            user_id: s.user_id,
            enabled: s.enabled,
            frequency: frequency(&s.frequency).into(),
            backup_time: s.backup_time,
            keep_count: s.keep_count,
            timezone: s.timezone,
            last_backup_at: s.last_backup_at.map(timestamp),
            next_backup_at: s.next_backup_at.map(timestamp),
            created_at: Some(timestamp(s.created_at)),
            updated_at: Some(timestamp(s.updated_at)),
        }
    }
}

fn count(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl From<Stats> for pb::SchedulerStats {
    fn from(s: Stats) -> Self {
        Self {
            is_running: s.is_running,
            check_interval_seconds: count(s.check_interval.as_secs()),
            enabled_backup_settings: count(s.enabled_settings),
            total_backup_settings: count(s.total_settings),
            holds_lease: s.holds_lease,
            lease_holder: s
                .lease
                .as_ref()
                .map(|l| l.holder.clone())
                .unwrap_or_default(),
            lease_expires_at: s.lease.map(|l| timestamp(l.expires_at)),
            next_due_at: s.next_due_at.map(timestamp),
            backups_completed: i64::try_from(s.completed).unwrap_or(i64::MAX),
            backups_failed: i64::try_from(s.failed).unwrap_or(i64::MAX),
            overdue_users: count(s.overdue_users),
            instance_id: s.instance_id,
            // Filled in from the backups' side by `stats`.
            damaged_backups: 0,
            verifications_passed: 0,
            verifications_failed: 0,
            verify_interval_seconds: 0,
        }
    }
}

#[tonic::async_trait]
impl BackupScheduler for BackupSchedulerApi {
    async fn get_backup_settings(
        &self,
        request: Request<pb::GetBackupSettingsRequest>,
    ) -> Result<Response<pb::GetBackupSettingsResponse>, Status> {
        let caller = self.app.caller(&request, "GetBackupSettings").await?;
        let user_id = caller.resolve_user(request.into_inner().user_id)?;
        let found = settings::fetch(&self.app.db, user_id).await?;
        Ok(Response::new(pb::GetBackupSettingsResponse {
            settings: Some(found.into()),
        }))
    }

    async fn update_backup_settings(
        &self,
        request: Request<pb::UpdateBackupSettingsRequest>,
    ) -> Result<Response<pb::UpdateBackupSettingsResponse>, Status> {
        let caller = self.app.caller(&request, "UpdateBackupSettings").await?;
        let req = request.into_inner();
        let user_id = caller.resolve_user(req.user_id)?;
        let update = RawUpdate {
            enabled: req.enabled,
            frequency: req.frequency,
            backup_time: req.backup_time,
            keep_count: req.keep_count,
            timezone: req.timezone,
        }
        .validate()?;
        let saved = self
            .app
            .scheduler
            .update_settings(caller.user_id, user_id, update)
            .await?;
        Ok(Response::new(pb::UpdateBackupSettingsResponse {
            settings: Some(saved.into()),
        }))
    }

    async fn list_backup_settings(
        &self,
        request: Request<pb::ListBackupSettingsRequest>,
    ) -> Result<Response<pb::ListBackupSettingsResponse>, Status> {
        let caller = self.app.caller(&request, "ListBackupSettings").await?;
        caller.require_admin()?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, 50, 1000)?;
        let after = match self.app.page_tokens.cursor(LISTING, &req.page_token)? {
            Some(cursor) => Some(
                cursor
                    .parse::<i64>()
                    .map_err(|_| crate::error::Error::invalid("page_token", "is malformed"))?,
            ),
            None => None,
        };
        let page = settings::page(&self.app.db, after, limit).await?;
        let next_page_token = match page.last() {
            Some(last) if page.len() as u64 == limit => self
                .app
                .page_tokens
                .issue(LISTING, &last.user_id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListBackupSettingsResponse {
            settings: page.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn list_overdue_settings(
        &self,
        request: Request<pb::ListOverdueSettingsRequest>,
    ) -> Result<Response<pb::ListOverdueSettingsResponse>, Status> {
        self.app
            .caller(&request, "ListOverdueSettings")
            .await?
            .require_admin()?;
        let overdue = settings::overdue(&self.app.db, Utc::now()).await?;
        Ok(Response::new(pb::ListOverdueSettingsResponse {
            settings: overdue.into_iter().map(Into::into).collect(),
        }))
    }

    async fn check_and_run_backups(
        &self,
        request: Request<pb::CheckAndRunBackupsRequest>,
    ) -> Result<Response<pb::CheckAndRunBackupsResponse>, Status> {
        self.app
            .caller(&request, "CheckAndRunBackups")
            .await?
            .require_admin()?;
        let (ran, failed) = self.app.scheduler.run_due(Utc::now()).await?;
        Ok(Response::new(pb::CheckAndRunBackupsResponse {
            backups_run: i32::try_from(ran).unwrap_or(i32::MAX),
            backups_failed: i32::try_from(failed).unwrap_or(i32::MAX),
        }))
    }

    async fn get_scheduler_stats(
        &self,
        request: Request<pb::GetSchedulerStatsRequest>,
    ) -> Result<Response<pb::GetSchedulerStatsResponse>, Status> {
        self.app
            .caller(&request, "GetSchedulerStats")
            .await?
            .require_admin()?;
        Ok(Response::new(pb::GetSchedulerStatsResponse {
            stats: Some(self.stats().await?),
        }))
    }

    async fn start_scheduler(
        &self,
        request: Request<pb::StartSchedulerRequest>,
    ) -> Result<Response<pb::StartSchedulerResponse>, Status> {
        let caller = self.app.caller(&request, "StartScheduler").await?;
        caller.require_admin()?;
        self.app.scheduler.start(caller.user_id).await?;
        Ok(Response::new(pb::StartSchedulerResponse {
            stats: Some(self.stats().await?),
        }))
    }

    async fn stop_scheduler(
        &self,
        request: Request<pb::StopSchedulerRequest>,
    ) -> Result<Response<pb::StopSchedulerResponse>, Status> {
        let caller = self.app.caller(&request, "StopScheduler").await?;
        caller.require_admin()?;
        self.app.scheduler.stop(caller.user_id).await?;
        Ok(Response::new(pb::StopSchedulerResponse {
            stats: Some(self.stats().await?),
        }))
    }
}
