//! `backup.v1.Retention`: policies per owner, previews and maintenance.

use backup_proto::retention_client::RetentionClient;

use crate::{Authed, Result, proto};

/// A summary over every owner lists every backup; allow more than the
/// default 4 MiB per response.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Whose backups a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// The caller's own backups.
    Caller,
    /// One user's backups (another user's needs an admin token).
    User(i64),
    /// Every owner, each with the same `keep_count` on its own (admin).
    All,
}

impl Owners {
    fn fields(self) -> (Option<i64>, bool) {
        match self {
            Self::Caller => (None, false),
            Self::User(id) => (Some(id), false),
            Self::All => (None, true),
        }
    }
}

/// `backup.v1.Retention`: apply, preview, clean up.
#[derive(Clone)]
pub struct Retention(RetentionClient<Authed>);

impl Retention {
    pub(crate) fn new(channel: Authed) -> Self {
        Self(RetentionClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    /// Deletes the owners' regular backups beyond their newest `keep_count`;
    /// returns the deleted file names.
    pub async fn apply(&mut self, keep_count: i32, owners: Owners) -> Result<Vec<String>> {
        let (user_id, all_users) = owners.fields();
        let response = self
            .0
            .apply_retention_policy(proto::ApplyRetentionPolicyRequest {
                keep_count,
                user_id,
                all_users,
            })
            .await?;
        Ok(response.into_inner().deleted_filenames)
    }

    /// What [`Retention::apply`] with the same arguments would delete, and
    /// why every other backup stays.
    pub async fn summary(
        &mut self,
        keep_count: i32,
        owners: Owners,
    ) -> Result<proto::RetentionSummary> {
        let (user_id, all_users) = owners.fields();
        let response = self
            .0
            .get_retention_summary(proto::GetRetentionSummaryRequest {
                keep_count,
                user_id,
                all_users,
            })
            .await?;
        crate::present(response.into_inner().summary, "a summary")
    }

    /// Deletes empty backups and files that are not SQLite databases (admin).
    pub async fn cleanup_empty(&mut self) -> Result<Vec<String>> {
        let response = self
            .0
            .cleanup_empty_backups(proto::CleanupEmptyBackupsRequest {})
            .await?;
        Ok(response.into_inner().deleted_filenames)
    }

    /// Deletes protected backups older than `days_old` days (admin).
    pub async fn delete_old_protected(&mut self, days_old: i32) -> Result<Vec<String>> {
        let response = self
            .0
            .delete_old_protected_backups(proto::DeleteOldProtectedBackupsRequest { days_old })
            .await?;
        Ok(response.into_inner().deleted_filenames)
    }

    /// The raw generated client, for requests the wrapper does not build.
    pub fn raw(&mut self) -> &mut RetentionClient<Authed> {
        &mut self.0
    }
}
