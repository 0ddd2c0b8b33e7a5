//! `backupctl` as people and scripts use it: the real binary against a real
//! server, with the URL and token from the environment. Checks the tables,
//! the `--json` output and every documented exit code (4, not serving, is
//! checked in operations.rs, where the state store is made to fail).

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use backup_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing everything the command printed if not.
fn exits(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
}

/// The JSON document a successful `--json` command printed.
fn json(out: &Output) -> Value {
    exits(out, 0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn sha256_of(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read the file")))
}

#[tokio::test]
async fn backups_from_create_to_delete_with_tables_json_and_exit_codes() {
    let data = DataDir::new();
    // The user downloads their own backup, as on a single-tenant source.
    let server = data.start(&["--no-scheduler", "--allow-user-downloads"]);
    let url = server.url.as_str();
    let (user, admin) = (data.token(2, false), data.token(1, true));

    let out = backupctl(url, &user, &["backups", "list"]);
    exits(&out, 0);
    assert_eq!(stdout(&out).trim(), "no backups");

    let out = backupctl(url, &user, &["backups", "create", "--name", "nightly"]);
    exits(&out, 0);
    assert!(stdout(&out).contains("nightly.db"), "{out:?}");
    let file = data.backups_dir().join("nightly.db");
    assert!(integrity_ok(&file));

    let got = json(&backupctl(
        url,
        &user,
        &["--json", "backups", "get", "nightly.db"],
    ));
    assert_eq!(got[0]["filename"], "nightly.db");
    assert_eq!(got[0]["kind"], "manual");
    assert_eq!(got[0]["owner_user_id"], 2);
    assert_eq!(got[0]["is_protected"], false);
    assert_eq!(got[0]["sha256"], sha256_of(&file));
    assert_eq!(
        got[0]["size_bytes"],
        std::fs::metadata(&file).unwrap().len()
    );

    let copy = data.path().join("copy.db");
    let copy_arg = copy.to_str().unwrap();
    let out = backupctl(
        url,
        &user,
        &["backups", "download", "nightly.db", "-o", copy_arg],
    );
    exits(&out, 0);
    assert!(stdout(&out).contains("verified"), "{out:?}");
    assert_eq!(sha256_of(&copy), sha256_of(&file));
    assert!(!data.path().join("copy.db.part").exists());

    // The server's refusals: exit 1, with the gRPC code on stderr.
    let out = backupctl(url, &user, &["backups", "get", "missing.db"]);
    exits(&out, 1);
    assert!(stderr(&out).contains("NotFound"), "{out:?}");
    let out = backupctl(url, &user, &["backups", "restore", "nightly.db"]);
    exits(&out, 1);
    assert!(stderr(&out).contains("PermissionDenied"), "{out:?}");
    let out = backupctl(url, "bk_wrong", &["backups", "list"]);
    exits(&out, 1);
    assert!(stderr(&out).contains("Unauthenticated"), "{out:?}");
    // A download that fails leaves no file behind.
    let nothing = data.path().join("nothing.db");
    let out = backupctl(
        url,
        &user,
        &[
            "backups",
            "download",
            "missing.db",
            "-o",
            nothing.to_str().unwrap(),
        ],
    );
    exits(&out, 1);
    assert!(
        file_names(data.path())
            .iter()
            .all(|n| !n.starts_with("nothing"))
    );

    let restored = json(&backupctl(
        url,
        &admin,
        &["--json", "backups", "restore", "nightly.db"],
    ));
    assert_eq!(restored["restored"]["filename"], "nightly.db");
    let pre = &restored["pre_restore_backup"];
    assert!(
        pre["filename"]
            .as_str()
            .unwrap()
            .starts_with("pre_restore_backup"),
        "{pre}"
    );
    assert_eq!(pre["is_protected"], true);
    let table = stdout(&backupctl(url, &admin, &["backups", "list"]));
    assert!(
        table.contains("FILENAME") && table.contains("pre_restore") && table.contains("yes"),
        "{table}"
    );

    let out = backupctl(url, &user, &["backups", "delete", "nightly.db"]);
    exits(&out, 0);
    assert!(!file.exists());
    assert_eq!(
        json(&backupctl(url, &user, &["--json", "backups", "list"])),
        Value::Array(Vec::new())
    );

    // What happened, as JSON lines from the audit log.
    let out = backupctl(
        url,
        &admin,
        &["--json", "audit", "list", "--type", "backup_files."],
    );
    exits(&out, 0);
    let events: Vec<Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON event per line"))
        .collect();
    let mine: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["resource_id"] == "nightly.db")
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                if e["success"] == true { "ok" } else { "failed" },
            )
        })
        .collect();
    assert_eq!(
        mine,
        [
            ("backup_files.create", "ok"),
            ("backup_files.download", "ok"),
            ("backup_files.restore", "failed"),
            ("backup_files.restore", "ok"),
            ("backup_files.delete", "ok"),
        ]
    );
}

