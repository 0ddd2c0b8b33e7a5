//! Benchmark for issue 14 (several replicas on one PostgreSQL state store):
//! due-claim throughput with three replicas, GetBackupSettings on
//! PostgreSQL next to SQLite, and the scheduler's takeover after its lease
//! holder is SIGKILLed. Every server is a real release `backup-server`
//! process started through the harness, with full copies
//! (`BACKUP_FULL_COPIES=true`, as the harness sets) unless said otherwise.
//!
//! Run with `cargo build --release -p backup-server -p backup-client`, then,
//! with a PostgreSQL cluster named in `BACKUP_TEST_POSTGRES` and its
//! programs (`createdb`) on the PATH (tests/run.sh starts one),
//! `cargo bench -p backup-tests --bench replicas`.
//!
//! - (due) three replicas on one data directory and one fresh PostgreSQL
//!   database; N users' settings, written straight into PostgreSQL, all
//!   due at one instant a little ahead. Whichever replica holds the lease
//!   claims and backs everyone up (one shared snapshot per pass). Measured
//!   from the `backup_scheduler.backup_completed` audit events: lateness
//!   (`lateness_ms`, when the backup's snapshot was taken after its slot),
//!   when each backup was recorded, and that every user has exactly one
//!   automatic backup; beside them, the CPU of the replicas and of the
//!   database's PostgreSQL backends, its commits and table activity per
//!   backup, and what its connections were doing (sampled every 200 ms).
//! - (settings) GetBackupSettings from one load client (one HTTP/2
//!   connection, a fixed number of calls in flight, fixed windows) against
//!   a server on SQLite and one on PostgreSQL, interleaved in the same run.
//! - (takeover) two replicas with a short lease; the holder is SIGKILLed
//!   and the survivor polled every 50 ms until it says it holds the lease;
//!   the killed one is restarted, and again. Kills are spread over the
//!   holder's renewal period and restarts over the check interval, so the
//!   lease has more or less left and the standby looks sooner or later.
//!
//! Environment overrides (for a quick run):
//! - `REPLICA_BENCH_PARTS` any of `due,settings,takeover` (default all)
//! - `REPLICA_BENCH_USERS` users due at the same instant (default 10000)
//! - `REPLICA_BENCH_COPIES` `--max-concurrent-copies` of each replica in
//!   (due), one run per value (default `2,8`)
//! - `REPLICA_BENCH_LEAD_SECONDS` from writing the settings to their slot
//!   (default 15)
//! - `REPLICA_BENCH_FULL_COPIES` 0 for the default storage (a repository)
//!   in (due) (default 1)
//! - `REPLICA_BENCH_SECONDS`, `REPLICA_BENCH_WARMUP_SECONDS`,
//!   `REPLICA_BENCH_RUNS`, `REPLICA_BENCH_IN_FLIGHT` the (settings) window
//!   (default 5 s), warm-up (1 s), windows per engine (3, the median is
//!   reported) and calls in flight (64)
//! - `REPLICA_BENCH_ROUNDS`, `REPLICA_BENCH_LEASE_TTL` kills in (takeover)
//!   (default 5) and `--lease-ttl` (default 5 s; `--check-interval 1`)
//!
//! Targets (issue 14): (due) every user backed up once, p99 lateness
//! <= 2 s; (settings) PostgreSQL >= 0.5x SQLite's req/s; (takeover) <= the
//! lease TTL + 1 s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_client::SettingsUpdate;
use backup_tests::bench::knob;
use backup_tests::proto as pb;
use backup_tests::{Client, DataDir, Server, clock_ticks, cpu_seconds, cpu_ticks};
use chrono::{DateTime, SubsecRound, Utc};

