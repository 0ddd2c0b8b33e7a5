//! The server as a whole: opening the state store and backup storage,
//! wiring the domain handles together ([`App`]), and serving the gRPC
//! services until shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backup_proto::{
    FILE_DESCRIPTOR_SET, SERVICE_NAMES, audit_log_server::AuditLogServer,
    backup_files_server::BackupFilesServer, backup_scheduler_server::BackupSchedulerServer,
    retention_server::RetentionServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::audit::Recorder;
use crate::audit::subscription::Hub;
use crate::auth::Authenticator;
use crate::backup::Backups;
use crate::backup::storage::BackupStorage;
use crate::backup::storage::directory::Directory;
use crate::backup::storage::local;
use crate::backup::storage::repository::{self, ReplicaGuard, ReplicaLock, Repository};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::paging::PageTokens;
use crate::schedule::{Scheduler, SchedulerConfig};
use crate::store::{self, Store, advisory};
use crate::{api, backup, config, health, retention, telemetry};

/// How often health re-checks the state store and the source.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Concurrent HTTP/2 streams (RPCs) one connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// What every service shares: the domain's handles.
pub struct App {
    /// The state store, for health and shutdown; services reach it only
    /// through the handles below.
    store: Store,
    pub auth: Authenticator,
    pub audit: Recorder,
    pub backups: Arc<Backups>,
    pub page_tokens: PageTokens,
    pub scheduler: Arc<Scheduler>,
    pub retention: Arc<retention::Retention>,
    /// Live audit subscriptions and their count.
    pub audit_subscriptions: Hub,
    /// Cancelled once health is NOT_SERVING at shutdown: long-lived work
    /// (audit streams) ends on it.
    pub shutdown: CancellationToken,
    /// How often the scrub verifies each backup; zero when it is off.
    pub verify_interval: Duration,
}

/// Opens the state store and applies pending migrations (snapshotting a
/// store that already holds data first). The backup storage is opened only
/// for that snapshot: a command run before the server's first start (`token
/// create`) never creates a repository with whatever key flags it had.
pub async fn open_store(config: &Config) -> Result<(Store, config::Paths)> {
    let paths = config.prepare()?;
    let db = open_db(&paths).await?;
    migrate(&db, &paths.data_dir, || open_storage(config, &paths, &db)).await?;
    Ok((db, paths))
}

/// [`open_store`], with the backup storage it snapshotted into.
async fn open(config: &Config) -> Result<(Store, config::Paths, Arc<dyn BackupStorage>)> {
    let paths = config.prepare()?;
    let db = open_db(&paths).await?;
    let storage = open_storage(config, &paths, &db).await?;
    migrate(&db, &paths.data_dir, || async { Ok(storage.clone()) }).await?;
    Ok((db, paths, storage))
}

/// The state store `--database-url` names, as it is.
async fn open_db(paths: &config::Paths) -> Result<Store> {
    let url = &paths.database_url;
    store::Store::open(url)
        .await
        .map_err(|e| match (store::sqlite_path(url), e) {
            (Some(path), e) => config::at("--database-url", &path, e),
            (None, Error::Unavailable(why)) => {
                Error::Unavailable(format!("{why} (--database-url {})", store::redacted(url)))
            }
            (None, e) => e,
        })
}

/// The backup storage the flags name: the repository (`--repository`, by
/// default in `--backups-dir`), its prunes kept apart from the writes of
/// every replica on `db`; or with `--full-copies` the directory of full
/// copies at `--backups-dir`.
async fn open_storage(
    config: &Config,
    paths: &config::Paths,
    db: &Store,
) -> Result<Arc<dyn BackupStorage>> {
    if paths.repository.is_some() {
        let replicas = advisory::Lock::on(db, advisory::Key::RepositoryPrunes)
            .map(|lock| Arc::new(lock) as Arc<dyn ReplicaLock>);
        return Ok(Arc::new(open_repository(config, paths, replicas).await?));
    }
    Ok(Arc::new(directory(paths)?))
}

