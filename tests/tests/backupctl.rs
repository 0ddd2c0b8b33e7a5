//! `backupctl` as people and scripts use it: the real binary against a real
//! server, with the URL and token from the environment. Checks the tables,
//! the `--json` output and every documented exit code (4, not serving, is
//! checked in operations.rs, where the state store is made to fail).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use backup_tests::*;
use serde_json::Value;

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

/// Asserts exit 1 (a refusal) with `what` (a gRPC code, or the reason) on
/// stderr.
fn refused(out: &Output, what: &str) {
    exits(out, 1);
    assert!(stderr(out).contains(what), "{out:?}");
}

/// The JSON document a successful `--json` command printed.
fn json(out: &Output) -> Value {
    exits(out, 0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// `backupctl backups download NAME -o DEST`.
fn download(url: &str, token: &str, name: &str, dest: &Path) -> Output {
    let dest = dest.to_str().expect("a UTF-8 path");
    backupctl(url, token, &["backups", "download", name, "-o", dest])
}

fn sha256_of(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).expect("read the file"))
}

fn text_field<'a>(backup: &'a Value, key: &str) -> &'a str {
    backup[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {backup}"))
}

/// Asserts that `bytes` are the backup `backup` (an object of `--json`)
/// describes, by each digest it carries.
fn assert_json_digests(backup: &Value, bytes: &[u8]) {
    assert_digests(
        text_field(backup, "filename"),
        text_field(backup, "blake3"),
        text_field(backup, "sha256"),
        bytes,
    );
}

