//! Conversions between domain values and protobuf messages.

use backup_proto as pb;
use chrono::{DateTime, Utc};

use crate::backup::BackupKind;
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
            filename: b.filename,
            size_bytes: b.size_bytes,
            created_at: Some(timestamp(b.created_at)),
            is_protected: b.is_protected,
            owner_user_id: b.owner_user_id,
            sha256: b.sha256,
            damaged: false,
            last_verified_at: None,
            damage: String::new(),
        }
    }
}
