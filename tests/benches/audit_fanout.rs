//! Audit fan-out benchmark: many live subscribers while events are written
//! at a steady rate. Drives the server's own domain code in process (the
//! recorder writing to a SQLite state store on disk, and the subscription
//! hub), not gRPC: it measures the merge of live broadcast and store, not
//! protobuf encoding or the network.
//!
//! `cargo bench -p backup-tests --bench audit_fanout`
//!
//! Knobs (environment): AUDIT_BENCH_SUBSCRIBERS (100), AUDIT_BENCH_RATE
//! (events per second, 10000), AUDIT_BENCH_SECONDS (10), AUDIT_BENCH_BATCH
//! (events per write transaction, 100).
//!
//! Latency is from the event's timestamp (taken when it is inserted, before
//! its transaction commits) to its arrival at the subscriber's receiver,
//! in 0.1 ms buckets. Each batch is written with one multi-row INSERT
//! (`Recorder::insert_many`) in its own transaction, then published.

use std::time::{Duration, Instant};

use backup_server::audit::subscription::Hub;
use backup_server::audit::{NewEvent, Recorder};
use backup_server::model::audit::Filter;
use backup_server::store;
use backup_tests::bench::knob;
use tokio_util::sync::CancellationToken;

/// Latency histogram resolution and range: 0.1 ms buckets up to 2 s (the
/// last bucket holds anything slower; the maximum is kept exactly).
const BUCKET_US: u64 = 100;
const BUCKETS: usize = 20_000;

struct Outcome {
    received: u64,
    out_of_order: u64,
    histogram: Vec<u64>,
    max_us: u64,
    finished: Instant,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn main() {
    // The bench harness passes flags such as --bench; none apply here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let subscribers = knob("AUDIT_BENCH_SUBSCRIBERS", 100) as usize;
    let rate = knob("AUDIT_BENCH_RATE", 10_000);
    let seconds = knob("AUDIT_BENCH_SECONDS", 10);
    let batch = knob("AUDIT_BENCH_BATCH", 100).max(1);
    let total = rate * seconds;

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/state.db?mode=rwc", dir.path().display());
    let db = store::Store::open(&url).await.expect("state store");
    // A fresh store: nothing to snapshot first.
    store::pending_migrations(&db)
        .await
        .expect("migration lock")
        .apply()
        .await
        .expect("migrate");
    let recorder = Recorder::new(db.clone());
    let shutdown = CancellationToken::new();
    let hub = Hub::new(db.clone(), recorder.clone(), shutdown.clone());

    let mut consumers = Vec::new();
    for _ in 0..subscribers {
        let mut rx = hub
            .subscribe(Filter::default(), None)
            .await
            .expect("subscribe");
        consumers.push(tokio::spawn(async move {
            let mut outcome = Outcome {
                received: 0,
                out_of_order: 0,
                histogram: vec![0; BUCKETS],
                max_us: 0,
                finished: Instant::now(),
            };
            let mut last = 0;
            while let Some(delivery) = rx.recv().await {
                let event = delivery.expect("no stream error");
                let latency = (now_us() - event.timestamp.timestamp_micros()).max(0) as u64;
                outcome.histogram[((latency / BUCKET_US) as usize).min(BUCKETS - 1)] += 1;
                outcome.max_us = outcome.max_us.max(latency);
                if event.id != last + 1 {
                    outcome.out_of_order += 1;
                }
                last = event.id;
                outcome.received += 1;
                if event.id as u64 >= total {
                    break;
                }
            }
            outcome.finished = Instant::now();
            outcome
        }));
    }

    println!(
        "audit fan-out: {subscribers} subscribers, {rate} events/s for {seconds} s, {batch} events per transaction (in process, SQLite {})",
        store::sqlite_version()
    );
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut written = 0;
    let mut slowest_commit = Duration::ZERO;
    while written < total {
        tick.tick().await;
        let n = batch.min(total - written);
        let t = Instant::now();
        let mut change = recorder.begin().await.expect("begin");
        for seq in written..written + n {
            change.record(
                NewEvent::new("bench.write", 1)
                    .resource("bench", seq.to_string())
                    .details(serde_json::json!({ "seq": seq })),
            );
        }
        change.commit().await.expect("commit");
        slowest_commit = slowest_commit.max(t.elapsed());
        written += n;
    }
    let write_time = started.elapsed();

    let mut histogram = vec![0u64; BUCKETS];
    let mut max_us = 0;
    let mut received = 0;
    let mut out_of_order = 0;
    let mut last_delivery = started;
    for consumer in consumers {
        let outcome = tokio::time::timeout(Duration::from_secs(60), consumer)
            .await
            .expect("subscribers finish within 60 s of the last write")
            .expect("subscriber task");
        received += outcome.received;
        out_of_order += outcome.out_of_order;
        last_delivery = last_delivery.max(outcome.finished);
        for (sum, n) in histogram.iter_mut().zip(&outcome.histogram) {
            *sum += n;
        }
        max_us = max_us.max(outcome.max_us);
    }
    shutdown.cancel();
    // The upper edge of the bucket holding the p-th fraction of deliveries.
    let pct = |p: f64| {
        let rank = ((received as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in histogram.iter().enumerate() {
            seen += n;
            if seen >= rank.max(1) {
                return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        f64::NAN
    };
    let expected = total * subscribers as u64;
    let delivery_time = (last_delivery - started).as_secs_f64();
    println!(
        "written: {total} events in {:.2} s ({:.0}/s), slowest transaction {:.1} ms",
        write_time.as_secs_f64(),
        total as f64 / write_time.as_secs_f64(),
        slowest_commit.as_secs_f64() * 1000.0
    );
    println!(
        "delivered: {received} of {expected} in {delivery_time:.2} s ({:.0} events/s across subscribers)",
        received as f64 / delivery_time
    );
    println!(
        "latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50),
        pct(0.99),
        max_us as f64 / 1000.0
    );
    println!(
        "lost: {}, out of order or duplicated: {out_of_order}",
        expected.saturating_sub(received)
    );
}