/// The digest a download is checked with: `blake3` where set.
fn checked_digest(backup: &Value) -> &str {
    match text_field(backup, "blake3") {
        "" => text_field(backup, "sha256"),
        blake3 => blake3,
    }
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
    let file = data.backup_file("nightly.db");
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
    assert_json_digests(&got[0], &std::fs::read(&file).unwrap());
    assert_eq!(
        got[0]["size_bytes"],
        std::fs::metadata(&file).unwrap().len()
    );

    let copy = data.path().join("copy.db");
    let out = download(url, &user, "nightly.db", &copy);
    exits(&out, 0);
    assert!(stdout(&out).contains("verified"), "{out:?}");
    assert_eq!(sha256_of(&copy), sha256_of(&file));
    assert!(!data.path().join("copy.db.part").exists());

    // The server's refusals: exit 1, with the gRPC code on stderr.
    let out = backupctl(url, &user, &["backups", "get", "missing.db"]);
    refused(&out, "NotFound");
    let out = backupctl(url, &user, &["backups", "restore", "nightly.db"]);
    refused(&out, "PermissionDenied");
    let out = backupctl(url, "bk_wrong", &["backups", "list"]);
    refused(&out, "Unauthenticated");
    // A download that fails leaves no file behind.
    let nothing = data.path().join("nothing.db");
    let out = download(url, &user, "missing.db", &nothing);
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
    assert!(!data.stored_backups().contains(&"nightly.db".to_owned()));
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
    let events = json_lines(&out.stdout);
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
    refused(&out, "InvalidArgument");

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

/// The type of `path` itself, not of what a symlink points to.
fn file_type(path: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(path).expect("stat").file_type()
}

/// Where a download to `dest` is staged.
fn part_of(dest: &Path) -> PathBuf {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

#[tokio::test]
async fn download_to_stdout_and_never_over_a_special_file() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let url = server.url.as_str();
    // Admins may always download; users only where the operator allows it.
    let admin = data.token(1, true);
    exits(
        &backupctl(url, &admin, &["backups", "create", "--name", "nightly"]),
        0,
    );
    let got = json(&backupctl(
        url,
        &admin,
        &["--json", "backups", "get", "nightly.db"],
    ));
    let nightly = got[0].clone();

    // `-o -`: the bytes on stdout, every message on stderr (with --json too).
    for json_flag in [&[][..], &["--json"][..]] {
        let args = [json_flag, &["backups", "download", "nightly.db", "-o", "-"]].concat();
        let out = backupctl(url, &admin, &args);
        exits(&out, 0);
        assert_json_digests(&nightly, &out.stdout);
        assert!(stderr(&out).contains(checked_digest(&nightly)), "{out:?}");
    }
    // Refused before any byte: nothing on stdout, and nothing to disown.
    let out = download(url, &admin, "missing.db", Path::new("-"));
    exits(&out, 1);
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(stderr(&out).contains("NotFound"), "{out:?}");
    assert!(!stderr(&out).contains("do not trust"), "{out:?}");

    // A write that fails (stdout on a full disk) is exit 1, naming the error
    // and disowning what was written.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full for writing");
    let out = backupctl_command(url, &admin)
        .args(["backups", "download", "nightly.db", "-o", "-"])
        .stdout(full)
        .output()
        .expect("run backupctl");
    exits(&out, 1);
    let said = stderr(&out);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(said.contains("do not trust"), "{said}");

    // Anything but a regular file is refused before anything is
    // downloaded: exit 2, saying what is there, and it stays as it was.
    let download_over = |dest: &Path, kind: &str| {
        let out = download(url, &admin, "nightly.db", dest);
        exits(&out, 2);
        assert!(stderr(&out).contains(kind), "{out:?}");
        assert!(!part_of(dest).exists(), "{out:?}");
    };
    let target = data.path().join("target.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = data.path().join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    download_over(&link, "symbolic link");
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // As root, renaming over /dev/full used to replace the device.
    let full = Path::new("/dev/full");
    download_over(full, "character device");
    assert!(file_type(full).is_char_device());
    let fifo = data.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    download_over(&fifo, "FIFO");
    assert!(file_type(&fifo).is_fifo());
    download_over(data.path(), "directory");

    // An existing regular file is still replaced, and a stale .part too.
    let old = data.path().join("old.db");
    std::fs::write(&old, "an older download").unwrap();
    std::fs::write(data.path().join("old.db.part"), "a stale part").unwrap();
    let out = download(url, &admin, "nightly.db", &old);
    exits(&out, 0);
    assert_json_digests(&nightly, &std::fs::read(&old).unwrap());
    assert!(!part_of(&old).exists());
}

#[tokio::test]
async fn token_expiry_must_be_a_day_and_revoke_says_when_nothing_was_revoked() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let token = |args: &[&str]| {
        data.command()
            .arg("token")
            .args(args)
            .output()
            .expect("run backup-server token")
    };
    let out = token(&["create", "--user-id", "3", "--expires-in-days", "0"]);
    exits(&out, 2);
    assert!(stdout(&out).is_empty(), "{out:?}");
    let out = token(&["create", "--user-id", "3", "--expires-in-days", "1"]);
    exits(&out, 0);
    let minted = stdout(&out).trim().to_owned();
    exits(&backupctl(&server.url, &minted, &["backups", "list"]), 0);

    // Only the one token made above exists.
    let listed = stdout(&token(&["list"]));
    let rows = json_lines(listed.as_bytes());
    assert_eq!(rows.len(), 1, "{listed}");
    assert!(rows[0]["expires_at"].is_string(), "{listed}");
    let id = rows[0]["id"].to_string();

    exits(&token(&["revoke", &id]), 0);
    // The server takes a token it accepted on trust for up to its cache's
    // TTL: it cannot hear of a revocation another process made.
    let deadline = std::time::Instant::now() + backup_server::auth::cache::TTL * 3;
    let out = loop {
        let out = backupctl(&server.url, &minted, &["backups", "list"]);
        if !out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    refused(&out, "Unauthenticated");
    let out = token(&["revoke", &id]);
    refused(&out, "already revoked");
    let out = token(&["revoke", "999999"]);
    refused(&out, "no token with id 999999");
}

/// The subcommand names under `Commands:` in a help text.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_groups_help_names_its_real_subcommands() {
    let groups = listed_commands(&stdout(&backupctl("", "", &["--help"])));
    assert!(groups.contains(&"settings".to_owned()), "{groups:?}");
    let mut checked = 0;
    for group in groups {
        let out = backupctl("", "", &[&group, "--help"]);
        exits(&out, 0);
        let help = stdout(&out);
        let names = listed_commands(&help);
        if names.is_empty() {
            continue;
        }
        // The first line, the group's about, lists them: "Title: a, b, c".
        let about = help.lines().next().unwrap_or_default();
        let (_, list) = about.rsplit_once(": ").unwrap_or_default();
        let said: Vec<&str> = list.trim_end_matches('.').split(", ").collect();
        assert_eq!(said, names, "`backupctl {group} --help`: {about}");
        checked += 1;
    }
    assert_eq!(checked, 5, "backups, settings, scheduler, retention, audit");
    let settings = stdout(&backupctl("", "", &["settings", "--help"]));
    assert!(
        settings.lines().next().unwrap_or_default().contains("get"),
        "{settings}"
    );
}

#[tokio::test]
async fn verify_finds_damage_and_list_get_download_and_restore_show_it() {
    // Damages a backup's file: full copies. The repository's damage is in
    // `tests/repository.rs`.
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&["--no-scheduler"]);
    let url = server.url.as_str();
    let (user, admin) = (data.token(2, false), data.token(1, true));
    exits(
        &backupctl(url, &admin, &["backups", "create", "--name", "precious"]),
        0,
    );
    let never = json(&backupctl(url, &admin, &["--json", "backups", "list"]));
    assert_eq!(never[0]["last_verified_at"], Value::Null, "{never}");
    assert!(stdout(&backupctl(url, &admin, &["backups", "list"])).contains("never"));

    // A good backup: exit 0, and it is no longer "never" verified.
    let out = backupctl(url, &admin, &["backups", "verify", "precious.db"]);
    exits(&out, 0);
    assert!(!stdout(&out).contains("never"), "{out:?}");
    let good = json(&backupctl(
        url,
        &admin,
        &["--json", "backups", "get", "precious.db"],
    ));
    assert_eq!(good[0]["damaged"], false, "{good}");
    assert_eq!(good[0]["damage"], "", "{good}");
    assert!(good[0]["last_verified_at"].is_string(), "{good}");

    // Damaged on disk: verify is DataLoss, exit 1, and the backup is marked.
    let file = data.backups_dir().join("precious.db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open the backup")
        .set_len(0)
        .expect("truncate it");
    let out = backupctl(url, &admin, &["backups", "verify", "precious.db"]);
    refused(&out, "DataLoss");
    let table = stdout(&backupctl(url, &admin, &["backups", "list"]));
    let row = table
        .lines()
        .find(|line| line.contains("precious.db") && line.starts_with('|'))
        .unwrap_or_else(|| panic!("no row for precious.db: {table}"));
    assert!(row.contains("DAMAGED") && !row.contains("never"), "{table}");
    assert!(
        table.contains("DAMAGED: precious.db (owner 1): "),
        "{table}"
    );
    let listed = json(&backupctl(url, &admin, &["--json", "backups", "list"]));
    assert_eq!(listed[0]["filename"], "precious.db");
    assert_eq!(listed[0]["damaged"], true, "{listed}");
    assert_ne!(listed[0]["damage"], "", "{listed}");

    // Download and restore refuse it too, and no file is left behind.
    let dest = data.path().join("precious-copy.db");
    let out = download(url, &admin, "precious.db", &dest);
    refused(&out, "DataLoss");
    assert!(!dest.exists() && !part_of(&dest).exists());
    let out = backupctl(url, &admin, &["backups", "restore", "precious.db"]);
    refused(&out, "DataLoss");
    // The owner of nothing of that name: NotFound, not the admin's backup.
    let out = backupctl(url, &user, &["backups", "verify", "precious.db"]);
    refused(&out, "NotFound");
}