const COMPLETED: &str = "backup_scheduler.backup_completed";
const FAILED: &str = "backup_scheduler.backup_error";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let parts =
        std::env::var("REPLICA_BENCH_PARTS").unwrap_or_else(|_| "due,settings,takeover".to_owned());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    for part in &parts {
        assert!(
            ["due", "settings", "takeover"].contains(part),
            "REPLICA_BENCH_PARTS: unknown part {part:?} (due, settings, takeover)"
        );
    }
    let load_start = load_average();
    let mut report = Vec::new();
    if parts.contains(&"due") {
        let users = knob("REPLICA_BENCH_USERS", 10_000) as i64;
        let copies = std::env::var("REPLICA_BENCH_COPIES").unwrap_or_else(|_| "2,8".into());
        let mut results = Vec::new();
        for c in copies.split(',') {
            let c: u32 = c
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("REPLICA_BENCH_COPIES={copies:?}: numbers"));
            results.push(due(users, c).await);
        }
        report.push(due_table(&results));
    }
    if parts.contains(&"settings") {
        report.push(settings_table(settings().await));
    }
    if parts.contains(&"takeover") {
        report.push(takeover_table(&takeover().await));
    }
    println!();
    println!(
        "## replicas: {} ({} cores; the machine is shared), 1-min load average {load_start} at \
         start, {} at the end; PostgreSQL {} (fsync={}, synchronous_commit={})",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        pg_setting("server_version"),
        pg_setting("fsync"),
        pg_setting("synchronous_commit"),
    );
    println!();
    for section in report {
        println!("{section}");
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL from the bench.

/// The cluster's URL (its `postgres` database).
/// [`postgres::with_client`], panicking with the error.
fn pg<T: Send>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send,
) -> T {
    backup_tests::postgres::with_client(url, f)
        .unwrap_or_else(|e| panic!("PostgreSQL ({url}): {e}"))
}

fn pg_setting(name: &str) -> String {
    let sql = format!("SHOW {name}");
    pg(&backup_tests::postgres::cluster_url(), |c| {
        c.query_one(&sql, &[])?.try_get::<_, String>(0)
    })
}

/// The database name at the end of a URL.
fn database_name(url: &str) -> &str {
    url.rsplit_once('/').map_or(url, |(_, name)| name)
}

/// The server processes (backends) of PostgreSQL serving database `name`,
/// found by their process titles (`postgres: USER DB HOST(PORT) STATE`).
fn pg_backends(name: &str) -> Vec<u32> {
    let needle = format!(" {name} ");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.starts_with("postgres: ") && cmd.contains(&needle)
            })
        })
        .collect()
}

/// CPU ticks of each of `pids` still running.
fn ticks_of(pids: &[u32]) -> BTreeMap<u32, u64> {
    pids.iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}/stat")).exists())
        .map(|&pid| (pid, cpu_ticks(pid)))
        .collect()
}

/// CPU seconds the backends of database `name` used between `before` and
/// now (a backend started since counts whole; one that ended is lost).
fn backend_cpu_since(name: &str, before: &BTreeMap<u32, u64>) -> f64 {
    let now = ticks_of(&pg_backends(name));
    let ticks: u64 = now
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0).min(*t))
        .sum();
    ticks as f64 / clock_ticks()
}

/// `backup-server token create` on the state store at `database_url`.
fn token(data: &DataDir, database_url: Option<&str>, user_id: i64, admin: bool) -> String {
    let Some(url) = database_url else {
        return data.token(user_id, admin);
    };
    let mut cmd = data.command();
    cmd.env("DATABASE_URL", url)
        .args(["token", "create", "--user-id", &user_id.to_string()]);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().expect("run token create");
    assert!(out.status.success(), "token create: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 token")
        .trim()
        .to_owned()
}

/// Starts a server off the runtime's threads (the harness blocks until
/// its ready line).
async fn start(data: &Arc<DataDir>, flags: Vec<String>, env: Vec<(String, String)>) -> Server {
    let data = Arc::clone(data);
    tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        data.try_start_with(&flags, &env)
            .unwrap_or_else(|line| panic!("a server did not start: {line:?}"))
    })
    .await
    .expect("the start task")
}

fn strings(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|f| (*f).to_owned()).collect()
}

// ---------------------------------------------------------------------------
// (due) Three replicas, N users due at one instant.

struct Due {
    users: i64,
    copies: u32,
    full_copies: bool,
    /// `lateness_ms` of every backup_completed event, sorted.
    lateness_ms: Vec<i64>,
    /// Each backup_completed event's timestamp minus the slot, sorted.
    recorded_ms: Vec<i64>,
    /// Shared snapshots (distinct `started_at`), i.e. passes that backed
    /// someone up.
    passes: usize,
    errors: usize,
    /// Automatic backups per owner: owners with none, with more than one,
    /// and owners that are not among the users.
    missing: usize,
    twice: usize,
    strangers: usize,
    /// Users with other than one backup_completed event.
    events_not_once: usize,
    /// Runs per (instance, epoch) that claimed them.
    runs_by_instance: Vec<(String, i64, i64)>,
    /// From the slot to the last claim (scheduled_runs.started_at).
    last_claim: Duration,
    /// From the slot to the last backup_completed event.
    drain: Duration,
    /// CPU seconds of each replica (whole life) and of the database's
    /// PostgreSQL backends (those alive at the end, whole life).
    replica_cpu: Vec<f64>,
    pg_cpu: f64,
    /// Transactions committed in the database from the slot to the end.
    commits: i64,
    /// Per table: (name, sequential scans, index scans, rows inserted,
    /// updated, deleted) from the slot to the end, by PostgreSQL's
    /// statistics (read after the replicas exit, which flushes them).
    tables: Vec<(String, i64, i64, i64, i64, i64)>,
    /// The database's backends by state (and wait event), on average over
    /// samples every 200 ms while the backups ran, most first.
    backends: Vec<(String, f64)>,
}

