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

mod file_pages;

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

/// Reads a consistent snapshot of the live database at `source` (named
/// `what` in errors) page by page, handing each to `page` in order: the
/// pages make a standalone file.
///
/// Like [`snapshot_into`] it runs in one read transaction, which writers on
/// other connections neither block (WAL) nor restart, but it copies
/// nothing to disk. The pages come from the file in large reads where the
/// transaction pins them there ([`file_pages`]), else from `sqlite_dbpage`.
/// Page 1 is marked as a rollback-journal database, as a copy made by the
/// backup API is. `cancel` stops it between pages.
pub fn read_pages(
    source: &Path,
    what: &str,
    cancel: &CancellationToken,
    page: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    // Opened before the connection: see [`file_pages::FilePages::open`].
    let file = open_regular(source).ok();
    let src = open_source(source, what)?;
    check_cancelled(cancel)?;
    src.execute_batch("BEGIN")?;
    src.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| unreadable(what, e))?;
    let pages = u32::try_from(page_count(&src)?)
        .map_err(|_| Error::Internal(format!("{what} has more pages than SQLite allows")))?;
    let page_bytes: i64 = src.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let mut from_file = match file {
        Some(file) => file_pages::FilePages::open(file, source, page_bytes as usize)?,
        None => None,
    };
    for number in 1..=pages {
        let queried;
        let data = match from_file.as_mut().and_then(|f| f.page(number)) {
            Some(data) => data,
            None => {
                queried = self::page(&src, i64::from(number))?;
                &queried
            }
        };
        if number == 1 && data.len() > 19 {
            // Bytes 18 and 19, the read and write format: 1, not WAL's 2.
            let mut first = data.to_vec();
            first[18] = 1;
            first[19] = 1;
            page(&first)?;
        } else {
            page(data)?;
        }
        if number % STEP_PAGES as u32 == 0 {
            check_cancelled(cancel)?;
        }
    }
    Ok(())
}

/// Every page of the main database, in order, as (number, bytes).
const PAGES: &str = "SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno";

/// One-step online backup from `src` into `dst`, waiting out locks held by
/// other connections for up to [`LOCK_WAIT`].
fn copy_database(src: &Connection, dst: &mut Connection) -> Result<()> {
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
fn data_version(conn: &Connection) -> Result<i64> {
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
fn compare_copy(copy: &mut Connection, original: &Connection, before: i64) -> Result<Comparison> {
    copy.execute_batch("BEGIN")?;
    let differing = differing_pages(copy, original, 1);
    let written = data_version(copy).map(|now| now != before);
    copy.execute_batch("COMMIT")?;
    if written? {
        return Ok(Comparison::WrittenSince);
    }
    Ok(match differing?.first() {
        Some(&page) => Comparison::Differs(page),
        None => Comparison::Same,
    })
}

/// How much of the live database [`overwrite`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// Pages written into the live database, page 1 included.
    pub pages_written: i64,
    /// Pages of the original, which the live database now has.
    pub pages: i64,
}

/// Makes the live database `live` hold `original`'s pages, in one write
/// transaction through SQLite's pager (its WAL or rollback journal): other
/// connections see the old or the new database, never a torn one, and a
/// crash leaves the old one. Returns what was written and the check of
/// the live database after the commit.
///
/// Only pages that differ are written, through `sqlite_dbpage`. Page 1 is
/// always written, with the live database's file formats (WAL or not) and
/// its schema cookie plus one, so that every connection reads the schema
/// again, as the online backup does. The pages left as they were were
/// compared under the write lock, so the check after the commit reads the
/// written pages and the page count again. A live database laid out
/// otherwise (page size, reserved bytes, text encoding, auto-vacuum), or
/// one where more than half the pages differ, is copied whole by the
/// online backup and then compared page by page.
///
/// `live` is consumed: SQLite's b-tree layer keeps its parse of each page
/// it has read beside the cached page, which a write through
/// `sqlite_dbpage` leaves stale in the writing connection, so that
/// connection must not read the database again. Other connections, and
/// the check's own, read the new pages.
pub fn overwrite(mut live: Connection, original: &Connection) -> Result<(Rewritten, Comparison)> {
    let pages = page_count(original)?;
    begin_write(&live)?;
    let written = data_version(&live).and_then(|before| {
        let written = write_differences(&mut live, original, pages)?;
        if written.is_some() {
            live.execute_batch("COMMIT").map_err(locked_out)?;
        }
        Ok((before, written))
    });
    if !live.is_autocommit() {
        // Nothing was written, or it failed: the live database stays as
        // it was.
        live.execute_batch("ROLLBACK")?;
    }
    match written? {
        (before, Some(written)) => {
            let rewritten = Rewritten {
                pages_written: written.len() as i64,
                pages,
            };
            let check = check_pages(&reopen(&live)?, &live, original, pages, &written, before)?;
            Ok((rewritten, check))
        }
        (_, None) => {
            let before = data_version(&live)?;
            copy_database(original, &mut live)?;
            let rewritten = Rewritten {
                pages_written: pages,
                pages,
            };
            Ok((rewritten, compare_copy(&mut live, original, before)?))
        }
    }
}

/// A new read-only connection to `conn`'s database file.
fn reopen(conn: &Connection) -> Result<Connection> {
    let path = conn
        .path()
        .filter(|path| !path.is_empty())
        .ok_or_else(|| Error::Internal("the live database has no file to open again".into()))?;
    open_existing(
        Path::new(path),
        "the live database",
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
}

/// Takes the write lock on `live`, waiting out other writers for up to
/// [`LOCK_WAIT`].
fn begin_write(live: &Connection) -> Result<()> {
    live.execute_batch("BEGIN IMMEDIATE").map_err(locked_out)
}

/// A write that other connections' locks kept out past [`LOCK_WAIT`] is
/// worth a retry; any other failure stays as it is.
fn locked_out(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            stayed_locked()
        }
        _ => e.into(),
    }
}

