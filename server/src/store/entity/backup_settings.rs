//! One user's automatic backup schedule.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backup_settings")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub user_id: i64,
    pub enabled: bool,
    /// `daily`, `weekly` or `monthly`.
    pub frequency: String,
    /// `HH:MM` in `timezone`.
    pub backup_time: String,
    pub keep_count: i32,
    pub last_backup_at: Option<DateTimeUtc>,
    /// The next slot; `None` while disabled. Indexed with `enabled`.
    pub next_backup_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// IANA time zone name.
    pub timezone: String,
    /// Local date of the first run: weekly schedules keep its weekday,
    /// monthly ones its day of the month.
    pub anchor_date: Option<Date>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
