//! The state store: connection setup, write transactions, migrations, and
//! the queries of each table ([`backups`]); entities never leave `store/`.
//!
//! Queries are built by SeaORM, the same for SQLite and PostgreSQL; the few
//! statements that differ by engine (the lease, the clock, notifications,
//! the audit commit order) come from [`engine`]. The connection's SQLite
//! settings (WAL, busy timeout, one writer) are here, and [`sqlite_reads`]
//! runs the reads an RPC waits on off sqlx's threads.

pub mod advisory;
pub mod audit;
pub mod backups;
pub mod clock;
pub mod dump;
mod engine;
pub mod entity;
pub mod lease;
pub mod notify;
mod postgres_reads;
pub mod runs;
pub mod secrets;
pub mod settings;
mod sqlite_reads;
pub mod tokens;

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, ExecResult, QueryResult, QueryTrait, Select, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait, TryIntoModel,
};

use self::postgres_reads::PostgresReads;
use self::sqlite_reads::SqliteReads;
use crate::error::Result;

/// A write transaction, from [`Store::begin_write`].
pub use sea_orm::DatabaseTransaction as Transaction;

/// What the store's query functions run on: a write transaction or the
/// readers ([`Store::reads`]). Domain code passes it through, never queries
/// it itself.
pub trait Connection: ConnectionTrait + Sized {
    /// The rows `select` finds: for the readers of a SQLite file, run on
    /// the calling thread. For keyed lookups and pages, not long scans.
    fn rows<E>(&self, select: Select<E>) -> impl Future<Output = Result<Vec<E::Model>>> + Send
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        async move { Ok(select.all(self).await?) }
    }

    /// The first row `select` finds, as [`Connection::rows`] finds it.
    fn row<E>(&self, select: Select<E>) -> impl Future<Output = Result<Option<E::Model>>> + Send
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        use sea_orm::QuerySelect;
        async move { Ok(self.rows(select.limit(1)).await?.into_iter().next()) }
    }
}

impl Connection for Transaction {}

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the state store each connection maps into memory.
const MMAP_BYTES: u64 = 256 << 20;

/// Connections that serve reads beside the writer: WAL lets them read
/// while it writes, so a read never queues behind a write.
const READ_CONNECTIONS: u32 = 4;

/// How long a query waits for a connection before it is UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The state store: one writer connection, through which every change goes
/// in order, and a pool of readers beside it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// For queries outside a write transaction.
    reads: Reads,
    /// For write transactions only ([`Store::begin_write`]); `None` when
    /// they share the readers' one connection (an in-memory database).
    writes: Option<DatabaseConnection>,
    /// The SQLite file, as SQLite itself resolved the URL; `None` in memory
    /// or on another engine.
    file: Option<PathBuf>,
    /// The URL it was opened with.
    url: String,
}

/// The readers: a pool of read-only connections and the faster path of
/// [`Connection::rows`], for a SQLite file or PostgreSQL.
#[derive(Clone)]
pub struct Reads {
    pool: DatabaseConnection,
    sqlite: Option<Arc<SqliteReads>>,
    postgres: Option<Arc<PostgresReads>>,
}

impl Store {
    /// Opens the state store at `url`, creating a SQLite file if missing.
    /// SQLite gets WAL, a busy timeout, one writer (so this process never
    /// contends with itself for the write lock) and read-only readers; an
    /// in-memory database is one connection for both.
    pub async fn open(url: &str) -> Result<Self> {
        let writer = connect(url, Role::Writer).await?;
        let file = if is_sqlite(url) {
            main_file(&writer).await?
        } else {
            None
        };
        // An in-memory SQLite database lives in its one connection.
        if is_sqlite(url) && file.is_none() {
            return Ok(Self {
                reads: Reads {
                    pool: writer,
                    sqlite: None,
                    postgres: None,
                },
                writes: None,
                file,
                url: url.to_owned(),
            });
        }
        let sqlite = file
            .clone()
            .map(|path| Arc::new(SqliteReads::new(path, MMAP_BYTES)));
        let pool = connect(url, Role::Reader).await?;
        let postgres = (pool.get_database_backend() == DbBackend::Postgres)
            .then(|| Arc::new(PostgresReads::new(pool.get_postgres_connection_pool())));
        Ok(Self {
            reads: Reads {
                pool,
                sqlite,
                postgres,
            },
            writes: Some(writer),
            file,
            url: url.to_owned(),
        })
    }

