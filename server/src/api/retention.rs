//! `backup.v1.Retention`.

use backup_proto as pb;
use backup_proto::retention_server::Retention as RetentionService;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::error::{Error, FieldViolation, Result, Violations};
use crate::model::settings::KeepCount;
use crate::retention::{KeepReason, Owners, PolicyRequest, Summary};

pub struct RetentionApi {
    app: Shared,
}

impl RetentionApi {
    pub fn new(app: Shared) -> Self {
        Self { app }
    }
}

/// The fields a policy request is made of, checked: every bad one is
/// reported. `user_id` absent means the caller; 0 names the system's
/// backups.
fn policy_request(keep_count: i32, user_id: Option<i64>, all_users: bool) -> Result<PolicyRequest> {
    let mut bad = Violations::default();
    let keep_count = bad.check(KeepCount::new(i64::from(keep_count), "keep_count"));
    let owners = match user_id {
        Some(_) if all_users => {
            bad.push(FieldViolation::new(
                "user_id",
                "must be absent when all_users is set",
            ));
            Owners::All
        }
        Some(id) if id < 0 => {
            bad.push(FieldViolation::new(
                "user_id",
                format!("must be a user id (0 for system backups); got {id}"),
            ));
            Owners::All
        }
        Some(id) => Owners::Owner(id),
        None if all_users => Owners::All,
        None => Owners::Caller,
    };
    bad.into_result()?;
    Ok(PolicyRequest {
        // Only absent when a violation was returned above.
        keep_count: keep_count.unwrap_or(KeepCount::DEFAULT),
        owners,
    })
}

impl TryFrom<pb::ApplyRetentionPolicyRequest> for PolicyRequest {
    type Error = Error;

    fn try_from(req: pb::ApplyRetentionPolicyRequest) -> Result<Self> {
        policy_request(req.keep_count, req.user_id, req.all_users)
    }
}

impl TryFrom<pb::GetRetentionSummaryRequest> for PolicyRequest {
    type Error = Error;

    fn try_from(req: pb::GetRetentionSummaryRequest) -> Result<Self> {
        policy_request(req.keep_count, req.user_id, req.all_users)
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn reason(reason: KeepReason) -> pb::KeepReason {
    match reason {
        KeepReason::NewestN => pb::KeepReason::NewestN,
        KeepReason::Protected => pb::KeepReason::Protected,
        KeepReason::NewestVerified => pb::KeepReason::NewestVerified,
        KeepReason::System => pb::KeepReason::System,
        KeepReason::NoVerifiedBackup => pb::KeepReason::NoVerifiedBackup,
        KeepReason::Damaged => pb::KeepReason::Damaged,
    }
}

impl From<Summary> for pb::RetentionSummary {
    fn from(s: Summary) -> Self {
        Self {
            total: count(s.total),
            protected: count(s.protected),
            to_keep: count(s.keep.len()),
            to_delete: count(s.delete.len()),
            filenames_to_delete: s.delete,
            kept_backups: s
                .keep
                .into_iter()
                .map(|k| pb::KeptBackup {
                    filename: k.name,
                    reason: reason(k.reason).into(),
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn apply_retention_policy(
        &self,
        request: Request<pb::ApplyRetentionPolicyRequest>,
    ) -> Result<Response<pb::ApplyRetentionPolicyResponse>, Status> {
        let caller = self.app.caller(&request, "ApplyRetentionPolicy").await?;
        let deleted = self
            .app
            .retention
            .apply(caller, request.into_inner())
            .await?;
        Ok(Response::new(pb::ApplyRetentionPolicyResponse {
            deleted_count: count(deleted.len()),
            deleted_filenames: deleted,
        }))
    }

    async fn get_retention_summary(
        &self,
        request: Request<pb::GetRetentionSummaryRequest>,
    ) -> Result<Response<pb::GetRetentionSummaryResponse>, Status> {
        let caller = self.app.caller(&request, "GetRetentionSummary").await?;
        let policy = request.into_inner().try_into()?;
        let summary = self.app.retention.summary(caller, policy).await?;
        Ok(Response::new(pb::GetRetentionSummaryResponse {
            summary: Some(summary.into()),
        }))
    }

    async fn cleanup_empty_backups(
        &self,
        request: Request<pb::CleanupEmptyBackupsRequest>,
    ) -> Result<Response<pb::CleanupEmptyBackupsResponse>, Status> {
        let caller = self.app.caller(&request, "CleanupEmptyBackups").await?;
        let deleted = self.app.retention.cleanup_empty(caller).await?;
        Ok(Response::new(pb::CleanupEmptyBackupsResponse {
            deleted_count: count(deleted.len()),
            deleted_filenames: deleted,
        }))
    }

    async fn delete_old_protected_backups(
        &self,
        request: Request<pb::DeleteOldProtectedBackupsRequest>,
    ) -> Result<Response<pb::DeleteOldProtectedBackupsResponse>, Status> {
        let caller = self
            .app
            .caller(&request, "DeleteOldProtectedBackups")
            .await?;
        let days_old = request.into_inner().days_old;
        let deleted = self
            .app
            .retention
            .delete_old_protected(caller, days_old)
            .await?;
        Ok(Response::new(pb::DeleteOldProtectedBackupsResponse {
            deleted_count: count(deleted.len()),
            deleted_filenames: deleted,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<PolicyRequest>) -> Vec<String> {
        match r {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn policy_requests_are_checked_field_by_field() {
        for bad in [0, 31, -1, i32::MIN, i32::MAX] {
            assert_eq!(fields(policy_request(bad, None, false)), ["keep_count"]);
        }
        assert_eq!(
            fields(policy_request(0, Some(2), true)),
            ["keep_count", "user_id"]
        );
        assert_eq!(fields(policy_request(3, Some(-4), false)), ["user_id"]);
        let owners = |user_id, all| policy_request(30, user_id, all).unwrap().owners;
        assert_eq!(owners(None, false), Owners::Caller);
        assert_eq!(owners(Some(0), false), Owners::Owner(0));
        assert_eq!(owners(Some(6), false), Owners::Owner(6));
        assert_eq!(owners(None, true), Owners::All);
    }
}
