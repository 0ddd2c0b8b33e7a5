//! Backups you can trust: damaged bytes (truncated, flipped, appended, cut
//! short) are DATA_LOSS wherever they are read, never restored or counted
//! by retention; verification on demand and on a schedule; contents and
//! names kept from other users; the manual-backup quota.

use std::path::Path;
use std::time::Duration;

use backup_client::Owners;
use backup_tests::*;

/// A blob pattern to find in a backup's bytes: flipping a byte inside it
/// leaves `PRAGMA integrity_check` "ok" (blob contents are not checked).
const MARKER: &[u8] = b"TRUST-MARKER-0123456789";

fn add_marked_blob(data: &DataDir) {
    let conn = open(&data.source());
    conn.execute_batch("CREATE TABLE IF NOT EXISTS marked (b BLOB)")
        .unwrap();
    conn.execute("INSERT INTO marked VALUES (?1)", [MARKER.repeat(200)])
        .unwrap();
}

/// How a test damages a backup file on disk.
#[derive(Clone, Copy, Debug)]
enum Damage {
    TruncatedToZero,
    FlippedInsideABlob,
    Appended,
    CutShort,
}

const EVERY_DAMAGE: [Damage; 4] = [
    Damage::TruncatedToZero,
    Damage::FlippedInsideABlob,
    Damage::Appended,
    Damage::CutShort,
];

fn damage(path: &Path, how: Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        Damage::TruncatedToZero => bytes.clear(),
        Damage::FlippedInsideABlob => {
            let at = bytes
                .windows(MARKER.len())
                .position(|w| w == MARKER)
                .expect("the marker is in the backup");
            bytes[at + 5] ^= 0x01;
        }
        Damage::Appended => bytes.extend_from_slice(&[0u8; 4096]),
        Damage::CutShort => bytes.truncate(bytes.len() - 4096),
    }
    std::fs::write(path, &bytes).unwrap();
    if matches!(how, Damage::FlippedInsideABlob) {
        assert!(
            integrity_ok(path),
            "the flipped byte must pass integrity_check, so only the digest finds it"
        );
    }
}

fn status(result: Result<impl std::fmt::Debug, Error>) -> (Code, String) {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(Error::Status { code, message, .. }) => (code, message),
        Err(e) => panic!("not a status: {e}"),
    }
}

/// On full copies, whose files these damages reach; the repository's
/// damaged packs and indexes are in `tests/repository.rs`.
#[tokio::test]
async fn damaged_backups_are_data_loss_and_never_restored_or_downloaded() {
    let data = DataDir::new().keeping_full_copies();
    add_marked_blob(&data);
    let server = data.start(&["--no-scheduler"]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    for how in EVERY_DAMAGE {
        let name = format!("{how:?}.db");
        let created = backups.create(Some(&name)).await.unwrap();
        let path = data.backups_dir().join(&name);
        damage(&path, how);
        let source_before = std::fs::read(data.source()).unwrap();

        let (got, message) = status(backups.restore(&name).await);
        assert_eq!(got, Code::DataLoss, "{how:?}: {message}");
        assert!(message.contains(&name), "{how:?}: {message}");
        assert_eq!(
            std::fs::read(data.source()).unwrap(),
            source_before,
            "{how:?}: the source changed"
        );
        assert!(
            !file_names(&data.backups_dir())
                .iter()
                .any(|n| n.starts_with("pre_restore_")),
            "{how:?}: a pre-restore backup was taken"
        );

        let dest = data.path().join("downloaded.db");
        let (got, _) = status(backups.download_to(&name, &dest, |_, _| {}).await);
        assert_eq!(got, Code::DataLoss, "{how:?}");
        assert!(!dest.exists(), "{how:?}: a damaged download was kept");

        let (got, message) = status(backups.verify(&name).await);
        assert_eq!(got, Code::DataLoss, "{how:?}");
        let expected_cause = match how {
            Damage::FlippedInsideABlob => "digest",
            _ => "size",
        };
        assert!(message.contains(expected_cause), "{how:?}: {message}");

        let got = backups.get(&name).await.unwrap();
        assert!(got.damaged, "{how:?}: not marked damaged");
        assert!(
            got.damage.contains(expected_cause),
            "{how:?}: {}",
            got.damage
        );
        assert!(got.last_verified_at.is_some());
        // What was recorded at creation stays: the file changed, not the facts.
        assert_eq!(
            (got.size_bytes, &got.sha256),
            (created.size_bytes, &created.sha256)
        );
    }
    let failures: Vec<_> = audit_events(&data, "backup_files.verify")
        .into_iter()
        .filter(|(_, success, _)| !success)
        .collect();
    assert!(failures.len() >= EVERY_DAMAGE.len(), "{failures:?}");
    // An intact backup verifies, and its verification time moves.
    let good = backups.create(Some("good")).await.unwrap();
    assert!(good.last_verified_at.is_none() && !good.damaged);
    let verified = backups.verify("good.db").await.unwrap();
    assert!(verified.last_verified_at.is_some() && !verified.damaged);
    let (restored, _) = backups.restore("good.db").await.unwrap();
    assert_eq!(restored.filename, "good.db");
}

/// On full copies, whose file is put back by hand.
#[tokio::test]
async fn a_repaired_backup_verifies_again() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&["--no-scheduler"]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    backups.create(Some("fixable")).await.unwrap();
    let path = data.backups_dir().join("fixable.db");
    let original = std::fs::read(&path).unwrap();
    damage(&path, Damage::Appended);
    assert_eq!(code(backups.verify("fixable.db").await), Code::DataLoss);
    // Marked damaged, a restore is refused without reading the file again.
    std::fs::write(&path, &original).unwrap();
    assert_eq!(code(backups.restore("fixable.db").await), Code::DataLoss);
    let again = backups.verify("fixable.db").await.unwrap();
    assert!(!again.damaged && again.damage.is_empty());
    backups.restore("fixable.db").await.unwrap();
}

