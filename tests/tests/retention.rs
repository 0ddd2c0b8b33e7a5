//! Retention end to end: real server processes, real backup files, the
//! audit record read straight from the state store.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use backup_client::{Owners, Retention};
use backup_tests::*;
use serde_json::Value;

/// One `backup_retention.*` (or other) audit event as stored.
#[derive(Debug)]
struct Event {
    event_type: String,
    user_id: i64,
    resource_id: String,
    success: bool,
    details: Value,
}

/// Audit events whose type starts with `prefix`, oldest first, read from the
/// state store beside the running server.
fn events(data: &DataDir, prefix: &str) -> Vec<Event> {
    data.state_db()
        .query(
            "SELECT event_type, user_id, resource_id, success, details FROM audit_events
             WHERE substr(event_type, 1, length($1)) = $1 ORDER BY id",
            &[&prefix],
        )
        .iter()
        .map(|r| Event {
            event_type: r.get(0),
            user_id: r.get(1),
            resource_id: r.get(2),
            success: r.get(3),
            details: r.get(4),
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Creates manual backups with these names, one after another so their
/// creation times are in this order (oldest first).
async fn create_in_order(client: &Client, names: &[&str]) {
    let mut backups = client.backups();
    for name in names {
        backups.create(Some(name)).await.expect("create a backup");
    }
}

/// The backups stored (no temporary or deleting names).
fn backup_files(data: &DataDir) -> BTreeSet<String> {
    data.stored_backups()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// The catalog as the admin sees it.
async fn catalog(admin: &Client) -> BTreeSet<String> {
    listed(&mut admin.backups()).await.into_iter().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn db(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{n}.db")).collect()
}

/// Overwrites the third page of a SQLite file with garbage: the header
/// still says SQLite, `PRAGMA integrity_check` fails.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read the backup");
    let page = 4096;
    assert!(bytes.len() >= page * 3, "too small to corrupt a page");
    for b in &mut bytes[page * 2..page * 3] {
        *b = 0x55;
    }
    std::fs::write(path, bytes).expect("write the backup");
    assert!(!integrity_ok(path));
}

fn kept_with(summary: &proto::RetentionSummary, reason: proto::KeepReason) -> Vec<String> {
    summary
        .kept_backups
        .iter()
        .filter(|k| k.reason == reason as i32)
        .map(|k| k.filename.clone())
        .collect()
}

#[tokio::test]
async fn two_users_with_different_keep_counts_never_touch_each_other() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let alice = server.client(&data.token(2, false)).await;
    let bob = server.client(&data.token(3, false)).await;
    // Interleaved, so a global "newest N" would cut across both users.
    for i in 0..4 {
        create_in_order(&alice, &[&format!("alice-{i}")]).await;
        create_in_order(&bob, &[&format!("bob-{i}")]).await;
        create_in_order(&admin, &[&format!("admin-{i}")]).await;
    }
    // A file another tool dropped in: a system backup (owner 0).
    data.drop_in(
        &data.backup_file("alice-0.db"),
        "handmade.db",
        SystemTime::now(),
    );
    assert_eq!(catalog(&admin).await.len(), 13);

    let deleted = alice.retention().apply(1, Owners::Caller).await.unwrap();
    assert_eq!(deleted, db(&["alice-2", "alice-1", "alice-0"]));
    let deleted = bob.retention().apply(3, Owners::Caller).await.unwrap();
    assert_eq!(deleted, db(&["bob-0"]));
    // A user cannot aim a policy at someone else, nor at everyone.
    let mut r = alice.retention();
    assert_eq!(
        code(r.apply(1, Owners::User(3)).await),
        Code::PermissionDenied
    );
    assert_eq!(code(r.apply(1, Owners::All).await), Code::PermissionDenied);
    assert_eq!(
        code(r.summary(1, Owners::User(3)).await),
        Code::PermissionDenied
    );

    let expected = set(&[
        "alice-3.db",
        "bob-1.db",
        "bob-2.db",
        "bob-3.db",
        "admin-0.db",
        "admin-1.db",
        "admin-2.db",
        "admin-3.db",
        "handmade.db",
    ]);
    assert_eq!(catalog(&admin).await, expected);
    assert_eq!(backup_files(&data), expected);

    // Every owner at once, each on its own: bob keeps 2, admin keeps 2,
    // alice (1 left) and the system file are untouched.
    let mut all = admin.retention();
    let deleted: BTreeSet<String> = all
        .apply(2, Owners::All)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(deleted, set(&["admin-0.db", "admin-1.db", "bob-1.db"]));
    let expected = set(&[
        "alice-3.db",
        "bob-2.db",
        "bob-3.db",
        "admin-2.db",
        "admin-3.db",
        "handmade.db",
    ]);
    assert_eq!(catalog(&admin).await, expected);
    assert_eq!(backup_files(&data), expected);

    // The audit trail names the owner, keep_count and files of each run.
    let applied = events(&data, "backup_retention.applied");
    let for_owner = |owner: i64| -> Vec<&Event> {
        applied
            .iter()
            .filter(|e| e.details["owner"] == owner)
            .collect()
    };
    let alice_runs = for_owner(2);
    assert_eq!(alice_runs.len(), 1, "{applied:?}");
    assert_eq!(alice_runs[0].details["keep_count"], 1);
    assert_eq!(alice_runs[0].user_id, 2);
    assert_eq!(
        strings(&alice_runs[0].details["deleted"]),
        db(&["alice-2", "alice-1", "alice-0"])
    );
    let bob_runs = for_owner(3);
    assert_eq!(bob_runs.len(), 2);
    assert_eq!(strings(&bob_runs[1].details["deleted"]), db(&["bob-1"]));
    assert_eq!(bob_runs[1].user_id, 1, "the admin ran it");
    assert!(
        for_owner(0).is_empty(),
        "system backups are no one's policy"
    );
    let denied = events(&data, "backup_retention.error");
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| !e.success && e.user_id == 2));
}

#[tokio::test]
async fn protected_backups_survive_any_keep_count() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    create_in_order(&admin, &["a0", "a1", "a2"]).await;
    let (_, pre) = admin.backups().restore("a0.db").await.unwrap();
    // Protected files made by other tools, one of them old.
    let a1 = data.backup_file("a1.db");
    data.drop_in(&a1, "pre_migration_app_v2.db", SystemTime::now());
    let old = SystemTime::now() - Duration::from_secs(400 * 86_400);
    data.drop_in(&a1, "pre_migration_app_v1.db", old);
    let protected = set(&[
        &pre.filename,
        "pre_migration_app_v1.db",
        "pre_migration_app_v2.db",
    ]);
    assert!(catalog(&admin).await.is_superset(&protected));

    let mut retention = admin.retention();
    for keep in 1..=30 {
        for owners in [Owners::All, Owners::User(0), Owners::Caller] {
            let s = retention.summary(keep, owners).await.unwrap();
            for name in &protected {
                assert!(!s.filenames_to_delete.contains(name), "{name} at {keep}");
            }
        }
        let s = retention.summary(keep, Owners::All).await.unwrap();
        assert_eq!(s.protected, 3);
        let kept: BTreeSet<String> = kept_with(&s, proto::KeepReason::Protected)
            .into_iter()
            .collect();
        assert_eq!(kept, protected);
    }
    // The system's own backups are outside every policy.
    assert!(
        retention
            .apply(1, Owners::User(0))
            .await
            .unwrap()
            .is_empty()
    );
    let deleted = retention.apply(1, Owners::All).await.unwrap();
    assert_eq!(deleted, db(&["a1", "a0"]));
    let mut expected = protected.clone();
    expected.insert("a2.db".into());
    assert_eq!(catalog(&admin).await, expected);
    assert_eq!(backup_files(&data), expected);

    // Only an explicit request deletes protected backups, and only old ones.
    assert!(
        retention
            .delete_old_protected(500)
            .await
            .unwrap()
            .is_empty()
    );
    let deleted = retention.delete_old_protected(1).await.unwrap();
    assert_eq!(deleted, ["pre_migration_app_v1.db"]);
    assert!(!backup_files(&data).contains("pre_migration_app_v1.db"));
    let cleanup = events(&data, "backup_retention.cleanup_old_protected");
    assert_eq!(cleanup.len(), 2);
    assert_eq!(
        strings(&cleanup[1].details["deleted"]),
        ["pre_migration_app_v1.db"]
    );
    assert_eq!(cleanup[1].details["days_old"], 1);
}

