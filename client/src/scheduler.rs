//! `backup.v1.BackupScheduler`: settings and the scheduling loop.

use backup_proto::backup_scheduler_client::BackupSchedulerClient;

use crate::{Authed, Result, present, proto};

/// A partial settings update: `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct SettingsUpdate {
    pub enabled: Option<bool>,
    pub frequency: Option<proto::Frequency>,
    pub backup_time: Option<String>,
    pub keep_count: Option<i32>,
    pub timezone: Option<String>,
}

#[derive(Clone)]
pub struct Scheduler(pub(crate) BackupSchedulerClient<Authed>);

impl Scheduler {
    /// A user's settings; `user_id` 0 means yourself.
    pub async fn get_settings(&mut self, user_id: i64) -> Result<proto::BackupSettings> {
        let response = self
            .0
            .get_backup_settings(proto::GetBackupSettingsRequest { user_id })
            .await?;
        present(response.into_inner().settings, "settings")
    }

    /// Changes the fields present in `update`; `user_id` 0 means yourself.
    pub async fn update_settings(
        &mut self,
        user_id: i64,
        update: SettingsUpdate,
    ) -> Result<proto::BackupSettings> {
        let response = self
            .0
            .update_backup_settings(proto::UpdateBackupSettingsRequest {
                user_id,
                enabled: update.enabled,
                frequency: update.frequency.map(Into::into),
                backup_time: update.backup_time,
                keep_count: update.keep_count,
                timezone: update.timezone,
            })
            .await?;
        present(response.into_inner().settings, "settings")
    }

    /// Every user's settings (admin).
    pub async fn list_settings(&mut self) -> Result<Vec<proto::BackupSettings>> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .0
                .list_backup_settings(proto::ListBackupSettingsRequest {
                    page_size: 0,
                    page_token,
                })
                .await?
                .into_inner();
            all.extend(page.settings);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// Users whose backups are overdue (admin).
    pub async fn overdue(&mut self) -> Result<Vec<proto::BackupSettings>> {
        let response = self
            .0
            .list_overdue_settings(proto::ListOverdueSettingsRequest {})
            .await?;
        Ok(response.into_inner().settings)
    }

    /// Runs what is due now; returns (run, failed) (admin).
    pub async fn check_and_run(&mut self) -> Result<(i32, i32)> {
        let response = self
            .0
            .check_and_run_backups(proto::CheckAndRunBackupsRequest {})
            .await?
            .into_inner();
        Ok((response.backups_run, response.backups_failed))
    }

    pub async fn stats(&mut self) -> Result<proto::SchedulerStats> {
        let response = self
            .0
            .get_scheduler_stats(proto::GetSchedulerStatsRequest {})
            .await?;
        present(response.into_inner().stats, "stats")
    }

    pub async fn start(&mut self) -> Result<proto::SchedulerStats> {
        let response = self
            .0
            .start_scheduler(proto::StartSchedulerRequest {})
            .await?;
        present(response.into_inner().stats, "stats")
    }

    /// The raw generated client, for calls the wrapper does not cover.
    pub fn raw(&mut self) -> &mut BackupSchedulerClient<Authed> {
        &mut self.0
    }

    pub async fn stop(&mut self) -> Result<proto::SchedulerStats> {
        let response = self
            .0
            .stop_scheduler(proto::StopSchedulerRequest {})
            .await?;
        present(response.into_inner().stats, "stats")
    }
}