/// On full copies; the repository's counterpart is
/// `retention_never_counts_a_backup_whose_pack_is_damaged`.
#[tokio::test]
async fn retention_keeps_the_newest_intact_backups_when_the_newest_is_damaged() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&["--no-scheduler"]);
    let user = server.client(&data.token(2, false)).await;
    let mut backups = user.backups();
    for name in ["a", "b", "c"] {
        backups.create(Some(name)).await.unwrap();
    }
    // The newest is emptied behind the service's back.
    damage(&data.backups_dir().join("c.db"), Damage::TruncatedToZero);

    let summary = user.retention().summary(1, Owners::Caller).await.unwrap();
    assert_eq!(summary.filenames_to_delete, ["a.db"]);
    let reason = |name| kept_reason(&summary, name);
    assert_eq!(reason("c.db"), Some(proto::KeepReason::Damaged));
    assert_eq!(reason("b.db"), Some(proto::KeepReason::NewestN));

    let deleted = user.retention().apply(1, Owners::Caller).await.unwrap();
    assert_eq!(deleted, ["a.db"]);
    assert_eq!(listed(&mut backups).await, ["c.db", "b.db"]);
    assert!(backups.get("c.db").await.unwrap().damaged);
    assert!(data.backups_dir().join("b.db").exists());
    assert_audited(&data, "backup_files.verify", false, "retention");

    // A flipped byte in the new newest is found the same way: the intact
    // one stays, whatever keep_count says.
    backups.create(Some("d")).await.unwrap();
    add_marked_blob(&data);
    backups.create(Some("e")).await.unwrap();
    damage(&data.backups_dir().join("e.db"), Damage::FlippedInsideABlob);
    let deleted = user.retention().apply(1, Owners::Caller).await.unwrap();
    assert_eq!(deleted, ["b.db"]);
    assert_eq!(listed(&mut backups).await, ["e.db", "d.db", "c.db"]);
}

