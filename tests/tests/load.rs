//! Load: many concurrent clients mixing every RPC of BackupFiles (but
//! restore, which replaces the source under everyone), BackupScheduler,
//! Retention and AuditLog against one server for a bounded time (and a
//! bounded number of requests), over loopback.
//!
//! Afterwards: no unexpected errors, no leaked descriptors or audit
//! subscriptions, and the catalog matches the directory, every backup
//! passing integrity_check.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backup_client::{AuditFilter, Owners, SettingsUpdate};
use backup_tests::*;
use tokio_stream::StreamExt;

/// How long the clients run.
const RUN_FOR: Duration = Duration::from_secs(20);
/// Users, each with this many client tasks working on its backups.
const USERS: i64 = 4;
const TASKS_PER_USER: usize = 4;
/// A ceiling on each task's requests, so the run stays bounded on a fast
/// machine too.
const MAX_REQUESTS_PER_TASK: usize = 1500;
/// Descriptors the server may hold beyond its idle baseline afterwards
/// (a lazily opened file or two, not one per request or connection).
const FD_SLACK: usize = 4;

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

/// A small deterministic generator, one per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What one task did: calls per RPC, and the errors it expected.
#[derive(Default)]
struct Tally {
    calls: BTreeMap<&'static str, usize>,
    expected: BTreeMap<String, usize>,
    unexpected: Vec<String>,
    /// (user, backup) answered NOT_FOUND: checked against the audit log.
    vanished: Vec<(i64, String)>,
}

impl Tally {
    fn call(&mut self, rpc: &'static str) {
        *self.calls.entry(rpc).or_default() += 1;
    }

    /// Records an error: `expected(code, message)` says whether it is one
    /// of the RPC's expected errors.
    fn error(&mut self, rpc: &'static str, e: Error, expected: impl Fn(Code, &str) -> bool) {
        match &e {
            Error::Status { code, message, .. } if expected(*code, message) => {
                *self.expected.entry(format!("{rpc}: {code:?}")).or_default() += 1;
            }
            _ => self.unexpected.push(format!("{rpc}: {e}")),
        }
    }

    /// An error on one of the task's own backups: NOT_FOUND is expected
    /// when a sibling task (same user) deleted it through retention, which
    /// the end of the test checks in the audit log. Siblings never delete
    /// each other's backups any other way, and no task names another
    /// user's backups.
    fn own_backup_error(&mut self, rpc: &'static str, user: i64, name: &str, e: Error) {
        if e.code() == Some(Code::NotFound) {
            self.vanished.push((user, name.to_owned()));
        }
        self.error(rpc, e, |code, _| code == Code::NotFound);
    }

    fn merge(&mut self, other: Tally) {
        for (rpc, n) in other.calls {
            *self.calls.entry(rpc).or_default() += n;
        }
        for (what, n) in other.expected {
            *self.expected.entry(what).or_default() += n;
        }
        self.unexpected.extend(other.unexpected);
        self.vanished.extend(other.vanished);
    }
}

/// More concurrent backups than the copy bound lets wait (the server runs
/// with its default of 2 copies, so 8 may wait; 16 tasks can exceed it).
fn too_many_backups(code: Code, message: &str) -> bool {
    code == Code::ResourceExhausted && message.contains("too many backups in progress")
}

