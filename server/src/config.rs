//! Configuration shared by the server and its subcommands: every flag has an
//! environment variable, and flags may stand before or after a subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ffi::OsString;

use clap::{Args, ValueEnum};

use crate::error::{Error, Result};

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

    /// Where the backup repository is (deduplicated, compressed,
    /// optionally encrypted): a path, a `file://` URL or
    /// `s3://bucket/prefix` (configured by the standard `AWS_*` environment
    /// variables) [default: BACKUPS_DIR/repository].
    #[arg(long, env = "BACKUP_REPOSITORY", global = true)]
    pub repository: Option<String>,

    /// Keep backups as full copies in --backups-dir instead of a
    /// repository: plain SQLite files, each as large as the source.
    #[arg(long, env = "BACKUP_FULL_COPIES", global = true)]
    pub full_copies: bool,

    /// Encrypt and authenticate the repository with the key in this file
    /// (`backup-server repo init-key FILE` makes one; mode 0600).
    #[arg(long, env = "BACKUP_REPOSITORY_KEY_FILE", global = true)]
    pub repository_key_file: Option<PathBuf>,

    /// Accept a remote repository (s3://) without encryption.
    #[arg(long, env = "BACKUP_ALLOW_UNENCRYPTED_REMOTE", global = true)]
    pub allow_unencrypted_remote: bool,

    /// How many backups and restores may copy data at once; more wait.
    #[arg(long, env = "BACKUP_MAX_CONCURRENT_COPIES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub max_concurrent_copies: u32,

    /// Verify every backup (size, SHA-256, integrity check) at least this
    /// often, one at a time: `7d`, `6h`, `30s`; `0` turns it off.
    #[arg(long, env = "BACKUP_VERIFY_INTERVAL", default_value = "7d",
          value_parser = parse_interval, global = true)]
    pub verify_interval: Duration,

    /// Let non-admin users download their backups. A backup holds the whole
    /// source database, every user's rows: only for a source that holds
    /// one user's data (a desktop app, a single-tenant instance).
    #[arg(long, env = "BACKUP_ALLOW_USER_DOWNLOADS", global = true)]
    pub allow_user_downloads: bool,

    /// The most manual backups a non-admin user may keep.
    #[arg(long, env = "BACKUP_MAX_MANUAL_BACKUPS_PER_USER", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub max_manual_backups_per_user: u32,

    /// Seconds between the scheduler's safety-net wake-ups.
    #[arg(long, env = "BACKUP_CHECK_INTERVAL", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    pub check_interval: u64,

    /// Seconds a scheduler lease lasts unless renewed; another process
    /// takes the scheduler over this long after the holder dies.
    #[arg(long, env = "BACKUP_LEASE_TTL", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=3600), global = true)]
    pub lease_ttl: u64,

    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "BACKUP_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "BACKUP_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates it signed (mutual TLS).
    #[arg(
        long,
        env = "BACKUP_TLS_CLIENT_CA",
        requires = "tls_cert",
        global = true
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve plaintext on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long, env = "BACKUP_ALLOW_INSECURE", global = true)]
    pub allow_insecure: bool,

    /// Do not serve gRPC reflection (it hands out the whole schema).
    #[arg(long, env = "BACKUP_NO_REFLECTION", global = true)]
    pub no_reflection: bool,

    /// Do not start the scheduling loop (StartScheduler starts it later).
    #[arg(long, env = "BACKUP_NO_SCHEDULER", global = true)]
    pub no_scheduler: bool,

    /// Serve Prometheus metrics over HTTP on this address (off by default).
    #[arg(long, env = "BACKUP_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format on stderr.
    #[arg(long, env = "BACKUP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// A TOML file whose keys mirror these flags (`data_dir = "/var/lib/backup"`).
    /// Precedence: command line, then environment, then this file, then defaults.
    #[arg(long, env = "BACKUP_CONFIG", global = true)]
    pub config: Option<PathBuf>,

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Prepends the flags a `--config` TOML file (or `BACKUP_CONFIG`) sets to
/// `args`, skipping keys whose environment variable is set, so the
/// command line still wins (clap keeps the last occurrence) and the
/// environment beats the file.
pub fn args_with_config_file(
    args: Vec<OsString>,
    command: &clap::Command,
) -> Result<Vec<OsString>> {
    let from_args = args.iter().enumerate().find_map(|(i, arg)| {
        let arg = arg.to_str()?;
        match arg.strip_prefix("--config=") {
            Some(path) => Some(OsString::from(path)),
            None => (arg == "--config")
                .then(|| args.get(i + 1).cloned())
                .flatten(),
        }
    });
    let Some(path) = from_args.or_else(|| std::env::var_os("BACKUP_CONFIG")) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::invalid(
            "config",
            format!("cannot read {}: {e}", PathBuf::from(&path).display()),
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::invalid("config", format!("is not valid TOML: {e}")))?;
    let mut injected = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| Error::invalid("config", format!("unknown key {key:?}")))?;
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => injected.push(OsString::from(format!("--{long}"))),
            toml::Value::Boolean(false) => {}
            toml::Value::String(v) => injected.push(OsString::from(format!("--{long}={v}"))),
            toml::Value::Integer(v) => injected.push(OsString::from(format!("--{long}={v}"))),
            other => {
                return Err(Error::invalid(
                    "config",
                    format!(
                        "{key} must be a string, integer or boolean, not {}",
                        other.type_str()
                    ),
                ));
            }
        }
    }
    let mut args = args.into_iter();
    Ok(args
        .next()
        .into_iter()
        .chain(injected)
        .chain(args)
        .collect())
}

