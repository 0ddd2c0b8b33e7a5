//! [`Repository`]: backups as manifests over content-addressed chunks, in
//! a local directory or an S3-compatible bucket (`--repository`).
//!
//! A snapshot is cut at SQLite page boundaries; each page is a chunk,
//! addressed by its BLAKE3 hash (keyed when encrypted) and stored once for
//! the whole repository, whichever backup or owner it came from. New chunks
//! go into packs (zstd frames of a few chunks, each sealed) with an index
//! saying where each chunk is. A backup's manifest, written last and only
//! if absent, lists its chunks (through chunk lists, so backups of the same
//! bytes share those too): a backup exists exactly when its manifest does.
//! `docs/REPOSITORY.md` is the format, enough to rebuild a backup without
//! this code.
//!
//! Objects: `config`, `keys/<id>`, `data/<2 hex>/<pack id>`,
//! `index/<id>`, `manifests/<name>`, `deleting/<name>`. The local
//! directory (`--backups-dir`) keeps scratch files and the lock.

mod check;
mod digest;
mod format;
pub mod keys;
mod objects;
mod prune;
mod read;
mod write;
mod writers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use self::check::Checked;
use self::digest::PageMemo;
pub use self::format::Manifest;
use self::format::{Config, Id, Index, Location};
use self::keys::{KeyFile, Keys};
use self::objects::Objects;
use self::read::Rebuild;
use self::write::{Known, KnownChunks};
pub use self::writers::{ReplicaGuard, ReplicaLock};
use self::writers::{Writers, Writing};
use super::checked::{self, Checker, size_mismatch};
use super::local::{self, TempFile};
use super::{
    BackupStorage, ByteStream, ChangeStamp, ContentFacts, Described, Listing, NewBytes, Pruned,
    Staged, StagedCopy, StorageLock, StorageStats, Verified, VerifiedCopy,
};
use crate::backup::sqlite::Content;
use crate::backup::{naming, sqlite};
use crate::blocking::blocking;
use crate::error::{Error, Result};

/// How to open a repository.
pub struct Options<'a> {
    /// `--repository`: a path, `file://` URL or `s3://bucket/prefix`.
    pub url: &'a str,
    /// `--repository-key-file`.
    pub key_file: Option<&'a Path>,
    /// `--allow-unencrypted-remote`.
    pub allow_unencrypted_remote: bool,
    /// The local directory for scratch files and the lock.
    pub local_dir: &'a Path,
    /// The `AWS_*` variables (name, value) an `s3://` repository is
    /// configured by: the process's environment, as `object_store` reads it.
    pub aws_env: Vec<(String, String)>,
    /// What keeps prunes and writers apart across hosts, if anything must.
    pub replicas: Option<Arc<dyn ReplicaLock>>,
}

/// The process's `AWS_*` environment variables, for [`Options::aws_env`].
pub fn aws_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("AWS_"))
        .collect()
}

/// A content-addressed backup repository.
pub struct Repository {
    inner: Arc<Inner>,
}

/// What every operation shares.
pub struct Inner {
    objects: Objects,
    keys: Keys,
    /// Scratch files and the lock file.
    local_dir: PathBuf,
    /// Keeps prunes and snapshots apart, across processes on this host.
    writers: Writers,
    /// Counts this process's changes to the set of names.
    names_changed: AtomicU64,
    /// Taken by each snapshot of a live source, one at a time: the next
    /// finds the chunks of the one before stored instead of writing them
    /// again, and its unchanged pages in the memo.
    live: Mutex<LiveSource>,
}

/// The source the last live snapshot was taken of, its pages, and the
/// chunks stored as of then.
#[derive(Default)]
struct LiveSource {
    path: PathBuf,
    memo: PageMemo,
    chunks: KnownChunks,
}

