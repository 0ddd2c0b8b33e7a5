//! Per-user backup settings: validation, partial updates, and the next-run
//! bookkeeping that goes with them.

use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select, Set,
};
use serde_json::json;

use super::next_run::{self, Frequency, Schedule};
use crate::audit::{NewEvent, Recorder};
use crate::auth;
use crate::error::{Error, FieldViolation, Result, quote};
use crate::store::entity::backup_settings;

pub use backup_settings::Model as Settings;

/// How late a user's last successful backup may be, beyond one interval,
/// before the user counts as overdue.
pub const OVERDUE_GRACE: Duration = Duration::hours(1);

impl Frequency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Daily, Self::Weekly, Self::Monthly]
            .into_iter()
            .find(|f| f.as_str() == s)
    }

    /// The longest gap between two runs.
    pub fn max_interval(self) -> Duration {
        match self {
            Self::Daily => Duration::days(1),
            Self::Weekly => Duration::days(7),
            Self::Monthly => Duration::days(31),
        }
    }
}

/// A partial update: `None` leaves a field as it is (or at its default on
/// creation). Values are already checked by [`SettingsUpdate::validate`].
#[derive(Clone, Debug, Default)]
pub struct SettingsUpdate {
    pub enabled: Option<bool>,
    pub frequency: Option<Frequency>,
    pub backup_time: Option<NaiveTime>,
    pub keep_count: Option<i32>,
    pub timezone: Option<Tz>,
}

/// An update as it arrives, before validation.
#[derive(Clone, Debug, Default)]
pub struct RawUpdate {
    pub enabled: Option<bool>,
    /// Protobuf enum number: 1 daily, 2 weekly, 3 monthly.
    pub frequency: Option<i32>,
    pub backup_time: Option<String>,
    pub keep_count: Option<i32>,
    pub timezone: Option<String>,
}

impl RawUpdate {
    /// Checks every field, reporting each bad one.
    pub fn validate(self) -> Result<SettingsUpdate> {
        let mut violations = Vec::new();
        let frequency = self.frequency.and_then(|n| {
            let parsed = match n {
                1 => Some(Frequency::Daily),
                2 => Some(Frequency::Weekly),
                3 => Some(Frequency::Monthly),
                _ => None,
            };
            if parsed.is_none() {
                violations.push(FieldViolation::new(
                    "frequency",
                    format!("{n} is not allowed; use FREQUENCY_DAILY, FREQUENCY_WEEKLY or FREQUENCY_MONTHLY"),
                ));
            }
            parsed
        });
        let backup_time = self.backup_time.and_then(|t| {
            next_run::parse_backup_time(&t)
                .map_err(|why| {
                    violations.push(FieldViolation::new(
                        "backup_time",
                        format!("{} {why}", quote(&t)),
                    ))
                })
                .ok()
        });
        if let Some(k) = self.keep_count
            && !(1..=30).contains(&k)
        {
            violations.push(FieldViolation::new(
                "keep_count",
                format!("{k} is out of range; keep between 1 and 30 backups"),
            ));
        }
        let timezone = self.timezone.and_then(|name| {
            Tz::from_str(&name)
                .map_err(|_| {
                    violations.push(FieldViolation::new(
                        "timezone",
                        format!(
                            "{} is not an IANA time zone name such as \"Europe/London\" or \"UTC\"",
                            quote(&name)
                        ),
                    ))
                })
                .ok()
        });
        if violations.is_empty() {
            Ok(SettingsUpdate {
                enabled: self.enabled,
                frequency,
                backup_time,
                keep_count: self.keep_count,
                timezone,
            })
        } else {
            Err(Error::InvalidArgument(violations))
        }
    }
}

/// The schedule a settings row describes. Rows are validated on the way in
/// (and by CHECK constraints), so a bad one is an internal error.
pub fn schedule_of(s: &Settings) -> Result<Schedule> {
    let corrupt =
        |what: &str| Error::Internal(format!("settings of user {} have a bad {what}", s.user_id));
    let time = next_run::parse_backup_time(&s.backup_time).map_err(|_| corrupt("backup_time"))?;
    let timezone = Tz::from_str(&s.timezone).map_err(|_| corrupt("timezone"))?;
    Ok(Schedule {
        frequency: Frequency::parse(&s.frequency).ok_or_else(|| corrupt("frequency"))?,
        time,
        timezone,
        anchor: s
            .anchor_date
            .unwrap_or_else(|| next_run::first_anchor(time, timezone, s.created_at)),
    })
}

/// A fresh anchor and next run for a schedule (re)started at `now`.
fn restart(
    frequency: Frequency,
    time: NaiveTime,
    timezone: Tz,
    now: DateTime<Utc>,
) -> (NaiveDate, DateTime<Utc>) {
    let anchor = next_run::first_anchor(time, timezone, now);
    let schedule = Schedule {
        frequency,
        time,
        timezone,
        anchor,
    };
    (anchor, next_run::next_run_after(&schedule, now))
}

