//! The command line's shape: every clap struct and enum, with the help
//! texts people read, and the small translations of arguments into the
//! client library's own values.

use std::path::PathBuf;

use backup_client::{Client, Owners};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Drive the backup service",
    after_help = "Examples:\n  backupctl --token $TOKEN backups create --name before-upgrade\n  backupctl backups list --json\n  backupctl health"
)]
pub struct Cli {
    /// Server URL.
    #[arg(
        long,
        env = "BACKUP_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub url: String,
    /// Bearer token (from `backup-server token create`).
    #[arg(
        long,
        env = "BACKUP_TOKEN",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    pub token: String,
    /// PEM CA bundle to trust for an https:// URL (default: the system's roots).
    #[arg(long, env = "BACKUP_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub enum RemoteCommand {
    // Each group's about lists its subcommands by name; a test holds them
    // to the real ones.
    /// Backup files: create, list, get, verify, download, restore, delete, prune, stats.
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
pub struct BackupRef {
    /// The backup's file name.
    pub filename: String,
    /// Whose backup it is, for an admin naming another user's (names are
    /// unique per owner; 0 is the system's) [default: yours].
    #[arg(long, value_name = "USER_ID")]
    pub owner: Option<i64>,
}

impl BackupRef {
    /// The backups service, addressing this backup's owner.
    pub fn service(&self, client: &Client) -> backup_client::Backups {
        client.backups().owned_by(self.owner)
    }
}

#[derive(Subcommand)]
pub enum BackupsCommand {
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
    /// Check a backup's size, digest and integrity on the server; exit 1 if damaged.
    #[command(after_help = "Example: backupctl backups verify nightly.db --owner 2")]
    Verify(BackupRef),
    /// Download a backup to a file or to stdout, checking its digest (blake3, or sha256).
    ///
    /// A file appears only once complete and verified (written to
    /// `<file>.part`, then renamed); an existing regular file is replaced,
    /// anything else there (a symlink, directory, device, FIFO) is refused
    /// with exit 2 before anything is downloaded. With `-o -` the bytes go to
    /// stdout as they arrive and messages to stderr; if the stream, a write
    /// or the digest check fails, the exit is 1 and what was written is not
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
    /// Remove stored bytes no backup references any longer (admin).
    #[command(after_help = "Example: backupctl backups prune")]
    Prune,
    /// What the backup storage holds: logical and stored bytes,
    /// deduplication and compression (admin).
    #[command(after_help = "Example: backupctl backups stats --json")]
    Stats,
}

#[derive(Subcommand)]
pub enum SettingsCommand {
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
pub enum SchedulerCommand {
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
pub struct PolicyArgs {
    /// How many regular backups each owner keeps (1 to 30).
    #[arg(long)]
    pub keep: i32,
    /// Another user's backups (admin) [default: yours].
    #[arg(long, conflicts_with = "all_users")]
    pub user: Option<i64>,
    /// Every owner, each on its own (admin).
    #[arg(long)]
    pub all_users: bool,
}

impl PolicyArgs {
    pub fn owners(&self) -> Owners {
        match (self.user, self.all_users) {
            (_, true) => Owners::All,
            (Some(id), false) => Owners::User(id),
            (None, false) => Owners::Caller,
        }
    }
}

#[derive(Subcommand)]
pub enum RetentionCommand {
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
pub enum AuditCommand {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

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
