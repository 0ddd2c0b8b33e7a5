//! Benchmark for issue 12 ("Serving speed"): throughput and latency of
//! small unary RPCs through the whole server (token lookup, state store,
//! catalog, telemetry, protobuf), next to a bare tonic server measured in
//! the same run from the same load client.
//!
//! The load client is one HTTP/2 connection (one tonic `Channel`) with a
//! fixed number of requests in flight; each measurement counts the replies
//! that arrive in its window, after a warm-up, with their latencies and
//! the answering server process's CPU time, and is repeated; medians are
//! reported. The runs interleave the cases.
//!
//! Run with `cargo build --release --workspace --bins` then
//! `cargo bench -p backup-tests --bench rpc`.
//!
//! Environment overrides (for a quick run):
//! - `RPC_BENCH_SECONDS` length of each measurement window (default 5)
//! - `RPC_BENCH_WARMUP_SECONDS` warm-up before each window (default 1)
//! - `RPC_BENCH_RUNS` measurements per row, the median is reported (default 3)
//! - `RPC_BENCH_IN_FLIGHT` requests in flight on the connection (default 64)
//! - `RPC_BENCH_BACKUPS` backups catalogued for the listing user, all on
//!   the one page listed (default 20, at most 50)
//!
//! Targets (issue 12): GetBackupSettings and one ListBackups page >= 0.5x
//! the bare server's req/s with p99 <= 5 ms; with another client updating
//! settings continuously alongside, >= 0.35x.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backup_client::{Backups, Client, Scheduler, SettingsUpdate};
use backup_tests::bench::knob;
use backup_tests::proto::{self as pb, backup_scheduler_server as sched};
use backup_tests::{DataDir, Server, clock_ticks, cpu_ticks};
use tonic::{Request, Response, Status};

/// Set in the environment of the child process that serves the baseline.
const BARE_SERVER_ENV: &str = "RPC_BENCH_BARE_SERVER";

/// The user whose settings are read and whose backups are listed.
const USER: i64 = 1;

fn main() {
    // The bench harness passes flags such as --bench; none apply here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os(BARE_SERVER_ENV).is_some() {
        runtime.block_on(serve_bare());
    } else {
        runtime.block_on(run());
    }
}

/// The baseline: `BackupScheduler` with a GetBackupSettings that returns a
/// fixed reply and does nothing else (every other method is UNIMPLEMENTED).
///
/// It runs in a process of its own (this benchmark binary, started again
/// with [`BARE_SERVER_ENV`] set), as the real server does, so both share
/// the machine with the load client in the same way. It uses the same
/// generated code and message types as the real server, and the same
/// TCP_NODELAY (without it Nagle would hold small replies, a transport
/// artifact rather than a cost of tonic), so the ratio to it isolates what
/// the service adds per RPC, not what gRPC itself costs.
struct Bare;

/// The reply the baseline sends: settings like those the benchmark gives
/// its user on the real server (disabled, defaults otherwise), so both
/// encode a message of about the same size.
fn fixed_settings() -> pb::BackupSettings {
    let at = |seconds| prost_types::Timestamp {
        seconds,
        nanos: 123_456_789,
    };
    pb::BackupSettings {
        user_id: USER,
        enabled: false,
        frequency: pb::Frequency::Daily.into(),
        backup_time: "03:00".into(),
        keep_count: 5,
        timezone: "UTC".into(),
        last_backup_at: None,
        next_backup_at: None,
        created_at: Some(at(1_780_000_000)),
        updated_at: Some(at(1_780_000_000)),
    }
}

