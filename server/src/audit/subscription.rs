//! Live subscriptions to the audit log: stored events after a point, then
//! new ones as they commit, in id order, with no gap and no duplicate.
//!
//! Each subscription is a task of its own that merges three sources:
//! - the recorder's live broadcast of events committed by this process;
//! - the store, read by id: for a replay, for the ids between the last one
//!   handled and a live event (another task committed them first but
//!   published later, or another process wrote them), and after falling
//!   behind the live buffer;
//! - a shared watermark, the store's newest id, so events other processes
//!   write (another replica, `backup-server token create`) arrive too: on
//!   PostgreSQL as each commit notifies it, on SQLite polled every
//!   [`STORE_POLL`] while anyone subscribes.
//!
//! Ids are assigned in commit order (see [`stored::insert`]), so once id N
//! is committed every id below it is committed or never will be: reading
//! the store up to N leaves nothing behind.
//!
//! Delivery goes through a bounded channel per subscriber, in batches of
//! what is at hand (one channel operation for a burst, not one per event).
//! A subscriber that stops reading only stalls its own task; the broadcast
//! never waits for it, and when it resumes it is caught up from the store.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use super::{Event, Recorder};
use crate::error::{Error, Result};
use crate::model::audit::Filter;
use crate::store::Store;
use crate::store::audit as stored;
use crate::store::notify::{Channel, Heard, Listener};

/// How often the store is polled for events other processes wrote.
pub const STORE_POLL: Duration = Duration::from_millis(500);

/// Batches queued per subscriber before its task waits for it.
const QUEUED_BATCHES: usize = 16;

/// The most events in one batch; also the most read from the store at a
/// time while catching up. At most `QUEUED_BATCHES * MAX_BATCH` events
/// wait in memory for a subscriber.
const MAX_BATCH: usize = 256;

/// What a subscriber receives: events, then possibly one error that ends
/// the stream (shutdown, a failing store) and says where to resume.
pub type Delivery = Result<Event>;

/// Starts subscriptions and counts the live ones.
pub struct Hub {
    db: Store,
    recorder: Recorder,
    active: Arc<AtomicUsize>,
    watermark: watch::Receiver<i64>,
    shutdown: CancellationToken,
}

impl Hub {
    /// A hub over `recorder`'s events; subscriptions end with UNAVAILABLE
    /// once `shutdown` is cancelled. Spawns the store poller, which ends
    /// with `shutdown` or when the hub and its subscriptions are gone.
    pub fn new(db: Store, recorder: Recorder, shutdown: CancellationToken) -> Self {
        let active = Arc::new(AtomicUsize::new(0));
        let (tx, watermark) = watch::channel(0);
        tokio::spawn(watch_store(
            db.clone(),
            tx,
            Arc::clone(&active),
            shutdown.clone(),
        ));
        Self {
            db,
            recorder,
            active,
            watermark,
            shutdown,
        }
    }

    /// How many subscriptions are running.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts a subscription. With `after_id`, stored matching events with a
    /// greater id come first; without, only events committed from now on.
    /// Dropping the returned [`Events`] ends the subscription.
    pub async fn subscribe(&self, filter: Filter, after_id: Option<i64>) -> Result<Events> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        if let Some(after) = after_id
            && after < 0
        {
            return Err(Error::invalid(
                "after_id",
                "must not be negative; 0 replays every event",
            ));
        }
        // Listen before reading the newest id: whatever commits after the
        // read is then either in the broadcast or found in the store.
        let live = self.recorder.subscribe();
        let last = stored::last_id(self.db.reads()).await?;
        let start = match after_id {
            Some(after) if after > last => {
                return Err(Error::invalid(
                    "after_id",
                    format!("is beyond the last event id ({last}); pass at most {last}"),
                ));
            }
            Some(after) => after,
            None => last,
        };
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let now_active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::telemetry::AUDIT_SUBSCRIBERS).set(now_active as f64);
        let subscription = Subscription {
            db: self.db.clone(),
            filter,
            live,
            watermark: self.watermark.clone(),
            shutdown: self.shutdown.clone(),
            tx,
            batch: Vec::new(),
            handled: start,
            delivered: start,
            _counted: Counted(Arc::clone(&self.active)),
        };
        tokio::spawn(subscription.run(last));
        Ok(Events {
            rx,
            pending: VecDeque::new(),
        })
    }
}