fn stayed_locked() -> Error {
    Error::FailedPrecondition(
        "the database stayed locked by another connection; try again later".into(),
    )
}

/// Inside `live`'s write transaction: writes `original`'s pages where they
/// differ from `live`'s, and truncates `live` to `original`'s length of
/// `pages`.
/// Returns the pages written, or `None`, writing nothing, when the two are
/// laid out otherwise or when most pages differ (the online backup copies
/// a whole database faster than pages are written one by one).
fn write_differences(
    live: &mut Connection,
    original: &Connection,
    pages: i64,
) -> Result<Option<Vec<i64>>> {
    let live_first = page(live, 1)?;
    let mut first = page(original, 1)?;
    if !same_layout(&live_first, &first) {
        return Ok(None);
    }
    let live_pages = page_count(live)?;
    let pending = pending_byte_page(first.len());
    if mostly_differ(live, original, live_pages.min(pages), pending)? {
        return Ok(None);
    }
    let mut written = vec![1];
    // The comparison stops once more than half the pages differ: besides
    // page 1 and the first page past the shorter database, which the
    // filter drops, that leaves over `pages / 2` to write.
    let enough = usize::try_from(pages / 2 + 2).unwrap_or(usize::MAX);
    written.extend(
        differing_pages(live, original, enough)?
            .into_iter()
            .filter(|&p| p > 1 && p <= live_pages.min(pages)),
    );
    written.extend((live_pages + 1..=pages).filter(|&p| p != pending));
    if written.len() as i64 > pages / 2 {
        return Ok(None);
    }

    // Page 1 keeps the live database's file formats; a new schema cookie
    // makes every connection read the schema again.
    first[18..20].copy_from_slice(&live_first[18..20]);
    let cookie = u32::from_be_bytes([
        live_first[40],
        live_first[41],
        live_first[42],
        live_first[43],
    ]);
    first[40..44].copy_from_slice(&cookie.wrapping_add(1).to_be_bytes());
    let mut insert = live.prepare("INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, ?2)")?;
    for &number in &written[1..] {
        insert.execute(rusqlite::params![number, page(original, number)?])?;
    }
    // Page 1 goes last: the statement after its new schema cookie reads the
    // schema again, which must find the original's pages. The truncation
    // (page `pages + 1` and every page after it go at the commit) is undone
    // by any later page write, so it shares page 1's statement.
    if live_pages > pages {
        live.execute(
            "INSERT INTO sqlite_dbpage (pgno, data) VALUES (1, ?1), (?2, NULL)",
            rusqlite::params![first, pages + 1],
        )?;
    } else {
        insert.execute(rusqlite::params![1, first])?;
    }
    Ok(Some(written))
}