impl Repository {
    /// Opens the repository `options` name, creating it (encrypted when a
    /// key file is given) if there is none. An encrypted repository needs
    /// its key; an unencrypted one on a remote store needs
    /// `allow_unencrypted_remote`.
    pub async fn open(options: Options<'_>) -> Result<Self> {
        let objects = Objects::open(options.url, &options.aws_env)?;
        let key_file = options.key_file.map(KeyFile::read).transpose()?;
        let config = match objects.get("config").await? {
            Some(bytes) => serde_json::from_slice::<Config>(&bytes).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "{} is not a backup repository (its config: {e})",
                    objects.url
                ))
            })?,
            None => {
                let config = Config {
                    format: format::FORMAT_NAME.into(),
                    version: format::VERSION,
                    encrypted: key_file.is_some(),
                };
                let bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
                match objects.put_new("config", bytes).await {
                    Ok(()) => config,
                    // Another process created it first: read theirs.
                    Err(Error::AlreadyExists(_)) => {
                        return Box::pin(Self::open(options)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if config.format != format::FORMAT_NAME || config.version != format::VERSION {
            return Err(Error::FailedPrecondition(format!(
                "{} holds format {:?} version {}, which this server does not read",
                objects.url, config.format, config.version
            )));
        }
        let keys = match (config.encrypted, key_file) {
            (true, Some(key_file)) => Keys::from_master(&master_key(&objects, &key_file).await?),
            (true, None) => {
                return Err(Error::FailedPrecondition(format!(
                    "the repository {} is encrypted: give its --repository-key-file",
                    objects.url
                )));
            }
            (false, Some(_)) => {
                return Err(Error::FailedPrecondition(format!(
                    "the repository {} was created unencrypted; it cannot use --repository-key-file",
                    objects.url
                )));
            }
            (false, None) if objects.remote() && !options.allow_unencrypted_remote => {
                return Err(Error::FailedPrecondition(format!(
                    "the repository {} is remote and unencrypted: give --repository-key-file \
                     (make one with `backup-server repo init-key FILE`), or --allow-unencrypted-remote",
                    objects.url
                )));
            }
            (false, None) => Keys::plain(),
        };
        let local_dir = local::create_dir(options.local_dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                objects,
                keys,
                writers: Writers::new(&local_dir, options.replicas),
                local_dir,
                names_changed: AtomicU64::new(0),
                live: Mutex::default(),
            }),
        })
    }

    /// A snapshot whose chunks are stored, as [`Staged`]: `manifest`, to be
    /// published under each name.
    fn staged(&self, manifest: Manifest, writes: Writing) -> Staged {
        let (taken_at, facts) = (manifest.taken_at, manifest.facts());
        let copy = StagedManifest {
            inner: self.inner.clone(),
            new_bytes: NewBytes::new(manifest.stored_bytes),
            manifest,
            writes,
        };
        Staged::new(taken_at, facts, Box::new(copy))
    }
}

/// The master key a key file unwraps: from the first `keys/` object (by
/// name) it opens. A repository without a key yet (new, or its creation
/// stopped between the config and the key) gets one, and the lookup runs
/// again: processes creating it at once all settle on the first by name.
async fn master_key(objects: &Objects, key_file: &KeyFile) -> Result<[u8; 32]> {
    if let Some(master) = find_master_key(objects, key_file).await? {
        return Ok(master);
    }
    let master: [u8; 32] = rand::random();
    let name = format!("keys/{}", hex::encode(rand::random::<[u8; 8]>()));
    objects.put_new(&name, key_file.wrap(&master)).await?;
    find_master_key(objects, key_file)
        .await?
        .ok_or_else(|| Error::Unavailable("the new repository key vanished".into()))
}

/// The master key of the first `keys/` object (by name) `key_file` opens;
/// `None` when there are no keys, an error when none opens.
async fn find_master_key(objects: &Objects, key_file: &KeyFile) -> Result<Option<[u8; 32]>> {
    let mut listed = objects.list("keys").await?;
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    for key in &listed {
        if let Some(wrapped) = objects.get(&format!("keys/{}", key.name)).await?
            && let Some(master) = key_file.unwrap(&wrapped)
        {
            return Ok(Some(master));
        }
    }
    if listed.is_empty() {
        return Ok(None);
    }
    Err(Error::FailedPrecondition(format!(
        "the key file opens none of the keys of the repository {}",
        objects.url
    )))
}

fn manifest_path(name: &str) -> String {
    format!("manifests/{name}")
}

fn deleting_path(name: &str) -> String {
    format!("deleting/{name}")
}

/// What a manifest is sealed with: bound to its name.
fn manifest_aad(name: &str) -> Vec<u8> {
    [b"manifest\0".as_slice(), name.as_bytes()].concat()
}