/// A subscription's events, one at a time, in id order. Dropping it ends
/// the subscription.
pub struct Events {
    rx: mpsc::Receiver<Result<Vec<Event>>>,
    pending: VecDeque<Event>,
}

impl Events {
    /// The next event; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => self.pending.extend(batch),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for Events {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_recv(cx)
    }
}

/// Keeps the watermark at the store's newest id: by listening where the
/// store notifies commits, else by polling.
async fn watch_store(
    db: Store,
    watermark: watch::Sender<i64>,
    active: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    match Listener::start(&db, Channel::AuditEvents).await {
        Ok(Some(listener)) => listen_store(db, listener, watermark, shutdown).await,
        Ok(None) => poll_store(db, watermark, active, shutdown).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for audit events; polling the store instead");
            poll_store(db, watermark, active, shutdown).await;
        }
    }
}

/// Advances the watermark to each committed id the store notifies, and to
/// the store's newest after a lost connection (notifications missed).
async fn listen_store(
    db: Store,
    mut listener: Listener,
    watermark: watch::Sender<i64>,
    shutdown: CancellationToken,
) {
    // Whatever committed before the listener started.
    let mut heard = Heard::Reconnected;
    loop {
        let newest = match heard {
            Heard::Notified(payload) => payload.parse().ok(),
            Heard::Reconnected => match stored::last_id(db.reads()).await {
                Ok(last) => Some(last),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the audit log's newest id");
                    None
                }
            },
        };
        if let Some(newest) = newest {
            advance(&watermark, newest);
        }
        heard = tokio::select! {
            () = shutdown.cancelled() => return,
            () = watermark.closed() => return,
            heard = listener.next() => heard,
        };
    }
}

/// Raises the watermark to `newest` if that is higher.
fn advance(watermark: &watch::Sender<i64>, newest: i64) {
    watermark.send_if_modified(|w| {
        let newer = newest > *w;
        if newer {
            *w = newest;
        }
        newer
    });
}

/// Keeps the watermark at the store's newest id while anyone subscribes.
async fn poll_store(
    db: Store,
    watermark: watch::Sender<i64>,
    active: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(STORE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if watermark.is_closed() {
            return;
        }
        if active.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match stored::last_id(db.reads()).await {
            Ok(last) => advance(&watermark, last),
            Err(e) => tracing::warn!(error = %e, "could not poll the audit log"),
        }
    }
}

/// Decrements the live-subscription count when the task ends, however.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        let now_active = self.0.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!(crate::telemetry::AUDIT_SUBSCRIBERS).set(now_active as f64);
    }
}

/// Why a subscription stops.
enum Stop {
    /// The subscriber went away: nothing more to say.
    Gone,
    ShuttingDown,
    Failed(Error),
}

struct Subscription {
    db: Store,
    filter: Filter,
    live: broadcast::Receiver<Event>,
    watermark: watch::Receiver<i64>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<Vec<Event>>>,
    /// Matching events not yet handed over; always empty while waiting.
    batch: Vec<Event>,
    /// Every id up to this one is handed over, batched or filtered out.
    handled: i64,
    /// The last id handed over (the start point before the first).
    delivered: i64,
    _counted: Counted,
}

impl Subscription {
    async fn run(mut self, committed: i64) {
        let Err(stop) = self.merge(committed).await;
        let resume = self.delivered;
        let message = match stop {
            Stop::Gone => return,
            Stop::ShuttingDown => format!("server shutting down; resume with after_id={resume}"),
            Stop::Failed(e) => {
                tracing::error!(error = %e, "an audit subscription failed");
                format!("reading the audit log failed; resume with after_id={resume}")
            }
        };
        // Queued events go first; a subscriber that never reads again is cut
        // off when its connection closes.
        let _ = self.tx.send(Err(Error::Unavailable(message))).await;
    }

