//! Benchmark for issue 3 ("Speed"): the scheduler's lateness with many users
//! due at once, the cost of its due-query on a large settings table, and the
//! idle server's CPU and memory.
//!
//! Run with `cargo build --release --workspace --bins` then
//! `cargo bench -p backup-tests --bench scheduler`.
//!
//! Environment overrides (for a quick run):
//! - `BENCH_PARTS` which parts to run, any of `a,b,c` (default all)
//! - `BENCH_USERS` users due in the same instant for (a) (default 1000)
//! - `BENCH_COPIES` `--max-concurrent-copies` values for (a) (default `2,8`)
//! - `BENCH_SETTINGS_ROWS` settings rows for (b) (default 1000000)
//! - `BENCH_IDLE_SECS` idle window for (c) (default 60)
//!
//! Targets (issue 3): p99 lateness <= 1 s, due-query <= 5 ms, idle CPU
//! <= 0.05 s per minute.

use std::path::Path;
use std::time::{Duration, Instant};

use backup_client::SettingsUpdate;
use backup_tests::proto::Frequency;
use backup_tests::{DataDir, cpu_ticks, create_users, db_time, median, state_store};
use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::Connection;

/// The due-query as `settings::due` builds it through SeaORM (the shape
/// sea-query renders for SQLite: every entity column, bound parameters;
/// the server turns sqlx statement logging off, so it is not captured from
/// a live run): earliest first, at most `DUE_BATCH` (256) rows.
const DUE_SQL: &str = r#"SELECT "backup_settings"."id", "backup_settings"."user_id", "backup_settings"."enabled", "backup_settings"."frequency", "backup_settings"."backup_time", "backup_settings"."keep_count", "backup_settings"."last_backup_at", "backup_settings"."next_backup_at", "backup_settings"."created_at", "backup_settings"."updated_at", "backup_settings"."timezone", "backup_settings"."anchor_date" FROM "backup_settings" WHERE "backup_settings"."enabled" = ? AND "backup_settings"."next_backup_at" <= ? ORDER BY "backup_settings"."next_backup_at" ASC LIMIT ?"#;

/// `settings::next_due`: the earliest next run among enabled settings
/// (`.one()` adds LIMIT 1).
const NEXT_DUE_SQL: &str = r#"SELECT "backup_settings"."id", "backup_settings"."user_id", "backup_settings"."enabled", "backup_settings"."frequency", "backup_settings"."backup_time", "backup_settings"."keep_count", "backup_settings"."last_backup_at", "backup_settings"."next_backup_at", "backup_settings"."created_at", "backup_settings"."updated_at", "backup_settings"."timezone", "backup_settings"."anchor_date" FROM "backup_settings" WHERE "backup_settings"."enabled" = ? AND "backup_settings"."next_backup_at" IS NOT NULL ORDER BY "backup_settings"."next_backup_at" ASC LIMIT ?"#;

/// How many rows of the big table are due (and how many of the small one).
const DUE_ROWS: i64 = 5;
const QUERY_RUNS: usize = 100;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_num<T: std::str::FromStr>(name: &str, default: &str) -> T {
    let v = env_or(name, default);
    v.parse()
        .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
}

#[tokio::main]
async fn main() {
    let parts = env_or("BENCH_PARTS", "a,b,c");
    let mut report = Vec::new();
    if parts.contains('a') {
        let users: i64 = env_num("BENCH_USERS", "1000");
        let copies: Vec<u32> = env_or("BENCH_COPIES", "2,8")
            .split(',')
            .map(|c| c.trim().parse().expect("BENCH_COPIES: numbers"))
            .collect();
        report.push(lateness_table(users, &copies).await);
    }
    if parts.contains('b') {
        let rows: i64 = env_num("BENCH_SETTINGS_ROWS", "1000000");
        report.push(due_query_table(rows).await);
    }
    if parts.contains('c') {
        let secs: u64 = env_num("BENCH_IDLE_SECS", "60");
        report.push(idle_table(secs));
    }
    println!();
    println!(
        "1-min load average at the end: {} ({} cores; the machine is shared)\n",
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for section in report {
        println!("{section}");
    }
}

// ---------------------------------------------------------------------------
// (a) Lateness of due backups, many users due at the same instant.

struct Lateness {
    copies: u32,
    users: i64,
    /// `lateness_ms` of each backup_completed event (when its snapshot was
    /// taken, after its slot), sorted.
    lateness_ms: Vec<i64>,
    errors: usize,
    /// From the slot to the last backup_completed event.
    drain: Duration,
    /// CPU time of the server process from its start to the last event.
    server_cpu: f64,
}

async fn lateness_table(users: i64, copies: &[u32]) -> String {
    let mut results = Vec::new();
    for &c in copies {
        results.push(lateness(users, c).await);
    }
    let mut out = format!(
        "## (a) lateness (snapshot taken - slot): {users} users due at the same instant (demo source, 200 rows)\n\n\
         | --max-concurrent-copies | p50 (ms) | p99 (ms) | max (ms) | min (ms) | slot -> last completed (s) | backups/s | server CPU (s) | errors | target p99 <= 1000 ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in results {
        let l = &r.lateness_ms;
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {} | {} |\n",
            r.copies,
            percentile(l, 50.0),
            percentile(l, 99.0),
            l.last().copied().unwrap_or(0),
            l.first().copied().unwrap_or(0),
            r.drain.as_secs_f64(),
            r.users as f64 / r.drain.as_secs_f64(),
            r.server_cpu,
            r.errors,
            if percentile(l, 99.0) <= 1000 {
                "met"
            } else {
                "MISSED"
            },
        );
    }
    out
}

