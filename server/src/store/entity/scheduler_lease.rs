//! The lease that makes one process the active scheduler.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scheduler_lease")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// Instance id of the holder.
    pub holder: String,
    /// The holder must renew before this, or another process takes over.
    pub expires_at: DateTimeUtc,
    /// Goes up each time another instance takes the lease: the fencing
    /// token its holder's writes are conditional on.
    pub epoch: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
