//! The scrub: scheduled verification, so damage is found while a good copy
//! can still be made, not on the day of a restore.
//!
//! Each backup is verified at least once per interval, counted from its
//! last verification (or its creation, before the first): backups written
//! at different times come due at different times, which spreads the
//! reads out. One verification runs at a time, and it holds one of the
//! copy permits, so the scrub never adds more I/O than one backup does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Backups;
use crate::store::backups as catalog;

/// The longest the scrub sleeps before looking again: files other tools
/// drop in may be due at once.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How long a backup that could not be verified (locked, unreadable) is
/// passed over before it is tried again, so it does not hold up the rest.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long the scrub waits after its catalog query failed.
const QUERY_RETRY: Duration = Duration::from_secs(10);

/// Verifies every backup at least once per `every` until `stop` fires.
pub async fn run(backups: Arc<Backups>, every: Duration, stop: CancellationToken) {
    let Ok(interval) = chrono::Duration::from_std(every) else {
        tracing::error!(
            ?every,
            "the verify interval is out of range; the scrub does not run"
        );
        return;
    };
    tracing::info!(?every, "scheduled verification runs");
    // Backups that could not be verified, with when to try them again.
    let mut deferred: HashMap<String, Instant> = HashMap::new();
    while !stop.is_cancelled() {
        deferred.retain(|_, until| *until > Instant::now());
        let passed_over: Vec<String> = deferred.keys().cloned().collect();
        let wait = match catalog::least_recently_verified(backups.db.reads(), &passed_over).await {
            Ok(Some(backup)) => {
                let due = backup.last_verified_at.unwrap_or(backup.created_at) + interval;
                match (due - Utc::now()).to_std() {
                    // Due (the difference is negative): verify it now.
                    Err(_) => {
                        if let Err(e) = backups.scrub_one(&backup, interval).await {
                            tracing::warn!(file = %backup.filename, error = %e, "cannot verify a backup; trying the others first");
                            deferred.insert(backup.filename, Instant::now() + RETRY_AFTER);
                        }
                        continue;
                    }
                    Ok(until_due) => until_due.min(MAX_IDLE),
                }
            }
            Ok(None) => MAX_IDLE,
            Err(e) => {
                tracing::warn!(error = %e, "the scrub cannot read the catalog");
                QUERY_RETRY
            }
        };
        backups.refresh_damaged_gauge().await;
        tokio::select! {
            () = tokio::time::sleep(wait.min(every)) => {}
            () = stop.cancelled() => return,
        }
    }
}
