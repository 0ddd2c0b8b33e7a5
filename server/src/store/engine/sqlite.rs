//! SQLite: embedded, so its clock is this host's, and one writer at a time
//! (`BEGIN IMMEDIATE`) serializes what PostgreSQL needs locks for.

use chrono::Utc;
use sea_orm::{DbBackend, Statement};

use super::{Clock, Engine};
use crate::model::run::Fence;

pub struct Sqlite;

fn statement(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

impl Engine for Sqlite {
    fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> (Statement, Clock) {
        let now = Utc::now();
        let expires_at = now + chrono::Duration::milliseconds(ttl_ms);
        let sql = "INSERT INTO scheduler_lease (name, holder, expires_at, epoch) \
             VALUES (?1, ?2, ?3, 1) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at, \
                 epoch = CASE WHEN holder = excluded.holder THEN epoch ELSE epoch + 1 END \
             WHERE holder = excluded.holder OR expires_at <= ?4 \
             RETURNING epoch";
        let values = vec![name.into(), holder.into(), expires_at.into(), now.into()];
        (statement(sql, values), Clock::Local(now))
    }

    fn lease_held(&self, name: &str, fence: &Fence) -> (Statement, Clock) {
        let now = Utc::now();
        let sql = "SELECT 1 AS held FROM scheduler_lease \
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > ?4";
        let values = vec![
            name.into(),
            fence.holder.as_str().into(),
            fence.epoch.into(),
            now.into(),
        ];
        (statement(sql, values), Clock::Local(now))
    }

    fn release_lease(&self, name: &str, fence: &Fence) -> Statement {
        let sql = "UPDATE scheduler_lease SET expires_at = ?4 \
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3";
        let values = vec![
            name.into(),
            fence.holder.as_str().into(),
            fence.epoch.into(),
            Utc::now().into(),
        ];
        statement(sql, values)
    }

    fn now(&self) -> Option<Statement> {
        None
    }

    fn notify(&self, _channel: &str, _payload: &str) -> Option<Statement> {
        None
    }

    fn commit_order_lock(&self) -> Option<Statement> {
        None
    }
}
