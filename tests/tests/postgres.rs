//! The service with its state store on PostgreSQL: a real cluster (the
//! test command's throwaway one), a real server process.

use backup_tests::*;

#[tokio::test]
async fn the_service_keeps_its_state_in_postgresql() {
    let data = DataDir::new();
    let env = vec![("DATABASE_URL".to_owned(), postgres::new_database())];
    let out = data
        .command()
        .envs(env.iter().cloned())
        .args(["token", "create", "--user-id", "1", "--admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let server = data.try_start_with(&["--no-scheduler"], &env).unwrap();
    let client = server.client(&token).await;
    let created = client.backups().create(Some("on-postgres")).await.unwrap();
    let settings = client
        .scheduler()
        .update_settings(
            0,
            backup_client::SettingsUpdate {
                enabled: Some(true),
                backup_time: Some("04:15".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(settings.enabled);
    drop(server);

    // Everything it knew is in PostgreSQL: nothing beside the backups.
    assert!(!data.path().join("state.db").exists());
    let server = data.try_start_with(&["--no-scheduler"], &env).unwrap();
    let client = server.client(&token).await;
    let listed = client.backups().list_all().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|b| b.filename.as_str())
            .collect::<Vec<_>>(),
        [created.filename.as_str()]
    );
    assert!(
        !client
            .backups()
            .verify(&created.filename)
            .await
            .unwrap()
            .damaged
    );
    let settings = client.scheduler().get_settings(0).await.unwrap();
    assert_eq!(
        (settings.enabled, settings.backup_time.as_str()),
        (true, "04:15")
    );
    let filter = backup_client::AuditFilter {
        event_type_prefix: "backup_files.".into(),
        ..Default::default()
    };
    let events = client.audit().list_all(&filter).await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["backup_files.create", "backup_files.verify"],
        "{events:?}"
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
}