/// The baseline's `BackupScheduler`: GetBackupSettings as [`Bare`] says,
/// and `$method`s that answer UNIMPLEMENTED.
macro_rules! bare_scheduler {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl sched::BackupScheduler for Bare {
            async fn get_backup_settings(
                &self,
                _: Request<pb::GetBackupSettingsRequest>,
            ) -> Result<Response<pb::GetBackupSettingsResponse>, Status> {
                Ok(Response::new(pb::GetBackupSettingsResponse {
                    settings: Some(fixed_settings()),
                }))
            }

            $(
                async fn $method(
                    &self,
                    _: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    Err(Status::unimplemented("not part of the baseline"))
                }
            )*
        }
    };
}

bare_scheduler! {
    update_backup_settings(UpdateBackupSettingsRequest) -> UpdateBackupSettingsResponse;
    list_backup_settings(ListBackupSettingsRequest) -> ListBackupSettingsResponse;
    list_overdue_settings(ListOverdueSettingsRequest) -> ListOverdueSettingsResponse;
    check_and_run_backups(CheckAndRunBackupsRequest) -> CheckAndRunBackupsResponse;
    get_scheduler_stats(GetSchedulerStatsRequest) -> GetSchedulerStatsResponse;
    start_scheduler(StartSchedulerRequest) -> StartSchedulerResponse;
    stop_scheduler(StopSchedulerRequest) -> StopSchedulerResponse;
}

/// The child process: prints `listening on ADDR` as `backup-server` does,
/// then serves until killed.
async fn serve_bare() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the bare server");
    println!(
        "listening on {}",
        listener.local_addr().expect("its address")
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(sched::BackupSchedulerServer::new(Bare))
        .serve_with_incoming(incoming)
        .await
        .expect("serve the bare server");
}

/// Starts the baseline process; it is killed when the `Server` drops.
fn start_bare() -> Server {
    let mut child = Command::new(std::env::current_exe().expect("this benchmark's path"))
        .env(BARE_SERVER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the bare server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut line)
        .expect("read its ready line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the bare server printed {line:?}"));
    Server {
        url: format!("http://{addr}"),
        child,
    }
}

/// What the load client calls.
#[derive(Clone, Copy)]
enum Call {
    GetSettings,
    /// ListBackups, first page at the default page size; the reply must
    /// hold this many backups.
    ListBackups(usize),
}

