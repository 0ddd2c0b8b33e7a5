//! Damage found in one backup, looked for in all: where backups share
//! stored bytes (a repository's chunks), a damaged chunk is damage to
//! every backup that holds it. A sweep reads the whole storage once, in
//! the background, and marks each backup it finds damaged.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::verify::Trigger;
use super::{Backups, SYSTEM_OWNER};
use crate::error::Error;
use crate::store::backups as catalog;

impl Backups {
    /// Starts the sweeper that [`Backups::sweep_soon`] wakes; it ends with
    /// the last handle on `self`.
    pub fn start_damage_sweeper(self: &Arc<Self>) {
        // One pending wake-up at most: a sweep covers all damage before it.
        let (wake, mut woken) = mpsc::channel(1);
        if self.sweeper.set(wake).is_err() {
            return;
        }
        let backups = Arc::downgrade(self);
        tokio::spawn(async move {
            while woken.recv().await.is_some() {
                let Some(backups) = backups.upgrade() else {
                    return;
                };
                backups.sweep().await;
            }
        });
    }

    /// Asks for a sweep, after damage was found in a backup.
    pub(super) fn sweep_soon(&self) {
        if let Some(wake) = self.sweeper.get() {
            let _ = wake.try_send(());
        }
    }

    async fn sweep(&self) {
        let found = match self.storage.damaged_backups().await {
            Ok(Some(found)) => found,
            // Backups share nothing: each is checked on its own.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for shared damage");
                return;
            }
        };
        for (filename, why) in found {
            match catalog::by_filename(self.db.reads(), &filename).await {
                Ok(Some(backup)) if backup.damage.is_none() => {
                    self.found_damaged(
                        &backup,
                        Error::DataLoss(why),
                        Trigger::Shared,
                        SYSTEM_OWNER,
                    )
                    .await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(file = %filename, error = %e, "cannot mark shared damage"),
            }
        }
    }
}
