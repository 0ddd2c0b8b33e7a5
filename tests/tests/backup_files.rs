//! BackupFiles end to end: a real server process, real SQLite files.

use std::time::{Duration, Instant};

use backup_tests::*;

#[tokio::test]
async fn create_list_get_download_restore_delete_round_trip() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let mut backups = admin.backups();

    let before = orders(&data.source());
    let created = backups.create(Some("round-trip")).await.unwrap();
    assert_eq!(created.filename, "round-trip.db");
    assert_eq!(created.kind, proto::BackupKind::Manual as i32);
    assert_eq!(created.owner_user_id, 1);
    assert!(!created.is_protected);
    assert!(created.size_bytes > 0);
    let stored = data.backup_file("round-trip.db");
    let on_disk = std::fs::read(&stored).unwrap();
    assert_backup_bytes(&created, &on_disk);
    assert!(integrity_ok(&stored));

    assert_eq!(backups.get("round-trip.db").await.unwrap(), created);
    let listed = backups.list_all().await.unwrap();
    assert_eq!(listed, vec![created.clone()]);

    let dest = data.path().join("downloaded.db");
    let mut last_progress = (0, 0);
    let got = backups
        .download_to("round-trip.db", &dest, |done, total| {
            last_progress = (done, total)
        })
        .await
        .unwrap();
    assert_eq!(got, created);
    assert_eq!(std::fs::read(&dest).unwrap(), on_disk);
    assert_eq!(
        last_progress,
        (created.size_bytes as u64, created.size_bytes as u64)
    );

    // Change the source, then restore: it must equal the backed-up state,
    // and the pre-restore backup must hold the changed state.
    let conn = open(&data.source());
    conn.execute("DELETE FROM orders WHERE id % 2 = 0", [])
        .unwrap();
    conn.execute(
        "INSERT INTO orders (customer_id, amount_cents, created_at) VALUES (1, 1, 'now')",
        [],
    )
    .unwrap();
    let changed = orders(&data.source());
    assert_ne!(changed, before);

    let (restored, pre) = backups.restore("round-trip.db").await.unwrap();
    assert_eq!(restored.filename, "round-trip.db");
    assert!(
        pre.filename.starts_with("pre_restore_backup_"),
        "{}",
        pre.filename
    );
    assert!(pre.is_protected);
    assert_eq!(pre.kind, proto::BackupKind::PreRestore as i32);
    assert_eq!(pre.owner_user_id, 0);
    // The still-open connection sees the restored content too.
    let through_old_conn: i64 = conn
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(through_old_conn as usize, before.len());
    assert_eq!(orders(&data.source()), before);
    assert!(integrity_ok(&data.source()));
    assert_eq!(orders(&data.backup_file(&pre.filename)), changed);

    // Only the pages that differ are written: restoring again onto the
    // restored source writes page 1 alone.
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let (_, again) = backups.restore("round-trip.db").await.unwrap();
    let restores = audit_events(&data, "backup_files.restore");
    let written: Vec<(i64, i64)> = restores
        .iter()
        .map(|(_, _, d)| {
            let count = |key: &str| d[key].as_i64().unwrap_or_else(|| panic!("{key} in {d}"));
            (count("pages_written"), count("pages"))
        })
        .collect();
    assert_eq!(written.len(), 2);
    assert!(
        (2..=pages).contains(&written[0].0),
        "{written:?} of {pages}"
    );
    assert_eq!(written[0].1, pages);
    assert_eq!(written[1], (1, pages));
    assert_eq!(orders(&data.source()), before);
    backups.delete(&again.filename, true).await.unwrap();

    backups.delete("round-trip.db", false).await.unwrap();
    assert_eq!(code(backups.get("round-trip.db").await), Code::NotFound);
    assert!(!data.stored_backups().contains(&"round-trip.db".to_owned()));
    // The protected pre-restore backup needs force.
    assert_eq!(
        code(backups.delete(&pre.filename, false).await),
        Code::FailedPrecondition
    );
    backups.delete(&pre.filename, true).await.unwrap();
    assert!(backups.list_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn backups_under_a_continuous_writer_are_consistent() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut backups = server.client(&data.token(1, false)).await.backups();
    let writer = start_wal_writer(&data.source());
    let mut counts = Vec::new();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        let b = backups.create(Some(&format!("live-{i}"))).await.unwrap();
        let path = data.backup_file(&b.filename);
        assert!(integrity_ok(&path), "{} fails integrity_check", b.filename);
        let conn = open(&path);
        let (n, max): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(max(id), 0) FROM ledger",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(n, max, "{}: ids have a gap", b.filename);
        assert_eq!(n % 10, 0, "{}: a transaction was torn", b.filename);
        counts.push(n);
    }
    drop(writer);
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(
        counts.last().unwrap() > &0,
        "the writer never wrote: {counts:?}"
    );
}

