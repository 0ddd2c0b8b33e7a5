//! The pre-migration snapshot of a state store on PostgreSQL: `pg_dump`
//! in its custom format (restore it with `pg_restore`), into a file.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// Dumps the database at `url` into `dir` as
/// `state-store-pre-migration-<time>.pgdump` and returns its path; `None`
/// when `pg_dump` is not installed (the caller warns). The dump is written
/// under a temporary name and renamed when complete, so nothing partial is
/// left under the final name. The password, if the URL has one, goes to
/// `pg_dump` through its environment, not its command line.
pub async fn pg_dump(url: &str, dir: &Path, at: DateTime<Utc>) -> Result<Option<PathBuf>> {
    let name = format!(
        "state-store-pre-migration-{}.pgdump",
        at.format("%Y%m%dT%H%M%SZ")
    );
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    let mut command = tokio::process::Command::new("pg_dump");
    command
        .arg("--format=custom")
        .arg("--file")
        .arg(&partial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let password = parsed.password().unwrap_or_default();
            let decoded = percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned();
            let _ = parsed.set_password(None);
            command
                .env("PGPASSWORD", decoded)
                .arg("--dbname")
                .arg(parsed.as_str());
        }
        _ => {
            command.arg("--dbname").arg(url);
        }
    }
    let output = match command.output().await {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !output.status.success() {
        let _ = tokio::fs::remove_file(&partial).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::FailedPrecondition(format!(
            "pg_dump of the state store before migrating it failed ({}): {}",
            output.status,
            stderr.trim()
        )));
    }
    tokio::fs::rename(&partial, &path).await?;
    Ok(Some(path))
}
