//! SIGKILL at many points of backup, restore and retention: after each kill
//! and restart, the source is the old or the restored database and passes
//! integrity_check, the catalog matches the storage, and no backup that
//! existed before is lost (beyond what retention was asked to delete); a
//! repository passes `repo check --read-data`.

use std::collections::BTreeSet;
use std::time::Duration;

use backup_client::Owners;
use backup_tests::*;

/// Catalogued backup names, read from the state store.
fn catalog(data: &DataDir) -> BTreeSet<String> {
    let conn = state_store(data);
    let mut stmt = conn.prepare("SELECT filename FROM backups").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Backups stored (not the lock file, nor temporary or deleting names).
fn on_disk(data: &DataDir) -> BTreeSet<String> {
    data.stored_backups()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_many_points_of_backup_restore_and_retention_loses_nothing() {
    let data = DataDir::with_rows(5000);
    // About 24 MB, so each operation takes long enough to be killed inside.
    grow_source(&data, 6000);
    let admin = data.token(1, true);
    let other = data.token(2, false);
    let (content_a, content_b) = {
        let server = data.start(&["--no-scheduler"]);
        let mut backups = server.client(&admin).await.backups();
        backups.create(Some("a")).await.unwrap();
        let a = orders(&data.source());
        open(&data.source())
            .execute("DELETE FROM orders WHERE id % 3 = 0", [])
            .unwrap();
        backups.create(Some("b")).await.unwrap();
        let b = orders(&data.source());
        let mut theirs = server.client(&other).await.backups();
        for i in 0..6 {
            theirs.create(Some(&format!("r{i}"))).await.unwrap();
        }
        assert!(server.shutdown().await.success());
        (a, b)
    };
    let mut source = content_b.clone();
    let mut interrupted = 0;

    for round in 0..15u64 {
        let mut server = data.start(&["--no-scheduler"]);
        let before = catalog(&data);
        let (admin_client, other_client) =
            (server.client(&admin).await, server.client(&other).await);
        let target = if round % 2 == 0 {
            &content_a
        } else {
            &content_b
        };
        let op = round % 3;
        let call = tokio::spawn(async move {
            match op {
                0 => admin_client
                    .backups()
                    .create(Some(&format!("c{round}")))
                    .await
                    .map(|_| ()),
                1 => {
                    let name = if round % 2 == 0 { "a.db" } else { "b.db" };
                    admin_client.backups().restore(name).await.map(|_| ())
                }
                _ => other_client
                    .retention()
                    .apply(2, Owners::Caller)
                    .await
                    .map(|_| ()),
            }
        });
        // Kill at a different point of the operation each round.
        tokio::time::sleep(Duration::from_millis(5 + (round * 17) % 90)).await;
        server.kill();
        if call.await.unwrap().is_err() {
            interrupted += 1;
        }

        let restarted = data.start(&["--no-scheduler"]);
        let after = catalog(&data);
        assert_eq!(
            after,
            on_disk(&data),
            "round {round}: catalog and directory differ"
        );
        assert!(
            file_names(&data.backups_dir())
                .iter()
                .all(|n| !n.starts_with(".tmp-") && !n.starts_with(".deleting-")),
            "round {round}: leftovers {:?}",
            file_names(&data.backups_dir())
        );
        assert!(
            integrity_ok(&data.source()),
            "round {round}: the source fails integrity_check"
        );
        let now = orders(&data.source());
        if op == 1 {
            assert!(
                now == source || &now == target,
                "round {round}: the source is neither old nor restored"
            );
        } else {
            assert_eq!(now, source, "round {round}: the source changed");
        }
        source = now;
        let lost: Vec<&String> = before.difference(&after).collect();
        if op == 2 {
            // Only user 2's backups beyond their newest two may go.
            assert!(
                lost.iter().all(|n| n.starts_with('r')),
                "round {round}: lost {lost:?}"
            );
            for newest in ["r4.db", "r5.db"] {
                assert!(
                    after.contains(newest),
                    "round {round}: retention deleted {newest}"
                );
            }
        } else {
            assert!(lost.is_empty(), "round {round}: lost {lost:?}");
        }
        for name in &after {
            assert!(
                integrity_ok(&data.backup_file(name)),
                "round {round}: {name} is damaged"
            );
        }
        if data.storage() == Storage::Repository {
            // Every chunk of every backup indexed, in its pack and intact.
            data.repo(&["check", "--read-data"]);
        }
        drop(restarted);
    }
    // The kills must land inside operations, not only between them.
    assert!(
        interrupted >= 5,
        "only {interrupted} of 15 operations were interrupted"
    );
}

/// Catalogued backups as (file, damage, recorded sha256).
fn marks(data: &DataDir) -> Vec<(String, Option<String>, String)> {
    let conn = state_store(data);
    let mut stmt = conn
        .prepare("SELECT filename, damage, sha256 FROM backups ORDER BY filename")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// On full copies, whose file is damaged and whose bytes are compared
/// after each kill; the repository's kills mid-restore and its scrub are in
/// `tests/repository.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_scheduled_verification_or_restore_leaves_every_backup_intact_and_truly_marked()
 {
    let data = DataDir::with_rows(5000).keeping_full_copies();
    grow_source(&data, 6000);
    let admin = data.token(1, true);
    {
        let server = data.start(&["--no-scheduler", "--verify-interval", "0"]);
        let mut backups = server.client(&admin).await.backups();
        for i in 0..4 {
            backups.create(Some(&format!("v{i}"))).await.unwrap();
        }
        backups.create(Some("broken")).await.unwrap();
        assert!(server.shutdown().await.success());
    }
    // One backup really is damaged: the scrub must mark it, and nothing else.
    let broken = data.backups_dir().join("broken.db");
    let len = std::fs::metadata(&broken).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&broken)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();

    let mut verifications_before_kill = 0;
    for round in 0..10u64 {
        let before = audit_events(&data, "backup_files.verify").len();
        let mut server = data.start(&["--no-scheduler", "--verify-interval", "1s"]);
        let restore = (round % 2 == 1).then(|| {
            let url = server.url.clone();
            let token = admin.clone();
            tokio::spawn(async move {
                let client = Client::connect(&url, &token).await.unwrap();
                client
                    .backups()
                    .restore(&format!("v{}.db", round % 4))
                    .await
            })
        });
        tokio::time::sleep(Duration::from_millis(20 + (round * 37) % 400)).await;
        server.kill();
        if let Some(restore) = restore {
            let _ = restore.await.unwrap();
        }
        verifications_before_kill += audit_events(&data, "backup_files.verify").len() - before;

        // Restarted without the scrub: what the kill left, as it is.
        let restarted = data.start(&["--no-scheduler", "--verify-interval", "0"]);
        assert!(
            integrity_ok(&data.source()),
            "round {round}: the source fails integrity_check"
        );
        for (file, damage, sha256) in marks(&data) {
            let bytes = std::fs::read(data.backups_dir().join(&file)).unwrap();
            if file == "broken.db" {
                assert_ne!(sha256_hex(&bytes), sha256);
                continue;
            }
            assert_eq!(sha256_hex(&bytes), sha256, "round {round}: {file} changed");
            assert_eq!(damage, None, "round {round}: intact {file} marked damaged");
        }
        drop(restarted);
    }
    assert!(
        verifications_before_kill > 0,
        "the scrub never verified anything before a kill"
    );
    // Given time, the scrub marks the damaged one, and only it.
    let server = data.start(&["--no-scheduler", "--verify-interval", "1s"]);
    wait_for(
        "the scrub to mark broken.db",
        Duration::from_secs(60),
        || {
            marks(&data)
                .iter()
                .any(|(file, damage, _)| file == "broken.db" && damage.is_some())
                .then_some(())
        },
    )
    .await;
    let damaged: Vec<String> = marks(&data)
        .into_iter()
        .filter(|(_, damage, _)| damage.is_some())
        .map(|(file, _, _)| file)
        .collect();
    assert_eq!(damaged, ["broken.db"]);
    drop(server);
}
