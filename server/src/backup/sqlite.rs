//! Local SQLite files, the mechanics every part of `backup` shares:
//! opening a database that must exist, the stepped (cancellable) online
//! backup copy and the page-by-page comparison of a copy with its
//! original, `PRAGMA integrity_check`, and judging a file by its header.
//!
//! All functions block: call them from `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, backup::StepResult};
use tokio_util::sync::CancellationToken;

use super::check_cancelled;
use crate::error::{Error, Result};

/// How long a backup or restore waits for a lock held by another connection.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Pages copied per backup step of a cancellable copy (4 MiB at 4 KiB
/// pages): how often it looks whether it was cancelled.
const STEP_PAGES: i32 = 1024;

/// Opens a database that must already exist and be SQLite. `what` names it in
/// errors ("the source database"), never with its path.
pub fn open_existing(path: &Path, what: &str, flags: OpenFlags) -> Result<Connection> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::FailedPrecondition(format!("{what} does not exist")));
        }
        Err(e) => {
            return Err(Error::FailedPrecondition(format!(
                "{what} is unreadable: {e}"
            )));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(Error::FailedPrecondition(format!(
                "{what} is not a regular file"
            )));
        }
        Ok(_) => {}
    }
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| Error::FailedPrecondition(format!("{what} cannot be opened: {e}")))?;
    conn.busy_timeout(LOCK_WAIT)?;
    // Reading the schema fails at once on a file that is not SQLite.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| unreadable(what, e))?;
    Ok(conn)
}

/// A failed read of a database: locked past [`LOCK_WAIT`] (worth a retry)
/// or not SQLite at all.
fn unreadable(what: &str, e: rusqlite::Error) -> Error {
    if matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    ) {
        return Error::FailedPrecondition(format!(
            "{what} stayed locked by another connection for {} s; try again later",
            LOCK_WAIT.as_secs()
        ));
    }
    Error::FailedPrecondition(format!("{what} is not a readable SQLite database: {e}"))
}

/// Opens the live database at `source` to copy it with [`snapshot_into`].
pub fn open_source(source: &Path, what: &str) -> Result<Connection> {
    open_existing(source, what, OpenFlags::SQLITE_OPEN_READ_WRITE)
}

/// Copies a consistent snapshot of the live database `src` (opened by
/// [`open_source`], named `what` in errors) into the new, empty file at
/// `dest`, and closes `src`.
///
/// The copy runs in one read transaction on the source, so writers on
/// other connections neither block it (WAL) nor restart it. It is copied in
/// steps of [`STEP_PAGES`], and `cancel` stops it between steps. `dest` is
/// written without a journal or syncs: the caller syncs it, and discards it
/// whole on any failure.
pub fn snapshot_into(
    src: Connection,
    what: &str,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut dst = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A scratch file until the caller syncs it: a crash discards it whole,
    // so it needs neither a journal (a journal file created and deleted per
    // step) nor SQLite's own syncs.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
    // One read transaction across every step: a consistent snapshot
    // that other connections' commits do not restart.
    src.execute_batch("BEGIN")?;
    src.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| unreadable(what, e))?;
    copy_steps(&src, &mut dst, STEP_PAGES, cancel)?;
    // The copy carries the source's WAL flag; a backup file stands alone.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

/// Reads a consistent snapshot of the live database `src` (opened by
/// [`open_source`], named `what` in errors) page by page, handing each to
/// `page` in order, and closes `src`: the pages make a standalone file.
///
/// Like [`snapshot_into`] it runs in one read transaction, which writers on
/// other connections neither block (WAL) nor restart, but it copies
/// nothing to disk: the pages come straight from `sqlite_dbpage`. Page 1
/// is marked as a rollback-journal database, as a copy made by the backup
/// API is. `cancel` stops it between pages.
pub fn read_pages(
    src: Connection,
    what: &str,
    cancel: &CancellationToken,
    page: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    src.execute_batch("BEGIN")?;
    src.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| unreadable(what, e))?;
    let mut pages = src.prepare(PAGES)?;
    let mut rows = pages.query([])?;
    while let Some(row) = rows.next()? {
        let number: i64 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        if number == 1 && data.len() > 19 {
            // Bytes 18 and 19, the read and write format: 1, not WAL's 2.
            let mut first = data.to_vec();
            first[18] = 1;
            first[19] = 1;
            page(&first)?;
        } else {
            page(data)?;
        }
        if number % i64::from(STEP_PAGES) == 0 {
            check_cancelled(cancel)?;
        }
    }
    Ok(())
}

/// Every page of the main database, in order, as (number, bytes).
const PAGES: &str = "SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno";

/// One-step online backup from `src` into `dst`, waiting out locks held by
/// other connections for up to [`LOCK_WAIT`].
pub fn copy_database(src: &Connection, dst: &mut Connection) -> Result<()> {
    copy_steps(src, dst, -1, &CancellationToken::new())
}

