//! The backup scheduler: per-user settings, the next-run rule, and the loop
//! beside the server that takes each user's automatic backup on time.
//!
//! The loop sleeps until the earliest `next_backup_at` or a settings change
//! (a `Notify`), with the check interval only as a safety net. One process
//! at a time runs it, by holding the lease in the state store; each
//! (user, slot) can run at most once because claiming it inserts a row
//! under a unique key in the same transaction that advances the schedule.
//!
//! The lease's fencing epoch guards every write of a run: its claim, its
//! backup's catalog row and its end are each committed only while the
//! lease holds, so a holder that lost it (paused, cut off) cannot finish a
//! run its successor has settled. Time is the state store's: the loop's
//! clock is corrected by the skew measured at each renewal, and a claim is
//! refused before its slot by the database's clock.

pub mod next_run;
pub mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::audit::{Change, NewEvent, Recorder};
use crate::backup::{Backups, NewBackup, SharedSnapshot, naming};
use crate::error::{Error, Result};
use crate::model::backup::BackupKind;
use crate::model::run::{Fence, Lease, RunStatus};
use crate::model::settings::{Settings, SettingsUpdate};
use crate::retention::Retention;
use crate::store::notify::{Channel, Heard, Listener};
use crate::store::{self, Store};
use settings::schedule_of;

/// How long after a failed backup the user's backup is tried again (unless
/// the regular slot comes first).
const RETRY_DELAY: chrono::Duration = chrono::Duration::minutes(5);
/// A run this late counts as missed even without a whole slot skipped.
const MISSED_AFTER: chrono::Duration = chrono::Duration::minutes(1);
/// Most due users taken per query; the loop keeps querying until none.
const DUE_BATCH: u64 = 256;
/// Knobs, from the server configuration.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub check_interval: Duration,
    pub lease_ttl: Duration,
    pub max_concurrent_backups: usize,
}

/// What an operator sees of the scheduler.
#[derive(Clone, Debug)]
pub struct Stats {
    pub is_running: bool,
    pub check_interval: Duration,
    pub enabled_settings: u64,
    pub total_settings: u64,
    pub holds_lease: bool,
    pub lease: Option<Lease>,
    pub next_due_at: Option<DateTime<Utc>>,
    pub completed: u64,
    pub failed: u64,
    pub overdue_users: u64,
    pub instance_id: String,
}

pub struct Scheduler {
    db: Store,
    audit: Recorder,
    backups: Arc<Backups>,
    retention: Arc<Retention>,
    config: SchedulerConfig,
    /// Identifies this process in the lease and in run rows.
    instance_id: String,
    /// Wakes the loop when settings change, so it re-reads the next due time.
    wake: Notify,
    /// The lease while this process holds it.
    lease: std::sync::Mutex<Option<Fence>>,
    /// The state store's clock minus this host's, in milliseconds, as last
    /// measured when taking the lease.
    skew_ms: AtomicI64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// The running loop: its stop signal and task. `None` while stopped.
    running: tokio::sync::Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

/// What happened to one due user.
enum Outcome {
    Ran,
    Failed,
    /// Another process or an earlier attempt had the slot.
    Skipped,
}

impl Scheduler {
    pub fn new(
        db: Store,
        audit: Recorder,
        backups: Arc<Backups>,
        retention: Arc<Retention>,
        config: SchedulerConfig,
    ) -> Self {
        Self {
            db,
            audit,
            backups,
            retention,
            config,
            instance_id: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            wake: Notify::new(),
            lease: std::sync::Mutex::new(None),
            skew_ms: AtomicI64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(None),
        }
    }

    /// Applies a settings update for `user_id` on behalf of `actor` (see
    /// [`settings::update`]) and wakes the loop, whose next slot may have
    /// moved.
    pub async fn update_settings(
        &self,
        actor: i64,
        user_id: i64,
        update: SettingsUpdate,
    ) -> Result<Settings> {
        let saved = settings::update(&self.audit, actor, user_id, update).await?;
        self.wake();
        Ok(saved)
    }