/// One page in this many is compared first by [`mostly_differ`].
const SAMPLE_EVERY: usize = 64;

/// Whether more than half of a sample of the pages both databases have
/// (one in [`SAMPLE_EVERY`], page 1 and the lock-byte page left out)
/// differ. After a VACUUM nearly all do, and comparing every page would
/// only read half of both files to find that out. Only a shortcut: a
/// wrong guess either way costs time, never correctness.
fn mostly_differ(a: &Connection, b: &Connection, shared: i64, pending: i64) -> Result<bool> {
    let mut sampled = 0;
    let mut differing = 0;
    for number in (2..=shared).step_by(SAMPLE_EVERY).filter(|&p| p != pending) {
        sampled += 1;
        if page(a, number)? != page(b, number)? {
            differing += 1;
        }
    }
    Ok(sampled >= 16 && differing * 2 > sampled)
}

/// Whether pages copied verbatim from one database into the other make a
/// valid database: the same page size, reserved bytes and text encoding,
/// and no auto-vacuum in either (whose commit would move pages).
fn same_layout(a: &[u8], b: &[u8]) -> bool {
    let no_auto_vacuum = |page: &[u8]| page[52..56] == [0; 4];
    a.len() == b.len()
        && a.len() >= 100
        && a[16..18] == b[16..18]
        && a[20] == b[20]
        && a[56..60] == b[56..60]
        && no_auto_vacuum(a)
        && no_auto_vacuum(b)
}

/// The page holding the byte at 1 GiB, which SQLite never uses (it locks
/// files there); `sqlite_dbpage` reads it as zeros and refuses to write it.
fn pending_byte_page(page_size: usize) -> i64 {
    (1 << 30) / page_size as i64 + 1
}

/// After [`overwrite`]'s commit: whether the live database, read through
/// `checker`, has `original`'s `pages` and, in each of `written`, its
/// bytes (page 1 but for [`REWRITTEN_HEADER`]). `before` is the writing
/// connection `writer`'s [`data_version`] in its write transaction; read
/// again once `checker`'s snapshot is taken, it tells whether another
/// connection wrote before that snapshot.
fn check_pages(
    checker: &Connection,
    writer: &Connection,
    original: &Connection,
    pages: i64,
    written: &[i64],
    before: i64,
) -> Result<Comparison> {
    checker.execute_batch("BEGIN")?;
    let compared = (|| {
        let live_pages = page_count(checker)?;
        if live_pages != pages {
            return Ok(Comparison::Differs(live_pages.min(pages) + 1));
        }
        for &number in written {
            if !same_page(number, &page(checker, number)?, &page(original, number)?) {
                return Ok(Comparison::Differs(number));
            }
        }
        Ok(Comparison::Same)
    })();
    let written_since = data_version(writer).map(|now| now != before);
    checker.execute_batch("COMMIT")?;
    if written_since? {
        return Ok(Comparison::WrittenSince);
    }
    compared
}

/// One page of `conn`'s main database.
fn page(conn: &Connection, number: i64) -> Result<Vec<u8>> {
    Ok(conn
        .prepare_cached("SELECT data FROM sqlite_dbpage('main') WHERE pgno = ?1")?
        .query_row([number], |row| row.get(0))?)
}

/// The pages of `conn`'s main database.
fn page_count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA page_count", [], |row| row.get(0))?)
}

/// Whether page `number` of two databases is the same, page 1 but for
/// [`REWRITTEN_HEADER`].
fn same_page(number: i64, a: &[u8], b: &[u8]) -> bool {
    match number {
        1 => same_first_page(a, b),
        _ => a == b,
    }
}

