//! `backupctl`: the backup service from a terminal. Tables for people,
//! `--json` for scripts.
//!
//! Exit codes: 0 success; 1 the server refused the call (its gRPC code is
//! printed, e.g. DataLoss for a damaged backup), or a local write failed, or
//! a download failed its sha256 check; 2 usage error, including a download
//! destination that exists and is not a regular file; 3 cannot connect;
//! 4 unhealthy (`health`); 5 overdue users exist (`scheduler overdue`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use backup_client::{AuditFilter, Client, Error, Owners, SettingsUpdate, proto};
use clap::{CommandFactory, Parser, Subcommand};
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
    /// PEM CA bundle to trust for an https:// URL (default: the system's roots).
    #[arg(long, env = "BACKUP_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Remote(RemoteCommand),
    /// Print shell completions.
    #[command(
        after_help = "Example: backupctl completions bash > /etc/bash_completion.d/backupctl"
    )]
    Completions { shell: clap_complete::Shell },
}

/// Commands that talk to the server.
#[derive(Subcommand)]
enum RemoteCommand {
    // Each group's about lists its subcommands by name; a test holds them
    // to the real ones.
    /// Backup files: create, list, get, verify, download, restore, delete.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Backup settings: get, update, list.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// The scheduling loop: stats, start, stop, run-due, overdue.
    #[command(subcommand)]
    Scheduler(SchedulerCommand),
    /// Keep-N retention policies and clean-up: summary, apply, cleanup-empty, delete-old-protected.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Audit events: list, watch.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Exit 0 only if the server reports SERVING (usable as an exec probe).
    Health {
        /// A service name, e.g. backup.v1.BackupFiles; empty for the server.
        #[arg(long, default_value = "")]
        service: String,
    },
}

/// One backup named on the command line.
#[derive(clap::Args)]
struct BackupRef {
    /// The backup's file name.
    filename: String,
    /// Whose backup it is, for an admin naming another user's (names are
    /// unique per owner; 0 is the system's) [default: yours].
    #[arg(long, value_name = "USER_ID")]
    owner: Option<i64>,
}

impl BackupRef {
    /// The backups service, addressing this backup's owner.
    fn service(&self, client: &Client) -> backup_client::Backups {
        client.backups().owned_by(self.owner)
    }
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
    /// List backups, newest first; damaged ones are marked DAMAGED.
    #[command(after_help = "Example: backupctl backups list --json | jq '.[].filename'")]
    List,
    /// Show one backup.
    #[command(
        after_help = "Examples:\n  backupctl backups get backup_20261121T030000.000000Z.db\n  backupctl backups get nightly.db --owner 2"
    )]
    Get(BackupRef),
    /// Check a backup's size, sha256 and integrity on the server; exit 1 if damaged.
    #[command(after_help = "Example: backupctl backups verify nightly.db --owner 2")]
    Verify(BackupRef),
    /// Download a backup to a file or to stdout, checking its sha256.
    ///
    /// A file appears only once complete and verified (written to
    /// `<file>.part`, then renamed); an existing regular file is replaced,
    /// anything else there (a symlink, directory, device, FIFO) is refused
    /// with exit 2 before anything is downloaded. With `-o -` the bytes go to
    /// stdout as they arrive and messages to stderr; if the stream, a write
    /// or the sha256 check fails, the exit is 1 and what was written is not
    /// to be trusted.
    #[command(
        after_help = "Examples:\n  backupctl backups download nightly.db -o /tmp/nightly.db\n  backupctl backups download nightly.db -o - | gzip > nightly.db.gz"
    )]
    Download {
        #[command(flatten)]
        backup: BackupRef,
        /// Where to write it; `-` for stdout (`./-` for a file named `-`)
        /// [default: the backup's file name].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replace the source database with a backup (admin).
    #[command(after_help = "Example: backupctl backups restore nightly.db")]
    Restore(BackupRef),
    /// Delete a backup; protected ones need an admin and --force.
    #[command(after_help = "Example: backupctl backups delete nightly.db")]
    Delete {
        #[command(flatten)]
        backup: BackupRef,
        /// Delete a protected backup (admin).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Show a user's settings (yours by default).
    #[command(after_help = "Example: backupctl settings get --user 2")]
    Get {
        /// Whose settings (admin for others); yours by default.
        #[arg(long, default_value_t = 0)]
        user: i64,
    },
    /// Change only the given fields (creating the settings on first use).
    #[command(
        after_help = "Example: backupctl settings update --time 02:30 --timezone Europe/London --keep 5"
    )]
    Update {
        /// Whose settings (admin for others); yours by default.
        #[arg(long, default_value_t = 0)]
        user: i64,
        #[arg(long)]
        enabled: Option<bool>,
        /// daily, weekly or monthly.
        #[arg(long, value_parser = ["daily", "weekly", "monthly"])]
        frequency: Option<String>,
        /// Local time of day, HH:MM.
        #[arg(long)]
        time: Option<String>,
        /// How many backups to keep, 1 to 30.
        #[arg(long)]
        keep: Option<i32>,
        /// IANA time zone, e.g. Europe/London.
        #[arg(long)]
        timezone: Option<String>,
    },
    /// Every user's settings (admin).
    #[command(after_help = "Example: backupctl --json settings list")]
    List,
}

