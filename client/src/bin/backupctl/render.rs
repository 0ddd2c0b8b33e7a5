//! What each command prints on success: a table or a line for people, or
//! with `--json` one JSON document (a JSON line per audit event). Messages
//! from the service become JSON only through [`backup_client::json`], and
//! the tables take their names and times from the same place.

use std::path::Path;

use backup_client::proto_health::health_check_response::ServingStatus;
use backup_client::{json, proto};
use comfy_table::Table;
use indicatif::ProgressBar;
use serde_json::{Value, json};

/// Prints either JSON or the human form.
pub struct Output {
    pub json: bool,
}

impl Output {
    fn value(&self, value: &Value, human: impl FnOnce()) {
        if self.json {
            println!("{value}");
        } else {
            human();
        }
    }

    /// `bar`, drawn on stderr for people (indicatif skips non-terminals)
    /// and never with `--json`.
    pub fn progress(&self, bar: ProgressBar) -> ProgressBar {
        if self.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar
    }

    pub fn health(&self, service: &str, status: ServingStatus) {
        self.value(
            &json!({ "service": service, "status": status.as_str_name() }),
            || println!("{}", status.as_str_name()),
        );
    }

    /// Settings as a table; `nothing` is printed instead of an empty one.
    pub fn settings(&self, settings: &[proto::BackupSettings], nothing: &str) {
        let values: Vec<Value> = settings.iter().map(json::settings).collect();
        self.value(&Value::Array(values), || {
            let rows = settings.iter().map(|s| {
                [
                    s.user_id.to_string(),
                    s.enabled.to_string(),
                    json::frequency(s.frequency),
                    s.backup_time.clone(),
                    s.timezone.clone(),
                    s.keep_count.to_string(),
                    json::time(s.last_backup_at.as_ref()),
                    json::time(s.next_backup_at.as_ref()),
                ]
            });
            let header = [
                "USER",
                "ENABLED",
                "FREQUENCY",
                "TIME",
                "ZONE",
                "KEEP",
                "LAST",
                "NEXT",
            ];
            print_table(header, rows, nothing);
        });
    }

    /// The scheduler's state, one field a row, in the JSON's words.
    pub fn stats(&self, s: &proto::SchedulerStats) {
        self.fields(&json::scheduler_stats(s));
    }

    pub fn pruned(&self, p: &proto::PruneRepositoryResponse) {
        self.fields(&json::pruned(p));
    }

    pub fn repository_stats(&self, s: &proto::GetRepositoryStatsResponse) {
        self.fields(&json::repository_stats(s));
    }

    /// A JSON object, or for people a table of its fields.
    fn fields(&self, value: &Value) {
        self.value(value, || {
            let mut table = Table::new();
            if let Value::Object(fields) = value {
                for (key, v) in fields {
                    table.add_row([key.clone(), v.to_string().trim_matches('"').to_owned()]);
                }
            }
            println!("{table}");
        });
    }

    pub fn run_due(&self, run: i32, failed: i32) {
        self.value(
            &json!({ "backups_run": run, "backups_failed": failed }),
            || println!("{run} backups run, {failed} failed"),
        );
    }

    /// One line per event, printed at once.
    pub fn event(&self, e: &proto::AuditEvent) {
        let value = json::audit_event(e);
        self.value(&value, || {
            let outcome = if e.success {
                "ok".to_owned()
            } else {
                format!("FAILED ({})", e.error_message)
            };
            let resource = if e.resource_type.is_empty() {
                String::new()
            } else {
                format!(" {}={}", e.resource_type, e.resource_id)
            };
            let details = match &value["details"] {
                Value::Object(fields) if fields.is_empty() => String::new(),
                other => format!(" {other}"),
            };
            println!(
                "{} {} {} user={}{} {}{}",
                e.id,
                json::time(e.timestamp.as_ref()),
                e.event_type,
                e.user_id,
                resource,
                outcome,
                details
            );
        });
    }