/// One client task of `user`: a random mix of calls on its own backups.
async fn user_task(url: String, token: String, user: i64, task: usize, until: Instant) -> Tally {
    let client = Client::connect(&url, &token).await.expect("connect");
    let (mut backups, mut scheduler, mut retention, mut audit) = (
        client.backups(),
        client.scheduler(),
        client.retention(),
        client.audit(),
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((task as u64 + 1) * 0x1000_0001));
    let mut tally = Tally::default();
    // Backups this task created and has not seen deleted.
    let mut mine: Vec<String> = Vec::new();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut created = 0;

    tally.call("UpdateBackupSettings");
    if let Err(e) = scheduler
        .update_settings(
            0,
            SettingsUpdate {
                enabled: Some(false),
                backup_time: Some("03:00".into()),
                keep_count: Some(3),
                ..Default::default()
            },
        )
        .await
    {
        tally.error("UpdateBackupSettings", e, |_, _| false);
    }

    for _ in 0..MAX_REQUESTS_PER_TASK {
        if Instant::now() >= until {
            break;
        }
        let pick = |rng: &mut Rng, mine: &Vec<String>| {
            (!mine.is_empty()).then(|| mine[rng.below(mine.len())].clone())
        };
        match rng.below(12) {
            0..=2 => {
                tally.call("CreateBackup");
                let name = format!("load-u{user}-t{task}-{created}");
                created += 1;
                match backups.create(Some(&name)).await {
                    Ok(b) => {
                        assert_eq!(b.owner_user_id, user);
                        mine.push(b.filename);
                    }
                    Err(e) => tally.error("CreateBackup", e, too_many_backups),
                }
            }
            3 => {
                tally.call("ListBackups");
                match backups.list_page(50, "").await {
                    Ok((page, _)) => {
                        if let Some(b) = page.iter().find(|b| b.owner_user_id != user) {
                            tally
                                .unexpected
                                .push(format!("user {user} listed {}", b.filename));
                        }
                    }
                    Err(e) => tally.error("ListBackups", e, |_, _| false),
                }
            }
            4 => {
                let Some(name) = pick(&mut rng, &mine) else {
                    continue;
                };
                tally.call("GetBackup");
                match backups.get(&name).await {
                    Ok(b) => assert_eq!(b.filename, name),
                    Err(e) => {
                        mine.retain(|n| *n != name);
                        tally.own_backup_error("GetBackup", user, &name, e);
                    }
                }
            }
            5 => {
                let Some(name) = pick(&mut rng, &mine) else {
                    continue;
                };
                tally.call("DownloadBackup");
                let dest = scratch.path().join("download.db");
                match backups.download_to(&name, &dest, |_, _| {}).await {
                    Ok(b) => {
                        assert_eq!(b.filename, name);
                        std::fs::remove_file(&dest).expect("remove the download");
                    }
                    Err(e) => {
                        mine.retain(|n| *n != name);
                        tally.own_backup_error("DownloadBackup", user, &name, e);
                    }
                }
            }
            6 => {
                let Some(name) = pick(&mut rng, &mine) else {
                    continue;
                };
                tally.call("DeleteBackup");
                mine.retain(|n| *n != name);
                if let Err(e) = backups.delete(&name, false).await {
                    tally.own_backup_error("DeleteBackup", user, &name, e);
                }
            }
            7 => {
                tally.call("GetRetentionSummary");
                if let Err(e) = retention.summary(3, Owners::Caller).await {
                    tally.error("GetRetentionSummary", e, |_, _| false);
                }
            }
            8 => {
                tally.call("ApplyRetentionPolicy");
                match retention.apply(3, Owners::Caller).await {
                    Ok(deleted) => mine.retain(|n| !deleted.contains(n)),
                    Err(e) => tally.error("ApplyRetentionPolicy", e, |_, _| false),
                }
            }
            9 => {
                tally.call("UpdateBackupSettings");
                let keep = 1 + rng.below(30) as i32;
                if let Err(e) = scheduler
                    .update_settings(
                        0,
                        SettingsUpdate {
                            keep_count: Some(keep),
                            ..Default::default()
                        },
                    )
                    .await
                {
                    tally.error("UpdateBackupSettings", e, |_, _| false);
                }
            }
            10 => {
                tally.call("GetBackupSettings");
                match scheduler.get_settings(0).await {
                    Ok(s) => assert_eq!(s.user_id, user),
                    Err(e) => tally.error("GetBackupSettings", e, |_, _| false),
                }
            }
            _ => {
                tally.call("ListAuditEvents");
                match audit.list_page(&AuditFilter::default(), 20, "").await {
                    Ok(page) => {
                        if let Some(e) = page.events.iter().find(|e| e.user_id != user) {
                            tally
                                .unexpected
                                .push(format!("user {user} saw event {}", e.id));
                        }
                    }
                    Err(e) => tally.error("ListAuditEvents", e, |_, _| false),
                }
            }
        }
    }
    tally
}

