//! Reads of a SQLite state store run on the calling thread.
//!
//! sqlx gives each SQLite connection a worker thread, so every query through
//! the pool is two thread switches; for the keyed lookups and pages an RPC
//! waits on, those switches cost more than the query. Here a query built by
//! SeaORM runs on read-only rusqlite connections of the same file, from the
//! calling thread, with its statement prepared once per connection, and its
//! rows are decoded into the entity's model by the entity's own column
//! types (as sqlx's driver does, so both paths give the same models). A
//! query that would wait for a lock is handed back (`Ok(None)`) to the
//! pool, which waits on its own thread: the caller never blocks.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::OpenFlags;
use rusqlite::config::DbConfig;
use rusqlite::types::{Value as Sql, ValueRef};
use sea_orm::sea_query::{ColumnType, Value};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, Statement, TryIntoModel};

use crate::error::{Error, Result};

/// Idle connections kept for reuse; callers run on the runtime's threads,
/// so more than this are rarely open at once.
const IDLE_CONNECTIONS: usize = 8;

/// Prepared statements each connection keeps: more than the store has
/// shapes of query that go through here, so none is prepared twice.
const STATEMENTS: usize = 64;

/// Read-only connections to one SQLite file, opened as callers need them.
pub struct SqliteReads {
    path: PathBuf,
    mmap_bytes: u64,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl SqliteReads {
    pub fn new(path: PathBuf, mmap_bytes: u64) -> Self {
        Self {
            path,
            mmap_bytes,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The rows of `E` that `statement` (a SQLite select of whole rows)
    /// finds, or `None` when the file is locked (the caller then runs it
    /// where it may wait).
    pub fn rows<E>(&self, statement: &Statement) -> Result<Option<Vec<E::Model>>>
    where
        E: EntityTrait,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        let found = self.checkout().map_err(Error::from).and_then(|conn| {
            let rows = query::<E>(&conn, statement)?;
            self.checkin(conn);
            Ok(rows)
        });
        match found {
            Ok(rows) => Ok(Some(rows)),
            Err(Error::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn checkout(&self) -> rusqlite::Result<rusqlite::Connection> {
        if let Some(conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(conn);
        }
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never wait for a lock on the caller's thread.
        conn.busy_timeout(Duration::ZERO)?;
        // Plans that never look at bound values (a `LIMIT ?` would): else
        // each new binding makes SQLite parse and plan a cached statement
        // again.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.pragma_update(None, "mmap_size", self.mmap_bytes.to_string())?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(conn)
    }

    fn checkin(&self, conn: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }
}

fn query<E>(conn: &rusqlite::Connection, statement: &Statement) -> Result<Vec<E::Model>>
where
    E: EntityTrait,
    E::ActiveModel: TryIntoModel<E::Model>,
{
    let params = statement
        .values
        .iter()
        .flat_map(|values| values.0.iter())
        .map(bind)
        .collect::<Result<Vec<_>>>()?;
    let mut prepared = conn.prepare_cached(&statement.sql)?;
    let columns = prepared
        .column_names()
        .into_iter()
        .map(|name| {
            let column = E::Column::from_str(name).map_err(|_| {
                Error::Internal(format!(
                    "a query of {} returned the unknown column {name:?}",
                    E::default().table_name()
                ))
            })?;
            Ok((column, column.def().get_column_type().clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rows = prepared.query(rusqlite::params_from_iter(params))?;
    let mut models = Vec::new();
    while let Some(row) = rows.next()? {
        let mut model = E::ActiveModel::default();
        for (i, (column, kind)) in columns.iter().enumerate() {
            model.try_set(*column, decode(row, i, kind)?)?;
        }
        models.push(model.try_into_model()?);
    }
    Ok(models)
}

/// A parameter as sqlx's SQLite driver encodes it, so comparisons with
/// stored values (all written through sqlx) match exactly.
fn bind(value: &Value) -> Result<Sql> {
    let int = |v: Option<i64>| v.map_or(Sql::Null, Sql::Integer);
    Ok(match value {
        Value::Bool(v) => int(v.map(i64::from)),
        Value::TinyInt(v) => int(v.map(i64::from)),
        Value::SmallInt(v) => int(v.map(i64::from)),
        Value::Int(v) => int(v.map(i64::from)),
        Value::BigInt(v) => int(*v),
        Value::TinyUnsigned(v) => int(v.map(i64::from)),
        Value::SmallUnsigned(v) => int(v.map(i64::from)),
        Value::Unsigned(v) => int(v.map(i64::from)),
        Value::BigUnsigned(v) => match v.map(i64::try_from).transpose() {
            Ok(v) => int(v),
            Err(_) => {
                return Err(Error::Internal(format!(
                    "the query parameter {v:?} is too large for SQLite"
                )));
            }
        },
        Value::String(v) => v.clone().map_or(Sql::Null, Sql::Text),
        Value::Bytes(v) => v.clone().map_or(Sql::Null, Sql::Blob),
        Value::ChronoDateTimeUtc(v) => v.map_or(Sql::Null, |t: DateTime<Utc>| {
            Sql::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
        }),
        Value::ChronoDate(v) => v.map_or(Sql::Null, |d: NaiveDate| {
            Sql::Text(d.format("%F").to_string())
        }),
        _ => {
            return Err(Error::Internal(
                "a query parameter of this type is not read on the calling thread".into(),
            ));
        }
    })
}

/// A stored time. sqlx writes RFC 3339, which chrono's own parser for it
/// reads several times faster than a format string; rusqlite parses the
/// other forms SQLite keeps times in.
fn timestamp(row: &rusqlite::Row<'_>, i: usize) -> Result<Option<DateTime<Utc>>> {
    if let ValueRef::Text(text) = row.get_ref(i)?
        && let Ok(parsed) = std::str::from_utf8(text).map(DateTime::parse_from_rfc3339)
        && let Ok(at) = parsed
    {
        return Ok(Some(at.to_utc()));
    }
    Ok(row.get(i)?)
}

/// Column `i` of `row` as the entity's column type expects it.
fn decode(row: &rusqlite::Row<'_>, i: usize, kind: &ColumnType) -> Result<Value> {
    Ok(match kind {
        ColumnType::BigInteger => Value::BigInt(row.get(i)?),
        ColumnType::Integer => Value::Int(row.get(i)?),
        ColumnType::Boolean => Value::Bool(row.get(i)?),
        ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_) => {
            Value::String(row.get(i)?)
        }
        ColumnType::TimestampWithTimeZone => Value::ChronoDateTimeUtc(timestamp(row, i)?),
        ColumnType::Date => Value::ChronoDate(row.get(i)?),
        other => {
            return Err(Error::Internal(format!(
                "a column of type {other:?} is not read on the calling thread"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{DbBackend, EntityTrait, QueryTrait, TryIntoModel};

    use crate::model::backup::{Backup, BackupKind, Cursor};
    use crate::model::settings::{Frequency, KeepCount, Settings};
    use crate::store::entity::{api_token, backup, backup_settings, user};
    use crate::store::{self, Store};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    /// A migrated store in a file (the calling-thread path needs one),
    /// holding rows with every kind of value: fractions of a second or
    /// none, NULLs, dates.
    async fn filled_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("state.db").display()
        );
        let db = Store::open(&url).await.unwrap();
        Migrator::up(db.orm(), None).await.unwrap();
        let txn = db.begin_write().await.unwrap();
        for (id, admin) in [(1, false), (2, true)] {
            store::tokens::ensure_user(&txn, id, admin, at("2026-01-01T00:00:00Z"))
                .await
                .unwrap();
        }
        store::tokens::insert(&txn, 1, "aa".into(), at("2026-01-01T00:00:00.25Z"), None)
            .await
            .unwrap();
        let expires = Some(at("2027-01-01T00:00:00Z"));
        store::tokens::insert(&txn, 2, "bb".into(), at("2026-01-02T00:00:00Z"), expires)
            .await
            .unwrap();
        for (user_id, anchor) in [(1, None), (2, NaiveDate::from_ymd_opt(2026, 2, 3))] {
            let settings = Settings {
                user_id,
                enabled: user_id == 2,
                frequency: Frequency::Weekly,
                backup_time: NaiveTime::from_hms_opt(3, 30, 0).unwrap(),
                keep_count: KeepCount::new(7, "keep_count").unwrap(),
                timezone: chrono_tz::Europe::Paris,
                anchor_date: anchor,
                last_backup_at: None,
                next_backup_at: anchor.map(|_| at("2026-02-10T02:30:00Z")),
                created_at: at("2026-01-01T00:00:00.123456Z"),
                updated_at: at("2026-01-01T00:00:01Z"),
            };
            store::settings::insert(&txn, &settings).await.unwrap();
        }
        let times = [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T00:00:00.123456789Z",
            "2026-01-02T10:00:00Z",
        ];
        for (i, time) in times.into_iter().enumerate() {
            let backup = Backup {
                filename: format!("b{i}.db"),
                name: format!("b{i}"),
                owner_user_id: (i % 2) as i64 + 1,
                kind: BackupKind::Manual,
                size_bytes: 4096 * i as i64,
                sha256: format!("{i:064}"),
                is_protected: i == 3,
                created_at: at(time),
                damage: (i == 1).then(|| "its size is wrong".to_string()),
                last_verified_at: (i == 1).then(|| at("2026-01-03T00:00:00Z")),
                blake3: (i == 2).then(|| format!("{i:064}")),
                stored_bytes: 100 * i as i64,
            };
            store::backups::insert(&txn, backup).await.unwrap();
        }
        txn.commit().await.unwrap();
        (dir, db)
    }

    /// Every row of `E`, read both ways: the calling thread must serve it
    /// and find exactly what sqlx finds.
    async fn same_rows<E>(db: &Store)
    where
        E: EntityTrait,
        E::Model: PartialEq + std::fmt::Debug,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        let reads = db.reads();
        let statement = E::find().build(DbBackend::Sqlite);
        let here = reads
            .sqlite
            .as_ref()
            .unwrap()
            .rows::<E>(&statement)
            .unwrap();
        let pooled = E::find().all(&reads.pool).await.unwrap();
        assert!(!pooled.is_empty());
        assert_eq!(here.as_ref(), Some(&pooled));
    }

    #[tokio::test]
    async fn the_calling_thread_reads_the_models_sqlx_reads() {
        let (_dir, db) = filled_store().await;
        same_rows::<backup::Entity>(&db).await;
        same_rows::<backup_settings::Entity>(&db).await;
        same_rows::<api_token::Entity>(&db).await;
        same_rows::<user::Entity>(&db).await;
    }

    /// Parameters are bound as sqlx binds them, so a cursor compares with
    /// the stored text the same way on both paths (a transaction's reads
    /// go through sqlx).
    #[tokio::test]
    async fn pages_after_a_cursor_are_the_same_on_both_paths() {
        let (_dir, db) = filled_store().await;
        let all = store::backups::page(db.reads(), None, None, 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 5);
        let txn = db.begin_write().await.unwrap();
        for owner in [None, Some(1), Some(2)] {
            for after in &all {
                let cursor = Cursor {
                    created_at: after.created_at,
                    filename: after.filename.clone(),
                };
                let here = store::backups::page(db.reads(), owner, Some(&cursor), 2)
                    .await
                    .unwrap();
                let there = store::backups::page(&txn, owner, Some(&cursor), 2)
                    .await
                    .unwrap();
                assert_eq!(here, there, "after {cursor:?} of owner {owner:?}");
            }
        }
        let found = store::tokens::by_hash(db.reads(), "bb").await.unwrap();
        let (token, stored) = found.unwrap();
        assert_eq!(
            (token.user_id, token.is_admin, stored.as_str()),
            (2, true, "bb")
        );
        assert!(
            store::tokens::by_hash(db.reads(), "cc")
                .await
                .unwrap()
                .is_none()
        );
        let settings = store::settings::get(db.reads(), 2).await.unwrap().unwrap();
        assert_eq!(
            settings,
            store::settings::get(&txn, 2).await.unwrap().unwrap()
        );
    }

    /// A real lock that keeps readers out (WAL lets readers past a writer,
    /// so the file goes back to a rollback journal, where an exclusive
    /// lock stops them): the calling thread hands the query back at once,
    /// and the pool waits the lock out.
    #[tokio::test]
    async fn a_locked_store_is_read_by_the_pool_once_the_lock_goes() {
        let (dir, db) = filled_store().await;
        db.close().await.unwrap();
        let path = dir.path().join("state.db");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder
            .pragma_update(None, "journal_mode", "DELETE")
            .unwrap();
        let url = format!("sqlite://{}", path.display());
        let reads = crate::store::Reads {
            pool: crate::store::connect(&url, crate::store::Role::Reader)
                .await
                .unwrap(),
            sqlite: Some(std::sync::Arc::new(super::SqliteReads::new(path, 0))),
            postgres: None,
        };
        holder
            .execute_batch("BEGIN EXCLUSIVE; UPDATE users SET is_admin = is_admin;")
            .unwrap();

        let statement = user::Entity::find().build(DbBackend::Sqlite);
        let sqlite = reads.sqlite.as_ref().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(sqlite.rows::<user::Entity>(&statement).unwrap(), None);
        assert!(started.elapsed() < std::time::Duration::from_millis(100));

        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            holder.execute_batch("COMMIT;").unwrap();
            drop(holder);
        });
        let found = store::tokens::user(&reads, 2).await.unwrap();
        assert!(found.is_some_and(|u| u.is_admin));
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        release.join().unwrap();
    }
}