pub async fn get<C: ConnectionTrait>(conn: &C, user_id: i64) -> Result<Option<Settings>> {
    Ok(backup_settings::Entity::find()
        .filter(backup_settings::Column::UserId.eq(user_id))
        .one(conn)
        .await?)
}

/// A user's settings; NOT_FOUND when the user has none, or does not exist.
pub async fn fetch(db: &DatabaseConnection, user_id: i64) -> Result<Settings> {
    if let Some(found) = get(db, user_id).await? {
        return Ok(found);
    }
    auth::require_user(db, user_id).await?;
    Err(Error::NotFound(format!(
        "user {user_id} has no backup settings"
    )))
}

/// Applies a partial update (creating the settings on first use) and
/// audits it in the same transaction; a failure is rolled back and audited
/// as `backup_scheduler.settings_error`. A user that does not exist is
/// NOT_FOUND, and nothing is created for it.
pub async fn update(
    audit: &Recorder,
    actor: i64,
    user_id: i64,
    update: SettingsUpdate,
    now: DateTime<Utc>,
) -> Result<Settings> {
    let result = async {
        let mut change = audit.begin().await?;
        auth::require_user(&*change, user_id).await?;
        let (saved, event) = match get(&*change, user_id).await? {
            None => {
                let frequency = update.frequency.unwrap_or(Frequency::Daily);
                let time = update
                    .backup_time
                    .unwrap_or(NaiveTime::MIN + Duration::hours(3));
                let timezone = update.timezone.unwrap_or(Tz::UTC);
                let enabled = update.enabled.unwrap_or(true);
                let (anchor, next) = restart(frequency, time, timezone, now);
                let saved = backup_settings::ActiveModel {
                    user_id: Set(user_id),
                    enabled: Set(enabled),
                    frequency: Set(frequency.as_str().into()),
                    backup_time: Set(next_run::format_backup_time(time)),
                    keep_count: Set(update.keep_count.unwrap_or(7)),
                    timezone: Set(timezone.name().into()),
                    anchor_date: Set(Some(anchor)),
                    last_backup_at: Set(None),
                    next_backup_at: Set(enabled.then_some(next)),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .insert(&*change)
                .await?;
                (saved, "backup_scheduler.settings_created")
            }
            Some(current) => {
                let schedule = schedule_of(&current)?;
                let frequency = update.frequency.unwrap_or(schedule.frequency);
                let time = update.backup_time.unwrap_or(schedule.time);
                let timezone = update.timezone.unwrap_or(schedule.timezone);
                let enabled = update.enabled.unwrap_or(current.enabled);
                let reschedule = (enabled && !current.enabled)
                    || frequency != schedule.frequency
                    || time != schedule.time
                    || timezone != schedule.timezone;
                let mut row = current.clone().into_active_model();
                row.enabled = Set(enabled);
                row.frequency = Set(frequency.as_str().into());
                row.backup_time = Set(next_run::format_backup_time(time));
                row.timezone = Set(timezone.name().into());
                if let Some(keep) = update.keep_count {
                    row.keep_count = Set(keep);
                }
                if !enabled {
                    row.next_backup_at = Set(None);
                } else if reschedule {
                    let (anchor, next) = restart(frequency, time, timezone, now);
                    row.anchor_date = Set(Some(anchor));
                    row.next_backup_at = Set(Some(next));
                }
                row.updated_at = Set(now);
                (
                    row.update(&*change).await?,
                    "backup_scheduler.settings_updated",
                )
            }
        };
        change.record(
            NewEvent::new(event, actor)
                .subject(user_id)
                .resource("backup_settings", user_id.to_string())
                .details(json!({
                    "user_id": user_id,
                    "enabled": saved.enabled,
                    "frequency": saved.frequency,
                    "backup_time": saved.backup_time,
                    "keep_count": saved.keep_count,
                    "timezone": saved.timezone,
                    "next_backup_at": saved.next_backup_at,
                })),
        );
        change.commit().await?;
        Ok(saved)
    }
    .await;
    if let Err(e) = &result {
        audit
            .record_or_log(
                NewEvent::new("backup_scheduler.settings_error", actor)
                    .subject(user_id)
                    .resource("backup_settings", user_id.to_string())
                    .failed(e),
            )
            .await;
    }
    result
}

/// A page of settings by user id, after `after_user_id`.
pub async fn page(
    db: &DatabaseConnection,
    after_user_id: Option<i64>,
    limit: u64,
) -> Result<Vec<Settings>> {
    let mut query = backup_settings::Entity::find();
    if let Some(after) = after_user_id {
        query = query.filter(backup_settings::Column::UserId.gt(after));
    }
    Ok(query
        .order_by_asc(backup_settings::Column::UserId)
        .limit(limit)
        .all(db)
        .await?)
}

/// Enabled settings whose slot has come, earliest first (an index range
/// scan on (enabled, next_backup_at)).
pub async fn due<C: ConnectionTrait>(
    conn: &C,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Settings>> {
    Ok(backup_settings::Entity::find()
        .filter(backup_settings::Column::Enabled.eq(true))
        .filter(backup_settings::Column::NextBackupAt.lte(now))
        .order_by_asc(backup_settings::Column::NextBackupAt)
        .limit(limit)
        .all(conn)
        .await?)
}

/// The earliest next run among enabled settings.
pub async fn next_due(db: &DatabaseConnection) -> Result<Option<DateTime<Utc>>> {
    let first = backup_settings::Entity::find()
        .filter(backup_settings::Column::Enabled.eq(true))
        .filter(backup_settings::Column::NextBackupAt.is_not_null())
        .order_by_asc(backup_settings::Column::NextBackupAt)
        .one(db)
        .await?;
    Ok(first.and_then(|s| s.next_backup_at))
}

/// (enabled, total) settings rows.
pub async fn counts(db: &DatabaseConnection) -> Result<(u64, u64)> {
    let total = backup_settings::Entity::find().count(db).await?;
    let enabled = backup_settings::Entity::find()
        .filter(backup_settings::Column::Enabled.eq(true))
        .count(db)
        .await?;
    Ok((enabled, total))
}

/// Enabled settings whose last success (or creation, before the first) is
/// older than their longest interval plus [`OVERDUE_GRACE`], by user id.
pub async fn overdue(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<Vec<Settings>> {
    Ok(overdue_query(now)
        .order_by_asc(backup_settings::Column::UserId)
        .all(db)
        .await?)
}

/// How many users [`overdue`] would list, without loading them.
pub async fn count_overdue(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<u64> {
    Ok(overdue_query(now).count(db).await?)
}

/// The overdue condition as one OR of plain conjunctions (enabled, one
/// frequency, one range), so SQLite answers each term with a range scan of
/// `idx_backup_settings_overdue` rather than reading every row.
fn overdue_query(now: DateTime<Utc>) -> Select<backup_settings::Entity> {
    use backup_settings::Column;
    let mut late = Condition::any();
    for frequency in [Frequency::Daily, Frequency::Weekly, Frequency::Monthly] {
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
    backup_settings::Entity::find().filter(late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::{Migrator, MigratorTrait};
    use sea_orm::QueryTrait;

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
            id: user_id as i32,
            user_id,
            enabled,
            frequency: frequency.as_str().into(),
            backup_time: "03:00".into(),
            keep_count: 7,
            last_backup_at: last_days_ago.map(|d| now - Duration::days(d)),
            next_backup_at: None,
            created_at: now - Duration::days(60),
            updated_at: now,
            timezone: "UTC".into(),
            anchor_date: None,
        }
    }

    #[tokio::test]
    async fn overdue_users_are_listed_counted_and_found_through_the_index() {
        let db = crate::store::connect("sqlite::memory:").await.unwrap();
        Migrator::up(&db, None).await.unwrap();
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
            backup_settings::Entity::insert(r.into_active_model())
                .exec(&db)
                .await
                .unwrap();
        }
        let now = Utc::now();
        let listed: Vec<i64> = overdue(&db, now)
            .await
            .unwrap()
            .iter()
            .map(|s| s.user_id)
            .collect();
        assert_eq!(listed, [1, 4, 6]);
        assert_eq!(count_overdue(&db, now).await.unwrap(), 3);

        let sql = overdue_query(now)
            .build(db.get_database_backend())
            .to_string();
        let plan: Vec<String> = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("EXPLAIN QUERY PLAN {sql}"),
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect();
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

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let err = RawUpdate {
            enabled: Some(true),
            frequency: Some(0),
            backup_time: Some("24:00".into()),
            keep_count: Some(31),
            timezone: Some("Mars/Olympus".into()),
        }
        .validate()
        .unwrap_err();
        let Error::InvalidArgument(violations) = err else {
            panic!("not invalid argument: {err}");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["frequency", "backup_time", "keep_count", "timezone"]
        );
    }

    #[test]
    fn good_values_pass() {
        let ok = RawUpdate {
            frequency: Some(3),
            backup_time: Some("23:59".into()),
            keep_count: Some(30),
            timezone: Some("Australia/Lord_Howe".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(ok.frequency, Some(Frequency::Monthly));
        assert_eq!(ok.keep_count, Some(30));
        for bad in ["3:00", "03:60", "0300", " 03:00"] {
            let raw = RawUpdate {
                backup_time: Some(bad.into()),
                ..Default::default()
            };
            assert!(raw.validate().is_err(), "{bad:?}");
        }
        for bad in [0, -1, 31] {
            let raw = RawUpdate {
                keep_count: Some(bad),
                ..Default::default()
            };
            assert!(raw.validate().is_err(), "{bad}");
        }
    }
}