impl Inner {
    /// Every index entry of the repository: where each chunk is. A
    /// damaged index is left out (its chunks are then in no index: damage
    /// for exactly the backups that need them) and named in the second
    /// half.
    async fn load_index(&self) -> Result<(Index, Vec<String>)> {
        let mut index = Index::default();
        let mut damaged = Vec::new();
        for listed in self.objects.list("index").await? {
            match self.read_index(&listed.name).await? {
                IndexObject::Entries(entries) => index.extend(entries),
                IndexObject::Damaged(why) => damaged.push(why),
                IndexObject::Gone => {}
            }
        }
        Ok((index, damaged))
    }

    /// Index object `name`, listed a moment ago.
    async fn read_index(&self, name: &str) -> Result<IndexObject> {
        let Some(sealed) = self.objects.get(&format!("index/{name}")).await? else {
            // Replaced by a prune since the listing.
            return Ok(IndexObject::Gone);
        };
        match self.decode_index(name, sealed) {
            Ok(entries) => Ok(IndexObject::Entries(entries)),
            Err(Error::DataLoss(why)) => {
                tracing::warn!(index = %name, %why, "skipping a damaged index");
                Ok(IndexObject::Damaged(why))
            }
            Err(e) => Err(e),
        }
    }

    /// The entries of index object `name`, checked against its name.
    fn decode_index(&self, name: &str, sealed: Vec<u8>) -> Result<Vec<(Id, Location)>> {
        let what = format!("index {}", &name[..name.len().min(12)]);
        if Id(*blake3::hash(&sealed).as_bytes()).hex() != name {
            return Err(format::damaged(&what, "its bytes do not match its name"));
        }
        let compressed = self.keys.open(b"index", sealed, &what)?;
        let plaintext = zstd::stream::decode_all(compressed.as_slice())
            .map_err(|e| format::damaged(&what, &e.to_string()))?;
        format::decode_index(&plaintext, &what)
    }

    /// Writes an index object for `entries`; returns its name and stored
    /// size. Its name is its bytes' hash: writing what an existing index
    /// holds returns that index's name.
    async fn write_index(&self, entries: &[(Id, Location)]) -> Result<(String, u64)> {
        let plaintext = format::encode_index(entries);
        let compressed = zstd::bulk::compress(&plaintext, write::ZSTD_LEVEL)?;
        let sealed = self.keys.seal(b"index", compressed);
        let size = sealed.len() as u64;
        let name = Id(*blake3::hash(&sealed).as_bytes()).hex();
        self.objects
            .put_content(&format!("index/{name}"), sealed)
            .await?;
        Ok((name, size))
    }

    /// The manifest at `path` (`manifests/` or `deleting/`) for backup
    /// `name`, or `None` if there is none.
    async fn manifest_at(&self, path: &str, name: &str) -> Result<Option<Manifest>> {
        let Some(sealed) = self.objects.get(path).await? else {
            return Ok(None);
        };
        let what = format!("the manifest of backup {name:?}");
        let json = self.keys.open(&manifest_aad(name), sealed, &what)?;
        Manifest::decode(&json, name).map(Some)
    }

