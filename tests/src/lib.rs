//! Test harness: real `backup-server` processes on ephemeral ports, each
//! with its own data directory, driven through the client crate.
//!
//! The binaries come from the same cargo target directory as the test; the
//! test command builds them first (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// A data directory with a demo source database, shared by the server
/// processes a test starts on it.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

impl DataDir {
    pub fn new() -> Self {
        Self::with_rows(200)
    }

    /// A data directory whose demo source has `rows` orders.
    pub fn with_rows(rows: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = Self { dir };
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

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn source(&self) -> PathBuf {
        self.path().join("source.db")
    }

    pub fn backups_dir(&self) -> PathBuf {
        self.path().join("backups")
    }

    /// `backup-server --data-dir DIR` ready for a subcommand, keeping full
    /// copies: the tests written for them look into the backups directory.
    /// The repository's own tests (`tests/repository.rs`) set
    /// `BACKUP_FULL_COPIES=false` for the default storage.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("backup-server"));
        cmd.arg("--data-dir")
            .arg(self.path())
            .env("RUST_LOG", "warn")
            .env("BACKUP_FULL_COPIES", "true");
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

/// Names of the files in a directory, sorted, except the backups
/// directory's `.lock` (the cross-process lock file, always there).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".lock")
        .collect();
    names.sort();
    names
}

/// Opens the state store of a data directory (for checks and for setting up
/// situations such as missed runs, as an operator's tool would).
pub fn state_store(data: &DataDir) -> Connection {
    open(&data.path().join("state.db"))
}

/// Creates non-admin users `ids` in the state store in one transaction, as
/// `token create` does but without minting tokens: for tests and benches
/// that need many users at once. The store must exist (a server started on
/// it, or a token minted). Existing users stay as they are.
pub fn create_users(data: &DataDir, ids: impl IntoIterator<Item = i64>) {
    let mut conn = state_store(data);
    let txn = conn.transaction().expect("begin");
    let now = db_time(chrono::Utc::now());
    for id in ids {
        txn.execute(
            "INSERT OR IGNORE INTO users (id, is_admin, created_at) VALUES (?1, 0, ?2)",
            (id, &now),
        )
        .expect("insert a user");
    }
    txn.commit().expect("commit the users");
}

/// The state store's text form of a timestamp (as SeaORM writes it).
pub fn db_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Audit events of one type as (user_id, success, details).
pub fn audit_events(data: &DataDir, event_type: &str) -> Vec<(i64, bool, serde_json::Value)> {
    let conn = state_store(data);
    let mut stmt = conn
        .prepare(
            "SELECT user_id, success, details FROM audit_events WHERE event_type = ?1 ORDER BY id",
        )
        .expect("select audit events");
    stmt.query_map([event_type], |r| {
        let details: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            serde_json::from_str(&details).unwrap_or_default(),
        ))
    })
    .expect("query audit events")
    .collect::<Result<_, _>>()
    .expect("read audit events")
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