/// The backups directory as a storage of full copies.
fn directory(paths: &config::Paths) -> Result<Directory> {
    Directory::create(&paths.backups_dir)
        .map_err(|e| config::at("--backups-dir", &paths.backups_dir, e))
}

/// The repository `--repository` names, or the default one (created if
/// there is none); `replicas` keeps its prunes apart from other hosts'
/// writes, if any share it.
pub async fn open_repository(
    config: &Config,
    paths: &config::Paths,
    replicas: Option<Arc<dyn ReplicaLock>>,
) -> Result<Repository> {
    let url = paths
        .repository
        .as_deref()
        .ok_or_else(|| Error::FailedPrecondition("--full-copies keeps no repository".into()))?;
    // Its scratch files and locks live there, and by default the
    // repository too: a bad --backups-dir is named as such.
    local::create_dir(&paths.backups_dir)
        .map_err(|e| config::at("--backups-dir", &paths.backups_dir, e))?;
    Repository::open(repository::Options {
        url,
        key_file: config.repository_key_file.as_deref(),
        allow_unencrypted_remote: config.allow_unencrypted_remote,
        local_dir: &paths.backups_dir,
        aws_env: repository::aws_env(),
        replicas,
    })
    .await
}

/// The state store's advisory lock, as the repository's lock across hosts.
#[async_trait::async_trait]
impl ReplicaLock for advisory::Lock {
    async fn shared(&self) -> Result<Box<dyn ReplicaGuard>> {
        Ok(Box::new(self.hold(advisory::Mode::Shared).await?))
    }

    async fn exclusive(&self) -> Result<Box<dyn ReplicaGuard>> {
        Ok(Box::new(self.hold(advisory::Mode::Exclusive).await?))
    }
}

#[async_trait::async_trait]
impl ReplicaGuard for advisory::Held {
    async fn confirm(&self) -> Result<()> {
        advisory::Held::confirm(self).await
    }
}

/// Applies pending migrations. When the store already holds data, it is
/// first snapshotted so a bad migration can be undone: a SQLite file into
/// the backup storage `storage` opens, as a `pre_migration_*` backup (its
/// name returned; reconcile catalogs it as protected); a PostgreSQL
/// database with `pg_dump` into `dump_dir`, or, without `pg_dump`, not at
/// all, with a warning.
async fn migrate<S, F>(db: &Store, dump_dir: &Path, storage: S) -> Result<Option<String>>
where
    S: FnOnce() -> F,
    F: Future<Output = Result<Arc<dyn BackupStorage>>>,
{
    let migrations = store::pending_migrations(db).await?;
    let pending = migrations.pending();
    let snapshot = match migrations.snapshot_first() {
        None => None,
        Some(store::Snapshot::File(state_store)) => {
            let storage = storage().await?;
            let name =
                backup::create::pre_migration_snapshot(storage.as_ref(), state_store).await?;
            tracing::info!(backup = %name, pending, "state store snapshotted before migrating");
            Some(name)
        }
        Some(store::Snapshot::Postgres { url }) => {
            match store::dump::pg_dump(url, dump_dir, chrono::Utc::now()).await? {
                Some(path) => {
                    tracing::info!(dump = %path.display(), pending, "state store dumped with pg_dump before migrating");
                    Some(path.display().to_string())
                }
                None => {
                    tracing::warn!(
                        pending,
                        "pg_dump is not installed: migrating the state store without a \
                         pre-migration snapshot"
                    );
                    None
                }
            }
        }
    };
    migrations.apply().await?;
    if let Some(snapshot) = &snapshot {
        tracing::warn!(%snapshot, "migrated the state store; the pre-migration snapshot is kept");
    }
    Ok(snapshot)
}

/// A server that has opened its store, applied migrations and reconciled
/// the backups directory: ready to serve.
pub struct Prepared {
    app: Arc<App>,
    config: Config,
    /// The source database, which health watches.
    source_db: std::path::PathBuf,
}

