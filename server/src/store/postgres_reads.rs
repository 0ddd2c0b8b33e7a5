//! Reads of a PostgreSQL state store on connections kept here.
//!
//! sqlx's pool pings every connection handed back to it (to flush what a
//! cancelled query may have left), a round trip that doubles the cost of
//! the keyed lookups an RPC waits on. Here such a query runs on a
//! connection taken from a small set of this module's own, and the
//! connection goes back only after its query completed; one whose query
//! failed, or whose caller gave up mid-way, is closed instead.

use std::sync::Mutex;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{
    ConnAcquireErr, DbErr, EntityTrait, FromQueryResult, QueryResult, RuntimeErr, Statement, Values,
};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Semaphore;

use super::{ACQUIRE_TIMEOUT, sqlx_error};
use crate::error::{Error, Result};

/// Connections open at once for these reads: a few per core is as many as
/// PostgreSQL serves this process's queries with in parallel.
const CONNECTIONS: usize = 10;

pub struct PostgresReads {
    options: PgConnectOptions,
    /// One permit per connection that may be open.
    slots: Semaphore,
    idle: Mutex<Vec<PgConnection>>,
}

impl PostgresReads {
    /// Reads that connect as `pool` does.
    pub fn new(pool: &PgPool) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            slots: Semaphore::new(CONNECTIONS),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The rows of `E` that `statement` (a select of whole rows) finds.
    pub async fn rows<E: EntityTrait>(&self, statement: &Statement) -> Result<Vec<E::Model>> {
        let _slot = self.slots.acquire().await.map_err(|_| closed())?;
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let rows = match kept {
            Some(mut conn) => match query(&mut conn, statement).await {
                Ok(rows) => self.keep(conn, rows),
                Err(e) => {
                    let garbled = matches!(e, sqlx::Error::Protocol(_));
                    match Error::from(sqlx_error(e)) {
                        // A kept connection the server has since closed (it
                        // restarted, or ended idle sessions): once more on a
                        // new one.
                        Error::Unavailable(_) => self.fresh(statement).await?,
                        _ if garbled => self.fresh(statement).await?,
                        other => return Err(other),
                    }
                }
            },
            None => self.fresh(statement).await?,
        };
        rows.iter()
            .map(|row| Ok(E::Model::from_query_result(row, "")?))
            .collect()
    }

    async fn fresh(&self, statement: &Statement) -> Result<Vec<QueryResult>, DbErr> {
        let connecting = tokio::time::timeout(ACQUIRE_TIMEOUT, self.options.connect());
        let mut conn = connecting
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?
            .map_err(sqlx_error)?;
        let rows = query(&mut conn, statement).await.map_err(sqlx_error)?;
        Ok(self.keep(conn, rows))
    }

    /// Closes the kept connections; reads after this fail.
    pub fn close(&self) {
        self.slots.close();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn keep(&self, conn: PgConnection, rows: Vec<QueryResult>) -> Vec<QueryResult> {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        rows
    }
}

async fn query(
    conn: &mut PgConnection,
    statement: &Statement,
) -> Result<Vec<QueryResult>, sqlx::Error> {
    let values = SqlxValues(statement.values.clone().unwrap_or(Values(Vec::new())));
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(statement.sql.as_str()), values)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(QueryResult::from).collect())
}

fn closed() -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(
        "the state store's readers are closed".into(),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::{ConnectionTrait, DbBackend};

    use super::*;
    use crate::store::entity::secret;
    use crate::store::tests::{Backend, fresh_store};

    fn kept(reads: &PostgresReads) -> usize {
        reads.idle.lock().unwrap().len()
    }

    /// A connection goes back once its query completed, and only then; a
    /// kept one the server closed is replaced without the caller seeing it.
    #[tokio::test]
    async fn connections_are_kept_after_whole_queries_and_replaced_once_closed() {
        let store = fresh_store(Backend::Postgres).await;
        let reads = store.reads.postgres.clone().expect("PostgreSQL reads");
        let select = |sql: &str| Statement::from_string(DbBackend::Postgres, sql);
        let all = select("SELECT * FROM secrets");
        reads.rows::<secret::Entity>(&all).await.unwrap();
        reads.rows::<secret::Entity>(&all).await.unwrap();
        assert_eq!(
            kept(&reads),
            1,
            "one connection serves reads one after another"
        );

        let slow = select("SELECT secrets.* FROM secrets, pg_sleep(2)");
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            reads.rows::<secret::Entity>(&slow),
        );
        assert!(cancelled.await.is_err());
        assert_eq!(
            kept(&reads),
            0,
            "a connection its caller left mid-query was kept"
        );

        reads.rows::<secret::Entity>(&all).await.unwrap();
        store
            .writer()
            .execute_unprepared(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        reads.rows::<secret::Entity>(&all).await.unwrap();
        assert_eq!(kept(&reads), 1);

        let bad = select("SELECT * FROM no_such_table");
        assert!(reads.rows::<secret::Entity>(&bad).await.is_err());
        assert_eq!(kept(&reads), 0, "a connection whose query failed was kept");
    }
}
