//! What `grpc.health.v1` reports, from two checks run together: the state
//! store answers (every RPC needs it), and the source database is usable
//! (BackupFiles needs it). One task runs both and sets every status from
//! both, so neither check can overwrite what the other found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_proto::SERVICE_NAMES;
use backup_proto::backup_files_server::SERVICE_NAME as BACKUP_FILES;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backup::source;
use crate::backup::sqlite::Content;
use crate::error::Error;
use crate::store::Store;

/// What the checks found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// The state store opens and rolls back a write transaction.
    pub store: bool,
    /// The source database is a SQLite file backups can read.
    pub source: bool,
}

impl Checks {
    /// The status of `service` (`""` for the server as a whole): NOT_SERVING
    /// while the store fails, and for BackupFiles also while the source does.
    pub fn status(self, service: &str) -> ServingStatus {
        if self.store && (self.source || service != BACKUP_FILES) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }

    /// Sets the status of the server and of every service.
    pub async fn publish(self, health: &HealthReporter) {
        for name in std::iter::once("").chain(SERVICE_NAMES) {
            health.set_service_status(name, self.status(name)).await;
        }
    }
}

/// Why backups cannot read the source at `path`, or `None` when they can.
/// A cheap check, by name, type and header as backups see the file: it must
/// be a regular file (never a symlink) that is empty or starts with the
/// SQLite header.
pub async fn source_problem(path: &Path) -> Option<String> {
    if path.parent().is_none() || path.file_name().is_none() {
        return Some("is not a file name".into());
    }
    match source::sniff(path.to_owned()).await {
        Ok(Content::Sqlite | Content::Empty) => None,
        Ok(Content::NotSqlite) => Some("is not a SQLite database".into()),
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("does not exist".into())
        }
        Err(Error::Io(e)) if e.raw_os_error() == Some(libc::ELOOP) => {
            Some("is a symbolic link; backups never follow one".into())
        }
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Some("is not a regular file".into())
        }
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

/// Logs why the source is unusable, naming it.
pub fn warn_source(path: &Path, problem: &str) {
    tracing::warn!(
        source_db = %path.display(),
        problem,
        "the source database {} {problem}; backups fail and health reports {BACKUP_FILES} \
         NOT_SERVING until it is a readable SQLite file",
        path.display(),
    );
}

/// Re-runs both checks every `every` and publishes the statuses when
/// either result changes; `last` is what was published at start.
pub async fn watch(
    db: Store,
    source: PathBuf,
    health: HealthReporter,
    every: Duration,
    mut last: Checks,
) {
    loop {
        tokio::time::sleep(every).await;
        let store = match db.probe().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the state store does not answer");
                false
            }
        };
        let problem = source_problem(&source).await;
        let now = Checks {
            store,
            source: problem.is_none(),
        };
        if now == last {
            continue;
        }
        if now.store != last.store {
            tracing::info!(serving = now.store, "health changed with the state store");
        }
        match &problem {
            Some(problem) if last.source => warn_source(&source, problem),
            None if !last.source => tracing::info!(
                source_db = %source.display(),
                "the source database is readable again; {BACKUP_FILES} follows the state store"
            ),
            _ => {}
        }
        now.publish(&health).await;
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_holds_its_own_services_down() {
        let all = |c: Checks| -> Vec<ServingStatus> {
            std::iter::once("")
                .chain(SERVICE_NAMES)
                .map(|n| c.status(n))
                .collect()
        };
        use ServingStatus::{NotServing as Down, Serving as Up};
        let both = Checks {
            store: true,
            source: true,
        };
        assert_eq!(all(both), [Up, Up, Up, Up, Up]);
        // "", BackupFiles, BackupScheduler, Retention, AuditLog.
        let no_source = Checks {
            source: false,
            ..both
        };
        assert_eq!(all(no_source), [Up, Down, Up, Up, Up]);
        let no_store = Checks {
            store: false,
            ..both
        };
        assert_eq!(all(no_store), [Down; 5]);
        // A source that comes back does not revive a failing store, nor
        // the reverse.
        let neither = Checks {
            store: false,
            source: false,
        };
        assert_eq!(all(neither), [Down; 5]);
    }

    #[tokio::test]
    async fn the_source_check_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source.db");
        assert_eq!(
            source_problem(&path).await.as_deref(),
            Some("does not exist")
        );
        std::fs::write(&path, b"not a database at all").unwrap();
        assert_eq!(
            source_problem(&path).await.as_deref(),
            Some("is not a SQLite database")
        );
        std::fs::remove_file(&path).unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert_eq!(source_problem(&path).await, None);
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            source_problem(&link)
                .await
                .unwrap()
                .contains("symbolic link")
        );
        assert_eq!(
            source_problem(dir.path()).await.as_deref(),
            Some("is not a regular file")
        );
    }
}