/// Everything before serving: store, migrations, crash leftovers, catalog.
pub async fn prepare(config: Config) -> Result<Prepared> {
    let (db, paths, storage) = open(&config).await?;
    tracing::info!(
        state_store = %store::redacted(&paths.database_url),
        source_db = %paths.source_db.display(),
        backups_dir = %paths.backups_dir.display(),
        sqlite = store::sqlite_version(),
        "starting",
    );
    let audit = Recorder::new(db.clone());
    let mut backups = Backups::new(
        db.clone(),
        audit.clone(),
        paths.source_db.clone(),
        storage,
        backup::Limits {
            max_concurrent_copies: config.max_concurrent_copies,
            allow_user_downloads: config.allow_user_downloads,
            max_manual_backups_per_user: config.max_manual_backups_per_user,
        },
    );
    if paths.repository.is_some() {
        // Full copies in the backups directory move into the repository.
        backups = backups.with_legacy(Arc::new(directory(&paths)?));
    }
    let backups = Arc::new(backups);
    backups.start_damage_sweeper();
    let leftovers = backups.recover().await?;
    if !leftovers.is_empty() {
        tracing::warn!(files = ?leftovers, "removed unfinished backup files left by a crash");
    }
    backups.reconcile().await?;
    backups.refresh_damaged_gauge().await;
    let retention = Arc::new(retention::Retention::new(
        audit.clone(),
        Arc::clone(&backups),
    ));
    let scheduler = Arc::new(Scheduler::new(
        db.clone(),
        audit.clone(),
        Arc::clone(&backups),
        Arc::clone(&retention),
        SchedulerConfig {
            check_interval: config.check_interval(),
            lease_ttl: config.lease_ttl(),
            max_concurrent_backups: config.max_concurrent_copies as usize,
        },
    ));
    let shutdown = CancellationToken::new();
    let app = Arc::new(App {
        store: db.clone(),
        auth: Authenticator::new(db.clone()),
        audit_subscriptions: Hub::new(db.clone(), audit.clone(), shutdown.clone()),
        audit,
        backups,
        page_tokens: PageTokens::load(&db).await?,
        scheduler,
        retention,
        shutdown,
        verify_interval: config.verify_interval,
    });
    Ok(Prepared {
        app,
        config,
        source_db: paths.source_db,
    })
}

