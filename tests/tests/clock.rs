//! A replica whose own clock is wrong still runs each slot on time by the
//! state store's clock: never early, once. The wrong clock is real:
//! libfaketime (Debian's `faketime`, which the test command installs)
//! shifts the server process's wall clock; its monotonic clock, which its
//! timers use, is left alone.

use std::process::Command;
use std::time::Duration;

use backup_tests::*;
use chrono::{Timelike, Utc};

/// The environment that runs a process `offset` (libfaketime's syntax,
/// `+10m`) off the real time: the preload library as the `faketime`
/// wrapper finds it, so no distribution's path is written here.
fn faked_clock(offset: &str) -> Vec<(String, String)> {
    let out = Command::new("faketime")
        .args(["-f", "+0", "sh", "-c", "printf %s \"$LD_PRELOAD\""])
        .output()
        .expect("run faketime: the test command installs it (Debian's faketime package)");
    assert!(out.status.success(), "faketime: {out:?}");
    let preload = String::from_utf8(out.stdout).unwrap();
    assert!(!preload.is_empty(), "faketime set no LD_PRELOAD");
    vec![
        ("LD_PRELOAD".into(), preload),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Mints a token for `user_id` in the store `env` names.
fn token(data: &DataDir, env: &[(String, String)], user_id: i64) -> String {
    let out = data
        .command()
        .envs(env.iter().cloned())
        .args([
            "token",
            "create",
            "--user-id",
            &user_id.to_string(),
            "--admin",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Two replicas on one PostgreSQL database; the lease holder's clock runs
/// ten minutes ahead. Settings saved through either replica get their next
/// run by the store's clock, the holder runs each slot then (not when its
/// own clock passed it), and settings saved through the other replica wake
/// it at once: that slot is a few seconds after the change, while the
/// holder sleeps until a later slot or for 20 s (a third of its lease).
#[tokio::test]
async fn a_lease_holder_ten_minutes_ahead_runs_slots_on_the_stores_time_woken_by_the_other_replica()
{
    let data = DataDir::new();
    let database = vec![("DATABASE_URL".to_owned(), postgres::new_database())];
    let admin = token(&data, &database, 1);
    token(&data, &database, 2);
    let flags = ["--check-interval", "3600", "--lease-ttl", "60"];
    let mut faked = database.clone();
    faked.extend(faked_clock("+10m"));
    let ahead = data.try_start_with(&flags, &faked).unwrap();
    let on_ahead = ahead.client(&admin).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !on_ahead.scheduler().stats().await.unwrap().holds_lease {
        assert!(std::time::Instant::now() < deadline, "no lease in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = data.try_start_with(&flags, &database).unwrap();
    let on_other = other.client(&admin).await;
    assert!(!on_other.scheduler().stats().await.unwrap().holds_lease);

    // A slot 4 to 6 s after the change, by the real clock.
    let slot = loop {
        let now = Utc::now();
        let boundary = (now + chrono::Duration::minutes(1))
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap();
        let ahead_by = boundary - now;
        if ahead_by >= chrono::Duration::seconds(4) && ahead_by <= chrono::Duration::seconds(6) {
            break boundary;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let daily_at = |slot: chrono::DateTime<Utc>| backup_client::SettingsUpdate {
        enabled: Some(true),
        backup_time: Some(slot.format("%H:%M").to_string()),
        timezone: Some("UTC".into()),
        ..Default::default()
    };
    // User 2's slot, a minute later, through the holder itself: it wakes
    // and sleeps until then. User 1's, through the other replica, must
    // wake it again.
    let later = slot + chrono::Duration::minutes(1);
    for (client, user, at) in [(&on_ahead, 2, later), (&on_other, 1, slot)] {
        let settings = client
            .scheduler()
            .update_settings(user, daily_at(at))
            .await
            .unwrap();
        // Today's slot, not tomorrow's (which the fast clock, past the
        // slot already, would give).
        assert_eq!(
            settings.next_backup_at.map(|t| t.seconds),
            Some(at.timestamp()),
            "user {user}'s next run"
        );
    }

    let auto = || async {
        let all = on_other.backups().list_all().await.unwrap();
        let mut owners: Vec<i64> = all
            .into_iter()
            .filter(|b| b.kind == backup_client::proto::BackupKind::Auto as i32)
            .map(|b| b.owner_user_id)
            .collect();
        owners.sort_unstable();
        owners
    };
    let mut made = Vec::new();
    for (at, user) in [(slot, 1), (later, 2)] {
        // Nothing before the slot, though the holder's clock passed it
        // long ago.
        while Utc::now() < at - chrono::Duration::milliseconds(500) {
            assert_eq!(auto().await, made, "a backup before the slot at {at}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then the slot's backup, within 3 s.
        made.push(user);
        let on_time = at + chrono::Duration::seconds(3);
        while auto().await != made {
            assert!(
                Utc::now() < on_time,
                "no backup within 3 s of the slot at {at}: backups of users {:?}",
                auto().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(auto().await, [1, 2], "one backup a user");
}
