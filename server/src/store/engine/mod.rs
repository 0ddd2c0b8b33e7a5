//! What the state store's two engines do differently, behind one trait:
//! [`sqlite::Sqlite`] and [`postgres::Postgres`] give the statements for
//! the few things SeaORM's portable queries cannot say, and the functions
//! of `store/` run them on either. The store tests that use
//! `on_each_backend!` are their shared interface tests.

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use sea_orm::{DbBackend, QueryResult, Statement};

use crate::error::Result;
use crate::model::run::Fence;

/// The statements that differ by engine.
pub trait Engine: Sync {
    /// Takes or renews lease `name` for `holder` for `ttl_ms` from the
    /// store's now, unless another holder's is unexpired then; the epoch
    /// goes up when the holder changes. Returns `epoch` (and `now`) or no
    /// row.
    fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> (Statement, Clock);

    /// A row (with `now`) if `fence` holds lease `name` unexpired; within a
    /// write transaction, the lease cannot change hands until it commits.
    fn lease_held(&self, name: &str, fence: &Fence) -> (Statement, Clock);

    /// Expires lease `name` now if `fence` holds it, keeping its epoch.
    fn release_lease(&self, name: &str, fence: &Fence) -> Statement;

    /// The store's clock: a statement whose row has `now`, or `None` where
    /// the store's clock is this host's.
    fn now(&self) -> Option<Statement>;

    /// Sends `payload` on `channel` when the transaction commits; `None`
    /// where the engine has no notifications.
    fn notify(&self, channel: &str, payload: &str) -> Option<Statement>;

    /// Run by a transaction before it inserts audit events, so that event
    /// ids commit in order: `None` where writers are serialized anyway.
    fn commit_order_lock(&self) -> Option<Statement>;
}

/// The engine of `backend`.
pub fn of(backend: DbBackend) -> &'static dyn Engine {
    match backend {
        DbBackend::Postgres => &postgres::Postgres,
        _ => &sqlite::Sqlite,
    }
}

/// Where a statement's now comes from.
pub enum Clock {
    /// The database's, in the row's `now` column.
    Database,
    /// This host's, taken when the statement was made.
    Local(DateTime<Utc>),
}

impl Clock {
    /// The now `row` was made at.
    pub fn read(self, row: &QueryResult) -> Result<DateTime<Utc>> {
        match self {
            Self::Database => Ok(row.try_get("", "now")?),
            Self::Local(now) => Ok(now),
        }
    }
}
