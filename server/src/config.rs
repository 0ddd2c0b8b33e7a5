//! Configuration shared by the server and its subcommands: every flag has an
//! environment variable, and flags may stand before or after a subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "BACKUP_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// Directory for the state store, the source database and the backups,
    /// unless each is given on its own. Created mode 0700.
    #[arg(long, env = "BACKUP_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// The service's own state store [default: sqlite://DATA_DIR/state.db?mode=rwc].
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// The live SQLite database to back up [default: DATA_DIR/source.db].
    #[arg(long, env = "BACKUP_SOURCE_DB", global = true)]
    pub source_db: Option<PathBuf>,

    /// Where backup files live [default: DATA_DIR/backups].
    #[arg(long, env = "BACKUP_BACKUPS_DIR", global = true)]
    pub backups_dir: Option<PathBuf>,

    /// How many backups and restores may copy data at once; more wait.
    #[arg(long, env = "BACKUP_MAX_CONCURRENT_COPIES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub max_concurrent_copies: u32,

    /// Seconds between the scheduler's safety-net wake-ups.
    #[arg(long, env = "BACKUP_CHECK_INTERVAL", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    pub check_interval: u64,

    /// Seconds a scheduler lease lasts unless renewed; another process
    /// takes the scheduler over this long after the holder dies.
    #[arg(long, env = "BACKUP_LEASE_TTL", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=3600), global = true)]
    pub lease_ttl: u64,

    /// Do not start the scheduling loop (StartScheduler starts it later).
    #[arg(long, env = "BACKUP_NO_SCHEDULER", global = true)]
    pub no_scheduler: bool,

    /// Seconds to wait at shutdown for in-flight requests and open
    /// connections before closing them.
    #[arg(
        long,
        env = "BACKUP_SHUTDOWN_GRACE",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_grace: u64,
}

/// Absolute paths and URL the process works with, defaults filled in.
#[derive(Clone, Debug)]
pub struct Paths {
    pub database_url: String,
    pub source_db: PathBuf,
    pub backups_dir: PathBuf,
}

impl Config {
    /// Creates the data and backups directories (0700) and resolves every
    /// path to an absolute one.
    pub fn prepare(&self) -> crate::error::Result<Paths> {
        crate::backup::file_io::ensure_private_dir(&self.data_dir)?;
        let data_dir = std::path::absolute(&self.data_dir)?;
        let backups_dir = std::path::absolute(
            self.backups_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("backups")),
        )?;
        crate::backup::file_io::ensure_private_dir(&backups_dir)?;
        let source_db = std::path::absolute(
            self.source_db
                .clone()
                .unwrap_or_else(|| data_dir.join("source.db")),
        )?;
        let database_url = self
            .database_url
            .clone()
            .unwrap_or_else(|| default_database_url(&data_dir));
        Ok(Paths {
            database_url,
            source_db,
            backups_dir,
        })
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval)
    }
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("state.db").display())
}
