//! Backup settings in the state store: rows to and from
//! [`model::settings::Settings`], and the queries the scheduler and the API
//! need.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Select, Set,
};

use super::Connection;
use super::entity::backup_settings::{self, Column, Entity};
use crate::error::{Error, Result};
use crate::model::settings::{Frequency, KeepCount, OVERDUE_GRACE, Settings};
use crate::model::settings::{format_backup_time, parse_backup_time};

/// A stored row as settings. Rows are validated on the way in (and by
/// CHECK constraints), so a bad one is an internal error naming the user
/// and the field, never a default.
fn from_row(row: backup_settings::Model) -> Result<Settings> {
    let corrupt = |what: &str, value: &str| {
        Error::Internal(format!(
            "the stored settings of user {} have a bad {what}: {value:?}",
            row.user_id
        ))
    };
    Ok(Settings {
        user_id: row.user_id,
        enabled: row.enabled,
        frequency: Frequency::parse(&row.frequency)
            .ok_or_else(|| corrupt("frequency", &row.frequency))?,
        backup_time: parse_backup_time(&row.backup_time)
            .map_err(|_| corrupt("backup_time", &row.backup_time))?,
        keep_count: KeepCount::new(i64::from(row.keep_count), "keep_count")
            .map_err(|_| corrupt("keep_count", &row.keep_count.to_string()))?,
        timezone: Tz::from_str(&row.timezone).map_err(|_| corrupt("timezone", &row.timezone))?,
        anchor_date: row.anchor_date,
        last_backup_at: row.last_backup_at,
        next_backup_at: row.next_backup_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn from_rows(rows: Vec<backup_settings::Model>) -> Result<Vec<Settings>> {
    rows.into_iter().map(from_row).collect()
}

/// Every column but the id, as `settings` has them.
fn to_row(settings: &Settings) -> backup_settings::ActiveModel {
    backup_settings::ActiveModel {
        user_id: Set(settings.user_id),
        enabled: Set(settings.enabled),
        frequency: Set(settings.frequency.as_str().into()),
        backup_time: Set(format_backup_time(settings.backup_time)),
        keep_count: Set(settings.keep_count.into()),
        timezone: Set(settings.timezone.name().into()),
        anchor_date: Set(settings.anchor_date),
        last_backup_at: Set(settings.last_backup_at),
        next_backup_at: Set(settings.next_backup_at),
        created_at: Set(settings.created_at),
        updated_at: Set(settings.updated_at),
        ..Default::default()
    }
}

/// A user's settings, if they have any.
pub async fn get<C: Connection>(conn: &C, user_id: i64) -> Result<Option<Settings>> {
    let query = Entity::find().filter(Column::UserId.eq(user_id));
    conn.row(query).await?.map(from_row).transpose()
}

/// Stores a user's first settings.
pub async fn insert<C: ConnectionTrait>(conn: &C, settings: &Settings) -> Result<()> {
    to_row(settings).insert(conn).await?;
    Ok(())
}

/// Overwrites a user's stored settings with `settings`.
pub async fn save<C: ConnectionTrait>(conn: &C, settings: &Settings) -> Result<()> {
    Entity::update_many()
        .set(to_row(settings))
        .filter(Column::UserId.eq(settings.user_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// A page of settings by user id, after `after_user_id`.
pub async fn page<C: Connection>(
    conn: &C,
    after_user_id: Option<i64>,
    limit: u64,
) -> Result<Vec<Settings>> {
    let mut query = Entity::find();
    if let Some(after) = after_user_id {
        query = query.filter(Column::UserId.gt(after));
    }
    from_rows(
        conn.rows(query.order_by_asc(Column::UserId).limit(limit))
            .await?,
    )
}

/// Enabled settings whose slot has come, earliest first (an index range
/// scan on (enabled, next_backup_at)).
pub async fn due<C: ConnectionTrait>(
    conn: &C,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Settings>> {
    from_rows(
        Entity::find()
            .filter(Column::Enabled.eq(true))
            .filter(Column::NextBackupAt.lte(now))
            .order_by_asc(Column::NextBackupAt)
            .limit(limit)
            .all(conn)
            .await?,
    )
}

/// The earliest next run among enabled settings.
pub async fn next_due<C: ConnectionTrait>(conn: &C) -> Result<Option<DateTime<Utc>>> {
    let first = Entity::find()
        .filter(Column::Enabled.eq(true))
        .filter(Column::NextBackupAt.is_not_null())
        .order_by_asc(Column::NextBackupAt)
        .one(conn)
        .await?;
    Ok(first.and_then(|s| s.next_backup_at))
}

/// (enabled, total) settings rows.
pub async fn counts<C: ConnectionTrait>(conn: &C) -> Result<(u64, u64)> {
    let total = Entity::find().count(conn).await?;
    let enabled = Entity::find()
        .filter(Column::Enabled.eq(true))
        .count(conn)
        .await?;
    Ok((enabled, total))
}

/// Enabled settings whose last success (or creation, before the first) is
/// older than their longest interval plus [`OVERDUE_GRACE`], by user id.
pub async fn overdue<C: ConnectionTrait>(conn: &C, now: DateTime<Utc>) -> Result<Vec<Settings>> {
    from_rows(
        overdue_query(now)
            .order_by_asc(Column::UserId)
            .all(conn)
            .await?,
    )
}

/// How many users [`overdue`] would list, without loading them.
pub async fn count_overdue<C: ConnectionTrait>(conn: &C, now: DateTime<Utc>) -> Result<u64> {
    Ok(overdue_query(now).count(conn).await?)
}

/// The overdue condition as one OR of plain conjunctions (enabled, one
/// frequency, one range), so SQLite answers each term with a range scan of
/// `idx_backup_settings_overdue` rather than reading every row.
fn overdue_query(now: DateTime<Utc>) -> Select<Entity> {
    let mut late = Condition::any();
    for frequency in Frequency::ALL {
        let cutoff = now - frequency.max_interval() - OVERDUE_GRACE;
        let this = || {
            Condition::all()
                .add(Column::Enabled.eq(true))
                .add(Column::Frequency.eq(frequency.as_str()))
        };
        late = late.add(this().add(Column::LastBackupAt.lt(cutoff))).add(
            this()
                .add(Column::LastBackupAt.is_null())
                .add(Column::CreatedAt.lt(cutoff)),
        );
    }
    Entity::find().filter(late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::{Migrator, MigratorTrait};

    /// A settings row whose last success was `last_days_ago` days ago
    /// (`None`: never, and created 60 days ago).
    fn row(
        user_id: i64,
        enabled: bool,
        frequency: Frequency,
        last_days_ago: Option<i64>,
    ) -> Settings {
        let now = Utc::now();
        Settings {
            user_id,
            enabled,
            frequency,
            backup_time: parse_backup_time("03:00").unwrap(),
            keep_count: KeepCount::DEFAULT,
            last_backup_at: last_days_ago.map(|d| now - chrono::Duration::days(d)),
            next_backup_at: None,
            created_at: now - chrono::Duration::days(60),
            updated_at: now,
            timezone: Tz::UTC,
            anchor_date: None,
        }
    }

    crate::store::tests::on_each_backend!(
        overdue_users_are_listed_and_counted,
        |db: crate::store::Store| async move {
            let rows = [
                row(1, true, Frequency::Daily, Some(3)),    // overdue
                row(2, true, Frequency::Daily, Some(0)),    // on time
                row(3, true, Frequency::Weekly, Some(3)),   // on time
                row(4, true, Frequency::Weekly, None),      // never ran: overdue
                row(5, false, Frequency::Daily, Some(30)),  // disabled
                row(6, true, Frequency::Monthly, Some(40)), // overdue
                row(7, true, Frequency::Monthly, Some(20)), // on time
            ];
            for r in rows {
                insert(db.reads(), &r).await.unwrap();
            }
            let now = Utc::now();
            let listed: Vec<i64> = overdue(db.reads(), now)
                .await
                .unwrap()
                .iter()
                .map(|s| s.user_id)
                .collect();
            assert_eq!(listed, [1, 4, 6]);
            assert_eq!(count_overdue(db.reads(), now).await.unwrap(), 3);
        }
    );

    #[tokio::test]
    async fn the_overdue_query_reads_its_index() {
        let db = crate::store::Store::open("sqlite::memory:").await.unwrap();
        Migrator::up(db.orm(), None).await.unwrap();
        let plan = crate::store::tests::query_plan(&db, &overdue_query(Utc::now())).await;
        assert!(
            plan.iter().all(|l| !l.starts_with("SCAN backup_settings")),
            "the overdue query reads every row: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|l| l.contains("idx_backup_settings_overdue")),
            "the overdue query does not use its index: {plan:?}"
        );
    }
}