/// On full copies; the repository's counterpart is
/// `the_scrub_verifies_every_backup_and_finds_a_damaged_pack`.
#[tokio::test]
async fn the_scrub_finds_damage_within_its_interval() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&["--no-scheduler", "--verify-interval", "1s"]);
    let admin = server.client(&data.token(1, true)).await;
    let mut backups = admin.backups();
    backups.create(Some("fine")).await.unwrap();
    backups.create(Some("doomed")).await.unwrap();
    damage(&data.backups_dir().join("doomed.db"), Damage::CutShort);

    let mut poll = admin.backups();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (fine, doomed) = (
            poll.get("fine.db").await.unwrap(),
            poll.get("doomed.db").await.unwrap(),
        );
        if doomed.damaged && fine.last_verified_at.is_some() {
            assert!(!fine.damaged);
            assert!(doomed.damage.contains("size"), "{}", doomed.damage);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scrub did not verify both within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_audited(&data, "backup_files.verify", false, "scrub");
    assert_audited(&data, "backup_files.verify", true, "scrub");
    let stats = admin.scheduler().stats().await.unwrap();
    assert_eq!(stats.damaged_backups, 1);
    assert!(stats.verifications_failed >= 1 && stats.verifications_passed >= 1);
    assert_eq!(stats.verify_interval_seconds, 1);
}

#[tokio::test]
async fn downloads_are_for_admins_unless_the_operator_allows_users() {
    let data = DataDir::new();
    let user_token = data.token(2, false);
    let dest = data.path().join("mine.db");
    {
        let server = data.start(&["--no-scheduler"]);
        let mut mine = server.client(&user_token).await.backups();
        mine.create(Some("mine")).await.unwrap();
        let (got, message) = status(mine.download_to("mine.db", &dest, |_, _| {}).await);
        assert_eq!(got, Code::PermissionDenied);
        assert!(message.contains("--allow-user-downloads"), "{message}");
        assert!(!dest.exists());
        // Another user's name is still simply unknown.
        assert_eq!(
            code(mine.download_to("nobody.db", &dest, |_, _| {}).await),
            Code::NotFound
        );
    }
    let server = data.start(&["--no-scheduler", "--allow-user-downloads"]);
    let mut mine = server.client(&user_token).await.backups();
    let got = mine.download_to("mine.db", &dest, |_, _| {}).await.unwrap();
    assert_backup_bytes(&got, &std::fs::read(&dest).unwrap());
}

#[tokio::test]
async fn names_are_per_owner_and_leak_nothing() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let mut two = server.client(&data.token(2, false)).await.backups();
    let mut three = server.client(&data.token(3, false)).await.backups();
    let admin = server.client(&data.token(1, true)).await;
    let mut admin_backups = admin.backups();

    let theirs = two.create(Some("nightly-1")).await.unwrap();
    let mine = three.create(Some("nightly-1")).await.unwrap();
    assert_eq!(
        (theirs.filename.as_str(), mine.filename.as_str()),
        ("nightly-1.db", "nightly-1.db")
    );
    assert_eq!((theirs.owner_user_id, mine.owner_user_id), (2, 3));
    // Each sees their own, and a second one of the same name is theirs to clash with.
    assert_eq!(two.get("nightly-1.db").await.unwrap(), theirs);
    assert_eq!(three.get("nightly-1.db").await.unwrap(), mine);
    let (got, message) = status(three.create(Some("nightly-1")).await);
    assert_eq!(got, Code::AlreadyExists);
    assert!(message.contains("you already have"), "{message}");
    assert_eq!(code(three.get("only-two.db").await), Code::NotFound);
    two.create(Some("only-two")).await.unwrap();
    assert_eq!(code(three.get("only-two.db").await), Code::NotFound);
    let mut three_naming_two = server
        .client(&data.token(3, false))
        .await
        .backups()
        .owned_by(2);
    assert_eq!(
        code(three_naming_two.get("only-two.db").await),
        Code::PermissionDenied
    );

    // Both are stored, neither replaced the other.
    let stored = data.stored_backups();
    assert!(stored.contains(&"nightly-1.db".to_owned()), "{stored:?}");
    assert!(stored.contains(&"u3~nightly-1.db".to_owned()), "{stored:?}");
    assert!(integrity_ok(&data.backup_file("u3~nightly-1.db")));

    // An admin sees both, names the owner for an ambiguous name, and
    // reaches a unique name without it.
    let all = admin_backups.list_all().await.unwrap();
    assert_eq!(
        all.iter().filter(|b| b.filename == "nightly-1.db").count(),
        2
    );
    let ambiguous = admin_backups.get("nightly-1.db").await.unwrap_err();
    assert_eq!(ambiguous.code(), Some(Code::InvalidArgument));
    assert_eq!(ambiguous.violated_fields(), ["owner_user_id"]);
    let by_owner = admin
        .backups()
        .owned_by(3)
        .get("nightly-1.db")
        .await
        .unwrap();
    assert_eq!(by_owner, mine);
    assert_eq!(
        admin_backups
            .get("only-two.db")
            .await
            .unwrap()
            .owner_user_id,
        2
    );

    // Deleting one owner's leaves the other's.
    two.delete("nightly-1.db", false).await.unwrap();
    assert_eq!(three.get("nightly-1.db").await.unwrap(), mine);
    assert!(!data.stored_backups().contains(&"nightly-1.db".to_owned()));
    // A server restart keeps every owner's name.
    drop(server);
    let server = data.start(&["--no-scheduler"]);
    let mut three = server.client(&data.token(3, false)).await.backups();
    assert_eq!(listed(&mut three).await, ["nightly-1.db"]);
}

