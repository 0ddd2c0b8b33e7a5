//! The state store's clock: what schedules are computed against, so that
//! replicas whose own clocks differ agree on what time it is.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use super::engine;
use crate::error::{Error, Result};

/// The state store's now: PostgreSQL's clock; for SQLite, embedded, this
/// host's.
pub async fn now<C: ConnectionTrait>(conn: &C) -> Result<DateTime<Utc>> {
    let Some(statement) = engine::of(conn.get_database_backend()).now() else {
        return Ok(Utc::now());
    };
    match conn.query_one_raw(statement).await? {
        Some(row) => Ok(row.try_get("", "now")?),
        None => Err(Error::Internal(
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
