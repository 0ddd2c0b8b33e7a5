//! `backup.v1.BackupFiles`: create, list, get, verify, download, restore,
//! delete.

use std::path::{Path, PathBuf};

use backup_proto::backup_files_client::BackupFilesClient;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::Streaming;

use crate::{Authed, Error, Result, present, proto};

/// `backup.v1.BackupFiles`: create, list, get, verify, download, restore,
/// delete.
///
/// The calls that name one backup (get, verify, download, restore, delete)
/// name one of the caller's own unless [`Backups::owned_by`] says whose:
/// names are unique per owner, so an admin names another user's backup with
/// its owner.
#[derive(Clone)]
pub struct Backups {
    client: BackupFilesClient<Authed>,
    owner: Option<i64>,
}

impl Backups {
    pub(crate) fn new(channel: Authed) -> Self {
        Self {
            client: BackupFilesClient::new(channel),
            owner: None,
        }
    }

    /// The same service, naming `owner`'s backups in get, verify, download,
    /// restore and delete; `None` is the caller (the default), `0` the
    /// system's protected backups. Create and list are not affected.
    ///
    /// ```no_run
    /// # async fn f(client: backup_client::Client) -> backup_client::Result<()> {
    /// let theirs = client.backups().owned_by(2).get("nightly.db").await?;
    /// # Ok(()) }
    /// ```
    pub fn owned_by(mut self, owner: impl Into<Option<i64>>) -> Self {
        self.owner = owner.into();
        self
    }

    pub async fn create(&mut self, custom_filename: Option<&str>) -> Result<proto::Backup> {
        let response = self
            .client
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
            .client
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
            .client
            .get_backup(proto::GetBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: self.owner,
            })
            .await?;
        present(response.into_inner().backup, "a backup")
    }

    /// Has the server check the backup's size, SHA-256 and integrity.
    /// A damaged backup is an [`Error::Status`] with [`crate::Code::DataLoss`]
    /// saying what is wrong (the server marks it damaged).
    pub async fn verify(&mut self, filename: &str) -> Result<proto::Backup> {
        let response = self
            .client
            .verify_backup(proto::VerifyBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: self.owner,
            })
            .await?;
        present(response.into_inner().backup, "a backup")
    }

    /// Downloads a backup to `dest`, checking its digest; `progress` gets
    /// (bytes so far, total) after each chunk. The file appears at `dest`
    /// only once complete and verified: it is written to `<dest>.part`
    /// and renamed. An existing regular file at `dest` is replaced; anything
    /// else there (a symlink, directory, device, FIFO or socket) is refused
    /// with [`Error::NotRegularFile`] before anything is downloaded.
    pub async fn download_to(
        &mut self,
        filename: &str,
        dest: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<proto::Backup> {
        ensure_replaceable(dest).await?;
        // Beside the destination, so the final rename stays on one filesystem.
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".part");
        let partial = PathBuf::from(partial);
        ensure_replaceable(&partial).await?;
        let stream = self.open_download(filename).await?;
        // A leftover of an interrupted download is replaced; create_new never
        // follows a symlink put there since the check.
        remove_if_exists(&partial).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .await?;
        let outcome = async {
            let backup = write_verified(stream, filename, &mut file, progress).await?;
            file.sync_all().await?;
            // The check again, for anything put at `dest` meanwhile.
            ensure_replaceable(dest).await?;
            tokio::fs::rename(&partial, dest).await?;
            Ok(backup)
        }
        .await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        outcome
    }

    /// Streams a backup into `writer` (flushed at the end), checking its
    /// digest; `progress` gets (bytes so far, total) after each chunk.
    /// Bytes are written as they arrive, so after an error (a failed
    /// stream, a failed write, a [`Error::ChecksumMismatch`]) what the
    /// writer received is not to be trusted.
    pub async fn download_to_writer<W: AsyncWrite + Unpin>(
        &mut self,
        filename: &str,
        writer: &mut W,
        progress: impl FnMut(u64, u64),
    ) -> Result<proto::Backup> {
        let stream = self.open_download(filename).await?;
        write_verified(stream, filename, writer, progress).await
    }

    async fn open_download(
        &mut self,
        filename: &str,
    ) -> Result<Streaming<proto::DownloadBackupResponse>> {
        Ok(self
            .client
            .download_backup(proto::DownloadBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: self.owner,
            })
            .await?
            .into_inner())
    }

    /// Restores a backup; returns (restored, pre-restore backup).
    pub async fn restore(&mut self, filename: &str) -> Result<(proto::Backup, proto::Backup)> {
        let response = self
            .client
            .restore_backup(proto::RestoreBackupRequest {
                filename: filename.to_owned(),
                owner_user_id: self.owner,
            })
            .await?
            .into_inner();
        Ok((
            present(response.restored, "the restored backup")?,
            present(response.pre_restore_backup, "the pre-restore backup")?,
        ))
    }

    pub async fn delete(&mut self, filename: &str, force: bool) -> Result<()> {
        self.client
            .delete_backup(proto::DeleteBackupRequest {
                filename: filename.to_owned(),
                force,
                owner_user_id: self.owner,
            })
            .await?;
        Ok(())
    }

    /// Prunes the backup storage (admin only).
    pub async fn prune_repository(&mut self) -> Result<proto::PruneRepositoryResponse> {
        Ok(self
            .client
            .prune_repository(proto::PruneRepositoryRequest {})
            .await?
            .into_inner())
    }

    /// What the backup storage holds (admin only).
    pub async fn repository_stats(&mut self) -> Result<proto::GetRepositoryStatsResponse> {
        Ok(self
            .client
            .get_repository_stats(proto::GetRepositoryStatsRequest {})
            .await?
            .into_inner())
    }

    /// The raw generated client, for calls the wrapper does not cover.
    pub fn raw(&mut self) -> &mut BackupFilesClient<Authed> {
        &mut self.client
    }
}