impl Prepared {
    /// Serves on `listener` until `shutdown` completes, then turns health
    /// NOT_SERVING, lets in-flight RPCs and backups finish (for at most the
    /// shutdown grace period), and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Prepared {
            app,
            config,
            source_db,
        } = self;

        let (health, health_service) = tonic_health::server::health_reporter();
        let source_problem = health::source_problem(&source_db).await;
        if let Some(problem) = &source_problem {
            health::warn_source(&source_db, problem);
        }
        let checks = health::Checks {
            store: true,
            source: source_problem.is_none(),
        };
        checks.publish(&health).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

        let monitor = tokio::spawn(health::watch(
            app.store.clone(),
            source_db,
            health.clone(),
            config.check_interval().min(HEALTH_PROBE_INTERVAL),
            checks,
        ));
        let stopping = Arc::new(tokio::sync::Notify::new());
        let draining = {
            let health = health.clone();
            let stopping = Arc::clone(&stopping);
            let app = Arc::clone(&app);
            async move {
                shutdown.await;
                // Health stays NOT_SERVING from here on, whatever the store does.
                monitor.abort();
                stopping.notify_one();
                tracing::info!("shutting down: health NOT_SERVING, draining in-flight requests");
                for name in std::iter::once("").chain(SERVICE_NAMES) {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                app.shutdown.cancel();
            }
        };
        if !config.no_scheduler {
            app.scheduler.start(0).await?;
        }
        let scrub = (!config.verify_interval.is_zero()).then(|| {
            tokio::spawn(backup::scrub::run(
                Arc::clone(&app.backups),
                config.verify_interval,
                app.shutdown.clone(),
            ))
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = config.tls()? {
            builder = builder
                .tls_config(tls)
                .map_err(|e| Error::Internal(format!("TLS: {e}")))?;
        }
        // Small replies go out at once (Nagle would hold each ~40 ms), and
        // dead peers are noticed.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let reflection = (!config.no_reflection).then_some((reflection_v1, reflection_v1alpha));
        let (reflection_v1, reflection_v1alpha) = reflection.unzip();
        let server = builder
            // Limits: slow or greedy clients cannot pin the server.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(telemetry::RpcLayer)
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(BackupFilesServer::new(
                api::backup_files::BackupFilesApi::new(Arc::clone(&app)),
            ))
            .add_service(BackupSchedulerServer::new(
                api::backup_scheduler::BackupSchedulerApi::new(Arc::clone(&app)),
            ))
            .add_service(RetentionServer::new(api::retention::RetentionApi::new(
                Arc::clone(&app),
            )))
            .add_service(AuditLogServer::new(api::audit_log::AuditLogApi::new(
                Arc::clone(&app),
            )))
            .serve_with_incoming_shutdown(incoming, draining);
        // Clients that keep connections open must not hold the process forever.
        let grace = config.shutdown_grace();
        tokio::select! {
            served = server => served.map_err(|e| Error::Internal(format!("server: {e}")))?,
            () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
            }
        }
        app.scheduler.stop(0).await?;
        if let Some(scrub) = scrub {
            app.shutdown.cancel();
            if let Err(e) = scrub.await {
                tracing::error!(error = %e, "the scrub task failed");
            }
        }
        app.backups.drain().await;
        app.store.clone().close().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use migration::{Migrator, MigratorTrait};
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
        // A store from before the later migrations, holding data.
        let old = sea_orm::Database::connect(&url).await.unwrap();
        Migrator::up(&old, Some(1)).await.unwrap();
        old.execute_unprepared(
            "INSERT INTO users (id, is_admin, created_at) VALUES (7, 0, '2026-01-01T00:00:00+00:00')",
        )
        .await
        .unwrap();
        old.close().await.unwrap();
        let db = store::Store::open(&url).await.unwrap();

        let storage: Arc<dyn BackupStorage> = Arc::new(Directory::create(&backups).unwrap());
        let snapshot = migrate(&db, dir.path(), || async { Ok(storage.clone()) })
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
            Migrator::get_pending_migrations(db.orm())
                .await
                .unwrap()
                .is_empty()
        );

        // Nothing pending: nothing to snapshot, and no storage opened.
        let unopenable = || async { Err(Error::Internal("the storage was opened".into())) };
        assert_eq!(migrate(&db, dir.path(), unopenable).await.unwrap(), None);
    }

    /// A PostgreSQL store holding data is dumped with pg_dump (the test
    /// command puts the cluster's programs on the PATH) before migrating;
    /// pg_restore reads the dump, and it holds the store as it was.
    #[tokio::test]
    async fn a_postgres_store_holding_data_is_dumped_before_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let url = store::tests::new_postgres_database().await;
        let old = sea_orm::Database::connect(&url).await.unwrap();
        Migrator::up(&old, Some(1)).await.unwrap();
        old.execute_unprepared(
            "INSERT INTO users (id, is_admin, created_at) VALUES (7, false, now())",
        )
        .await
        .unwrap();
        old.close().await.unwrap();
        let db = store::Store::open(&url).await.unwrap();
        let unopenable = || async { Err(Error::Internal("the storage was opened".into())) };
        let dump = migrate(&db, dir.path(), unopenable)
            .await
            .unwrap()
            .expect("a dump");
        let listed = std::process::Command::new("pg_restore")
            .arg("--list")
            .arg(&dump)
            .output()
            .expect("run pg_restore");
        assert!(listed.status.success(), "{listed:?}");
        let contents = String::from_utf8_lossy(&listed.stdout);
        assert!(contents.contains("TABLE public users"), "{contents}");
        assert!(
            !contents.contains("backup_settings"),
            "the dump predates the migration: {contents}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "only the finished dump is left: {names:?}");
        assert!(
            Migrator::get_pending_migrations(db.orm())
                .await
                .unwrap()
                .is_empty()
        );
    }
}
