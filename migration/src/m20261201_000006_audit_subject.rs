//! Audit attribution: `subject_user_id`, the user whose resource an event is
//! about (a backup's owner, a settings row's user), beside `user_id`, who
//! acted. Existing events get their actor as subject, which is what they
//! recorded: until now every event was filed under one user. An index on
//! (subject_user_id, id) serves "events about user N", as
//! `idx_audit_events_user_id` serves "events by user N".

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_audit_events_subject_user_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(AuditEvents::Table)
                    .add_column(
                        ColumnDef::new(AuditEvents::SubjectUserId)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(AuditEvents::Table)
                    .value(AuditEvents::SubjectUserId, Expr::col(AuditEvents::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(AuditEvents::Table)
                    .col(AuditEvents::SubjectUserId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(AuditEvents::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(AuditEvents::Table)
                    .drop_column(AuditEvents::SubjectUserId)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    UserId,
    SubjectUserId,
}