    /// A user's settings; NOT_FOUND when the user has none, or does not
    /// exist.
    pub async fn settings(&self, user_id: i64) -> Result<Settings> {
        settings::fetch(&self.db, user_id).await
    }

    /// A page of every user's settings by user id, after `after_user_id`.
    pub async fn settings_page(
        &self,
        after_user_id: Option<i64>,
        limit: u64,
    ) -> Result<Vec<Settings>> {
        store::settings::page(self.db.reads(), after_user_id, limit).await
    }

    /// The users whose last success is overdue now, by user id.
    pub async fn overdue(&self) -> Result<Vec<Settings>> {
        store::settings::overdue(self.db.reads(), Utc::now()).await
    }

    /// Wakes the loop to look at the settings again.
    fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the loop (no-op if running); it runs missed backups first.
    pub async fn start(self: &Arc<Self>, actor: i64) -> Result<()> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let (stop, stopped) = watch::channel(false);
        let this = Arc::clone(self);
        let supervised = restart_on_panic(stopped, RESTART_DELAY, move |stopped| {
            Arc::clone(&this).run_loop(stopped)
        });
        *running = Some((stop, tokio::spawn(supervised)));
        self.audit
            .record_or_log(
                NewEvent::new("backup_scheduler.start", actor)
                    .resource("scheduler", &self.instance_id)
                    .details(json!({ "instance": self.instance_id })),
            )
            .await;
        Ok(())
    }