#[tokio::test]
async fn the_summary_is_exactly_what_apply_deletes() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let user = server.client(&data.token(2, false)).await;
    create_in_order(&user, &["u0", "u1", "u2", "u3", "u4", "u5"]).await;
    create_in_order(&admin, &["x0", "x1", "x2"]).await;
    data.drop_in(&data.backup_file("u0.db"), "dropped.db", SystemTime::now());
    // Retention acts on the catalog; listing adopts the dropped file.
    assert_eq!(catalog(&admin).await.len(), 10);

    let mut mine = user.retention();
    let s = mine.summary(2, Owners::Caller).await.unwrap();
    assert_eq!((s.total, s.protected, s.to_keep, s.to_delete), (6, 0, 2, 4));
    assert_eq!(s.filenames_to_delete, db(&["u3", "u2", "u1", "u0"]));
    assert_eq!(kept_with(&s, proto::KeepReason::NewestN), db(&["u5", "u4"]));
    assert_eq!(
        mine.apply(2, Owners::Caller).await.unwrap(),
        s.filenames_to_delete
    );
    let again = mine.summary(2, Owners::Caller).await.unwrap();
    assert_eq!((again.total, again.to_delete), (2, 0));

    // Across every owner: the same preview, reasons for every kept backup.
    let mut all = admin.retention();
    let s = all.summary(1, Owners::All).await.unwrap();
    assert_eq!(s.total, 6);
    assert_eq!(s.to_keep + s.to_delete, s.total);
    assert_eq!(s.kept_backups.len() as i32, s.to_keep);
    assert_eq!(kept_with(&s, proto::KeepReason::System), ["dropped.db"]);
    let to_delete: BTreeSet<String> = s.filenames_to_delete.iter().cloned().collect();
    assert_eq!(to_delete, set(&["u4.db", "x1.db", "x0.db"]));
    let deleted: BTreeSet<String> = all
        .apply(1, Owners::All)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(deleted, to_delete);

    // backupctl shows the same preview as JSON.
    let out = backupctl(
        &server.url,
        &data.token(1, true),
        &[
            "retention",
            "summary",
            "--keep",
            "1",
            "--all-users",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 3);
    assert_eq!(json["to_delete"], 0);
    assert_eq!(json["kept_backups"].as_array().unwrap().len(), 3);
}

