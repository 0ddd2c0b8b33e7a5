//! The JSON form of the service's messages, one conversion each: a
//! [`backup`], [`settings`], [`scheduler_stats`], a [`retention_summary`]
//! and an [`audit_event`] (its details as the object the server recorded).
//! `backupctl --json` prints exactly these, and its tables show the same
//! names and times through [`kind`], [`frequency`], [`keep_reason`] and
//! [`time`].
//!
//! An enum is its proto name without the type's prefix, lowercased
//! (`BACKUP_KIND_AUTO` is `auto`), or its number when this client does not
//! know it. A time is `2026-11-21 03:00:00 UTC`, or empty when unset; only
//! an audit event's own `timestamp` is RFC 3339 with microseconds, so that
//! watched lines parse and order.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use serde_json::{Value, json};

use crate::proto;

/// A backup (as listed, got, verified or restored); `last_verified_at` is
/// null until the first verification.
pub fn backup(b: &proto::Backup) -> Value {
    json!({
        "filename": b.filename,
        "size_bytes": b.size_bytes,
        "created_at": time(b.created_at.as_ref()),
        "is_protected": b.is_protected,
        "kind": kind(b.kind),
        "owner_user_id": b.owner_user_id,
        "sha256": b.sha256,
        "blake3": b.blake3,
        "stored_bytes": b.stored_bytes,
        "damaged": b.damaged,
        "damage": b.damage,
        "last_verified_at": b.last_verified_at.as_ref().map(|at| time(Some(at))),
    })
}

/// What a prune removed.
pub fn pruned(p: &proto::PruneRepositoryResponse) -> Value {
    json!({
        "stored_bytes_before": p.stored_bytes_before,
        "stored_bytes_after": p.stored_bytes_after,
        "packs_deleted": p.packs_deleted,
        "packs_written": p.packs_written,
        "unreadable_backups": p.unreadable_backups,
    })
}

/// What the backup storage holds.
pub fn repository_stats(s: &proto::GetRepositoryStatsResponse) -> Value {
    json!({
        "backups": s.backups,
        "logical_bytes": s.logical_bytes,
        "stored_bytes": s.stored_bytes,
        "chunks": s.chunks,
        "chunk_bytes": s.chunk_bytes,
        "packs": s.packs,
        "deduplication_ratio": s.deduplication_ratio,
        "compression_ratio": s.compression_ratio,
        "last_prune_at": s.last_prune_at.as_ref().map(|at| time(Some(at))),
        "last_full_check_at": s.last_full_check_at.as_ref().map(|at| time(Some(at))),
    })
}

/// One user's backup settings.
pub fn settings(s: &proto::BackupSettings) -> Value {
    json!({
        "user_id": s.user_id,
        "enabled": s.enabled,
        "frequency": frequency(s.frequency),
        "backup_time": s.backup_time,
        "keep_count": s.keep_count,
        "timezone": s.timezone,
        "last_backup_at": time(s.last_backup_at.as_ref()),
        "next_backup_at": time(s.next_backup_at.as_ref()),
    })
}

/// The scheduler's state: a flat object, one field a line in a table.
pub fn scheduler_stats(s: &proto::SchedulerStats) -> Value {
    json!({
        "is_running": s.is_running,
        "holds_lease": s.holds_lease,
        "instance_id": s.instance_id,
        "lease_holder": s.lease_holder,
        "lease_expires_at": time(s.lease_expires_at.as_ref()),
        "check_interval_seconds": s.check_interval_seconds,
        "enabled_backup_settings": s.enabled_backup_settings,
        "total_backup_settings": s.total_backup_settings,
        "next_due_at": time(s.next_due_at.as_ref()),
        "backups_completed": s.backups_completed,
        "backups_failed": s.backups_failed,
        "overdue_users": s.overdue_users,
    })
}

