//! Chaos across replicas: three server processes on one PostgreSQL state
//! store and one data directory, 300 users whose daily slots fall due over
//! three minutes, and one replica SIGKILLed and restarted at random every
//! few seconds. Afterwards every user has exactly one automatic backup, none
//! taken before its slot, and an audit subscriber that followed the whole
//! run while being moved between replicas saw the audit log exactly as it is
//! listed at the end: no gap, no duplicate.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_client::{AuditFilter, SettingsUpdate};
use backup_tests::*;
use chrono::{DateTime, Timelike, Utc};
use tokio_stream::StreamExt;

/// Users 1..=USERS; user 1 is the admin.
const USERS: i64 = 300;
/// The replicas' flags: a short lease and check interval, so a replica
/// takes the scheduler over seconds after its holder dies.
const REPLICA_FLAGS: &[&str] = &["--lease-ttl", "3", "--check-interval", "1"];
/// After the last slot, how long the chaos goes on once every user has a
/// backup, and at most.
const GRACE: Duration = Duration::from_secs(15);
const CHAOS_TIMEOUT: Duration = Duration::from_secs(75);
/// How long the subscriber stays on one replica before moving on purpose.
const MOVE_EVERY: Duration = Duration::from_secs(10);

/// The URLs of the replicas that are up, by slot; `None` while one is down.
type Urls = Arc<Mutex<Vec<Option<String>>>>;

fn live_urls(urls: &Urls) -> Vec<String> {
    urls.lock().unwrap().iter().flatten().cloned().collect()
}

/// One of `urls` at random, preferring one other than `avoid`.
fn pick(urls: &Urls, avoid: Option<&str>) -> Option<String> {
    let live = live_urls(urls);
    let others: Vec<&String> = live.iter().filter(|u| Some(u.as_str()) != avoid).collect();
    let from: Vec<&String> = if others.is_empty() {
        live.iter().collect()
    } else {
        others
    };
    (!from.is_empty()).then(|| from[rand::random_range(0..from.len())].clone())
}

