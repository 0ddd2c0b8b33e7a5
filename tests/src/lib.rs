//! Test harness: real `backup-server` processes on ephemeral ports, each
//! with its own data directory, driven through the client crate.
//!
//! The binaries come from the same cargo target directory as the test; the
//! test command builds them first (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

pub use backup_client::{Client, Code, Error, proto};
use rusqlite::Connection;

pub mod bench;
pub mod postgres;
pub mod s3;

/// A workspace binary next to the running test's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// The engine of the state stores the harness gives servers, for the whole
/// test run: `BACKUP_TEST_STATE_STORE=sqlite` (the default: `state.db` in
/// the data directory) or `postgres` (a fresh database per data directory
/// in the cluster `BACKUP_TEST_POSTGRES` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine `BACKUP_TEST_STATE_STORE` names.
    pub fn from_env() -> Self {
        env_choice(
            "BACKUP_TEST_STATE_STORE",
            [("sqlite", Self::Sqlite), ("postgres", Self::Postgres)],
        )
    }
}

/// The value environment variable `var` names among `choices`, the first
/// when it is unset; panics on any other value, so a typo never runs the
/// suite on the wrong setup.
fn env_choice<T: Copy>(var: &str, choices: [(&str, T); 2]) -> T {
    let value = match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => return choices[0].1,
        other => other,
    };
    let found = value
        .as_deref()
        .ok()
        .and_then(|name| choices.iter().find(|(n, _)| *n == name));
    match found {
        Some((_, choice)) => *choice,
        None => panic!(
            "{var} is {value:?}: it must be `{}` (the default) or `{}`",
            choices[0].0, choices[1].0
        ),
    }
}

/// How the servers the harness starts store backups, for the whole test
/// run: `BACKUP_TEST_STORAGE=repository` (the server's default, and the
/// harness's) or `full-copies` (`--full-copies`), which the test command
/// runs the BackupFiles and backupctl suites on too. Tests of one
/// storage's own files pin it: [`DataDir::keeping_full_copies`], or
/// `tests/repository.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Repository,
    FullCopies,
}

impl Storage {
    /// The storage `BACKUP_TEST_STORAGE` names.
    pub fn from_env() -> Self {
        env_choice(
            "BACKUP_TEST_STORAGE",
            [
                ("repository", Self::Repository),
                ("full-copies", Self::FullCopies),
            ],
        )
    }
}

/// A data directory with a demo source database, shared by the server
/// processes a test starts on it, a state store on the engine
/// [`Engine::from_env`] names and backups on the storage
/// [`Storage::from_env`] names.
pub struct DataDir {
    pub dir: tempfile::TempDir,
    /// The URL of its PostgreSQL database; `None`: `state.db` in `dir`.
    postgres: Option<String>,
    storage: Storage,
}

impl DataDir {
    pub fn new() -> Self {
        Self::with_rows(200)
    }

