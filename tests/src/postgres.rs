//! Databases in the throwaway PostgreSQL cluster tests/run.sh starts and
//! names in `BACKUP_TEST_POSTGRES` (a URL of its `postgres` database).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A new, empty database in the cluster: its URL.
///
/// Panics if `BACKUP_TEST_POSTGRES` is not set (run tests/run.sh), or with
/// `createdb`'s output if it fails.
pub fn new_database() -> String {
    let Ok(server) = std::env::var("BACKUP_TEST_POSTGRES") else {
        panic!(
            "BACKUP_TEST_POSTGRES names no PostgreSQL server: run tests/run.sh, which starts \
             a throwaway cluster and sets it"
        );
    };
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let made = MADE.fetch_add(1, Ordering::Relaxed);
    let name = format!("e2e_{}_{nanos}_{made}", std::process::id());
    // libpq takes a URL wherever it takes a database name; tests/run.sh
    // puts the cluster's programs first on the PATH.
    let out = Command::new("createdb")
        .arg(format!("--maintenance-db={server}"))
        .arg(&name)
        .output()
        .expect("run createdb");
    assert!(out.status.success(), "createdb: {out:?}");
    let (cluster, _) = server.rsplit_once('/').expect("a URL with a database");
    format!("{cluster}/{name}")
}