/// The digest a download is checked with: the backup's `blake3` where it
/// has one (the faster of the two), else SHA-256, against the backup's
/// `sha256` and the one the server sends with the last message.
enum Digest {
    Blake3(Box<blake3::Hasher>),
    Sha256(Box<ring::digest::Context>),
}

impl Digest {
    fn for_backup(backup: &proto::Backup) -> Self {
        match backup.blake3.is_empty() {
            false => Self::Blake3(Box::default()),
            true => Self::Sha256(Box::new(ring::digest::Context::new(&ring::digest::SHA256))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Blake3(hasher) => {
                hasher.update(bytes);
            }
            Self::Sha256(hasher) => hasher.update(bytes),
        }
    }
}

/// The one path every download takes: each chunk is hashed and written,
/// the writer flushed, and the digest compared with the backup's.
async fn write_verified<W: AsyncWrite + Unpin>(
    mut stream: Streaming<proto::DownloadBackupResponse>,
    filename: &str,
    writer: &mut W,
    mut progress: impl FnMut(u64, u64),
) -> Result<proto::Backup> {
    let mut digest: Option<Digest> = None;
    let mut meta: Option<proto::Backup> = None;
    let mut streamed_sha256 = String::new();
    let mut received = 0u64;
    while let Some(message) = stream.message().await? {
        if let Some(backup) = message.backup {
            digest.get_or_insert_with(|| Digest::for_backup(&backup));
            meta = Some(backup);
        }
        if !message.sha256.is_empty() {
            streamed_sha256 = message.sha256;
        }
        let total = meta.as_ref().map_or(0, |b| b.size_bytes.max(0) as u64);
        let digest = present(digest.as_mut(), "the backup's metadata")?;
        digest.update(&message.chunk);
        writer.write_all(&message.chunk).await?;
        received += message.chunk.len() as u64;
        progress(received, total);
    }
    writer.flush().await?;
    let backup = present(meta, "the backup's metadata")?;
    let mismatch = |digest, expected: &str, actual: &str| Error::ChecksumMismatch {
        filename: filename.to_owned(),
        digest,
        expected: expected.to_owned(),
        actual: actual.to_owned(),
    };
    match digest.unwrap_or_else(|| Digest::for_backup(&backup)) {
        Digest::Blake3(hasher) => {
            let actual = hasher.finalize().to_hex().to_string();
            if actual != backup.blake3 {
                return Err(mismatch("blake3", &backup.blake3, &actual));
            }
        }
        Digest::Sha256(hasher) => {
            let actual = hex::encode(hasher.finish());
            // The recorded one (empty where the server's storage did not
            // compute it) and the server's own of what it streamed (empty
            // from older servers): at least one, and each must match.
            let known = [
                ("sha256", &backup.sha256),
                ("streamed sha256", &streamed_sha256),
            ];
            let mut checked = known.iter().filter(|(_, expected)| !expected.is_empty());
            match checked.find(|(_, expected)| **expected != actual) {
                Some((digest, expected)) => return Err(mismatch(digest, expected, &actual)),
                None if known.iter().all(|(_, expected)| expected.is_empty()) => {
                    return Err(mismatch("sha256", "", &actual));
                }
                None => {}
            }
        }
    }
    Ok(backup)
}

/// Ok when nothing is at `path` or a regular file is (never following a
/// symlink); [`Error::NotRegularFile`] otherwise, since renaming a download
/// over it would replace it.
async fn ensure_replaceable(path: &Path) -> Result<()> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(meta) => Err(Error::NotRegularFile {
            path: path.to_owned(),
            kind: file_kind(meta.file_type()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn remove_if_exists(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// What a non-regular file is, for messages.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        return "symbolic link";
    }
    if file_type.is_dir() {
        return "directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_socket() {
            return "socket";
        }
    }
    "special file"
}
