//! Keeping writes and prunes apart: a snapshot holds [`Writers::shared`]
//! from its staging to its last publish, a prune holds
//! [`Writers::exclusive`], so a prune never sees chunks a backup is about
//! to reference as unreferenced.
//!
//! Within this process that is a `RwLock`; across the processes that share
//! the local directory (replicas on one host) an advisory lock on
//! `<local dir>/.prune-lock`, shared or exclusive alike; across hosts (the
//! replicas sharing a remote repository) a [`ReplicaLock`], the state
//! store's, when there is one. They are always taken in that order.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::backup::storage::local;
use crate::blocking::blocking;
use crate::error::Result;

/// A lock that every process writing the repository sees, wherever it
/// runs: shared by writers, exclusive for a prune.
#[async_trait]
pub trait ReplicaLock: Send + Sync {
    async fn shared(&self) -> Result<Box<dyn ReplicaGuard>>;
    async fn exclusive(&self) -> Result<Box<dyn ReplicaGuard>>;
}

/// A held [`ReplicaLock`], released when dropped.
#[async_trait]
pub trait ReplicaGuard: Send + Sync {
    /// Fails if the lock may have been lost since it was taken (its holder
    /// lost touch with whatever keeps it).
    async fn confirm(&self) -> Result<()>;
}

pub struct Writers {
    here: Arc<RwLock<()>>,
    file: PathBuf,
    replicas: Option<Arc<dyn ReplicaLock>>,
}

/// Held while writing chunks that a manifest will reference.
pub struct Writing {
    _here: OwnedRwLockReadGuard<()>,
    _file: File,
    replicas: Option<Box<dyn ReplicaGuard>>,
}

/// Held while pruning.
pub struct Pruning {
    _here: OwnedRwLockWriteGuard<()>,
    _file: File,
    _replicas: Option<Box<dyn ReplicaGuard>>,
}

impl Writers {
    pub fn new(local_dir: &Path, replicas: Option<Arc<dyn ReplicaLock>>) -> Self {
        Self {
            here: Arc::new(RwLock::new(())),
            file: local_dir.join(".prune-lock"),
            replicas,
        }
    }

    /// Waits out any prune, here or in another process.
    pub async fn shared(&self) -> Result<Writing> {
        let here = self.here.clone().read_owned().await;
        let file = self.lock_file(File::lock_shared).await?;
        Ok(Writing {
            _here: here,
            _file: file,
            replicas: match &self.replicas {
                Some(lock) => Some(lock.shared().await?),
                None => None,
            },
        })
    }

    /// Waits out every writer, here or in another process.
    pub async fn exclusive(&self) -> Result<Pruning> {
        let here = self.here.clone().write_owned().await;
        let file = self.lock_file(File::lock).await?;
        Ok(Pruning {
            _here: here,
            _file: file,
            _replicas: match &self.replicas {
                Some(lock) => Some(lock.exclusive().await?),
                None => None,
            },
        })
    }

    /// The lock file, opened and locked by `lock` (off the async threads:
    /// it waits for other processes).
    async fn lock_file(&self, lock: fn(&File) -> std::io::Result<()>) -> Result<File> {
        let path = self.file.clone();
        blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| local::dir_error(e.into()))?;
            lock(&file)?;
            Ok(file)
        })
        .await
    }
}

impl Writing {
    /// Fails if a prune elsewhere may have run since this was taken: what
    /// is written under it is to be published only after this succeeds.
    pub async fn confirm(&self) -> Result<()> {
        match &self.replicas {
            Some(guard) => guard.confirm().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Two processes' views of one directory are two `Writers`: a prune in
    /// one waits for a writer in the other, and the other way round.
    #[tokio::test]
    async fn a_prune_waits_for_writers_of_another_process_and_they_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (here, there) = (
            Writers::new(dir.path(), None),
            Writers::new(dir.path(), None),
        );
        let writing = here.shared().await.unwrap();
        let also = there.shared().await.unwrap();
        let prune = tokio::time::timeout(Duration::from_millis(300), there.exclusive()).await;
        assert!(prune.is_err(), "a prune went ahead of a writer");
        drop((writing, also));
        let pruning = there.exclusive().await.unwrap();
        let write = tokio::time::timeout(Duration::from_millis(300), here.shared()).await;
        assert!(write.is_err(), "a writer went ahead of a prune");
        drop(pruning);
        here.shared().await.unwrap();
    }
}