    /// What reads go through, never inside a write.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    fn writer(&self) -> &DatabaseConnection {
        self.writes.as_ref().unwrap_or(&self.reads.pool)
    }

    /// The writer connection, for tests that migrate by hand.
    #[cfg(test)]
    pub fn orm(&self) -> &DatabaseConnection {
        self.writer()
    }

    /// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`: it
    /// takes the write lock up front (waiting out other processes within
    /// the busy timeout) instead of failing with SQLITE_BUSY when a read
    /// upgrades to a write.
    pub async fn begin_write(&self) -> Result<DatabaseTransaction> {
        Ok(self
            .writer()
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?)
    }

    /// Opens and rolls back a write transaction: fails while the store is
    /// unreachable or held by another writer past the busy timeout, when
    /// every RPC (each writes an audit event) would fail too. Health
    /// checks use it.
    pub async fn probe(&self) -> Result<()> {
        use sea_orm::{EntityTrait, QuerySelect};
        let txn = self.begin_write().await?;
        entity::secret::Entity::find().limit(1).all(&txn).await?;
        txn.rollback().await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(self) -> Result<()> {
        if let Some(postgres) = &self.reads.postgres {
            postgres.close();
        }
        self.reads.pool.close().await?;
        if let Some(writes) = self.writes {
            writes.close().await?;
        }
        Ok(())
    }
}

impl Connection for Reads {
    fn rows<E>(&self, select: Select<E>) -> impl Future<Output = Result<Vec<E::Model>>> + Send
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        let statement = select.build(self.get_database_backend());
        async move {
            // Locked: the pool waits out the lock on its own thread.
            if let Some(sqlite) = &self.sqlite
                && let Some(rows) = sqlite.rows::<E>(&statement)?
            {
                return Ok(rows);
            }
            if let Some(postgres) = &self.postgres {
                return postgres.rows::<E>(&statement).await;
            }
            Ok(E::find().from_raw_sql(statement).all(&self.pool).await?)
        }
    }
}

/// Everything else the readers run goes through the pool.
#[async_trait::async_trait]
impl ConnectionTrait for Reads {
    fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.pool.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.pool.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.pool.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.pool.query_all_raw(stmt).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

async fn connect(url: &str, role: Role) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // Keep the connections: reopening would cost a WAL recovery check.
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>);
    if !is_sqlite(url) {
        // sqlx pings a connection each time it is handed out, a round trip
        // per query; only one left idle a while may have been dropped.
        options.test_before_acquire_if_idle_for(Duration::from_secs(30));
    } else {
        let connections = match role {
            Role::Writer => 1,
            Role::Reader => READ_CONNECTIONS,
        };
        options
            .max_connections(connections)
            .min_connections(connections)
            .map_sqlx_sqlite_opts(move |o| {
                let o = o
                    .busy_timeout(BUSY_TIMEOUT)
                    .foreign_keys(true)
                    // Reads map the file instead of copying each page in
                    // through a syscall (pages in the WAL still are).
                    .pragma("mmap_size", MMAP_BYTES.to_string());
                match role {
                    Role::Writer => o
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .create_if_missing(true),
                    Role::Reader => o.read_only(true),
                }
            });
    }
    Ok(Database::connect(options).await?)
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The file SQLite opened as `db`'s main database (after it decoded the
/// URL: percent escapes, `mode=memory`), `None` for one in memory.
async fn main_file(db: &DatabaseConnection) -> Result<Option<PathBuf>> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
        ))
        .await?;
    let file: String = match row {
        Some(row) => row.try_get("", "file")?,
        None => String::new(),
    };
    Ok((!file.is_empty()).then(|| PathBuf::from(file)))
}

