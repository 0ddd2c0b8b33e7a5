//! `backups download`: to a file through the client crate (which refuses a
//! destination that is not a regular file), or to stdout with `-o -`, where
//! every message goes to stderr and a failure disowns what was written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use backup_client::{Client, Error};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::BackupRef;
use crate::render::Output;

/// Downloads `backup` to `output` (default: its file name) with a progress
/// bar. With `-o -` an error is reported here, since only here is it known
/// whether stdout already got bytes that must be disowned.
pub async fn download(
    out: &Output,
    client: &Client,
    backup: &BackupRef,
    output: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let bar = out.progress(
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
    );
    let written = std::cell::Cell::new(0u64);
    let progress = |done, total| {
        written.set(done);
        bar.set_length(total);
        bar.set_position(done);
    };
    let mut backups = backup.service(client);
    let dest = output.unwrap_or_else(|| PathBuf::from(&backup.filename));
    let to_stdout = dest == Path::new("-");
    let downloaded = if to_stdout {
        let mut stdout = tokio::io::stdout();
        backups
            .download_to_writer(&backup.filename, &mut stdout, progress)
            .await
    } else {
        backups.download_to(&backup.filename, &dest, progress).await
    };
    bar.finish_and_clear();
    let downloaded = match downloaded {
        Ok(downloaded) => downloaded,
        Err(e) if to_stdout => {
            let code = crate::report(&e);
            // A failed write may have passed some bytes on before failing.
            if written.get() > 0 || matches!(e, Error::Io(_)) {
                eprintln!(
                    "backupctl: the bytes written to stdout are incomplete or wrong; do not trust them"
                );
            }
            return Ok(code);
        }
        Err(e) => return Err(e),
    };
    out.downloaded(&downloaded, &dest, to_stdout);
    Ok(ExitCode::SUCCESS)
}
