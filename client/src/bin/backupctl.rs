//! `backupctl`: the backup service from a terminal. Tables for people,
//! `--json` for scripts.
//!
//! Exit codes: 0 success; 1 the server refused the call (its gRPC code is
//! printed); 2 usage error; 3 cannot connect; 4 unhealthy (`health`).

use std::path::PathBuf;
use std::process::ExitCode;

use backup_client::{AuditFilter, Client, Error, proto};
use clap::{Parser, Subcommand};
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    version,
    about = "Drive the backup service",
    after_help = "Examples:\n  backupctl --token $TOKEN backups create --name before-upgrade\n  backupctl backups list --json\n  backupctl health"
)]
struct Cli {
    /// Server URL.
    #[arg(
        long,
        env = "BACKUP_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    url: String,
    /// Bearer token (from `backup-server token create`).
    #[arg(
        long,
        env = "BACKUP_TOKEN",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    token: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Backup files: create, list, get, download, restore, delete.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Audit events: list stored ones, or watch them as they commit.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Exit 0 only if the server reports SERVING (usable as an exec probe).
    Health {
        /// A service name, e.g. backup.v1.BackupFiles; empty for the server.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Subcommand)]
enum BackupsCommand {
    /// Take a manual backup now.
    #[command(after_help = "Example: backupctl backups create --name before-upgrade")]
    Create {
        /// File name (`.db` is appended when missing).
        #[arg(long)]
        name: Option<String>,
    },
    /// List backups, newest first.
    #[command(after_help = "Example: backupctl backups list --json | jq '.[].filename'")]
    List,
    /// Show one backup.
    #[command(after_help = "Example: backupctl backups get backup_20261121T030000.000000Z.db")]
    Get { filename: String },
    /// Download a backup, checking its sha256.
    #[command(after_help = "Example: backupctl backups download nightly.db -o /tmp/nightly.db")]
    Download {
        filename: String,
        /// Where to write it [default: the backup's file name].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replace the source database with a backup (admin).
    #[command(after_help = "Example: backupctl backups restore nightly.db")]
    Restore { filename: String },
    /// Delete a backup; protected ones need an admin and --force.
    #[command(after_help = "Example: backupctl backups delete nightly.db")]
    Delete {
        filename: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List stored events, oldest first: one line each (JSON lines with --json).
    #[command(after_help = "Example: backupctl audit list --type backup_files. --json")]
    List {
        /// Only event types starting with this, e.g. `backup_files.`.
        #[arg(long = "type", value_name = "PREFIX", default_value = "")]
        event_type: String,
        /// Only this user's events (admins; others see only their own).
        #[arg(long = "user", value_name = "ID")]
        user_id: Option<i64>,
    },
    /// Print events as they commit until interrupted (JSON lines with --json).
    /// If the stream ends, the error says which --after resumes it.
    #[command(after_help = "Example: backupctl audit watch --after 1200 --type auth.")]
    Watch {
        /// Replay stored events with a greater id first; default: only new ones.
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// Only event types starting with this.
        #[arg(long = "type", value_name = "PREFIX", default_value = "")]
        event_type: String,
        /// Only this user's events (admins; others see only their own).
        #[arg(long = "user", value_name = "ID")]
        user_id: Option<i64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backupctl: {e}");
            match e {
                Error::Transport(_) => ExitCode::from(3),
                _ => ExitCode::from(1),
            }
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let client = Client::connect(&cli.url, &cli.token).await?;
    let out = Output { json: cli.json };
    match cli.command {
        Command::Health { service } => {
            let status = client.health(&service).await?;
            out.value(
                json!({ "service": service, "status": status.as_str_name() }),
                || {
                    println!("{}", status.as_str_name());
                },
            );
            let serving = status
                == backup_client::proto_health::health_check_response::ServingStatus::Serving;
            return Ok(if serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(4)
            });
        }
        Command::Audit(command) => {
            let mut audit = client.audit();
            match command {
                AuditCommand::List {
                    event_type,
                    user_id,
                } => {
                    let filter = AuditFilter {
                        event_type_prefix: event_type,
                        user_id,
                        ..AuditFilter::default()
                    };
                    let mut token = String::new();
                    loop {
                        let page = audit.list_page(&filter, 1000, &token).await?;
                        for event in &page.events {
                            out.event(event);
                        }
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                }
                AuditCommand::Watch {
                    after,
                    event_type,
                    user_id,
                } => {
                    let mut events = audit.subscribe(after, &event_type, user_id).await?;
                    while let Some(event) = events.next().await {
                        out.event(&event?);
                    }
                }
            }
        }
        Command::Backups(command) => {
            let mut backups = client.backups();
            match command {
                BackupsCommand::Create { name } => {
                    out.backups(&[backups.create(name.as_deref()).await?])
                }
                BackupsCommand::List => out.backups(&backups.list_all().await?),
                BackupsCommand::Get { filename } => out.backups(&[backups.get(&filename).await?]),
                BackupsCommand::Download { filename, output } => {
                    let dest = output.unwrap_or_else(|| PathBuf::from(&filename));
                    let bar = ProgressBar::new(0).with_style(
                        ProgressStyle::with_template(
                            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    if cli.json {
                        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                    }
                    let backup = backups
                        .download_to(&filename, &dest, |done, total| {
                            bar.set_length(total);
                            bar.set_position(done);
                        })
                        .await?;
                    bar.finish_and_clear();
                    out.value(json!({ "filename": backup.filename, "path": dest, "sha256": backup.sha256 }), || {
                        println!("downloaded {} to {} (sha256 {} verified)", backup.filename, dest.display(), backup.sha256);
                    });
                }
                BackupsCommand::Restore { filename } => {
                    let (restored, pre) = backups.restore(&filename).await?;
                    out.value(json!({ "restored": backup_json(&restored), "pre_restore_backup": backup_json(&pre) }), || {
                        println!("restored {}; the previous source is saved as {}", restored.filename, pre.filename);
                    });
                }
                BackupsCommand::Delete { filename, force } => {
                    backups.delete(&filename, force).await?;
                    out.value(json!({ "deleted": filename }), || {
                        println!("deleted {filename}")
                    });
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints either JSON or the human form.
struct Output {
    json: bool,
}

impl Output {
    fn value(&self, value: Value, human: impl FnOnce()) {
        if self.json {
            println!("{value}");
        } else {
            human();
        }
    }

    /// One line per event, printed at once.
    fn event(&self, e: &proto::AuditEvent) {
        let details = e.details.as_ref().map_or(json!({}), struct_json);
        self.value(
            json!({
                "id": e.id,
                "event_type": e.event_type,
                "user_id": e.user_id,
                "resource_type": e.resource_type,
                "resource_id": e.resource_id,
                "action": e.action,
                "success": e.success,
                "details": details,
                "error_message": e.error_message,
                "timestamp": timestamp(e.timestamp.as_ref()),
            }),
            || {
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
                println!(
                    "{} {} {} user={}{} {} {}",
                    e.id,
                    timestamp(e.timestamp.as_ref()),
                    e.event_type,
                    e.user_id,
                    resource,
                    outcome,
                    details
                );
            },
        );
    }

    fn backups(&self, backups: &[proto::Backup]) {
        let values: Vec<Value> = backups.iter().map(backup_json).collect();
        self.value(Value::Array(values), || {
            let mut table = Table::new();
            table.set_header(["FILENAME", "SIZE", "CREATED", "KIND", "OWNER", "PROTECTED"]);
            for b in backups {
                table.add_row([
                    b.filename.clone(),
                    b.size_bytes.to_string(),
                    timestamp(b.created_at.as_ref()),
                    kind(b.kind),
                    b.owner_user_id.to_string(),
                    if b.is_protected { "yes" } else { "" }.to_owned(),
                ]);
            }
            println!("{table}");
        });
    }
}

fn kind(value: i32) -> String {
    proto::BackupKind::try_from(value)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("BACKUP_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| value.to_string())
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn struct_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        // Whole numbers print as integers (sizes, ids), not 1234.0.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

fn backup_json(b: &proto::Backup) -> Value {
    json!({
        "filename": b.filename,
        "size_bytes": b.size_bytes,
        "created_at": timestamp(b.created_at.as_ref()),
        "is_protected": b.is_protected,
        "kind": kind(b.kind),
        "owner_user_id": b.owner_user_id,
        "sha256": b.sha256,
    })
}