/// `url` without its password, for logs: a PostgreSQL URL may carry one.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only URLs that cannot have a password refuse one.
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The file a SQLite URL (`sqlite://path?mode=rwc`) names, as written: for
/// messages about a store that could not be opened.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// The SQLite library version linked into this binary.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}

/// Migrations about to be applied, under the lock that keeps another
/// process on the same store (a server and `token create`, two replicas)
/// from applying them at the same time. Dropping it unapplied releases the
/// lock.
pub struct Migrations<'a> {
    db: &'a DatabaseConnection,
    /// How many are pending.
    pending: usize,
    /// Whether the store already holds data (some migrations were applied):
    /// then it is worth a snapshot before applying more.
    holds_data: bool,
    /// The store's file, when it is SQLite.
    file: Option<&'a Path>,
    url: &'a str,
    _lock: MigrationLock,
}

/// What keeps two processes from migrating one store at once: an advisory
/// lock on `<state>.migrate-lock` beside a SQLite file; on PostgreSQL, the
/// database's own session-level advisory lock, on a connection of its own
/// that is closed (releasing it) when this is dropped.
enum MigrationLock {
    File {
        _held: File,
    },
    Postgres {
        _held: advisory::Held,
    },
    /// An in-memory SQLite database has no other process.
    None,
}

impl MigrationLock {
    async fn take(store: &Store) -> Result<Self> {
        if let Some(path) = store.file.clone() {
            let lock = path.with_extension("migrate-lock");
            return Ok(Self::File {
                _held: crate::blocking::blocking(move || lock_file(&lock)).await?,
            });
        }
        Ok(match advisory::Lock::on(store, advisory::Key::Migrations) {
            Some(lock) => Self::Postgres {
                _held: lock.hold(advisory::Mode::Exclusive).await?,
            },
            None => Self::None,
        })
    }
}

/// Takes the migration lock and looks what is pending.
pub async fn pending_migrations(store: &Store) -> Result<Migrations<'_>> {
    let lock = MigrationLock::take(store).await?;
    let db = store.writer();
    let pending = Migrator::get_pending_migrations(db).await?.len();
    let applied = Migrator::get_applied_migrations(db).await?.len();
    Ok(Migrations {
        db,
        pending,
        holds_data: applied > 0,
        file: store.file.as_deref(),
        url: &store.url,
        _lock: lock,
    })
}

/// What to snapshot before migrating a store that holds data.
pub enum Snapshot<'a> {
    /// The SQLite file, into the backup storage.
    File(&'a Path),
    /// The PostgreSQL database at this URL, with `pg_dump`.
    Postgres { url: &'a str },
}

impl Migrations<'_> {
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// What to snapshot when migrations are pending and the store already
    /// holds data: a bad migration can be undone from a snapshot taken now.
    pub fn snapshot_first(&self) -> Option<Snapshot<'_>> {
        if self.pending == 0 || !self.holds_data {
            return None;
        }
        match self.file {
            Some(file) => Some(Snapshot::File(file)),
            None if self.db.get_database_backend() == DbBackend::Postgres => {
                Some(Snapshot::Postgres { url: self.url })
            }
            None => None,
        }
    }

    /// Applies every pending migration, then releases the lock.
    pub async fn apply(self) -> Result<()> {
        Migrator::up(self.db, None).await?;
        Ok(())
    }
}

/// A driver error met outside SeaORM, as SeaORM reports its own.
fn sqlx_error(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(e)))
}

