//! BackupScheduler end to end: settings, on-time runs on the real clock,
//! missed-run recovery, failure isolation, and one active scheduler across
//! processes.

use std::time::Duration;

use backup_client::SettingsUpdate;
use backup_tests::*;
use chrono::{Timelike, Utc};

fn update() -> SettingsUpdate {
    SettingsUpdate::default()
}

#[tokio::test]
async fn settings_are_created_partially_updated_disabled_and_enabled() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let user = server.client(&data.token(2, false)).await;
    let mut scheduler = user.scheduler();
    assert_eq!(code(scheduler.get_settings(0).await), Code::NotFound);

    let created = scheduler.update_settings(0, update()).await.unwrap();
    assert_eq!(created.user_id, 2);
    assert!(created.enabled);
    assert_eq!(created.frequency, proto::Frequency::Daily as i32);
    assert_eq!(created.backup_time, "03:00");
    assert_eq!(created.keep_count, 7);
    assert_eq!(created.timezone, "UTC");
    let next = created.next_backup_at.expect("next run");
    let next_utc = chrono::DateTime::from_timestamp(next.seconds, 0).unwrap();
    assert_eq!((next_utc.hour(), next_utc.minute()), (3, 0));
    assert!(next_utc > Utc::now() && next_utc - Utc::now() <= chrono::Duration::days(1));

    let kept = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                keep_count: Some(3),
                ..update()
            },
        )
        .await
        .unwrap();
    assert_eq!(kept.keep_count, 3);
    assert_eq!(
        kept.next_backup_at, created.next_backup_at,
        "keep_count alone does not reschedule"
    );
    assert_eq!(kept.backup_time, "03:00");

    let zoned = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                backup_time: Some("09:30".into()),
                timezone: Some("Australia/Lord_Howe".into()),
                frequency: Some(proto::Frequency::Weekly),
                ..update()
            },
        )
        .await
        .unwrap();
    assert_eq!(zoned.timezone, "Australia/Lord_Howe");
    assert_ne!(zoned.next_backup_at, created.next_backup_at);
    assert_eq!(zoned.keep_count, 3);

    let off = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                enabled: Some(false),
                ..update()
            },
        )
        .await
        .unwrap();
    assert!(!off.enabled);
    assert_eq!(off.next_backup_at, None);
    let on = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                enabled: Some(true),
                ..update()
            },
        )
        .await
        .unwrap();
    assert!(on.next_backup_at.is_some());
    assert_eq!(scheduler.get_settings(2).await.unwrap(), on);

    assert_eq!(
        audit_events(&data, "backup_scheduler.settings_created").len(),
        1
    );
    assert_eq!(
        audit_events(&data, "backup_scheduler.settings_updated").len(),
        4
    );
}