#[tokio::test]
async fn a_user_may_keep_only_so_many_manual_backups() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler", "--max-manual-backups-per-user", "3"]);
    let mut user = server.client(&data.token(2, false)).await.backups();
    let mut admin = server.client(&data.token(1, true)).await.backups();
    for i in 0..3 {
        user.create(Some(&format!("q{i}"))).await.unwrap();
    }
    let (got, message) = status(user.create(Some("q3")).await);
    assert_eq!(got, Code::ResourceExhausted);
    assert!(
        message.contains("--max-manual-backups-per-user 3"),
        "{message}"
    );
    assert_eq!(listed(&mut user).await.len(), 3);
    assert!(!data.stored_backups().contains(&"q3.db".to_owned()));
    // Admins are not limited; a deleted backup frees a place.
    for i in 0..4 {
        admin.create(Some(&format!("admin{i}"))).await.unwrap();
    }
    user.delete("q0.db", false).await.unwrap();
    user.create(Some("q3")).await.unwrap();
}

#[tokio::test]
async fn restoring_into_a_read_only_source_is_failed_precondition() {
    let data = DataDir::new();
    let vol = data.path().join("ro-source");
    let tmpfs = Tmpfs::mount(&vol, "64m");
    let source = vol.join("source.db");
    std::fs::copy(data.source(), &source).unwrap();
    let source_arg = source.to_str().unwrap().to_owned();
    let server = data.start(&["--no-scheduler", "--source-db", &source_arg]);
    let mut backups = server.client(&data.token(1, true)).await.backups();
    backups.create(Some("before")).await.unwrap();
    tmpfs.remount("ro");
    let before = std::fs::read(&source).unwrap();

    let (got, message) = status(backups.restore("before.db").await);
    assert_eq!(got, Code::FailedPrecondition, "{message}");
    assert!(message.contains("cannot be written"), "{message}");
    assert!(
        message.contains("no pre-restore backup was taken"),
        "{message}"
    );
    assert_eq!(std::fs::read(&source).unwrap(), before);
    // Refused before anything was taken.
    assert!(
        !listed(&mut backups)
            .await
            .iter()
            .any(|n| n.starts_with("pre_restore_")),
    );
    let events = audit_events(&data, "backup_files.restore");
    assert!(events.iter().any(|(_, ok, _)| !ok), "{events:?}");
    tmpfs.remount("rw");
    backups.restore("before.db").await.unwrap();
}

#[tokio::test]
async fn maintenance_sees_files_dropped_in_without_a_listing() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let admin = server.client(&data.token(1, true)).await;
    // As an application's migration tool would leave it, ten days ago.
    let ten_days_ago = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    let dropped = data.drop_in(&data.source(), "pre_migration_20200101.db", ten_days_ago);
    let deleted = admin.retention().delete_old_protected(1).await.unwrap();
    assert_eq!(deleted, ["pre_migration_20200101.db"]);
    assert!(!dropped.exists());

    std::fs::write(data.backups_dir().join("empty.db"), b"").unwrap();
    let deleted = admin.retention().cleanup_empty().await.unwrap();
    assert_eq!(deleted, ["empty.db"]);
}
