//! A covering index for retention: each owner's backups in creation order
//! with every column retention plans with, so a summary over all owners
//! reads the index alone instead of visiting the table row by row (on a
//! catalog whose rows interleave owners, as daily schedules make them).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_backups_retention";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Backups::Table)
                    .col(Backups::OwnerUserId)
                    .col(Backups::CreatedAt)
                    .col(Backups::Kind)
                    .col(Backups::IsProtected)
                    .col(Backups::Filename)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Backups::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Backups {
    Table,
    OwnerUserId,
    CreatedAt,
    Kind,
    IsProtected,
    Filename,
}
