//! Audit events in the state store: rows to and from
//! [`model::audit::AuditEvent`], inserts in commit order, and filtered
//! pages by id.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::engine;
use super::entity::audit_event::{self, Column, Entity};
use super::notify::{self, Channel};
use crate::error::{Error, Result};
use crate::model::audit::{AuditEvent, Filter, NewEvent};

/// A stored event, shared: the recorder hands one to every subscriber.
pub type Event = Arc<AuditEvent>;

fn from_row(row: audit_event::Model) -> AuditEvent {
    AuditEvent {
        id: row.id,
        event_type: row.event_type,
        user_id: row.user_id,
        subject_user_id: row.subject_user_id,
        resource_type: row.resource_type,
        resource_id: row.resource_id,
        action: row.action,
        success: row.success,
        details: row.details,
        error_message: row.error_message,
        timestamp: row.timestamp,
    }
}

/// The row to insert for `event`, recorded at `at`.
fn to_row(event: NewEvent, at: DateTime<Utc>) -> audit_event::ActiveModel {
    let action = event.action().to_owned();
    audit_event::ActiveModel {
        event_type: Set(event.event_type),
        user_id: Set(event.user_id),
        subject_user_id: Set(event.subject.unwrap_or(event.user_id)),
        resource_type: Set(event.resource_type),
        resource_id: Set(event.resource_id),
        action: Set(action),
        success: Set(event.success),
        details: Set(event.details),
        error_message: Set(event.error_message),
        timestamp: Set(at),
        ..Default::default()
    }
}

/// Inserts events in order through a write transaction and reads them
/// back in id order. One statement for one event; three round trips
/// however many there are.
///
/// Ids must be assigned in commit order, so that a reader who has seen id
/// N has seen every id below it that will ever commit: the engine's
/// commit-order lock (PostgreSQL's; SQLite has one writer at a time) is
/// taken first and held until commit. The commit also notifies listeners
/// on other replicas.
pub async fn insert(txn: &DatabaseTransaction, events: Vec<NewEvent>) -> Result<Vec<Event>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(lock) = engine::of(txn.get_database_backend()).commit_order_lock() {
        txn.execute_raw(lock).await?;
    }
    let now = Utc::now();
    let count = events.len();
    let inserted = match <[NewEvent; 1]>::try_from(events) {
        Ok([only]) => vec![Arc::new(from_row(to_row(only, now).insert(txn).await?))],
        Err(events) => {
            let before = last_id(txn).await?;
            Entity::insert_many(events.into_iter().map(|e| to_row(e, now)))
                .exec_without_returning(txn)
                .await?;
            page(txn, &Filter::default(), before, None, count as u64).await?
        }
    };
    let Some(newest) = inserted.last().filter(|_| inserted.len() == count) else {
        return Err(Error::Internal(format!(
            "inserted {count} audit events but read back {}",
            inserted.len()
        )));
    };
    notify::send(txn, Channel::AuditEvents, &newest.id.to_string()).await?;
    Ok(inserted)
}

/// The filter as a SQL condition.
fn condition(filter: &Filter) -> Condition {
    let mut condition = Condition::all();
    if !filter.event_type_prefix.is_empty() {
        // Not LIKE: it treats `_` as a wildcard and ignores ASCII case.
        // 32-bit arguments: PostgreSQL has substr(text, integer, integer).
        let length = i32::try_from(filter.event_type_prefix.chars().count()).unwrap_or(i32::MAX);
        condition = condition.add(
            Expr::expr(
                Func::cust("substr")
                    .arg(Expr::col(Column::EventType))
                    .arg(1i32)
                    .arg(length),
            )
            .eq(filter.event_type_prefix.as_str()),
        );
    }
    if let Some(id) = filter.user_id {
        // Each side is a range of its own index, (user_id, id) and
        // (subject_user_id, id).
        condition = condition.add(
            Condition::any()
                .add(Column::UserId.eq(id))
                .add(Column::SubjectUserId.eq(id)),
        );
    }
    // SQLite keeps the times as RFC 3339 text, all `+00:00`, where text
    // order is time order (`+` sorts before `.` and digits, so a shorter
    // fraction compares right).
    if let Some(t) = filter.start_time {
        condition = condition.add(Column::Timestamp.gte(t));
    }
    if let Some(t) = filter.end_time {
        condition = condition.add(Column::Timestamp.lt(t));
    }
    condition
}