/// Full copies, whose scratch file shows the copy under way; the
/// repository's kills mid-backup are in `tests/repository.rs`.
#[tokio::test]
async fn sigkill_mid_backup_leaves_no_partial_backup() {
    let data = DataDir::new().keeping_full_copies();
    // A source big enough that the copy takes a moment.
    grow_source(&data, 60000);
    let token = data.token(1, false);
    let mut server = data.start(&[]);
    let mut backups = server.client(&token).await.backups();
    let call = tokio::spawn(async move { backups.create(Some("big")).await });
    // Wait until the copy is under way, then kill the server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file_names(&data.backups_dir())
        .iter()
        .any(|n| n.starts_with(".tmp-"))
    {
        assert!(Instant::now() < deadline, "the backup never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    assert!(call.await.unwrap().is_err());
    assert!(
        !data.backups_dir().join("big.db").exists(),
        "a partial file under the backup name"
    );

    let server = data.start(&[]);
    assert_eq!(
        file_names(&data.backups_dir()),
        Vec::<String>::new(),
        "leftovers after restart"
    );
    let mut backups = server.client(&token).await.backups();
    assert!(backups.list_all().await.unwrap().is_empty());
    let b = backups.create(Some("big")).await.unwrap();
    assert!(integrity_ok(&data.backups_dir().join(&b.filename)));
}

#[tokio::test]
async fn bad_input_gets_its_code_and_changes_nothing() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let mut backups = admin.backups();
    let long = "a".repeat(129);
    for bad in [
        "",
        "../x",
        "/abs",
        "a/b",
        ".hidden",
        "nul\0x",
        "auto_backup_x",
        "pre_restore_x",
        "pre_migration_x",
        "caf\u{e9}",
        long.as_str(),
    ] {
        let err = backups.create(Some(bad)).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{bad:?}");
        assert_eq!(err.violated_fields(), vec!["custom_filename"], "{bad:?}");
    }
    assert!(data.stored_backups().is_empty());
    backups.create(Some("dup")).await.unwrap();
    assert_eq!(
        code(backups.create(Some("dup.db")).await),
        Code::AlreadyExists
    );
    assert_eq!(code(backups.get("nope.db").await), Code::NotFound);
    assert_eq!(code(backups.get("../state.db").await), Code::NotFound);
    assert_eq!(code(backups.delete("nope.db", true).await), Code::NotFound);
    assert_eq!(code(backups.restore("nope.db").await), Code::NotFound);
    let err = backups.list_page(-1, "").await.unwrap_err();
    assert_eq!(err.violated_fields(), vec!["page_size"]);
    let err = backups.list_page(1, "forged.token").await.unwrap_err();
    assert_eq!(err.violated_fields(), vec!["page_token"]);

    // No token, an unknown token.
    let anonymous = server.client("").await;
    assert_eq!(
        code(anonymous.backups().list_all().await),
        Code::Unauthenticated
    );
    let stranger = server.client("bk_not-a-token").await;
    assert_eq!(
        code(stranger.backups().create(None).await),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_missing_or_foreign_source_fails_the_backup_and_is_never_replaced() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut backups = server.client(&data.token(1, false)).await.backups();
    std::fs::write(data.source(), b"this is not a database, but someone's data").unwrap();
    assert_eq!(
        code(backups.create(Some("x")).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        std::fs::read(data.source()).unwrap(),
        b"this is not a database, but someone's data"
    );
    std::fs::remove_file(data.source()).unwrap();
    assert_eq!(
        code(backups.create(Some("x")).await),
        Code::FailedPrecondition
    );
    assert!(
        !data.source().exists(),
        "a missing source must not be created"
    );
    assert_eq!(data.stored_backups(), Vec::<String>::new());
}

#[tokio::test]
async fn users_are_isolated_and_admin_only_operations_are_enforced() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut alice = server.client(&data.token(2, false)).await.backups();
    let mut bob = server.client(&data.token(3, false)).await.backups();
    let mut admin = server.client(&data.token(1, true)).await.backups();

    let mine = alice.create(Some("alice")).await.unwrap();
    assert_eq!(mine.owner_user_id, 2);
    bob.create(Some("bob")).await.unwrap();

    assert_eq!(alice.list_all().await.unwrap().len(), 1);
    assert_eq!(code(bob.get("alice.db").await), Code::NotFound);
    let dest = data.path().join("stolen.db");
    assert_eq!(
        code(bob.download_to("alice.db", &dest, |_, _| {}).await),
        Code::NotFound
    );
    assert!(!dest.exists());
    assert_eq!(code(bob.delete("alice.db", true).await), Code::NotFound);
    assert_eq!(
        code(alice.restore("alice.db").await),
        Code::PermissionDenied
    );
    assert!(data.stored_backups().contains(&"alice.db".to_owned()));

    let all = listed(&mut admin).await;
    assert_eq!(all.len(), 2);
    assert!(all.contains(&"alice.db".to_owned()) && all.contains(&"bob.db".to_owned()));
    admin.delete("alice.db", false).await.unwrap();
}

#[tokio::test]
async fn pages_cover_every_backup_once_newest_first() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut backups = server.client(&data.token(1, false)).await.backups();
    for i in 0..5 {
        backups.create(Some(&format!("p{i}"))).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (page, next) = backups.list_page(2, &token).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|b| b.filename));
        pages += 1;
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(seen, ["p4.db", "p3.db", "p2.db", "p1.db", "p0.db"]);
    assert!(pages >= 3);
}

