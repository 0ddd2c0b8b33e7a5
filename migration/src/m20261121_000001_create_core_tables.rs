//! Users and their API tokens, the backup catalog, the audit log, and
//! server secrets (the page-token signing key).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_integer(Users::Id).primary_key())
                    .col(boolean(Users::IsAdmin).default(false))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    .col(big_pk_auto(ApiTokens::Id))
                    .col(big_integer(ApiTokens::UserId))
                    .col(string_uniq(ApiTokens::TokenHash))
                    .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ApiTokens::Table, ApiTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Backups::Table)
                    .col(string(Backups::Filename).primary_key())
                    .col(big_integer(Backups::OwnerUserId))
                    .col(string(Backups::Kind))
                    .col(big_integer(Backups::SizeBytes))
                    .col(string(Backups::Sha256))
                    .col(boolean(Backups::IsProtected))
                    .col(timestamp_with_time_zone(Backups::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_backups_owner_created")
                    .table(Backups::Table)
                    .col(Backups::OwnerUserId)
                    .col(Backups::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_pk_auto(AuditEvents::Id))
                    .col(string(AuditEvents::EventType))
                    .col(big_integer(AuditEvents::UserId))
                    .col(string(AuditEvents::ResourceType))
                    .col(string(AuditEvents::ResourceId))
                    .col(string(AuditEvents::Action))
                    .col(boolean(AuditEvents::Success))
                    .col(json(AuditEvents::Details))
                    .col(string(AuditEvents::ErrorMessage))
                    .col(timestamp_with_time_zone(AuditEvents::Timestamp))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Secrets::Table)
                    .col(string(Secrets::Name).primary_key())
                    .col(string(Secrets::Value))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_events_user_id")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::UserId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Secrets::Table.into_iden(),
            AuditEvents::Table.into_iden(),
            Backups::Table.into_iden(),
            ApiTokens::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    IsAdmin,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    UserId,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Backups {
    Table,
    Filename,
    OwnerUserId,
    Kind,
    SizeBytes,
    Sha256,
    IsProtected,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    EventType,
    UserId,
    ResourceType,
    ResourceId,
    Action,
    Success,
    Details,
    ErrorMessage,
    Timestamp,
}

#[derive(DeriveIden)]
enum Secrets {
    Table,
    Name,
    Value,
}