#[tokio::test]
async fn owner_names_whose_backup_when_two_owners_share_a_name() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let url = server.url.as_str();
    let (user, admin) = (data.token(2, false), data.token(1, true));
    for token in [&user, &admin] {
        exits(
            &backupctl(url, token, &["backups", "create", "--name", "shared"]),
            0,
        );
    }
    let owner_of = |args: &[&str]| {
        let got = json(&backupctl(
            url,
            &admin,
            &[&["--json", "backups", "get", "shared.db"][..], args].concat(),
        ));
        got[0]["owner_user_id"].as_i64().expect("an owner")
    };
    assert_eq!(owner_of(&[]), 1);
    assert_eq!(owner_of(&["--owner", "2"]), 2);
    assert_eq!(owner_of(&["--owner", "1"]), 1);
    let out = backupctl(
        url,
        &admin,
        &["backups", "get", "shared.db", "--owner", "3"],
    );
    refused(&out, "NotFound");

    // verify, download and delete reach user 2's backup with --owner.
    exits(
        &backupctl(
            url,
            &admin,
            &["backups", "verify", "shared.db", "--owner", "2"],
        ),
        0,
    );
    let theirs = json(&backupctl(
        url,
        &user,
        &["--json", "backups", "get", "shared.db"],
    ));
    assert!(theirs[0]["last_verified_at"].is_string(), "{theirs}");
    let out = backupctl(
        url,
        &admin,
        &[
            "backups",
            "download",
            "shared.db",
            "--owner",
            "2",
            "-o",
            "-",
        ],
    );
    exits(&out, 0);
    assert_json_digests(&theirs[0], &out.stdout);
    exits(
        &backupctl(
            url,
            &admin,
            &["backups", "delete", "shared.db", "--owner", "2"],
        ),
        0,
    );
    exits(&backupctl(url, &user, &["backups", "get", "shared.db"]), 1);
    assert_eq!(owner_of(&[]), 1);
}