#[tokio::test]
async fn bad_settings_are_rejected_field_by_field_and_change_nothing() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut scheduler = server.client(&data.token(2, false)).await.scheduler();
    let before = scheduler.update_settings(0, update()).await.unwrap();

    let cases: Vec<(SettingsUpdate, &str)> =
        ["24:00", "3:00", "03:60", "0300", " 03:00", "", "03:00:00"]
            .into_iter()
            .map(|t| {
                (
                    SettingsUpdate {
                        backup_time: Some(t.into()),
                        ..update()
                    },
                    "backup_time",
                )
            })
            .chain([0, 31, -1].into_iter().map(|k| {
                (
                    SettingsUpdate {
                        keep_count: Some(k),
                        ..update()
                    },
                    "keep_count",
                )
            }))
            .chain(["Mars/Olympus", "", "utc+1"].into_iter().map(|z| {
                (
                    SettingsUpdate {
                        timezone: Some(z.into()),
                        ..update()
                    },
                    "timezone",
                )
            }))
            .chain([(
                SettingsUpdate {
                    frequency: Some(proto::Frequency::Unspecified),
                    ..update()
                },
                "frequency",
            )])
            .collect();
    for (bad, field) in cases {
        let err = scheduler.update_settings(0, bad.clone()).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{bad:?}");
        assert_eq!(err.violated_fields(), vec![field], "{bad:?}");
    }
    // An unknown enum number, through the raw request.
    let raw = proto::UpdateBackupSettingsRequest {
        frequency: Some(9),
        ..Default::default()
    };
    let user = server.client(&data.token(2, false)).await;
    let err: backup_client::Error = user_raw_update(&user, raw).await;
    assert_eq!(err.violated_fields(), vec!["frequency"]);
    // All at once: one violation per field.
    let err = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                enabled: Some(false),
                frequency: Some(proto::Frequency::Unspecified),
                backup_time: Some("24:00".into()),
                keep_count: Some(0),
                timezone: Some("Nowhere".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.violated_fields(),
        vec!["frequency", "backup_time", "keep_count", "timezone"]
    );
    assert_eq!(
        scheduler.get_settings(0).await.unwrap(),
        before,
        "a rejected update changed settings"
    );

    // Another user's settings are off limits to a non-admin; an admin may.
    assert_eq!(
        code(scheduler.get_settings(3).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(scheduler.update_settings(3, update()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(scheduler.list_settings().await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(scheduler.check_and_run().await),
        Code::PermissionDenied
    );
    assert_eq!(code(scheduler.stop().await), Code::PermissionDenied);
    let mut admin = server.client(&data.token(1, true)).await.scheduler();
    create_users(&data, [3]);
    assert_eq!(admin.update_settings(3, update()).await.unwrap().user_id, 3);
    assert_eq!(admin.list_settings().await.unwrap().len(), 2);
}

async fn user_raw_update(
    client: &Client,
    request: proto::UpdateBackupSettingsRequest,
) -> backup_client::Error {
    let mut scheduler = client.scheduler();
    scheduler
        .raw()
        .update_backup_settings(request)
        .await
        .map(|_| ())
        .unwrap_err()
        .into()
}

/// Seconds until the next whole minute, and that minute as `HH:MM` UTC,
/// at least `min_lead` seconds ahead.
fn next_minute(min_lead: i64) -> (chrono::DateTime<Utc>, String) {
    let now = Utc::now();
    let mut at =
        now.with_second(0).unwrap().with_nanosecond(0).unwrap() + chrono::Duration::minutes(1);
    if (at - now).num_seconds() < min_lead {
        at += chrono::Duration::minutes(1);
    }
    (at, at.format("%H:%M").to_string())
}

#[tokio::test]
async fn a_due_backup_starts_within_a_second_on_the_real_clock() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut scheduler = server.client(&data.token(2, false)).await.scheduler();
    let (at, hhmm) = next_minute(15);
    let settings = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                backup_time: Some(hhmm),
                keep_count: Some(5),
                ..update()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        settings.next_backup_at.as_ref().map(|t| t.seconds),
        Some(at.timestamp())
    );
    let completed = wait_for("the scheduled backup", Duration::from_secs(150), || {
        audit_events(&data, "backup_scheduler.backup_completed")
            .into_iter()
            .next()
    })
    .await;
    let (user, success, details) = completed;
    assert_eq!((user, success), (2, true));
    let lateness = details["lateness_ms"].as_i64().unwrap();
    assert!(
        (0..1000).contains(&lateness),
        "started {lateness} ms after its slot"
    );
    let filename = details["filename"].as_str().unwrap();
    assert_eq!(
        filename,
        format!("auto_backup_user2_{}.db", at.format("%Y-%m-%dT%H-%M-%S"))
    );
    assert!(details["deleted_old_backups"].is_array());
    assert!(details["next_backup_at"].is_string());
    let mut backups = server.client(&data.token(2, false)).await.backups();
    let b = backups.get(filename).await.unwrap();
    assert_eq!(b.kind, proto::BackupKind::Auto as i32);
    assert_eq!(b.owner_user_id, 2);
    let after = scheduler.get_settings(0).await.unwrap();
    assert!(after.last_backup_at.is_some());
    assert_eq!(
        after.next_backup_at.map(|t| t.seconds),
        Some((at + chrono::Duration::days(1)).timestamp())
    );
}

/// Sets users' next_backup_at directly in the state store, as if the server
/// had been down since then.
fn set_next(data: &DataDir, user_id: i64, at: chrono::DateTime<Utc>) {
    let n = data.state_db().execute(
        "UPDATE backup_settings SET next_backup_at = $1 WHERE user_id = $2",
        &[&at, &user_id],
    );
    assert_eq!(n, 1);
}

/// Daily settings for `users` at a time of day twelve hours away, so no
/// regular slot falls due while a test runs; returns that time.
async fn create_settings(data: &DataDir, users: &[i64]) -> chrono::NaiveTime {
    let time = (Utc::now() + chrono::Duration::hours(12)).time();
    let time = chrono::NaiveTime::from_hms_opt(time.hour(), time.minute(), 0).unwrap();
    let server = data.start(&["--no-scheduler"]);
    let mut admin = server.client(&data.token(1, true)).await.scheduler();
    create_users(data, users.iter().copied());
    for &user in users {
        let settings = SettingsUpdate {
            backup_time: Some(time.format("%H:%M").to_string()),
            ..update()
        };
        admin.update_settings(user, settings).await.unwrap();
    }
    assert!(server.shutdown().await.success());
    time
}

fn auto_backups_of(data: &DataDir, user: i64) -> Vec<String> {
    data.stored_backups()
        .into_iter()
        .filter(|n| n.starts_with(&format!("auto_backup_user{user}_")))
        .collect()
}

#[tokio::test]
async fn missed_runs_after_downtime_run_once_per_user_and_are_audited() {
    let data = DataDir::new();
    let time = create_settings(&data, &[2, 3]).await;
    // The daily slots, the latest about twelve hours ago: down since two
    // days before it (user 2 missed 3 slots) and since the day before it
    // (user 3, 2 slots).
    let now = Utc::now();
    let mut latest = now.date_naive().and_time(time).and_utc();
    if latest > now {
        latest -= chrono::Duration::days(1);
    }
    set_next(&data, 2, latest - chrono::Duration::days(2));
    set_next(&data, 3, latest - chrono::Duration::days(1));
    let server = data.start(&[]);
    wait_for("both catch-up backups", Duration::from_secs(30), || {
        (audit_events(&data, "backup_scheduler.backup_completed").len() == 2).then_some(())
    })
    .await;
    assert_eq!(auto_backups_of(&data, 2).len(), 1);
    assert_eq!(auto_backups_of(&data, 3).len(), 1);
    let missed = audit_events(&data, "backup_scheduler.missed");
    let slots_of = |user: i64| {
        missed
            .iter()
            .find(|(u, _, _)| *u == user)
            .map(|(_, _, d)| d["missed_slots"].as_array().unwrap().len())
            .unwrap()
    };
    assert_eq!(slots_of(2), 3);
    assert_eq!(slots_of(3), 2);
    // Nothing more runs: the schedule moved on past now.
    let mut admin = server.client(&data.token(1, true)).await.scheduler();
    assert_eq!(admin.check_and_run().await.unwrap(), (0, 0));
    for user in [2, 3] {
        let s = admin.get_settings(user).await.unwrap();
        assert!(s.next_backup_at.unwrap().seconds > Utc::now().timestamp());
    }
    assert_eq!(auto_backups_of(&data, 2).len(), 1);
}

/// On full copies, where a directory in the way of a backup's name is a
/// failure that can be produced for real.
#[tokio::test]
async fn one_users_failure_does_not_stop_another() {
    let data = DataDir::new().keeping_full_copies();
    create_settings(&data, &[2, 3]).await;
    let slot = (Utc::now() - chrono::Duration::minutes(30))
        .with_nanosecond(0)
        .unwrap();
    set_next(&data, 2, slot);
    set_next(&data, 3, slot);
    // Something else already sits under user 2's backup name.
    let blocked = format!("auto_backup_user2_{}.db", slot.format("%Y-%m-%dT%H-%M-%S"));
    std::fs::create_dir(data.backups_dir().join(&blocked)).unwrap();

    let server = data.start(&[]);
    let error = wait_for("user 2's failure", Duration::from_secs(30), || {
        audit_events(&data, "backup_scheduler.backup_error")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!((error.0, error.1), (2, false));
    assert!(error.2["retry_at"].is_string());
    let mut admin = server.client(&data.token(1, true)).await.scheduler();
    // The counters move just after each outcome is recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = admin.stats().await.unwrap();
        if stats.backups_completed + stats.backups_failed >= 2
            || std::time::Instant::now() > deadline
        {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(stats.is_running);
    assert_eq!((stats.backups_completed, stats.backups_failed), (1, 1));
    assert_eq!(auto_backups_of(&data, 3).len(), 1);
    // User 2 is retried later, not in a tight loop.
    let retry = admin.get_settings(2).await.unwrap().next_backup_at.unwrap();
    assert!(
        retry.seconds >= Utc::now().timestamp() + 60,
        "retry too soon"
    );
}

#[tokio::test]
async fn two_processes_take_each_due_backup_exactly_once() {
    let data = DataDir::new();
    let users: Vec<i64> = (2..12).collect();
    create_settings(&data, &users).await;
    let slot = (Utc::now() - chrono::Duration::minutes(10))
        .with_nanosecond(0)
        .unwrap();
    for &user in &users {
        set_next(&data, user, slot);
    }
    let a = data.start(&["--lease-ttl", "3"]);
    let b = data.start(&["--lease-ttl", "3"]);
    // Both also answer CheckAndRunBackups at once: the slot key still holds.
    // The one not holding the lease refuses (FAILED_PRECONDITION) and wakes
    // the holder, which runs the pass.
    let token = data.token(1, true);
    let (mut ca, mut cb) = (
        a.client(&token).await.scheduler(),
        b.client(&token).await.scheduler(),
    );
    let (ra, rb) = tokio::join!(ca.check_and_run(), cb.check_and_run());
    let refused: Vec<Error> = [ra, rb].into_iter().filter_map(Result::err).collect();
    assert!(refused.len() < 2, "both refused: {refused:?}");
    for e in &refused {
        assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    }
    wait_for("every user's backup", Duration::from_secs(30), || {
        (audit_events(&data, "backup_scheduler.backup_completed").len() >= users.len())
            .then_some(())
    })
    .await;
    // Then nothing more, however long the two keep running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &user in &users {
        assert_eq!(auto_backups_of(&data, user).len(), 1, "user {user}");
    }
    let runs: i64 = data
        .state_db()
        .query_one(
            "SELECT count(*) FROM scheduled_runs WHERE status = 'completed'",
            &[],
        )
        .get(0);
    assert_eq!(runs, users.len() as i64);
    assert_eq!(
        audit_events(&data, "backup_scheduler.backup_completed").len(),
        users.len()
    );
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    assert!(sa.is_running && sb.is_running);
    assert_eq!(sa.lease_holder, sb.lease_holder);
    assert!(
        sa.holds_lease ^ sb.holds_lease,
        "exactly one process holds the lease"
    );
}

#[tokio::test]
async fn sigkill_of_the_lease_holder_hands_the_loop_over() {
    let data = DataDir::new();
    let token = data.token(1, true);
    let mut first = data.start(&["--lease-ttl", "3"]);
    let mut first_client = first.client(&token).await.scheduler();
    wait_for_holder(&mut first_client).await;
    let second = data.start(&["--lease-ttl", "3"]);
    let mut second_client = second.client(&token).await.scheduler();
    let s = second_client.stats().await.unwrap();
    assert!(!s.holds_lease, "the second process must wait for the lease");
    first.kill();
    let started = std::time::Instant::now();
    wait_for_holder(&mut second_client).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

/// A pass that outlasts the lease TTL keeps the lease: the process waiting
/// beside it neither takes over nor settles the running backup as
/// interrupted and takes it again.
#[tokio::test]
async fn a_pass_longer_than_the_lease_keeps_it() {
    let data = DataDir::new();
    create_settings(&data, &[2]).await;
    let slot = (Utc::now() - chrono::Duration::minutes(10))
        .with_nanosecond(0)
        .unwrap();
    set_next(&data, 2, slot);
    // A writer holds the source locked, so the backup waits (up to the
    // server's 30 s lock wait) for three lease TTLs.
    let source = open(&data.source());
    source
        .pragma_update(None, "journal_mode", "DELETE")
        .unwrap();
    source.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let token = data.token(1, true);
    let first = data.start(&["--lease-ttl", "3"]);
    let mut first_client = first.client(&token).await.scheduler();
    wait_for_holder(&mut first_client).await;
    let second = data.start(&["--lease-ttl", "3"]);
    let mut second_client = second.client(&token).await.scheduler();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(first_client.stats().await.unwrap().holds_lease);
    assert!(!second_client.stats().await.unwrap().holds_lease);
    source.execute_batch("COMMIT").unwrap();

    wait_for("the backup", Duration::from_secs(30), || {
        (audit_events(&data, "backup_scheduler.backup_completed").len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        audit_events(&data, "backup_scheduler.backup_error"),
        [],
        "a running backup was settled as interrupted"
    );
    assert_eq!(auto_backups_of(&data, 2).len(), 1);
    let (a, b) = (
        first_client.stats().await.unwrap(),
        second_client.stats().await.unwrap(),
    );
    assert_eq!((a.backups_completed, b.backups_completed), (1, 0));
    assert!(a.holds_lease && !b.holds_lease);
}

async fn wait_for_holder(client: &mut backup_client::Scheduler) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stats = client.stats().await.unwrap();
        if stats.holds_lease {
            assert_eq!(stats.lease_holder, stats.instance_id);
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn stop_and_start_control_the_loop_and_overdue_users_show() {
    let data = DataDir::new();
    create_settings(&data, &[2]).await;
    // Created long ago and never backed up: overdue.
    let changed = data.state_db().execute(
        "UPDATE backup_settings SET created_at = $1 WHERE user_id = 2",
        &[&(Utc::now() - chrono::Duration::days(3))],
    );
    assert_eq!(changed, 1);
    let server = data.start(&[]);
    let mut admin = server.client(&data.token(1, true)).await.scheduler();
    let overdue = admin.overdue().await.unwrap();
    assert_eq!(
        overdue.iter().map(|s| s.user_id).collect::<Vec<_>>(),
        vec![2]
    );
    let stopped = admin.stop().await.unwrap();
    assert!(!stopped.is_running && !stopped.holds_lease);
    assert_eq!(stopped.overdue_users, 1);
    set_next(
        &data,
        2,
        (Utc::now() - chrono::Duration::minutes(1))
            .with_nanosecond(0)
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        auto_backups_of(&data, 2).is_empty(),
        "a stopped scheduler ran a backup"
    );
    let started = admin.start().await.unwrap();
    assert!(started.is_running);
    // Completed (not only catalogued): the run has recorded its success.
    wait_for(
        "the missed backup after start",
        Duration::from_secs(30),
        || (!audit_events(&data, "backup_scheduler.backup_completed").is_empty()).then_some(()),
    )
    .await;
    assert_eq!(auto_backups_of(&data, 2).len(), 1);
    assert!(admin.overdue().await.unwrap().is_empty());
    assert_eq!(audit_events(&data, "backup_scheduler.stop").len(), 1);
}

#[tokio::test]
async fn the_scheduled_backup_applies_the_owners_keep_count() {
    let data = DataDir::new();
    let token = data.token(2, false);
    {
        let server = data.start(&["--no-scheduler"]);
        let client = server.client(&token).await;
        client
            .scheduler()
            .update_settings(
                0,
                SettingsUpdate {
                    keep_count: Some(1),
                    ..update()
                },
            )
            .await
            .unwrap();
        let mut backups = client.backups();
        backups.create(Some("old-1")).await.unwrap();
        backups.create(Some("old-2")).await.unwrap();
        // Another user's backup is never this user's retention's business.
        server
            .client(&data.token(3, false))
            .await
            .backups()
            .create(Some("theirs"))
            .await
            .unwrap();
        assert!(server.shutdown().await.success());
    }
    set_next(
        &data,
        2,
        (Utc::now() - chrono::Duration::minutes(2))
            .with_nanosecond(0)
            .unwrap(),
    );
    let server = data.start(&[]);
    let (_, _, details) = wait_for("the scheduled backup", Duration::from_secs(30), || {
        audit_events(&data, "backup_scheduler.backup_completed")
            .into_iter()
            .next()
    })
    .await;
    let mut deleted: Vec<String> = details["deleted_old_backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["old-1.db", "old-2.db"]);
    let mut backups = server.client(&token).await.backups();
    let left = listed(&mut backups).await;
    assert_eq!(left, [details["filename"].as_str().unwrap()]);
    assert!(data.stored_backups().contains(&"theirs.db".to_owned()));
}

/// Backups due at the same moment share one snapshot of that moment: one
/// copy, linked under each user's name, with one checksum and creation
/// time. Each user's backup is still their own: deleting one leaves the
/// others whole. On full copies, whose links show the sharing; the
/// repository stores identical pages once whenever they were taken
/// (`tests/repository.rs`).
#[tokio::test]
async fn backups_due_together_share_one_snapshot_and_stay_independent() {
    use std::os::unix::fs::MetadataExt;
    let data = DataDir::new().keeping_full_copies();
    let users = [2, 3, 4, 5];
    create_settings(&data, &users).await;
    let slot = (Utc::now() - chrono::Duration::minutes(1))
        .with_nanosecond(0)
        .unwrap();
    for user in users {
        set_next(&data, user, slot);
    }
    let server = data.start(&[]);
    // The pass drops the snapshot's temporary name after its last backup
    // completes: wait for both.
    wait_for("every due backup", Duration::from_secs(30), || {
        let completed = audit_events(&data, "backup_scheduler.backup_completed").len();
        let temporary = file_names(&data.backups_dir())
            .iter()
            .any(|n| n.starts_with(".tmp-"));
        (completed == users.len() && !temporary).then_some(())
    })
    .await;
    let admin = server.client(&data.token(1, true)).await;
    let mut backups = admin.backups();
    let mut made = Vec::new();
    for user in users {
        let names = auto_backups_of(&data, user);
        assert_eq!(names.len(), 1, "user {user}: {names:?}");
        made.push(backups.get(&names[0]).await.unwrap());
    }
    let inode = |name: &str| {
        std::fs::metadata(data.backups_dir().join(name))
            .unwrap()
            .ino()
    };
    for b in &made[1..] {
        assert_eq!(b.sha256, made[0].sha256, "{} differs", b.filename);
        assert_eq!(b.created_at, made[0].created_at, "{}", b.filename);
        assert_eq!(inode(&b.filename), inode(&made[0].filename));
    }
    assert_eq!(
        std::fs::metadata(data.backups_dir().join(&made[0].filename))
            .unwrap()
            .nlink(),
        users.len() as u64,
        "one copy, no temporary name left"
    );

    backups.delete(&made[0].filename, false).await.unwrap();
    for b in &made[1..] {
        let path = data.backups_dir().join(&b.filename);
        assert!(
            integrity_ok(&path),
            "{} damaged by another's delete",
            b.filename
        );
        assert_eq!(backups.get(&b.filename).await.unwrap().sha256, b.sha256);
    }
    assert!(
        file_names(&data.backups_dir())
            .iter()
            .all(|n| !n.starts_with(".tmp-"))
    );
}
