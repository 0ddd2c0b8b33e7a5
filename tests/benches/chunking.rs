//! Benchmark for issue 13 ("Chunks"): which chunk size a content-addressed
//! repository should cut SQLite snapshots into, measured before building it.
//!
//! A text-like application database (rows of words, an index on the owner
//! column, the default 4 KiB pages, a rollback journal so the file is the
//! database after each commit) is snapshotted, changed by one workload, and
//! snapshotted again. Each snapshot is cut at page boundaries into runs of
//! 1, 4 or 16 pages; a chunk of the second whose BLAKE3 the first lacks is
//! new. Per size: the share of chunks that are new, the bytes they add
//! raw and compressed with zstd (each chunk alone, and in frames of 16 new
//! chunks, as a pack could hold them), what the first snapshot takes
//! compressed chunk by chunk, and the chunk count (index entries) per GiB.
//!
//! Run with `cargo bench -p backup-tests --bench chunking`.
//! - `CHUNK_BENCH_ROWS` rows in the database (default 150,000, about 80 MiB)
//! - `CHUNK_BENCH_ZSTD_LEVEL` zstd level (default 3)

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use backup_tests::bench::{WORDS, knob};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};

const PAGE: usize = 4096;

/// Runs of pages a chunk holds.
const RUNS: [usize; 3] = [1, 4, 16];

/// New chunks compressed together in one zstd frame, in the frames column.
const FRAME_CHUNKS: usize = 16;

/// A line of `words` words, like a note or an address a user typed.
fn text(rng: &mut StdRng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn insert_rows(conn: &Connection, rng: &mut StdRng, count: u64) {
    let tx = conn.unchecked_transaction().expect("begin");
    {
        let mut insert = tx
            .prepare("INSERT INTO records (owner, title, body, updated_at) VALUES (?, ?, ?, ?)")
            .expect("prepare");
        for _ in 0..count {
            let owner: i64 = rng.random_range(1..=1000);
            let words = rng.random_range(40..120);
            let at = format!("2026-11-{:02}T12:00:00Z", rng.random_range(1..=30));
            insert
                .execute(params![owner, text(rng, 4), text(rng, words), at])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// What one workload does to the database.
#[derive(Clone, Copy)]
enum Workload {
    /// 1% of rows rewritten at random and 0.5% inserted: a day of edits.
    Updates,
    /// 1% more rows appended: a day of new records.
    Appends,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Workload::Updates => "1% of rows updated at random + 0.5% inserted",
            Workload::Appends => "1% of rows appended",
        }
    }

    fn apply(self, conn: &Connection, rng: &mut StdRng, rows: u64) {
        match self {
            Workload::Updates => {
                let tx = conn.unchecked_transaction().expect("begin");
                {
                    let mut update = tx
                        .prepare("UPDATE records SET body = ?, updated_at = ? WHERE id = ?")
                        .expect("prepare");
                    for _ in 0..rows / 100 {
                        let id = rng.random_range(1..=rows as i64);
                        let words = rng.random_range(40..120);
                        update
                            .execute(params![text(rng, words), "2026-12-01T12:00:00Z", id])
                            .expect("update");
                    }
                }
                tx.commit().expect("commit");
                insert_rows(conn, rng, rows / 200);
            }
            Workload::Appends => insert_rows(conn, rng, rows / 100),
        }
    }
}

fn create(path: &Path, rng: &mut StdRng, rows: u64) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = DELETE;
         CREATE TABLE records (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL,
             title TEXT NOT NULL, body TEXT NOT NULL, updated_at TEXT NOT NULL);
         CREATE INDEX records_owner ON records (owner, updated_at);",
    )
    .expect("schema");
    insert_rows(&conn, rng, rows);
    conn
}

fn ids(snapshot: &[u8], pages: usize) -> HashSet<blake3::Hash> {
    snapshot.chunks(pages * PAGE).map(blake3::hash).collect()
}

fn compressed(chunk: &[u8], level: i32) -> usize {
    zstd::bulk::compress(chunk, level).expect("zstd").len()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let rows = knob("CHUNK_BENCH_ROWS", 150_000);
    let level = knob("CHUNK_BENCH_ZSTD_LEVEL", 3) as i32;
    let dir = tempfile::tempdir().expect("temp dir");
    println!("## chunking: a text-like database of {rows} rows, 4 KiB pages, zstd level {level}");
    println!();
    println!(
        "| workload | pages per chunk | chunks | new chunks | new bytes (MiB) | new bytes, zstd per chunk (MiB) | new bytes, zstd per {FRAME_CHUNKS} new chunks (MiB) | first snapshot, zstd per chunk (MiB) | chunks per GiB | cut + hash + compress (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, workload) in [Workload::Updates, Workload::Appends]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("app-{i}.db"));
        let mut rng = StdRng::seed_from_u64(13);
        let conn = create(&path, &mut rng, rows);
        let before = std::fs::read(&path).expect("read the first snapshot");
        workload.apply(&conn, &mut rng, rows);
        let after = std::fs::read(&path).expect("read the second snapshot");
        for pages in RUNS {
            let started = Instant::now();
            let known = ids(&before, pages);
            let first_compressed: usize = before
                .chunks(pages * PAGE)
                .map(|c| compressed(c, level))
                .sum();
            let mut seen = HashSet::new();
            let (mut total, mut new_compressed) = (0, 0);
            let mut new_chunks: Vec<&[u8]> = Vec::new();
            for chunk in after.chunks(pages * PAGE) {
                total += 1;
                let id = blake3::hash(chunk);
                if !known.contains(&id) && seen.insert(id) {
                    new_chunks.push(chunk);
                    new_compressed += compressed(chunk, level);
                }
            }
            let new = new_chunks.len();
            let new_bytes: usize = new_chunks.iter().map(|c| c.len()).sum();
            let framed: usize = new_chunks
                .chunks(FRAME_CHUNKS)
                .map(|frame| compressed(&frame.concat(), level))
                .sum();
            println!(
                "| {} | {pages} | {total} | {new} ({:.1}%) | {:.2} | {:.2} | {:.2} | {:.1} of {:.1} | {} | {:.2} |",
                workload.label(),
                100.0 * new as f64 / total as f64,
                mib(new_bytes),
                mib(new_compressed),
                mib(framed),
                mib(first_compressed),
                mib(before.len()),
                (1usize << 30) / (pages * PAGE),
                started.elapsed().as_secs_f64(),
            );
        }
    }
    println!();
    println!(
        "New chunks are those of the second snapshot whose BLAKE3 the first lacks (each counted \
         once); the time is one pass over both snapshots on one core, compression included."
    );
}
