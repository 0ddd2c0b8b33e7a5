//! Reading stored audit events: who may see what, filters, and pages in id
//! (commit) order.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::entity::audit_event::{self, Column, Entity};

use super::Event;

/// Which events a listing or a subscription is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only event types starting with this (compared exactly, case and all).
    pub event_type_prefix: String,
    /// Only events this user is the actor or the subject of; `None` for
    /// everyone's (admins only).
    pub user_id: Option<i64>,
    /// Only events at or after this time.
    pub start_time: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub end_time: Option<DateTime<Utc>>,
}

impl Filter {
    /// The filter `caller` may use: a non-admin sees only their own events
    /// (those they did, and those about them), so an absent `user_id` means
    /// "mine" and another user's id is refused.
    pub fn for_caller(
        caller: Caller,
        event_type_prefix: String,
        user_id: Option<i64>,
    ) -> Result<Self> {
        if let Some(id) = user_id
            && id < 0
        {
            return Err(Error::invalid(
                "user_id",
                "must not be negative; 0 is the system",
            ));
        }
        let user_id = match user_id {
            Some(id) if !caller.can_access(id) => {
                return Err(Error::PermissionDenied(
                    "only an admin may see another user's audit events".into(),
                ));
            }
            Some(id) => Some(id),
            None if caller.is_admin => None,
            None => Some(caller.user_id),
        };
        Ok(Self {
            event_type_prefix,
            user_id,
            start_time: None,
            end_time: None,
        })
    }

    /// Restricts the filter to `[start, end)`.
    pub fn between(
        mut self,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> Result<Self> {
        if let (Some(start), Some(end)) = (start, end)
            && end < start
        {
            return Err(Error::invalid("end_time", "must not be before start_time"));
        }
        self.start_time = start;
        self.end_time = end;
        Ok(self)
    }

    /// Whether a (live) event passes the filter; the same test as
    /// [`Filter::condition`] applies in the store.
    pub fn matches(&self, event: &audit_event::Model) -> bool {
        (self.event_type_prefix.is_empty() || event.event_type.starts_with(&self.event_type_prefix))
            && self
                .user_id
                .is_none_or(|id| event.user_id == id || event.subject_user_id == id)
            && self.start_time.is_none_or(|t| event.timestamp >= t)
            && self.end_time.is_none_or(|t| event.timestamp < t)
    }

    /// The filter as a SQL condition.
    fn condition(&self) -> Condition {
        let mut condition = Condition::all();
        if !self.event_type_prefix.is_empty() {
            // Not LIKE: it treats `_` as a wildcard and ignores ASCII case.
            let length = self.event_type_prefix.chars().count() as i64;
            condition = condition.add(
                Expr::expr(
                    Func::cust("substr")
                        .arg(Expr::col(Column::EventType))
                        .arg(1)
                        .arg(length),
                )
                .eq(self.event_type_prefix.as_str()),
            );
        }
        if let Some(id) = self.user_id {
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
        if let Some(t) = self.start_time {
            condition = condition.add(Column::Timestamp.gte(t));
        }
        if let Some(t) = self.end_time {
            condition = condition.add(Column::Timestamp.lt(t));
        }
        condition
    }
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
    let mut condition = filter.condition().add(Column::Id.gt(after));
    if let Some(up_to) = up_to {
        condition = condition.add(Column::Id.lte(up_to));
    }
    let rows = Entity::find()
        .filter(condition)
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(Event::new).collect())
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
    use crate::audit::tests::memory_store;
    use crate::audit::{NewEvent, Recorder};

    async fn ids(
        db: &sea_orm::DatabaseConnection,
        filter: &Filter,
        after: i64,
        up_to: Option<i64>,
    ) -> Vec<i64> {
        let events = page(db, filter, after, up_to, 100).await.unwrap();
        events.iter().map(|e| e.id).collect()
    }

    fn caller(user_id: i64, is_admin: bool) -> Caller {
        Caller { user_id, is_admin }
    }

    #[test]
    fn visibility() {
        let admin = caller(1, true);
        let user = caller(2, false);
        assert_eq!(
            Filter::for_caller(admin, String::new(), None)
                .unwrap()
                .user_id,
            None
        );
        assert_eq!(
            Filter::for_caller(admin, String::new(), Some(0))
                .unwrap()
                .user_id,
            Some(0)
        );
        assert_eq!(
            Filter::for_caller(user, String::new(), None)
                .unwrap()
                .user_id,
            Some(2)
        );
        assert_eq!(
            Filter::for_caller(user, String::new(), Some(2))
                .unwrap()
                .user_id,
            Some(2)
        );
        assert!(matches!(
            Filter::for_caller(user, String::new(), Some(3)),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            Filter::for_caller(user, String::new(), Some(0)),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            Filter::for_caller(admin, String::new(), Some(-1)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn store_and_live_filters_agree() {
        let db = memory_store().await;
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
        let all = page(&db, &Filter::default(), 0, None, 100).await.unwrap();
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
            Filter::default().between(Some(now), None).unwrap(),
            Filter::default().between(None, Some(now)).unwrap(),
            Filter::default()
                .between(Some(all[1].timestamp), Some(all[3].timestamp))
                .unwrap(),
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
            page(&db, &Filter::default(), 0, None, 2)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(last_id(&db).await.unwrap(), 6);
        assert!(
            Filter::default()
                .between(Some(now), Some(all[0].timestamp))
                .is_err()
        );
    }
}
