//! Scheduled runs in the state store: the row unique per (user, slot) that
//! makes each slot run at most once across restarts and processes.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, Set,
};

use super::entity::scheduled_run::{self, Column, Entity};
use crate::error::Result;
use crate::model::run::RunStatus;

/// Claims `slot` of `user_id` for `instance` as a running run; false when
/// the slot was claimed before (by anyone, at any time).
pub async fn claim<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    slot: DateTime<Utc>,
    instance: &str,
    started_at: DateTime<Utc>,
) -> Result<bool> {
    let run = scheduled_run::ActiveModel {
        user_id: Set(user_id),
        slot_at: Set(slot),
        status: Set(RunStatus::Running.as_str().into()),
        instance: Set(instance.to_owned()),
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

/// Marks every run still running under an instance other than `instance`
/// failed with `error` at `now`; returns their (user, slot).
pub async fn fail_others_running<C: ConnectionTrait>(
    conn: &C,
    instance: &str,
    error: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(i64, DateTime<Utc>)>> {
    let stale = Entity::find()
        .filter(Column::Status.eq(RunStatus::Running.as_str()))
        .filter(Column::Instance.ne(instance))
        .all(conn)
        .await?;
    let mut settled = Vec::with_capacity(stale.len());
    for run in stale {
        settled.push((run.user_id, run.slot_at));
        let mut row = run.into_active_model();
        row.status = Set(RunStatus::Failed.as_str().into());
        row.error = Set(Some(error.to_owned()));
        row.finished_at = Set(Some(now));
        row.update(conn).await?;
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::on_each_backend;

    on_each_backend!(
        a_slot_is_claimed_once_and_the_transaction_goes_on,
        |db: Store| async move {
            let slot = Utc::now();
            let txn = db.begin_write().await.unwrap();
            assert!(claim(&txn, 1, slot, "a", slot).await.unwrap());
            assert!(
                !claim(&txn, 1, slot, "b", slot).await.unwrap(),
                "claimed twice"
            );
            assert!(
                claim(&txn, 2, slot, "b", slot).await.unwrap(),
                "another user's slot"
            );
            // The transaction is still usable after the refused claim.
            let outcome = Outcome {
                status: RunStatus::Completed,
                finished_at: Utc::now(),
                filename: Some("a.db"),
                error: None,
            };
            finish(&txn, 1, slot, outcome).await.unwrap();
            txn.commit().await.unwrap();
            let other = db.begin_write().await.unwrap();
            assert!(
                !claim(&other, 1, slot, "c", slot).await.unwrap(),
                "claimed after a commit"
            );
            other.commit().await.unwrap();
        }
    );
}
