//! What a backup repository knows of each backup: the BLAKE3 of its
//! standalone file (`blake3`, null where it was not computed, as for full
//! copies) and the stored bytes it added (`stored_bytes`; 0 for backups
//! catalogued before).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            ColumnDef::new(Backups::Blake3).string().null().to_owned(),
            ColumnDef::new(Backups::StoredBytes)
                .big_integer()
                .not_null()
                .default(0)
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
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Backups::StoredBytes, Backups::Blake3] {
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
    Blake3,
    StoredBytes,
}
