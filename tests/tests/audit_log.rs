//! AuditLog end to end: real server processes sharing a state store, events
//! produced through BackupFiles, streams read through the client crate.

use std::time::{Duration, Instant};

use backup_client::{AuditFilter, AuditStream};
use backup_tests::*;
use tokio_stream::StreamExt;

/// How long any single expected event may take to arrive.
const PATIENCE: Duration = Duration::from_secs(20);

/// Ids in the state store greater than `after`, read directly.
fn stored_ids_after(data: &DataDir, after: i64) -> Vec<i64> {
    data.state_db()
        .query(
            "SELECT id FROM audit_events WHERE id > $1 ORDER BY id",
            &[&after],
        )
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn last_stored_id(data: &DataDir) -> i64 {
    data.state_db()
        .query_one("SELECT coalesce(max(id), 0) FROM audit_events", &[])
        .get(0)
}

async fn next_event(stream: &mut AuditStream) -> proto::AuditEvent {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("an event, not an error")
}

/// Reads events until the one with id `last`.
async fn read_until(stream: &mut AuditStream, last: i64) -> Vec<proto::AuditEvent> {
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &proto::AuditEvent| e.id < last)
    {
        events.push(next_event(stream).await);
    }
    events
}

fn ids(events: &[proto::AuditEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

fn detail<'a>(event: &'a proto::AuditEvent, key: &str) -> &'a prost_types::value::Kind {
    event
        .details
        .as_ref()
        .and_then(|d| d.fields.get(key))
        .and_then(|v| v.kind.as_ref())
        .unwrap_or_else(|| panic!("{} has no detail {key}", event.event_type))
}

fn number(n: i64) -> prost_types::value::Kind {
    prost_types::value::Kind::NumberValue(n as f64)
}

fn text(s: &str) -> prost_types::value::Kind {
    prost_types::value::Kind::StringValue(s.to_owned())
}

fn boolean(b: bool) -> prost_types::value::Kind {
    prost_types::value::Kind::BoolValue(b)
}

/// One audited failure (`backup_files.delete`, NOT_FOUND): the cheapest
/// event a test can make.
async fn delete_missing(backups: &mut backup_client::Backups, name: &str) {
    assert_eq!(code(backups.delete(name, false).await), Code::NotFound);
}

