//! Typed client for the backup service.
//!
//! [`Client::connect`] takes a URL and a bearer token; each service has a
//! small client with plain Rust arguments ([`Client::backups`] and so on).
//! Errors keep the gRPC code and the decoded field violations. The protobuf
//! types are re-exported as [`proto`], so callers need not depend on tonic.

mod audit;
mod retention;
mod scheduler;

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

pub use audit::{Audit, AuditFilter, AuditPage, AuditStream};
pub use backup_proto as proto;
use backup_proto::backup_files_client::BackupFilesClient;
pub use retention::{Owners, Retention};
pub use tonic::Code;

pub use scheduler::{Scheduler, SettingsUpdate};
/// `grpc.health.v1` types.
pub use tonic_health::pb as proto_health;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a non-OK status.
    #[error("{code:?}: {message}")]
    Status {
        code: Code,
        message: String,
        /// `google.rpc.BadRequest` field violations: (field, description).
        violations: Vec<(String, String)>,
    },
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("download of {filename} failed its sha256 check (expected {expected}, got {actual})")]
    ChecksumMismatch {
        filename: String,
        expected: String,
        actual: String,
    },
    #[error("the server sent {0}")]
    Protocol(String),
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let violations = status
            .get_details_bad_request()
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect()
            })
            .unwrap_or_default();
        Self::Status {
            code: status.code(),
            message: status.message().to_owned(),
            violations,
        }
    }
}

impl Error {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The fields the server named as invalid.
    pub fn violated_fields(&self) -> Vec<&str> {
        match self {
            Self::Status { violations, .. } => violations.iter().map(|(f, _)| f.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An authenticated channel to a backup server.
pub(crate) type Authed = InterceptedService<Channel, Bearer>;

/// A connection to the backup service.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    bearer: Bearer,
}

impl Client {
    /// Connects to `url` (`http://host:port`, or `https://` with the
    /// system's roots); `token` may be empty for health checks only.
    pub async fn connect(url: &str, token: &str) -> Result<Self> {
        Self::connect_with(url, token, None).await
    }

    /// Connects trusting `ca_pem` (a PEM CA bundle) for an `https://` URL.
    pub async fn connect_with(url: &str, token: &str, ca_pem: Option<Vec<u8>>) -> Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?;
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let bearer = if token.is_empty() {
            Bearer(None)
        } else {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Error::InvalidToken("not printable ASCII".into()))?;
            Bearer(Some(value))
        };
        Ok(Self { channel, bearer })
    }

    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel.clone(), self.bearer.clone())
    }

    /// `backup.v1.BackupFiles`.
    pub fn backups(&self) -> Backups {
        Backups(BackupFilesClient::new(self.authed()))
    }

    /// `backup.v1.BackupScheduler`.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler(backup_proto::backup_scheduler_client::BackupSchedulerClient::new(self.authed()))
    }

    /// `backup.v1.Retention`.
    pub fn retention(&self) -> Retention {
        Retention::new(self.authed())
    }

    /// `backup.v1.AuditLog`.
    pub fn audit(&self) -> Audit {
        Audit(backup_proto::audit_log_client::AuditLogClient::new(
            self.authed(),
        ))
    }

    /// `grpc.health.v1.Health`.
    pub async fn health(&self, service: &str) -> Result<ServingStatus> {
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }
}

/// `backup.v1.BackupFiles`: create, list, get, download, restore, delete.
#[derive(Clone)]
pub struct Backups(BackupFilesClient<Authed>);

pub(crate) fn present<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| Error::Protocol(format!("a response without {what}")))
}

impl Backups {
    pub async fn create(&mut self, custom_filename: Option<&str>) -> Result<proto::Backup> {
        let response = self
            .0
            .create_backup(proto::CreateBackupRequest {
                custom_filename: custom_filename.map(str::to_owned),
            })
            .await?;
        present(response.into_inner().backup, "a backup")
    }

    /// One page: the backups and the next page token (empty on the last).
    pub async fn list_page(
        &mut self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<proto::Backup>, String)> {
        let page = self
            .0
            .list_backups(proto::ListBackupsRequest {
                page_size,
                page_token: page_token.to_owned(),
            })
            .await?
            .into_inner();
        Ok((page.backups, page.next_page_token))
    }

    /// Every page, newest first.
    pub async fn list_all(&mut self) -> Result<Vec<proto::Backup>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self.list_page(0, &token).await?;
            all.extend(page);
            if next.is_empty() {
                return Ok(all);
            }
            token = next;
        }
    }

    pub async fn get(&mut self, filename: &str) -> Result<proto::Backup> {
        let response = self
            .0
            .get_backup(proto::GetBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: None,
            })
            .await?;
        present(response.into_inner().backup, "a backup")
    }

    /// Downloads a backup to `dest`, checking its sha256; `progress` gets
    /// (bytes so far, total) after each chunk. The file appears at `dest`
    /// only once complete and verified.
    pub async fn download_to(
        &mut self,
        filename: &str,
        dest: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<proto::Backup> {
        let mut stream = self
            .0
            .download_backup(proto::DownloadBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: None,
            })
            .await?
            .into_inner();
        // Beside the destination, so the final rename stays on one filesystem.
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".part");
        let partial = PathBuf::from(partial);
        let mut file = tokio::fs::File::create(&partial).await?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut meta = None;
        let mut received = 0u64;
        let outcome = async {
            while let Some(message) = stream.message().await? {
                if let Some(backup) = message.backup {
                    meta = Some(backup);
                }
                let total = meta.as_ref().map_or(0, |b| b.size_bytes.max(0) as u64);
                hasher.update(&message.chunk);
                file.write_all(&message.chunk).await?;
                received += message.chunk.len() as u64;
                progress(received, total);
            }
            file.sync_all().await?;
            let backup = present(meta.take(), "the backup's metadata")?;
            let actual = hex::encode(hasher.finish());
            if actual != backup.sha256 {
                return Err(Error::ChecksumMismatch {
                    filename: filename.to_owned(),
                    expected: backup.sha256,
                    actual,
                });
            }
            Ok(backup)
        }
        .await;
        match outcome {
            Ok(backup) => {
                tokio::fs::rename(&partial, dest).await?;
                Ok(backup)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    /// Restores a backup; returns (restored, pre-restore backup).
    pub async fn restore(&mut self, filename: &str) -> Result<(proto::Backup, proto::Backup)> {
        let response = self
            .0
            .restore_backup(proto::RestoreBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: None,
            })
            .await?
            .into_inner();
        Ok((
            present(response.restored, "the restored backup")?,
            present(response.pre_restore_backup, "the pre-restore backup")?,
        ))
    }

    pub async fn delete(&mut self, filename: &str, force: bool) -> Result<()> {
        self.0
            .delete_backup(proto::DeleteBackupRequest {
                filename: filename.to_owned(),
                force,
                owner_user_id: None,
            })
            .await?;
        Ok(())
    }

    /// The raw generated client, for calls the wrapper does not cover.
    pub fn raw(&mut self) -> &mut BackupFilesClient<Authed> {
        &mut self.0
    }
}