    /// Backup `name`'s manifest: NOT_FOUND if it has none.
    async fn manifest(&self, name: &str) -> Result<Manifest> {
        self.manifest_at(&manifest_path(name), name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("nothing is stored under {name:?}")))
    }

    /// The chunks of `manifest`, ready to be read in order.
    async fn rebuild(self: &Arc<Self>, manifest: &Manifest) -> Result<Rebuild> {
        let index = Arc::new(self.load_index().await?.0);
        Rebuild::new(self.clone(), index, manifest)
    }

    /// Rebuilds `manifest`'s backup into a scratch file in `dir`, checked
    /// against `expected` (and every chunk against its id) as it is
    /// written.
    async fn materialize_in(
        self: &Arc<Self>,
        dir: &Path,
        manifest: &Manifest,
        expected: &ContentFacts,
    ) -> Result<TempFile> {
        use tokio::io::AsyncWriteExt;
        let temp = TempFile::create(dir, &manifest.name)?;
        let mut out = temp.writer().await?;
        let mut pieces = Pieces::new(self.rebuild(manifest).await?, expected, 1 << 20);
        while let Some(piece) = pieces.next().await? {
            out.write_all(&piece).await?;
        }
        out.flush().await?;
        Ok(temp)
    }

    fn names_changed(&self) {
        self.names_changed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What reading one index object found.
enum IndexObject {
    Entries(Vec<(Id, Location)>),
    /// Removed since it was listed.
    Gone,
    /// Damaged, and why (logged).
    Damaged(String),
}

/// A snapshot whose chunks are stored, waiting for its manifest.
struct StagedManifest {
    inner: Arc<Inner>,
    manifest: Manifest,
    /// What the snapshot's chunks added, for its first manifest.
    new_bytes: NewBytes,
    /// Keeps a prune out until the last publish (see [`Writers`]).
    writes: Writing,
}

#[async_trait]
impl StagedCopy for StagedManifest {
    async fn publish(&self, name: &str) -> Result<u64> {
        let manifest = Manifest {
            name: name.to_owned(),
            stored_bytes: self.new_bytes.pending(),
            ..self.manifest.clone()
        };
        let sealed = self.inner.keys.seal(&manifest_aad(name), manifest.encode());
        // A prune may have gone ahead if the lock was lost: then the chunks
        // might not all be there, and the manifest must not be either.
        self.writes.confirm().await?;
        let published = self
            .inner
            .objects
            .put_new(&manifest_path(name), sealed)
            .await;
        self.inner.names_changed();
        match published {
            Ok(()) => {
                self.new_bytes.claimed();
                Ok(manifest.stored_bytes)
            }
            Err(Error::AlreadyExists(_)) => Err(super::already_exists(name)),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl BackupStorage for Repository {
    async fn recover(&self) -> Result<Vec<String>> {
        local::recover(&self.inner.local_dir).await
    }

    async fn lock(&self) -> Result<StorageLock> {
        local::lock(&self.inner.local_dir).await
    }

    async fn stage(
        &self,
        source: &Path,
        what: &str,
        _hint: &str,
        cancel: &CancellationToken,
    ) -> Result<Staged> {
        // Chunked straight from the source: no copy on local disk, so no
        // scratch file to name after the hint.
        let writes = self.inner.writers.shared().await?;
        let mut live = self.inner.live.lock().await;
        if live.path != source {
            *live = LiveSource {
                path: source.to_owned(),
                ..LiveSource::default()
            };
        }
        let taken_at = Utc::now().trunc_subsecs(6);
        let (source, what, token) = (source.to_owned(), what.to_owned(), cancel.clone());
        let pages: write::Pages = Box::new(move |chunker| {
            sqlite::read_pages(&source, &what, &token, &mut |page| chunker.page(page))
        });
        let known = Known {
            chunks: std::mem::take(&mut live.chunks),
            pages: Some(std::mem::take(&mut live.memo)),
        };
        let (manifest, known) = write::store(&self.inner, pages, known, taken_at, cancel).await?;
        live.chunks = known.chunks;
        live.memo = known.pages.unwrap_or_default();
        Ok(self.staged(manifest, writes))
    }

    async fn stage_bytes(
        &self,
        bytes: ByteStream,
        taken_at: DateTime<Utc>,
        hint: &str,
    ) -> Result<Staged> {
        let writes = self.inner.writers.shared().await?;
        let temp = local::write_stream(&self.inner.local_dir, hint, bytes).await?;
        // Bytes moved in keep the SHA-256 they were known by.
        let path = temp.path.clone();
        let hashed = blocking(move || checked::hash_file(&std::fs::File::open(path)?)).await?;
        let pages = write::file_pages(temp.path.clone());
        let known = Known::default();
        let (mut manifest, _) = write::store(
            &self.inner,
            pages,
            known,
            taken_at,
            &CancellationToken::new(),
        )
        .await?;
        manifest.sha256 = hashed.sha256;
        drop(temp);
        Ok(self.staged(manifest, writes))
    }

    async fn flush(&self) -> Result<()> {
        // Every put is durable when it returns: fsynced on local disk,
        // acknowledged by an object store.
        Ok(())
    }

    async fn contains(&self, name: &str) -> Result<bool> {
        Ok(self
            .inner
            .objects
            .head(&manifest_path(name))
            .await?
            .is_some())
    }

    async fn open(
        &self,
        name: &str,
        expected: &ContentFacts,
        chunk_bytes: usize,
    ) -> Result<ByteStream> {
        let manifest = self.inner.manifest(name).await?;
        if manifest.size_bytes != expected.size_bytes {
            return Err(size_mismatch(manifest.size_bytes as u64, expected));
        }
        let state = Pieces::new(self.inner.rebuild(&manifest).await?, expected, chunk_bytes);
        let pieces = futures_util::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next().await {
                Ok(Some(piece)) => Some((Ok(piece), Some(state))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Box::pin(pieces))
    }

    async fn verify(&self, name: &str, expected: &ContentFacts) -> Result<Verified> {
        let Some(listed) = self.inner.objects.head(&manifest_path(name)).await? else {
            return Err(
                if self
                    .inner
                    .objects
                    .head(&deleting_path(name))
                    .await?
                    .is_some()
                {
                    Error::NotFound(format!("{name:?} is being deleted"))
                } else {
                    Error::DataLoss("the backup's manifest is missing".into())
                },
            );
        };
        let manifest = self.inner.manifest(name).await.map_err(|e| match e {
            Error::NotFound(_) => Error::DataLoss("the backup's manifest is missing".into()),
            e => e,
        })?;
        if manifest.size_bytes != expected.size_bytes {
            return Err(size_mismatch(manifest.size_bytes as u64, expected));
        }
        let temp = self
            .inner
            .materialize_in(&self.inner.local_dir, &manifest, expected)
            .await?;
        let path = temp.path.clone();
        let conn = blocking(move || checked::open_intact(&path, checked::Holder::Server)).await?;
        Ok(Verified {
            stamp: ChangeStamp::new(listed.version),
            copy: VerifiedCopy::holding(conn, Box::new(temp)),
        })
    }

    async fn stamp(&self, name: &str) -> Result<ChangeStamp> {
        match self.inner.objects.head(&manifest_path(name)).await? {
            Some(listed) => Ok(ChangeStamp::new(listed.version)),
            None => Err(Error::NotFound(format!("nothing is stored under {name:?}"))),
        }
    }

    async fn describe(&self, name: &str) -> Result<Described> {
        let manifest = self.inner.manifest(name).await?;
        Ok(Described {
            facts: manifest.facts(),
            stored_bytes: manifest.stored_bytes,
            modified: manifest.taken_at,
        })
    }

    async fn sniff(&self, names: Vec<String>) -> Result<Vec<Result<Content>>> {
        // A manifest is only ever written for a SQLite snapshot: one
        // listing answers for every name.
        let stored: std::collections::HashSet<String> =
            self.list().await?.names.into_iter().collect();
        Ok(names
            .into_iter()
            .map(|name| match stored.contains(&name) {
                true => Ok(Content::Sqlite),
                false => Err(Error::NotFound(format!("nothing is stored under {name:?}"))),
            })
            .collect())
    }

    async fn list(&self) -> Result<Listing> {
        let deleting = self.inner.objects.names("deleting").await?;
        // A name whose delete began is gone, even if a crash left its
        // manifest in place.
        let names = self
            .inner
            .objects
            .names("manifests")
            .await?
            .into_iter()
            .filter(|n| naming::is_backup_filename(n) && !deleting.contains(n))
            .collect();
        Ok(Listing { names, deleting })
    }

    async fn names_stamp(&self) -> Result<Option<ChangeStamp>> {
        // Only this process changes the names between full reconciles (a
        // manifest is never dropped in by hand), so its own count tells.
        let changes = self.inner.names_changed.load(Ordering::Relaxed);
        Ok(Some(ChangeStamp::new(changes.to_string())))
    }

    async fn begin_delete(&self, name: &str) -> Result<bool> {
        let Some(sealed) = self.inner.objects.get(&manifest_path(name)).await? else {
            return Ok(false);
        };
        self.inner.names_changed();
        // A copy first, so a crash never loses the manifest; then the name
        // goes.
        self.inner
            .objects
            .put_content(&deleting_path(name), sealed)
            .await?;
        self.inner.objects.delete(&manifest_path(name)).await?;
        Ok(true)
    }

    async fn finish_delete(&self, name: &str) -> Result<()> {
        // The manifest too, should a crash have stopped the begin before
        // it went.
        self.inner.objects.delete(&manifest_path(name)).await?;
        self.inner.objects.delete(&deleting_path(name)).await
    }

    async fn undo_delete(&self, name: &str) -> Result<()> {
        self.inner.names_changed();
        if let Some(sealed) = self.inner.objects.get(&deleting_path(name)).await? {
            match self
                .inner
                .objects
                .put_new(&manifest_path(name), sealed)
                .await
            {
                Ok(()) | Err(Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.objects.delete(&deleting_path(name)).await
    }

    async fn prune(&self) -> Result<Pruned> {
        self.inner.prune().await
    }

    async fn content_key(&self, name: &str) -> Result<Option<String>> {
        // The chunk lists name every chunk, in order: the same lists, the
        // same stored bytes.
        let manifest = self.inner.manifest(name).await?;
        Ok(Some(
            blake3::hash(manifest.lists.concat().as_bytes())
                .to_hex()
                .to_string(),
        ))
    }

    async fn damaged_backups(&self) -> Result<Option<Vec<(String, String)>>> {
        Ok(Some(self.check(true).await?.damaged.into_iter().collect()))
    }

    async fn stats(&self) -> Result<StorageStats> {
        let mut stats = StorageStats::default();
        for dir in ["data", "index", "manifests", "deleting", "keys"] {
            let listed = self.inner.objects.list(dir).await?;
            stats.stored_bytes += listed.iter().map(|l| l.size).sum::<u64>();
            if dir == "data" {
                stats.packs = listed.len() as u64;
            }
        }
        let (index, _) = self.inner.load_index().await?;
        stats.chunks = index.len() as u64;
        stats.chunk_bytes = index.values().map(|at| u64::from(at.len)).sum();
        Ok(stats)
    }
}

/// A rebuild's bytes, checked, handed out in pieces of at most `max`
/// bytes: what a download streams and a verification writes.
struct Pieces {
    rebuild: Rebuild,
    checker: Checker,
    pending: Vec<u8>,
    max: usize,
}

impl Pieces {
    /// `rebuild`'s bytes in pieces of `max`, checked against `expected`.
    fn new(rebuild: Rebuild, expected: &ContentFacts, max: usize) -> Self {
        Self {
            rebuild,
            checker: Checker::new(expected.clone()),
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// The next piece; `None` at the end, once every byte matched.
    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        // Room for the whole piece at once, not grown by doubling copies.
        self.pending
            .reserve(self.max.saturating_sub(self.pending.len()));
        while self.pending.len() < self.max {
            if !self.rebuild.next_chunk_into(&mut self.pending).await? {
                break;
            }
        }
        if self.pending.is_empty() {
            self.checker.finish()?;
            return Ok(None);
        }
        let rest = self.pending.split_off(self.max.min(self.pending.len()));
        let piece = std::mem::replace(&mut self.pending, rest);
        // Hashed a piece at a time: BLAKE3 is fastest over long inputs.
        self.checker.update(&piece)?;
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn local(dir: &Path, key_file: Option<&Path>) -> Result<Repository> {
        open_at(&dir.join("repo"), &dir.join("backups"), key_file, None).await
    }

    /// The repository at `dir` as a process with its local files in
    /// `local_dir` sees it.
    async fn open_at(
        dir: &Path,
        local_dir: &Path,
        key_file: Option<&Path>,
        replicas: Option<Arc<dyn ReplicaLock>>,
    ) -> Result<Repository> {
        Repository::open(Options {
            url: &dir.display().to_string(),
            key_file,
            allow_unencrypted_remote: false,
            local_dir,
            aws_env: Vec::new(),
            replicas,
        })
        .await
    }

    #[tokio::test]
    async fn keeps_the_storage_contract_unencrypted() {
        let scratch = tempfile::tempdir().unwrap();
        let storage = local(scratch.path(), None).await.unwrap();
        super::super::contract::check(&storage, scratch.path()).await;
    }

    /// Stages and publishes a snapshot of `source` under `name`.
    async fn backup(storage: &Repository, source: &Path, name: &str) -> ContentFacts {
        let staged = storage
            .stage(source, "the source", name, &CancellationToken::new())
            .await
            .unwrap();
        staged.publish(name).await.unwrap();
        staged.facts.clone()
    }

    /// A source database in `dir` of 2,000 text-like rows in table `t`,
    /// and a connection to change it through.
    fn text_source(dir: &Path) -> (PathBuf, rusqlite::Connection) {
        let source = dir.join("source.db");
        let db = rusqlite::Connection::open(&source).unwrap();
        db.execute_batch(
            "CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO t SELECT printf('row %d of some text-like data', i) FROM n;",
        )
        .unwrap();
        (source, db)
    }

    #[tokio::test]
    async fn identical_pages_are_stored_once_and_a_prune_reclaims_the_dead() {
        let scratch = tempfile::tempdir().unwrap();
        let storage = local(scratch.path(), None).await.unwrap();
        let (source, db) = text_source(scratch.path());
        let first = backup(&storage, &source, "first.db").await;
        let first_bytes = std::fs::read(&source).unwrap();
        let stored = |s: &Repository| {
            let inner = s.inner.clone();
            async move {
                inner
                    .objects
                    .list("data")
                    .await
                    .unwrap()
                    .iter()
                    .map(|p| p.size)
                    .sum::<u64>()
            }
        };
        let after_first = stored(&storage).await;
        // A user's backup: its name has a `~`, which object stores encode.
        backup(&storage, &source, "u2~same.db").await;
        assert_eq!(
            stored(&storage).await,
            after_first,
            "an unchanged source adds no pack"
        );
        let mut names = storage.list().await.unwrap().names;
        names.sort();
        assert_eq!(names, ["first.db", "u2~same.db"]);
        storage.describe("u2~same.db").await.unwrap();
        db.execute_batch("UPDATE t SET x = x || ' changed' WHERE rowid % 7 = 0")
            .unwrap();
        let changed = backup(&storage, &source, "changed.db").await;
        assert!(stored(&storage).await > after_first);
        // Its pages alternate between the first backup's frames and new
        // ones: each old frame serves pages on both sides of a new one.
        storage.verify("changed.db", &changed).await.unwrap();

        for name in ["first.db", "u2~same.db"] {
            assert!(storage.begin_delete(name).await.unwrap());
            storage.finish_delete(name).await.unwrap();
        }
        let pruned = storage.prune().await.unwrap();
        assert!(pruned.bytes_after < pruned.bytes_before, "{pruned:?}");
        assert!(
            pruned.packs_deleted > 0 && pruned.unreadable.is_empty(),
            "{pruned:?}"
        );
        storage.verify("changed.db", &changed).await.unwrap();
        assert_ne!(first, changed);
        // The first content again: its pages the prune took are written
        // again, not taken as still stored.
        std::fs::write(&source, &first_bytes).unwrap();
        let restored = backup(&storage, &source, "first-again.db").await;
        assert_eq!(restored, first);
        storage.verify("first-again.db", &restored).await.unwrap();
        for name in ["first-again.db"] {
            assert!(storage.begin_delete(name).await.unwrap());
            storage.finish_delete(name).await.unwrap();
        }
        storage.prune().await.unwrap();
        let again = storage.prune().await.unwrap();
        assert_eq!(
            (again.packs_deleted, again.packs_written),
            (0, 0),
            "nothing left to prune"
        );
    }

    #[tokio::test]
    async fn a_backup_of_many_lists_names_lists_of_them_and_reads_and_prunes_whole() {
        let scratch = tempfile::tempdir().unwrap();
        let storage = local(scratch.path(), None).await.unwrap();
        let source = scratch.path().join("large.db");
        // 1 KiB pages: more than two chunk lists' worth in a few MiB.
        rusqlite::Connection::open(&source)
            .unwrap()
            .execute_batch(
                "PRAGMA page_size = 1024; CREATE TABLE t (x); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9000) \
                 INSERT INTO t SELECT randomblob(700) FROM n;",
            )
            .unwrap();
        let facts = backup(&storage, &source, "large.db").await;
        assert!(
            facts.size_bytes > 2 * format::LIST_IDS as i64 * 1024,
            "{facts:?}"
        );
        let manifest = storage.inner.manifest("large.db").await.unwrap();
        assert_eq!((manifest.levels, manifest.lists.len()), (2, 1));
        storage.verify("large.db", &facts).await.unwrap();
        let mut bytes = Vec::new();
        let mut stream = storage.open("large.db", &facts, 1 << 20).await.unwrap();
        while let Some(piece) = futures_util::StreamExt::next(&mut stream).await {
            bytes.extend(piece.unwrap());
        }
        assert_eq!(bytes, std::fs::read(&source).unwrap());
        // Every list is referenced: a prune takes nothing.
        let pruned = storage.prune().await.unwrap();
        assert_eq!((pruned.packs_deleted, pruned.packs_written), (0, 0));
        storage.verify("large.db", &facts).await.unwrap();
    }

    #[tokio::test]
    async fn a_prune_that_only_drops_leftovers_keeps_the_index() {
        let scratch = tempfile::tempdir().unwrap();
        let storage = local(scratch.path(), None).await.unwrap();
        let source = scratch.path().join("tiny.db");
        rusqlite::Connection::open(&source)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let facts = backup(&storage, &source, "tiny.db").await;
        // The index a prune writes for the same entries has the same name
        // as the one it replaces; it must survive its own clean-up.
        for leftover in 0..4u8 {
            let dir = scratch.path().join("repo/data/ff");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("ff{}", format!("{leftover:02x}").repeat(31)));
            let file = std::fs::File::create(&path).unwrap();
            let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
            file.set_modified(hours_ago).unwrap();
            let pruned = storage.prune().await.unwrap();
            assert_eq!(pruned.packs_deleted, 1, "the leftover goes");
            assert!(!path.exists());
            storage.verify("tiny.db", &facts).await.unwrap();
        }
    }

    #[tokio::test]
    async fn keeps_the_storage_contract_encrypted() {
        let scratch = tempfile::tempdir().unwrap();
        let key = scratch.path().join("key");
        KeyFile::generate(&key).unwrap();
        let storage = local(scratch.path(), Some(&key)).await.unwrap();
        super::super::contract::check(&storage, scratch.path()).await;
        drop(storage);
        assert!(matches!(
            local(scratch.path(), None).await,
            Err(Error::FailedPrecondition(m)) if m.contains("encrypted")
        ));
        let other = scratch.path().join("other");
        KeyFile::generate(&other).unwrap();
        assert!(matches!(
            local(scratch.path(), Some(&other)).await,
            Err(Error::FailedPrecondition(m)) if m.contains("opens none")
        ));
    }

    /// Replicas on two hosts share one repository but no local directory:
    /// the state store's lock keeps a prune on one out while the other
    /// writes, and a writer that lost that lock publishes nothing.
    #[tokio::test]
    async fn a_prune_on_another_host_waits_for_writers_and_a_writer_that_lost_its_lock_publishes_nothing()
     {
        use std::time::Duration;

        use crate::store::advisory::{Key, Lock};
        use crate::store::tests::{Backend, fresh_store};
        use sea_orm::ConnectionTrait;

        let store = fresh_store(Backend::Postgres).await;
        let scratch = tempfile::tempdir().unwrap();
        let host = |name: &str| {
            let lock = Lock::on(&store, Key::RepositoryPrunes).expect("PostgreSQL");
            let (dir, local_dir) = (scratch.path().join("repo"), scratch.path().join(name));
            async move {
                open_at(&dir, &local_dir, None, Some(Arc::new(lock)))
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (host("a").await, host("b").await);
        let (source, db) = text_source(scratch.path());
        let never = CancellationToken::new();
        let stage = |name: &'static str| a.stage(&source, "the source", name, &never);

        let staged = stage("kept.db").await.unwrap();
        let prune = tokio::time::timeout(Duration::from_millis(500), b.prune()).await;
        assert!(prune.is_err(), "host b pruned while host a was writing");
        staged.publish("kept.db").await.unwrap();
        let facts = staged.facts.clone();
        drop(staged);
        b.prune().await.unwrap();
        b.verify("kept.db", &facts).await.unwrap();

        db.execute_batch("UPDATE t SET x = x || ' changed'")
            .unwrap();
        let staged = stage("lost.db").await.unwrap();
        // The database ends the writer's lock session, as on a lost
        // connection; the prune goes ahead and takes the unpublished chunks.
        store
            .reads()
            .execute_unprepared(
                "SELECT pg_terminate_backend(pid) FROM pg_locks \
                 WHERE locktype = 'advisory' AND mode = 'ShareLock'",
            )
            .await
            .unwrap();
        let pruned = tokio::time::timeout(Duration::from_secs(10), b.prune()).await;
        let pruned = pruned.expect("the prune waited on a lost lock").unwrap();
        assert!(pruned.bytes_after < pruned.bytes_before, "{pruned:?}");
        assert!(
            staged.publish("lost.db").await.is_err(),
            "published after losing the lock"
        );
        assert_eq!(a.list().await.unwrap().names, ["kept.db"]);
        a.verify("kept.db", &facts).await.unwrap();
    }
}
