//! Indexes in ListBackups' order (newest first, ties by filename), one per
//! owner and one across owners, so a page is read off an index and stops at
//! its last row instead of sorting every matching backup. The per-owner one
//! replaces `idx_backups_owner_created`, a prefix of it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const OWNER_PAGE: &str = "idx_backups_owner_page";
const PAGE: &str = "idx_backups_page";
const REPLACED: &str = "idx_backups_owner_created";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(OWNER_PAGE)
                    .table(Backups::Table)
                    .col(Backups::OwnerUserId)
                    .col(Backups::CreatedAt)
                    .col(Backups::Filename)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(PAGE)
                    .table(Backups::Table)
                    .col(Backups::CreatedAt)
                    .col(Backups::Filename)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(REPLACED)
                    .table(Backups::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(REPLACED)
                    .table(Backups::Table)
                    .col(Backups::OwnerUserId)
                    .col(Backups::CreatedAt)
                    .to_owned(),
            )
            .await?;
        for index in [PAGE, OWNER_PAGE] {
            manager
                .drop_index(Index::drop().name(index).table(Backups::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Backups {
    Table,
    OwnerUserId,
    CreatedAt,
    Filename,
}