impl Call {
    async fn once(self, scheduler: &mut Scheduler, backups: &mut Backups) {
        match self {
            Call::GetSettings => {
                scheduler
                    .raw()
                    .get_backup_settings(pb::GetBackupSettingsRequest { user_id: 0 })
                    .await
                    .unwrap_or_else(|e| panic!("GetBackupSettings failed: {e}"));
            }
            Call::ListBackups(expected) => {
                let page = backups
                    .raw()
                    .list_backups(pb::ListBackupsRequest {
                        page_size: 0,
                        page_token: String::new(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("ListBackups failed: {e}"))
                    .into_inner();
                assert_eq!(page.backups.len(), expected, "one page of every backup");
            }
        }
    }
}

/// One measurement window.
#[derive(Clone, Copy)]
struct Sample {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time (every thread) the server process used per reply.
    cpu_per_reply: Duration,
    /// CPU time this process (the load client) used per reply, on the same
    /// cores: what a reply costs to receive and decode bounds the rate too.
    client_cpu_per_reply: Duration,
    /// Settings updates per second the second client completed meanwhile.
    updates_per_sec: Option<f64>,
}

struct Load {
    /// `getconf CLK_TCK`, read once.
    clock_ticks: f64,
    in_flight: usize,
    warmup: Duration,
    window: Duration,
}

impl Load {
    /// `in_flight` loops sharing `client`'s connection call `call` from now
    /// until the end of the window; the replies that arrive inside the
    /// window (after the warm-up) are counted and their latencies kept.
    /// With `updater`, that client meanwhile updates the user's settings
    /// in a loop, one call in flight. `server` is the process answering.
    async fn measure(
        &self,
        server: &Server,
        client: &Client,
        call: Call,
        updater: Option<&Client>,
    ) -> Sample {
        let from = Instant::now() + self.warmup;
        let until = from + self.window;
        let updates = Arc::new(AtomicU64::new(0));
        let updating = updater.map(|updater| {
            let mut scheduler = updater.scheduler();
            let updates = Arc::clone(&updates);
            tokio::spawn(async move {
                let mut keep_count = 5;
                while Instant::now() < until {
                    keep_count = if keep_count == 5 { 6 } else { 5 };
                    let update = SettingsUpdate {
                        keep_count: Some(keep_count),
                        ..Default::default()
                    };
                    scheduler
                        .update_settings(0, update)
                        .await
                        .unwrap_or_else(|e| panic!("UpdateBackupSettings failed: {e}"));
                    let done = Instant::now();
                    if done >= from && done <= until {
                        updates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        let loops: Vec<_> = (0..self.in_flight)
            .map(|_| {
                // Clones of one client share its one connection.
                let (mut scheduler, mut backups) = (client.scheduler(), client.backups());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < until {
                        let sent = Instant::now();
                        call.once(&mut scheduler, &mut backups).await;
                        let done = Instant::now();
                        if done >= from && done <= until {
                            latencies.push(done - sent);
                        }
                    }
                    latencies
                })
            })
            .collect();
        let pid = server.child.id();
        tokio::time::sleep_until(from.into()).await;
        let me = std::process::id();
        let (cpu_from, client_cpu_from) = (cpu_ticks(pid), cpu_ticks(me));
        tokio::time::sleep_until(until.into()).await;
        let cpu = (cpu_ticks(pid) - cpu_from) as f64 / self.clock_ticks;
        let client_cpu = (cpu_ticks(me) - client_cpu_from) as f64 / self.clock_ticks;
        let mut latencies = Vec::new();
        for l in loops {
            latencies.extend(l.await.expect("a load loop"));
        }
        if let Some(updating) = updating {
            updating.await.expect("the updater");
        }
        assert!(!latencies.is_empty(), "no reply inside the window");
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        let window = self.window.as_secs_f64();
        Sample {
            per_sec: latencies.len() as f64 / window,
            p50: at(0.50),
            p99: at(0.99),
            cpu_per_reply: Duration::from_secs_f64(cpu / latencies.len() as f64),
            client_cpu_per_reply: Duration::from_secs_f64(client_cpu / latencies.len() as f64),
            updates_per_sec: updater.map(|_| updates.load(Ordering::Relaxed) as f64 / window),
        }
    }
}

struct Case {
    label: &'static str,
    target: &'static str,
    /// Against the bare server, not the real one.
    bare: bool,
    call: Call,
    /// With the updater running alongside.
    alongside: bool,
    samples: Vec<Sample>,
}

async fn run() {
    let runs = knob("RPC_BENCH_RUNS", 3).max(1) as usize;
    let backups = knob("RPC_BENCH_BACKUPS", 20) as usize;
    let load = Load {
        clock_ticks: clock_ticks(),
        in_flight: knob("RPC_BENCH_IN_FLIGHT", 64).max(1) as usize,
        warmup: Duration::from_secs(knob("RPC_BENCH_WARMUP_SECONDS", 1)),
        window: Duration::from_secs(knob("RPC_BENCH_SECONDS", 5).max(1)),
    };
    let load_start = load_average();

    // The real server: no scheduler and no scrub, so nothing but the
    // benchmark's RPCs runs in it.
    let data = DataDir::new();
    let token = data.token(USER, false);
    let server = data.start(&["--verify-interval", "0", "--no-scheduler"]);
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
    let mut creating = client.backups();
    for i in 0..backups {
        creating
            .create(Some(&format!("bench-{i}")))
            .await
            .unwrap_or_else(|e| panic!("CreateBackup bench-{i} failed: {e}"));
    }
    // The updater is a second client: a connection of its own.
    let updater = server.client(&token).await;

    let case = |label, target, bare, call, alongside| Case {
        label,
        target,
        bare,
        call,
        alongside,
        samples: Vec::new(),
    };
    let list = Call::ListBackups(backups);
    let mut cases = [
        case(
            "(a) bare tonic: GetBackupSettings, fixed reply (separate process)",
            "baseline",
            true,
            Call::GetSettings,
            false,
        ),
        case(
            "(b) GetBackupSettings",
            ">= 0.5x, p99 <= 5 ms",
            false,
            Call::GetSettings,
            false,
        ),
        case(
            "(c) ListBackups, one page",
            ">= 0.5x, p99 <= 5 ms",
            false,
            list,
            false,
        ),
        case(
            "(d) GetBackupSettings, settings updated alongside",
            ">= 0.35x",
            false,
            Call::GetSettings,
            true,
        ),
        case(
            "(d) ListBackups, one page, settings updated alongside",
            ">= 0.35x",
            false,
            list,
            true,
        ),
    ];
    // Runs interleave the cases, so a change in the machine's other load
    // spreads over all of them rather than skewing one.
    for run in 0..runs {
        // A fresh bare server per run, so the baseline's median is over
        // processes too, not one process's thread placement.
        let bare = start_bare();
        let bare_client = bare.client(&token).await;
        for case in &mut cases {
            let (target, answering) = if case.bare {
                (&bare_client, &bare)
            } else {
                (&client, &server)
            };
            let alongside = case.alongside.then_some(&updater);
            let sample = load.measure(answering, target, case.call, alongside).await;
            println!(
                "run {run} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, \
                 server CPU {:.0} us/reply, client CPU {:.0} us/reply{}",
                case.label,
                sample.per_sec,
                ms(sample.p50),
                ms(sample.p99),
                us(sample.cpu_per_reply),
                us(sample.client_cpu_per_reply),
                sample
                    .updates_per_sec
                    .map(|u| format!(", {u:.0} updates/s"))
                    .unwrap_or_default()
            );
            case.samples.push(sample);
        }
    }
    drop(client);
    drop(updater);
    drop(server);

    let baseline = median(cases[0].samples.iter().map(|s| s.per_sec));
    println!();
    println!(
        "## rpc: one load client, one HTTP/2 connection, {} requests in flight, \
         {} s windows after {} s warm-up, median of {runs} \
         ({backups} backups listed; 1-min load average {load_start} at start, {} at end, {} cores)",
        load.in_flight,
        load.window.as_secs(),
        load.warmup.as_secs(),
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| case | req/s | all runs req/s | p50 (ms) | p99 (ms) | server CPU per reply (us) | client CPU per reply (us) | updates/s alongside | ratio to bare | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in &cases {
        let per_sec = median(case.samples.iter().map(|s| s.per_sec));
        let updates = case
            .samples
            .iter()
            .filter_map(|s| s.updates_per_sec)
            .collect::<Vec<_>>();
        println!(
            "| {} | {per_sec:.0} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {:.2}x | {} |",
            case.label,
            case.samples
                .iter()
                .map(|s| format!("{:.0}", s.per_sec))
                .collect::<Vec<_>>()
                .join(", "),
            median(case.samples.iter().map(|s| ms(s.p50))),
            median(case.samples.iter().map(|s| ms(s.p99))),
            median(case.samples.iter().map(|s| us(s.cpu_per_reply))),
            median(case.samples.iter().map(|s| us(s.client_cpu_per_reply))),
            if updates.is_empty() {
                String::new()
            } else {
                format!("{:.0}", median(updates.into_iter()))
            },
            per_sec / baseline,
            case.target,
        );
    }
    println!();
    println!(
        "p50, p99 and CPU per reply are each the median over the runs of that run's figure; \
         server CPU is the answering process's (the bare one for (a)), client CPU the load \
         client's (with the updater, when one runs), on the same cores."
    );
}

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
    sorted[sorted.len() / 2]
}

/// The 1-minute load average: the machine is shared, so say how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
