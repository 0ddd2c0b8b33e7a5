//! `backup.v1.BackupFiles`.

use std::pin::Pin;

use backup_proto as pb;
use backup_proto::backup_files_server::BackupFiles;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::named;
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
        let messages = chunks.map(move |chunk| {
            chunk
                .map(|chunk| pb::DownloadBackupResponse {
                    chunk,
                    backup: meta.take(),
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
}