    /// Stops the loop after its current step and hands the lease back, so
    /// another process can take over at once.
    pub async fn stop(&self, actor: i64) -> Result<()> {
        let Some((stop, task)) = self.running.lock().await.take() else {
            return Ok(());
        };
        let _ = stop.send(true);
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the scheduler's supervisor failed");
        }
        self.release_lease().await?;
        self.audit
            .record_or_log(
                NewEvent::new("backup_scheduler.stop", actor)
                    .resource("scheduler", &self.instance_id)
                    .details(json!({ "instance": self.instance_id })),
            )
            .await;
        Ok(())
    }

    async fn run_loop(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        // Settings changed through other replicas wake this one too.
        let mut settings_changed = match Listener::start(&self.db, Channel::Scheduler).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for settings changed elsewhere; checking every interval");
                None
            }
        };
        loop {
            let fence = self.renew_lease().await;
            let mut wake_in = self.config.check_interval.min(self.config.lease_ttl / 3);
            if let Some(fence) = fence {
                if let Err(e) = self.run_due_renewing_lease(fence).await {
                    tracing::error!(error = %e, "scheduled check failed");
                    self.audit
                        .record_or_log(NewEvent::new("backup_scheduler.check_error", 0).failed(&e))
                        .await;
                }
                match store::settings::next_due(self.db.reads()).await {
                    Ok(Some(due)) => {
                        metrics::gauge!(crate::telemetry::SCHEDULER_NEXT_DUE)
                            .set(due.timestamp() as f64);
                        let until = (due - self.now()).to_std().unwrap_or(Duration::ZERO);
                        wake_in = wake_in.min(until);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the next due time"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wake_in) => {}
                () = self.wake.notified() => {}
                _ = heard(&mut settings_changed) => {}
                _ = stopped.changed() => break,
            }
        }
        self.set_lease(None);
    }

    /// This host's clock corrected by the skew to the state store's.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.skew_ms.load(Ordering::Relaxed))
    }

    /// Publishes whether this process holds the lease; true if it held it.
    fn set_lease(&self, fence: Option<Fence>) -> bool {
        let held = fence.is_some();
        let had = std::mem::replace(
            &mut *self.lease.lock().unwrap_or_else(|e| e.into_inner()),
            fence,
        );
        metrics::gauge!(crate::telemetry::SCHEDULER_LEASE_HELD).set(if held { 1.0 } else { 0.0 });
        had.is_some()
    }

    fn fence(&self) -> Option<Fence> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes or renews the lease and publishes whether this process holds it.
    async fn renew_lease(&self) -> Option<Fence> {
        let fence = match self.take_lease().await {
            Ok(fence) => fence,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the scheduler lease");
                None
            }
        };
        if self.set_lease(fence.clone()) && fence.is_none() {
            tracing::warn!(instance = %self.instance_id, "lost the scheduler lease");
        }
        fence
    }

    /// Runs what is due under `fence`, renewing the lease every third of
    /// its TTL meanwhile: a pass can outlast the TTL (a large database, many
    /// users). Renewal keeps the epoch; once the lease is lost the pass's
    /// remaining writes are refused.
    async fn run_due_renewing_lease(self: &Arc<Self>, fence: Fence) -> Result<(u32, u32)> {
        let period = self.config.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pass = self.run_due(fence, self.now());
        tokio::pin!(pass);
        loop {
            tokio::select! {
                outcome = &mut pass => return outcome,
                _ = renew.tick() => {
                    self.renew_lease().await;
                }
            }
        }
    }

    /// Takes or renews the lease; its fence if this process holds it. A
    /// lease taken over (a higher epoch) first settles the runs earlier
    /// holders left unfinished.
    async fn take_lease(&self) -> Result<Option<Fence>> {
        let mut change = self.audit.begin().await?;
        let asked = Utc::now();
        let Some(held) =
            store::lease::take(&*change, &self.instance_id, self.config.lease_ttl).await?
        else {
            return Ok(None);
        };
        // The database's clock read halfway through the round trip.
        let local = asked + (Utc::now() - asked) / 2;
        self.skew_ms
            .store((held.at - local).num_milliseconds(), Ordering::Relaxed);
        let newly_taken = self.fence().is_none_or(|f| f.epoch != held.fence.epoch);
        if newly_taken {
            self.settle_interrupted_runs(&mut change, held.fence.epoch, held.at)
                .await?;
        }
        change.commit().await?;
        if newly_taken {
            tracing::info!(instance = %self.instance_id, epoch = held.fence.epoch, "holding the scheduler lease");
        }
        Ok(Some(held.fence))
    }

    /// Settles the runs left running under an epoch before `epoch` (their
    /// holder died or lost the lease): one whose backup was catalogued
    /// completed, as it did; any other failed, and its user is retried now.
    async fn settle_interrupted_runs(
        &self,
        change: &mut Change<'_>,
        epoch: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let interrupted = "interrupted: the scheduler that ran it stopped";
        for (user_id, slot) in store::runs::left_running(&**change, epoch).await? {
            let filename = naming::auto_filename(user_id, slot);
            let made = store::backups::by_filename(&**change, &filename)
                .await?
                .is_some_and(|b| b.owner_user_id == user_id);
            let outcome = store::runs::Outcome {
                status: if made {
                    RunStatus::Completed
                } else {
                    RunStatus::Failed
                },
                finished_at: now,
                filename: made.then_some(filename.as_str()),
                error: (!made).then(|| interrupted.to_owned()),
            };
            store::runs::finish(&**change, user_id, slot, outcome).await?;
            let Some(mut settings) = store::settings::get(&**change, user_id).await? else {
                continue;
            };
            let event = if made {
                settings.last_backup_at = Some(now);
                NewEvent::new("backup_scheduler.backup_completed", user_id).details(json!({
                    "filename": filename,
                    "scheduled_for": slot,
                    "settled_after": "interrupted",
                }))
            } else {
                if settings.enabled && settings.next_backup_at.is_some_and(|next| next > now) {
                    settings.next_backup_at = Some(now.trunc_subsecs(0));
                }
                NewEvent::new("backup_scheduler.backup_error", user_id)
                    .details(
                        json!({ "scheduled_for": slot, "reason": "interrupted", "retry_at": now }),
                    )
                    .failed(&Error::Unavailable(interrupted.into()))
            };
            store::settings::save(&**change, &settings).await?;
            change.record(
                event
                    .subject(user_id)
                    .resource("backup_settings", user_id.to_string()),
            );
        }
        Ok(())
    }

    async fn release_lease(&self) -> Result<()> {
        if let Some(fence) = self.fence() {
            let change = self.audit.begin().await?;
            store::lease::release(&*change, &fence).await?;
            change.commit().await?;
        }
        self.set_lease(None);
        Ok(())
    }

    /// CheckAndRunBackups: runs what is due now, under the lease (taken for
    /// the pass when the loop does not hold it, and handed back after).
    /// FAILED_PRECONDITION while another instance holds it: its loop runs
    /// what is due.
    pub async fn run_due_now(self: &Arc<Self>) -> Result<(u32, u32)> {
        let looping = self.running.lock().await.is_some();
        let fence = match self.fence() {
            Some(fence) => fence,
            None => match self.take_lease().await? {
                Some(fence) => fence,
                None => {
                    self.wake_holder().await?;
                    return Err(Error::FailedPrecondition(
                        "another server instance holds the scheduler lease; it was woken to run \
                         the due backups itself"
                            .into(),
                    ));
                }
            },
        };
        self.set_lease(Some(fence.clone()));
        let result = self.run_due_renewing_lease(fence).await;
        if !looping && self.running.lock().await.is_none() {
            self.release_lease().await?;
        }
        result
    }

    /// Wakes the lease holder's loop, wherever it runs, to look at what is
    /// due.
    async fn wake_holder(&self) -> Result<()> {
        let change = self.audit.begin().await?;
        store::notify::send(&*change, Channel::Scheduler, "check").await?;
        change.commit().await?;
        Ok(())
    }

    /// Runs every backup due at `now` under `fence` with bounded
    /// concurrency; returns (succeeded, failed).
    async fn run_due(self: &Arc<Self>, fence: Fence, now: DateTime<Utc>) -> Result<(u32, u32)> {
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_backups.max(1)));
        // Everything due now is backed up from one snapshot, taken now.
        let shared = Arc::new(SharedSnapshot::default());
        let (mut ran, mut failed) = (0, 0);
        loop {
            let batch = store::settings::due(self.db.reads(), now, DUE_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let mut runs = JoinSet::new();
            for due in batch {
                let (this, permits, shared, fence) = (
                    Arc::clone(self),
                    Arc::clone(&permits),
                    Arc::clone(&shared),
                    fence.clone(),
                );
                runs.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    this.run_one(&fence, due, now, &shared).await
                });
            }
            let mut progressed = false;
            while let Some(outcome) = runs.join_next().await {
                match outcome.map_err(|e| Error::Internal(format!("backup task: {e}")))? {
                    Ok(Outcome::Ran) => (ran, progressed) = (ran + 1, true),
                    Ok(Outcome::Failed) => (failed, progressed) = (failed + 1, true),
                    Ok(Outcome::Skipped) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "a scheduled backup could not be settled");
                        failed += 1;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        Ok((ran, failed))
    }

    /// Claims one due slot, takes the backup (from the pass's `shared`
    /// snapshot), applies the owner's retention and records the outcome.
    async fn run_one(
        self: Arc<Self>,
        fence: &Fence,
        due: Settings,
        now: DateTime<Utc>,
        shared: &Arc<SharedSnapshot>,
    ) -> Result<Outcome> {
        let Some(slot) = due.next_backup_at else {
            return Ok(Outcome::Skipped);
        };
        let Some(next) = self.claim(fence, &due, slot, now).await? else {
            return Ok(Outcome::Skipped);
        };
        let user_id = due.user_id;
        let mut new = NewBackup::new(
            naming::auto_filename(user_id, slot),
            user_id,
            BackupKind::Auto,
        );
        new.fence = Some(fence.clone());
        let backup = self
            .backups
            .snapshot_shared(shared, new, move |b| {
                NewEvent::new("backup_files.create", user_id)
                    .subject(user_id)
                    .resource("backup", &b.name)
                    .details(json!({ "size": b.size_bytes, "sha256": b.sha256, "blake3": b.blake3, "kind": b.kind, "scheduled_for": slot }))
            })
            .await;
        match backup {
            Ok(backup) => {
                let keep = due.keep_count;
                let deleted = match self.retention.apply_for_owner(user_id, keep).await {
                    Ok(deleted) => deleted,
                    Err(e) => {
                        // Retention audits its own errors; the backup stands.
                        tracing::error!(error = %e, user_id, "retention after a scheduled backup failed");
                        Vec::new()
                    }
                };
                let details = json!({
                    "filename": backup.filename,
                    "size": backup.size_bytes,
                    "frequency": due.frequency.as_str(),
                    "next_backup_at": next,
                    "deleted_old_backups": deleted,
                    "scheduled_for": slot,
                    // When the snapshot was taken: what the backup shows.
                    "started_at": backup.created_at,
                    "lateness_ms": (backup.created_at - slot).num_milliseconds(),
                });
                self.finish(
                    fence,
                    &due,
                    slot,
                    None,
                    Some(&backup.filename),
                    NewEvent::new("backup_scheduler.backup_completed", user_id)
                        .subject(user_id)
                        .details(details),
                )
                .await?;
                self.completed.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome::Ran)
            }
            Err(e) => {
                let retry_at = (self.now() + RETRY_DELAY).trunc_subsecs(0).min(next);
                let details = json!({ "scheduled_for": slot, "retry_at": retry_at, "reason": e.public_message() });
                let event = NewEvent::new("backup_scheduler.backup_error", user_id)
                    .subject(user_id)
                    .details(details)
                    .failed(&e);
                self.finish(fence, &due, slot, Some((retry_at, &e)), None, event)
                    .await?;
                self.failed.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome::Failed)
            }
        }
    }

    /// Claims (user, slot): inserts the run row (unique per slot) and moves
    /// the schedule on, in one transaction, while `fence` holds the lease.
    /// Returns the next slot, or `None` when the slot is not due by the
    /// state store's clock, no longer due, already claimed, or the lease is
    /// lost. Slots that passed unrun are merged into this one run and
    /// audited as missed.
    async fn claim(
        &self,
        fence: &Fence,
        due: &Settings,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        let schedule = schedule_of(due);
        let mut change = self.audit.begin().await?;
        let Some(store_now) = store::lease::holds(&*change, fence).await? else {
            return Ok(None);
        };
        // Never early, however far this host's clock is off.
        if slot > store_now {
            return Ok(None);
        }
        let now = now.max(store_now);
        let next = next_run::next_run_after(&schedule, now);
        let Some(mut fresh) = store::settings::get(&*change, due.user_id).await? else {
            return Ok(None);
        };
        if !fresh.enabled || fresh.next_backup_at != Some(slot) {
            return Ok(None);
        }
        let claimed = store::runs::claim(&*change, due.user_id, slot, fence, store_now).await?;
        fresh.next_backup_at = Some(next);
        store::settings::save(&*change, &fresh).await?;
        if !claimed {
            // Already run once: never again, just move on.
            change.commit().await?;
            return Ok(None);
        }
        let merged = next_run::runs_between(&schedule, slot, now, 1000);
        if !merged.is_empty() || now - slot > MISSED_AFTER {
            let slots: Vec<DateTime<Utc>> = std::iter::once(slot).chain(merged).collect();
            change.record(
                NewEvent::new("backup_scheduler.missed", due.user_id)
                    .subject(due.user_id)
                    .resource("backup_settings", due.user_id.to_string())
                    .details(json!({
                        "missed_slots": slots,
                        "caught_up_at": now,
                        "next_backup_at": next,
                    })),
            );
        }
        change.commit().await?;
        Ok(Some(next))
    }

    /// Records a run's end: the run row, the settings (last success, or a
    /// retry time after a failure) and the audit event, in one transaction,
    /// while `fence` holds the lease. Once it is lost this writes nothing:
    /// the new holder settles the run.
    async fn finish(
        &self,
        fence: &Fence,
        due: &Settings,
        slot: DateTime<Utc>,
        failure: Option<(DateTime<Utc>, &Error)>,
        filename: Option<&str>,
        event: NewEvent,
    ) -> Result<()> {
        let mut change = self.audit.begin().await?;
        let Some(now) = store::lease::holds(&*change, fence).await? else {
            tracing::warn!(user_id = due.user_id, %slot, "lost the scheduler lease before a run ended; its new holder settles it");
            return Ok(());
        };
        let outcome = store::runs::Outcome {
            status: if failure.is_some() {
                RunStatus::Failed
            } else {
                RunStatus::Completed
            },
            finished_at: now,
            filename,
            error: failure.map(|(_, e)| e.public_message()),
        };
        store::runs::finish(&*change, due.user_id, slot, outcome).await?;
        if let Some(mut current) = store::settings::get(&*change, due.user_id).await? {
            match failure.map(|(at, _)| at) {
                None => {
                    current.last_backup_at = Some(now);
                    store::settings::save(&*change, &current).await?;
                }
                Some(at) if current.enabled && current.next_backup_at.is_some_and(|n| n > at) => {
                    current.next_backup_at = Some(at);
                    store::settings::save(&*change, &current).await?;
                }
                Some(_) => {}
            }
        }
        change.record(event.resource("backup_settings", due.user_id.to_string()));
        change.commit().await?;
        // A retry time may now be the earliest wake-up.
        self.wake();
        Ok(())
    }

    pub async fn stats(&self) -> Result<Stats> {
        let (enabled, total) = store::settings::counts(self.db.reads()).await?;
        Ok(Stats {
            is_running: self.running.lock().await.is_some(),
            check_interval: self.config.check_interval,
            enabled_settings: enabled,
            total_settings: total,
            holds_lease: self.fence().is_some(),
            lease: store::lease::get(self.db.reads()).await?,
            next_due_at: store::settings::next_due(self.db.reads()).await?,
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            overdue_users: store::settings::count_overdue(self.db.reads(), Utc::now()).await?,
            instance_id: self.instance_id.clone(),
        })
    }
}

