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
        use Backups::{CreatedAt, Filename, OwnerUserId};
        manager
            .create_index(index(OWNER_PAGE, &[OwnerUserId, CreatedAt, Filename]))
            .await?;
        manager
            .create_index(index(PAGE, &[CreatedAt, Filename]))
            .await?;
        manager.drop_index(drop_statement(REPLACED)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Backups::{CreatedAt, OwnerUserId};
        manager
            .create_index(index(REPLACED, &[OwnerUserId, CreatedAt]))
            .await?;
        manager.drop_index(drop_statement(PAGE)).await?;
        manager.drop_index(drop_statement(OWNER_PAGE)).await
    }
}

/// The index `name` on `columns` of the backups table, in that order.
fn index(name: &str, columns: &[Backups]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(Backups::Table);
    for column in columns {
        index.col(*column);
    }
    index
}

fn drop_statement(name: &str) -> IndexDropStatement {
    Index::drop().name(name).table(Backups::Table).to_owned()
}

#[derive(DeriveIden, Clone, Copy)]
enum Backups {
    Table,
    OwnerUserId,
    CreatedAt,
    Filename,
}
