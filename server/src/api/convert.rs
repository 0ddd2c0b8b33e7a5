//! Conversions between domain values and protobuf messages.

use backup_proto as pb;
use chrono::{DateTime, Utc};

use crate::backup::Named;
use crate::error::{Error, FieldViolation, Result};
use crate::model::backup::{Backup, BackupKind};

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a
/// `google.protobuf.Timestamp` may hold.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A request's timestamp as a time. Outside the protobuf range (years 1 to
/// 9999, nanos 0 to 999,999,999) it is INVALID_ARGUMENT naming `field`.
pub fn request_time(
    ts: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, FieldViolation> {
    ts.map(|t| {
        u32::try_from(t.nanos)
            .ok()
            .filter(|nanos| *nanos < 1_000_000_000 && TIMESTAMP_SECONDS.contains(&t.seconds))
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .ok_or_else(|| {
                FieldViolation::new(
                    field,
                    format!(
                        "seconds {} and nanos {} are not a time from 0001-01-01T00:00:00Z \
                         to 9999-12-31T23:59:59.999999999Z (nanos 0 to 999999999)",
                        t.seconds, t.nanos
                    ),
                )
            })
    })
    .transpose()
}

impl From<BackupKind> for pb::BackupKind {
    fn from(kind: BackupKind) -> Self {
        match kind {
            BackupKind::Auto => Self::Auto,
            BackupKind::Manual => Self::Manual,
            BackupKind::PreRestore => Self::PreRestore,
            BackupKind::PreMigration => Self::PreMigration,
        }
    }
}

impl From<Backup> for pb::Backup {
    fn from(b: Backup) -> Self {
        Self {
            kind: pb::BackupKind::from(b.kind).into(),
            filename: b.name,
            size_bytes: b.size_bytes,
            created_at: Some(timestamp(b.created_at)),
            is_protected: b.is_protected,
            owner_user_id: b.owner_user_id,
            sha256: b.sha256,
            damaged: b.damage.is_some(),
            last_verified_at: b.last_verified_at.map(timestamp),
            damage: b.damage.unwrap_or_default(),
            blake3: b.blake3.unwrap_or_default(),
            stored_bytes: b.stored_bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: i32) -> Result<Option<DateTime<Utc>>, FieldViolation> {
        request_time(
            Some(prost_types::Timestamp { seconds, nanos }),
            "start_time",
        )
    }

    #[test]
    fn request_times_must_lie_in_the_protobuf_range() {
        assert_eq!(request_time(None, "start_time").unwrap(), None);
        let first = at(-62_135_596_800, 0).unwrap().unwrap();
        assert_eq!(first.to_rfc3339(), "0001-01-01T00:00:00+00:00");
        let last = at(253_402_300_799, 999_999_999).unwrap().unwrap();
        assert_eq!(last.to_rfc3339(), "9999-12-31T23:59:59.999999999+00:00");
        for (seconds, nanos) in [
            (-62_135_596_801, 0),
            (253_402_300_800, 0),
            (i64::MAX, 0),
            (i64::MIN, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            match at(seconds, nanos) {
                Err(v) => assert_eq!(v.field, "start_time"),
                other => panic!("{seconds}s {nanos}ns: {other:?}"),
            }
        }
    }
}
