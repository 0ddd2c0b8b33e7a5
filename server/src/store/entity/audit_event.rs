//! One audit event; ids increase in commit order (one writer connection).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub event_type: String,
    /// Who acted: the caller, 0 for the system.
    pub user_id: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub action: String,
    pub success: bool,
    pub details: Json,
    pub error_message: String,
    pub timestamp: DateTimeUtc,
    /// Whose resource the event is about; the actor unless set otherwise.
    pub subject_user_id: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