/// Runs `tasks` writers, each making `per_task` events (alternately a failed
/// delete and a refused token), through clients of its own.
fn spawn_writers(
    url: &str,
    token: &str,
    tasks: usize,
    per_task: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|t| {
            let (url, token) = (url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let mut backups = Client::connect(&url, &token)
                    .await
                    .expect("connect")
                    .backups();
                let mut stranger = Client::connect(&url, "bk_wrong")
                    .await
                    .expect("connect")
                    .backups();
                for i in 0..per_task {
                    if i % 2 == 0 {
                        delete_missing(&mut backups, &format!("w{t}-{i}.db")).await;
                    } else {
                        assert_eq!(code(stranger.get("x.db").await), Code::Unauthenticated);
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn backup_files_and_auth_events_appear_with_their_fields() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler", "--allow-user-downloads"]);
    let mut audit = server.client(&data.token(1, true)).await.audit();
    let mut user = server.client(&data.token(2, false)).await.backups();
    let mut watch = audit.subscribe(None, "", None).await.unwrap();

    let created = user.create(Some("one")).await.unwrap();
    user.download_to("one.db", &data.path().join("one.db"), |_, _| {})
        .await
        .unwrap();
    user.delete("one.db", false).await.unwrap();
    delete_missing(&mut user, "gone.db").await;
    let mut stranger = server.client("bk_wrong").await.backups();
    assert_eq!(code(stranger.create(None).await), Code::Unauthenticated);

    let streamed: Vec<proto::AuditEvent> = {
        let mut events = Vec::new();
        for _ in 0..5 {
            events.push(next_event(&mut watch).await);
        }
        events
    };
    let kinds: Vec<(&str, i64, &str, &str, &str, bool)> = streamed
        .iter()
        .map(|e| {
            (
                e.event_type.as_str(),
                e.user_id,
                e.resource_type.as_str(),
                e.resource_id.as_str(),
                e.action.as_str(),
                e.success,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("backup_files.create", 2, "backup", "one.db", "create", true),
            (
                "backup_files.download",
                2,
                "backup",
                "one.db",
                "download",
                true
            ),
            ("backup_files.delete", 2, "backup", "one.db", "delete", true),
            (
                "backup_files.delete",
                2,
                "backup",
                "gone.db",
                "delete",
                false
            ),
            ("auth.denied", 0, "rpc", "CreateBackup", "denied", false),
        ]
    );
    let [create, download, delete, failed, denied] = &streamed[..] else {
        unreachable!()
    };
    assert_eq!(detail(create, "size"), &number(created.size_bytes));
    assert_eq!(detail(create, "sha256"), &text(&created.sha256));
    assert_eq!(detail(create, "kind"), &text("manual"));
    assert_eq!(detail(download, "size"), &number(created.size_bytes));
    assert_eq!(detail(delete, "forced"), &boolean(false));
    assert_eq!(detail(delete, "protected"), &boolean(false));
    assert!(create.error_message.is_empty());
    assert!(
        failed.error_message.contains("gone.db"),
        "{}",
        failed.error_message
    );
    assert_eq!(detail(denied, "method"), &text("CreateBackup"));
    assert_eq!(detail(denied, "token_present"), &boolean(true));
    assert!(
        !denied.error_message.contains("bk_wrong"),
        "the token leaked"
    );
    assert!(streamed.windows(2).all(|w| w[0].id < w[1].id));
    let now = chrono::Utc::now().timestamp();
    for e in &streamed {
        let at = e.timestamp.as_ref().expect("a timestamp").seconds;
        assert!((now - 60..=now).contains(&at), "{e:?}");
    }

    // Listing returns the same events, oldest first, filtered by prefix.
    let all = audit.list_all(&AuditFilter::default()).await.unwrap();
    assert_eq!(all, streamed);
    let deletes = audit
        .list_all(&AuditFilter {
            event_type_prefix: "backup_files.delete".into(),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(deletes, streamed[2..4]);
    // `_` is not a wildcard.
    let none = audit
        .list_all(&AuditFilter {
            event_type_prefix: "backupXfiles".into(),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    // A time range.
    let later = AuditFilter {
        start_time: denied.timestamp,
        ..AuditFilter::default()
    };
    assert_eq!(audit.list_all(&later).await.unwrap(), streamed[4..]);
    let earlier = AuditFilter {
        end_time: denied.timestamp,
        ..AuditFilter::default()
    };
    assert_eq!(audit.list_all(&earlier).await.unwrap(), streamed[..4]);
    // Pages cover every event once.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = audit
            .list_page(&AuditFilter::default(), 2, &token)
            .await
            .unwrap();
        assert!(page.events.len() <= 2);
        paged.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, streamed);
    let err = audit
        .list_page(&AuditFilter::default(), -1, "")
        .await
        .unwrap_err();
    assert_eq!(err.violated_fields(), ["page_size"]);
    let err = audit
        .list_page(&AuditFilter::default(), 1, "forged.token")
        .await
        .unwrap_err();
    assert_eq!(err.violated_fields(), ["page_token"]);
    let err = audit
        .list_page(
            &AuditFilter {
                start_time: denied.timestamp,
                end_time: create.timestamp,
                ..AuditFilter::default()
            },
            0,
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(err.violated_fields(), ["end_time"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_from_after_id_is_gapless_while_writers_run() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = data.token(1, true);
    let user = data.token(2, false);
    let mut audit = server.client(&admin).await.audit();
    let writers = spawn_writers(&server.url, &user, 4, 1000);
    let mut writing = tokio::spawn(async move {
        for w in writers {
            w.await.expect("a writer succeeds");
        }
    });

    // Read 500 events, drop the stream, resume after the last id; repeat
    // until the writers are done and the newest stored event has arrived.
    // The writers' end is awaited beside the stream: their last event may
    // arrive before they return, and then no event would wake the reader.
    let mut received = Vec::new();
    let mut after = 0;
    let mut resumptions = 0;
    let mut target = None;
    'resume: loop {
        let mut stream = audit.subscribe(Some(after), "", None).await.unwrap();
        resumptions += 1;
        for _ in 0..500 {
            if target.is_some_and(|t| after >= t) {
                break 'resume;
            }
            tokio::select! {
                finished = &mut writing, if target.is_none() => {
                    finished.expect("the writers succeed");
                    target = Some(last_stored_id(&data));
                }
                event = next_event(&mut stream) => {
                    after = event.id;
                    received.push(event.id);
                }
            }
        }
    }
    assert!(received.len() >= 4000, "only {} events", received.len());
    assert!(resumptions >= 8, "only {resumptions} subscriptions");
    assert_eq!(received, stored_ids_after(&data, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_subscriber_delays_neither_backups_nor_other_subscribers() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let admin = data.token(1, true);
    let user = data.token(2, false);
    let mut backups = server.client(&user).await.backups();

    let baseline = Instant::now();
    backups.create(Some("baseline")).await.unwrap();
    let baseline = baseline.elapsed();
    let start = last_stored_id(&data);

    // Subscribed, then never read until the end; each on its own connection.
    let mut stalled = server.client(&admin).await.audit();
    let mut stalled = stalled.subscribe(None, "", None).await.unwrap();
    // Another subscriber reads all along, noting when each event arrives.
    let mut watcher = server.client(&admin).await.audit();
    let mut watcher = watcher.subscribe(None, "", None).await.unwrap();
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(event)) = watcher.next().await {
            if arrivals.send((event, Instant::now())).is_err() {
                break;
            }
        }
    });
    // Large events (a long name, twice in each) fill the stalled stream's
    // HTTP/2 window and its queue on the server...
    let long = "x".repeat(6_000);
    for i in 0..600 {
        delete_missing(&mut backups, &format!("{long}{i}.db")).await;
    }
    // ...and more small ones than the server's live buffer holds.
    for w in spawn_writers(&server.url, &user, 8, 700) {
        w.await.unwrap();
    }
    let during = Instant::now();
    let created = backups.create(Some("while-stalled")).await.unwrap();
    let returned = Instant::now();
    let during = returned - during;
    println!("CreateBackup took {baseline:?} alone, {during:?} beside a stalled subscriber");
    assert!(
        during < baseline + Duration::from_secs(5),
        "CreateBackup took {during:?} beside a stalled subscriber ({baseline:?} alone)"
    );

    let last = last_stored_id(&data);
    let mut seen = Vec::new();
    let mut lag = Duration::ZERO;
    while seen.last().is_none_or(|id| *id < last) {
        let (event, at) = tokio::time::timeout(PATIENCE, arrived.recv())
            .await
            .expect("the watcher keeps receiving")
            .expect("the watcher's stream is open");
        if event.id == last {
            assert_eq!(event.resource_id, created.filename);
            lag = at.saturating_duration_since(returned);
        }
        seen.push(event.id);
    }
    assert_eq!(seen, stored_ids_after(&data, start));
    println!("the other subscriber had the backup's event {lag:?} after CreateBackup returned");
    assert!(
        lag < Duration::from_secs(2),
        "the other subscriber lagged {lag:?}"
    );

    // The stalled one, once it reads, gets everything: nothing lost.
    let caught_up = read_until(&mut stalled, last).await;
    assert_eq!(ids(&caught_up), stored_ids_after(&data, start));
}

#[tokio::test]
async fn users_see_only_their_own_events() {
    let data = DataDir::new();
    let server = data.start(&["--no-scheduler"]);
    let mut admin = server.client(&data.token(1, true)).await.audit();
    let alice_client = server.client(&data.token(2, false)).await;
    let (mut alice, mut alice_backups) = (alice_client.audit(), alice_client.backups());
    let mut bob = server.client(&data.token(3, false)).await.backups();
    let mut stranger = server.client("bk_wrong").await.backups();

    alice_backups.create(Some("a1")).await.unwrap();
    bob.create(Some("b1")).await.unwrap();
    assert_eq!(code(stranger.list_all().await), Code::Unauthenticated);

    let mine = alice.list_all(&AuditFilter::default()).await.unwrap();
    assert_eq!(
        mine.iter()
            .map(|e| (e.event_type.as_str(), e.user_id, e.resource_id.as_str()))
            .collect::<Vec<_>>(),
        [("backup_files.create", 2, "a1.db")]
    );
    let explicit = AuditFilter {
        user_id: Some(2),
        ..AuditFilter::default()
    };
    assert_eq!(alice.list_all(&explicit).await.unwrap(), mine);
    for other in [3, 0, 1] {
        let theirs = AuditFilter {
            user_id: Some(other),
            ..AuditFilter::default()
        };
        assert_eq!(
            code(alice.list_all(&theirs).await),
            Code::PermissionDenied,
            "user {other}"
        );
        let refused = alice.subscribe(Some(0), "", Some(other)).await.err();
        assert_eq!(
            refused.and_then(|e| e.code()),
            Some(Code::PermissionDenied),
            "user {other}"
        );
    }
    assert_eq!(alice.active_subscribers().await.unwrap(), None);

    let bobs = AuditFilter {
        user_id: Some(3),
        ..AuditFilter::default()
    };
    let bobs = admin.list_all(&bobs).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].resource_id, "b1.db");
    let everyone = admin.list_all(&AuditFilter::default()).await.unwrap();
    assert_eq!(everyone.len(), 3, "{everyone:?}");
    assert!(everyone.iter().any(|e| e.event_type == "auth.denied"));

    // Alice's stream: her replayed event, then only her new ones.
    let mut stream = alice.subscribe(Some(0), "", None).await.unwrap();
    assert_eq!(next_event(&mut stream).await.id, mine[0].id);
    bob.create(Some("b2")).await.unwrap();
    assert_eq!(code(stranger.list_all().await), Code::Unauthenticated);
    alice_backups.create(Some("a2")).await.unwrap();
    let next = next_event(&mut stream).await;
    assert_eq!((next.user_id, next.resource_id.as_str()), (2, "a2.db"));
}

#[tokio::test]
async fn cancelling_frees_the_subscription_and_empty_filters_stay_open() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut audit = server.client(&data.token(1, true)).await.audit();
    let mut backups = server.client(&data.token(2, false)).await.backups();
    assert_eq!(audit.active_subscribers().await.unwrap(), Some(0));

    let mut everything = audit.subscribe(None, "", None).await.unwrap();
    let mut nothing = audit.subscribe(None, "no.such.event", None).await.unwrap();
    let mut creates = audit
        .subscribe(None, "backup_files.create", None)
        .await
        .unwrap();
    assert_eq!(audit.active_subscribers().await.unwrap(), Some(3));

    for i in 0..20 {
        delete_missing(&mut backups, &format!("m{i}.db")).await;
    }
    let created = backups.create(Some("c")).await.unwrap();
    let last = last_stored_id(&data);
    assert_eq!(read_until(&mut everything, last).await.len(), 21);
    // The create filter skipped twenty deletes and still got its event.
    let first = next_event(&mut creates).await;
    assert_eq!((first.id, first.resource_id), (last, created.filename));
    // The filter matching nothing has nothing, and is still open.
    assert!(
        tokio::time::timeout(Duration::ZERO, nothing.next())
            .await
            .is_err()
    );
    assert_eq!(audit.active_subscribers().await.unwrap(), Some(3));

    drop(everything);
    wait_for_subscribers(&mut audit, 2).await;
    drop(nothing);
    drop(creates);
    wait_for_subscribers(&mut audit, 0).await;

    let err = audit.subscribe(Some(-1), "", None).await.err().unwrap();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert_eq!(err.violated_fields(), ["after_id"]);
    let err = audit
        .subscribe(Some(last + 100), "", None)
        .await
        .err()
        .unwrap();
    assert_eq!(err.violated_fields(), ["after_id"]);
    assert!(err.to_string().contains(&format!("({last})")), "{err}");
    // At the last id exactly is fine: it waits for the next one.
    let mut at_end = audit.subscribe(Some(last), "", None).await.unwrap();
    delete_missing(&mut backups, "after.db").await;
    assert_eq!(next_event(&mut at_end).await.id, last + 1);
}

async fn wait_for_subscribers(audit: &mut backup_client::Audit, n: i32) {
    let deadline = Instant::now() + PATIENCE;
    while audit.active_subscribers().await.expect("the gauge") != Some(n) {
        assert!(
            Instant::now() < deadline,
            "the server still counts more than {n} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_with_unavailable_and_where_to_resume() {
    let data = DataDir::new();
    let mut server = data.start(&[]);
    let client = server.client(&data.token(1, true)).await;
    let mut stream = client.audit().subscribe(None, "", None).await.unwrap();
    delete_missing(&mut client.backups(), "x.db").await;
    let event = next_event(&mut stream).await;

    let exit = tokio::task::spawn_blocking(move || server.terminate());
    let end = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream ends in time")
        .expect("a final status");
    let err = end.expect_err("an error status, not an event");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(
        err.to_string().contains(&format!("after_id={}", event.id)),
        "{err}"
    );
    assert!(stream.next().await.is_none());
    drop(stream);
    drop(client);
    let status = exit.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_another_process_writes_reach_subscribers() {
    let data = DataDir::new();
    // No scheduler: its start event could land after `start` is read.
    let first = data.start(&["--no-scheduler"]);
    let second = data.start(&["--no-scheduler"]);
    let admin = data.token(1, true);
    let user = data.token(2, false);
    let start = last_stored_id(&data);
    let mut audit = first.client(&admin).await.audit();
    let mut stream = audit.subscribe(None, "", None).await.unwrap();

    // Both servers write at once; only the first one's events are in its
    // live broadcast.
    let mut writers = spawn_writers(&first.url, &user, 2, 200);
    writers.extend(spawn_writers(&second.url, &user, 2, 200));
    for w in writers {
        w.await.unwrap();
    }
    let mut only_second = second.client(&user).await.backups();
    delete_missing(&mut only_second, "from-the-second-server.db").await;

    let last = last_stored_id(&data);
    let events = read_until(&mut stream, last).await;
    assert_eq!(ids(&events), stored_ids_after(&data, start));
    assert_eq!(events.len(), 801);
    assert_eq!(
        events.last().unwrap().resource_id,
        "from-the-second-server.db"
    );
}
