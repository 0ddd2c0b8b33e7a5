//! The scheduler lease in the state store, taken and checked by the
//! database's clock.
//!
//! Taking or renewing it is one statement (an upsert whose update is
//! conditional), so two instances racing for it cannot both win, and it
//! returns the lease's fencing epoch. Writes of a holder's runs go through
//! [`holds`] in their own transaction, which on PostgreSQL keeps the lease
//! row share-locked until they commit: a takeover waits for them, then
//! sees them, and once it has committed no earlier holder's write can.
//!
//! Each engine has its statements ([`super::engine`]): PostgreSQL's clock
//! is the server's, so a replica whose own clock is off still expires and
//! checks leases right; SQLite is embedded, its clock is this host's.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, EntityTrait};

use super::engine;
use super::entity::scheduler_lease::Entity;
use crate::error::Result;
use crate::model::run::{Fence, Lease};

/// The one lease's name.
const NAME: &str = "scheduler";

/// The lease, if anyone holds or held it.
pub async fn get<C: ConnectionTrait>(conn: &C) -> Result<Option<Lease>> {
    Ok(Entity::find_by_id(NAME).one(conn).await?.map(|l| Lease {
        holder: l.holder,
        expires_at: l.expires_at,
    }))
}

/// The lease as its holder took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub fence: Fence,
    /// The database's clock when it was taken.
    pub at: DateTime<Utc>,
}

/// Takes or renews the lease for `instance` for `ttl` from the database's
/// now, unless another instance holds it beyond that now; `None` then. The
/// epoch goes up when the holder changes.
pub async fn take<C: ConnectionTrait>(
    conn: &C,
    instance: &str,
    ttl: std::time::Duration,
) -> Result<Option<Held>> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let (statement, clock) =
        engine::of(conn.get_database_backend()).take_lease(NAME, instance, ttl_ms);
    let Some(row) = conn.query_one_raw(statement).await? else {
        return Ok(None);
    };
    Ok(Some(Held {
        fence: Fence {
            holder: instance.to_owned(),
            epoch: row.try_get("", "epoch")?,
        },
        at: clock.read(&row)?,
    }))
}

/// The database's now if `fence` still holds the lease (unexpired, not
/// taken over), `None` if not. In a write transaction, the writes after it
/// commit only while the lease is held: on PostgreSQL the row stays
/// share-locked until commit, so a takeover waits; SQLite has one writer.
pub async fn holds<C: ConnectionTrait>(conn: &C, fence: &Fence) -> Result<Option<DateTime<Utc>>> {
    let (statement, clock) = engine::of(conn.get_database_backend()).lease_held(NAME, fence);
    match conn.query_one_raw(statement).await? {
        Some(row) => Ok(Some(clock.read(&row)?)),
        None => Ok(None),
    }
}

/// Hands the lease back if `fence` holds it: it expires now, keeping its
/// epoch, so whoever takes it next starts a higher one.
pub async fn release<C: ConnectionTrait>(conn: &C, fence: &Fence) -> Result<()> {
    let statement = engine::of(conn.get_database_backend()).release_lease(NAME, fence);
    conn.execute_raw(statement).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::Store;
    use crate::store::tests::on_each_backend;

    on_each_backend!(
        the_lease_is_taken_renewed_refused_fenced_and_released,
        |db: Store| async move {
            let ttl = Duration::from_secs(60);
            let a = take(db.reads(), "a", ttl).await.unwrap().unwrap();
            assert_eq!(a.fence.epoch, 1);
            assert!(
                take(db.reads(), "b", ttl).await.unwrap().is_none(),
                "held by a"
            );
            let renewed = take(db.reads(), "a", ttl).await.unwrap().unwrap();
            assert_eq!(renewed.fence, a.fence, "a renewal keeps the epoch");
            assert!(renewed.at >= a.at);
            assert!(holds(db.reads(), &a.fence).await.unwrap().is_some());

            // Expired: b takes it over, and a's writes are refused.
            take(db.reads(), "a", Duration::ZERO)
                .await
                .unwrap()
                .unwrap();
            let b = take(db.reads(), "b", ttl).await.unwrap().unwrap();
            assert_eq!(b.fence.epoch, 2);
            assert!(holds(db.reads(), &a.fence).await.unwrap().is_none());
            assert!(holds(db.reads(), &b.fence).await.unwrap().is_some());
            let held = get(db.reads()).await.unwrap().unwrap();
            assert_eq!(held.holder, "b");

            // Released, it is free at once; the next holder's epoch is higher.
            release(db.reads(), &a.fence).await.unwrap();
            assert!(
                holds(db.reads(), &b.fence).await.unwrap().is_some(),
                "a had nothing to release"
            );
            release(db.reads(), &b.fence).await.unwrap();
            assert!(holds(db.reads(), &b.fence).await.unwrap().is_none());
            let again = take(db.reads(), "a", ttl).await.unwrap().unwrap();
            assert_eq!(again.fence.epoch, 3);
        }
    );
}
