//! One scheduled run, unique per (user, slot): the guard that makes each
//! slot run at most once across restarts and processes.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scheduled_runs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub slot_at: DateTimeUtc,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// The scheduler instance that claimed the slot.
    pub instance: String,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub filename: Option<String>,
    pub error: Option<String>,
    /// The lease epoch it was claimed under.
    pub epoch: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
