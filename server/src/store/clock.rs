//! The state store's clock: what schedules are computed against, so that
//! replicas whose own clocks differ agree on what time it is.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::error::Result;

/// The state store's now: PostgreSQL's clock; for SQLite, embedded, this
/// host's.
pub async fn now<C: ConnectionTrait>(conn: &C) -> Result<DateTime<Utc>> {
    let backend = conn.get_database_backend();
    if backend != DbBackend::Postgres {
        return Ok(Utc::now());
    }
    let row = conn
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT clock_timestamp() AS now",
        ))
        .await?;
    match row {
        Some(row) => Ok(row.try_get("", "now")?),
        None => Err(crate::error::Error::Internal(
            "the state store did not tell the time".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::on_each_backend;

    on_each_backend!(the_store_tells_the_time, |db: Store| async move {
        let before = Utc::now();
        let now = now(db.reads()).await.unwrap();
        // The test's cluster runs on this host: the clocks agree.
        assert!((now - before).num_seconds().abs() < 5, "{now} vs {before}");
    });
}
