//! Edges of the contract (issue 11): errors that never echo unbounded
//! input, timestamps out of range, settings for users that do not exist,
//! audit attribution (actor and subject), start-up that says what is wrong,
//! and metric names.

use backup_client::SettingsUpdate;
use backup_tests::*;

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
