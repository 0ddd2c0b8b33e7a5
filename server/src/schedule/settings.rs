//! Per-user backup settings: partial updates with their defaults, and the
//! next-run bookkeeping that goes with them.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use serde_json::json;

use super::next_run::{self, Schedule};
use crate::audit::{NewEvent, Recorder};
use crate::auth;
use crate::error::{Error, Result};
use crate::model::settings::{Frequency, KeepCount, Settings, SettingsUpdate};
use crate::store::notify::Channel;
use crate::store::{self, Store};

/// The schedule settings describe.
pub fn schedule_of(s: &Settings) -> Schedule {
    Schedule {
        frequency: s.frequency,
        time: s.backup_time,
        timezone: s.timezone,
        anchor: s
            .anchor_date
            .unwrap_or_else(|| next_run::first_anchor(s.backup_time, s.timezone, s.created_at)),
    }
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

/// A user's settings; NOT_FOUND when the user has none, or does not exist.
pub async fn fetch(db: &Store, user_id: i64) -> Result<Settings> {
    if let Some(found) = store::settings::get(db.reads(), user_id).await? {
        return Ok(found);
    }
    auth::require_user(db.reads(), user_id).await?;
    Err(Error::NotFound(format!(
        "user {user_id} has no backup settings"
    )))
}

/// `current` with `update` applied at `now` (or, without `current`, new
/// settings for `user_id` from `update` and the defaults: daily at 03:00
/// UTC, keeping 7). A changed schedule starts again from `now`.
fn updated(
    user_id: i64,
    current: Option<Settings>,
    update: SettingsUpdate,
    now: DateTime<Utc>,
) -> Settings {
    let Some(mut s) = current else {
        let frequency = update.frequency.unwrap_or(Frequency::Daily);
        let time = update
            .backup_time
            .unwrap_or(NaiveTime::MIN + Duration::hours(3));
        let timezone = update.timezone.unwrap_or(Tz::UTC);
        let enabled = update.enabled.unwrap_or(true);
        let (anchor, next) = restart(frequency, time, timezone, now);
        return Settings {
            user_id,
            enabled,
            frequency,
            backup_time: time,
            keep_count: update.keep_count.unwrap_or(KeepCount::DEFAULT),
            timezone,
            anchor_date: Some(anchor),
            last_backup_at: None,
            next_backup_at: enabled.then_some(next),
            created_at: now,
            updated_at: now,
        };
    };
    let was_enabled = s.enabled;
    let before = schedule_of(&s);
    s.frequency = update.frequency.unwrap_or(s.frequency);
    s.backup_time = update.backup_time.unwrap_or(s.backup_time);
    s.timezone = update.timezone.unwrap_or(s.timezone);
    s.enabled = update.enabled.unwrap_or(s.enabled);
    s.keep_count = update.keep_count.unwrap_or(s.keep_count);
    let reschedule = (s.enabled && !was_enabled)
        || s.frequency != before.frequency
        || s.backup_time != before.time
        || s.timezone != before.timezone;
    if !s.enabled {
        s.next_backup_at = None;
    } else if reschedule {
        let (anchor, next) = restart(s.frequency, s.backup_time, s.timezone, now);
        s.anchor_date = Some(anchor);
        s.next_backup_at = Some(next);
    }
    s.updated_at = now;
    s
}

/// Applies a partial update (creating the settings on first use) and
/// audits it in the same transaction; a failure is rolled back and audited
/// as `backup_scheduler.settings_error`. A user that does not exist is
/// NOT_FOUND, and nothing is created for it. The next run is computed
/// from the state store's clock.
pub async fn update(
    audit: &Recorder,
    actor: i64,
    user_id: i64,
    update: SettingsUpdate,
) -> Result<Settings> {
    let result = async {
        let mut change = audit.begin().await?;
        let now = store::clock::now(&*change).await?;
        auth::require_user(&*change, user_id).await?;
        let current = store::settings::get(&*change, user_id).await?;
        let created = current.is_none();
        let saved = updated(user_id, current, update, now);
        let event = if created {
            store::settings::insert(&*change, &saved).await?;
            "backup_scheduler.settings_created"
        } else {
            store::settings::save(&*change, &saved).await?;
            "backup_scheduler.settings_updated"
        };
        change.record(
            NewEvent::new(event, actor)
                .subject(user_id)
                .resource("backup_settings", user_id.to_string())
                .details(json!({
                    "user_id": user_id,
                    "enabled": saved.enabled,
                    "frequency": saved.frequency.as_str(),
                    "backup_time": crate::model::settings::format_backup_time(saved.backup_time),
                    "keep_count": saved.keep_count.get(),
                    "timezone": saved.timezone.name(),
                    "next_backup_at": saved.next_backup_at,
                })),
        );
        // Wakes the scheduler of whichever replica holds the lease.
        store::notify::send(&*change, Channel::Scheduler, &user_id.to_string()).await?;
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
