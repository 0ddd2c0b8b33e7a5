//! Reading backups: finding the one a request names (and whether the
//! caller may see it), listing, downloading as a checked byte stream,
//! restoring into the source; and the catalog reads retention plans with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::sqlite::Content;
use super::storage::ByteStream;
use super::verify::{self, Trigger};
use super::{Backups, Named, NewBackup, SYSTEM_OWNER, naming, source};
use crate::audit::NewEvent;
use crate::auth::Caller;
use crate::error::{Error, Result, quote};
use crate::model::backup::{Backup, BackupKind, Cursor, Entry};
use crate::store::backups as catalog;

/// One item of a download.
#[derive(Debug, PartialEq, Eq)]
pub enum DownloadPart {
    /// The next bytes, in order.
    Bytes(Vec<u8>),
    /// The end: the SHA-256 (lowercase hex) of every byte streamed, all of
    /// them checked against the recorded digest.
    End { sha256: String },
}

/// A download: its bytes, then its end; an error ends it early.
pub type DownloadStream = std::pin::Pin<Box<dyn Stream<Item = Result<DownloadPart>> + Send>>;

impl Backups {
    /// The backup a request names, if the caller may see it. Names are
    /// looked up among the caller's own backups, so another user's backup of
    /// the same name is never found, and its existence never shown. Naming
    /// another owner needs an admin. An admin's bare name that is not one of
    /// their own finds the one backup of that name, if only one owner has it.
    pub async fn get(&self, caller: Caller, named: Named<'_>) -> Result<Backup> {
        let name = named.name;
        let not_found = || Error::NotFound(format!("no backup named {}", quote(name)));
        if !naming::is_backup_filename(name) {
            return Err(not_found());
        }
        if let Some(owner) = named.owner {
            if !caller.can_access(owner) {
                return Err(Error::PermissionDenied(
                    "only an admin may name another user's backup".into(),
                ));
            }
            return catalog::by_name(self.db.reads(), owner, name)
                .await?
                .ok_or_else(not_found);
        }
        if let Some(mine) = catalog::by_name(self.db.reads(), caller.user_id, name).await? {
            return Ok(mine);
        }
        if !caller.is_admin {
            return Err(not_found());
        }
        let mut all = catalog::all_named(self.db.reads(), name).await?;
        match all.len() {
            0 => Err(not_found()),
            1 => Ok(all.remove(0)),
            n => Err(Error::invalid(
                "owner_user_id",
                format!("{n} owners have a backup named {}; say whose", quote(name)),
            )),
        }
    }

