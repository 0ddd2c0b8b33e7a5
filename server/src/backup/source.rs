//! The source database: the live SQLite file being backed up. Checks that
//! it can be read (for health) or written (before a restore), and the
//! restore itself, which replaces its content through SQLite.
//!
//! This is about the source, never about stored backups: those are behind
//! [`super::storage`].

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::sqlite::{self, Comparison, Content, Rewritten};
use super::storage::VerifiedCopy;
use crate::blocking::blocking;
use crate::error::{Error, Result};

/// Source-database wording for errors: callers see what, never where.
pub const SOURCE: &str = "the source database";

/// What the file at `path` holds by its size and header, as backups see
/// it: it must be a regular file (never a symlink, which is `ELOOP`;
/// anything else is `InvalidInput`).
pub async fn sniff(path: PathBuf) -> Result<Content> {
    blocking(move || sqlite::sniff(sqlite::open_regular(&path)?)).await
}

/// Fails with FAILED_PRECONDITION naming the cause when the source cannot
/// be written (a read-only file, directory or file system), changing
/// nothing.
pub async fn check_writable(path: PathBuf) -> Result<()> {
    blocking(move || open_writable(&path).map(drop)).await
}

/// Replaces the content of the live database at `path` with the verified
/// backup's, through SQLite itself ([`sqlite::overwrite`]): other
/// connections see the old or the new database, never a torn one, and
/// SQLite keeps any WAL consistent. Only the pages that differ are written.
///
/// The result is checked before returning, against the verified copy,
/// which proves more than a second `integrity_check` and costs a fraction
/// of one. When another connection has written to the source since the
/// restore, its pages may rightly differ, and `integrity_check` is what is
/// left to run.
pub async fn restore(backup: VerifiedCopy, path: PathBuf) -> Result<Rewritten> {
    blocking(move || {
        let (rewritten, check) =
            sqlite::overwrite(open_writable(&path)?, backup.connection()).map_err(unwritable)?;
        match check {
            Comparison::Same => {}
            Comparison::WrittenSince => sqlite::check_integrity(
                &sqlite::open_existing(&path, SOURCE, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
                SOURCE,
            )?,
            Comparison::Differs(page) => {
                return Err(Error::Internal(format!(
                    "{SOURCE} does not hold the restored backup after the restore: page {page} differs"
                )));
            }
        }
        Ok(rewritten)
    })
    .await
}

/// Opens the live database for writing, failing with FAILED_PRECONDITION
/// naming the cause when it cannot be written, before anything is changed.
fn open_writable(source: &Path) -> Result<Connection> {
    // Opened for writing (never truncated nor created) to ask the kernel:
    // a read-only file system or file says so here, where SQLite would
    // only fail to open a WAL database.
    match OpenOptions::new().write(true).open(source) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
            ) =>
        {
            return Err(Error::FailedPrecondition(format!(
                "{SOURCE} cannot be written: {e}"
            )));
        }
        _ => {}
    }
    let conn = sqlite::open_existing(source, SOURCE, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // SQLite quietly opens a file it may not write read-only.
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(Error::FailedPrecondition(format!(
            "{SOURCE} cannot be written: the file is read-only"
        )));
    }
    // A write takes the lock and creates the journal (or WAL files) beside
    // the file: a read-only directory or file system fails here.
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(|e| unwritable(e.into()))?;
    Ok(conn)
}

/// A failed write to the live database: read-only is the operator's to fix
/// (FAILED_PRECONDITION), anything else stays as it is.
fn unwritable(error: Error) -> Error {
    let Error::Sqlite(e) = &error else {
        return error;
    };
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            Error::FailedPrecondition(format!("{SOURCE} cannot be written: {e}"))
        }
        _ => error,
    }
}
