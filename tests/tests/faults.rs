//! Faults: a full, read-only or vanished backups directory, a locked
//! source, symlinks planted in the backups directory, bursts beyond the copy
//! bound and client deadlines. Each must end in a clear status, an audit
//! event and nothing partial on disk.
//!
//! The filesystem tests mount tmpfs, so they need root (as CI runs them);
//! they fail, never skip, when mounting is refused.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use backup_tests::*;

/// Error messages of failed audit events of one type, oldest first.
fn failures(data: &DataDir, event_type: &str) -> Vec<(i64, String)> {
    let conn = state_store(data);
    let mut stmt = conn
        .prepare(
            "SELECT user_id, error_message FROM audit_events
             WHERE event_type = ?1 AND NOT success ORDER BY id",
        )
        .expect("select failures");
    stmt.query_map([event_type], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query failures")
        .collect::<Result<_, _>>()
        .expect("read failures")
}

/// The catalog's file names, sorted.
fn catalog(data: &DataDir) -> Vec<String> {
    let conn = state_store(data);
    let mut stmt = conn
        .prepare("SELECT filename FROM backups ORDER BY filename")
        .expect("select backups");
    stmt.query_map([], |r| r.get(0))
        .expect("query backups")
        .collect::<Result<_, _>>()
        .expect("read backups")
}

fn status_message<T: std::fmt::Debug>(result: Result<T, Error>) -> (Code, String) {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(Error::Status { code, message, .. }) => (code, message),
        Err(e) => panic!("not a status: {e}"),
    }
}

fn assert_nothing_partial(dir: &Path) {
    let names = file_names(dir);
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(".tmp-") || n.starts_with(".deleting-")),
        "partial files left: {names:?}"
    );
}

/// On full copies; the repository's full, read-only and vanished
/// directories are in `tests/repository.rs`.
#[tokio::test]
async fn a_full_backups_filesystem_is_resource_exhausted_and_leaves_nothing() {
    let data = DataDir::new().keeping_full_copies();
    let vol = data.path().join("vol");
    let _tmpfs = Tmpfs::mount(&vol, "4m");
    let backups_dir = vol.join("backups");
    let server = data.start(&["--backups-dir", backups_dir.to_str().unwrap()]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    let before = backups.create(Some("before")).await.unwrap();

    // Fill most of the filesystem, then make the source bigger than what
    // is left.
    let filler = vol.join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();
    grow_source(&data, 600);
    assert!(std::fs::metadata(data.source()).unwrap().len() > 2 << 20);

    let (code, message) = status_message(backups.create(Some("full")).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("disk space"), "{message}");
    assert_eq!(file_names(&backups_dir), ["before.db"], "a partial file");
    assert_eq!(catalog(&data), ["before.db"]);
    let failed = failures(&data, "backup_files.create");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, 1);
    assert!(failed[0].1.contains("disk space"), "{failed:?}");
    // Nothing was deleted to make room, and listing still works.
    assert_eq!(backups.list_all().await.unwrap(), vec![before]);

    std::fs::remove_file(&filler).unwrap();
    let after = backups.create(Some("full")).await.unwrap();
    assert_eq!(file_names(&backups_dir), ["before.db", "full.db"]);
    assert!(integrity_ok(&backups_dir.join("full.db")));
    assert_eq!(after.size_bytes as u64, {
        std::fs::metadata(backups_dir.join("full.db"))
            .unwrap()
            .len()
    });
}