    /// One page of the backups the caller may see, newest first, after
    /// adopting files other tools dropped into the storage.
    pub async fn list(
        &self,
        caller: Caller,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Vec<Backup>> {
        self.reconcile_if_changed().await?;
        let owner = (!caller.is_admin).then_some(caller.user_id);
        catalog::page(self.db.reads(), owner, after, limit).await
    }

    /// DownloadBackup: the backup and its bytes in chunks of at most
    /// `chunk_bytes` (at least one, empty for an empty file), checked
    /// against the catalog as they are read. A damaged backup fails with
    /// DATA_LOSS: before the first chunk when it is known or its size is
    /// wrong, else in place of the end of the stream. Admin only, unless
    /// the operator allows user downloads: a backup holds every user's rows
    /// of the source. (Another user's backup is NOT_FOUND first, as
    /// everywhere.)
    pub async fn download(
        self: &Arc<Self>,
        caller: Caller,
        named: Named<'_>,
        chunk_bytes: usize,
    ) -> Result<(Backup, DownloadStream)> {
        let opened = async {
            let backup = self.get(caller, named).await?;
            if !caller.is_admin && !self.limits.allow_user_downloads {
                return Err(Error::PermissionDenied(
                    "a backup holds the whole source database, every user's rows, so only an \
                     admin may download it (the operator can allow users with \
                     --allow-user-downloads)"
                        .into(),
                ));
            }
            verify::refuse_damaged(&backup)?;
            let facts = verify::recorded_facts(&backup);
            match self
                .storage
                .open(&backup.filename, &facts, chunk_bytes)
                .await
            {
                Ok(chunks) => Ok((backup, chunks)),
                // Deleted meanwhile: as if it did not exist.
                Err(Error::NotFound(_)) => Err(Error::NotFound(format!(
                    "no backup named {}",
                    quote(&backup.name)
                ))),
                Err(e) => Err(self
                    .found_damaged(&backup, e, Trigger::Download, caller.user_id)
                    .await),
            }
        }
        .await;
        let event =
            NewEvent::new("backup_files.download", caller.user_id).resource("backup", named.name);
        // Matched rather than audited by reference: the stream need not be
        // `Sync`.
        let (backup, chunks) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.audit.record_or_log(event.failed(&e)).await;
                return Err(e);
            }
        };
        let event = event
            .subject(backup.owner_user_id)
            .details(json!({ "size": backup.size_bytes }));
        self.audit.record_or_log(event).await;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(Arc::clone(self).stream(backup.clone(), chunks, caller, tx));
        Ok((backup, Box::pin(ReceiverStream::new(rx))))
    }

    /// Sends a download's chunks to `tx` until the end (with the bytes'
    /// SHA-256), a damage found (recorded, sent as the last item), or the
    /// client leaving.
    async fn stream(
        self: Arc<Self>,
        backup: Backup,
        mut chunks: ByteStream,
        caller: Caller,
        tx: mpsc::Sender<Result<DownloadPart>>,
    ) {
        // The storage checks every byte against the recorded digest; a
        // SHA-256 not recorded (the repository's backups) is computed here.
        let mut sha256 = backup
            .sha256
            .is_empty()
            .then(|| ring::digest::Context::new(&ring::digest::SHA256));
        loop {
            let (message, last) = match chunks.next().await {
                None => {
                    let sha256 = match sha256.take() {
                        Some(computed) => hex::encode(computed.finish()),
                        None => backup.sha256.clone(),
                    };
                    (Ok(DownloadPart::End { sha256 }), true)
                }
                Some(Ok(chunk)) => {
                    if let Some(hasher) = &mut sha256 {
                        hasher.update(&chunk);
                    }
                    (Ok(DownloadPart::Bytes(chunk)), false)
                }
                Some(Err(e)) => {
                    let e = self
                        .found_damaged(&backup, e, Trigger::Download, caller.user_id)
                        .await;
                    (Err(e), true)
                }
            };
            // A failed send means the client went away.
            if tx.send(message).await.is_err() || last {
                return;
            }
        }
    }

    /// RestoreBackup: verify the backup against the catalog, check that the
    /// source can be written, snapshot it (protected), then replace the
    /// source's content. Admin only. A damaged backup is DATA_LOSS and
    /// nothing is touched or taken.
    pub async fn restore(
        self: &Arc<Self>,
        caller: Caller,
        named: Named<'_>,
    ) -> Result<(Backup, Backup)> {
        let result = async {
            caller.require_admin()?;
            let backup = self.get(caller, named).await?;
            let started = Instant::now();
            // The verified copy keeps the content even if the backup is
            // deleted meanwhile: what is restored is what was verified.
            let (backup, verified) = self
                .verify(&backup, Trigger::Restore, caller.user_id)
                .await?;
            let verified_in = started.elapsed();
            source::check_writable(self.source.clone())
                .await
                .map_err(|e| {
                    e.with_note("nothing was changed and no pre-restore backup was taken")
                })?;
            let pre = NewBackup::new(
                naming::pre_restore_filename(Utc::now()),
                SYSTEM_OWNER,
                BackupKind::PreRestore,
            );
            let restored_name = backup.name.clone();
            let pre = self
                .snapshot(pre, move |p| {
                    NewEvent::new("backup_files.pre_restore", caller.user_id)
                        .subject(SYSTEM_OWNER)
                        .resource("backup", &p.name)
                        .details(json!({ "restoring": restored_name, "size": p.size_bytes }))
                })
                .await?;
            let snapshot_in = started.elapsed() - verified_in;
            let replaced = async {
                let _permit = self.queued_permit().await?;
                source::restore(verified, self.source.clone()).await
            }
            .await;
            match replaced {
                Ok(rewritten) => {
                    tracing::info!(
                        backup = %backup.name,
                        pages_written = rewritten.pages_written,
                        verify_s = verified_in.as_secs_f64(),
                        pre_restore_s = snapshot_in.as_secs_f64(),
                        write_s = (started.elapsed() - verified_in - snapshot_in).as_secs_f64(),
                        "restored"
                    );
                    Ok((backup, pre, rewritten))
                }
                Err(e) => Err(e.with_note(&format!(
                    "the pre-restore backup {:?} taken before it is kept",
                    pre.name
                ))),
            }
        }
        .await;
        let mut event =
            NewEvent::new("backup_files.restore", caller.user_id).resource("backup", named.name);
        if let Ok((backup, _, _)) = &result {
            event = event.subject(backup.owner_user_id);
        }
        self.audit
            .record_outcome(event, &result, |(_, pre, rewritten)| {
                json!({
                    "pre_restore_backup": pre.name,
                    "pages_written": rewritten.pages_written,
                    "pages": rewritten.pages,
                })
            })
            .await;
        result.map(|(backup, pre, _)| (backup, pre))
    }

    /// Every backup's [`Entry`], in no particular order.
    pub async fn entries(&self) -> Result<Vec<Entry>> {
        catalog::entries(self.db.reads(), None).await
    }

    /// Every backup's [`Entry`] grouped by owner, optionally one owner's.
    pub async fn entries_by_owner(&self, owner: Option<i64>) -> Result<BTreeMap<i64, Vec<Entry>>> {
        catalog::entries_by_owner(self.db.reads(), owner).await
    }

    /// Whether a backup's bytes are catalogued under `filename`.
    pub async fn is_catalogued(&self, filename: &str) -> Result<bool> {
        Ok(catalog::by_filename(self.db.reads(), filename)
            .await?
            .is_some())
    }

    /// Each backup with what its bytes hold, by size and header.
    pub async fn contents(&self, entries: Vec<Entry>) -> Result<Vec<(Entry, Result<Content>)>> {
        let names = entries.iter().map(|e| e.filename.clone()).collect();
        let contents = self.storage.sniff(names).await?;
        Ok(entries.into_iter().zip(contents).collect())
    }
}