#[derive(Subcommand)]
enum SchedulerCommand {
    /// Show the scheduler's state (admin).
    #[command(after_help = "Example: backupctl scheduler stats")]
    Stats,
    /// Resume the loop, running missed backups first (admin).
    #[command(after_help = "Example: backupctl scheduler start")]
    Start,
    /// Stop the loop; the server keeps serving (admin).
    #[command(after_help = "Example: backupctl scheduler stop")]
    Stop,
    /// Run every backup due now (admin).
    #[command(after_help = "Example: backupctl scheduler run-due")]
    RunDue,
    /// List users whose backups are overdue; exit 5 if there are any (admin).
    #[command(
        after_help = "Example (cron): backupctl scheduler overdue || alert 'backups are overdue'"
    )]
    Overdue,
}

/// Whose backups a retention policy covers.
#[derive(clap::Args)]
struct PolicyArgs {
    /// How many regular backups each owner keeps (1 to 30).
    #[arg(long)]
    keep: i32,
    /// Another user's backups (admin) [default: yours].
    #[arg(long, conflicts_with = "all_users")]
    user: Option<i64>,
    /// Every owner, each on its own (admin).
    #[arg(long)]
    all_users: bool,
}

impl PolicyArgs {
    fn owners(&self) -> Owners {
        match (self.user, self.all_users) {
            (_, true) => Owners::All,
            (Some(id), false) => Owners::User(id),
            (None, false) => Owners::Caller,
        }
    }
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Preview a policy: what would be deleted and why the rest stays.
    #[command(after_help = "Example: backupctl retention summary --keep 7 --all-users")]
    Summary(PolicyArgs),
    /// Apply a policy: delete regular backups beyond each owner's newest N.
    #[command(after_help = "Example: backupctl retention apply --keep 7")]
    Apply(PolicyArgs),
    /// Delete empty backups and files that are not SQLite databases (admin).
    #[command(after_help = "Example: backupctl retention cleanup-empty")]
    CleanupEmpty,
    /// Delete protected backups older than a number of days (admin).
    #[command(after_help = "Example: backupctl retention delete-old-protected --days 90")]
    DeleteOldProtected {
        /// Age limit in days, at least 1.
        #[arg(long)]
        days: i32,
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
        Err(e) => report(&e),
    }
}