/// The admin's calls: stats, every user's settings, the audit log with the
/// subscriber count.
async fn admin_task(url: String, token: String, until: Instant) -> Tally {
    let client = Client::connect(&url, &token).await.expect("connect");
    let (mut scheduler, mut audit, mut backups) =
        (client.scheduler(), client.audit(), client.backups());
    let mut tally = Tally::default();
    for _ in 0..MAX_REQUESTS_PER_TASK {
        if Instant::now() >= until {
            break;
        }
        tally.call("GetSchedulerStats");
        if let Err(e) = scheduler.stats().await {
            tally.error("GetSchedulerStats", e, |_, _| false);
        }
        tally.call("ListBackupSettings");
        if let Err(e) = scheduler.list_settings().await {
            tally.error("ListBackupSettings", e, |_, _| false);
        }
        tally.call("ListAuditEvents");
        match audit.list_page(&AuditFilter::default(), 50, "").await {
            Ok(page) => {
                if page.active_subscribers.is_none() {
                    tally
                        .unexpected
                        .push("no subscriber count for an admin".into());
                }
            }
            Err(e) => tally.error("ListAuditEvents", e, |_, _| false),
        }
        tally.call("ListBackups");
        if let Err(e) = backups.list_page(100, "").await {
            tally.error("ListBackups", e, |_, _| false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally
}

/// Reads a subscription until `until`; returns the events seen.
async fn subscriber(
    url: String,
    token: String,
    prefix: &'static str,
    until: Instant,
) -> (usize, Tally) {
    let client = Client::connect(&url, &token).await.expect("connect");
    let mut tally = Tally::default();
    tally.call("SubscribeAuditEvents");
    let mut stream = match client.audit().subscribe(None, prefix, None).await {
        Ok(stream) => stream,
        Err(e) => {
            tally.error("SubscribeAuditEvents", e, |_, _| false);
            return (0, tally);
        }
    };
    let mut seen = 0;
    let mut last_id = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => break,
            Ok(Some(Ok(event))) => {
                if event.id <= last_id {
                    tally
                        .unexpected
                        .push(format!("event {} after {last_id}", event.id));
                }
                last_id = event.id;
                seen += 1;
            }
            Ok(Some(Err(e))) => {
                tally.error("SubscribeAuditEvents", e, |_, _| false);
                break;
            }
            Ok(None) => {
                tally
                    .unexpected
                    .push("a subscription ended early".to_owned());
                break;
            }
        }
    }
    // Dropping the stream cancels the subscription.
    (seen, tally)
}

#[tokio::test(flavor = "multi_thread")]
async fn many_clients_mixing_every_rpc_leave_no_errors_leaks_or_inconsistency() {
    let data = DataDir::new();
    let admin_token = data.token(1, true);
    let tokens: Vec<String> = (0..USERS).map(|u| data.token(2 + u, false)).collect();
    // Users download their own backups, as on a single-tenant source, and
    // create more than the default manual-backup quota over the run.
    let server = data.start(&[
        "--allow-user-downloads",
        "--max-manual-backups-per-user",
        "100000",
    ]);
    let pid = server.child.id();

    // Baselines, with no client connected.
    let subscribers_before = {
        let admin = server.client(&admin_token).await;
        admin.audit().active_subscribers().await.unwrap().unwrap()
    };
    let fds_before = wait_for("the server to settle", Duration::from_secs(10), || {
        let n = fd_count(pid);
        std::thread::sleep(Duration::from_millis(200));
        (fd_count(pid) == n).then_some(n)
    })
    .await;

    let started = Instant::now();
    let until = started + RUN_FOR;
    let mut tasks = tokio::task::JoinSet::new();
    for (u, token) in tokens.iter().enumerate() {
        for t in 0..TASKS_PER_USER {
            let (url, token) = (server.url.clone(), token.clone());
            let user = 2 + u as i64;
            tasks.spawn(async move {
                let tally = user_task(url, token, user, u * TASKS_PER_USER + t, until).await;
                (0, tally)
            });
        }
    }
    {
        let (url, token) = (server.url.clone(), admin_token.clone());
        tasks.spawn(async move { (0, admin_task(url, token, until).await) });
    }
    for (token, prefix) in [(&admin_token, ""), (&tokens[0], "backup_files.")] {
        let (url, token) = (server.url.clone(), token.clone());
        tasks.spawn(subscriber(url, token, prefix, until));
    }
    let mut total = Tally::default();
    let mut streamed = 0;
    while let Some(done) = tasks.join_next().await {
        let (seen, tally) = done.expect("a client task panicked");
        streamed += seen;
        total.merge(tally);
    }
    let took = started.elapsed();
    let requests: usize = total.calls.values().sum();
    eprintln!(
        "load: {requests} requests in {took:?}, {streamed} streamed events; calls {:?}; expected errors {:?}",
        total.calls, total.expected
    );
    assert!(
        total.unexpected.is_empty(),
        "{} unexpected errors: {:?}",
        total.unexpected.len(),
        &total.unexpected[..total.unexpected.len().min(20)]
    );
    for rpc in [
        "CreateBackup",
        "ListBackups",
        "GetBackup",
        "DownloadBackup",
        "DeleteBackup",
        "GetRetentionSummary",
        "ApplyRetentionPolicy",
        "UpdateBackupSettings",
        "GetBackupSettings",
        "GetSchedulerStats",
        "ListAuditEvents",
        "SubscribeAuditEvents",
    ] {
        assert!(
            total.calls.get(rpc).is_some_and(|n| *n > 0),
            "no {rpc} call"
        );
    }
    assert!(streamed > 0, "the subscribers saw no events");
    assert!(took < RUN_FOR + Duration::from_secs(30), "took {took:?}");

    // Every client is gone: subscriptions end and connections close.
    {
        let admin = server.client(&admin_token).await;
        let mut audit = admin.audit();
        let mut now = None;
        for _ in 0..100 {
            now = audit.active_subscribers().await.unwrap();
            if now == Some(subscribers_before) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(now, Some(subscribers_before), "audit subscriptions leaked");
        assert_eq!(
            admin.health("").await.unwrap(),
            backup_client::proto_health::health_check_response::ServingStatus::Serving
        );
    }
    let mut fds_after = fd_count(pid);
    for _ in 0..100 {
        if fds_after <= fds_before + FD_SLACK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = fd_count(pid);
    }
    eprintln!("load: server descriptors {fds_before} before, {fds_after} after");
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "descriptors leaked: {fds_before} before, {fds_after} after"
    );

    // Every backup a task found gone was deleted by its user's retention
    // (another task's run), as audited.
    let by_retention: std::collections::HashSet<(i64, String)> = {
        let conn = state_store(&data);
        let mut stmt = conn
            .prepare(
                "SELECT user_id, resource_id FROM audit_events
                 WHERE event_type = 'backup_retention.delete' AND success",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for gone in &total.vanished {
        assert!(
            by_retention.contains(gone),
            "{gone:?} was NOT_FOUND without a retention run deleting it"
        );
    }

    // The catalog matches the storage, and every backup is sound.
    let on_disk = data.stored_backups();
    assert!(
        !on_disk.iter().any(|n| n.starts_with('.')),
        "partial files left: {on_disk:?}"
    );
    let catalog: Vec<String> = {
        let conn = state_store(&data);
        let mut stmt = conn
            .prepare("SELECT filename FROM backups ORDER BY filename")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(catalog, on_disk, "catalog and storage differ");
    for name in &on_disk {
        assert!(
            integrity_ok(&data.backup_file(name)),
            "{name} fails integrity_check"
        );
    }
    let admin = server.client(&admin_token).await;
    let listed = admin.backups().list_all().await.unwrap();
    assert_eq!(listed.len(), on_disk.len());
    assert!(
        listed
            .iter()
            .all(|b| (2..2 + USERS).contains(&b.owner_user_id))
    );
}
