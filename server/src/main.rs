//! `backup-server`: flags, logging and binding, then `backup_server::prepare`
//! and `Prepared::serve`; and the `token` and `init-demo` subcommands.

use std::process::ExitCode;

use backup_server::backup::storage::repository::keys::KeyFile;
use backup_server::config::{Config, LogFormat, args_with_config_file};
use backup_server::{auth, demo, open_repository, open_store, telemetry};
use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Scheduled, consistent backups of a live SQLite database, over gRPC",
    // A later occurrence of a flag wins: the command line over --config.
    args_override_self = true
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Manage API tokens in the state store (works while the server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Work on the backup repository (--repository).
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Create a demo source database with sample rows where there is none.
    InitDemo {
        /// How many sample orders to write.
        #[arg(long, default_value_t = 1000)]
        rows: u32,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Write a new random repository key to FILE (mode 0600), for
    /// --repository-key-file. Keep a copy away from the repository: without
    /// it, its backups cannot be read.
    InitKey {
        /// Where to write the key; never over an existing file.
        file: std::path::PathBuf,
    },
    /// List the repository's backups as JSON lines (name, time, size,
    /// digests, stored bytes), from the repository alone.
    List,
    /// Rebuild a backup into a new standalone SQLite file, checked chunk
    /// by chunk, against its SHA-256 and with `integrity_check`, from the
    /// repository alone (the server may be stopped).
    Restore {
        /// The backup's file name (`repo list` shows them).
        name: String,
        /// The file to write; never over an existing one.
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Replace the repository's key file (--repository-key-file) by a new
    /// one (made with `repo init-key`): the old file no longer opens the
    /// repository afterwards. Nothing is re-encrypted; safe to run again if
    /// interrupted.
    RotateKey {
        /// The new key file.
        #[arg(long)]
        new_key_file: std::path::PathBuf,
    },
    /// Check that every backup can be rebuilt; exit 1 on any damage,
    /// naming each backup it affects.
    Check {
        /// Also read every pack whole and check every chunk against its id.
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token (creating the user if needed) and print only the token.
    Create {
        /// The user the token acts as.
        #[arg(long)]
        user_id: i64,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        /// Let the token expire after this many days (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        expires_in_days: Option<u32>,
    },
    /// List tokens (never the tokens themselves) as JSON lines.
    List,
    /// Revoke a token by id; exits 1 if it does not exist or is already revoked.
    Revoke {
        /// The id shown by `token list`.
        id: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args_with_config_file(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("backup-server: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    // Logs go to stderr; stdout carries only what scripts read. The one-shot
    // subcommands log only what needs attention unless RUST_LOG says more.
    let default_level = match cli.command {
        None | Some(Command::Serve) => "info",
        Some(_) => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backup-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::InitDemo { rows } => {
            let paths = cli.config.prepare()?;
            if demo::create(&paths.source_db, rows)? {
                eprintln!(
                    "created the demo source database {}",
                    paths.source_db.display()
                );
            } else {
                eprintln!(
                    "{} already exists; left as it is",
                    paths.source_db.display()
                );
            }
            Ok(())
        }
        Command::Repo(command) => repo(&cli.config, command).await,
        Command::Token(command) => {
            let (db, _) = open_store(&cli.config).await?;
            match command {
                TokenCommand::Create {
                    user_id,
                    admin,
                    expires_in_days,
                } => {
                    let expires_at = expires_in_days
                        .map(|days| chrono::Utc::now() + chrono::Duration::days(days.into()));
                    println!(
                        "{}",
                        auth::mint_token(&db, user_id, admin, expires_at).await?
                    );
                }
                TokenCommand::List => {
                    for token in auth::list_tokens(&db).await? {
                        println!("{}", serde_json::to_string(&token)?);
                    }
                }
                TokenCommand::Revoke { id } => auth::revoke_token(&db, id).await?,
            }
            db.close().await?;
            Ok(())
        }
    }
}

async fn repo(config: &Config, command: RepoCommand) -> Result<(), Box<dyn std::error::Error>> {
    if let RepoCommand::InitKey { file } = &command {
        KeyFile::generate(file).map_err(|e| format!("{}: {e}", file.display()))?;
        eprintln!(
            "wrote a new repository key to {}; keep a copy apart from the repository",
            file.display()
        );
        return Ok(());
    }
    let paths = config.prepare()?;
    // Offline commands write no chunks and never prune: no lock to share.
    let repository = open_repository(config, &paths, None).await?;
    match command {
        RepoCommand::InitKey { .. } => {}
        RepoCommand::List => {
            for manifest in repository.manifests().await? {
                let line = serde_json::json!({
                    "name": manifest.name,
                    "taken_at": manifest.taken_at.to_rfc3339(),
                    "size_bytes": manifest.size_bytes,
                    "sha256": manifest.sha256,
                    "blake3": manifest.blake3,
                    "stored_bytes": manifest.stored_bytes,
                });
                println!("{line}");
            }
        }
        RepoCommand::Restore { name, to } => {
            let facts = repository.restore_to(&name, &to).await?;
            eprintln!(
                "restored {name} to {} ({} bytes, blake3 {} verified, integrity_check ok)",
                to.display(),
                facts.size_bytes,
                facts.blake3.unwrap_or_default()
            );
        }
        RepoCommand::RotateKey { new_key_file } => {
            let current = config
                .repository_key_file
                .as_deref()
                .ok_or("give the current key with --repository-key-file")?;
            let removed = repository
                .rotate_key(&KeyFile::read(current)?, &KeyFile::read(&new_key_file)?)
                .await?;
            eprintln!(
                "the repository now opens with {} ({removed} old key(s) removed)",
                new_key_file.display()
            );
        }
        RepoCommand::Check { read_data } => {
            let checked = repository.check(read_data).await?;
            for problem in &checked.problems {
                eprintln!("problem: {problem}");
            }
            for (name, why) in &checked.damaged {
                println!("damaged: {name}: {why}");
            }
            eprintln!(
                "checked {} backups in {} packs{}: {} damaged",
                checked.backups,
                checked.packs,
                if read_data {
                    format!(", {} bytes read", checked.bytes_read)
                } else {
                    String::new()
                },
                checked.damaged.len()
            );
            if !checked.damaged.is_empty() {
                return Err("the repository has damaged backups".into());
            }
        }
    }
    Ok(())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    config.check_transport()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", config.listen))?;
    if let Some(addr) = config.metrics_listen {
        telemetry::serve_metrics(addr)?;
    }
    let shutdown = shutdown_signal()?;
    let server = backup_server::prepare(config).await?;
    // The one stdout line, printed once requests can be served: scripts and
    // tests read the bound address here.
    println!("listening on {}", listener.local_addr()?);
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C. The SIGTERM handler is registered
/// here, at once, so a SIGTERM right after the ready line still shuts the
/// server down cleanly instead of killing it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    })
}