/// A client of some live replica, retrying while replicas come and go.
async fn any_client(urls: &Urls, token: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(url) = pick(urls, None)
            && let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_secs(2), Client::connect(&url, token)).await
        {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "no replica accepted a connection for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which replica holds the scheduler lease, by its own stats; `None` if
/// none says so within a second.
async fn lease_holder(urls: &Urls, token: &str) -> Option<usize> {
    let live: Vec<(usize, String)> = urls
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter_map(|(slot, url)| url.clone().map(|u| (slot, u)))
        .collect();
    for (slot, url) in live {
        let asked = tokio::time::timeout(Duration::from_secs(1), async {
            let client = Client::connect(&url, token).await.ok()?;
            client.scheduler().stats().await.ok()
        })
        .await;
        if let Ok(Some(stats)) = asked
            && stats.holds_lease
        {
            return Some(slot);
        }
    }
    None
}

/// Every backup, as the admin lists them on some live replica (retried
/// when that replica dies during the call).
async fn all_backups(urls: &Urls, token: &str) -> Vec<proto::Backup> {
    for _ in 0..20 {
        let client = any_client(urls, token).await;
        match tokio::time::timeout(Duration::from_secs(20), client.backups().list_all()).await {
            Ok(Ok(backups)) => return backups,
            Ok(Err(e)) => eprintln!("chaos: ListBackups failed, retrying elsewhere: {e}"),
            Err(_) => eprintln!("chaos: ListBackups took over 20 s, retrying elsewhere"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("ListBackups failed 20 times in a row");
}

/// Every audit event, as the admin lists them (all pages) on some live
/// replica.
async fn all_events(urls: &Urls, token: &str) -> Vec<proto::AuditEvent> {
    for _ in 0..20 {
        let mut audit = any_client(urls, token).await.audit();
        match tokio::time::timeout(
            Duration::from_secs(30),
            audit.list_all(&AuditFilter::default()),
        )
        .await
        {
            Ok(Ok(events)) => return events,
            Ok(Err(e)) => eprintln!("chaos: ListAuditEvents failed, retrying elsewhere: {e}"),
            Err(_) => eprintln!("chaos: ListAuditEvents took over 30 s, retrying elsewhere"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("ListAuditEvents failed 20 times in a row");
}

/// Automatic backups by owner.
fn auto_by_owner(backups: &[proto::Backup]) -> BTreeMap<i64, Vec<&proto::Backup>> {
    let mut by_owner: BTreeMap<i64, Vec<&proto::Backup>> = BTreeMap::new();
    for b in backups
        .iter()
        .filter(|b| b.kind == proto::BackupKind::Auto as i32)
    {
        by_owner.entry(b.owner_user_id).or_default().push(b);
    }
    by_owner
}

/// Ids as ranges, `1-5, 9`, for short messages.
fn ranges(ids: impl IntoIterator<Item = i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    for id in ids {
        run = match run {
            Some((a, b)) if id == b + 1 => Some((a, id)),
            Some((a, b)) => {
                out.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

fn at(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a valid timestamp")
}

/// What the subscriber saw and did.
#[derive(Default)]
struct Followed {
    /// Every event id received, in order of arrival.
    ids: Vec<i64>,
    /// Subscriptions made.
    subscriptions: u32,
    /// Streams that broke or ended (rather than being left on purpose).
    breaks: Vec<String>,
    /// Subscribe calls or connections refused.
    refusals: Vec<String>,
}

impl Followed {
    fn last(&self) -> i64 {
        self.ids.iter().copied().max().unwrap_or(0)
    }
}

/// Follows the audit log from the first event until `stop`, moving to
/// another replica whenever its stream breaks and every [`MOVE_EVERY`],
/// resuming after the last id it saw.
async fn follow(
    urls: Urls,
    token: String,
    followed: Arc<Mutex<Followed>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut current: Option<String> = None;
    while !*stop.borrow() {
        let Some(url) = pick(&urls, current.as_deref()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        current = Some(url.clone());
        let after = followed.lock().unwrap().last();
        let subscribed = tokio::time::timeout(Duration::from_secs(5), async {
            let client = Client::connect(&url, &token).await?;
            client.audit().subscribe(Some(after), "", None).await
        })
        .await;
        let mut stream = match subscribed {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                followed
                    .lock()
                    .unwrap()
                    .refusals
                    .push(format!("{url} after {after}: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                followed
                    .lock()
                    .unwrap()
                    .refusals
                    .push(format!("{url} after {after}: no answer in 5 s"));
                continue;
            }
        };
        followed.lock().unwrap().subscriptions += 1;
        let leave = tokio::time::sleep(MOVE_EVERY);
        tokio::pin!(leave);
        loop {
            tokio::select! {
                () = &mut leave => break,
                _ = stop.changed() => return,
                next = stream.next() => match next {
                    Some(Ok(event)) => followed.lock().unwrap().ids.push(event.id),
                    Some(Err(e)) => {
                        let mut f = followed.lock().unwrap();
                        let last = f.last();
                        f.breaks.push(format!("{url} after {last}: {e}"));
                        break;
                    }
                    None => {
                        let mut f = followed.lock().unwrap();
                        let last = f.last();
                        f.breaks.push(format!("{url} after {last}: ended"));
                        break;
                    }
                },
            }
        }
    }
}

/// The three replicas: their processes and the URLs the others read.
struct Replicas {
    data: Arc<DataDir>,
    env: Vec<(String, String)>,
    servers: Vec<Option<Server>>,
    urls: Urls,
    /// Whether each was SIGKILLed and when, for the report.
    kills: Vec<(Duration, usize, u32)>,
}

impl Replicas {
    /// Starts replica `slot` (off the runtime's threads: the harness blocks
    /// until the ready line), retrying a start that fails.
    async fn start(&mut self, slot: usize) {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let (data, env) = (Arc::clone(&self.data), self.env.clone());
            let started =
                tokio::task::spawn_blocking(move || data.try_start_with(REPLICA_FLAGS, &env))
                    .await
                    .expect("the start task");
            match started {
                Ok(server) => {
                    self.urls.lock().unwrap()[slot] = Some(server.url.clone());
                    self.servers[slot] = Some(server);
                    return;
                }
                Err(line) => {
                    eprintln!("chaos: replica {slot} did not start: {line:?}");
                    failures.push(line);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        panic!("replica {slot} did not start three times: {failures:?}");
    }

    fn kill(&mut self, slot: usize, since: Instant) {
        self.urls.lock().unwrap()[slot] = None;
        if let Some(mut server) = self.servers[slot].take() {
            let pid = server.child.id();
            server.kill();
            self.kills.push((since.elapsed(), slot, pid));
            eprintln!(
                "chaos: t={:.1}s SIGKILLed replica {slot} (pid {pid}, {})",
                since.elapsed().as_secs_f64(),
                server.url
            );
        }
    }
}

/// Creates users 1..=USERS in the state store in one statement, as
/// `token create` would one at a time (user 1 exists already, as admin).
fn create_users_in_postgres(database_url: &str) {
    let sql = format!(
        "INSERT INTO users (id, is_admin, created_at) \
         SELECT g, false, now() FROM generate_series(1, {USERS}) AS g \
         ON CONFLICT (id) DO NOTHING"
    );
    // tests/run.sh puts the cluster's programs (psql beside createdb) on
    // the PATH.
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database_url,
            "-c",
            &sql,
        ])
        .output()
        .expect("run psql (PostgreSQL's programs must be on the PATH)");
    assert!(
        out.status.success(),
        "creating the users with psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first slot: a whole minute at least 40 s ahead, so 300 settings
/// updates are done well before it.
fn first_slot() -> DateTime<Utc> {
    let now = Utc::now();
    let mut slot =
        now.with_second(0).unwrap().with_nanosecond(0).unwrap() + chrono::Duration::minutes(1);
    if slot - now < chrono::Duration::seconds(40) {
        slot += chrono::Duration::minutes(1);
    }
    slot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_under_sigkill_back_up_each_slot_once_and_audit_without_gaps() {
    let began = Instant::now();
    let data = Arc::new(DataDir::new());
    let database_url = postgres::new_database();
    let env = vec![
        ("DATABASE_URL".to_owned(), database_url.clone()),
        // Lease takeovers in the log, beside warnings and errors.
        ("RUST_LOG".to_owned(), "warn,backup_server=info".to_owned()),
    ];
    let out = data
        .command()
        .envs(env.iter().cloned())
        .args(["token", "create", "--user-id", "1", "--admin"])
        .output()
        .expect("run token create");
    assert!(out.status.success(), "token create: {out:?}");
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    create_users_in_postgres(&database_url);

    let urls: Urls = Arc::new(Mutex::new(vec![None; 3]));
    let mut replicas = Replicas {
        data: Arc::clone(&data),
        env,
        servers: (0..3).map(|_| None).collect(),
        urls: Arc::clone(&urls),
        kills: Vec::new(),
    };
    for slot in 0..3 {
        replicas.start(slot).await;
    }

    // The subscriber, from the very first event.
    let followed = Arc::new(Mutex::new(Followed::default()));
    let (stop_following, stop) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(follow(
        Arc::clone(&urls),
        admin.clone(),
        Arc::clone(&followed),
        stop,
    ));

    // User i's slot: the first slot plus i % 3 minutes.
    let first = first_slot();
    let slot_of = |user: i64| first + chrono::Duration::minutes(user % 3);
    let last_slot = slot_of(2);
    {
        let mut scheduler = any_client(&urls, &admin).await.scheduler();
        for user in 1..=USERS {
            let slot = slot_of(user);
            let settings = scheduler
                .update_settings(
                    user,
                    SettingsUpdate {
                        enabled: Some(true),
                        frequency: Some(proto::Frequency::Daily),
                        backup_time: Some(slot.format("%H:%M").to_string()),
                        timezone: Some("UTC".into()),
                        keep_count: Some(7),
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("settings of user {user}: {e}"));
            assert_eq!(
                settings.next_backup_at.map(|t| t.seconds),
                Some(slot.timestamp()),
                "user {user}'s next backup is not its slot {slot}"
            );
        }
    }
    assert!(
        Utc::now() < first,
        "setting up took past the first slot {first}"
    );
    eprintln!(
        "chaos: t={:.1}s schedules set: slots {first}, +1 min, +2 min ({} s from now to the last)",
        began.elapsed().as_secs_f64(),
        (last_slot - Utc::now()).num_seconds()
    );

    // The chaos: one replica down at a time, every 3-6 s, for 1-2 s; and
    // the lease holder in the middle of each slot's pass (0.1-1.2 s after
    // the slot), when it has claimed runs and not finished them.
    let grace_from =
        |slot: DateTime<Utc>, d: Duration| slot + chrono::Duration::from_std(d).unwrap();
    let mut mid_pass: Vec<DateTime<Utc>> = (0..3)
        .map(|m| {
            first
                + chrono::Duration::minutes(m)
                + chrono::Duration::milliseconds(rand::random_range(100..1200))
        })
        .collect();
    let covered = loop {
        let mut next_kill =
            Utc::now() + chrono::Duration::milliseconds(rand::random_range(3000..6000));
        let holder_only = mid_pass.first().is_some_and(|&at| at <= next_kill);
        if holder_only {
            next_kill = mid_pass.remove(0);
        }
        while Utc::now() < next_kill {
            let left = (next_kill - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
        let now = Utc::now();
        if now >= grace_from(last_slot, GRACE) {
            let backups = all_backups(&urls, &admin).await;
            let by_owner = auto_by_owner(&backups);
            let covered = (1..=USERS).filter(|u| by_owner.contains_key(u)).count();
            if covered == USERS as usize || now >= grace_from(last_slot, CHAOS_TIMEOUT) {
                break covered;
            }
        }
        // Half of the other kills take the lease holder too.
        let holder = if holder_only || rand::random_bool(0.5) {
            lease_holder(&urls, &admin).await
        } else {
            None
        };
        let slot = holder.unwrap_or_else(|| rand::random_range(0..3));
        replicas.kill(slot, began);
        tokio::time::sleep(Duration::from_millis(rand::random_range(1000..2000))).await;
        replicas.start(slot).await;
    };
    eprintln!(
        "chaos: t={:.1}s chaos over after {} kills; {covered} of {USERS} users had a backup",
        began.elapsed().as_secs_f64(),
        replicas.kills.len()
    );

    // Settle: every replica up, more than a lease TTL for a takeover to
    // settle interrupted runs and retry them, then until the catalog stops
    // changing (at most 45 s).
    for slot in 0..3 {
        if replicas.servers[slot].is_none() {
            replicas.start(slot).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let settle_deadline = Instant::now() + Duration::from_secs(45);
    let mut backups = all_backups(&urls, &admin).await;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = all_backups(&urls, &admin).await;
        let same = again.len() == backups.len();
        backups = again;
        if same || Instant::now() > settle_deadline {
            break;
        }
    }

    // 1. Exactly one automatic backup per user, none before its slot.
    let by_owner = auto_by_owner(&backups);
    let missing: Vec<i64> = (1..=USERS).filter(|u| !by_owner.contains_key(u)).collect();
    let twice: Vec<String> = by_owner
        .iter()
        .filter(|(_, b)| b.len() > 1)
        .map(|(u, b)| {
            let names: Vec<&str> = b.iter().map(|b| b.filename.as_str()).collect();
            format!("user {u}: {}", names.join(" "))
        })
        .collect();
    let strangers: Vec<i64> = by_owner
        .keys()
        .copied()
        .filter(|u| !(1..=USERS).contains(u))
        .collect();
    let early: Vec<String> = by_owner
        .iter()
        .flat_map(|(&u, b)| b.iter().map(move |b| (u, b)))
        .filter_map(|(u, b)| {
            let created = at(b.created_at.as_ref().expect("created_at"));
            (created < slot_of(u))
                .then(|| format!("user {u}: {} at {created}, slot {}", b.filename, slot_of(u)))
        })
        .collect();

    // 2. The audit log as listed, and as the subscriber saw it.
    let listed = all_events(&urls, &admin).await;
    let newest = listed.last().map_or(0, |e| e.id);
    let last_completion = listed
        .iter()
        .rev()
        .find(|e| e.event_type == "backup_scheduler.backup_completed")
        .map_or(0, |e| e.id);
    let catch_up = Instant::now() + Duration::from_secs(30);
    while followed.lock().unwrap().last() < newest && Instant::now() < catch_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_following.send(true).unwrap();
    follower.await.expect("the subscriber task");
    let followed = std::mem::take(&mut *followed.lock().unwrap());
    // Listed again, for anything recorded while the subscriber caught up.
    let listed = all_events(&urls, &admin).await;
    let listed_ids: Vec<i64> = listed.iter().map(|e| e.id).collect();
    let not_increasing: Vec<String> = listed_ids
        .windows(2)
        .filter(|w| w[0] >= w[1])
        .map(|w| format!("{} then {}", w[0], w[1]))
        .collect();
    let seen_last = followed.last();
    let expected: Vec<i64> = listed_ids
        .iter()
        .copied()
        .filter(|&id| id <= seen_last)
        .collect();
    let seen: BTreeSet<i64> = followed.ids.iter().copied().collect();
    let listed_set: BTreeSet<i64> = listed_ids.iter().copied().collect();
    let skipped: Vec<i64> = expected
        .iter()
        .copied()
        .filter(|id| !seen.contains(id))
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for &id in &followed.ids {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let unlisted: Vec<i64> = seen
        .iter()
        .copied()
        .filter(|id| !listed_set.contains(id))
        .collect();
    let out_of_order: Vec<String> = followed
        .ids
        .windows(2)
        .filter(|w| w[0] >= w[1])
        .map(|w| format!("{} then {}", w[0], w[1]))
        .collect();

    // What happened, whatever the outcome.
    let completions: BTreeMap<i64, usize> = listed
        .iter()
        .filter(|e| e.event_type == "backup_scheduler.backup_completed")
        .fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.user_id).or_default() += 1;
            m
        });
    let errors = listed
        .iter()
        .filter(|e| e.event_type == "backup_scheduler.backup_error")
        .count();
    // Whether the chaos bit: runs a killed lease holder left behind, which
    // its successor settled as interrupted, and slots run late.
    let interrupted = listed
        .iter()
        .filter(|e| {
            e.event_type == "backup_scheduler.backup_error"
                && e.details
                    .as_ref()
                    .and_then(|d| d.fields.get("reason"))
                    .and_then(|v| v.kind.as_ref())
                    == Some(&prost_types::value::Kind::StringValue("interrupted".into()))
        })
        .count();
    let missed = listed
        .iter()
        .filter(|e| e.event_type == "backup_scheduler.missed")
        .count();
    let autos: usize = by_owner.values().map(Vec::len).sum();
    println!(
        "replicas: {:.0} s; {} kills; {autos} automatic backups of {} users; \
         {} backup_completed events ({} users twice or more), {errors} backup_error events \
         ({interrupted} interrupted runs), {missed} missed events; \
         {} audit events listed, the subscriber saw {} (last {seen_last}) over {} subscriptions, \
         {} broken streams, {} refused subscriptions",
        began.elapsed().as_secs_f64(),
        replicas.kills.len(),
        by_owner.len(),
        completions.values().sum::<usize>(),
        completions.values().filter(|n| **n > 1).count(),
        listed.len(),
        followed.ids.len(),
        followed.subscriptions,
        followed.breaks.len(),
        followed.refusals.len(),
    );
    for b in followed.breaks.iter().take(5) {
        println!("  a broken stream: {b}");
    }
    for r in followed.refusals.iter().take(5) {
        println!("  a refused subscription: {r}");
    }
    for event in listed.iter().filter(|e| {
        e.event_type == "backup_scheduler.backup_error"
            || (e.event_type == "backup_scheduler.backup_completed"
                && completions.get(&e.user_id).is_some_and(|n| *n > 1))
    }) {
        println!(
            "  event {} {} user {}: {} {:?}",
            event.id, event.event_type, event.user_id, event.error_message, event.details
        );
    }

    let mut failures = Vec::new();
    if !missing.is_empty() {
        failures.push(format!(
            "{} users have no automatic backup: {}",
            missing.len(),
            ranges(missing.iter().copied())
        ));
    }
    if !twice.is_empty() {
        failures.push(format!(
            "{} users have more than one automatic backup: {}",
            twice.len(),
            twice.join("; ")
        ));
    }
    if !strangers.is_empty() {
        failures.push(format!(
            "automatic backups of unknown owners: {}",
            ranges(strangers)
        ));
    }
    if !early.is_empty() {
        failures.push(format!(
            "{} backups before their slot: {}",
            early.len(),
            early.join("; ")
        ));
    }
    if !not_increasing.is_empty() {
        failures.push(format!(
            "ListAuditEvents ids not strictly increasing: {}",
            not_increasing.join(", ")
        ));
    }
    if seen_last < last_completion.max(newest) {
        failures.push(format!(
            "the subscriber's last id is {seen_last}, short of the log's {newest} \
             (last backup completion {last_completion})"
        ));
    }
    if !skipped.is_empty() {
        failures.push(format!(
            "the subscriber skipped {} listed ids: {}",
            skipped.len(),
            ranges(skipped)
        ));
    }
    if !duplicated.is_empty() {
        failures.push(format!(
            "the subscriber received {} ids more than once: {}",
            duplicated.len(),
            ranges(duplicated)
        ));
    }
    if !out_of_order.is_empty() {
        failures.push(format!(
            "the subscriber received ids out of order: {}",
            out_of_order
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !unlisted.is_empty() {
        failures.push(format!(
            "the subscriber received ids ListAuditEvents does not list: {}",
            ranges(unlisted)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(replicas);
}
