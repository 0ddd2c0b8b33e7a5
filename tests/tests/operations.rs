//! Operating the server: TLS, transport safety, reflection off, metrics,
//! JSON logs, the config file, and health following the state store.

use std::io::{Read, Write};
use std::process::Stdio;

use backup_client::proto_health::health_check_response::ServingStatus;
use backup_tests::*;

#[tokio::test]
async fn tls_serves_https_to_clients_that_trust_the_ca() {
    let data = DataDir::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (data.path().join("cert.pem"), data.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = data.start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}");
    let token = data.token(1, false);

    let client = Client::connect_with(&url, &token, Some(cert.cert.pem().into_bytes()))
        .await
        .unwrap();
    let created = client.backups().create(Some("over-tls")).await.unwrap();
    assert_eq!(created.filename, "over-tls.db");

    // Without trusting the CA the handshake fails; plaintext gets nowhere.
    let untrusted = match Client::connect_with(&url, &token, None).await {
        Ok(c) => c.backups().list_all().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(untrusted.is_err());
    let plain = match Client::connect(&server.url, &token).await {
        Ok(c) => c.backups().list_all().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(plain.is_err());
}

#[test]
fn plaintext_on_a_public_address_is_refused_unless_allowed() {
    let data = DataDir::new();
    let out = data
        .command()
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without TLS"), "{stderr}");
    let server = data.start(&["--allow-insecure", "--listen", "0.0.0.0:0"]);
    assert!(server.url.contains("0.0.0.0"));
}

/// The Prometheus text the metrics listener on `port` serves.
fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    body.to_owned()
}

#[tokio::test]
async fn metrics_count_rpcs_and_backups() {
    let data = DataDir::new();
    // The metrics port is chosen here, so another test may bind it first.
    let (server, port) = (0..5)
        .find_map(|_| {
            let port = free_port();
            let metrics = format!("127.0.0.1:{port}");
            data.try_start(&["--metrics-listen", &metrics])
                .ok()
                .map(|server| (server, port))
        })
        .expect("a server with metrics on a free port");

    // Before any RPC: every counter and gauge is there at 0, and every
    // series carries the backup_ prefix.
    let body = scrape(port);
    for series in [
        r#"backup_grpc_server_handled_total{method="/backup.v1.BackupFiles/CreateBackup",code="Ok"} 0"#,
        r#"backup_grpc_server_handled_total{method="/backup.v1.AuditLog/SubscribeAuditEvents",code="Ok"} 0"#,
        r#"backup_backups_total{kind="manual",outcome="completed"} 0"#,
        r#"backup_backups_total{kind="auto",outcome="failed"} 0"#,
        "backup_retention_deleted_total 0",
        "backup_audit_subscribers 0",
        "backup_damaged 0",
        r#"backup_verifications_total{outcome="intact"} 0"#,
        r#"backup_verifications_total{outcome="damaged"} 0"#,
        "# TYPE backup_backups_total counter",
        "# TYPE backup_damaged gauge",
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "no {series:?} in\n{body}"
        );
    }
    for gauge in [
        "backup_scheduler_lease_held",
        "backup_scheduler_next_due_timestamp_seconds",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{gauge} "))),
            "no {gauge} in\n{body}"
        );
    }
    let unprefixed: Vec<&str> = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("backup_"))
        .collect();
    assert!(unprefixed.is_empty(), "{unprefixed:?}");

    let mut backups = server.client(&data.token(1, false)).await.backups();
    backups.create(Some("counted")).await.unwrap();
    assert_eq!(code(backups.get("missing.db").await), Code::NotFound);

    let body = scrape(port);
    assert!(
        body.contains(
            r#"backup_grpc_server_handled_total{method="/backup.v1.BackupFiles/CreateBackup",code="Ok"} 1"#
        ),
        "{body}"
    );
    assert!(body.contains(r#"code="NotFound""#), "{body}");
    assert!(
        body.contains(r#"backup_backups_total{kind="manual",outcome="completed"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("backup_grpc_server_handling_seconds"),
        "{body}"
    );
    assert!(body.contains("backup_duration_seconds"), "{body}");
    assert!(body.contains("backup_scheduler_lease_held 1"), "{body}");
}

#[test]
fn no_reflection_turns_reflection_off() {
    let data = DataDir::new();
    let list = |server: &Server| {
        let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
        std::process::Command::new(program)
            .args([
                "-plaintext",
                server.url.trim_start_matches("http://"),
                "list",
            ])
            .output()
            .expect("grpcurl is installed by tests/run.sh")
    };
    let hidden = data.start(&["--no-reflection"]);
    let out = list(&hidden);
    assert!(
        !out.status.success(),
        "reflection answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let shown = data.start(&[]);
    assert!(list(&shown).status.success());
}

#[test]
fn json_logs_and_the_config_file() {
    let data = DataDir::new();
    // The file asks for JSON logs.
    let config = data.path().join("backup.toml");
    std::fs::write(&config, "log_format = \"json\"\n").unwrap();
    let mut child = data
        .command()
        .env("RUST_LOG", "info")
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let starting = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "starting")
        .unwrap_or_else(|| panic!("no JSON 'starting' line in:\n{stderr}"));
    assert!(
        starting["fields"]["source_db"]
            .as_str()
            .unwrap()
            .ends_with("source.db")
    );

    let bad = data.path().join("bad.toml");
    std::fs::write(&bad, "no_such_flag = 1\n").unwrap();
    let out = data
        .command()
        .args(["--config", bad.to_str().unwrap(), "token", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_flag"));
}

#[tokio::test]
async fn config_file_values_apply() {
    let data = DataDir::new();
    let config = data.path().join("backup.toml");
    // The command line wins over the file (check_interval).
    std::fs::write(&config, "no_scheduler = true\ncheck_interval = 99\n").unwrap();
    let server = data.start(&[
        "--config",
        config.to_str().unwrap(),
        "--check-interval",
        "7",
    ]);
    let stats = server
        .client(&data.token(1, true))
        .await
        .scheduler()
        .stats()
        .await
        .unwrap();
    assert!(!stats.is_running, "no_scheduler from the file was ignored");
    assert_eq!(stats.check_interval_seconds, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_state_store() {
    let data = DataDir::new();
    let server = data.start(&["--check-interval", "1"]);
    let client = server.client("").await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);

    // Another process holds the store's write lock past the busy timeout.
    let locker = state_store(&data);
    locker
        .execute_batch("BEGIN IMMEDIATE; UPDATE secrets SET value = value;")
        .unwrap();
    await_health(&client, "backup.v1.BackupFiles", ServingStatus::NotServing).await;
    // `backupctl health` as an exec probe: its own exit code when not serving.
    let probe = backupctl(&server.url, "", &["health"]);
    assert_eq!(probe.status.code(), Some(4), "{probe:?}");
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "NOT_SERVING");

    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    await_health(&client, "", ServingStatus::Serving).await;
    let probe = backupctl(&server.url, "", &["health"]);
    assert_eq!(probe.status.code(), Some(0), "{probe:?}");
}

#[tokio::test]
async fn an_oversized_request_is_out_of_range_and_changes_nothing() {
    let data = DataDir::new();
    let server = data.start(&[]);
    let mut backups = server.client(&data.token(1, false)).await.backups();
    let huge = "a".repeat(5 * 1024 * 1024);
    assert_eq!(code(backups.create(Some(&huge)).await), Code::OutOfRange);
    assert!(data.stored_backups().is_empty());
}

#[test]
fn the_example_config_file_parses() {
    let data = DataDir::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../server/deploy/backup-server.toml");
    // `token list` reads the whole configuration; point the paths at the
    // test's directory on the command line, which wins over the file.
    let out = data
        .command()
        .args(["--config", example.to_str().unwrap(), "--source-db"])
        .arg(data.source())
        .args([
            "--tls-cert",
            "/nonexistent",
            "--tls-key",
            "/nonexistent",
            "token",
            "list",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
