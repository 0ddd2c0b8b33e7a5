//! Retention over a large catalog, through gRPC against a real server:
//! 100,000 catalogued backups across 1,000 owners (100 each).
//!
//! Run (release binaries first; `cargo test` never runs this):
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo bench -p backup-tests --bench retention
//! ```
//!
//! Setup: the catalog rows are inserted straight into the state store; every
//! owner's 100 backup files are hard links to one small SQLite file of its
//! own (8 KiB), so the directory really holds 100,000 names, verification
//! really opens and checks files, and deletes really rename, commit and
//! unlink. What is timed is the client's call, end to end.

use std::time::{Duration, Instant};

use backup_client::Owners;
use backup_tests::*;

const OWNERS: i64 = 1_000;
const PER_OWNER: i64 = 100;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: stay
    // out of the test run's time budget.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("retention benchmark: skipped (run it with `cargo bench`)");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn populate(data: &DataDir) {
    let dir = data.backups_dir();
    let mut seeds = Vec::new();
    for owner in 1..=OWNERS {
        let seed = data.path().join(format!("seed-{owner}.db"));
        let c = open(&seed);
        c.execute_batch(
            "PRAGMA journal_mode=DELETE; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .expect("seed");
        drop(c);
        let bytes = std::fs::read(&seed).expect("read seed");
        seeds.push((seed, bytes.len() as i64, sha256_hex(&bytes)));
    }
    let mut conn = open(&data.path().join("state.db"));
    let txn = conn.transaction().expect("begin");
    {
        let mut insert = txn
            .prepare(
                "INSERT INTO backups (filename, name, owner_user_id, kind, size_bytes, sha256, is_protected, created_at)
                 VALUES (?1, ?1, ?2, 'auto', ?3, ?4, 0, ?5)",
            )
            .expect("prepare");
        let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T03:00:00Z")
            .expect("base")
            .to_utc();
        // In the order a daily schedule creates them: day by day, every
        // owner's backup of the day (with a few seconds between owners).
        for day in 0..PER_OWNER {
            for owner in 1..=OWNERS {
                let at = base + chrono::Duration::days(day) + chrono::Duration::seconds(owner);
                let name = format!(
                    "auto_backup_user{owner}_{}.db",
                    at.format("%Y-%m-%dT%H-%M-%S")
                );
                let (seed, size, sha) = &seeds[(owner - 1) as usize];
                std::fs::hard_link(seed, dir.join(&name)).expect("link");
                insert
                    .execute(rusqlite::params![name, owner, size, sha, db_time(at)])
                    .expect("insert");
            }
        }
    }
    txn.commit().expect("commit");
}

/// Times `call` `n` times and prints `what` with the median wall time and
/// the mean server CPU time.
async fn sample<F, Fut>(what: &str, pid: u32, n: usize, mut call: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut walls = Vec::new();
    let cpu_before = cpu_seconds(pid);
    for i in 0..n {
        let t = Instant::now();
        call(i).await;
        walls.push(t.elapsed());
    }
    let cpu = (cpu_seconds(pid) - cpu_before) / n as f64;
    println!(
        "{what}: median {} wall, mean {} server CPU, of {n}",
        ms(median(&mut walls)),
        ms(Duration::from_secs_f64(cpu))
    );
}

/// One more automatic backup for every owner, newer than all the others.
fn add_one_each(data: &DataDir) {
    let mut conn = open(&data.path().join("state.db"));
    let txn = conn.transaction().expect("begin");
    let at = chrono::DateTime::parse_from_rfc3339("2027-01-01T03:00:00Z")
        .expect("time")
        .to_utc();
    for owner in 1..=OWNERS {
        let name = format!(
            "auto_backup_user{owner}_{}.db",
            at.format("%Y-%m-%dT%H-%M-%S")
        );
        let seed = data.path().join(format!("seed-{owner}.db"));
        std::fs::hard_link(&seed, data.backups_dir().join(&name)).expect("link");
        let bytes = std::fs::read(&seed).expect("read seed");
        txn.execute(
            "INSERT INTO backups (filename, name, owner_user_id, kind, size_bytes, sha256, is_protected, created_at)
             VALUES (?1, ?1, ?2, 'auto', ?3, ?4, 0, ?5)",
            rusqlite::params![name, owner, bytes.len() as i64, sha256_hex(&bytes), db_time(at)],
        )
        .expect("insert");
    }
    txn.commit().expect("commit");
}