/// Absolute paths and URL the process works with, defaults filled in.
#[derive(Clone, Debug)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub source_db: PathBuf,
    pub backups_dir: PathBuf,
    /// The repository's URL; `None` with `--full-copies`.
    pub repository: Option<String>,
}

impl Config {
    /// Creates the data directory (0700) and resolves every path to an
    /// absolute one; the backup storage creates its own directory.
    /// A failure names the flag and the path: `--data-dir /x/f/data:
    /// Not a directory (os error 20)`.
    pub fn prepare(&self) -> crate::error::Result<Paths> {
        let data_dir = private_dir("--data-dir", &self.data_dir)?;
        let backups_dir = absolute(
            "--backups-dir",
            &self
                .backups_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("backups")),
        )?;
        let source_db = absolute(
            "--source-db",
            &self
                .source_db
                .clone()
                .unwrap_or_else(|| data_dir.join("source.db")),
        )?;
        let database_url = self
            .database_url
            .clone()
            .unwrap_or_else(|| default_database_url(&data_dir));
        let repository = match (&self.repository, self.full_copies) {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "full-copies",
                    "keeps no repository: give --repository or --full-copies, not both",
                ));
            }
            (None, true) => None,
            (Some(url), false) => Some(url.clone()),
            (None, false) => Some(backups_dir.join("repository").display().to_string()),
        };
        Ok(Paths {
            data_dir,
            database_url,
            source_db,
            backups_dir,
            repository,
        })
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    /// The TLS configuration from the flags, if TLS is on.
    pub fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Error::invalid(flag, format!("cannot read {}: {e}", path.display())))
        };
        let identity =
            tonic::transport::Identity::from_pem(read("tls-cert", cert)?, read("tls-key", key)?);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
                "tls-client-ca",
                ca,
            )?));
        }
        Ok(Some(tls))
    }

    /// Refuses plaintext on an address other machines can reach, unless
    /// explicitly allowed: tokens would cross the network in the clear.
    pub fn check_transport(&self) -> Result<()> {
        if self.tls_cert.is_some() || self.listen.ip().is_loopback() || self.allow_insecure {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "refusing to listen on {} without TLS: bearer tokens would travel in the clear. \
             Pass --tls-cert and --tls-key, or --allow-insecure behind a TLS-terminating proxy",
            self.listen
        )))
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval)
    }
}

/// A duration such as `7d`, `6h`, `90m` or `30s`; `0` for none.
fn parse_interval(text: &str) -> std::result::Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; give a duration such as 7d, 6h, 90m or 30s, or 0 for none"))
}

/// A start-up failure at `path`, which `flag` sets (or defaults): says both.
pub(crate) fn at(flag: &str, path: &Path, error: Error) -> Error {
    let why = match error {
        Error::Io(e) => e.to_string(),
        other => other.to_string(),
    };
    Error::FailedPrecondition(format!("{flag} {}: {why}", path.display()))
}

/// Creates `dir` (and parents, mode 0700) if missing and makes it
/// absolute; a failure names `flag` and the directory.
fn private_dir(flag: &str, dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| at(flag, dir, Error::Io(e)))?;
    absolute(flag, dir)
}

/// `path` made absolute; a failure names `flag` and the path.
fn absolute(flag: &str, path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| at(flag, path, Error::Io(e)))
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("state.db").display())
}