/// A retention preview: the counts, what goes, and why the rest stays.
pub fn retention_summary(s: &proto::RetentionSummary) -> Value {
    let kept: Vec<Value> = s
        .kept_backups
        .iter()
        .map(|k| json!({ "filename": k.filename, "reason": keep_reason(k.reason) }))
        .collect();
    json!({
        "total": s.total,
        "protected": s.protected,
        "to_keep": s.to_keep,
        "to_delete": s.to_delete,
        "filenames_to_delete": s.filenames_to_delete,
        "kept_backups": kept,
    })
}

/// An audit event.
pub fn audit_event(e: &proto::AuditEvent) -> Value {
    json!({
        "id": e.id,
        "event_type": e.event_type,
        "user_id": e.user_id,
        "resource_type": e.resource_type,
        "resource_id": e.resource_id,
        "action": e.action,
        "success": e.success,
        "details": details(e.details.as_ref()),
        "error_message": e.error_message,
        "timestamp": utc(e.timestamp.as_ref())
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default(),
    })
}

/// An audit event's details as the JSON object the server recorded; `{}`
/// when there are none.
fn details(details: Option<&prost_types::Struct>) -> Value {
    details.map_or(json!({}), object)
}

/// A time as people read it in a table (and in the JSON, except an audit
/// event's own); empty when unset or out of range.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    utc(ts)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// How a backup was taken: `auto`, `manual`, `pre_restore`, ...
pub fn kind(value: i32) -> String {
    short_name(value, proto::BackupKind::as_str_name)
}

/// How often backups run: `daily`, `weekly` or `monthly`.
pub fn frequency(value: i32) -> String {
    short_name(value, proto::Frequency::as_str_name)
}

/// Why a retention policy keeps a backup: `newest_n`, `protected`, ...
pub fn keep_reason(value: i32) -> String {
    short_name(value, proto::KeepReason::as_str_name)
}

/// A prost enum's name without the prefix its `..._UNSPECIFIED` (zero)
/// value shows, lowercased; the number if this client does not know it.
fn short_name<E: TryFrom<i32> + Default>(value: i32, name: fn(&E) -> &'static str) -> String {
    let prefix = name(&E::default()).trim_end_matches("UNSPECIFIED");
    E::try_from(value).map_or_else(
        |_| value.to_string(),
        |e| name(&e).trim_start_matches(prefix).to_lowercase(),
    )
}

fn utc(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn object(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        // Whole numbers print as integers (sizes, ids), not 1234.0.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
        Some(Kind::StructValue(s)) => object(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_lose_their_prefix_and_unknown_ones_are_numbers() {
        assert_eq!(kind(proto::BackupKind::PreRestore.into()), "pre_restore");
        assert_eq!(frequency(proto::Frequency::Weekly.into()), "weekly");
        assert_eq!(keep_reason(proto::KeepReason::NewestN.into()), "newest_n");
        assert_eq!(kind(0), "unspecified");
        assert_eq!(frequency(99), "99");
    }

    #[test]
    fn details_keep_whole_numbers_whole_and_nest() {
        let number = |n: f64| prost_types::Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let inner = prost_types::Struct {
            fields: [("ratio".to_owned(), number(0.5))].into(),
        };
        let details_struct = prost_types::Struct {
            fields: [
                ("size".to_owned(), number(1234.0)),
                (
                    "inner".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::StructValue(inner)),
                    },
                ),
                ("none".to_owned(), prost_types::Value { kind: None }),
            ]
            .into(),
        };
        assert_eq!(
            details(Some(&details_struct)),
            json!({ "size": 1234, "inner": { "ratio": 0.5 }, "none": null })
        );
        assert_eq!(details(None), json!({}));
    }

    #[test]
    fn times_for_people_and_for_machines() {
        let at = prost_types::Timestamp {
            seconds: 1_795_230_000,
            nanos: 123_456_789,
        };
        assert_eq!(time(Some(&at)), "2026-11-21 03:00:00 UTC");
        assert_eq!(time(None), "");
        let event = proto::AuditEvent {
            timestamp: Some(at),
            ..Default::default()
        };
        assert_eq!(
            audit_event(&event)["timestamp"],
            "2026-11-21T03:00:00.123456Z"
        );
    }
}
