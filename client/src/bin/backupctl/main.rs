//! `backupctl`: the backup service from a terminal. Tables for people,
//! `--json` for scripts.
//!
//! Exit codes: 0 success; 1 the server refused the call (its gRPC code is
//! printed, e.g. DataLoss for a damaged backup), or a local write failed, or
//! a download failed its sha256 check; 2 usage error, including a download
//! destination that exists and is not a regular file; 3 cannot connect;
//! 4 unhealthy (`health`); 5 overdue users exist (`scheduler overdue`).
//!
//! This file holds the entry point, the exit codes and the dispatch of each
//! command to the client library; [`cli`] is the command line, [`render`]
//! what is printed, [`download`] the one command with more to it.

mod cli;
mod download;
mod render;

use std::process::ExitCode;

use backup_client::proto_health::health_check_response::ServingStatus;
use backup_client::{AuditFilter, Client, Error, SettingsUpdate, proto};
use clap::{CommandFactory, Parser};
use indicatif::ProgressBar;
use tokio_stream::StreamExt;

use cli::{
    AuditCommand, BackupsCommand, Cli, Command, RemoteCommand, RetentionCommand, SchedulerCommand,
    SettingsCommand,
};
use render::Output;

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
            out.health(&service, status);
            return Ok(if status == ServingStatus::Serving {
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
                    out.run_due(run, failed);
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
                return download::download(&out, &client, &backup, output).await;
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
                out.restored(&restored, &pre);
            }
            BackupsCommand::Prune => out.pruned(&client.backups().prune_repository().await?),
            BackupsCommand::Stats => {
                out.repository_stats(&client.backups().repository_stats().await?)
            }
            BackupsCommand::Delete { backup, force } => {
                backup
                    .service(&client)
                    .delete(&backup.filename, force)
                    .await?;
                out.deleted_backup(&backup.filename);
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