    /// A data directory whose demo source has `rows` orders.
    pub fn with_rows(rows: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let postgres = match Engine::from_env() {
            Engine::Sqlite => None,
            Engine::Postgres => Some(postgres::new_database()),
        };
        let data = Self {
            dir,
            postgres,
            storage: Storage::from_env(),
        };
        let status = data
            .command()
            .args(["init-demo", "--rows", &rows.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run init-demo");
        assert!(status.success(), "init-demo failed");
        data
    }

    /// The same directory with its servers keeping full copies, for tests
    /// of the files of that storage (damaged, dropped in, undeletable).
    pub fn keeping_full_copies(self) -> Self {
        Self {
            storage: Storage::FullCopies,
            ..self
        }
    }

    pub fn storage(&self) -> Storage {
        self.storage
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn source(&self) -> PathBuf {
        self.path().join("source.db")
    }

    pub fn backups_dir(&self) -> PathBuf {
        self.path().join("backups")
    }

    /// The names of the backups its storage holds, sorted, with anything
    /// else left in the backups directory (a scratch file, a partial copy):
    /// the files there on full copies; on the repository, what `repo list`
    /// reads from it, and every other file beside the repository.
    pub fn stored_backups(&self) -> Vec<String> {
        let mut names = file_names(&self.backups_dir());
        if self.storage == Storage::Repository {
            names.retain(|name| name != REPOSITORY_DIR);
            names.extend(self.repo_list().into_iter().map(|manifest| {
                manifest["name"]
                    .as_str()
                    .expect("a manifest's name")
                    .to_owned()
            }));
            names.sort();
        }
        names
    }

    /// `backup-server repo list` on its default repository: one JSON object
    /// per backup.
    pub fn repo_list(&self) -> Vec<serde_json::Value> {
        json_lines(&self.repo(&["list"]).stdout)
    }

    /// `backup-server repo ARGS` on its default repository, which must
    /// succeed. The server may be running: these commands only read.
    pub fn repo(&self, args: &[&str]) -> std::process::Output {
        assert_eq!(self.storage, Storage::Repository, "no repository here");
        let out = self.command().arg("repo").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "repo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A standalone SQLite file with backup `name` (its file name) as
    /// stored: the file itself on full copies; on the repository, one
    /// rebuilt and checked by `repo restore` (anew at each call).
    pub fn backup_file(&self, name: &str) -> PathBuf {
        match self.storage {
            Storage::FullCopies => self.backups_dir().join(name),
            Storage::Repository => {
                let dir = self.path().join("rebuilt");
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(name);
                let _ = std::fs::remove_file(&file);
                self.repo(&["restore", name, "--to", file.to_str().unwrap()]);
                file
            }
        }
    }

    /// Drops a copy of `from` into the backups directory as `name`, as
    /// another tool would, last modified at `modified`: copied beside it
    /// first and renamed in, so the server never sees it partial or with
    /// its first modification time. Both storages import it by name.
    pub fn drop_in(&self, from: &Path, name: &str, modified: SystemTime) -> PathBuf {
        let staged = self.path().join(format!("dropping-{name}"));
        std::fs::copy(from, &staged).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&staged)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let dropped = self.backups_dir().join(name);
        std::fs::rename(&staged, &dropped).unwrap();
        dropped
    }

    /// The engine of its state store.
    pub fn engine(&self) -> Engine {
        match self.postgres {
            None => Engine::Sqlite,
            Some(_) => Engine::Postgres,
        }
    }

    /// Its state store, for checks and for setting up situations (missed
    /// runs, many users) as an operator's tool would, on either engine.
    pub fn state_db(&self) -> StateDb {
        StateDb(match &self.postgres {
            None => Target::Sqlite(self.path().join("state.db")),
            Some(url) => Target::Postgres(url.clone()),
        })
    }

    /// `backup-server --data-dir DIR` ready for a subcommand, on this
    /// directory's state store and storage.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("backup-server"));
        cmd.arg("--data-dir")
            .arg(self.path())
            .env("RUST_LOG", "warn")
            .env(
                "BACKUP_FULL_COPIES",
                (self.storage == Storage::FullCopies).to_string(),
            );
        match &self.postgres {
            Some(url) => cmd.env("DATABASE_URL", url),
            // state.db, whatever the calling shell's environment says.
            None => cmd.env_remove("DATABASE_URL"),
        };
        cmd
    }

    /// Mints a token with `backup-server token create`.
    pub fn token(&self, user_id: i64, admin: bool) -> String {
        let mut cmd = self.command();
        cmd.args(["token", "create", "--user-id", &user_id.to_string()]);
        if admin {
            cmd.arg("--admin");
        }
        let out = cmd.output().expect("run token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 token")
            .trim()
            .to_owned()
    }

    /// Starts a server on this directory with extra flags.
    pub fn start(&self, extra: &[&str]) -> Server {
        self.try_start(extra)
            .unwrap_or_else(|line| panic!("server did not start: {line:?}"))
    }

    /// Starts a server, or returns what it printed instead of its ready
    /// line (it has exited by then).
    pub fn try_start(&self, extra: &[&str]) -> Result<Server, String> {
        self.try_start_with(extra, &[])
    }

    /// [`DataDir::try_start`] with `env` added to the server's environment.
    pub fn try_start_with(
        &self,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Result<Server, String> {
        let child = self
            .server_command(extra)
            .envs(env.iter().cloned())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn backup-server");
        ready(child)
    }

    /// [`DataDir::try_start`] with the server's stderr (its logs, and why
    /// it did not start) collected rather than inherited.
    pub fn try_start_capturing(&self, extra: &[&str]) -> (Result<Server, String>, Stderr) {
        let mut child = self
            .server_command(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backup-server");
        let stderr = Stderr::collect(child.stderr.take().expect("server stderr"));
        (ready(child), stderr)
    }

    /// `backup-server` on an ephemeral port with `extra` flags, stdout piped.
    fn server_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped());
        cmd
    }
}

/// Waits for a spawned server's ready line; returns what it printed
/// instead (having killed it) if that is not the ready line.
fn ready(mut child: Child) -> Result<Server, String> {
    let stdout = child.stdout.take().expect("server stdout");
    // Read on a thread, so a server stuck before its ready line fails
    // the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| "(no ready line within 60 s)".into());
    match line.trim().strip_prefix("listening on ") {
        Some(addr) => Ok(Server {
            url: format!("http://{addr}"),
            child,
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(line)
        }
    }
}

/// What a server process writes to stderr, collected as it comes (on a
/// thread, so the server never blocks on a full pipe).
pub struct Stderr {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Stderr {
    fn collect(stderr: std::process::ChildStderr) -> Self {
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { text, reader }
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything written, once the process has exited.
    pub fn finish(self) -> String {
        let _ = self.reader.join();
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        text.clone()
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A running server process; SIGKILLed on drop if still running.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub async fn client(&self, token: &str) -> Client {
        Client::connect(&self.url, token).await.expect("connect")
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, awaiting the exit without blocking the test's runtime (its
    /// clients keep answering the server's goodbye).
    pub async fn shutdown(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.terminate())
            .await
            .expect("terminate task")
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs mounted for one test, unmounted on drop (lazily, so a server
/// still holding a file there cannot keep it mounted).
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs `mount -t tmpfs` (root, as in CI) to build a small filesystem: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// `mount -o remount,<options>`, e.g. `ro` or `rw`.
    pub fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount,{options} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Opens a SQLite file for checks.
pub fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// Adds `rows` random 4000-byte blobs to the source (in one transaction).
pub fn grow_source(data: &DataDir, rows: u32) {
    open(&data.source())
        .execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS blobs (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO blobs SELECT randomblob(4000) FROM n;"
        ))
        .expect("grow the source");
}

/// Lowercase hex SHA-256 of `bytes`, as the service records it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Asserts that `bytes` are backup `b`'s: its size, and each digest it
/// carries (a repository's backup has `blake3`, a full copy `sha256`, one
/// moved between them both).
pub fn assert_backup_bytes(b: &proto::Backup, bytes: &[u8]) {
    assert_eq!(bytes.len() as i64, b.size_bytes, "{}: size", b.filename);
    assert_digests(&b.filename, &b.blake3, &b.sha256, bytes);
}

/// Asserts that `bytes` match each digest given (hex; empty where backup
/// `name` does not carry it), and that one is given at least.
pub fn assert_digests(name: &str, blake3: &str, sha256: &str, bytes: &[u8]) {
    assert!(
        !(blake3.is_empty() && sha256.is_empty()),
        "{name} has no digest"
    );
    if !blake3.is_empty() {
        assert_eq!(blake3, blake3::hash(bytes).to_hex().as_str(), "{name}");
    }
    if !sha256.is_empty() {
        assert_eq!(sha256, sha256_hex(bytes), "{name}");
    }
}

/// Asserts that the audit log holds an `event_type` event that succeeded
/// (or failed, `succeeded` false) with details naming `trigger`.
pub fn assert_audited(data: &DataDir, event_type: &str, succeeded: bool, trigger: &str) {
    let events = audit_events(data, event_type);
    assert!(
        events
            .iter()
            .any(|(_, ok, details)| *ok == succeeded && details["trigger"] == trigger),
        "no {event_type} with success {succeeded} by {trigger}: {events:?}"
    );
}

/// Why a retention summary keeps backup `filename`; `None` when it does
/// not keep it.
pub fn kept_reason(summary: &proto::RetentionSummary, filename: &str) -> Option<proto::KeepReason> {
    let kept = summary
        .kept_backups
        .iter()
        .find(|k| k.filename == filename)?;
    Some(proto::KeepReason::try_from(kept.reason).expect("a known reason"))
}

/// Output of one JSON value per line (`repo list`), parsed.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// `PRAGMA integrity_check` is "ok".
pub fn integrity_ok(path: &Path) -> bool {
    let conn = open(path);
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    result == "ok"
}

/// Every row of `orders` as (id, customer_id, amount_cents), by id.
pub fn orders(path: &Path) -> Vec<(i64, i64, i64)> {
    let conn = open(path);
    let mut stmt = conn
        .prepare("SELECT id, customer_id, amount_cents FROM orders ORDER BY id")
        .expect("select orders");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query orders")
        .collect::<Result<_, _>>()
        .expect("read orders")
}

/// A port that refuses connections for as long as the socket lives: bound
/// but not listening, so no other test's server can be given it meanwhile.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind an ephemeral port");
    let port = socket.local_addr().expect("its address").port();
    (socket, port)
}

/// A port free at the moment of asking, for a server that must bind it
/// itself. Another process may take it first: callers retry.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Whether grpcurl's stderr says its `-max-time` deadline ended the call.
/// Whichever timer fires first answers: grpcurl's own (DeadlineExceeded)
/// or, on a loaded machine, the server's, which tonic reports as
/// Cancelled "Timeout expired".
pub fn deadline_passed(grpcurl_stderr: &str) -> bool {
    grpcurl_stderr.contains("DeadlineExceeded") || grpcurl_stderr.contains("Timeout expired")
}

/// `backupctl` aimed at `url` with `token`, both through the environment
/// as a user would set them.
pub fn backupctl_command(url: &str, token: &str) -> Command {
    let mut cmd = Command::new(bin("backupctl"));
    cmd.env("BACKUP_URL", url)
        .env("BACKUP_TOKEN", token)
        .env_remove("BACKUP_CA_FILE");
    cmd
}

/// Runs `backupctl args` to the end.
pub fn backupctl(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    backupctl_command(url, token)
        .args(args)
        .output()
        .expect("run backupctl")
}

/// The gRPC code of a failed call.
pub fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a status: {e}")),
    }
}

/// Names of the backups `backups` may see, in ListBackups order.
pub async fn listed(backups: &mut backup_client::Backups) -> Vec<String> {
    backups
        .list_all()
        .await
        .expect("list backups")
        .into_iter()
        .map(|b| b.filename)
        .collect()
}

/// The bytes of every file under `dir`, in every directory below it.
pub fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    // Entries vanish while a server writes: what is gone counts nothing.
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => total += bytes_under(&entry.path()),
            Ok(meta) => total += meta.len(),
            Err(_) => {}
        }
    }
    total
}

/// The default repository's directory in the backups directory.
pub const REPOSITORY_DIR: &str = "repository";

/// Names of the files in a directory, sorted, except the backups
/// directory's lock files (`.lock`, and `.prune-lock` beside a repository),
/// always there.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".lock" && name != ".prune-lock")
        .collect();
    names.sort();
    names
}

/// Opens `state.db`, the SQLite state store of a data directory, for tests
/// of SQLite itself (its locks, its files). Tests of what the service keeps
/// use [`DataDir::state_db`], which works on either engine.
pub fn state_store(data: &DataDir) -> Connection {
    assert_eq!(
        data.engine(),
        Engine::Sqlite,
        "state_store opens state.db, which a data directory on PostgreSQL does not have: \
         use DataDir::state_db, or name the test sqlite_only"
    );
    open(&data.path().join("state.db"))
}

/// Creates non-admin users `ids` in the state store in one statement, as
/// `token create` does but without minting tokens: for tests and benches
/// that need many users at once. The store must exist (a server started on
/// it, or a token minted). Existing users stay as they are.
pub fn create_users(data: &DataDir, ids: impl IntoIterator<Item = i64>) {
    let rows: Vec<String> = ids
        .into_iter()
        .map(|id| format!("({id}, FALSE, $1)"))
        .collect();
    if rows.is_empty() {
        return;
    }
    data.state_db().execute(
        &format!(
            "INSERT INTO users (id, is_admin, created_at) VALUES {} ON CONFLICT DO NOTHING",
            rows.join(", ")
        ),
        &[&chrono::Utc::now()],
    );
}

/// SQLite's text form of a timestamp in the state store (as SeaORM writes
/// it), for code writing to `state.db` directly.
pub fn db_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Audit events of one type as (user_id, success, details), oldest first.
pub fn audit_events(data: &DataDir, event_type: &str) -> Vec<(i64, bool, serde_json::Value)> {
    data.state_db()
        .query(
            "SELECT user_id, success, details FROM audit_events WHERE event_type = $1 ORDER BY id",
            &[&event_type],
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A data directory's state store on either engine ([`DataDir::state_db`]).
///
/// SQL is written once for both, with PostgreSQL's `$1`, `$2` placeholders
/// (rewritten to SQLite's `?1`, `?2`). Parameters and results have the
/// types the service's columns hold, whatever each engine stores: a
/// timestamp is a `DateTime<Utc>` (SeaORM's RFC 3339 text in SQLite,
/// `timestamptz` in PostgreSQL), a boolean a `bool` (an integer in SQLite),
/// JSON a `serde_json::Value` (text in SQLite). Each call is a connection
/// of its own and one transaction; any error panics, naming the SQL.
pub struct StateDb(Target);

enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StateDb {
    /// Runs one statement; returns how many rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn SqlParam]) -> u64 {
        let params: Vec<SqlValue> = params.iter().map(|p| p.value()).collect();
        match &self.0 {
            Target::Sqlite(path) => {
                let changed = sqlite_state(path)
                    .execute(
                        &sqlite_placeholders(sql),
                        rusqlite::params_from_iter(&params),
                    )
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                changed as u64
            }
            Target::Postgres(url) => postgres::execute(url, sql, &params),
        }
    }

    /// The rows of one query.
    pub fn query(&self, sql: &str, params: &[&dyn SqlParam]) -> Vec<StateRow> {
        let params: Vec<SqlValue> = params.iter().map(|p| p.value()).collect();
        match &self.0 {
            Target::Sqlite(path) => {
                let conn = sqlite_state(path);
                let mut stmt = conn
                    .prepare(&sqlite_placeholders(sql))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let columns = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(&params), |r| {
                        (0..columns).map(|i| sqlite_cell(r.get_ref(i)?)).collect()
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
                rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .into_iter()
                    .map(StateRow)
                    .collect()
            }
            Target::Postgres(url) => postgres::query(url, sql, &params)
                .into_iter()
                .map(StateRow)
                .collect(),
        }
    }

    /// The one row of a query; panics if there are none or several.
    pub fn query_one(&self, sql: &str, params: &[&dyn SqlParam]) -> StateRow {
        let mut rows = self.query(sql, params);
        assert_eq!(rows.len(), 1, "{sql}: not exactly one row");
        rows.remove(0)
    }
}

/// The existing `state.db` at `path`, opened to read and write (never
/// created: a missing store is the test's mistake).
fn sqlite_state(path: &Path) -> Connection {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| {
        panic!(
            "open the state store {}: {e} (a server started on the data directory, or a token \
             minted, creates it)",
            path.display()
        )
    });
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// PostgreSQL's `$n` placeholders as SQLite's `?n`, outside quoted text.
fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// One SQLite result cell; blobs are not among the state store's columns.
fn sqlite_cell(cell: rusqlite::types::ValueRef<'_>) -> rusqlite::Result<SqlValue> {
    use rusqlite::types::ValueRef;
    Ok(match cell {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(n) => SqlValue::Int(n),
        ValueRef::Real(x) => SqlValue::Real(x),
        ValueRef::Text(_) => SqlValue::Text(cell.as_str()?.to_owned()),
        ValueRef::Blob(_) => panic!("a blob in the state store: StateDb reads no blobs"),
    })
}

/// A parameter or result cell of a [`StateDb`] statement, as the service's
/// columns hold it (each engine's storage is converted to and from this).
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    Text(String),
    Time(chrono::DateTime<chrono::Utc>),
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as Sqlite, ValueRef};
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Owned(Sqlite::Null),
            SqlValue::Int(n) => ToSqlOutput::Owned(Sqlite::Integer(*n)),
            SqlValue::Real(x) => ToSqlOutput::Owned(Sqlite::Real(*x)),
            SqlValue::Bool(b) => ToSqlOutput::Owned(Sqlite::Integer(i64::from(*b))),
            SqlValue::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            SqlValue::Time(at) => ToSqlOutput::Owned(Sqlite::Text(db_time(*at))),
        })
    }
}

