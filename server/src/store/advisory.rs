//! Locks that every process on one PostgreSQL store sees, on whatever
//! host it runs: session-level advisory locks, each held on a connection
//! of its own and released when that connection closes (dropped, or the
//! process died). A SQLite store has no such lock: its processes share a
//! host, and lock files there instead.

use sea_orm::DbBackend;
use sea_orm::sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::Mutex;

use super::{Store, sqlx_error};
use crate::error::Result;

/// What a lock keeps apart; each is one advisory lock key.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    /// Processes applying migrations.
    Migrations,
    /// Backups writing into the repository, and its prunes.
    RepositoryPrunes,
}

impl Key {
    /// The key, spelled in ASCII so `pg_locks` shows what holds it.
    fn id(self) -> i64 {
        match self {
            Key::Migrations => 0x4d49_4752_4154_4553, // "MIGRATES"
            Key::RepositoryPrunes => 0x5245_504f_5052_554e, // "REPOPRUN"
        }
    }
}

/// Shared, held by many at once, or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// The advisory lock `key` of a PostgreSQL store.
#[derive(Clone)]
pub struct Lock {
    pool: PgPool,
    key: Key,
}

/// A held [`Lock`], released when dropped.
pub struct Held {
    conn: Mutex<PgConnection>,
}

impl Lock {
    /// Lock `key` of `store`; `None` unless it is PostgreSQL.
    pub fn on(store: &Store, key: Key) -> Option<Self> {
        let db = store.writer();
        (db.get_database_backend() == DbBackend::Postgres).then(|| Self {
            pool: db.get_postgres_connection_pool().clone(),
            key,
        })
    }

    /// Waits until the lock is held in `mode`, on a connection taken out of
    /// the pool for as long as it is.
    pub async fn hold(&self, mode: Mode) -> Result<Held> {
        let sql = match mode {
            Mode::Shared => "SELECT pg_advisory_lock_shared($1)",
            Mode::Exclusive => "SELECT pg_advisory_lock($1)",
        };
        let held = async {
            let mut conn = self.pool.acquire().await?.detach();
            sea_orm::sqlx::query(sql)
                .bind(self.key.id())
                .execute(&mut conn)
                .await?;
            Ok(conn)
        };
        let conn = held.await.map_err(sqlx_error)?;
        Ok(Held {
            conn: Mutex::new(conn),
        })
    }
}

impl Held {
    /// Fails unless the connection the lock is held on is still open: the
    /// database releases a lock whose connection it lost.
    pub async fn confirm(&self) -> Result<()> {
        Ok(self.conn.lock().await.ping().await.map_err(sqlx_error)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::{Backend, fresh_store};

    /// Shared holders exclude an exclusive one and not each other; a lock
    /// whose connection is gone is released, and its holder can tell.
    #[tokio::test]
    async fn shared_holders_keep_an_exclusive_one_waiting_until_they_let_go() {
        let store = fresh_store(Backend::Postgres).await;
        let lock = Lock::on(&store, Key::RepositoryPrunes).expect("a PostgreSQL store");
        let (a, b) = (
            lock.hold(Mode::Shared).await.unwrap(),
            lock.hold(Mode::Shared).await.unwrap(),
        );
        let waiting = tokio::time::timeout(Duration::from_millis(300), lock.hold(Mode::Exclusive));
        assert!(waiting.await.is_err(), "exclusive while shared was held");
        drop(a);
        let waiting = tokio::time::timeout(Duration::from_millis(300), lock.hold(Mode::Exclusive));
        assert!(
            waiting.await.is_err(),
            "exclusive while one shared was left"
        );
        b.confirm().await.unwrap();

        // The database ends b's session, as it would a lost connection.
        let other = lock.hold(Mode::Exclusive);
        let pid: i32 = {
            let mut conn = b.conn.lock().await;
            sea_orm::sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .unwrap()
        };
        let killer = lock.pool.clone();
        sea_orm::sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&killer)
            .await
            .unwrap();
        let exclusive = tokio::time::timeout(Duration::from_secs(10), other).await;
        assert!(exclusive.expect("released with its session").is_ok());
        assert!(b.confirm().await.is_err(), "a lost lock confirmed");
    }

    #[tokio::test]
    async fn a_sqlite_store_has_no_advisory_locks() {
        let store = fresh_store(Backend::Sqlite).await;
        assert!(Lock::on(&store, Key::Migrations).is_none());
    }
}