#[tokio::test]
async fn files_dropped_in_by_other_tools_are_listed_and_symlinks_ignored() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut admin = server.client(&data.token(1, true)).await.backups();
    std::fs::copy(
        data.source(),
        data.backups_dir().join("pre_migration_20260101.db"),
    )
    .unwrap();
    std::fs::copy(data.source(), data.backups_dir().join("handmade.db")).unwrap();
    let outside = data.path().join("secret.db");
    std::fs::copy(data.source(), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, data.backups_dir().join("link.db")).unwrap();

    let listed = admin.list_all().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|b| b.filename.as_str()).collect();
    assert!(
        !names.contains(&"link.db"),
        "a symlink was adopted: {names:?}"
    );
    let pre = listed
        .iter()
        .find(|b| b.filename == "pre_migration_20260101.db")
        .unwrap();
    assert_eq!(pre.kind, proto::BackupKind::PreMigration as i32);
    assert!(pre.is_protected);
    let hand = listed.iter().find(|b| b.filename == "handmade.db").unwrap();
    assert_eq!(hand.kind, proto::BackupKind::Manual as i32);
    assert_eq!(hand.owner_user_id, 0);
    assert_eq!(code(admin.get("link.db").await), Code::NotFound);
    assert_eq!(code(admin.delete("link.db", true).await), Code::NotFound);
    assert!(outside.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_health_off_and_exits_zero() {
    let data = DataDir::new();
    let mut server = data.start(&[]);
    let client = server.client("").await;
    assert_eq!(
        client.health("").await.unwrap(),
        backup_client::proto_health::health_check_response::ServingStatus::Serving
    );
    for name in ["backup.v1.BackupFiles"] {
        assert_eq!(
            client.health(name).await.unwrap(),
            backup_client::proto_health::health_check_response::ServingStatus::Serving
        );
    }
    drop(client);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}