/// What [`compare_copy`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Comparison {
    /// The copy holds exactly the original's pages.
    Same,
    /// The first page that differs, or the first one past the shorter.
    Differs(i64),
    /// Another connection committed to the copy since: its pages may
    /// rightly differ, and nothing was compared.
    WrittenSince,
}

/// A change stamp of what `conn` sees of its database, for
/// [`compare_copy`]: it changes when another connection commits.
pub fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |row| row.get(0))?)
}

/// Header fields of page 1 that the online backup rewrites in its copy:
/// the file formats (WAL or not), the change counter, the schema cookie,
/// and the version stamps.
const REWRITTEN_HEADER: [std::ops::Range<usize>; 4] = [18..20, 24..28, 40..44, 92..100];

/// Compares, page by page, the copy `copy` made of `original` by
/// [`copy_database`] with it, `copy` read in one transaction; `before` is
/// [`data_version`] of `copy` read before the copy started. Page 1's
/// header fields the backup rewrites ([`REWRITTEN_HEADER`]) are not
/// compared.
///
/// The two databases are read at once, `copy` on a thread of its own, so
/// the comparison takes about as long as the slower of the two reads.
pub fn compare_copy(
    copy: &mut Connection,
    original: &Connection,
    before: i64,
) -> Result<Comparison> {
    let (filled, copied) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
    let (emptied, empties) = mpsc::channel();
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            copy.execute_batch("BEGIN")?;
            let read = send_pages(copy, &filled, &empties);
            let written = data_version(copy).map(|now| now != before);
            copy.execute_batch("COMMIT")?;
            read.and(written)
        });
        let compared = compare_pages(original, copied, emptied);
        let written = reader
            .join()
            .map_err(|_| Error::Internal("the comparison's reader panicked".into()))?;
        if written? {
            return Ok(Comparison::WrittenSince);
        }
        compared
    })
}

/// Pages handed from a comparison's reader to the comparing thread at a
/// time (1 MiB at 4 KiB pages), and batches in flight between them.
const BATCH_PAGES: usize = 256;
const BATCHES_IN_FLIGHT: usize = 4;

/// A batch of pages, in order; its buffers go back to the reader to be
/// filled again.
type Batch = Vec<Vec<u8>>;

/// Sends `conn`'s pages in batches until the last, or until the comparing
/// side stops listening (it found a difference).
fn send_pages(
    conn: &Connection,
    filled: &mpsc::SyncSender<Batch>,
    empties: &mpsc::Receiver<Batch>,
) -> Result<()> {
    let mut pages = conn.prepare(PAGES)?;
    let mut rows = pages.query([])?;
    let mut batch = Batch::new();
    let mut used = 0;
    while let Some(row) = rows.next()? {
        if used == BATCH_PAGES {
            let full = std::mem::replace(&mut batch, empties.try_recv().unwrap_or_default());
            if filled.send(full).is_err() {
                return Ok(());
            }
            used = 0;
        }
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        match batch.get_mut(used) {
            Some(page) => {
                page.clear();
                page.extend_from_slice(data);
            }
            None => batch.push(data.to_vec()),
        }
        used += 1;
    }
    batch.truncate(used);
    // The comparing side may have stopped already; nothing is lost then.
    let _ = filled.send(batch);
    Ok(())
}

/// Compares `original`'s pages with the copy's as they arrive.
fn compare_pages(
    original: &Connection,
    copied: mpsc::Receiver<Batch>,
    emptied: mpsc::Sender<Batch>,
) -> Result<Comparison> {
    let mut pages = original.prepare(PAGES)?;
    let mut originals = pages.query([])?;
    let mut number = 0;
    for batch in copied.iter() {
        for page in &batch {
            number += 1;
            let Some(row) = originals.next()? else {
                return Ok(Comparison::Differs(number));
            };
            let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            let same = match number {
                1 => same_first_page(page, data),
                _ => page == data,
            };
            if !same {
                return Ok(Comparison::Differs(number));
            }
        }
        // The reader may be done; then the buffers are not needed.
        let _ = emptied.send(batch);
    }
    match originals.next()? {
        Some(_) => Ok(Comparison::Differs(number + 1)),
        None => Ok(Comparison::Same),
    }
}

/// Whether two first pages are the same but for [`REWRITTEN_HEADER`].
fn same_first_page(a: &[u8], b: &[u8]) -> bool {
    let masked = |page: &[u8]| {
        let mut page = page.to_vec();
        for range in REWRITTEN_HEADER {
            page[range].fill(0);
        }
        page
    };
    a.len() == b.len() && a.len() >= 100 && masked(a) == masked(b)
}

