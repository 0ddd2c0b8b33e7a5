//! An index for the overdue check (GetSchedulerStats, ListOverdueSettings):
//! per frequency, enabled users whose last success, or creation before the
//! first, is older than a cutoff. Each of those conditions becomes a range
//! scan of this index instead of a scan of every settings row.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_backup_settings_overdue";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(BackupSettings::Table)
                    .col(BackupSettings::Enabled)
                    .col(BackupSettings::Frequency)
                    .col(BackupSettings::LastBackupAt)
                    .col(BackupSettings::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(BackupSettings::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum BackupSettings {
    Table,
    Enabled,
    Frequency,
    LastBackupAt,
    CreatedAt,
}
