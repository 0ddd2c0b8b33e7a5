//! `backup.v1.BackupScheduler`.

use std::str::FromStr;

use backup_proto as pb;
use backup_proto::backup_scheduler_server::BackupScheduler;
use chrono_tz::Tz;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::timestamp;
use crate::error::{Error, FieldViolation, Result, Violations, quote};
use crate::model::settings::{
    Frequency, KeepCount, Settings, SettingsUpdate, format_backup_time, parse_backup_time,
};
use crate::model::user::UserSelector;
use crate::paging::page_size;
use crate::schedule::Stats;

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

impl From<Frequency> for pb::Frequency {
    fn from(f: Frequency) -> Self {
        match f {
            Frequency::Daily => Self::Daily,
            Frequency::Weekly => Self::Weekly,
            Frequency::Monthly => Self::Monthly,
        }
    }
}

impl From<Settings> for pb::BackupSettings {
    fn from(s: Settings) -> Self {
        Self {
            user_id: s.user_id,
            enabled: s.enabled,
            frequency: pb::Frequency::from(s.frequency).into(),
            backup_time: format_backup_time(s.backup_time),
            keep_count: s.keep_count.into(),
            timezone: s.timezone.name().to_owned(),
            last_backup_at: s.last_backup_at.map(timestamp),
            next_backup_at: s.next_backup_at.map(timestamp),
            created_at: Some(timestamp(s.created_at)),
            updated_at: Some(timestamp(s.updated_at)),
        }
    }
}

impl TryFrom<pb::GetBackupSettingsRequest> for UserSelector {
    type Error = Error;

    fn try_from(req: pb::GetBackupSettingsRequest) -> Result<Self> {
        Ok(Self::from_request(req.user_id, "user_id")?)
    }
}

/// An UpdateBackupSettings request, checked: whose settings, and the
/// change.
#[derive(Debug, PartialEq, Eq)]
pub struct UpdateSettings {
    pub user: UserSelector,
    pub update: SettingsUpdate,
}

impl TryFrom<pb::UpdateBackupSettingsRequest> for UpdateSettings {
    type Error = Error;

    /// Checks every field, reporting each bad one.
    fn try_from(req: pb::UpdateBackupSettingsRequest) -> Result<Self> {
        let mut bad = Violations::default();
        let user = bad.check(UserSelector::from_request(req.user_id, "user_id"));
        let frequency = req.frequency.and_then(|n| bad.check(frequency(n)));
        let backup_time =
            req.backup_time.and_then(|t| {
                bad.check(parse_backup_time(&t).map_err(|why| {
                    FieldViolation::new("backup_time", format!("{} {why}", quote(&t)))
                }))
            });
        let keep_count = req
            .keep_count
            .and_then(|k| bad.check(KeepCount::new(i64::from(k), "keep_count")));
        let timezone = req.timezone.and_then(|name| bad.check(timezone(&name)));
        bad.into_result()?;
        Ok(Self {
            // Only absent when a violation was returned above.
            user: user.unwrap_or(UserSelector::Caller),
            update: SettingsUpdate {
                enabled: req.enabled,
                frequency,
                backup_time,
                keep_count,
                timezone,
            },
        })
    }
}

fn frequency(n: i32) -> Result<Frequency, FieldViolation> {
    match pb::Frequency::try_from(n) {
        Ok(pb::Frequency::Daily) => Ok(Frequency::Daily),
        Ok(pb::Frequency::Weekly) => Ok(Frequency::Weekly),
        Ok(pb::Frequency::Monthly) => Ok(Frequency::Monthly),
        Ok(pb::Frequency::Unspecified) | Err(_) => Err(FieldViolation::new(
            "frequency",
            format!(
                "{n} is not allowed; use FREQUENCY_DAILY, FREQUENCY_WEEKLY or FREQUENCY_MONTHLY"
            ),
        )),
    }
}

fn timezone(name: &str) -> Result<Tz, FieldViolation> {
    Tz::from_str(name).map_err(|_| {
        FieldViolation::new(
            "timezone",
            format!(
                "{} is not an IANA time zone name such as \"Europe/London\" or \"UTC\"",
                quote(name)
            ),
        )
    })
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
        let user = UserSelector::try_from(request.into_inner())?;
        let user_id = caller.resolve(user)?;
        let found = self.app.scheduler.settings(user_id).await?;
        Ok(Response::new(pb::GetBackupSettingsResponse {
            settings: Some(found.into()),
        }))
    }

    async fn update_backup_settings(
        &self,
        request: Request<pb::UpdateBackupSettingsRequest>,
    ) -> Result<Response<pb::UpdateBackupSettingsResponse>, Status> {
        let caller = self.app.caller(&request, "UpdateBackupSettings").await?;
        let UpdateSettings { user, update } = request.into_inner().try_into()?;
        let user_id = caller.resolve(user)?;
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
                    .map_err(|_| Error::invalid("page_token", "is malformed"))?,
            ),
            None => None,
        };
        let page = self.app.scheduler.settings_page(after, limit).await?;
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
        let overdue = self.app.scheduler.overdue().await?;
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
        let (ran, failed) = self.app.scheduler.run_due_now().await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::UpdateBackupSettingsRequest {
        pb::UpdateBackupSettingsRequest::default()
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let err = UpdateSettings::try_from(pb::UpdateBackupSettingsRequest {
            user_id: -3,
            enabled: Some(true),
            frequency: Some(0),
            backup_time: Some("24:00".into()),
            keep_count: Some(31),
            timezone: Some("Mars/Olympus".into()),
        })
        .unwrap_err();
        let Error::InvalidArgument(violations) = err else {
            panic!("not invalid argument: {err}");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "user_id",
                "frequency",
                "backup_time",
                "keep_count",
                "timezone"
            ]
        );
    }

    #[test]
    fn good_values_pass() {
        let ok = UpdateSettings::try_from(pb::UpdateBackupSettingsRequest {
            user_id: 4,
            frequency: Some(pb::Frequency::Monthly.into()),
            backup_time: Some("23:59".into()),
            keep_count: Some(30),
            timezone: Some("Australia/Lord_Howe".into()),
            ..request()
        })
        .unwrap();
        assert_eq!(ok.user, UserSelector::User(4));
        assert_eq!(ok.update.frequency, Some(Frequency::Monthly));
        assert_eq!(ok.update.keep_count.map(KeepCount::get), Some(30));
        assert_eq!(
            UpdateSettings::try_from(request()).unwrap(),
            UpdateSettings {
                user: UserSelector::Caller,
                update: SettingsUpdate::default(),
            }
        );
        for bad in ["3:00", "03:60", "0300", " 03:00"] {
            let req = pb::UpdateBackupSettingsRequest {
                backup_time: Some(bad.into()),
                ..request()
            };
            assert!(UpdateSettings::try_from(req).is_err(), "{bad:?}");
        }
        for bad in [0, -1, 31, 4] {
            let req = pb::UpdateBackupSettingsRequest {
                frequency: Some(bad),
                ..request()
            };
            assert!(UpdateSettings::try_from(req).is_err(), "{bad}");
        }
    }
}