    /// Delivers events until the subscriber goes away or the server stops;
    /// `committed` is an id known to be committed.
    async fn merge(&mut self, mut committed: i64) -> Result<Infallible, Stop> {
        loop {
            if self.handled < committed {
                self.catch_up(committed).await?;
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stop::ShuttingDown),
                () = self.tx.closed() => return Err(Stop::Gone),
                received = self.live.recv() => match received {
                    Ok(event) => {
                        self.on_live(event).await?;
                        // Take what else is queued without going round the select.
                        loop {
                            match self.live.try_recv() {
                                Ok(event) => self.on_live(event).await?,
                                Err(TryRecvError::Lagged(_)) => {
                                    committed = self.fell_behind().await?;
                                    break;
                                }
                                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                            }
                        }
                        self.flush().await?;
                    }
                    Err(RecvError::Lagged(_)) => committed = self.fell_behind().await?,
                    Err(RecvError::Closed) => return Err(Stop::ShuttingDown),
                },
                changed = self.watermark.changed() => match changed {
                    Ok(()) => committed = committed.max(*self.watermark.borrow_and_update()),
                    Err(_) => return Err(Stop::ShuttingDown),
                },
            }
        }
    }

    /// Missed live events: they are in the store, up to its newest id.
    async fn fell_behind(&self) -> Result<i64, Stop> {
        tracing::debug!(
            handled = self.handled,
            "audit subscriber fell behind the live buffer; reading the store"
        );
        stored::last_id(self.db.reads()).await.map_err(Stop::Failed)
    }

    /// A committed event from the broadcast: everything before it is
    /// committed too, so read any ids in between from the store first.
    async fn on_live(&mut self, event: Event) -> Result<(), Stop> {
        if event.id <= self.handled {
            return Ok(());
        }
        if event.id > self.handled + 1 {
            self.catch_up(event.id - 1).await?;
        }
        let id = event.id;
        if self.filter.matches(&event) {
            self.push(event).await?;
        }
        self.handled = id;
        Ok(())
    }

    /// Delivers stored matching events up to `up_to` (committed).
    async fn catch_up(&mut self, up_to: i64) -> Result<(), Stop> {
        while self.handled < up_to {
            let rows = stored::page(
                self.db.reads(),
                &self.filter,
                self.handled,
                Some(up_to),
                MAX_BATCH as u64,
            )
            .await
            .map_err(Stop::Failed)?;
            let complete = rows.len() < MAX_BATCH;
            for event in rows {
                let id = event.id;
                self.push(event).await?;
                self.handled = id;
            }
            if complete {
                self.handled = up_to;
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Adds a matching event to the batch, handing the batch over when full.
    async fn push(&mut self, event: Event) -> Result<(), Stop> {
        self.batch.push(event);
        if self.batch.len() >= MAX_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the batch to the subscriber, waiting while its queue is full.
    async fn flush(&mut self) -> Result<(), Stop> {
        let Some(last) = self.batch.last().map(|e| e.id) else {
            return Ok(());
        };
        let batch = std::mem::take(&mut self.batch);
        match self.tx.try_send(Ok(batch)) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(Stop::Gone),
            Err(TrySendError::Full(batch)) => {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return Err(Stop::ShuttingDown),
                    sent = self.tx.send(batch) => sent.map_err(|_| Stop::Gone)?,
                }
            }
        }
        self.delivered = last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::audit::NewEvent;
    use crate::audit::tests::memory_store;

    const PATIENCE: Duration = Duration::from_secs(10);

    async fn setup(live_buffer: usize) -> (Store, Recorder, Hub, CancellationToken) {
        let db = memory_store().await;
        let recorder = Recorder::with_live_buffer(db.clone(), live_buffer);
        let shutdown = CancellationToken::new();
        let hub = Hub::new(db.clone(), recorder.clone(), shutdown.clone());
        (db, recorder, hub, shutdown)
    }

    async fn next(rx: &mut Events) -> Delivery {
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }

    /// Reads ids until `last` arrives.
    async fn ids_until(rx: &mut Events, last: i64) -> Vec<i64> {
        let mut ids = Vec::new();
        while ids.last().is_none_or(|id| *id < last) {
            ids.push(next(rx).await.unwrap().id);
        }
        ids
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Commits an event without publishing it, as another process would.
    async fn commit_unpublished(db: &Store, user: i64) -> Event {
        let txn = db.begin_write().await.unwrap();
        let mut events = stored::insert(&txn, vec![NewEvent::new("test.elsewhere", user)])
            .await
            .unwrap();
        txn.commit().await.unwrap();
        events.remove(0)
    }

    /// Two replicas on one PostgreSQL database, both writing at once; a
    /// subscriber on one of them sees every event, the other's through
    /// LISTEN/NOTIFY and the store, in id order, with no gap and no
    /// duplicate: ids are assigned in commit order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_subscriber_sees_every_replicas_events_in_commit_order_on_postgres() {
        use migration::{Migrator, MigratorTrait};
        let url = crate::store::tests::new_postgres_database().await;
        let (a, b) = (
            Store::open(&url).await.unwrap(),
            Store::open(&url).await.unwrap(),
        );
        Migrator::up(a.orm(), None).await.unwrap();
        let (on_a, on_b) = (Recorder::new(a.clone()), Recorder::new(b.clone()));
        let hub = Hub::new(b.clone(), on_b.clone(), CancellationToken::new());
        let mut following = hub.subscribe(Filter::default(), Some(0)).await.unwrap();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let recorder = if w % 2 == 0 {
                    on_a.clone()
                } else {
                    on_b.clone()
                };
                tokio::spawn(async move {
                    for i in 0..150 {
                        let mut change = recorder.begin().await.unwrap();
                        // Some transactions record several events.
                        for _ in 0..=(i % 3) {
                            change.record(NewEvent::new("test.replica", w));
                        }
                        change.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let stored: Vec<i64> = stored::page(a.reads(), &Filter::default(), 0, None, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        // 150 transactions a writer, of 1, 2 and 3 events in turn.
        assert_eq!(stored.len(), 8 * 50 * (1 + 2 + 3));
        let last = *stored.last().unwrap();
        let seen = ids_until(&mut following, last).await;
        let missed: Vec<_> = stored.iter().filter(|id| !seen.contains(id)).collect();
        assert!(missed.is_empty(), "the subscriber missed ids {missed:?}");
        assert_eq!(seen, stored, "out of order or repeated");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replay_then_live_has_no_gap_or_duplicate_under_concurrent_writers() {
        let (db, recorder, hub, _shutdown) = setup(64).await;
        for _ in 0..300 {
            recorder
                .record(NewEvent::new("test.before", 1))
                .await
                .unwrap();
        }
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    for _ in 0..400 {
                        recorder
                            .record(NewEvent::new("test.during", w))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut replaying = hub.subscribe(Filter::default(), Some(0)).await.unwrap();
        let mut from_now = hub.subscribe(Filter::default(), None).await.unwrap();
        let mut mid = hub.subscribe(Filter::default(), Some(150)).await.unwrap();
        for w in writers {
            w.await.unwrap();
        }
        let last = stored::last_id(db.reads()).await.unwrap();
        assert_eq!(last, 1900);
        assert_eq!(
            ids_until(&mut replaying, last).await,
            (1..=last).collect::<Vec<_>>()
        );
        assert_eq!(
            ids_until(&mut mid, last).await,
            (151..=last).collect::<Vec<_>>()
        );
        let later = ids_until(&mut from_now, last).await;
        assert!(
            later.windows(2).all(|w| w[1] == w[0] + 1),
            "gap or duplicate"
        );
        assert!(later[0] > 300, "from now on must not replay: {}", later[0]);
    }

    #[tokio::test]
    async fn an_event_published_before_an_earlier_one_waits_for_it() {
        let (db, recorder, hub, _shutdown) = setup(64).await;
        let mut rx = hub.subscribe(Filter::default(), None).await.unwrap();
        let first = commit_unpublished(&db, 1).await;
        let second = commit_unpublished(&db, 1).await;
        recorder.publish([second.clone()]);
        assert_eq!(next(&mut rx).await.unwrap().id, first.id);
        assert_eq!(next(&mut rx).await.unwrap().id, second.id);
        recorder.publish([first]);
        let third = recorder
            .record(NewEvent::new("test.third", 1))
            .await
            .unwrap();
        assert_eq!(
            next(&mut rx).await.unwrap().id,
            third.id,
            "a duplicate slipped through"
        );
    }

    #[tokio::test]
    async fn events_that_are_never_published_arrive_from_the_store() {
        let (db, _recorder, hub, _shutdown) = setup(64).await;
        let mut rx = hub.subscribe(Filter::default(), None).await.unwrap();
        let elsewhere = commit_unpublished(&db, 1).await;
        assert_eq!(next(&mut rx).await.unwrap().id, elsewhere.id);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_the_live_buffer_catches_up_from_the_store() {
        let (db, recorder, hub, _shutdown) = setup(4).await;
        let mut rx = hub.subscribe(Filter::default(), None).await.unwrap();
        // Far more than the subscriber's queue and the live buffer hold.
        for _ in 0..(QUEUED_BATCHES + 600) {
            recorder
                .record(NewEvent::new("test.burst", 1))
                .await
                .unwrap();
        }
        let last = stored::last_id(db.reads()).await.unwrap();
        assert_eq!(
            ids_until(&mut rx, last).await,
            (1..=last).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_burst_beyond_the_live_buffer_is_read_from_the_store() {
        let (db, recorder, hub, _shutdown) = setup(4).await;
        let mut rx = hub.subscribe(Filter::default(), None).await.unwrap();
        let mut burst = Vec::new();
        for _ in 0..50 {
            burst.push(commit_unpublished(&db, 1).await);
        }
        // Published without a pause: the receiver is lagged at once.
        recorder.publish(burst);
        assert_eq!(ids_until(&mut rx, 50).await, (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn filters_apply_to_replay_and_live_and_an_empty_match_stays_open() {
        let (_db, recorder, hub, _shutdown) = setup(64).await;
        recorder
            .record(NewEvent::new("backup_files.create", 2))
            .await
            .unwrap();
        recorder
            .record(NewEvent::new("backup_files.create", 3))
            .await
            .unwrap();
        let mine = Filter {
            event_type_prefix: "backup_files.".into(),
            user_id: Some(2),
            ..Filter::default()
        };
        let mut rx = hub.subscribe(mine, Some(0)).await.unwrap();
        let nothing = Filter {
            event_type_prefix: "no.such.".into(),
            ..Filter::default()
        };
        let mut empty = hub.subscribe(nothing, None).await.unwrap();
        assert_eq!(next(&mut rx).await.unwrap().user_id, 2);
        recorder
            .record(NewEvent::new("auth.denied", 2))
            .await
            .unwrap();
        recorder
            .record(NewEvent::new("backup_files.delete", 3))
            .await
            .unwrap();
        let wanted = recorder
            .record(NewEvent::new("backup_files.delete", 2))
            .await
            .unwrap();
        assert_eq!(next(&mut rx).await.unwrap().id, wanted.id);
        assert!(
            tokio::time::timeout(Duration::ZERO, empty.recv())
                .await
                .is_err(),
            "nothing is ready and the stream is open"
        );
        assert_eq!(hub.active(), 2);
    }

    #[tokio::test]
    async fn after_id_must_be_within_the_log() {
        let (_db, recorder, hub, _shutdown) = setup(64).await;
        recorder.record(NewEvent::new("test.one", 1)).await.unwrap();
        for (after, needle) in [(-1, "negative"), (2, "last event id (1)")] {
            match hub.subscribe(Filter::default(), Some(after)).await {
                Err(Error::InvalidArgument(v)) => {
                    assert_eq!(v[0].field, "after_id");
                    assert!(v[0].description.contains(needle), "{}", v[0].description);
                }
                other => panic!("after_id {after}: {:?}", other.map(|_| ())),
            }
        }
        let mut rx = hub.subscribe(Filter::default(), Some(1)).await.unwrap();
        let two = recorder.record(NewEvent::new("test.two", 1)).await.unwrap();
        assert_eq!(next(&mut rx).await.unwrap().id, two.id);
    }

    #[tokio::test]
    async fn dropping_the_receiver_ends_the_subscription() {
        let (_db, _recorder, hub, _shutdown) = setup(64).await;
        let a = hub.subscribe(Filter::default(), None).await.unwrap();
        let b = hub.subscribe(Filter::default(), None).await.unwrap();
        assert_eq!(hub.active(), 2);
        drop(a);
        wait_for("one subscription to end", || hub.active() == 1).await;
        drop(b);
        wait_for("no subscriptions", || hub.active() == 0).await;
    }

    #[tokio::test]
    async fn shutdown_ends_streams_with_unavailable_and_where_to_resume() {
        let (_db, recorder, hub, shutdown) = setup(64).await;
        let mut rx = hub.subscribe(Filter::default(), None).await.unwrap();
        let event = recorder.record(NewEvent::new("test.one", 1)).await.unwrap();
        assert_eq!(next(&mut rx).await.unwrap().id, event.id);
        shutdown.cancel();
        match next(&mut rx).await {
            Err(Error::Unavailable(message)) => {
                assert!(
                    message.contains(&format!("after_id={}", event.id)),
                    "{message}"
                );
            }
            other => panic!("{:?}", other.map(|e| e.id)),
        }
        assert!(rx.recv().await.is_none());
        wait_for("the subscription to end", || hub.active() == 0).await;
        assert!(matches!(
            hub.subscribe(Filter::default(), None).await,
            Err(Error::Unavailable(_))
        ));
    }
}
