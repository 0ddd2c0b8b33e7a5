//! PostgreSQL: the server's clock (`clock_timestamp()`, so replicas whose
//! own clocks differ agree), row locks, LISTEN/NOTIFY and advisory locks.

use sea_orm::{DbBackend, Statement};

use super::{Clock, Engine};
use crate::model::run::Fence;

pub struct Postgres;

/// The key of the advisory lock that orders event commits
/// (`pg_advisory_xact_lock` takes any 64-bit key; this one spells
/// "AUDITLOG").
const COMMIT_ORDER_LOCK: i64 = 0x4155_4449_544c_4f47;

fn statement(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

impl Engine for Postgres {
    fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> (Statement, Clock) {
        let sql = "INSERT INTO scheduler_lease (name, holder, expires_at, epoch) \
             VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond', 1) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at, \
                 epoch = CASE WHEN scheduler_lease.holder = excluded.holder \
                     THEN scheduler_lease.epoch ELSE scheduler_lease.epoch + 1 END \
             WHERE scheduler_lease.holder = excluded.holder \
                 OR scheduler_lease.expires_at <= clock_timestamp() \
             RETURNING epoch, clock_timestamp() AS now";
        let values = vec![name.into(), holder.into(), ttl_ms.into()];
        (statement(sql, values), Clock::Database)
    }

    fn lease_held(&self, name: &str, fence: &Fence) -> (Statement, Clock) {
        // FOR SHARE: a takeover's update waits until this transaction ends.
        let sql = "SELECT clock_timestamp() AS now FROM scheduler_lease \
             WHERE name = $1 AND holder = $2 AND epoch = $3 \
                 AND expires_at > clock_timestamp() \
             FOR SHARE";
        let values = vec![
            name.into(),
            fence.holder.as_str().into(),
            fence.epoch.into(),
        ];
        (statement(sql, values), Clock::Database)
    }

    fn release_lease(&self, name: &str, fence: &Fence) -> Statement {
        let sql = "UPDATE scheduler_lease SET expires_at = clock_timestamp() \
             WHERE name = $1 AND holder = $2 AND epoch = $3";
        let values = vec![
            name.into(),
            fence.holder.as_str().into(),
            fence.epoch.into(),
        ];
        statement(sql, values)
    }

    fn now(&self) -> Option<Statement> {
        Some(statement("SELECT clock_timestamp() AS now", Vec::new()))
    }

    fn notify(&self, channel: &str, payload: &str) -> Option<Statement> {
        let values = vec![channel.into(), payload.into()];
        Some(statement("SELECT pg_notify($1, $2)", values))
    }

    fn commit_order_lock(&self) -> Option<Statement> {
        // A sequence hands ids out in insert order, and transactions commit
        // in another; held from before the insert until commit, this lock
        // makes the two orders one. Taken last, after every row lock, it
        // cannot be part of a deadlock.
        let values = vec![COMMIT_ORDER_LOCK.into()];
        Some(statement("SELECT pg_advisory_xact_lock($1)", values))
    }
}