/// Takes an exclusive advisory lock on the file at `path` (created mode
/// 0600 if missing), held until the file is dropped or the process dies.
fn lock_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true).mode(0o600);
    let file = options.open(path)?;
    file.lock()?;
    Ok(file)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_logged_urls() {
        assert_eq!(
            redacted("postgres://backup:s3cret@db.internal:5432/state"),
            "postgres://backup:redacted@db.internal:5432/state"
        );
        let plain = "sqlite:///var/lib/backup/state.db?mode=rwc";
        assert_eq!(redacted(plain), plain);
    }

    /// The state store's engines.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Backend {
        Sqlite,
        Postgres,
    }

    /// A fresh, migrated state store: SQLite in memory, or a new database in
    /// the PostgreSQL cluster `BACKUP_TEST_POSTGRES` names (a URL of its
    /// `postgres` database; tests/run.sh starts a throwaway cluster and sets
    /// it).
    pub(crate) async fn fresh_store(backend: Backend) -> Store {
        let url = match backend {
            Backend::Sqlite => "sqlite::memory:".to_owned(),
            Backend::Postgres => new_postgres_database().await,
        };
        let db = Store::open(&url).await.unwrap();
        Migrator::up(db.orm(), None).await.unwrap();
        db
    }

    pub(crate) async fn new_postgres_database() -> String {
        let Ok(server) = std::env::var("BACKUP_TEST_POSTGRES") else {
            panic!(
                "BACKUP_TEST_POSTGRES names no PostgreSQL server: run tests/run.sh, which \
                 starts a throwaway cluster and sets it"
            );
        };
        let admin = Database::connect(&server).await.unwrap();
        let name = format!("store_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let (cluster, _) = server.rsplit_once('/').expect("a URL with a database");
        format!("{cluster}/{name}")
    }

    /// Replicas starting together on a new PostgreSQL database each try to
    /// apply every migration; the advisory lock lets one at a time look,
    /// so they are applied once and none fails (without it, they race to
    /// create the same tables).
    #[tokio::test]
    async fn replicas_migrating_one_postgres_database_at_once_apply_each_migration_once() {
        let url = new_postgres_database().await;
        let migrate = |url: String| async move {
            let store = Store::open(&url).await?;
            let migrations = pending_migrations(&store).await?;
            let pending = migrations.pending();
            migrations.apply().await?;
            Ok::<_, crate::error::Error>(pending)
        };
        let (a, b, c) = tokio::join!(migrate(url.clone()), migrate(url.clone()), migrate(url));
        let mut applied = [a.unwrap(), b.unwrap(), c.unwrap()];
        applied.sort_unstable();
        assert_eq!(applied, [0, 0, Migrator::migrations().len()]);
    }

    /// Runs the async test `body` (taking a fresh [`Store`]) once on each
    /// backend, as tests `NAME::sqlite` and `NAME::postgres`.
    macro_rules! on_each_backend {
        ($name:ident, $body:expr) => {
            mod $name {
                use super::*;
                use crate::store::tests::{Backend, fresh_store};

                #[tokio::test]
                async fn sqlite() {
                    ($body)(fresh_store(Backend::Sqlite).await).await
                }

                #[tokio::test]
                async fn postgres() {
                    ($body)(fresh_store(Backend::Postgres).await).await
                }
            }
        };
    }
    pub(crate) use on_each_backend;

    /// How SQLite runs `query` on `db`: the detail lines of its plan.
    pub(crate) async fn query_plan(db: &Store, query: &impl QueryTrait) -> Vec<String> {
        let backend = db.reads().get_database_backend();
        let sql = query.build(backend).to_string();
        db.reads()
            .query_all_raw(Statement::from_string(
                backend,
                format!("EXPLAIN QUERY PLAN {sql}"),
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect()
    }

    /// The store reads, locks and snapshots the file SQLite opened, as
    /// SQLite decoded the URL, not the URL's text.
    #[tokio::test]
    async fn the_store_uses_the_file_sqlite_opened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("with space")).unwrap();
        let url = format!(
            "sqlite://{}/with%20space/state.db?mode=rwc",
            dir.path().display()
        );
        let db = Store::open(&url).await.unwrap();
        let file = dir
            .path()
            .join("with space/state.db")
            .canonicalize()
            .unwrap();
        assert_eq!(
            db.file.as_deref().map(|f| f.canonicalize().unwrap()),
            Some(file)
        );
        Migrator::up(db.orm(), None).await.unwrap();
        // The calling-thread readers open that file, or this fails.
        assert_eq!(settings::get(db.reads(), 1).await.unwrap(), None);
        assert!(db.reads().sqlite.is_some());

        let memory = Store::open("sqlite://named?mode=memory").await.unwrap();
        assert!(memory.file.is_none() && memory.writes.is_none());
        assert!(!dir.path().join("named").exists() && !Path::new("named").exists());
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