async fn run() {
    let data = DataDir::with_rows(10);
    let token = data.token(1, true);
    let setup = Instant::now();
    populate(&data);
    // The backups are dated months back, so a scrub would start verifying
    // all 100,000 at once, beside what is measured: it is off here.
    let server = data.start(&["--verify-interval", "0"]);
    let pid = server.child.id();
    println!(
        "setup: {} backups of {} owners catalogued and linked in {:.1} s (includes server start)",
        OWNERS * PER_OWNER,
        OWNERS,
        setup.elapsed().as_secs_f64()
    );
    let client = server.client(&token).await;
    let mut retention = client.retention();
    let sampled = (1..=OWNERS).step_by(50).collect::<Vec<_>>();

    // GetRetentionSummary, every owner, keep 30: 70,000 to delete.
    let cpu = cpu_seconds(pid);
    let t = Instant::now();
    let first = retention.summary(30, Owners::All).await.expect("summary");
    println!(
        "GetRetentionSummary all owners, first call (verifies 1,000 files): {} wall, {} server CPU",
        ms(t.elapsed()),
        ms(Duration::from_secs_f64(cpu_seconds(pid) - cpu))
    );
    assert_eq!(first.total as i64, OWNERS * PER_OWNER);
    assert_eq!(first.to_delete as i64, OWNERS * (PER_OWNER - 30));
    let r = retention.clone();
    let r = &r;
    sample(
        "GetRetentionSummary all owners (100,000 backups, 70,000 to delete)",
        pid,
        9,
        |_| {
            let mut r = r.clone();
            let first = first.clone();
            async move {
                let s = r.summary(30, Owners::All).await.expect("summary");
                assert_eq!(s, first);
            }
        },
    )
    .await;
    sample(
        "GetRetentionSummary one owner (100 of the 100,000)",
        pid,
        sampled.len(),
        |i| {
            let mut r = r.clone();
            let owner = sampled[i];
            async move {
                r.summary(30, Owners::User(owner)).await.expect("summary");
            }
        },
    )
    .await;

    // ApplyRetentionPolicy for one owner: 70 of its 100 go.
    let apply_each = |what: &'static str, expected: usize| {
        let sampled = &sampled;
        sample(what, pid, sampled.len(), move |i| {
            let mut r = r.clone();
            let owner = sampled[i];
            async move {
                let deleted = r.apply(30, Owners::User(owner)).await.expect("apply");
                assert_eq!(deleted.len(), expected);
            }
        })
    };
    apply_each("ApplyRetentionPolicy one owner deleting 70 of 100", 70).await;

    // Every other owner at once: the bulk case.
    let cpu = cpu_seconds(pid);
    let t = Instant::now();
    let deleted = retention.apply(30, Owners::All).await.expect("apply");
    let bulk = t.elapsed();
    assert_eq!(deleted.len(), (OWNERS as usize - sampled.len()) * 70);
    println!(
        "ApplyRetentionPolicy all owners deleting {}: {:.1} s wall ({:.2} ms per deleted backup), {:.1} s server CPU",
        deleted.len(),
        bulk.as_secs_f64(),
        bulk.as_secs_f64() * 1e3 / deleted.len() as f64,
        cpu_seconds(pid) - cpu
    );

    // The scheduler's steady state: one new backup each, one old one goes.
    add_one_each(&data);
    apply_each(
        "ApplyRetentionPolicy one owner deleting 1 of 31 (after each automatic backup)",
        1,
    )
    .await;
    let cpu = cpu_seconds(pid);
    let t = Instant::now();
    let deleted = retention.apply(30, Owners::All).await.expect("apply");
    println!(
        "ApplyRetentionPolicy all owners deleting {} (one each): {} wall, {} server CPU",
        deleted.len(),
        ms(t.elapsed()),
        ms(Duration::from_secs_f64(cpu_seconds(pid) - cpu))
    );
    sample(
        "GetRetentionSummary all owners after (30,000 backups, nothing to delete)",
        pid,
        5,
        |_| {
            let mut r = r.clone();
            async move {
                let s = r.summary(30, Owners::All).await.expect("summary");
                assert_eq!(s.to_delete, 0);
            }
        },
    )
    .await;
}
