//! `backup.v1.BackupFiles`.

use std::pin::Pin;

use backup_proto as pb;
use backup_proto::backup_files_server::BackupFiles;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::{named, timestamp};
use crate::backup::read::DownloadPart;
use crate::model::backup::Cursor;
use crate::paging::page_size;

/// Bytes per DownloadBackup message: well under the default 4 MiB limit.
const CHUNK_BYTES: usize = 256 * 1024;
const LISTING: &str = "backups";

pub struct BackupFilesApi {
    app: Shared,
}

impl BackupFilesApi {
    pub fn new(app: Shared) -> Self {
        Self { app }
    }
}

type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadBackupResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BackupFiles for BackupFilesApi {
    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::CreateBackupResponse>, Status> {
        let caller = self.app.caller(&request, "CreateBackup").await?;
        let custom = request.into_inner().custom_filename;
        let backup = self.app.backups.create(caller, custom.as_deref()).await?;
        Ok(Response::new(pb::CreateBackupResponse {
            backup: Some(backup.into()),
        }))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let caller = self.app.caller(&request, "ListBackups").await?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, 50, 1000)?;
        let after = self
            .app
            .page_tokens
            .cursor(LISTING, &req.page_token)?
            .map(|c| Cursor::decode(&c))
            .transpose()?;
        let backups = self.app.backups.list(caller, after.as_ref(), limit).await?;
        let next_page_token = match backups.last() {
            Some(last) if backups.len() as u64 == limit => self
                .app
                .page_tokens
                .issue(LISTING, &Cursor::after(last).encode()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListBackupsResponse {
            backups: backups.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn get_backup(
        &self,
        request: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::GetBackupResponse>, Status> {
        let caller = self.app.caller(&request, "GetBackup").await?;
        let req = request.into_inner();
        let named = named(&req.filename, req.owner_user_id)?;
        let backup = self.app.backups.get(caller, named).await?;
        Ok(Response::new(pb::GetBackupResponse {
            backup: Some(backup.into()),
        }))
    }

    type DownloadBackupStream = DownloadStream;

    async fn download_backup(
        &self,
        request: Request<pb::DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        let caller = self.app.caller(&request, "DownloadBackup").await?;
        let req = request.into_inner();
        let named = named(&req.filename, req.owner_user_id)?;
        let (backup, chunks) = self
            .app
            .backups
            .download(caller, named, CHUNK_BYTES)
            .await?;
        // The first message carries the metadata with the first chunk.
        let mut meta = Some(pb::Backup::from(backup));
        let messages = chunks.map(move |part| {
            part.map(|part| match part {
                DownloadPart::Bytes(chunk) => pb::DownloadBackupResponse {
                    chunk,
                    backup: meta.take(),
                    sha256: String::new(),
                },
                DownloadPart::End { sha256 } => pb::DownloadBackupResponse {
                    chunk: Vec::new(),
                    backup: meta.take(),
                    sha256,
                },
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        let caller = self.app.caller(&request, "RestoreBackup").await?;
        let req = request.into_inner();
        let named = named(&req.filename, req.owner_user_id)?;
        let (restored, pre) = self.app.backups.restore(caller, named).await?;
        Ok(Response::new(pb::RestoreBackupResponse {
            restored: Some(restored.into()),
            pre_restore_backup: Some(pre.into()),
        }))
    }

    async fn delete_backup(
        &self,
        request: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::DeleteBackupResponse>, Status> {
        let caller = self.app.caller(&request, "DeleteBackup").await?;
        let req = request.into_inner();
        let named = named(&req.filename, req.owner_user_id)?;
        self.app.backups.delete(caller, named, req.force).await?;
        Ok(Response::new(pb::DeleteBackupResponse {}))
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::VerifyBackupResponse>, Status> {
        let caller = self.app.caller(&request, "VerifyBackup").await?;
        let req = request.into_inner();
        let named = named(&req.filename, req.owner_user_id)?;
        let backup = self.app.backups.verify_named(caller, named).await?;
        Ok(Response::new(pb::VerifyBackupResponse {
            backup: Some(backup.into()),
        }))
    }

    async fn prune_repository(
        &self,
        request: Request<pb::PruneRepositoryRequest>,
    ) -> Result<Response<pb::PruneRepositoryResponse>, Status> {
        let caller = self.app.caller(&request, "PruneRepository").await?;
        let pruned = self.app.backups.prune(caller).await?;
        Ok(Response::new(pb::PruneRepositoryResponse {
            stored_bytes_before: saturating(pruned.bytes_before),
            stored_bytes_after: saturating(pruned.bytes_after),
            packs_deleted: saturating(pruned.packs_deleted),
            packs_written: saturating(pruned.packs_written),
            unreadable_backups: pruned.unreadable,
        }))
    }

    async fn get_repository_stats(
        &self,
        request: Request<pb::GetRepositoryStatsRequest>,
    ) -> Result<Response<pb::GetRepositoryStatsResponse>, Status> {
        let caller = self.app.caller(&request, "GetRepositoryStats").await?;
        let stats = self.app.backups.repository_stats(caller).await?;
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let storage = &stats.storage;
        Ok(Response::new(pb::GetRepositoryStatsResponse {
            backups: saturating(stats.backups),
            logical_bytes: saturating(stats.logical_bytes),
            stored_bytes: saturating(storage.stored_bytes),
            chunks: saturating(storage.chunks),
            chunk_bytes: saturating(storage.chunk_bytes),
            packs: saturating(storage.packs),
            deduplication_ratio: ratio(stats.logical_bytes, storage.chunk_bytes),
            compression_ratio: ratio(storage.chunk_bytes, storage.stored_bytes),
            last_prune_at: stats.last_prune_at.map(timestamp),
            last_full_check_at: stats.last_full_check_at.map(timestamp),
        }))
    }
}

/// A count as protobuf's int64.
fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
