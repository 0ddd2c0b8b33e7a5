//! Edges of the contract (issue 11): errors that never echo unbounded
//! input, timestamps out of range, settings for users that do not exist,
//! audit attribution (actor and subject), start-up that says what is wrong,
//! and metric names.

use std::time::Duration;

use backup_client::proto_health::health_check_response::ServingStatus;
use backup_client::{AuditFilter, SettingsUpdate};
use backup_tests::*;
use tokio_stream::StreamExt;

/// The code, message and BadRequest descriptions of a failed call.
fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> (Code, String, Vec<(String, String)>) {
    match result {
        Err(Error::Status {
            code,
            message,
            violations,
        }) => (code, message, violations),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn errors_quote_at_most_64_characters_of_what_the_client_sent() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let mut scheduler = server.client(&data.token(1, true)).await.scheduler();
    let huge = "x".repeat(10 * 1024);
    let cut = format!("\"{}…\" (10240 bytes)", "x".repeat(64));

    let (status, message, violations) = refusal(
        scheduler
            .update_settings(
                0,
                SettingsUpdate {
                    timezone: Some(huge.clone()),
                    backup_time: Some(huge.clone()),
                    ..SettingsUpdate::default()
                },
            )
            .await,
    );
    assert_eq!(status, Code::InvalidArgument, "{message}");
    let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["backup_time", "timezone"]);
    for (field, description) in &violations {
        assert!(description.contains(&cut), "{field}: {description}");
        assert!(description.len() < 200, "{field}: {description}");
    }
    assert!(message.len() < 400, "{} bytes: {message}", message.len());

    // Characters are never split: 64 of them, whole.
    let wide = "é".repeat(5000);
    let (status, _, violations) = refusal(
        scheduler
            .update_settings(
                0,
                SettingsUpdate {
                    timezone: Some(wide),
                    ..SettingsUpdate::default()
                },
            )
            .await,
    );
    assert_eq!(status, Code::InvalidArgument);
    let expected = format!("\"{}…\" (10000 bytes)", "é".repeat(64));
    assert!(violations[0].1.contains(&expected), "{:?}", violations[0]);

    // A short value is still quoted whole.
    let (_, _, violations) = refusal(
        scheduler
            .update_settings(
                0,
                SettingsUpdate {
                    timezone: Some("Mars/Olympus".into()),
                    ..SettingsUpdate::default()
                },
            )
            .await,
    );
    assert!(
        violations[0].1.starts_with("\"Mars/Olympus\" is not"),
        "{:?}",
        violations[0]
    );
    // Nothing was created by the refused updates.
    assert_eq!(code(scheduler.get_settings(0).await), Code::NotFound);
}

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

#[tokio::test]
async fn timestamps_outside_years_1_to_9999_are_invalid_and_name_the_field() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let client = server.client(&data.token(1, true)).await;
    client.backups().create(Some("an-event")).await.unwrap();
    let mut audit = client.audit();
    let between = |start_time, end_time| AuditFilter {
        start_time,
        end_time,
        ..AuditFilter::default()
    };
    for (filter, field) in [
        // 10000-01-01T00:00:00Z: once matched every event.
        (between(ts(253_402_300_800, 0), None), "start_time"),
        (between(None, ts(253_402_300_800, 0)), "end_time"),
        // A second before 0001-01-01T00:00:00Z.
        (between(ts(-62_135_596_801, 0), None), "start_time"),
        (between(None, ts(i64::MIN, 0)), "end_time"),
        (between(ts(i64::MAX, 0), None), "start_time"),
        (between(ts(0, 1_000_000_000), None), "start_time"),
        (between(None, ts(0, -1)), "end_time"),
    ] {
        let refused = audit.list_page(&filter, 0, "").await;
        assert_eq!(
            refused.as_ref().err().and_then(Error::code),
            Some(Code::InvalidArgument),
            "{filter:?}: {refused:?}"
        );
        assert_eq!(refused.unwrap_err().violated_fields(), [field]);
    }
    // The ends of the range are valid: nothing is as late as the last
    // instant, everything is after the first.
    let last = audit
        .list_page(&between(ts(253_402_300_799, 999_999_999), None), 0, "")
        .await
        .unwrap();
    assert!(last.events.is_empty(), "{:?}", last.events);
    let first = audit
        .list_page(&between(ts(-62_135_596_800, 0), None), 0, "")
        .await
        .unwrap();
    assert!(
        first.events.iter().any(|e| e.resource_id == "an-event.db"),
        "{:?}",
        first.events
    );
}

