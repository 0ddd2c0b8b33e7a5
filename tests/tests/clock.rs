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

#[tokio::test]
async fn a_replica_ten_minutes_ahead_runs_its_slots_on_the_stores_time() {
    let data = DataDir::new();
    let database = vec![("DATABASE_URL".to_owned(), postgres::new_database())];
    let out = data
        .command()
        .envs(database.iter().cloned())
        .args(["token", "create", "--user-id", "1", "--admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let mut env = database.clone();
    env.extend(faked_clock("+10m"));
    let ahead = data
        .try_start_with(&["--check-interval", "1", "--lease-ttl", "3"], &env)
        .unwrap();
    let client = ahead.client(&token).await;
    // The next whole minute at least 15 s away, by the real clock.
    let now = Utc::now();
    let mut slot = (now + chrono::Duration::minutes(1))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    if slot - now < chrono::Duration::seconds(15) {
        slot += chrono::Duration::minutes(1);
    }
    let settings = client
        .scheduler()
        .update_settings(
            0,
            backup_client::SettingsUpdate {
                enabled: Some(true),
                backup_time: Some(slot.format("%H:%M").to_string()),
                timezone: Some("UTC".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Computed by the store's clock: today's slot, not tomorrow's (which
    // the replica's own clock, past the slot already, would give).
    assert_eq!(
        settings.next_backup_at.map(|t| t.seconds),
        Some(slot.timestamp())
    );

    let auto = || async {
        let all = client.backups().list_all().await.unwrap();
        all.into_iter()
            .filter(|b| b.kind == backup_client::proto::BackupKind::Auto as i32)
            .map(|b| b.filename)
            .collect::<Vec<_>>()
    };
    // Nothing before the slot, though the replica's clock passed it long ago.
    while Utc::now() < slot - chrono::Duration::seconds(1) {
        assert_eq!(
            auto().await,
            Vec::<String>::new(),
            "a backup before its slot"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then the one backup, on time.
    let on_time = slot + chrono::Duration::seconds(10);
    let made = loop {
        let made = auto().await;
        if !made.is_empty() {
            break made;
        }
        assert!(Utc::now() < on_time, "no backup within 10 s of its slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(Utc::now() >= slot, "a backup before its slot");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(auto().await, made, "one backup for the slot");
    assert_eq!(made.len(), 1);
}
