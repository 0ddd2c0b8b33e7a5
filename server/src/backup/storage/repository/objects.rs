//! Where the repository's objects live: a local directory or an
//! S3-compatible bucket, through the `object_store` crate, with the few
//! operations the repository needs and errors in the service's terms.

use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use percent_encoding::percent_decode_str;

use crate::backup::storage::local::WRITE_BYTES;
use crate::error::{Error, Result};

/// Attempts of a put before its error is returned. `object_store` does
/// not retry a conditional put (it is not idempotent), so a connection
/// error is retried here, and a retry that finds the object reads it back.
const PUT_ATTEMPTS: usize = 3;

/// How long one request to S3 is retried before its error is returned:
/// long enough to ride out a dropped connection, short enough that a
/// store that is down fails a backup (or the server's start) in seconds,
/// not the 3 minutes `object_store` would wait by default.
const S3_RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// An object listed: its name below the listed prefix, size and time.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
    /// Changes with every write of the object.
    pub version: String,
}

impl Listed {
    fn new(name: String, meta: object_store::ObjectMeta) -> Self {
        Self {
            name,
            size: meta.size,
            modified: meta.last_modified,
            version: format!(
                "{}:{}:{}",
                meta.e_tag.unwrap_or_default(),
                meta.size,
                meta.last_modified.timestamp_micros()
            ),
        }
    }
}

/// What a create-if-absent put found.
enum Created {
    Written,
    /// Something was there; `retried`: found by a retry, so perhaps
    /// written by an earlier attempt.
    Existed {
        retried: bool,
    },
}

/// `bytes` as a put's payload, in pieces that share its buffer: the local
/// backend writes each piece with one `write`, so they are no larger than
/// the server's other writes to local files ([`WRITE_BYTES`]).
fn payload(bytes: Vec<u8>) -> PutPayload {
    let bytes = bytes::Bytes::from(bytes);
    (0..bytes.len())
        .step_by(WRITE_BYTES)
        .map(|at| bytes.slice(at..bytes.len().min(at + WRITE_BYTES)))
        .collect()
}

/// The repository's object store.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The repository's URL as given, for messages.
    pub url: String,
    /// A local repository's directory (`None`: the objects leave this
    /// machine), which is never recreated behind the operator's back:
    /// gone, it is more often an unmounted volume than an empty repository.
    local_dir: Option<std::path::PathBuf>,
}