/// On full copies; the repository's full, read-only and vanished
/// directories are in `tests/repository.rs`.
#[tokio::test]
async fn a_read_only_backups_directory_is_failed_precondition_and_leaves_nothing() {
    let data = DataDir::new().keeping_full_copies();
    let vol = data.path().join("vol");
    let tmpfs = Tmpfs::mount(&vol, "8m");
    let backups_dir = vol.join("backups");
    let server = data.start(&["--backups-dir", backups_dir.to_str().unwrap()]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    backups.create(Some("before")).await.unwrap();

    tmpfs.remount("ro");
    let (code, message) = status_message(backups.create(Some("x")).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(
        message.contains("backups directory is not writable"),
        "{message}"
    );
    let failed = failures(&data, "backup_files.create");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("not writable"), "{failed:?}");
    // Reading goes on; deleting says why it cannot.
    let listed = backups.list_all().await.unwrap();
    assert_eq!(listed.len(), 1);
    let dest = data.path().join("copy.db");
    backups
        .download_to("before.db", &dest, |_, _| {})
        .await
        .unwrap();
    let (code, message) = status_message(backups.delete("before.db", false).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("not writable"), "{message}");
    assert_eq!(file_names(&backups_dir), ["before.db"]);
    assert_eq!(catalog(&data), ["before.db"]);

    tmpfs.remount("rw");
    backups.create(Some("x")).await.unwrap();
    assert_eq!(file_names(&backups_dir), ["before.db", "x.db"]);
    assert!(integrity_ok(&backups_dir.join("x.db")));
}

/// The server does not recreate a backups directory that vanished while it
/// runs: a missing directory often means an unmounted volume, and
/// recreating it would put backups silently on the wrong disk. Calls that
/// need it are FAILED_PRECONDITION saying so, everything else goes on, and
/// once an operator puts the directory back (or restarts the server, which
/// creates it) backups work again. On full copies; the repository's
/// counterpart is in `tests/repository.rs`.
#[tokio::test]
async fn a_deleted_backups_directory_is_reported_and_the_server_keeps_serving() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&[]);
    let client = server.client(&data.token(1, true)).await;
    let mut backups = client.backups();
    backups.create(Some("before")).await.unwrap();

    std::fs::remove_dir_all(data.backups_dir()).unwrap();
    for result in [
        backups.create(Some("x")).await.map(|_| ()),
        backups.list_all().await.map(|_| ()),
        backups
            .download_to("before.db", &data.path().join("d.db"), |_, _| {})
            .await
            .map(|_| ()),
        backups.delete("before.db", false).await,
    ] {
        let (code, message) = status_message(result);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(
            message.contains("backups directory does not exist"),
            "{message}"
        );
    }
    assert!(!data.backups_dir().exists(), "recreated behind our back");
    assert_eq!(
        client.health("").await.unwrap(),
        backup_client::proto_health::health_check_response::ServingStatus::Serving
    );
    let failed = failures(&data, "backup_files.create");
    assert_eq!(failed.len(), 1, "{failed:?}");
    // The catalog keeps its rows while the directory is away.
    assert_eq!(catalog(&data), ["before.db"]);

    std::fs::create_dir(data.backups_dir()).unwrap();
    let after = backups.create(Some("after")).await.unwrap();
    assert!(integrity_ok(&data.backups_dir().join("after.db")));
    // The lost file drops out of the catalog, audited.
    assert_eq!(backups.list_all().await.unwrap(), vec![after]);
    assert_eq!(catalog(&data), ["after.db"]);
    assert_eq!(file_names(&data.backups_dir()), ["after.db"]);
    let reconciled = audit_events(&data, "backup_files.reconciled");
    assert_eq!(
        reconciled.last().unwrap().2["removed_missing"],
        serde_json::json!(["before.db"])
    );
}

/// Kills a helper process on drop.
#[tokio::test]
async fn a_wal_source_under_a_steady_writer_is_backed_up_consistently() {
    let data = DataDir::new();
    // Many copy steps, so writers commit between them.
    grow_source(&data, 6000);
    let server = data.start(&[]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    let writer = start_wal_writer(&data.source());
    let mut counts = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = backups.create(Some(&format!("live-{i}"))).await.unwrap();
        let n = consistent_ledger(&data.backup_file(&b.filename), 6000);
        counts.push(n);
    }
    drop(writer);
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(*counts.last().unwrap() > 0, "the writer never wrote");
    assert_nothing_partial(&data.backups_dir());
}

/// A rollback-journal source held by `BEGIN EXCLUSIVE` for longer than the
/// server's 30 s lock wait: FAILED_PRECONDITION after that wait (this test
/// takes about 35 s), audited, nothing partial; the next backup after the
/// lock goes works.
#[tokio::test]
async fn a_source_locked_past_the_lock_wait_fails_in_bounded_time() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    let holder = Killed(start_python(
        r#"
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=DELETE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO orders (customer_id, amount_cents, created_at) VALUES (1, 1, 'now')")
print("ready", flush=True)
time.sleep(120)
"#,
        &data.source(),
    ));
    let started = Instant::now();
    let (code, message) = status_message(backups.create(Some("locked")).await);
    let took = started.elapsed();
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("locked"), "{message}");
    assert!(
        took >= Duration::from_secs(25) && took < Duration::from_secs(40),
        "answered after {took:?}"
    );
    assert!(data.stored_backups().is_empty());
    assert!(catalog(&data).is_empty());
    let failed = failures(&data, "backup_files.create");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("locked"), "{failed:?}");

    drop(holder);
    let b = backups.create(Some("locked")).await.unwrap();
    let path = data.backup_file(&b.filename);
    assert!(integrity_ok(&path));
    // The holder's uncommitted row is not in the backup.
    assert_eq!(orders(&path).len(), 200);
}

