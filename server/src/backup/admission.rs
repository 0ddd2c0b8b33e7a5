//! Admission control: which backups may start copying, and which may
//! exist at all. Copies (backups and restores) hold one of a bounded number
//! of permits; waiting for one is bounded too; a name is unique per owner,
//! and a non-admin's manual backups have a quota.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{SemaphorePermit, TryAcquireError};
use tokio_util::sync::CancellationToken;

use super::{Backups, NewBackup, cancelled};
use crate::error::{Error, Result, quote};
use crate::store::backups as catalog;

/// How many backups may wait for each copy permit.
pub const WAITING_PER_COPY: usize = 4;

/// Counts a backup as waiting for a copy permit while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backups {
    /// A copy permit. Waiting for one is bounded: beyond
    /// [`WAITING_PER_COPY`] waiters per permit a backup is turned away at
    /// once rather than queued without limit. `cancel` ends the wait.
    pub(super) async fn copy_permit(
        &self,
        cancel: &CancellationToken,
    ) -> Result<SemaphorePermit<'_>> {
        match self.copies.try_acquire() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(shutting_down()),
            Err(TryAcquireError::NoPermits) => {}
        }
        let limit = WAITING_PER_COPY * self.max_copies as usize;
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if ahead >= limit {
            return Err(Error::ResourceExhausted(
                "too many backups in progress; retry later".into(),
            ));
        }
        tokio::select! {
            permit = self.copies.acquire() => permit.map_err(|_| shutting_down()),
            () = cancel.cancelled() => Err(cancelled()),
        }
    }

    /// A copy permit for work that waits its turn without a bound
    /// (restores, verifications).
    pub(super) async fn queued_permit(&self) -> Result<SemaphorePermit<'_>> {
        self.copies.acquire().await.map_err(|_| shutting_down())
    }

    /// Fails when `new`'s name is taken among its owner's backups, or its
    /// owner has as many manual backups as the quota allows.
    pub(super) async fn check_admissible(&self, new: &NewBackup) -> Result<()> {
        if catalog::by_name(self.db.reads(), new.owner_user_id, &new.name)
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(format!(
                "you already have a backup named {}",
                quote(&new.name)
            )));
        }
        if let Some(quota) = new.manual_quota {
            let have = catalog::count_manual(self.db.reads(), new.owner_user_id).await?;
            if have >= u64::from(quota) {
                return Err(Error::ResourceExhausted(format!(
                    "you have {have} manual backups, the most this server allows \
                     (--max-manual-backups-per-user {quota}); delete some first"
                )));
            }
        }
        Ok(())
    }
}

/// The error of work refused because the server is shutting down.
fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down".into())
}
