//! The scheduler's records: one run per (user, slot), and the lease that
//! makes one process the active scheduler.

use chrono::{DateTime, Utc};

/// Where a scheduled run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
}

impl RunStatus {
    pub const ALL: [Self; 3] = [Self::Running, Self::Completed, Self::Failed];

    /// The name the state store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// The scheduler lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Instance id of the holder.
    pub holder: String,
    /// The holder must renew before this, or another process takes over.
    pub expires_at: DateTime<Utc>,
}

/// What a lease holder's writes are conditional on: they are refused once
/// another instance has taken the lease over (its epoch is higher).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: i64,
}
