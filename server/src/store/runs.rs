//! Scheduled runs in the state store: the row unique per (user, slot) that
//! makes each slot run at most once across restarts and processes.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, Set,
};

use super::entity::scheduled_run::{self, Column, Entity};
use crate::error::Result;
use crate::model::run::{Fence, RunStatus};

/// Claims `slot` of `user_id` for the lease holder `fence` as a running
/// run; false when the slot was claimed before (by anyone, at any time).
pub async fn claim<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    slot: DateTime<Utc>,
    fence: &Fence,
    started_at: DateTime<Utc>,
) -> Result<bool> {
    let run = scheduled_run::ActiveModel {
        user_id: Set(user_id),
        slot_at: Set(slot),
        status: Set(RunStatus::Running.as_str().into()),
        instance: Set(fence.holder.clone()),
        epoch: Set(fence.epoch),
        started_at: Set(started_at),
        ..Default::default()
    };
    // ON CONFLICT DO NOTHING rather than a failed insert: on PostgreSQL a
    // unique violation aborts the whole transaction the claim is part of.
    let inserted = Entity::insert(run)
        .on_conflict(
            OnConflict::columns([Column::UserId, Column::SlotAt])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(inserted == 1)
}

/// How a run ended.
pub struct Outcome<'a> {
    pub status: RunStatus,
    pub finished_at: DateTime<Utc>,
    /// The backup it made.
    pub filename: Option<&'a str>,
    /// Why it failed, as the caller may be told.
    pub error: Option<String>,
}

/// Records the end of the run of `slot` of `user_id`, if it was claimed.
pub async fn finish<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    slot: DateTime<Utc>,
    outcome: Outcome<'_>,
) -> Result<()> {
    let run = Entity::find()
        .filter(Column::UserId.eq(user_id))
        .filter(Column::SlotAt.eq(slot))
        .one(conn)
        .await?;
    if let Some(run) = run {
        let mut run = run.into_active_model();
        run.status = Set(outcome.status.as_str().into());
        run.finished_at = Set(Some(outcome.finished_at));
        run.filename = Set(outcome.filename.map(str::to_owned));
        run.error = Set(outcome.error);
        run.update(conn).await?;
    }
    Ok(())
}

/// The (user, slot) of runs still running that were claimed under a lease
/// epoch before `epoch`: their holder lost the lease or died with them.
pub async fn left_running<C: ConnectionTrait>(
    conn: &C,
    epoch: i64,
) -> Result<Vec<(i64, DateTime<Utc>)>> {
    let left = Entity::find()
        .filter(Column::Status.eq(RunStatus::Running.as_str()))
        .filter(Column::Epoch.lt(epoch))
        .all(conn)
        .await?;
    Ok(left.into_iter().map(|r| (r.user_id, r.slot_at)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::on_each_backend;

    on_each_backend!(
        a_slot_is_claimed_once_and_the_transaction_goes_on,
        |db: Store| async move {
            // Whole seconds, as slots are (PostgreSQL keeps microseconds).
            let slot = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
            let fence = |holder: &str, epoch| Fence {
                holder: holder.into(),
                epoch,
            };
            let txn = db.begin_write().await.unwrap();
            assert!(claim(&txn, 1, slot, &fence("a", 1), slot).await.unwrap());
            assert!(
                !claim(&txn, 1, slot, &fence("b", 2), slot).await.unwrap(),
                "claimed twice"
            );
            assert!(
                claim(&txn, 2, slot, &fence("b", 2), slot).await.unwrap(),
                "another user's slot"
            );
            assert_eq!(left_running(&txn, 2).await.unwrap(), [(1, slot)]);
            // The transaction is still usable after the refused claim.
            let outcome = Outcome {
                status: RunStatus::Completed,
                finished_at: Utc::now(),
                filename: Some("a.db"),
                error: None,
            };
            finish(&txn, 1, slot, outcome).await.unwrap();
            assert!(left_running(&txn, 2).await.unwrap().is_empty());
            assert_eq!(left_running(&txn, 3).await.unwrap(), [(2, slot)]);
            txn.commit().await.unwrap();
            let other = db.begin_write().await.unwrap();
            assert!(
                !claim(&other, 1, slot, &fence("c", 3), slot).await.unwrap(),
                "claimed after a commit"
            );
            other.commit().await.unwrap();
        }
    );
}