    pub fn backups(&self, backups: &[proto::Backup]) {
        let values: Vec<Value> = backups.iter().map(json::backup).collect();
        self.value(&Value::Array(values), || {
            let rows = backups.iter().map(|b| {
                [
                    b.filename.clone(),
                    b.size_bytes.to_string(),
                    json::time(b.created_at.as_ref()),
                    json::kind(b.kind),
                    b.owner_user_id.to_string(),
                    if b.is_protected { "yes" } else { "" }.to_owned(),
                    if b.damaged { "DAMAGED" } else { "" }.to_owned(),
                    b.last_verified_at
                        .as_ref()
                        .map_or_else(|| "never".to_owned(), |at| json::time(Some(at))),
                ]
            });
            let header = [
                "FILENAME",
                "SIZE",
                "CREATED",
                "KIND",
                "OWNER",
                "PROTECTED",
                "DAMAGED",
                "LAST VERIFIED",
            ];
            print_table(header, rows, "no backups");
            // What is wrong, below the table rather than widening it.
            for b in backups.iter().filter(|b| b.damaged) {
                println!(
                    "DAMAGED: {} (owner {}): {}",
                    b.filename, b.owner_user_id, b.damage
                );
            }
        });
    }

    pub fn restored(&self, restored: &proto::Backup, pre: &proto::Backup) {
        self.value(
            &json!({ "restored": json::backup(restored), "pre_restore_backup": json::backup(pre) }),
            || {
                println!(
                    "restored {}; the previous source is saved as {}",
                    restored.filename, pre.filename
                );
            },
        );
    }

    /// A download's outcome; on stderr when the backup itself went to
    /// stdout.
    pub fn downloaded(&self, backup: &proto::Backup, dest: &Path, to_stdout: bool) {
        let place = if to_stdout {
            "stdout".to_owned()
        } else {
            dest.display().to_string()
        };
        // The digest the download was checked with (see the client's).
        let (digest, value) = match backup.blake3.is_empty() {
            false => ("blake3", &backup.blake3),
            true => ("sha256", &backup.sha256),
        };
        let summary = if self.json {
            json!({
                "filename": backup.filename,
                "path": dest,
                "sha256": backup.sha256,
                "blake3": backup.blake3,
            })
            .to_string()
        } else {
            format!(
                "downloaded {} to {place} ({digest} {value} verified)",
                backup.filename
            )
        };
        if to_stdout {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
    }

    /// One backup deleted by name.
    pub fn deleted_backup(&self, filename: &str) {
        self.value(&json!({ "deleted": filename }), || {
            println!("deleted {filename}")
        });
    }

    pub fn summary(&self, s: &proto::RetentionSummary) {
        self.value(&json::retention_summary(s), || {
            println!(
                "{} backups: {} kept ({} protected), {} to delete",
                s.total, s.to_keep, s.protected, s.to_delete
            );
            let mut table = Table::new();
            table.set_header(["FILENAME", "ACTION", "WHY"]);
            for name in &s.filenames_to_delete {
                table.add_row([name.as_str(), "delete", "beyond the newest N"]);
            }
            for k in &s.kept_backups {
                table.add_row([
                    k.filename.clone(),
                    "keep".into(),
                    json::keep_reason(k.reason),
                ]);
            }
            if !table.is_empty() {
                println!("{table}");
            }
        });
    }

    /// What a retention call deleted.
    pub fn deleted(&self, filenames: &[String]) {
        self.value(
            &json!({ "deleted_count": filenames.len(), "deleted_filenames": filenames }),
            || {
                println!("deleted {} backup(s)", filenames.len());
                for name in filenames {
                    println!("  {name}");
                }
            },
        );
    }
}

/// Prints `rows` under `header`, or `nothing` when there are none (an
/// empty frame says less than a sentence).
fn print_table<const N: usize>(
    header: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
    nothing: &str,
) {
    let mut table = Table::new();
    table.set_header(header);
    for row in rows {
        table.add_row(row);
    }
    if table.is_empty() {
        println!("{nothing}");
    } else {
        println!("{table}");
    }
}