async fn due(users: i64, copies: u32) -> Due {
    let full_copies = knob("REPLICA_BENCH_FULL_COPIES", 1) != 0;
    let lead = knob("REPLICA_BENCH_LEAD_SECONDS", 15) as i64;
    let data = Arc::new(DataDir::new());
    let url = backup_tests::postgres::new_database();
    let db = database_name(&url).to_owned();
    let env = vec![
        ("DATABASE_URL".to_owned(), url.clone()),
        ("BACKUP_FULL_COPIES".to_owned(), full_copies.to_string()),
    ];
    // The first command on the database migrates it (and makes user 1,
    // the admin, whose token is not needed).
    token(&data, Some(&url), 1, true);

    // Everyone due at the same whole second, `lead` seconds from now.
    let slot = (Utc::now() + chrono::Duration::seconds(lead)).trunc_subsecs(0);
    let backup_time = slot.format("%H:%M").to_string();
    let t = Instant::now();
    let created = pg(&url, |c| {
        let mut txn = c.transaction()?;
        txn.execute(
            "INSERT INTO users (id, is_admin, created_at) \
             SELECT g, false, now() FROM generate_series(2::bigint, $1::bigint + 1) AS g \
             ON CONFLICT (id) DO NOTHING",
            &[&users],
        )?;
        let n = txn.execute(
            "INSERT INTO backup_settings (user_id, enabled, frequency, backup_time, keep_count, \
                 last_backup_at, next_backup_at, created_at, updated_at, timezone, anchor_date) \
             SELECT g, true, 'daily', $2, 7, NULL, $3, now(), now(), 'UTC', current_date \
             FROM generate_series(2::bigint, $1::bigint + 1) AS g",
            &[&users, &backup_time, &slot],
        )?;
        txn.commit()?;
        Ok(n)
    });
    assert_eq!(created as i64, users, "settings rows written");
    println!(
        "(due) copies={copies}: {users} users and settings written to PostgreSQL in {:.2} s; \
         slot {slot}",
        t.elapsed().as_secs_f64()
    );

    let flags = strings(&["--max-concurrent-copies", &copies.to_string()]);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start(&data, flags.clone(), env.clone()).await);
    }
    assert!(
        Utc::now() < slot,
        "the replicas started after the slot {slot}: raise REPLICA_BENCH_LEAD_SECONDS"
    );
    println!(
        "(due) copies={copies}: 3 replicas up, {:.1} s before the slot",
        (slot - Utc::now()).num_milliseconds() as f64 / 1000.0
    );
    let commits_sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    let commits_at = |url: &str| pg(url, |c| c.query_one(commits_sql, &[])?.try_get::<_, i64>(0));
    while Utc::now() < slot {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let commits_from = commits_at(&url);
    let tables_from = table_activity(&url);

    // Until every user's backup is done (or failed), for at most 15 min.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut reported = Instant::now();
    // Backends by state and wait event, summed over the samples taken
    // while the backups ran.
    let mut backends: BTreeMap<String, i64> = BTreeMap::new();
    let mut samples = 0_i64;
    loop {
        let (done, activity) = pg(&url, |c| {
            let done: i64 = c
                .query_one(
                    "SELECT count(*) FROM audit_events WHERE event_type IN ($1, $2)",
                    &[&COMPLETED, &FAILED],
                )?
                .try_get(0)?;
            // What the replicas' connections are doing at this instant.
            let activity: Vec<(String, i64)> = c
                .query(
                    "SELECT coalesce(state, '?') || coalesce(' (' || wait_event_type || ': ' \
                         || wait_event || ')', ''), count(*) \
                     FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     GROUP BY 1",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            Ok((done, activity))
        });
        if done > 0 && done < users {
            samples += 1;
            for (what, n) in activity {
                *backends.entry(what).or_default() += n;
            }
        }
        if done >= users {
            break;
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = Instant::now();
            println!(
                "(due) copies={copies}: {done} of {users} done {:.0} s after the slot",
                (Utc::now() - slot).num_milliseconds() as f64 / 1000.0
            );
        }
        assert!(
            Instant::now() < deadline,
            "copies={copies}: only {done} of {users} scheduled backups finished 15 minutes \
             after the slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let commits = commits_at(&url) - commits_from;
    let replica_cpu: Vec<f64> = replicas.iter().map(|r| cpu_seconds(r.child.id())).collect();
    let pg_cpu = backend_cpu_since(&db, &BTreeMap::new());

    // What the replicas did, from the state store.
    let (events, errors, backups, runs) = pg(&url, |c| {
        let events = c.query(
            "SELECT user_id, details::text, \"timestamp\" FROM audit_events \
             WHERE event_type = $1 ORDER BY id",
            &[&COMPLETED],
        )?;
        let events: Vec<(i64, serde_json::Value, DateTime<Utc>)> = events
            .iter()
            .map(|r| {
                let details: String = r.get(1);
                (
                    r.get(0),
                    serde_json::from_str(&details).expect("details are JSON"),
                    r.get(2),
                )
            })
            .collect();
        let errors: Vec<(i64, String, String)> = c
            .query(
                "SELECT user_id, details::text, error_message FROM audit_events \
                 WHERE event_type = $1 ORDER BY id",
                &[&FAILED],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let backups: Vec<(i64, i64)> = c
            .query(
                "SELECT owner_user_id, count(*) FROM backups WHERE kind = 'auto' \
                 GROUP BY owner_user_id",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let runs: Vec<(String, i64, i64, Option<DateTime<Utc>>)> = c
            .query(
                "SELECT instance, epoch, count(*), max(started_at) FROM scheduled_runs \
                 GROUP BY instance, epoch ORDER BY min(started_at)",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        Ok((events, errors, backups, runs))
    });
    drop(replicas);
    // Their backends flush their statistics as they exit.
    let gone = Instant::now() + Duration::from_secs(10);
    while !pg_backends(&db).is_empty() && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tables_to = table_activity(&url);
    let tables = tables_to
        .into_iter()
        .map(|(name, now)| {
            let before = tables_from.get(&name).copied().unwrap_or_default();
            let d = |i: usize| now[i] - before[i];
            (name, d(0), d(1), d(2), d(3), d(4))
        })
        .filter(|t| t.1 + t.2 + t.3 + t.4 + t.5 > 0)
        .collect();

    for (user, details, message) in errors.iter().take(5) {
        println!("(due) a failed backup: user {user}: {message} {details}");
    }
    let ms_after_slot = |at: DateTime<Utc>| (at - slot).num_milliseconds();
    let mut lateness_ms: Vec<i64> = events
        .iter()
        .map(|(user, details, _)| {
            details["lateness_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("user {user}: no lateness_ms in {details}"))
        })
        .collect();
    lateness_ms.sort_unstable();
    let mut recorded_ms: Vec<i64> = events.iter().map(|(_, _, at)| ms_after_slot(*at)).collect();
    recorded_ms.sort_unstable();
    let passes = events
        .iter()
        .map(|(_, details, _)| details["started_at"].to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let mut per_user: BTreeMap<i64, usize> = BTreeMap::new();
    for (user, details, _) in &events {
        assert_eq!(
            details["scheduled_for"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|at| at.to_utc()),
            Some(slot),
            "user {user}: scheduled_for in {details}"
        );
        *per_user.entry(*user).or_default() += 1;
    }
    let users_range = 2..=users + 1;
    let events_not_once = users_range
        .clone()
        .filter(|u| per_user.get(u) != Some(&1))
        .count();
    let by_owner: BTreeMap<i64, i64> = backups.into_iter().collect();
    let missing = users_range
        .clone()
        .filter(|u| !by_owner.contains_key(u))
        .count();
    let twice = by_owner.values().filter(|n| **n > 1).count();
    let strangers = by_owner
        .keys()
        .filter(|u| !users_range.contains(*u))
        .count();
    let last_claim = runs
        .iter()
        .filter_map(|r| r.3)
        .max()
        .map_or(0, ms_after_slot);
    let drain = recorded_ms.last().copied().unwrap_or(0);
    let result = Due {
        users,
        copies,
        full_copies,
        passes,
        errors: errors.len(),
        missing,
        twice,
        strangers,
        events_not_once,
        runs_by_instance: runs.iter().map(|r| (r.0.clone(), r.1, r.2)).collect(),
        last_claim: Duration::from_millis(last_claim.max(0) as u64),
        drain: Duration::from_millis(drain.max(0) as u64),
        replica_cpu,
        pg_cpu,
        commits,
        tables,
        backends: {
            let mut b: Vec<(String, f64)> = backends
                .into_iter()
                .map(|(what, n)| (what, n as f64 / samples.max(1) as f64))
                .collect();
            b.sort_by(|x, y| y.1.total_cmp(&x.1));
            b
        },
        lateness_ms,
        recorded_ms,
    };
    println!(
        "(due) copies={copies}: {} completed, {} failed, p99 lateness {} ms, last recorded \
         {:.2} s after the slot",
        result.lateness_ms.len(),
        result.errors,
        percentile(&result.lateness_ms, 99.0),
        result.drain.as_secs_f64()
    );
    result
}

fn due_table(results: &[Due]) -> String {
    let mut out = String::new();
    for r in results {
        let l = &r.lateness_ms;
        let done = &r.recorded_ms;
        let once = r.missing == 0 && r.twice == 0 && r.strangers == 0 && r.events_not_once == 0;
        let p99 = percentile(l, 99.0);
        out += &format!(
            "## (due) {} users due at one instant, three replicas on one PostgreSQL database and \
             one data directory, --max-concurrent-copies {} each, {}\n\n\
             command: `REPLICA_BENCH_PARTS=due REPLICA_BENCH_USERS={} REPLICA_BENCH_COPIES={} \
             cargo bench -p backup-tests --bench replicas`\n\n\
             | measurement | value | target |\n|---|---|---|\n\
             | lateness (snapshot taken - slot), p50 / p99 / max | {} / {} / {} ms | p99 <= 2000 ms: {} |\n\
             | recorded (backup_completed event - slot), p50 / p99 / max | {:.2} / {:.2} / {:.2} s | |\n\
             | slot -> last claim / last backup_completed | {:.2} s / {:.2} s | |\n\
             | backups per second, slot -> last completed | {:.0} | |\n\
             | every user backed up exactly once | {} ({} completed events, {} failed; owners without an automatic backup {}, with more than one {}, unknown {}; users with other than one completed event {}) | all: {} |\n\
             | passes (shared snapshots) | {} | |\n\
             | runs by replica (instance, epoch: runs) | {} | |\n\
             | CPU: replicas (whole life) / PostgreSQL backends of the database | {} / {:.2} s | |\n\
             | transactions committed in the database, slot -> end | {} ({:.1} per backup) | |\n\n\
             PostgreSQL table activity per backup, slot -> end (sequential scans, index scans, \
             rows inserted, updated, deleted): {}\n\n\
             The database's connections while the backups ran (mean count by state and wait \
             event, sampled every 200 ms): {}\n\n",
            r.users,
            r.copies,
            if r.full_copies {
                "full copies (BACKUP_FULL_COPIES=true)"
            } else {
                "the default storage (a repository)"
            },
            r.users,
            r.copies,
            percentile(l, 50.0),
            p99,
            l.last().copied().unwrap_or(0),
            if p99 <= 2000 && !l.is_empty() {
                "met"
            } else {
                "MISSED"
            },
            percentile(done, 50.0) as f64 / 1000.0,
            percentile(done, 99.0) as f64 / 1000.0,
            done.last().copied().unwrap_or(0) as f64 / 1000.0,
            r.last_claim.as_secs_f64(),
            r.drain.as_secs_f64(),
            l.len() as f64 / r.drain.as_secs_f64().max(0.001),
            if once { "yes" } else { "NO" },
            l.len(),
            r.errors,
            r.missing,
            r.twice,
            r.strangers,
            r.events_not_once,
            if once { "met" } else { "MISSED" },
            r.passes,
            r.runs_by_instance
                .iter()
                .map(|(instance, epoch, n)| format!("{instance}, {epoch}: {n}"))
                .collect::<Vec<_>>()
                .join("; "),
            r.replica_cpu
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" + "),
            r.pg_cpu,
            r.commits,
            r.commits as f64 / (l.len().max(1)) as f64,
            r.tables
                .iter()
                .map(|(name, seq, idx, ins, upd, del)| {
                    let per = |n: &i64| *n as f64 / l.len().max(1) as f64;
                    format!(
                        "{name} {:.2}/{:.2}/{:.2}/{:.2}/{:.2}",
                        per(seq),
                        per(idx),
                        per(ins),
                        per(upd),
                        per(del)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            r.backends
                .iter()
                .map(|(what, n)| format!("{what} {n:.1}"))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    out
}

/// Per table of the database: sequential scans, index scans, rows
/// inserted, updated and deleted so far.
fn table_activity(url: &str) -> BTreeMap<String, [i64; 5]> {
    pg(url, |c| {
        let rows = c.query(
            "SELECT relname::text, seq_scan, coalesce(idx_scan, 0), n_tup_ins, n_tup_upd, \
             n_tup_del FROM pg_stat_user_tables",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)]))
            .collect())
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------------------
// (settings) GetBackupSettings on SQLite and on PostgreSQL.

/// One measurement window.
#[derive(Clone, Copy)]
struct Window {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// CPU the answering server process used per reply.
    server_cpu: Duration,
    /// CPU the database's PostgreSQL backends used per reply (PostgreSQL only).
    pg_cpu: Option<Duration>,
}

struct Engine {
    label: &'static str,
    data: Arc<DataDir>,
    /// Its database's name, on PostgreSQL.
    database: Option<String>,
    server: Server,
    client: Client,
    windows: Vec<Window>,
}

/// A server with `--no-scheduler --verify-interval 0` (nothing but the
/// benchmark's calls runs in it) on SQLite or on a fresh PostgreSQL
/// database, and a client of its user 1 with settings.
async fn engine(label: &'static str, on_postgres: bool) -> Engine {
    let data = Arc::new(DataDir::new());
    let url = on_postgres.then(backup_tests::postgres::new_database);
    let env: Vec<(String, String)> = url
        .iter()
        .map(|u| ("DATABASE_URL".to_owned(), u.clone()))
        .collect();
    let token = token(&data, url.as_deref(), 1, false);
    let server = start(
        &data,
        strings(&["--no-scheduler", "--verify-interval", "0"]),
        env,
    )
    .await;
    // The engine is the one meant, whatever the calling environment says.
    assert_eq!(
        data.path().join("state.db").exists(),
        !on_postgres,
        "{label}: state.db in the data directory"
    );
    let client = server.client(&token).await;
    client
        .scheduler()
        .update_settings(
            0,
            SettingsUpdate {
                enabled: Some(false),
                keep_count: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect("create the user's settings");
    Engine {
        label,
        data,
        database: url.as_deref().map(|u| database_name(u).to_owned()),
        server,
        client,
        windows: Vec::new(),
    }
}

struct Load {
    in_flight: usize,
    warmup: Duration,
    window: Duration,
}

impl Load {
    /// `in_flight` loops sharing `engine`'s client connection call
    /// GetBackupSettings until the window ends; the replies that arrive in
    /// the window (after the warm-up) are counted.
    async fn measure(&self, engine: &Engine) -> Window {
        let from = Instant::now() + self.warmup;
        let until = from + self.window;
        let loops: Vec<_> = (0..self.in_flight)
            .map(|_| {
                let mut scheduler = engine.client.scheduler();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < until {
                        let sent = Instant::now();
                        scheduler
                            .raw()
                            .get_backup_settings(pb::GetBackupSettingsRequest { user_id: 0 })
                            .await
                            .unwrap_or_else(|e| panic!("GetBackupSettings failed: {e}"));
                        let done = Instant::now();
                        if done >= from && done <= until {
                            latencies.push(done - sent);
                        }
                    }
                    latencies
                })
            })
            .collect();
        let pid = engine.server.child.id();
        tokio::time::sleep_until(from.into()).await;
        let backends_from = engine
            .database
            .as_deref()
            .map(|db| ticks_of(&pg_backends(db)));
        let cpu_from = cpu_ticks(pid);
        tokio::time::sleep_until(until.into()).await;
        let cpu = (cpu_ticks(pid) - cpu_from) as f64 / clock_ticks();
        let pg_cpu = engine
            .database
            .as_deref()
            .zip(backends_from.as_ref())
            .map(|(db, from)| backend_cpu_since(db, from));
        let mut latencies = Vec::new();
        for l in loops {
            latencies.extend(l.await.expect("a load loop"));
        }
        assert!(!latencies.is_empty(), "no reply inside the window");
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        let replies = latencies.len() as f64;
        Window {
            per_sec: replies / self.window.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
            server_cpu: Duration::from_secs_f64(cpu / replies),
            pg_cpu: pg_cpu.map(|c| Duration::from_secs_f64(c / replies)),
        }
    }
}

struct Settings {
    load: Load,
    runs: usize,
    engines: Vec<Engine>,
}

async fn settings() -> Settings {
    let load = Load {
        in_flight: knob("REPLICA_BENCH_IN_FLIGHT", 64).max(1) as usize,
        warmup: Duration::from_secs(knob("REPLICA_BENCH_WARMUP_SECONDS", 1)),
        window: Duration::from_secs(knob("REPLICA_BENCH_SECONDS", 5).max(1)),
    };
    let runs = knob("REPLICA_BENCH_RUNS", 3).max(1) as usize;
    let mut engines = vec![
        engine("SQLite (state.db)", false).await,
        engine("PostgreSQL", true).await,
    ];
    // The runs interleave the engines, so a change in the machine's other
    // load spreads over both.
    for run in 0..runs {
        for engine in &mut engines {
            let w = load.measure(engine).await;
            println!(
                "(settings) run {run} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, server CPU \
                 {:.0} us/reply{}",
                engine.label,
                w.per_sec,
                ms(w.p50),
                ms(w.p99),
                us(w.server_cpu),
                w.pg_cpu
                    .map(|c| format!(", PostgreSQL backends {:.0} us/reply", us(c)))
                    .unwrap_or_default()
            );
            engine.windows.push(w);
        }
    }
    Settings {
        load,
        runs,
        engines,
    }
}

fn settings_table(s: Settings) -> String {
    let per_sec = |e: &Engine| median(e.windows.iter().map(|w| w.per_sec));
    let sqlite = per_sec(&s.engines[0]);
    let postgres = per_sec(&s.engines[1]);
    let ratio = postgres / sqlite;
    let mut out = format!(
        "## (settings) GetBackupSettings: one load client, one HTTP/2 connection, {} in flight, \
         {} s windows after {} s warm-up, median of {}, the engines interleaved; servers with \
         --no-scheduler --verify-interval 0\n\n\
         command: `REPLICA_BENCH_PARTS=settings cargo bench -p backup-tests --bench replicas`\n\n\
         | state store | req/s | all runs req/s | p50 (ms) | p99 (ms) | server CPU per reply (us) | PostgreSQL backends' CPU per reply (us) |\n\
         |---|---|---|---|---|---|---|\n",
        s.load.in_flight,
        s.load.window.as_secs(),
        s.load.warmup.as_secs(),
        s.runs
    );
    for e in &s.engines {
        out += &format!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {:.0} | {} |\n",
            e.label,
            per_sec(e),
            e.windows
                .iter()
                .map(|w| format!("{:.0}", w.per_sec))
                .collect::<Vec<_>>()
                .join(", "),
            median(e.windows.iter().map(|w| ms(w.p50))),
            median(e.windows.iter().map(|w| ms(w.p99))),
            median(e.windows.iter().map(|w| us(w.server_cpu))),
            if e.windows.iter().any(|w| w.pg_cpu.is_some()) {
                format!(
                    "{:.0}",
                    median(e.windows.iter().filter_map(|w| w.pg_cpu.map(us)))
                )
            } else {
                String::new()
            },
        );
    }
    out += &format!(
        "\nPostgreSQL / SQLite: **{ratio:.2}x** (target >= 0.5x: {})\n",
        if ratio >= 0.5 { "met" } else { "MISSED" }
    );
    for e in s.engines {
        drop(e.client);
        drop(e.server);
        drop(e.data);
    }
    out
}

// ---------------------------------------------------------------------------
// (takeover) SIGKILL the lease holder of two replicas.

struct Takeover {
    ttl: u64,
    /// Per kill: the lease's time left when the holder was killed (by the
    /// expiry it reported just before), and the kill -> the survivor
    /// reports holding the lease.
    rounds: Vec<(Duration, Duration)>,
    replica_flags: Vec<String>,
}

/// Whether `client`'s server says it holds the lease, and when the lease
/// it knows of expires; `None` if it does not answer within a second.
async fn lease(client: &Client) -> Option<(bool, Option<DateTime<Utc>>)> {
    let stats = tokio::time::timeout(Duration::from_secs(1), client.scheduler().stats())
        .await
        .ok()?
        .ok()?;
    let expires = stats
        .lease_expires_at
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32));
    Some((stats.holds_lease, expires))
}

async fn takeover() -> Takeover {
    let ttl = knob("REPLICA_BENCH_LEASE_TTL", 5).max(3);
    let rounds = knob("REPLICA_BENCH_ROUNDS", 5).max(1) as u32;
    let data = Arc::new(DataDir::new());
    let url = backup_tests::postgres::new_database();
    let env = vec![("DATABASE_URL".to_owned(), url.clone())];
    let admin = token(&data, Some(&url), 1, true);
    let replica_flags = strings(&["--lease-ttl", &ttl.to_string(), "--check-interval", "1"]);
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let server = start(&data, replica_flags.clone(), env.clone()).await;
        clients.push(server.client(&admin).await);
        servers.push(server);
    }
    let holder_of = |clients: &[Client]| {
        let clients = clients.to_vec();
        async move {
            let deadline = Instant::now() + Duration::from_secs(3 * ttl + 5);
            loop {
                for (i, c) in clients.iter().enumerate() {
                    if let Some((true, expires)) = lease(c).await {
                        return (i, expires);
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no replica held the lease for {} s",
                    3 * ttl + 5
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    holder_of(&clients).await;
    let mut measured = Vec::new();
    for round in 0..rounds {
        // Kills at different points of the holder's renewal period (a
        // third of the TTL), so the lease has more or less left.
        let period = Duration::from_millis(ttl * 1000 / 3);
        tokio::time::sleep(Duration::from_secs(1) + period * round / rounds).await;
        let (holder, expires) = holder_of(&clients).await;
        let survivor = 1 - holder;
        let killed_at = Utc::now();
        let t = Instant::now();
        servers[holder].kill();
        let taken = loop {
            if let Some((true, _)) = lease(&clients[survivor]).await {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(4 * ttl),
                "round {round}: the survivor did not take the lease within {} s",
                4 * ttl
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let left = expires
            .and_then(|e| (e - killed_at).to_std().ok())
            .unwrap_or_default();
        println!(
            "(takeover) round {round}: killed replica {holder} with {:.2} s of its lease left; \
             replica {survivor} held it {:.2} s later",
            left.as_secs_f64(),
            taken.as_secs_f64()
        );
        measured.push((left, taken));
        // The restarted replica is the next round's standby: restarts
        // spread over one check interval put its wake-ups at different
        // points of the holder's, which decides how soon after the lease
        // expires it looks.
        let spread = Duration::from_millis(1000 * u64::from(2 * round + 1) / u64::from(2 * rounds));
        tokio::time::sleep(spread).await;
        servers[holder] = start(&data, replica_flags.clone(), env.clone()).await;
        clients[holder] = servers[holder].client(&admin).await;
    }
    drop(clients);
    drop(servers);
    Takeover {
        ttl,
        rounds: measured,
        replica_flags,
    }
}

fn takeover_table(t: &Takeover) -> String {
    let target = Duration::from_secs(t.ttl + 1);
    let mut out = format!(
        "## (takeover) two replicas ({}), the lease holder SIGKILLed, the survivor polled every \
         50 ms with GetSchedulerStats until holds_lease\n\n\
         command: `REPLICA_BENCH_PARTS=takeover REPLICA_BENCH_LEASE_TTL={} REPLICA_BENCH_ROUNDS={} \
         cargo bench -p backup-tests --bench replicas`\n\n\
         | kill | lease left at the kill (s) | kill -> survivor holds the lease (s) | after the lease expired (s) | target <= {} s |\n\
         |---|---|---|---|---|\n",
        t.replica_flags.join(" "),
        t.ttl,
        t.rounds.len(),
        target.as_secs()
    );
    for (i, (left, taken)) in t.rounds.iter().enumerate() {
        out += &format!(
            "| {} | {:.2} | {:.2} | {:.2} | {} |\n",
            i + 1,
            left.as_secs_f64(),
            taken.as_secs_f64(),
            taken.as_secs_f64() - left.as_secs_f64(),
            if *taken <= target { "met" } else { "MISSED" }
        );
    }
    let taken: Vec<f64> = t.rounds.iter().map(|r| r.1.as_secs_f64()).collect();
    let max = taken.iter().copied().fold(0.0, f64::max);
    out += &format!(
        "\nmedian {:.2} s, max {max:.2} s (target <= {} s: {})\n",
        median(taken.iter().copied()),
        target.as_secs(),
        if max <= target.as_secs_f64() {
            "met"
        } else {
            "MISSED"
        }
    );
    out
}

// ---------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The middle value (the upper one of an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The 1-minute load average: the machine is shared, so say how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}
