//! Backups you can trust: each backup records what its last verification
//! found (`damage`, null while intact) and when (`last_verified_at`), and
//! has a `name` unique among its owner's backups, so two users can each
//! call a backup `nightly.db`. `filename` stays the file's name on disk and
//! the primary key; existing backups keep their file name as their name.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_backups_owner_name";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            ColumnDef::new(Backups::Name)
                .string()
                .not_null()
                .default("")
                .to_owned(),
            ColumnDef::new(Backups::Damage).string().null().to_owned(),
            ColumnDef::new(Backups::LastVerifiedAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Backups::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .exec_stmt(
                Query::update()
                    .table(Backups::Table)
                    .value(Backups::Name, Expr::col(Backups::Filename))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Backups::Table)
                    .col(Backups::OwnerUserId)
                    .col(Backups::Name)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Backups::Table).to_owned())
            .await?;
        for column in [Backups::LastVerifiedAt, Backups::Damage, Backups::Name] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Backups::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Backups {
    Table,
    Filename,
    OwnerUserId,
    Name,
    Damage,
    LastVerifiedAt,
}