impl Objects {
    /// The store at `url`: a path or `file://` URL (a directory, created
    /// if missing; writes are fsynced), or `s3://bucket/prefix`, configured
    /// by `aws`, the standard `AWS_*` environment variables (endpoint,
    /// region, keys, `AWS_ALLOW_HTTP`) as name and value.
    pub fn open(url: &str, aws: &[(String, String)]) -> Result<Self> {
        let bad = |why: String| Error::FailedPrecondition(format!("--repository {url:?}: {why}"));
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("names no bucket (s3://bucket/prefix)".into()));
            }
            // The S3 client's TLS uses the process's rustls provider: ring,
            // as tonic's (an error means one is installed already).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let configured = aws.iter().filter_map(|(name, value)| {
                let key = name.to_ascii_lowercase().parse().ok()?;
                Some((key, value))
            });
            let s3 = configured
                .fold(AmazonS3Builder::new(), |s3, (key, value)| {
                    s3.with_config(key, value)
                })
                .with_bucket_name(bucket)
                .with_retry(RetryConfig {
                    max_retries: 4,
                    retry_timeout: S3_RETRY_TIMEOUT,
                    ..RetryConfig::default()
                })
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let store: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                prefix => Arc::new(PrefixStore::new(s3, prefix)),
            };
            return Ok(Self {
                store,
                url: url.to_owned(),
                local_dir: None,
            });
        }
        let path = match url.strip_prefix("file://") {
            Some(path) => std::path::PathBuf::from(path),
            None if url.contains("://") => {
                return Err(bad(
                    "is neither a path, a file:// URL nor an s3:// URL".into()
                ));
            }
            None => std::path::PathBuf::from(url),
        };
        let dir = super::super::local::create_dir(&path).map_err(|e| bad(e.to_string()))?;
        let local = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| bad(e.to_string()))?
            .with_fsync(true);
        Ok(Self {
            store: Arc::new(local),
            url: url.to_owned(),
            local_dir: Some(dir),
        })
    }

    /// Whether the objects leave this machine (anything but a local path).
    pub fn remote(&self) -> bool {
        self.local_dir.is_none()
    }

    /// Fails with FAILED_PRECONDITION when a local repository's directory
    /// is gone: the store would create it again on the next write, and
    /// read every object in it as missing (damage) meanwhile.
    fn check_dir(&self) -> Result<()> {
        match &self.local_dir {
            Some(dir) if !dir.is_dir() => Err(Error::FailedPrecondition(
                "the repository directory does not exist; recreate it (or restart the server)"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// The object at `path`, or `None` if there is none.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.check_dir()?;
        let got = match self.store.get(&Path::from(path)).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            got => got.map_err(|e| self.error(e))?,
        };
        Ok(Some(got.bytes().await.map_err(|e| self.error(e))?.into()))
    }

    /// Bytes `range` of the object at `path`; `what` names it when it is
    /// missing or shorter (DATA_LOSS: the repository's index said they are
    /// there).
    pub async fn get_range(&self, path: &str, range: Range<u64>, what: &str) -> Result<Vec<u8>> {
        self.check_dir()?;
        let (want, end) = (range.end - range.start, range.end);
        let failed = match self.store.get_range(&Path::from(path), range).await {
            Ok(bytes) if bytes.len() as u64 == want => return Ok(bytes.into()),
            Ok(_) => return Err(Error::DataLoss(format!("{what} is cut short"))),
            Err(e) => e,
        };
        // A missing object, or a range past the end of a truncated one,
        // fails differently on each store: its size tells.
        match self.head(path).await? {
            None => Err(Error::DataLoss(format!("{what} is missing"))),
            Some(listed) if listed.size < end => {
                Err(Error::DataLoss(format!("{what} is cut short")))
            }
            Some(_) => Err(self.error(failed)),
        }
    }

    /// Writes `bytes` under `path` only if nothing is there:
    /// [`Error::AlreadyExists`] when other bytes are.
    pub async fn put_new(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        match self.create(path, payload(bytes.clone())).await? {
            Created::Written => Ok(()),
            // Ours if an earlier attempt got through before its connection
            // failed.
            Created::Existed { retried: true }
                if self.get(path).await?.as_ref() == Some(&bytes) =>
            {
                Ok(())
            }
            Created::Existed { .. } => Err(Error::AlreadyExists(format!("{path} already exists"))),
        }
    }

    /// Writes content-addressed `bytes` under `path`: what is already there
    /// holds the same bytes, so it is kept.
    pub async fn put_content(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.create(path, payload(bytes)).await.map(|_| ())
    }

    /// A create-if-absent put of `payload` under `path`, retried after a
    /// connection error.
    async fn create(&self, path: &str, payload: PutPayload) -> Result<Created> {
        self.check_dir()?;
        let location = Path::from(path);
        let mut attempt = 1;
        loop {
            let opts = PutOptions::from(PutMode::Create);
            match self.store.put_opts(&location, payload.clone(), opts).await {
                Ok(_) => return Ok(Created::Written),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Ok(Created::Existed {
                        retried: attempt > 1,
                    });
                }
                Err(e) if self.remote() && attempt < PUT_ATTEMPTS && retryable(&e) => {
                    tracing::warn!(object = %path, error = %e, "retrying a put");
                    attempt += 1;
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// The names of every object under `prefix`.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect())
    }

    /// Every object under `prefix` (a directory such as `manifests`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.check_dir()?;
        let prefix_path = Path::from(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix_path))
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        Ok(metas
            .into_iter()
            .filter_map(|meta| {
                // Listed parts come percent-encoded (`~` as `%7E`); the
                // paths given to the other calls are encoded by them.
                let name = meta
                    .location
                    .prefix_match(&prefix_path)?
                    .map(|part| {
                        percent_decode_str(part.as_ref())
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                Some(Listed::new(name, meta))
            })
            .collect())
    }

    /// The object at `path`'s listing, or `None` if there is none.
    pub async fn head(&self, path: &str) -> Result<Option<Listed>> {
        self.check_dir()?;
        match self.store.head(&Path::from(path)).await {
            Ok(meta) => Ok(Some(Listed::new(path.to_owned(), meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Removes the object at `path`; one already gone is no error.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.check_dir()?;
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// An error of the store, in the service's terms: access refused or a
    /// missing bucket is the operator's to fix; anything else may pass.
    /// A local directory's errors are the file system's: a full disk,
    /// a read-only or vanished directory, or an I/O error (whose details,
    /// paths among them, go to the log only).
    fn error(&self, e: object_store::Error) -> Error {
        if self.local_dir.is_some() {
            return self.check_dir().err().unwrap_or_else(|| local_error(e));
        }
        let text = e.to_string();
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::FailedPrecondition(format!(
                "the repository {} refuses access: {text}",
                self.url
            )),
            object_store::Error::NotFound { .. } => Error::NotFound(text),
            _ if text.contains("NoSuchBucket") => Error::FailedPrecondition(format!(
                "the repository's bucket does not exist ({})",
                self.url
            )),
            _ => Error::Unavailable(format!("the repository {}: {text}", self.url)),
        }
    }
}

/// An error of the local file system store, by the I/O error under it.
fn local_error(e: object_store::Error) -> Error {
    use std::io::ErrorKind;
    let text = e.to_string();
    if let object_store::Error::NotFound { .. } = e {
        return Error::NotFound(text);
    }
    let mut cause = std::error::Error::source(&e);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => {
                    Error::FailedPrecondition(format!(
                        "the repository directory is not writable: {io}"
                    ))
                }
                kind => Error::Io(std::io::Error::new(kind, text)),
            };
        }
        cause = error.source();
    }
    Error::Internal(text)
}

/// Whether a failed request may have failed on the way (a connection
/// error), rather than being refused.
fn retryable(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_holds_the_bytes_in_pieces_no_larger_than_a_write() {
        for len in [0, 1, WRITE_BYTES, WRITE_BYTES + 1, 3 * WRITE_BYTES - 7] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let payload = payload(bytes.clone());
            assert!(payload.iter().all(|piece| piece.len() <= WRITE_BYTES));
            assert_eq!(payload.iter().count(), len.div_ceil(WRITE_BYTES));
            assert_eq!(
                payload.iter().flatten().copied().collect::<Vec<u8>>(),
                bytes
            );
        }
    }
}