/// What a [`StateDb`] statement takes as a parameter.
pub trait SqlParam: Sync {
    fn value(&self) -> SqlValue;
}

impl SqlParam for SqlValue {
    fn value(&self) -> SqlValue {
        self.clone()
    }
}

impl SqlParam for i64 {
    fn value(&self) -> SqlValue {
        SqlValue::Int(*self)
    }
}

impl SqlParam for bool {
    fn value(&self) -> SqlValue {
        SqlValue::Bool(*self)
    }
}

impl SqlParam for &str {
    fn value(&self) -> SqlValue {
        SqlValue::Text((*self).to_owned())
    }
}

impl SqlParam for String {
    fn value(&self) -> SqlValue {
        SqlValue::Text(self.clone())
    }
}

impl SqlParam for chrono::DateTime<chrono::Utc> {
    fn value(&self) -> SqlValue {
        SqlValue::Time(*self)
    }
}

impl<T: SqlParam> SqlParam for Option<T> {
    fn value(&self) -> SqlValue {
        self.as_ref().map_or(SqlValue::Null, SqlParam::value)
    }
}

/// A result row of a [`StateDb`] query.
#[derive(Debug)]
pub struct StateRow(Vec<SqlValue>);

impl StateRow {
    /// Column `i` as a `T`; panics if it holds something else.
    pub fn get<T: FromSqlValue>(&self, i: usize) -> T {
        let cell = &self.0[i];
        T::from_value(cell).unwrap_or_else(|| {
            panic!(
                "column {i} holds {cell:?}, not a {}",
                std::any::type_name::<T>()
            )
        })
    }
}

