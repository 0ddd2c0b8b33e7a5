//! Migrations of the backup service's state store, applied at server start.
//! Append-only: a released migration is never edited, only followed.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_create_core_tables;
mod m20261121_000002_create_scheduler_tables;
mod m20261121_000003_backups_retention_index;
mod m20261121_000004_backup_settings_overdue_index;
mod m20261201_000005_backups_verification;
mod m20261201_000006_audit_subject;
mod m20261201_000007_backups_page_index;
mod m20261201_000008_backups_repository_facts;
mod m20261202_000009_scheduler_fencing;

/// Every migration of the state store, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_core_tables::Migration),
            Box::new(m20261121_000002_create_scheduler_tables::Migration),
            Box::new(m20261121_000003_backups_retention_index::Migration),
            Box::new(m20261121_000004_backup_settings_overdue_index::Migration),
            Box::new(m20261201_000005_backups_verification::Migration),
            Box::new(m20261201_000006_audit_subject::Migration),
            Box::new(m20261201_000007_backups_page_index::Migration),
            Box::new(m20261201_000008_backups_repository_facts::Migration),
            Box::new(m20261202_000009_scheduler_fencing::Migration),
        ]
    }
}