/// On full copies, whose file is corrupted; the repository's counterpart
/// is `retention_never_counts_a_backup_whose_pack_is_damaged`.
#[tokio::test]
async fn a_corrupt_newest_backup_is_marked_damaged_and_counts_for_nothing() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&[]);
    let user = server.client(&data.token(2, false)).await;
    create_in_order(&user, &["b0", "b1", "b2", "b3"]).await;
    corrupt(&data.backups_dir().join("b3.db"));

    // Found damaged while the plan is secured: b3 counts for nothing, and
    // the newest intact backup is the one kept.
    let mut retention = user.retention();
    let s = retention.summary(1, Owners::Caller).await.unwrap();
    assert_eq!(kept_with(&s, proto::KeepReason::Damaged), db(&["b3"]));
    assert_eq!(kept_with(&s, proto::KeepReason::NewestN), db(&["b2"]));
    assert_eq!(s.filenames_to_delete, db(&["b1", "b0"]));
    let deleted = retention.apply(1, Owners::Caller).await.unwrap();
    assert_eq!(deleted, s.filenames_to_delete);
    assert_eq!(backup_files(&data), set(&["b2.db", "b3.db"]));
    let found = events(&data, "backup_files.verify");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(!found[0].success);
    assert_eq!(found[0].details["trigger"], "retention");
    assert!(user.backups().get("b3.db").await.unwrap().damaged);

    // A good new backup makes the older intact one deletable; the damaged
    // one stays for an operator to look at.
    create_in_order(&user, &["b4"]).await;
    let s = retention.summary(1, Owners::Caller).await.unwrap();
    assert_eq!(s.filenames_to_delete, db(&["b2"]));
    assert_eq!(kept_with(&s, proto::KeepReason::Damaged), db(&["b3"]));

    // The new newest damaged too: the intact one is kept instead, nothing
    // is deleted.
    corrupt(&data.backups_dir().join("b4.db"));
    let s = retention.summary(1, Owners::Caller).await.unwrap();
    assert!(s.filenames_to_delete.is_empty());
    assert_eq!(kept_with(&s, proto::KeepReason::NewestN), db(&["b2"]));
    assert_eq!(kept_with(&s, proto::KeepReason::Damaged), db(&["b4", "b3"]));
    assert!(retention.apply(1, Owners::Caller).await.unwrap().is_empty());
    assert_eq!(backup_files(&data), set(&["b2.db", "b3.db", "b4.db"]));
}