async fn lateness(users: i64, copies: u32) -> Lateness {
    let copies_flag = copies.to_string();
    let data = DataDir::new();

    // Settings for users 2..=users+1 through the API, scheduler off.
    let server = data.start(&["--no-scheduler", "--max-concurrent-copies", &copies_flag]);
    let admin = server.client(&data.token(1, true)).await;
    let mut scheduler = admin.scheduler();
    create_users(&data, 2..=users + 1);
    let t = Instant::now();
    for user in 2..=users + 1 {
        scheduler
            .update_settings(
                user,
                SettingsUpdate {
                    enabled: Some(true),
                    frequency: Some(Frequency::Daily),
                    backup_time: Some("03:00".into()),
                    keep_count: Some(7),
                    timezone: Some("UTC".into()),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("UpdateBackupSettings for user {user} failed: {e}"));
    }
    println!(
        "(a) copies={copies}: {users} settings created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(scheduler);
    drop(admin);
    let status = server.shutdown().await;
    assert!(
        status.success(),
        "the setup server did not exit cleanly on SIGTERM: {status}"
    );

    // Everyone due at the same whole second, ~15 s from now.
    let slot = (Utc::now() + chrono::Duration::seconds(15)).trunc_subsecs(0);
    let changed = state_store(&data)
        .execute(
            "UPDATE backup_settings SET next_backup_at = ?1",
            [db_time(slot)],
        )
        .expect("set next_backup_at");
    assert_eq!(changed as i64, users);

    let server = data.start(&["--max-concurrent-copies", &copies_flag]);
    let pid = server.child.id();
    let wait_until = Instant::now()
        + (slot - Utc::now()).to_std().unwrap_or_default()
        + Duration::from_secs(600);
    let conn = state_store(&data);
    let count = |event: &str| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM audit_events WHERE event_type = ?1",
            [event],
            |r| r.get(0),
        )
        .expect("count audit events")
    };
    loop {
        let done =
            count("backup_scheduler.backup_completed") + count("backup_scheduler.backup_error");
        if done >= users {
            break;
        }
        assert!(
            Instant::now() < wait_until,
            "copies={copies}: only {done} of {users} scheduled backups finished 10 minutes after the slot"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let last: String = conn
        .query_row(
            "SELECT max(timestamp) FROM audit_events WHERE event_type = 'backup_scheduler.backup_completed'",
            [],
            |r| r.get(0),
        )
        .expect("last completion time");
    let last = DateTime::parse_from_rfc3339(&last)
        .unwrap_or_else(|e| panic!("audit timestamp {last:?}: {e}"))
        .with_timezone(&Utc);
    let errors = count("backup_scheduler.backup_error") as usize;
    let server_cpu = backup_tests::cpu_seconds(pid);
    drop(conn);
    drop(server);

    let mut lateness_ms: Vec<i64> =
        backup_tests::audit_events(&data, "backup_scheduler.backup_completed")
            .into_iter()
            .map(|(user, _, details)| {
                details["lateness_ms"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("user {user}: no lateness_ms in {details}"))
            })
            .collect();
    lateness_ms.sort_unstable();
    println!(
        "(a) copies={copies}: {} completed, {errors} failed, p99 {} ms",
        lateness_ms.len(),
        percentile(&lateness_ms, 99.0)
    );
    Lateness {
        copies,
        users,
        lateness_ms,
        errors,
        drain: (last - slot).to_std().unwrap_or_default(),
        server_cpu,
    }
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
// (b) The due-query on a large settings table.

struct QueryCost {
    rows: i64,
    due_median: Duration,
    due_max: Duration,
    due_returned: usize,
    next_median: Duration,
    next_max: Duration,
    due_plan: Vec<String>,
    next_plan: Vec<String>,
    fill: Duration,
    /// GetSchedulerStats through the server on the same store, median of 5.
    stats_rpc: Duration,
}

async fn due_query_table(big: i64) -> String {
    let small = query_cost(100).await;
    let large = query_cost(big).await;
    let mut out = format!(
        "## (b) due-query cost, median of {QUERY_RUNS} (rusqlite on the state store file, statement prepared once)\n\n\
         | settings rows | due-query median (ms) | due-query max (ms) | rows returned | next_due median (ms) | next_due max (ms) | GetSchedulerStats RPC (ms) | fill (s) | target due <= 5 ms |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for c in [&small, &large] {
        out += &format!(
            "| {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.1} | {:.1} | {} |\n",
            c.rows,
            ms(c.due_median),
            ms(c.due_max),
            c.due_returned,
            ms(c.next_median),
            ms(c.next_max),
            ms(c.stats_rpc),
            c.fill.as_secs_f64(),
            if ms(c.due_median) <= 5.0 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    out += &format!(
        "\nratio {big} rows / 100 rows: due-query {:.2}x, next_due {:.2}x\n",
        ms(large.due_median) / ms(small.due_median),
        ms(large.next_median) / ms(small.next_median)
    );
    out += &format!(
        "\nEXPLAIN QUERY PLAN, due-query ({big} rows):\n```\n{}\n```\n",
        large.due_plan.join("\n")
    );
    out += &format!(
        "EXPLAIN QUERY PLAN, next_due ({big} rows):\n```\n{}\n```\n",
        large.next_plan.join("\n")
    );
    let indexed = |plan: &[String]| {
        plan.iter()
            .any(|l| l.contains("USING INDEX idx_backup_settings_enabled_next"))
            && !plan.iter().any(|l| l.contains("TEMP B-TREE"))
    };
    out += &format!(
        "index idx_backup_settings_enabled_next used without a sort: due-query {}, next_due {}\n",
        indexed(&large.due_plan),
        indexed(&large.next_plan)
    );
    out
}

async fn query_cost(rows: i64) -> QueryCost {
    let data = DataDir::new();
    // One start applies the migrations: the real schema and indexes.
    let server = data.start(&["--no-scheduler"]);
    let status = server.shutdown().await;
    assert!(
        status.success(),
        "the migrating server did not exit cleanly on SIGTERM: {status}"
    );

    let now = Utc::now();
    let t = Instant::now();
    fill_settings(&data.path().join("state.db"), rows, now);
    let fill = t.elapsed();
    println!(
        "(b) {rows} settings rows inserted in {:.1} s",
        fill.as_secs_f64()
    );

    let conn = state_store(&data);
    let now_text = db_time(now);
    let mut due_times = Vec::new();
    let mut next_times = Vec::new();
    let mut due_returned = 0;
    {
        let mut due = conn.prepare(DUE_SQL).expect("prepare the due-query");
        let mut next = conn.prepare(NEXT_DUE_SQL).expect("prepare next_due");
        for _ in 0..QUERY_RUNS {
            let t = Instant::now();
            due_returned = read_all(&mut due, rusqlite::params![true, now_text, 256]);
            due_times.push(t.elapsed());
            let t = Instant::now();
            let n = read_all(&mut next, rusqlite::params![true, 1]);
            next_times.push(t.elapsed());
            assert_eq!(n, 1, "next_due found nothing");
        }
    }
    assert_eq!(due_returned as i64, DUE_ROWS.min(rows), "due rows");
    let due_plan = query_plan(&conn, DUE_SQL, rusqlite::params![true, now_text, 256]);
    let next_plan = query_plan(&conn, NEXT_DUE_SQL, rusqlite::params![true, 1]);
    drop(conn);

    // For orientation: GetSchedulerStats, which also counts and lists overdue users.
    let server = data.start(&["--no-scheduler"]);
    let admin = server.client(&data.token(1, true)).await;
    let mut scheduler = admin.scheduler();
    let mut stats_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        scheduler.stats().await.expect("GetSchedulerStats");
        stats_times.push(t.elapsed());
    }
    drop(server);

    QueryCost {
        rows,
        due_median: median(&mut due_times),
        due_max: due_times.iter().copied().max().unwrap_or_default(),
        due_returned,
        next_median: median(&mut next_times),
        next_max: next_times.iter().copied().max().unwrap_or_default(),
        due_plan,
        next_plan,
        fill,
        stats_rpc: median(&mut stats_times),
    }
}

/// Inserts `rows` settings in one transaction: one in ten disabled (no next
/// run), `DUE_ROWS` due a minute ago, the rest spread over the next day.
fn fill_settings(state_db: &Path, rows: i64, now: DateTime<Utc>) {
    let mut conn = Connection::open(state_db).expect("open the state store");
    let txn = conn.transaction().expect("begin");
    {
        let mut insert = txn
            .prepare(
                "INSERT INTO backup_settings (user_id, enabled, frequency, backup_time, keep_count,
                     last_backup_at, next_backup_at, created_at, updated_at, timezone, anchor_date)
                 VALUES (?1, ?2, 'daily', ?3, 7, NULL, ?4, ?5, ?5, 'UTC', ?6)",
            )
            .expect("prepare insert");
        let created = db_time(now - chrono::Duration::days(1));
        let anchor = now.date_naive().to_string();
        for i in 0..rows {
            let user_id = i + 2;
            let (enabled, next) = if i < DUE_ROWS {
                (true, Some(now - chrono::Duration::seconds(60 - i)))
            } else if i % 10 == 0 {
                (false, None)
            } else {
                (true, Some(now + chrono::Duration::seconds(1 + i % 86_400)))
            };
            let next = next.map(|t| t.trunc_subsecs(0));
            let time = next.map_or_else(|| "03:00".to_owned(), |t| t.format("%H:%M").to_string());
            insert
                .execute(rusqlite::params![
                    user_id,
                    enabled,
                    time,
                    next.map(db_time),
                    created,
                    anchor
                ])
                .unwrap_or_else(|e| panic!("insert settings row {user_id}: {e}"));
        }
    }
    txn.commit().expect("commit the settings rows");
}

/// Steps through every row, reading each column, as the server would.
fn read_all(stmt: &mut rusqlite::Statement<'_>, params: impl rusqlite::Params) -> usize {
    let columns = stmt.column_count();
    let mut rows = stmt.query(params).expect("run the query");
    let mut n = 0;
    while let Some(row) = rows.next().expect("step the query") {
        for c in 0..columns {
            let _: rusqlite::types::Value = row.get(c).expect("read a column");
        }
        n += 1;
    }
    n
}

/// `EXPLAIN QUERY PLAN` detail lines.
fn query_plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("prepare EXPLAIN QUERY PLAN");
    stmt.query_map(params, |r| r.get::<_, String>(3))
        .expect("EXPLAIN QUERY PLAN")
        .collect::<Result<_, _>>()
        .expect("read the plan")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// (c) Idle CPU and RSS.

fn idle_table(window_secs: u64) -> String {
    let ticks_per_sec = backup_tests::clock_ticks();
    let data = DataDir::new();
    let server = data.start(&[]);
    let pid = server.child.id();
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, rss0, switches0) = (cpu_ticks(pid), vm_rss_kb(pid), context_switches(pid));
    println!("(c) measuring idle CPU for {window_secs} s (pid {pid})");
    std::thread::sleep(Duration::from_secs(window_secs));
    let (cpu1, rss1, switches1) = (cpu_ticks(pid), vm_rss_kb(pid), context_switches(pid));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    drop(server);

    let cpu_secs = (cpu1 - cpu0) as f64 / ticks_per_sec;
    let per_minute = cpu_secs * 60.0 / window_secs as f64;
    format!(
        "## (c) idle server (default flags: scheduler on, nothing due), t = 5 s .. {} s\n\n\
         | measurement | value | target |\n|---|---|---|\n\
         | CPU (utime+stime) over {window_secs} s | {cpu_secs:.2} s ({} ticks at {ticks_per_sec} Hz) | |\n\
         | CPU per minute | {per_minute:.3} s | <= 0.05 s ({}) |\n\
         | VmRSS at 5 s / at {} s | {:.1} MB / {:.1} MB | |\n\
         | context switches, all threads, over the window | {} | |\n\
         | threads | {threads} | |\n",
        5 + window_secs,
        cpu1 - cpu0,
        if per_minute <= 0.05 { "met" } else { "MISSED" },
        5 + window_secs,
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        switches1 - switches0,
    )
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Voluntary + involuntary context switches summed over every thread: each
/// wake-up of an idle thread is one.
fn context_switches(pid: u32) -> i64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads") {
        let path = task.expect("thread entry").path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread exited
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<i64>().unwrap_or(0);
            }
        }
    }
    total
}
