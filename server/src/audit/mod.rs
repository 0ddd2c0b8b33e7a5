//! The audit recorder: every operation of the service becomes an event in
//! the state store, written in the same transaction as the change it records
//! where there is one, then published to live subscribers after commit.
//!
//! [`access`] decides who may read which events; [`subscription`] streams
//! them live.

pub mod access;
pub mod subscription;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::model::audit::Filter;
use crate::store::{self, Store, Transaction};

pub use crate::model::audit::NewEvent;
pub use crate::store::audit::Event;

/// How many committed events live subscribers may lag behind before they
/// fall back to reading the store.
const LIVE_BUFFER: usize = 4096;

/// Writes events and fans committed ones out to subscribers.
#[derive(Clone)]
pub struct Recorder {
    db: Store,
    live: broadcast::Sender<Event>,
}

impl Recorder {
    pub fn new(db: Store) -> Self {
        Self::with_live_buffer(db, LIVE_BUFFER)
    }

    /// A recorder whose live subscribers may lag `events` behind before
    /// they read the store instead.
    pub fn with_live_buffer(db: Store, events: usize) -> Self {
        let (live, _) = broadcast::channel(events);
        Self { db, live }
    }

    /// Begins a change of the state store in a write transaction. What it
    /// changes and the events recording it commit together, and the events
    /// reach live subscribers once committed: [`Change::commit`] does both,
    /// so no caller can commit without publishing. Dropped uncommitted, it
    /// rolls back and nothing is published.
    pub async fn begin(&self) -> Result<Change<'_>> {
        Ok(Change {
            txn: self.db.begin_write().await?,
            recorder: self,
            events: Vec::new(),
        })
    }

    /// Hands committed events to live subscribers.
    fn publish(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            // No receivers is fine: nobody is watching.
            let _ = self.live.send(event);
        }
    }

    /// Records an event that has no state change of its own (a download, a
    /// failure, a denied call) in its own transaction.
    pub async fn record(&self, event: NewEvent) -> Result<Event> {
        let mut change = self.begin().await?;
        change.record(event);
        let committed = change.commit().await?;
        committed
            .events()
            .first()
            .cloned()
            .ok_or_else(|| Error::Internal("a recorded audit event was not stored".into()))
    }

    /// Records an event where failing to audit must not fail the operation
    /// that already happened (it is logged instead).
    pub async fn record_or_log(&self, event: NewEvent) {
        if let Err(e) = self.record(event).await {
            tracing::error!(error = %e, "could not record an audit event");
        }
    }

    /// Records how an operation ended: `event` with `details` of its
    /// result, or marked failed with its error; logged if auditing fails.
    pub async fn record_outcome<T>(
        &self,
        event: NewEvent,
        result: &Result<T>,
        details: impl FnOnce(&T) -> Value,
    ) {
        let event = match result {
            Ok(value) => event.details(details(value)),
            Err(e) => event.failed(e),
        };
        self.record_or_log(event).await;
    }

    /// Stored events matching `filter` with ids above `after`, oldest
    /// first, at most `limit`.
    pub async fn page(&self, filter: &Filter, after: i64, limit: u64) -> Result<Vec<Event>> {
        store::audit::page(self.db.reads(), filter, after, None, limit).await
    }

    /// A receiver of events committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

/// A write transaction and the audit events that record it; see
/// [`Recorder::begin`]. Queries run through it as a transaction.
pub struct Change<'r> {
    txn: Transaction,
    recorder: &'r Recorder,
    events: Vec<NewEvent>,
}

impl<'r> Change<'r> {
    /// Adds an event recording this change; it is stored at commit, in the
    /// order recorded.
    pub fn record(&mut self, event: NewEvent) {
        self.events.push(event);
    }

    /// Stores the recorded events and commits. The events are published
    /// when the returned [`Committed`] is dropped: at once, or later by a
    /// caller that first makes the change durable elsewhere.
    pub async fn commit(self) -> Result<Committed<'r>> {
        let events = store::audit::insert(&self.txn, self.events).await?;
        self.txn.commit().await?;
        Ok(Committed {
            events,
            recorder: self.recorder,
        })
    }
}

/// Committed events, published to live subscribers when dropped.
pub struct Committed<'r> {
    events: Vec<Event>,
    recorder: &'r Recorder,
}

impl Committed<'_> {
    /// The events as stored, in id order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

impl Drop for Committed<'_> {
    fn drop(&mut self) {
        self.recorder.publish(self.events.drain(..));
    }
}

