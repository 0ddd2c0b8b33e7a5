//! Fencing for the scheduler lease: `scheduler_lease.epoch` goes up each
//! time another instance takes the lease, and `scheduled_runs.epoch`
//! records the epoch a run was claimed under, so a new holder knows which
//! runs its predecessors left unfinished and their writes can be refused.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Tables::SchedulerLease, Tables::ScheduledRuns] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(
                            ColumnDef::new(Tables::Epoch)
                                .big_integer()
                                .not_null()
                                .default(0),
                        )
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Tables::ScheduledRuns, Tables::SchedulerLease] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Tables::Epoch)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Tables {
    SchedulerLease,
    ScheduledRuns,
    Epoch,
}