/// Prints an error on stderr; returns its exit code.
fn report(e: &Error) -> ExitCode {
    eprintln!("backupctl: {e}");
    match e {
        Error::Transport(_) => ExitCode::from(3),
        Error::NotRegularFile { .. } => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let command = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "backupctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Remote(command) => command,
    };
    let ca = cli.ca_file.as_deref().map(std::fs::read).transpose()?;
    let client = Client::connect_with(&cli.url, &cli.token, ca).await?;
    let out = Output { json: cli.json };
    match command {
        RemoteCommand::Health { service } => {
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
        RemoteCommand::Settings(command) => {
            let mut scheduler = client.scheduler();
            match command {
                SettingsCommand::Get { user } => {
                    out.settings(&[scheduler.get_settings(user).await?], "no backup settings")
                }
                SettingsCommand::Update {
                    user,
                    enabled,
                    frequency,
                    time,
                    keep,
                    timezone,
                } => {
                    let frequency = frequency.map(|f| match f.as_str() {
                        "weekly" => proto::Frequency::Weekly,
                        "monthly" => proto::Frequency::Monthly,
                        _ => proto::Frequency::Daily,
                    });
                    let update = SettingsUpdate {
                        enabled,
                        frequency,
                        backup_time: time,
                        keep_count: keep,
                        timezone,
                    };
                    out.settings(
                        &[scheduler.update_settings(user, update).await?],
                        "no backup settings",
                    );
                }
                SettingsCommand::List => {
                    out.settings(&scheduler.list_settings().await?, "no backup settings")
                }
            }
        }
        RemoteCommand::Scheduler(command) => {
            let mut scheduler = client.scheduler();
            match command {
                SchedulerCommand::Stats => out.stats(&scheduler.stats().await?),
                SchedulerCommand::Start => out.stats(&scheduler.start().await?),
                SchedulerCommand::Stop => out.stats(&scheduler.stop().await?),
                SchedulerCommand::RunDue => {
                    let (run, failed) = scheduler.check_and_run().await?;
                    out.value(
                        json!({ "backups_run": run, "backups_failed": failed }),
                        || {
                            println!("{run} backups run, {failed} failed");
                        },
                    );
                }
                SchedulerCommand::Overdue => {
                    let overdue = scheduler.overdue().await?;
                    out.settings(&overdue, "no overdue users");
                    if !overdue.is_empty() {
                        return Ok(ExitCode::from(5));
                    }
                }
            }
        }
        RemoteCommand::Audit(command) => {
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
        RemoteCommand::Backups(command) => match command {
            BackupsCommand::Create { name } => {
                out.backups(&[client.backups().create(name.as_deref()).await?])
            }
            BackupsCommand::List => out.backups(&client.backups().list_all().await?),
            BackupsCommand::Get(backup) => {
                out.backups(&[backup.service(&client).get(&backup.filename).await?])
            }
            BackupsCommand::Verify(backup) => {
                out.backups(&[backup.service(&client).verify(&backup.filename).await?])
            }
            BackupsCommand::Download { backup, output } => {
                return download(&out, &client, &backup, output).await;
            }
            BackupsCommand::Restore(backup) => {
                // A large database takes a while to verify and copy in.
                let spinner = out.progress(
                    ProgressBar::new_spinner()
                        .with_message(format!("restoring {}", backup.filename)),
                );
                spinner.enable_steady_tick(std::time::Duration::from_millis(100));
                let restored = backup.service(&client).restore(&backup.filename).await;
                spinner.finish_and_clear();
                let (restored, pre) = restored?;
                out.value(json!({ "restored": backup_json(&restored), "pre_restore_backup": backup_json(&pre) }), || {
                    println!("restored {}; the previous source is saved as {}", restored.filename, pre.filename);
                });
            }
            BackupsCommand::Delete { backup, force } => {
                backup
                    .service(&client)
                    .delete(&backup.filename, force)
                    .await?;
                let filename = &backup.filename;
                out.value(json!({ "deleted": filename }), || {
                    println!("deleted {filename}")
                });
            }
        },
        RemoteCommand::Retention(command) => {
            let mut retention = client.retention();
            match command {
                RetentionCommand::Summary(policy) => {
                    let summary = retention.summary(policy.keep, policy.owners()).await?;
                    out.summary(&summary);
                }
                RetentionCommand::Apply(policy) => {
                    out.deleted(&retention.apply(policy.keep, policy.owners()).await?);
                }
                RetentionCommand::CleanupEmpty => out.deleted(&retention.cleanup_empty().await?),
                RetentionCommand::DeleteOldProtected { days } => {
                    out.deleted(&retention.delete_old_protected(days).await?);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `backups download`: to a file through the client crate (which refuses a
/// destination that is not a regular file), or to stdout with `-o -`, where
/// every message goes to stderr.
async fn download(
    out: &Output,
    client: &Client,
    backup: &BackupRef,
    output: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let bar = out.progress(
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
    );
    let written = std::cell::Cell::new(0u64);
    let progress = |done, total| {
        written.set(done);
        bar.set_length(total);
        bar.set_position(done);
    };
    let mut backups = backup.service(client);
    let dest = output.unwrap_or_else(|| PathBuf::from(&backup.filename));
    let to_stdout = dest == Path::new("-");
    let downloaded = if to_stdout {
        let mut stdout = tokio::io::stdout();
        backups
            .download_to_writer(&backup.filename, &mut stdout, progress)
            .await
    } else {
        backups.download_to(&backup.filename, &dest, progress).await
    };
    bar.finish_and_clear();
    let downloaded = match downloaded {
        Ok(downloaded) => downloaded,
        Err(e) if to_stdout => {
            let code = report(&e);
            // A failed write may have passed some bytes on before failing.
            if written.get() > 0 || matches!(e, Error::Io(_)) {
                eprintln!(
                    "backupctl: the bytes written to stdout are incomplete or wrong; do not trust them"
                );
            }
            return Ok(code);
        }
        Err(e) => return Err(e),
    };
    let place = if to_stdout {
        "stdout".to_owned()
    } else {
        dest.display().to_string()
    };
    let summary = if out.json {
        json!({ "filename": downloaded.filename, "path": dest, "sha256": downloaded.sha256 })
            .to_string()
    } else {
        format!(
            "downloaded {} to {place} (sha256 {} verified)",
            downloaded.filename, downloaded.sha256
        )
    };
    // stdout carries the backup itself.
    if to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
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

    /// `bar`, drawn on stderr for people (indicatif skips non-terminals)
    /// and never with `--json`.
    fn progress(&self, bar: ProgressBar) -> ProgressBar {
        if self.json {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar
    }

    /// Settings as a table; `nothing` is printed instead of an empty one.
    fn settings(&self, settings: &[proto::BackupSettings], nothing: &str) {
        let values: Vec<Value> = settings.iter().map(settings_json).collect();
        self.value(Value::Array(values), || {
            let mut table = Table::new();
            table.set_header([
                "USER",
                "ENABLED",
                "FREQUENCY",
                "TIME",
                "ZONE",
                "KEEP",
                "LAST",
                "NEXT",
            ]);
            for s in settings {
                table.add_row([
                    s.user_id.to_string(),
                    s.enabled.to_string(),
                    frequency(s.frequency),
                    s.backup_time.clone(),
                    s.timezone.clone(),
                    s.keep_count.to_string(),
                    timestamp(s.last_backup_at.as_ref()),
                    timestamp(s.next_backup_at.as_ref()),
                ]);
            }
            print_rows(&table, nothing);
        });
    }

    fn stats(&self, s: &proto::SchedulerStats) {
        let value = json!({
            "is_running": s.is_running,
            "holds_lease": s.holds_lease,
            "instance_id": s.instance_id,
            "lease_holder": s.lease_holder,
            "lease_expires_at": timestamp(s.lease_expires_at.as_ref()),
            "check_interval_seconds": s.check_interval_seconds,
            "enabled_backup_settings": s.enabled_backup_settings,
            "total_backup_settings": s.total_backup_settings,
            "next_due_at": timestamp(s.next_due_at.as_ref()),
            "backups_completed": s.backups_completed,
            "backups_failed": s.backups_failed,
            "overdue_users": s.overdue_users,
        });
        self.value(value.clone(), || {
            let mut table = Table::new();
            if let Value::Object(fields) = value {
                for (key, v) in fields {
                    table.add_row([key, v.to_string().trim_matches('"').to_owned()]);
                }
            }
            println!("{table}");
        });
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
                "timestamp": rfc3339(e.timestamp.as_ref()),
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
                let details = match &details {
                    Value::Object(fields) if fields.is_empty() => String::new(),
                    other => format!(" {other}"),
                };
                println!(
                    "{} {} {} user={}{} {}{}",
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
            table.set_header([
                "FILENAME",
                "SIZE",
                "CREATED",
                "KIND",
                "OWNER",
                "PROTECTED",
                "DAMAGED",
                "LAST VERIFIED",
            ]);
            for b in backups {
                table.add_row([
                    b.filename.clone(),
                    b.size_bytes.to_string(),
                    timestamp(b.created_at.as_ref()),
                    kind(b.kind),
                    b.owner_user_id.to_string(),
                    if b.is_protected { "yes" } else { "" }.to_owned(),
                    if b.damaged { "DAMAGED" } else { "" }.to_owned(),
                    last_verified(b),
                ]);
            }
            print_rows(&table, "no backups");
            // What is wrong, below the table rather than widening it.
            for b in backups.iter().filter(|b| b.damaged) {
                println!(
                    "DAMAGED: {} (owner {}): {}",
                    b.filename, b.owner_user_id, b.damage
                );
            }
        });
    }
}

impl Output {
    fn summary(&self, s: &proto::RetentionSummary) {
        let kept: Vec<Value> = s
            .kept_backups
            .iter()
            .map(|k| json!({ "filename": k.filename, "reason": keep_reason(k.reason) }))
            .collect();
        let value = json!({
            "total": s.total,
            "protected": s.protected,
            "to_keep": s.to_keep,
            "to_delete": s.to_delete,
            "filenames_to_delete": s.filenames_to_delete,
            "kept_backups": kept,
        });
        self.value(value, || {
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
                table.add_row([k.filename.clone(), "keep".into(), keep_reason(k.reason)]);
            }
            if !table.is_empty() {
                println!("{table}");
            }
        });
    }

    fn deleted(&self, filenames: &[String]) {
        self.value(
            json!({ "deleted_count": filenames.len(), "deleted_filenames": filenames }),
            || {
                println!("deleted {} backup(s)", filenames.len());
                for name in filenames {
                    println!("  {name}");
                }
            },
        );
    }
}

/// Prints `table`, or `nothing` when it has no rows (an empty frame says
/// less than a sentence).
fn print_rows(table: &Table, nothing: &str) {
    if table.is_empty() {
        println!("{nothing}");
    } else {
        println!("{table}");
    }
}

/// An enum value's name without its prefix, lowercased
/// (`BACKUP_KIND_AUTO` -> `auto`), or the number if unknown.
fn short_name(name: Option<&str>, prefix: &str, value: i32) -> String {
    name.map_or_else(
        || value.to_string(),
        |n| n.trim_start_matches(prefix).to_lowercase(),
    )
}

fn keep_reason(value: i32) -> String {
    let name = proto::KeepReason::try_from(value).ok();
    short_name(
        name.as_ref().map(|r| r.as_str_name()),
        "KEEP_REASON_",
        value,
    )
}

fn frequency(value: i32) -> String {
    let name = proto::Frequency::try_from(value).ok();
    short_name(name.as_ref().map(|f| f.as_str_name()), "FREQUENCY_", value)
}

fn kind(value: i32) -> String {
    let name = proto::BackupKind::try_from(value).ok();
    short_name(
        name.as_ref().map(|k| k.as_str_name()),
        "BACKUP_KIND_",
        value,
    )
}

fn settings_json(s: &proto::BackupSettings) -> Value {
    json!({
        "user_id": s.user_id,
        "enabled": s.enabled,
        "frequency": frequency(s.frequency),
        "backup_time": s.backup_time,
        "keep_count": s.keep_count,
        "timezone": s.timezone,
        "last_backup_at": timestamp(s.last_backup_at.as_ref()),
        "next_backup_at": timestamp(s.next_backup_at.as_ref()),
    })
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A timestamp for machines: RFC 3339, UTC, microseconds.
fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
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

/// When a backup was last verified, or "never".
fn last_verified(b: &proto::Backup) -> String {
    match &b.last_verified_at {
        Some(at) => timestamp(Some(at)),
        None => "never".to_owned(),
    }
}

/// The one JSON form of a backup (list, get, verify, restore).
/// `last_verified_at` is null until the first verification.
fn backup_json(b: &proto::Backup) -> Value {
    json!({
        "filename": b.filename,
        "size_bytes": b.size_bytes,
        "created_at": timestamp(b.created_at.as_ref()),
        "is_protected": b.is_protected,
        "kind": kind(b.kind),
        "owner_user_id": b.owner_user_id,
        "sha256": b.sha256,
        "damaged": b.damaged,
        "damage": b.damage,
        "last_verified_at": b.last_verified_at.as_ref().map(|at| timestamp(Some(at))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command, with the path of names leading to it.
    fn commands(cmd: &clap::Command, path: String, all: &mut Vec<(String, clap::Command)>) {
        // clap's generated `help` subcommands mirror the real ones.
        for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            commands(sub, format!("{path} {}", sub.get_name()), all);
        }
        all.push((path, cmd.clone()));
    }

    fn every_command() -> Vec<(String, clap::Command)> {
        let mut root = Cli::command();
        root.build();
        let mut all = Vec::new();
        commands(&root, "backupctl".into(), &mut all);
        all
    }

    /// Each example in a help text parses as a real command line.
    #[test]
    fn help_examples_are_real_command_lines() {
        let mut checked = 0;
        for (path, cmd) in every_command() {
            let Some(help) = cmd.get_after_help() else {
                continue;
            };
            for line in help.to_string().lines() {
                let Some(at) = line.find("backupctl ") else {
                    continue;
                };
                // The command, without what a shell pipes or redirects it to.
                let example = line[at..].split(['|', '>']).next().unwrap_or_default();
                let words: Vec<&str> = example.split_whitespace().collect();
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{path}: the example `{example}` does not parse: {e}");
                }
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} examples found");
    }

    /// Each `--flag` a command's about, long about or argument help
    /// mentions is one of the command's own flags (or a global one).
    #[test]
    fn help_texts_name_real_flags() {
        for (path, cmd) in every_command() {
            let args = cmd
                .get_arguments()
                .flat_map(|a| [a.get_help(), a.get_long_help()]);
            let text = [cmd.get_about(), cmd.get_long_about()]
                .into_iter()
                .chain(args)
                .flatten()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            for word in text.split_whitespace() {
                let Some(flag) = word.strip_prefix("--") else {
                    continue;
                };
                let flag = flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                assert!(
                    cmd.get_arguments().any(|a| a.get_long() == Some(flag)),
                    "{path} mentions --{flag}, which it does not have"
                );
            }
        }
    }
}