/// The pages, up to `limit` of them, that differ between `a` and `b` in
/// order ([`same_page`]): where both have a page, then the first page past
/// the shorter one. The two are read at once, `a` on a thread of its own,
/// so this takes about as long as the slower read.
fn differing_pages(a: &mut Connection, b: &Connection, limit: usize) -> Result<Vec<i64>> {
    let (filled, sent) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
    let (emptied, empties) = mpsc::channel();
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || send_pages(a, &filled, &empties));
        let compared = compare_pages(b, sent, emptied, limit);
        reader
            .join()
            .map_err(|_| Error::Internal("the comparison's reader panicked".into()))??;
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
/// side stops listening (it found as many differences as it wanted).
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

/// Compares `b`'s pages with those that arrive from the other side's
/// reader, as [`differing_pages`] does.
fn compare_pages(
    b: &Connection,
    sent: mpsc::Receiver<Batch>,
    emptied: mpsc::Sender<Batch>,
    limit: usize,
) -> Result<Vec<i64>> {
    let mut pages = b.prepare(PAGES)?;
    let mut rows = pages.query([])?;
    let mut differing = Vec::new();
    let mut number = 0;
    for batch in sent.iter() {
        for page in &batch {
            number += 1;
            let Some(row) = rows.next()? else {
                differing.push(number);
                return Ok(differing);
            };
            let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if !same_page(number, page, data) {
                differing.push(number);
                if differing.len() == limit {
                    return Ok(differing);
                }
            }
        }
        // The reader may be done; then the buffers are not needed.
        let _ = emptied.send(batch);
    }
    if rows.next()?.is_some() {
        differing.push(number + 1);
    }
    Ok(differing)
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
                return Err(stayed_locked());
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
    use std::collections::BTreeSet;

    use super::*;

    /// A WAL database at `path` with `rows` rows, as applications keep one.
    pub(super) fn database(path: &Path, rows: i64) -> Connection {
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

    /// Restores `backup` over the live database at `live` as a restore does.
    fn restore(backup: &Connection, live: &Path) -> Result<(Rewritten, Comparison)> {
        overwrite(
            open_existing(live, "live", OpenFlags::SQLITE_OPEN_READ_WRITE)?,
            backup,
        )
    }

    fn rows(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn integrity(conn: &Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    /// Restores `backup` over `live` and checks that `live` then holds
    /// `backup`'s rows and pages, read by a connection opened before.
    fn assert_restores(backup: &Connection, live: &Path, app: &Connection) -> Rewritten {
        let (rewritten, check) = restore(backup, live).unwrap();
        assert_eq!(check, Comparison::Same);
        assert_eq!(rewritten.pages, page_count(backup).unwrap());
        assert_eq!(page_count(app).unwrap(), rewritten.pages);
        assert_eq!(rows(app, "t"), rows(backup, "t"));
        assert_eq!(integrity(app), "ok");
        rewritten
    }

    /// The restore wrote the pages that differ, not the whole database.
    fn assert_in_place(rewritten: Rewritten) {
        assert!(
            rewritten.pages_written * 2 <= rewritten.pages,
            "{rewritten:?}"
        );
    }

    #[test]
    fn a_restore_over_a_longer_or_shorter_database_holds_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let app = database(&live, 3000);
        // Shorter than the live database (which is truncated), then longer.
        let short = database(&dir.path().join("short.db"), 2500);
        assert_in_place(assert_restores(&short, &live, &app));
        let long = database(&dir.path().join("long.db"), 4000);
        assert_in_place(assert_restores(&long, &live, &app));
        assert_eq!(rows(&app, "t"), 4000);
    }

    #[test]
    fn a_restore_writes_only_the_pages_that_differ() {
        let dir = tempfile::tempdir().unwrap();
        let backup_path = dir.path().join("backup.db");
        let backup = database(&backup_path, 3000);
        backup
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let live = dir.path().join("live.db");
        std::fs::copy(&backup_path, &live).unwrap();
        let mut app = Connection::open(&live).unwrap();
        app.execute_batch(
            "UPDATE t SET s = 'changed' WHERE n IN (7, 1500, 2999); \
             INSERT INTO t VALUES (5000, 'new');",
        )
        .unwrap();
        let differing = differing_pages(&mut app, &backup, usize::MAX).unwrap();
        assert!(differing.len() >= 3, "{differing:?}");
        let rewritten = assert_restores(&backup, &live, &app);
        let beyond_first = differing.iter().filter(|&&p| p > 1).count() as i64;
        assert_eq!(rewritten.pages_written, 1 + beyond_first);
        assert!(
            rewritten.pages_written * 20 < rewritten.pages,
            "{rewritten:?}"
        );
    }

    #[test]
    fn a_restore_keeps_the_live_journal_mode() {
        let dir = tempfile::tempdir().unwrap();
        for (live_mode, backup_mode) in [("delete", "wal"), ("wal", "delete")] {
            let live = dir.path().join(format!("live-{live_mode}.db"));
            let app = database(&live, 3000);
            app.pragma_update(None, "journal_mode", live_mode).unwrap();
            let backup = database(&dir.path().join(format!("backup-{backup_mode}.db")), 3200);
            backup
                .pragma_update(None, "journal_mode", backup_mode)
                .unwrap();
            assert_in_place(assert_restores(&backup, &live, &app));
            let mode: String = app
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, live_mode);
        }
    }

    #[test]
    fn connections_open_before_a_restore_read_the_backups_schema() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let app = database(&live, 10);
        // The same schema cookie as the live database, another schema.
        let backup = Connection::open(dir.path().join("backup.db")).unwrap();
        backup
            .execute_batch("CREATE TABLE u (x); INSERT INTO u VALUES (1), (2);")
            .unwrap();
        let cookie = |c: &Connection| -> i64 {
            c.query_row("PRAGMA schema_version", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(cookie(&app), cookie(&backup));
        assert_eq!(rows(&app, "t"), 10);
        assert_eq!(restore(&backup, &live).unwrap().1, Comparison::Same);
        assert_eq!(rows(&app, "u"), 2);
        assert!(app.prepare("SELECT * FROM t").is_err());
    }

    #[test]
    fn a_schema_over_many_pages_is_restored_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let many_tables = |path: &Path, prefix: &str, tables: usize| {
            // Most pages the same: those of `t`, written first.
            let conn = database(path, 5000);
            for n in 0..tables {
                conn.execute_batch(&format!(
                    "CREATE TABLE {prefix}_{n:04}_{} (x, y, z); \
                     CREATE INDEX {prefix}_{n:04}_index ON {prefix}_{n:04}_{} (y, z);",
                    "long_name".repeat(20),
                    "long_name".repeat(20),
                ))
                .unwrap();
            }
            conn
        };
        let live = dir.path().join("live.db");
        let app = many_tables(&live, "live", 20);
        let shorter = many_tables(&dir.path().join("shorter.db"), "backup", 10);
        assert_in_place(assert_restores(&shorter, &live, &app));
        let longer = many_tables(&dir.path().join("longer.db"), "other", 30);
        assert_in_place(assert_restores(&longer, &live, &app));
        let tables: i64 = app
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'other%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 60);
    }

    #[test]
    fn a_live_database_laid_out_otherwise_or_mostly_different_is_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let app = Connection::open(&live).unwrap();
        // In WAL, as applications keep one: in a rollback journal the online
        // backup's own commit moves `data_version`, and the check after it
        // leaves the rest to `integrity_check`.
        app.execute_batch(
            "PRAGMA auto_vacuum = FULL; PRAGMA journal_mode = WAL; \
             CREATE TABLE t (n); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let backup = database(&dir.path().join("backup.db"), 300);
        let rewritten = assert_restores(&backup, &live, &app);
        assert_eq!(rewritten.pages_written, rewritten.pages);

        let live = dir.path().join("different.db");
        let app = database(&live, 300);
        app.execute_batch("UPDATE t SET s = 'other ' || s").unwrap();
        let rewritten = assert_restores(&backup, &live, &app);
        assert_eq!(rewritten.pages_written, rewritten.pages);
    }

    // Pages read from the file beside a writer and a checkpointer (each
    // checkpoint copies WAL frames into the file, and the WAL starts over
    // when it can) make a whole database: the state after one commit.
    #[test]
    fn pages_read_beside_a_writer_and_checkpoints_are_one_consistent_snapshot() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let app = database(&live, 4000);
        app.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; CREATE TABLE c (rounds); INSERT INTO c VALUES (0);",
        )
        .unwrap();
        let stop = &AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                // Each commit adds 50 rows, rewrites rows across the file
                // and counts itself.
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    app.execute_batch(&format!(
                        "BEGIN; \
                         INSERT INTO t SELECT n + 100000 * {round}, s FROM t WHERE n < 50; \
                         UPDATE t SET s = printf('%0500d', {round}) WHERE n % 97 = {round} % 97; \
                         UPDATE c SET rounds = rounds + 1; \
                         COMMIT;"
                    ))
                    .unwrap();
                }
            });
            let checkpoints = scope.spawn(|| {
                let checkpointer = Connection::open(&live).unwrap();
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    checkpointer
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                        .unwrap();
                    done += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                done
            });
            // Stops both threads however the checks below end, a failed
            // assertion included.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let stopping = Stop(stop);
            let mut rounds_seen = BTreeSet::new();
            for snapshot in 0..15 {
                let mut bytes = Vec::new();
                read_pages(&live, "live", &CancellationToken::new(), &mut |page| {
                    bytes.extend_from_slice(page);
                    Ok(())
                })
                .unwrap();
                let copy = dir.path().join(format!("snapshot-{snapshot}.db"));
                std::fs::write(&copy, &bytes).unwrap();
                let conn = Connection::open(&copy).unwrap();
                assert_eq!(integrity(&conn), "ok", "snapshot {snapshot}");
                let rounds: i64 = conn
                    .query_row("SELECT rounds FROM c", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(rows(&conn, "t"), 4000 + 50 * rounds, "snapshot {snapshot}");
                rounds_seen.insert(rounds);
            }
            drop(stopping);
            assert!(
                rounds_seen.len() > 5,
                "the writer kept writing: {rounds_seen:?}"
            );
            assert!(checkpoints.join().unwrap() > 5);
        });
    }

    #[test]
    fn a_sample_tells_a_database_whose_pages_mostly_differ() {
        let dir = tempfile::tempdir().unwrap();
        // Over 16 samples' worth of pages.
        let backup = database(&dir.path().join("backup.db"), 12_000);
        let pages = page_count(&backup).unwrap();
        assert!(pages > 16 * SAMPLE_EVERY as i64, "{pages} pages");
        let pending = pending_byte_page(4096);
        let live = database(&dir.path().join("live.db"), 12_000);
        assert!(!mostly_differ(&live, &backup, pages, pending).unwrap());
        live.execute_batch("UPDATE t SET s = 'changed' WHERE n % 100 = 0")
            .unwrap();
        assert!(!mostly_differ(&live, &backup, pages, pending).unwrap());
        live.execute_batch("UPDATE t SET s = 'other ' || s")
            .unwrap();
        assert!(mostly_differ(&live, &backup, pages, pending).unwrap());
        drop(live);
        let app = Connection::open(dir.path().join("live.db")).unwrap();
        let rewritten = assert_restores(&backup, &dir.path().join("live.db"), &app);
        assert_eq!(rewritten.pages_written, rewritten.pages);
    }

    #[test]
    fn a_write_after_the_restore_is_told_apart_from_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let app = database(&live, 50);
        let backup = database(&dir.path().join("backup.db"), 100);
        restore(&backup, &live).unwrap();
        // `app` stands for the writer, whose data_version moves with other
        // connections' commits.
        let checker = Connection::open(&live).unwrap();
        let before = data_version(&app).unwrap();
        let pages = page_count(&backup).unwrap();
        let check = || check_pages(&checker, &app, &backup, pages, &[1, 2], before);
        assert_eq!(check().unwrap(), Comparison::Same);
        let mut copied = Connection::open(&live).unwrap();
        Connection::open(&live)
            .unwrap()
            .execute("INSERT INTO t VALUES (1000, 'x')", [])
            .unwrap();
        assert_eq!(check().unwrap(), Comparison::WrittenSince);
        let before = data_version(&copied).unwrap();
        copy_database(&backup, &mut copied).unwrap();
        app.execute("INSERT INTO t VALUES (1001, 'x')", []).unwrap();
        assert_eq!(
            compare_copy(&mut copied, &backup, before).unwrap(),
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
