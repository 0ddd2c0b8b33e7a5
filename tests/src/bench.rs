//! What the benchmarks share: knobs from the environment, timed samples,
//! the `sqlite3 .backup` baseline, a process's memory, and the words of
//! text-like rows.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A benchmark setting from the environment variable `name`, or `default`;
/// anything but a whole number is refused.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

/// One timed run: wall time and CPU seconds.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: f64,
}

/// The sample with the median wall time.
pub fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|s| s.wall);
    sorted[sorted.len() / 2]
}

/// The median CPU time, on its own.
pub fn median_cpu(samples: &[Sample]) -> f64 {
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu).collect();
    cpu.sort_by(f64::total_cmp);
    cpu[cpu.len() / 2]
}

/// `sqlite3 SRC '.backup DST'`, run by bash so its `times` builtin reports
/// the child's CPU time (bash adds a few milliseconds of wall time).
pub fn sqlite3_backup(source: &Path, dst: &Path) -> Sample {
    let t = Instant::now();
    let out = Command::new("bash")
        .args(["-c", r#"sqlite3 "$1" "$2" && times"#, "bash"])
        .arg(source)
        .arg(format!(".backup '{}'", dst.display()))
        .output()
        .expect("run bash -c sqlite3");
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "sqlite3 .backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `times` prints the shell's user/system times, then its children's:
    // "0m3.100s 0m0.500s".
    let stdout = String::from_utf8_lossy(&out.stdout);
    let children = stdout
        .lines()
        .rfind(|l| l.contains('m') && l.ends_with('s'))
        .unwrap_or_else(|| panic!("no `times` output in {stdout:?}"));
    let cpu = children
        .split_whitespace()
        .map(|t| {
            let (m, s) = t
                .trim_end_matches('s')
                .split_once('m')
                .unwrap_or_else(|| panic!("bad `times` field {t:?}"));
            m.parse::<f64>().expect("minutes") * 60.0 + s.parse::<f64>().expect("seconds")
        })
        .sum();
    Sample { wall, cpu }
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The words text-like rows are made of.
pub const WORDS: [&str; 32] = [
    "invoice", "customer", "shipped", "pending", "order", "payment", "refund", "address", "street",
    "city", "berlin", "paris", "lisbon", "total", "amount", "euro", "note", "delivery", "express",
    "standard", "returned", "item", "quantity", "price", "discount", "account", "active", "closed",
    "review", "rating", "comment", "support",
];