#[tokio::test]
async fn settings_of_a_user_that_does_not_exist_are_not_found_and_nothing_is_created() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let mut admin = server.client(&data.token(1, true)).await.scheduler();

    let (status, message, _) = refusal(admin.update_settings(999, SettingsUpdate::default()).await);
    assert_eq!(status, Code::NotFound, "{message}");
    assert!(message.contains("no user 999"), "{message}");
    let (status, message, _) = refusal(admin.get_settings(999).await);
    assert_eq!(status, Code::NotFound, "{message}");
    assert!(message.contains("no user 999"), "{message}");
    let rows: i64 = state_store(&data)
        .query_row("SELECT count(*) FROM backup_settings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows, 0,
        "settings were created for a user that does not exist"
    );
    let failed = audit_events(&data, "backup_scheduler.settings_error");
    assert_eq!(failed.len(), 1);
    assert!(!failed[0].1);

    // A user that exists but has no settings yet says so, and may get some.
    data.token(2, false);
    let (status, message, _) = refusal(admin.get_settings(2).await);
    assert_eq!(status, Code::NotFound);
    assert!(
        message.contains("user 2 has no backup settings"),
        "{message}"
    );
    let created = admin
        .update_settings(2, SettingsUpdate::default())
        .await
        .unwrap();
    assert_eq!(created.user_id, 2);
    assert_eq!(admin.get_settings(2).await.unwrap().user_id, 2);
}

/// The next event of a live stream, within 30 s.
async fn next_event(stream: &mut backup_client::AuditStream) -> proto::AuditEvent {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event within 30 s")
        .expect("the stream is open")
        .expect("an event, not an error")
}

#[tokio::test]
async fn users_see_the_events_about_them_that_an_admin_caused() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let admin = server.client(&data.token(1, true)).await;
    let two = server.client(&data.token(2, false)).await;
    let three = server.client(&data.token(3, false)).await;
    let mut live_two = two
        .audit()
        .subscribe(None, "backup_scheduler.", None)
        .await
        .unwrap();
    let mut live_three = three
        .audit()
        .subscribe(None, "backup_scheduler.", None)
        .await
        .unwrap();

    let keep_4 = SettingsUpdate {
        keep_count: Some(4),
        ..SettingsUpdate::default()
    };
    admin.scheduler().update_settings(2, keep_4).await.unwrap();
    // User 3's own event comes after the admin's in id order: were the
    // admin's visible to user 3, the stream would deliver it first.
    three
        .scheduler()
        .update_settings(0, SettingsUpdate::default())
        .await
        .unwrap();

    let about_two = |e: &proto::AuditEvent| {
        e.event_type == "backup_scheduler.settings_created"
            && (e.user_id, e.subject_user_id, e.resource_id.as_str()) == (1, 2, "2")
    };
    let seen = next_event(&mut live_two).await;
    assert!(about_two(&seen), "{seen:?}");
    let seen = next_event(&mut live_three).await;
    assert_eq!((seen.user_id, seen.subject_user_id), (3, 3), "{seen:?}");

    let listed_by_two = two.audit().list_all(&AuditFilter::default()).await.unwrap();
    assert_eq!(listed_by_two.iter().filter(|e| about_two(e)).count(), 1);
    let listed_by_three = three
        .audit()
        .list_all(&AuditFilter::default())
        .await
        .unwrap();
    assert!(
        listed_by_three
            .iter()
            .all(|e| e.user_id == 3 || e.subject_user_id == 3),
        "{listed_by_three:?}"
    );
    assert!(!listed_by_three.is_empty());

    // The user_id filter matches the actor or the subject.
    for user in [1, 2] {
        let filter = AuditFilter {
            user_id: Some(user),
            ..AuditFilter::default()
        };
        let listed = admin.audit().list_all(&filter).await.unwrap();
        assert_eq!(
            listed.iter().filter(|e| about_two(e)).count(),
            1,
            "user {user}"
        );
    }
    let filter = AuditFilter {
        user_id: Some(3),
        ..AuditFilter::default()
    };
    let listed = admin.audit().list_all(&filter).await.unwrap();
    assert!(!listed.iter().any(about_two), "{listed:?}");
    // Naming another user is still refused to a non-admin.
    let filter = AuditFilter {
        user_id: Some(1),
        ..AuditFilter::default()
    };
    assert_eq!(
        code(two.audit().list_all(&filter).await),
        Code::PermissionDenied
    );
}

const BACKUP_FILES: &str = "backup.v1.BackupFiles";