#[tokio::test]
async fn audit_watch_replays_then_follows_new_events() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let (user, admin) = (data.token(2, false), data.token(1, true));
    let out = backupctl(
        &server.url,
        &user,
        &["backups", "create", "--name", "first"],
    );
    exits(&out, 0);

    let mut watch = backupctl_command(&server.url, &admin)
        .args(["--json", "audit", "watch", "--after", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start backupctl audit watch");
    let (lines, received) = mpsc::channel();
    let output = watch.stdout.take().expect("its stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .expect("an event line in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    // The stored event first, then one committed while watching.
    let replayed = next();
    assert_eq!(replayed["event_type"], "backup_files.create");
    assert_eq!(replayed["resource_id"], "first.db");
    let out = backupctl(
        &server.url,
        &user,
        &["backups", "create", "--name", "second"],
    );
    exits(&out, 0);
    let live = next();
    assert_eq!(live["resource_id"], "second.db");
    assert!(live["id"].as_i64() > replayed["id"].as_i64());
    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch ended on its own"
    );
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[tokio::test]
async fn health_connect_usage_and_overdue_exit_codes() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let url = server.url.as_str();
    let (user, admin) = (data.token(2, false), data.token(1, true));

    let out = backupctl(url, "", &["health"]);
    exits(&out, 0);
    assert_eq!(stdout(&out).trim(), "SERVING");
    let status = json(&backupctl(
        url,
        "",
        &["--json", "health", "--service", "backup.v1.BackupFiles"],
    ));
    assert_eq!(status["status"], "SERVING");
    let (_refusing, port) = refusing_port();
    let nobody = format!("http://127.0.0.1:{port}");
    let out = backupctl(&nobody, "", &["health"]);
    exits(&out, 3);
    assert!(stderr(&out).contains("cannot connect"), "{out:?}");
    // Flags win over the environment.
    let out = backupctl_command(&nobody, "bk_wrong")
        .args(["--url", url, "--token", &user, "backups", "list"])
        .output()
        .expect("run backupctl");
    exits(&out, 0);
    exits(&backupctl(url, &user, &["backups", "frobnicate"]), 2);
    exits(
        &backupctl(url, &user, &["settings", "update", "--frequency", "hourly"]),
        2,
    );
    // Bad values the server checks: exit 1, naming the field.
    let out = backupctl(url, &user, &["settings", "update", "--keep", "31"]);
    exits(&out, 1);
    assert!(stderr(&out).contains("InvalidArgument"), "{out:?}");

    let out = backupctl(
        url,
        &user,
        &[
            "settings",
            "update",
            "--time",
            "03:00",
            "--timezone",
            "Asia/Tokyo",
        ],
    );
    exits(&out, 0);
    assert!(stdout(&out).contains("Asia/Tokyo"), "{out:?}");
    let out = backupctl(url, &admin, &["scheduler", "overdue"]);
    exits(&out, 0);
    assert_eq!(stdout(&out).trim(), "no overdue users");

    // Created three days ago and never backed up: a daily schedule is overdue.
    let changed = state_store(&data)
        .execute(
            "UPDATE backup_settings SET created_at = ?1 WHERE user_id = 2",
            [db_time(chrono::Utc::now() - chrono::Duration::days(3))],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let out = backupctl(url, &admin, &["--json", "scheduler", "overdue"]);
    exits(&out, 5);
    let overdue: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(overdue.as_array().map(Vec::len), Some(1), "{overdue}");
    assert_eq!(overdue[0]["user_id"], 2);
    // Only an admin may ask.
    exits(&backupctl(url, &user, &["scheduler", "overdue"]), 1);

    let out = backupctl(url, "", &["completions", "bash"]);
    exits(&out, 0);
    assert!(stdout(&out).contains("backupctl"), "{out:?}");
}