/// What `listener` hears next; never, without one.
async fn heard(listener: &mut Option<Listener>) -> Heard {
    match listener {
        Some(listener) => listener.next().await,
        None => std::future::pending().await,
    }
}

/// How long a loop that panicked waits before it starts again, so a panic
/// on every pass does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs the loop `make` builds until it returns (it was told to stop), or,
/// when it panics, logs the panic and starts it again after `delay`: one bug
/// in one pass must not end scheduling until the process restarts.
async fn restart_on_panic<F, Fut>(stopped: watch::Receiver<bool>, delay: Duration, make: F)
where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make(stopped.clone())).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "the scheduler loop panicked; restarting it");
                metrics::counter!(crate::telemetry::SCHEDULER_RESTARTS_TOTAL).increment(1);
            }
        }
        let mut stopped = stopped.clone();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A panic cannot be provoked in the real loop from outside, so a loop
    /// that panics on its first two runs stands in for it.
    #[tokio::test]
    async fn a_loop_that_panics_is_started_again_until_told_to_stop() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let counted = Arc::clone(&runs);
        let supervisor = tokio::spawn(restart_on_panic(
            stopped,
            Duration::from_millis(10),
            move |mut stopped| {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(run >= 2, "run {run} panics");
                    let _ = stopped.wait_for(|stop| *stop).await;
                }
            },
        ));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        supervisor.await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two restarts, then it stopped"
        );
    }
}
