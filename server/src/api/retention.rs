//! `backup.v1.Retention`.

use backup_proto as pb;
use backup_proto::retention_server::Retention as RetentionService;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::retention::{KeepReason, Summary};

pub struct RetentionApi {
    app: Shared,
}

impl RetentionApi {
    pub fn new(app: Shared) -> Self {
        Self { app }
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
        let req = request.into_inner();
        let deleted = self
            .app
            .retention
            .apply(caller, req.keep_count, req.user_id, req.all_users)
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
        let req = request.into_inner();
        let summary = self
            .app
            .retention
            .summary(caller, req.keep_count, req.user_id, req.all_users)
            .await?;
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