/// On full copies, whose backups are the files beside the links; the
/// repository imports only regular files from the backups directory.
#[tokio::test]
async fn symlinks_in_the_backups_directory_are_never_followed() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&[]);
    let mut admin = server.client(&data.token(1, true)).await.backups();
    let dir = data.backups_dir();
    let outside = data.path().join("secret.db");
    std::fs::copy(data.source(), &outside).unwrap();
    let secret = std::fs::read(&outside).unwrap();
    let nowhere = data.path().join("nowhere.db");
    std::os::unix::fs::symlink(&outside, dir.join("link.db")).unwrap();
    std::os::unix::fs::symlink(&nowhere, dir.join("dangling.db")).unwrap();
    let source_before = std::fs::read(data.source()).unwrap();

    for name in ["link.db", "dangling.db"] {
        assert_eq!(code(admin.get(name).await), Code::NotFound, "{name}");
        let dest = data.path().join("stolen.db");
        assert_eq!(
            code(admin.download_to(name, &dest, |_, _| {}).await),
            Code::NotFound,
            "{name}"
        );
        assert!(!dest.exists());
        assert_eq!(code(admin.restore(name).await), Code::NotFound, "{name}");
        assert_eq!(
            code(admin.delete(name, true).await),
            Code::NotFound,
            "{name}"
        );
        // The name is free among the caller's backups: the new file goes
        // beside the link, which stays as it is.
        let stem = name.trim_end_matches(".db");
        let created = admin.create(Some(stem)).await.unwrap();
        let stored = dir.join(format!("u1~{name}"));
        assert!(std::fs::symlink_metadata(&stored).unwrap().is_file());
        assert_eq!(created.sha256, sha256_hex(&std::fs::read(&stored).unwrap()));
        admin.delete(name, false).await.unwrap();
    }
    assert!(admin.list_all().await.unwrap().is_empty());
    assert_eq!(std::fs::read(&outside).unwrap(), secret);
    assert!(!nowhere.exists(), "written through a dangling link");
    for name in ["link.db", "dangling.db"] {
        assert!(
            std::fs::symlink_metadata(dir.join(name))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
    assert_eq!(file_names(&dir), ["dangling.db", "link.db"]);

    // A catalogued backup swapped for a link: never read through it, and
    // deleting it removes the link alone.
    admin.create(Some("real")).await.unwrap();
    std::fs::remove_file(dir.join("real.db")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("real.db")).unwrap();
    let dest = data.path().join("stolen.db");
    assert_eq!(
        code(admin.download_to("real.db", &dest, |_, _| {}).await),
        Code::DataLoss
    );
    assert!(!dest.exists());
    assert_eq!(code(admin.restore("real.db").await), Code::DataLoss);
    admin.delete("real.db", false).await.unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), secret);
    assert_eq!(std::fs::read(data.source()).unwrap(), source_before);
    assert_eq!(file_names(&dir), ["dangling.db", "link.db"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_beyond_the_copy_bound_is_resource_exhausted() {
    let data = DataDir::new();
    // Big enough that one copy outlasts the burst's arrival.
    grow_source(&data, 30000);
    let server = data.start(&["--max-concurrent-copies", "1"]);
    let client = server.client(&data.token(1, true)).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut backups = client.backups();
            tokio::spawn(async move { backups.create(Some(&format!("burst-{i}"))).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut rejected = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(b) => created.push(b.filename),
            Err(e) => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                assert!(
                    e.to_string().contains("too many backups in progress"),
                    "{e}"
                );
                rejected += 1;
            }
        }
    }
    eprintln!(
        "burst: {} created, {rejected} rejected in {:?}",
        created.len(),
        started.elapsed()
    );
    // One copying and at most 4 waiting per permit when the burst arrived.
    assert!(
        (2..=5).contains(&created.len()),
        "{} created",
        created.len()
    );
    assert_eq!(rejected, 20 - created.len());
    assert_nothing_partial(&data.backups_dir());
    created.sort();
    assert_eq!(data.stored_backups(), created);
    assert_eq!(catalog(&data), created);
    for name in &created {
        assert!(integrity_ok(&data.backup_file(name)), "{name}");
    }
    let failed = failures(&data, "backup_files.create");
    assert_eq!(failed.len(), rejected);
    assert!(
        failed
            .iter()
            .all(|(_, m)| m.contains("too many backups in progress"))
    );
}

/// A client deadline cancels the copy: the server keeps nothing (no
/// temporary file, no backup, no catalog row), audits the cancellation,
/// and frees the copy permit for the next backup.
///
/// The deadline comes from grpcurl (`-max-time`, sent as `grpc-timeout`),
/// a standard gRPC client that reports DEADLINE_EXCEEDED; the test crate
/// has no tonic of its own to build a request with a timeout. A tonic
/// client that stops waiting (as its own deadline does, which tonic
/// reports as CANCELLED) is the second case.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_deadline_cancels_the_backup_and_leaves_nothing() {
    let data = DataDir::new();
    // About 1.5 GB: copying and hashing it takes over 2 s even on a CPU with
    // SHA instructions (1 GB took under 1.5 s there), so the 1 s deadlines
    // below land inside the backup.
    grow_source(&data, 375_000);
    let server = data.start(&["--max-concurrent-copies", "1"]);
    let token = data.token(1, true);
    let client = server.client(&token).await;
    let dir = data.backups_dir();

    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let call = tokio::process::Command::new(&grpcurl)
        .args(["-plaintext", "-max-time", "1", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .args(["-d", r#"{"custom_filename": "slow"}"#])
        .arg(server.url.trim_start_matches("http://"))
        .arg("backup.v1.BackupFiles/CreateBackup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {grpcurl} ({e}): run the tests with .tools/venv/bin on PATH")
        });
    let mut output = None;
    let wrote = watch_for_writes(&dir, async {
        output = Some(call.wait_with_output().await.unwrap());
    })
    .await;
    let output = output.unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        deadline_passed(&message),
        "grpcurl ({}) said: {message}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(wrote, "the backup never started before the deadline");
    assert_cancelled_and_clean(&data, 1).await;

    // A tonic client that stops waiting.
    let mut backups = client.backups();
    let wrote = watch_for_writes(&dir, async {
        let waited =
            tokio::time::timeout(Duration::from_millis(1000), backups.create(Some("slow"))).await;
        assert!(waited.is_err(), "finished before the deadline: {waited:?}");
    })
    .await;
    assert!(wrote, "the backup never started before the deadline");
    assert_cancelled_and_clean(&data, 2).await;

    // The permit is free again: the same backup without a deadline works.
    let b = backups.create(Some("slow")).await.unwrap();
    assert_eq!(data.stored_backups(), ["slow.db"]);
    assert_eq!(catalog(&data), ["slow.db"]);
    assert!(integrity_ok(&data.backup_file(&b.filename)));
}

/// Runs `call`, noting whether `dir` took new bytes meanwhile: a full
/// copy's scratch file, or a repository's packs.
async fn watch_for_writes(dir: &Path, call: impl std::future::Future<Output = ()>) -> bool {
    let mut call = std::pin::pin!(call);
    let before = bytes_under(dir);
    let mut seen = false;
    loop {
        seen |= bytes_under(dir) > before;
        tokio::select! {
            () = &mut call => return seen,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

/// Waits for the `n`th failed `backup_files.create`, a cancellation, then
/// checks nothing was kept.
async fn assert_cancelled_and_clean(data: &DataDir, n: usize) {
    let failed = wait_for(
        "the cancelled backup to be audited",
        Duration::from_secs(30),
        || Some(failures(data, "backup_files.create")).filter(|f| f.len() >= n),
    )
    .await;
    assert_eq!(failed.len(), n, "{failed:?}");
    assert!(failed[n - 1].1.contains("cancelled"), "{failed:?}");
    let left = data.stored_backups();
    assert!(left.is_empty(), "left: {left:?}");
    assert!(catalog(data).is_empty());
}