/// Waits until the server's stderr holds `needle`, for at most 30 s.
async fn logged(stderr: &Stderr, needle: &str) -> String {
    wait_for(
        &format!("{needle:?} in the log"),
        Duration::from_secs(30),
        || {
            let text = stderr.text();
            text.contains(needle).then_some(text)
        },
    )
    .await
}

#[tokio::test]
async fn a_source_that_is_not_sqlite_is_named_at_start_and_holds_backup_files_down() {
    let data = DataDir::new();
    std::fs::write(data.source(), "name,amount\nann,3\n").unwrap();
    let (started, stderr) = data.try_start_capturing(&["--check-interval", "1"]);
    let server = started.unwrap();
    let warning = logged(&stderr, "is not a SQLite database").await;
    let line = warning
        .lines()
        .find(|l| l.contains("is not a SQLite database"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&data.source().display().to_string()),
        "{line}"
    );

    let client = server.client(&data.token(1, false)).await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        client.health(BACKUP_FILES).await.unwrap(),
        ServingStatus::NotServing
    );
    for service in [
        "backup.v1.BackupScheduler",
        "backup.v1.Retention",
        "backup.v1.AuditLog",
    ] {
        assert_eq!(
            client.health(service).await.unwrap(),
            ServingStatus::Serving
        );
    }
    assert_eq!(
        code(client.backups().create(None).await),
        Code::FailedPrecondition
    );

    // The operator puts a real database there: BackupFiles serves again.
    std::fs::remove_file(data.source()).unwrap();
    open(&data.source())
        .execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .unwrap();
    await_health(&client, BACKUP_FILES, ServingStatus::Serving).await;
    client
        .backups()
        .create(Some("after-the-fix"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_source_and_the_store_checks_never_overwrite_each_other() {
    let data = DataDir::new();
    std::fs::remove_file(data.source()).unwrap();
    let (started, stderr) = data.try_start_capturing(&["--check-interval", "1"]);
    let server = started.unwrap();
    let warning = logged(&stderr, "does not exist").await;
    assert!(
        warning.contains(&data.source().display().to_string()),
        "{warning}"
    );
    let client = server.client("").await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        client.health(BACKUP_FILES).await.unwrap(),
        ServingStatus::NotServing
    );

    // The store fails too, then recovers: the source is still missing.
    let locker = state_store(&data);
    locker
        .execute_batch("BEGIN IMMEDIATE; UPDATE secrets SET value = value;")
        .unwrap();
    await_health(&client, "", ServingStatus::NotServing).await;
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    await_health(&client, "", ServingStatus::Serving).await;
    assert_eq!(
        client.health(BACKUP_FILES).await.unwrap(),
        ServingStatus::NotServing,
        "the store's recovery revived BackupFiles without a source"
    );

    open(&data.source())
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    await_health(&client, BACKUP_FILES, ServingStatus::Serving).await;
}

#[tokio::test]
async fn start_up_failures_name_the_flag_and_the_path_or_address() {
    let data = DataDir::new();
    let file = data.path().join("file");
    std::fs::write(&file, "a regular file").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let under_file = |name: &str| file.join(name).display().to_string();
    let (backups, data_dir) = (under_file("backups"), under_file("data"));
    let state_url = format!("sqlite://{}?mode=rwc", under_file("state.db"));
    let cases = [
        (
            vec!["--listen", addr.as_str()],
            format!("--listen {addr}: "),
            "in use",
        ),
        (
            vec!["--metrics-listen", addr.as_str()],
            format!("--metrics-listen {addr}: "),
            "in use",
        ),
        (
            vec!["--backups-dir", backups.as_str()],
            format!("--backups-dir {backups}: "),
            "Not a directory",
        ),
        (
            vec!["--data-dir", data_dir.as_str()],
            format!("--data-dir {data_dir}: "),
            "Not a directory",
        ),
        (
            vec!["--database-url", &state_url],
            format!("--database-url {}: ", under_file("state.db")),
            "unable to open",
        ),
    ];
    for (flags, needle, why) in cases {
        let (started, stderr) = data.try_start_capturing(&flags);
        assert!(started.is_err(), "{flags:?} started");
        let text = stderr.finish();
        let line = text
            .lines()
            .find(|l| l.starts_with("backup-server: "))
            .unwrap_or_else(|| panic!("{flags:?}: no error line in {text}"));
        assert!(line.contains(&needle), "{flags:?}: {line}");
        assert!(line.contains(why), "{flags:?}: {line}");
    }
    drop(taken);
}