impl std::ops::Deref for Change<'_> {
    type Target = Transaction;

    fn deref(&self) -> &Transaction {
        &self.txn
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use migration::{Migrator, MigratorTrait};

    use crate::store::Store;

    /// A migrated in-memory state store (one connection, so it persists).
    pub(crate) async fn memory_store() -> Store {
        let db = crate::store::Store::open("sqlite::memory:").await.unwrap();
        Migrator::up(db.orm(), None).await.unwrap();
        db
    }

    #[tokio::test]
    async fn events_from_before_the_subject_column_have_their_actor_as_subject() {
        use sea_orm::ConnectionTrait;
        let db = crate::store::Store::open("sqlite::memory:").await.unwrap();
        // Up to m20261121_000004, before audit subjects.
        Migrator::up(db.orm(), Some(4)).await.unwrap();
        db.reads().execute_unprepared(
            "INSERT INTO audit_events (event_type, user_id, resource_type, resource_id, action, \
             success, details, error_message, timestamp) VALUES ('backup_files.create', 7, \
             'backup', 'a.db', 'create', 1, '{}', '', '2026-01-01T00:00:00+00:00')",
        )
        .await
        .unwrap();
        Migrator::up(db.orm(), None).await.unwrap();
        let about_7 = crate::model::audit::Filter {
            user_id: Some(7),
            ..Default::default()
        };
        let old = crate::store::audit::page(db.reads(), &about_7, 0, None, 10)
            .await
            .unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!((old[0].user_id, old[0].subject_user_id), (7, 7));

        let recorder = super::Recorder::new(db.clone());
        let own = recorder
            .record(super::NewEvent::new("test.own", 7))
            .await
            .unwrap();
        assert_eq!(own.subject_user_id, 7, "the subject defaults to the actor");
        let theirs = recorder
            .record(super::NewEvent::new("test.theirs", 1).subject(7))
            .await
            .unwrap();
        assert_eq!((theirs.user_id, theirs.subject_user_id), (1, 7));

        // The migration can be undone (with those that came after it).
        let migrations = Migrator::migrations();
        let subject = migrations
            .iter()
            .position(|m| m.name() == "m20261201_000006_audit_subject")
            .unwrap();
        let undo = u32::try_from(migrations.len() - subject).unwrap();
        Migrator::down(db.orm(), Some(undo)).await.unwrap();
        let columns = db
            .reads()
            .query_all_raw(sea_orm::Statement::from_string(
                db.reads().get_database_backend(),
                "SELECT name FROM pragma_table_info('audit_events')",
            ))
            .await
            .unwrap();
        let names: Vec<String> = columns
            .iter()
            .map(|r| r.try_get::<String>("", "name").unwrap())
            .collect();
        assert!(names.contains(&"user_id".to_owned()), "{names:?}");
        assert!(!names.contains(&"subject_user_id".to_owned()), "{names:?}");
    }

    #[tokio::test]
    async fn a_change_stores_its_events_in_order_and_publishes_them_once_committed() {
        let db = memory_store().await;
        let recorder = super::Recorder::new(db.clone());
        recorder
            .record(super::NewEvent::new("test.first", 1))
            .await
            .unwrap();
        let mut live = recorder.subscribe();
        let mut change = recorder.begin().await.unwrap();
        for i in 0..5 {
            change.record(
                super::NewEvent::new("test.bulk", i)
                    .resource("thing", i.to_string())
                    .details(serde_json::json!({ "i": i })),
            );
        }
        assert!(
            live.try_recv().is_err(),
            "nothing is published before commit"
        );
        let committed = change.commit().await.unwrap();
        assert!(live.try_recv().is_err(), "nor before the commit is dropped");
        let inserted = committed.events().to_vec();
        drop(committed);
        let ids: Vec<i64> = inserted.iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3, 4, 5, 6]);
        for (i, e) in inserted.iter().enumerate() {
            assert_eq!(e.user_id, i as i64);
            assert_eq!(e.resource_id, i.to_string());
            assert_eq!(e.action, "bulk");
            assert_eq!(e.details, serde_json::json!({ "i": i }));
            assert_eq!(live.try_recv().unwrap().id, e.id);
        }

        // Dropped uncommitted: nothing stored, nothing published.
        let mut dropped = recorder.begin().await.unwrap();
        dropped.record(super::NewEvent::new("test.dropped", 1));
        drop(dropped);
        assert!(live.try_recv().is_err());
        assert_eq!(crate::store::audit::last_id(db.reads()).await.unwrap(), 6);
        let nothing = recorder.begin().await.unwrap().commit().await.unwrap();
        assert!(nothing.events().is_empty());
    }
}
