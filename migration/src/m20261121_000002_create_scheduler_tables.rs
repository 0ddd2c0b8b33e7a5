//! Per-user backup settings (the original `backup_settings` columns and
//! constraints plus `timezone` and `anchor_date`), one row per scheduled
//! run keyed by (user, slot), and the scheduler lease.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(BackupSettings::Table)
                    .col(pk_auto(BackupSettings::Id))
                    .col(big_integer_uniq(BackupSettings::UserId))
                    .col(boolean(BackupSettings::Enabled).default(true))
                    .col(string(BackupSettings::Frequency).default("daily").check(
                        Expr::col(BackupSettings::Frequency).is_in(["daily", "weekly", "monthly"]),
                    ))
                    .col(
                        string(BackupSettings::BackupTime).default("03:00").check(
                            Expr::col(BackupSettings::BackupTime)
                                .like("__:__")
                                .and(Expr::cust(
                                    "substr(backup_time, 1, 2) BETWEEN '00' AND '23'",
                                ))
                                .and(Expr::cust(
                                    "substr(backup_time, 4, 2) BETWEEN '00' AND '59'",
                                )),
                        ),
                    )
                    .col(
                        integer(BackupSettings::KeepCount)
                            .default(7)
                            .check(Expr::col(BackupSettings::KeepCount).between(1, 30)),
                    )
                    .col(timestamp_with_time_zone_null(BackupSettings::LastBackupAt))
                    .col(timestamp_with_time_zone_null(BackupSettings::NextBackupAt))
                    .col(timestamp_with_time_zone(BackupSettings::CreatedAt))
                    .col(timestamp_with_time_zone(BackupSettings::UpdatedAt))
                    .col(string(BackupSettings::Timezone).default("UTC"))
                    .col(date_null(BackupSettings::AnchorDate))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_backup_settings_enabled_next")
                    .table(BackupSettings::Table)
                    .col(BackupSettings::Enabled)
                    .col(BackupSettings::NextBackupAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ScheduledRuns::Table)
                    .col(big_pk_auto(ScheduledRuns::Id))
                    .col(big_integer(ScheduledRuns::UserId))
                    .col(timestamp_with_time_zone(ScheduledRuns::SlotAt))
                    .col(string(ScheduledRuns::Status))
                    .col(string(ScheduledRuns::Instance))
                    .col(timestamp_with_time_zone(ScheduledRuns::StartedAt))
                    .col(timestamp_with_time_zone_null(ScheduledRuns::FinishedAt))
                    .col(string_null(ScheduledRuns::Filename))
                    .col(string_null(ScheduledRuns::Error))
                    .to_owned(),
            )
            .await?;
        // A second attempt at the same (user, slot) is impossible, whatever
        // restarts or other processes do.
        manager
            .create_index(
                Index::create()
                    .name("idx_scheduled_runs_user_slot")
                    .table(ScheduledRuns::Table)
                    .col(ScheduledRuns::UserId)
                    .col(ScheduledRuns::SlotAt)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SchedulerLease::Table)
                    .col(string(SchedulerLease::Name).primary_key())
                    .col(string(SchedulerLease::Holder))
                    .col(timestamp_with_time_zone(SchedulerLease::ExpiresAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SchedulerLease::Table.into_iden(),
            ScheduledRuns::Table.into_iden(),
            BackupSettings::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum BackupSettings {
    Table,
    Id,
    UserId,
    Enabled,
    Frequency,
    BackupTime,
    KeepCount,
    LastBackupAt,
    NextBackupAt,
    CreatedAt,
    UpdatedAt,
    Timezone,
    AnchorDate,
}

#[derive(DeriveIden)]
enum ScheduledRuns {
    Table,
    Id,
    UserId,
    SlotAt,
    Status,
    Instance,
    StartedAt,
    FinishedAt,
    Filename,
    Error,
}

#[derive(DeriveIden)]
enum SchedulerLease {
    Table,
    Name,
    Holder,
    ExpiresAt,
}
