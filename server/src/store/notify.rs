//! Notifications between the processes that share a state store, through
//! PostgreSQL's LISTEN/NOTIFY: a notification sent in a transaction is
//! delivered to every listener when, and only if, it commits, in commit
//! order. SQLite has no such thing; its processes poll instead.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, RuntimeErr};

use super::{Store, engine};
use crate::error::Result;

/// What a notification says changed.
#[derive(Clone, Copy, Debug)]
pub enum Channel {
    /// Audit events committed; the payload is the newest id.
    AuditEvents,
    /// Something for the lease holder's scheduler to look at: settings
    /// changed, or an administrator asked for a check.
    Scheduler,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Self::AuditEvents => "backup_service_audit_events",
            Self::Scheduler => "backup_service_scheduler",
        }
    }
}

/// Sends `payload` on `channel` when the transaction `conn` runs in
/// commits; nothing on SQLite.
pub async fn send<C: ConnectionTrait>(conn: &C, channel: Channel, payload: &str) -> Result<()> {
    if let Some(statement) = engine::of(conn.get_database_backend()).notify(channel.name(), payload)
    {
        conn.execute_raw(statement).await?;
    }
    Ok(())
}

/// How long a listener that cannot reconnect waits before trying again.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A listener on one channel, on a connection of its own.
pub struct Listener {
    inner: PgListener,
}

/// What a listener heard.
#[derive(Debug)]
pub enum Heard {
    /// A notification, with its payload.
    Notified(String),
    /// The connection was lost and is back: notifications sent meanwhile
    /// are lost, so look at the store itself.
    Reconnected,
}

impl Listener {
    /// Listens on `channel` of `store`; `None` on SQLite.
    pub async fn start(store: &Store, channel: Channel) -> Result<Option<Self>> {
        let pool = &store.reads().pool;
        if pool.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let connected = async {
            let mut inner = PgListener::connect_with(pool.get_postgres_connection_pool()).await?;
            inner.listen(channel.name()).await?;
            Ok(inner)
        };
        let inner = connected
            .await
            .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))))?;
        Ok(Some(Self { inner }))
    }

    /// The next thing heard, waiting out a lost connection (logged).
    pub async fn next(&mut self) -> Heard {
        loop {
            match self.inner.try_recv().await {
                Ok(Some(notification)) => {
                    return Heard::Notified(notification.payload().to_owned());
                }
                Ok(None) => return Heard::Reconnected,
                Err(e) => {
                    tracing::warn!(error = %e, "listening to the state store failed; reconnecting");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        }
    }
}
