//! Conversions between domain values and protobuf messages.

use backup_proto as pb;
use chrono::{DateTime, Utc};

use crate::backup::{BackupKind, Named};
use crate::error::{Error, Result};
use crate::store::entity::backup::Model as Backup;

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn kind(kind: &str) -> pb::BackupKind {
    match BackupKind::parse(kind) {
        Some(BackupKind::Auto) => pb::BackupKind::Auto,
        Some(BackupKind::Manual) => pb::BackupKind::Manual,
        Some(BackupKind::PreRestore) => pb::BackupKind::PreRestore,
        Some(BackupKind::PreMigration) => pb::BackupKind::PreMigration,
        None => pb::BackupKind::Unspecified,
    }
}

impl From<Backup> for pb::Backup {
    fn from(b: Backup) -> Self {
        Self {
            kind: kind(&b.kind).into(),
            filename: b.name,
            size_bytes: b.size_bytes,
            created_at: Some(timestamp(b.created_at)),
            is_protected: b.is_protected,
            owner_user_id: b.owner_user_id,
            sha256: b.sha256,
            damaged: b.damage.is_some(),
            last_verified_at: b.last_verified_at.map(timestamp),
            damage: b.damage.unwrap_or_default(),
        }
    }
}

/// The backup a request names: its name, and its owner when given (a
/// negative owner is INVALID_ARGUMENT).
pub fn named(filename: &str, owner_user_id: Option<i64>) -> Result<Named<'_>> {
    if let Some(owner) = owner_user_id
        && owner < 0
    {
        return Err(Error::invalid(
            "owner_user_id",
            format!("must be a user id, or 0 for system backups; got {owner}"),
        ));
    }
    Ok(Named {
        name: filename,
        owner: owner_user_id,
    })
}