/// On full copies, whose delete renames the file first.
#[tokio::test]
async fn a_file_that_cannot_be_deleted_is_audited_and_the_rest_go_on() {
    let data = DataDir::new().keeping_full_copies();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let user = server.client(&data.token(2, false)).await;
    create_in_order(&user, &["d0", "d1", "d2", "d3", "d4"]).await;
    // A real fault, even for root: a delete starts by renaming the file to
    // `.deleting-<name>`, and rename(2) fails with EISDIR when that name is
    // a directory.
    let blocker = data.backups_dir().join(".deleting-d2.db");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();

    let mut retention = user.retention();
    let deleted = retention.apply(1, Owners::Caller).await.unwrap();
    assert_eq!(deleted, db(&["d3", "d1", "d0"]));
    assert_eq!(backup_files(&data), set(&["d2.db", "d4.db"]));
    assert_eq!(catalog(&admin).await, set(&["d2.db", "d4.db"]));
    assert!(integrity_ok(&data.backups_dir().join("d2.db")));

    let errors = events(&data, "backup_retention.delete_error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].resource_id, "d2.db");
    assert!(!errors[0].success);
    let applied = events(&data, "backup_retention.applied");
    assert_eq!(strings(&applied[0].details["failed"]), ["d2.db"]);
    assert_eq!(
        strings(&applied[0].details["deleted"]),
        db(&["d3", "d1", "d0"])
    );
    let deletes: Vec<String> = events(&data, "backup_retention.delete")
        .into_iter()
        .filter(|e| e.event_type == "backup_retention.delete")
        .map(|e| e.resource_id)
        .collect();
    assert_eq!(deletes, db(&["d3", "d1", "d0"]));

    // Once the fault is gone, the next run finishes the job.
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(
        retention.apply(1, Owners::Caller).await.unwrap(),
        db(&["d2"])
    );
    assert_eq!(backup_files(&data), set(&["d4.db"]));
}

/// On full copies, whose files show the run under way; the repository's
/// kills mid-delete and mid-prune are in `tests/repository.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_retention_run_leaves_catalog_and_directory_consistent() {
    const FILES: usize = 2000;
    let data = DataDir::new().keeping_full_copies();
    let admin_token = data.token(1, true);
    let user_token = data.token(2, false);
    let mut server = data.start(&[]);
    let admin = server.client(&admin_token).await;
    let seed = admin.backups().create(Some("seed")).await.unwrap();
    // Automatic backups of user 2 dropped in by name: adopted with their
    // modification time as creation time, so they have an order.
    let dir = data.backups_dir();
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let mut names = Vec::new();
    for i in 0..FILES {
        let at = base + chrono::Duration::minutes(i as i64);
        let name = format!("auto_backup_user2_{}.db", at.format("%Y-%m-%dT%H-%M-%S"));
        std::fs::copy(dir.join(&seed.filename), dir.join(&name)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(dir.join(&name))
            .unwrap()
            .set_modified(at.into())
            .unwrap();
        names.push(name);
    }
    assert_eq!(catalog(&admin).await.len(), FILES + 1);

    let mut retention = server.client(&user_token).await.retention();
    let run = tokio::spawn(async move { retention.apply(1, Owners::Caller).await });
    // Kill as soon as the first file is gone for good (unlinked, not just
    // renamed to its `.deleting-` name).
    let deadline = Instant::now() + Duration::from_secs(30);
    while file_names(&dir).len() == FILES + 1 {
        assert!(Instant::now() < deadline, "the run never started deleting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill();
    assert!(
        run.await.unwrap().is_err(),
        "the run finished before the kill"
    );

    let server = data.start(&[]);
    let admin = server.client(&admin_token).await;
    let listed = admin.backups().list_all().await.unwrap();
    let on_disk = backup_files(&data);
    let in_catalog: BTreeSet<String> = listed.iter().map(|b| b.filename.clone()).collect();
    assert_eq!(in_catalog, on_disk, "catalog and directory disagree");
    assert!(
        file_names(&dir).iter().all(|n| !n.starts_with('.')),
        "leftovers: {:?}",
        file_names(&dir)
    );
    let seed_bytes = std::fs::read(dir.join(&seed.filename)).unwrap();
    for b in &listed {
        let bytes = std::fs::read(dir.join(&b.filename)).unwrap();
        assert_eq!(bytes, seed_bytes, "{} is not fully present", b.filename);
        assert_eq!(b.size_bytes as usize, bytes.len());
    }
    let remaining = on_disk.len() - 1;
    assert!(
        remaining > 1 && remaining < FILES,
        "the kill did not land mid-run: {remaining} left"
    );
    // Every backup that went is accounted for in the audit record.
    let mut gone: BTreeSet<String> = events(&data, "backup_retention.delete")
        .into_iter()
        .filter(|e| e.event_type == "backup_retention.delete")
        .map(|e| e.resource_id)
        .collect();
    for e in events(&data, "backup_files.reconciled") {
        for n in strings(&e.details["delete_undone"]) {
            gone.remove(&n);
        }
    }
    let expected_gone: BTreeSet<String> = names
        .iter()
        .filter(|n| !on_disk.contains(*n))
        .cloned()
        .collect();
    assert_eq!(gone, expected_gone);
    // The newest is never among them; a second run finishes the policy.
    let newest = names.last().unwrap().clone();
    assert!(on_disk.contains(&newest));
    let mut retention = server.client(&user_token).await.retention();
    let deleted = retention.apply(1, Owners::Caller).await.unwrap();
    assert_eq!(deleted.len(), remaining - 1);
    assert_eq!(backup_files(&data), set(&[&newest, &seed.filename]));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_applies_delete_each_file_once_and_never_more_than_asked() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let user = server.client(&data.token(2, false)).await;
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    create_in_order(&user, &refs).await;

    let mut calls = Vec::new();
    for keep in [5, 3, 5, 3, 4, 3] {
        let mut r: Retention = if keep == 4 {
            admin.retention()
        } else {
            user.retention()
        };
        let owners = if keep == 4 {
            Owners::User(2)
        } else {
            Owners::Caller
        };
        calls.push(tokio::spawn(async move { r.apply(keep, owners).await }));
    }
    let mut manual = user.backups();
    let manual = tokio::spawn(async move { manual.delete("c0.db", false).await });
    let mut deleted = Vec::new();
    for call in calls {
        deleted.extend(call.await.unwrap().unwrap());
    }
    let manual_ok = manual.await.unwrap().is_ok();
    if manual_ok {
        deleted.push("c0.db".into());
    }
    deleted.sort();
    let unique: BTreeSet<String> = deleted.iter().cloned().collect();
    assert_eq!(unique.len(), deleted.len(), "deleted twice: {deleted:?}");
    assert_eq!(
        unique,
        db(&["c0", "c1", "c2", "c3", "c4", "c5", "c6"])
            .into_iter()
            .collect()
    );
    let expected = set(&["c7.db", "c8.db", "c9.db"]);
    assert_eq!(backup_files(&data), expected);
    assert_eq!(catalog(&admin).await, expected);
    let mut audited: Vec<String> = events(&data, "backup_retention.delete")
        .into_iter()
        .filter(|e| e.event_type == "backup_retention.delete")
        .map(|e| e.resource_id)
        .collect();
    if manual_ok {
        audited.push("c0.db".into());
    }
    audited.sort();
    assert_eq!(audited, deleted);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_deletes_nothing() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let user = server.client(&data.token(2, false)).await;
    create_in_order(&user, &["k0", "k1", "k2"]).await;
    std::fs::write(data.backups_dir().join("empty.db"), b"").unwrap();
    let before = catalog(&admin).await;
    // Full copies catalogue the empty file; beside a repository, which
    // imports SQLite files only, it stays a file.
    let empty_catalogued = data.storage() == Storage::FullCopies;
    assert_eq!(before.len(), 3 + usize::from(empty_catalogued));
    let files_before = backup_files(&data);

    let mut retention = admin.retention();
    for keep in [0, 31, -1, i32::MIN] {
        for owners in [Owners::Caller, Owners::User(2), Owners::All] {
            let err = retention.apply(keep, owners).await.unwrap_err();
            assert_eq!(err.code(), Some(Code::InvalidArgument), "{keep}");
            assert_eq!(err.violated_fields(), ["keep_count"]);
            let err = retention.summary(keep, owners).await.unwrap_err();
            assert_eq!(err.violated_fields(), ["keep_count"]);
        }
    }
    let both = retention
        .raw()
        .apply_retention_policy(proto::ApplyRetentionPolicyRequest {
            keep_count: 1,
            user_id: Some(2),
            all_users: true,
        })
        .await
        .unwrap_err();
    let both = Error::from(both);
    assert_eq!(both.code(), Some(Code::InvalidArgument));
    assert_eq!(both.violated_fields(), ["user_id"]);
    let negative = retention.apply(1, Owners::User(-2)).await.unwrap_err();
    assert_eq!(negative.violated_fields(), ["user_id"]);
    for days in [0, -1, i32::MIN] {
        let err = retention.delete_old_protected(days).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument));
        assert_eq!(err.violated_fields(), ["days_old"]);
    }
    // Admin-only maintenance.
    let mut theirs = user.retention();
    assert_eq!(code(theirs.cleanup_empty().await), Code::PermissionDenied);
    assert_eq!(
        code(theirs.delete_old_protected(1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            server
                .client("")
                .await
                .retention()
                .summary(1, Owners::Caller)
                .await
        ),
        Code::Unauthenticated
    );

    assert_eq!(catalog(&admin).await, before);
    assert_eq!(backup_files(&data), files_before);
    assert!(events(&data, "backup_retention.delete").is_empty());
    let errors = events(&data, "backup_retention.error");
    assert!(errors.iter().all(|e| !e.success));
    assert!(errors.len() >= 12 + 1 + 3 + 2, "{}", errors.len());
}

#[tokio::test]
async fn cleanup_removes_empty_and_non_sqlite_files_only() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = server.client(&data.token(1, true)).await;
    let user = server.client(&data.token(2, false)).await;
    create_in_order(&user, &["good"]).await;
    let dir = data.backups_dir();
    std::fs::write(dir.join("empty.db"), b"").unwrap();
    std::fs::write(dir.join("notes.db"), b"not a database at all").unwrap();
    std::fs::write(dir.join("short.db"), b"SQLite").unwrap();
    std::fs::write(dir.join("pre_restore_backup_empty.db"), b"").unwrap();
    std::fs::write(dir.join("pre_migration_foreign.db"), b"someone's export").unwrap();

    let mut deleted = admin.retention().cleanup_empty().await.unwrap();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "empty.db",
            "notes.db",
            "pre_restore_backup_empty.db",
            "short.db"
        ]
    );
    let expected = set(&["good.db", "pre_migration_foreign.db"]);
    assert_eq!(backup_files(&data), expected);
    // Beside a repository, the foreign file stays a file, no backup.
    let catalogued = match data.storage() {
        Storage::FullCopies => expected,
        Storage::Repository => set(&["good.db"]),
    };
    assert_eq!(catalog(&admin).await, catalogued);
    let runs = events(&data, "backup_retention.cleanup_empty");
    assert_eq!(runs.len(), 1);
    assert_eq!(
        strings(&runs[0].details["spared_protected"]),
        ["pre_migration_foreign.db"]
    );
    assert!(admin.retention().cleanup_empty().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_retention_service_reports_serving() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let client = server.client("").await;
    assert_eq!(
        client.health("backup.v1.Retention").await.unwrap(),
        backup_client::proto_health::health_check_response::ServingStatus::Serving
    );
}
