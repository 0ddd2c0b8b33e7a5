//! The scheduler lease in the state store.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Set};

use super::entity::scheduler_lease::{self, Entity};
use crate::error::Result;
use crate::model::run::Lease;

/// The one lease's name.
const NAME: &str = "scheduler";

/// The lease, if anyone holds or held it.
pub async fn get<C: ConnectionTrait>(conn: &C) -> Result<Option<Lease>> {
    Ok(Entity::find_by_id(NAME).one(conn).await?.map(|l| Lease {
        holder: l.holder,
        expires_at: l.expires_at,
    }))
}

/// What [`take`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Another instance holds it until after `now`.
    HeldByOther,
    /// `instance` held it already and renewed it.
    Renewed,
    /// `instance` took it: free, expired, or never taken.
    Newly,
}

/// Takes the lease for `instance` until `expires_at`, unless another
/// instance holds it beyond `now`. Run it in a write transaction.
pub async fn take<C: ConnectionTrait>(
    conn: &C,
    instance: &str,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Taken> {
    match Entity::find_by_id(NAME).one(conn).await? {
        Some(lease) if lease.holder != instance && lease.expires_at > now => Ok(Taken::HeldByOther),
        Some(lease) => {
            let renewed = lease.holder == instance;
            let mut row = lease.into_active_model();
            row.holder = Set(instance.to_owned());
            row.expires_at = Set(expires_at);
            row.update(conn).await?;
            Ok(if renewed {
                Taken::Renewed
            } else {
                Taken::Newly
            })
        }
        None => {
            scheduler_lease::ActiveModel {
                name: Set(NAME.into()),
                holder: Set(instance.to_owned()),
                expires_at: Set(expires_at),
            }
            .insert(conn)
            .await?;
            Ok(Taken::Newly)
        }
    }
}

/// Hands the lease back if `instance` holds it.
pub async fn release<C: ConnectionTrait>(conn: &C, instance: &str) -> Result<()> {
    if let Some(lease) = Entity::find_by_id(NAME).one(conn).await?
        && lease.holder == instance
    {
        Entity::delete_by_id(NAME).exec(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::on_each_backend;

    on_each_backend!(
        the_lease_is_taken_renewed_refused_and_released,
        |db: Store| async move {
            let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
            let txn = db.begin_write().await.unwrap();
            assert_eq!(take(&txn, "a", at(0), at(10)).await.unwrap(), Taken::Newly);
            assert_eq!(
                take(&txn, "b", at(1), at(11)).await.unwrap(),
                Taken::HeldByOther
            );
            assert_eq!(
                take(&txn, "a", at(2), at(12)).await.unwrap(),
                Taken::Renewed
            );
            // Expired: another instance takes it.
            assert_eq!(take(&txn, "b", at(13), at(23)).await.unwrap(), Taken::Newly);
            release(&txn, "a").await.unwrap();
            let held = get(&txn).await.unwrap().unwrap();
            assert_eq!((held.holder.as_str(), held.expires_at), ("b", at(23)));
            release(&txn, "b").await.unwrap();
            assert!(get(&txn).await.unwrap().is_none());
            txn.commit().await.unwrap();
        }
    );
}