/// What a [`StateRow`] cell can be read as.
pub trait FromSqlValue: Sized {
    fn from_value(value: &SqlValue) -> Option<Self>;
}

impl FromSqlValue for i64 {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl FromSqlValue for f64 {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Real(x) => Some(*x),
            SqlValue::Int(n) => Some(*n as f64),
            _ => None,
        }
    }
}

impl FromSqlValue for bool {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Bool(b) => Some(*b),
            SqlValue::Int(0) => Some(false),
            SqlValue::Int(1) => Some(true),
            _ => None,
        }
    }
}

impl FromSqlValue for String {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromSqlValue for serde_json::Value {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Text(s) => serde_json::from_str(s).ok(),
            _ => None,
        }
    }
}

impl FromSqlValue for chrono::DateTime<chrono::Utc> {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Time(at) => Some(*at),
            SqlValue::Text(s) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|at| at.to_utc()),
            _ => None,
        }
    }
}

impl<T: FromSqlValue> FromSqlValue for Option<T> {
    fn from_value(value: &SqlValue) -> Option<Self> {
        match value {
            SqlValue::Null => Some(None),
            _ => T::from_value(value).map(Some),
        }
    }
}

/// Polls the health of `service` until it reports `status`, for at most 40 s.
pub async fn await_health(
    client: &Client,
    service: &str,
    status: backup_client::proto_health::health_check_response::ServingStatus,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while client.health(service).await.unwrap() != status {
        assert!(
            std::time::Instant::now() < deadline,
            "health of {service:?} never turned {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` saying what was awaited.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process, SIGKILLed and reaped when dropped: a test that fails
/// never leaves it running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A separate process that appends to `ledger` in transactions of 10 rows
/// (WAL) until dropped.
pub fn start_wal_writer(source: &Path) -> Killed {
    let script = r#"
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
print("ready", flush=True)
while True:
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(10):
        conn.execute("INSERT INTO ledger (payload) VALUES (hex(randomblob(64)))")
    conn.execute("COMMIT")
"#;
    Killed(start_python(script, source))
}

/// Checks a backup taken while [`start_wal_writer`] wrote to its source:
/// a standalone file (rollback-journal format, header bytes 18 and 19 are
/// 1, although the source is in WAL mode) that passes `integrity_check`,
/// holds `blobs` rows in `blobs`, and only whole ledger transactions
/// without gaps. Returns how many ledger rows it holds.
pub fn consistent_ledger(path: &Path, blobs: i64) -> i64 {
    let name = path.display();
    let header = std::fs::read(path).expect("read the backup");
    assert_eq!(header[18..20], [1, 1], "{name} keeps the WAL format");
    assert!(integrity_ok(path), "{name} fails integrity_check");
    let (n, max, found): (i64, i64, i64) = open(path)
        .query_row(
            "SELECT count(*), coalesce(max(id), 0), (SELECT count(*) FROM blobs) FROM ledger",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("read the ledger");
    assert_eq!(n, max, "{name}: ids have a gap");
    assert_eq!(n % 10, 0, "{name}: a transaction was torn");
    assert_eq!(found, blobs, "{name}: blobs");
    n
}

/// Runs a python3 script with `source` as its argument and waits for its
/// `ready` line.
pub fn start_python(script: &str, source: &Path) -> std::process::Child {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(source)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the writer process");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// CPU time (utime + stime, every thread) a process has used so far, in
/// clock ticks: fields 14 and 15 of /proc/PROCESS/stat, where `process` is a
/// pid or `"self"`.
pub fn cpu_ticks(process: impl std::fmt::Display) -> u64 {
    let path = format!("/proc/{process}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // Fields after the parenthesised command name start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("a tick count") };
    field(14) + field(15)
}

/// [`cpu_ticks`] in seconds.
pub fn cpu_seconds(process: impl std::fmt::Display) -> f64 {
    cpu_ticks(process) as f64 / clock_ticks()
}

/// The middle sample (the upper one of an even count); sorts `samples`.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`).
pub fn clock_ticks() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf CLK_TCK");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("getconf CLK_TCK prints a number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_sqlites_outside_quoted_text() {
        assert_eq!(
            sqlite_placeholders("SELECT '$1', \"$2\" FROM t WHERE a = $1 AND b = $12 AND c = '$'"),
            "SELECT '$1', \"$2\" FROM t WHERE a = ?1 AND b = ?12 AND c = '$'"
        );
    }

    /// What the state store's columns hold reads back as written, on
    /// each engine's storage of it.
    #[test]
    fn a_state_db_reads_back_what_it_writes_on_both_engines() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = dir.path().join("state.db");
        Connection::open(&sqlite).unwrap();
        let schema = [
            (
                StateDb(Target::Sqlite(sqlite)),
                "CREATE TABLE t (n BIGINT, b BOOLEAN, s VARCHAR, j JSON, at TEXT)",
            ),
            (
                StateDb(Target::Postgres(postgres::new_database())),
                "CREATE TABLE t (n BIGINT, b BOOLEAN, s VARCHAR, j JSON, at TIMESTAMPTZ)",
            ),
        ];
        // Microseconds: PostgreSQL keeps no finer.
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap();
        for (db, create) in schema {
            db.execute(create, &[]);
            let written = db.execute(
                "INSERT INTO t VALUES ($1, $2, $3, $4, $5), ($1, $2, NULL, $4, NULL)",
                &[&7_i64, &true, &"it's", &r#"{"k":[1]}"#, &at],
            );
            assert_eq!(written, 2);
            let rows = db.query("SELECT n, b, s, j, at FROM t WHERE n = $1", &[&7_i64]);
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].get::<i64>(0), 7);
            assert!(rows[0].get::<bool>(1));
            assert_eq!(rows[0].get::<String>(2), "it's");
            assert_eq!(
                rows[0].get::<serde_json::Value>(3),
                serde_json::json!({"k": [1]})
            );
            assert_eq!(rows[0].get::<chrono::DateTime<chrono::Utc>>(4), at);
            assert_eq!(rows[1].get::<Option<String>>(2), None);
            let count: i64 = db.query_one("SELECT count(*) FROM t", &[]).get(0);
            assert_eq!(count, 2);
        }
    }
}
