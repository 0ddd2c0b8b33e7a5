//! The state store: connection setup, write transactions and migrations.
//!
//! Everything goes through SeaORM so the store can move to PostgreSQL; the
//! SQLite specifics (WAL, busy timeout, one writer) live here alone.

pub mod audit;
pub mod entity;
pub mod lease;
pub mod runs;
pub mod secrets;
pub mod settings;

use std::path::{Path, PathBuf};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use crate::error::Result;

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the state store. SQLite gets WAL, a busy timeout, and a single
/// connection: one writer, so this process never contends with itself.
pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(30));
    if is_sqlite(url) {
        options
            .max_connections(1)
            .min_connections(1)
            // Keep the one connection: reopening would cost a WAL recovery check.
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>)
            .map_sqlx_sqlite_opts(|o| {
                o.busy_timeout(BUSY_TIMEOUT)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .create_if_missing(true)
            });
    }
    Ok(Database::connect(options).await?)
}

/// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`: it takes
/// the write lock up front (waiting out other processes within the busy
/// timeout) instead of failing with SQLITE_BUSY when a read upgrades to a
/// write.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The file behind a SQLite URL (`sqlite://path?mode=rwc`), if it is one.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Opens and rolls back a write transaction: fails while the store is
/// unreachable or held by another writer past the busy timeout, when every
/// RPC (each writes an audit event) would fail too. Health checks use it.
pub async fn probe(db: &DatabaseConnection) -> Result<()> {
    use sea_orm::{EntityTrait, QuerySelect};
    let txn = begin_write(db).await?;
    entity::secret::Entity::find().limit(1).all(&txn).await?;
    txn.rollback().await?;
    Ok(())
}

/// The SQLite library version linked into this binary.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}

/// Applies pending migrations. When the store already holds data, it is
/// first snapshotted into `backups_dir` as a protected `pre_migration_*`
/// backup (returned), so a bad migration can be undone.
pub async fn migrate(
    db: &DatabaseConnection,
    url: &str,
    backups_dir: &Path,
) -> Result<Option<String>> {
    // Two processes starting on one store (a server and `token create`, or
    // two replicas) must not both apply the same migration.
    let _lock = match sqlite_path(url) {
        Some(path) => {
            let lock = path.with_extension("migrate-lock");
            Some(
                crate::backup::blocking(move || crate::backup::file_io::lock_exclusive(&lock))
                    .await?,
            )
        }
        None => None,
    };
    let pending = Migrator::get_pending_migrations(db).await?;
    let applied = Migrator::get_applied_migrations(db).await?;
    let mut snapshot = None;
    if !pending.is_empty()
        && !applied.is_empty()
        && let Some(path) = sqlite_path(url)
    {
        let name = crate::backup::naming::pre_migration_filename(chrono::Utc::now());
        let dir = backups_dir.to_owned();
        let file = name.clone();
        tokio::task::spawn_blocking(move || {
            crate::backup::file_io::snapshot(&path, "the state store", &dir, &file)
        })
        .await
        .map_err(|e| crate::error::Error::Internal(e.to_string()))??;
        tracing::info!(backup = %name, pending = pending.len(), "state store snapshotted before migrating");
        snapshot = Some(name);
    }
    Migrator::up(db, None).await?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;

    use super::*;

    #[tokio::test]
    async fn a_store_holding_data_is_snapshotted_before_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let backups = dir.path().join("backups");
        std::fs::create_dir(&backups).unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("state.db").display()
        );
        let db = connect(&url).await.unwrap();

        // A fresh store has nothing to lose: no snapshot.
        Migrator::up(&db, Some(1)).await.unwrap();
        db.execute_unprepared(
            "INSERT INTO users (id, is_admin, created_at) VALUES (7, 0, '2026-01-01T00:00:00+00:00')",
        )
        .await
        .unwrap();

        let snapshot = migrate(&db, &url, &backups)
            .await
            .unwrap()
            .expect("a snapshot");
        assert!(snapshot.starts_with("pre_migration_"), "{snapshot}");
        let old = rusqlite::Connection::open(backups.join(&snapshot)).unwrap();
        let users: i64 = old
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 1);
        let has_settings: i64 = old
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'backup_settings'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_settings, 0, "the snapshot predates the migration");
        assert!(
            Migrator::get_pending_migrations(&db)
                .await
                .unwrap()
                .is_empty()
        );

        // Nothing pending: nothing to snapshot.
        assert_eq!(migrate(&db, &url, &backups).await.unwrap(), None);
    }

    #[test]
    fn sqlite_paths_come_from_urls() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/x/state.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/x/state.db"))
        );
        assert_eq!(
            sqlite_path("sqlite://rel.db"),
            Some(PathBuf::from("rel.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://db/x"), None);
    }
}