/// Matching events with `after < id <= up_to` (no upper bound when `None`),
/// oldest first, at most `limit`.
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    filter: &Filter,
    after: i64,
    up_to: Option<i64>,
    limit: u64,
) -> Result<Vec<Event>> {
    let mut condition = condition(filter).add(Column::Id.gt(after));
    if let Some(up_to) = up_to {
        condition = condition.add(Column::Id.lte(up_to));
    }
    let rows = Entity::find()
        .filter(condition)
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| Arc::new(from_row(row)))
        .collect())
}

/// The id of the newest committed event; 0 when there is none.
pub async fn last_id<C: ConnectionTrait>(conn: &C) -> Result<i64> {
    let max: Option<Option<i64>> = Entity::find()
        .select_only()
        .column_as(Column::Id.max(), "max_id")
        .into_tuple()
        .one(conn)
        .await?;
    Ok(max.flatten().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{NewEvent, Recorder};

    fn between(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Filter {
        Filter {
            start_time: start,
            end_time: end,
            ..Filter::default()
        }
    }

    async fn ids(
        db: &crate::store::Store,
        filter: &Filter,
        after: i64,
        up_to: Option<i64>,
    ) -> Vec<i64> {
        let events = page(db.reads(), filter, after, up_to, 100).await.unwrap();
        events.iter().map(|e| e.id).collect()
    }

    crate::store::tests::on_each_backend!(
        store_and_live_filters_agree,
        |db: crate::store::Store| async move {
            let recorder = Recorder::new(db.clone());
            for (event_type, user, subject) in [
                ("backup_files.create", 1, 1),
                ("backupXfiles.create", 1, 1),
                ("BACKUP_FILES.create", 2, 2),
                ("backup_files.delete", 2, 2),
                ("auth.denied", 0, 0),
                ("backup_scheduler.settings_updated", 1, 3),
            ] {
                recorder
                    .record(NewEvent::new(event_type, user).subject(subject))
                    .await
                    .unwrap();
            }
            let all = page(db.reads(), &Filter::default(), 0, None, 100)
                .await
                .unwrap();
            assert_eq!(all.len(), 6);
            assert_eq!(all[5].subject_user_id, 3);
            let now = Utc::now();
            let filters = [
                Filter::default(),
                Filter {
                    event_type_prefix: "backup_files.".into(),
                    ..Filter::default()
                },
                Filter {
                    event_type_prefix: "backup_files.".into(),
                    user_id: Some(2),
                    ..Filter::default()
                },
                Filter {
                    user_id: Some(0),
                    ..Filter::default()
                },
                Filter {
                    user_id: Some(1),
                    ..Filter::default()
                },
                Filter {
                    user_id: Some(3),
                    ..Filter::default()
                },
                between(Some(now), None),
                between(None, Some(now)),
                between(Some(all[1].timestamp), Some(all[3].timestamp)),
            ];
            for filter in filters {
                let stored = ids(&db, &filter, 0, None).await;
                let live: Vec<i64> = all
                    .iter()
                    .filter(|e| filter.matches(e))
                    .map(|e| e.id)
                    .collect();
                assert_eq!(stored, live, "{filter:?}");
            }
            let prefixed = Filter {
                event_type_prefix: "backup_files.".into(),
                ..Filter::default()
            };
            assert_eq!(ids(&db, &prefixed, 0, None).await, [1, 4]);
            let about_3 = Filter {
                user_id: Some(3),
                ..Filter::default()
            };
            assert_eq!(ids(&db, &about_3, 0, None).await, [6], "the subject's view");
            let by_1 = Filter {
                user_id: Some(1),
                ..Filter::default()
            };
            assert_eq!(
                ids(&db, &by_1, 0, None).await,
                [1, 2, 6],
                "the actor's view"
            );
            assert_eq!(ids(&db, &Filter::default(), 1, Some(3)).await, [2, 3]);
            assert_eq!(
                page(db.reads(), &Filter::default(), 0, None, 2)
                    .await
                    .unwrap()
                    .len(),
                2
            );
            assert_eq!(last_id(db.reads()).await.unwrap(), 6);
        }
    );
}