/// Online backup from `src` into `dst`, `pages` at a time (-1: all in one
/// step), stopping between steps once `cancel` fires and waiting out locks
/// held by other connections for up to [`LOCK_WAIT`].
///
/// `sqlite3_interrupt` cannot stop a copy (`sqlite3_backup_step` never
/// looks at it), hence the steps.
fn copy_steps(
    src: &Connection,
    dst: &mut Connection,
    pages: i32,
    cancel: &CancellationToken,
) -> Result<()> {
    let backup = rusqlite::backup::Backup::new(src, dst)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        check_cancelled(cancel)?;
        match backup.step(pages)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            StepResult::Busy | StepResult::Locked => {
                return Err(Error::FailedPrecondition(
                    "the database stayed locked by another connection; try again later".into(),
                ));
            }
            _ => return Err(Error::Internal("unexpected backup step result".into())),
        }
    }
}

/// Runs `PRAGMA integrity_check`; a problem found is FAILED_PRECONDITION
/// naming `what` and the first three problems.
pub fn check_integrity(conn: &Connection, what: &str) -> Result<()> {
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::FailedPrecondition(format!("{what} cannot be verified: {e}")))?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "{what} fails integrity_check: {}",
            problems.into_iter().take(3).collect::<Vec<_>>().join("; ")
        )))
    }
}

/// Opens a regular file for reading, never following a symlink
/// (`O_NOFOLLOW`, which fails with `ELOOP`); anything but a regular file
/// is `InvalidInput`.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::Io(ErrorKind::InvalidInput.into()));
    }
    Ok(file)
}

/// What a file holds, judged by its size and header alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Zero bytes.
    Empty,
    /// Not empty, but without the SQLite header.
    NotSqlite,
    /// Starts with the SQLite header.
    Sqlite,
}

/// Classifies an open file by size and header, reading from its start.
pub fn sniff(mut file: File) -> Result<Content> {
    if file.metadata()?.len() == 0 {
        return Ok(Content::Empty);
    }
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) if &header == b"SQLite format 3\0" => Ok(Content::Sqlite),
        Ok(()) => Ok(Content::NotSqlite),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Content::NotSqlite),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL database at `path` with `rows` rows, as applications keep one.
    fn database(path: &Path, rows: i64) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, s TEXT)")
            .unwrap();
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1) \
             INSERT INTO t SELECT i, printf('%0500d', i) FROM n",
            [rows],
        )
        .unwrap();
        conn
    }

    /// Copies `backup` over the live database at `live` as a restore does,
    /// running `meanwhile` on another connection between the copy and the
    /// comparison.
    fn restore(backup: &Connection, live: &Path, meanwhile: &str) -> Result<Comparison> {
        let mut dst = open_existing(live, "live", OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let before = data_version(&dst)?;
        copy_database(backup, &mut dst)?;
        Connection::open(live)
            .unwrap()
            .execute_batch(meanwhile)
            .unwrap();
        compare_copy(&mut dst, backup, before)
    }

    #[test]
    fn a_copy_over_a_live_database_holds_the_same_pages() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let _app = database(&live, 300);
        let backup = database(&dir.path().join("backup.db"), 100);
        assert_eq!(restore(&backup, &live, "").unwrap(), Comparison::Same);
        let rows: i64 = Connection::open(&live)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 100);
    }

    #[test]
    fn a_write_after_the_copy_is_told_apart_from_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let _app = database(&live, 50);
        let backup = database(&dir.path().join("backup.db"), 100);
        assert_eq!(
            restore(&backup, &live, "INSERT INTO t VALUES (1000, 'x')").unwrap(),
            Comparison::WrittenSince
        );
    }

    #[test]
    fn pages_that_differ_are_found() {
        // Over 256 pages: the difference is in a later batch than the first.
        let dir = tempfile::tempdir().unwrap();
        let mut live = database(&dir.path().join("live.db"), 3000);
        let other = database(&dir.path().join("other.db"), 3000);
        let before = data_version(&live).unwrap();
        assert_eq!(
            compare_copy(&mut live, &other, before).unwrap(),
            Comparison::Same
        );
        other
            .execute("UPDATE t SET s = 'changed' WHERE n = 2999", [])
            .unwrap();
        assert!(matches!(
            compare_copy(&mut live, &other, before).unwrap(),
            Comparison::Differs(page) if page > 256
        ));
        // Either side holding more rows than the other.
        let mut longer = database(&dir.path().join("longer.db"), 3010);
        assert!(matches!(
            compare_copy(&mut live, &longer, before).unwrap(),
            Comparison::Differs(_)
        ));
        let longer_before = data_version(&longer).unwrap();
        assert!(matches!(
            compare_copy(&mut longer, &live, longer_before).unwrap(),
            Comparison::Differs(_)
        ));
    }
}
