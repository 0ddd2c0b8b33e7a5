//! Reading a live database's pages straight from its file, in large
//! reads, inside a read transaction that keeps them still.
//!
//! Within a read transaction SQLite's file locks pin what the main file
//! holds of the snapshot. In rollback-journal mode no writer may change
//! the file while the transaction's shared lock is held. In WAL mode a
//! checkpoint copies into the file only frames up to the oldest reader's
//! read mark, and no frames at all while a reader reads from the file
//! alone (WAL read lock 0); nor may a writer start the WAL over while a
//! reader still uses its frames. So a page that no frame in the WAL names
//! is, in the file, the page of the snapshot, and stays so until the
//! transaction ends. Pages a frame names (every frame in the file, a
//! superset of the snapshot's) are read through SQLite instead. Whatever
//! looks unusual (an unreadable WAL header, another file at the path, a
//! short read) sends pages through SQLite too: this is a shortcut for
//! speed, never a second source of truth.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::error::Result;

/// Bytes per read of the main file.
const BLOCK_BYTES: usize = 1 << 20;

/// Bytes before the first frame of a WAL file, and before each frame's page.
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// The pages of a database file that a connection's current read
/// transaction may take from the file itself.
pub struct FilePages {
    file: File,
    page_bytes: usize,
    /// Pages some WAL frame names: read through SQLite.
    in_wal: HashSet<u32>,
    /// The block read last, and the page it starts at.
    block: Vec<u8>,
    block_first: u32,
}

impl FilePages {
    /// For the database at `path`, given `file`, opened at that path
    /// before the connection whose read transaction (which has read from
    /// it) pins the pages, with `page_bytes` pages; `None` when every page
    /// is to be read through SQLite.
    pub fn open(file: File, path: &Path, page_bytes: usize) -> Result<Option<Self>> {
        // The path still names `file`, as it did before the connection
        // opened it by that path: they read the same file. (Another file
        // renamed over the path meanwhile would hold other pages.)
        let (ours, now) = (file.metadata()?, std::fs::symlink_metadata(path)?);
        if ours.dev() != now.dev() || ours.ino() != now.ino() {
            return Ok(None);
        }
        let Some(in_wal) = pages_in_wal(path, page_bytes) else {
            return Ok(None);
        };
        Ok(Some(Self {
            file,
            page_bytes,
            in_wal,
            block: Vec::new(),
            block_first: 0,
        }))
    }

    /// Page `number` (from 1) as the file holds it, if the snapshot's page
    /// is there; `None`: read it through SQLite.
    pub fn page(&mut self, number: u32) -> Option<&[u8]> {
        if number == 0 || self.in_wal.contains(&number) {
            return None;
        }
        let per_block = (BLOCK_BYTES / self.page_bytes) as u32;
        let first = (number - 1) / per_block * per_block + 1;
        if first != self.block_first || self.block.is_empty() {
            self.block_first = first;
            self.block.resize(BLOCK_BYTES, 0);
            let offset = u64::from(first - 1) * self.page_bytes as u64;
            let read = read_fully(&self.file, &mut self.block, offset);
            self.block.truncate(read);
        }
        let start = (number - first) as usize * self.page_bytes;
        self.block.get(start..start + self.page_bytes)
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends;
/// returns the bytes read. An error ends the read early: those pages are
/// read through SQLite, which reports it.
fn read_fully(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    done
}

/// Every page a frame in the WAL beside `path` names (none without a WAL
/// file, or with an empty one); `None` when its header is not that of a
/// WAL of `page_bytes` pages.
fn pages_in_wal(path: &Path, page_bytes: usize) -> Option<HashSet<u32>> {
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal = match File::open(&wal_path) {
        Ok(wal) => wal,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(HashSet::new()),
        Err(_) => return None,
    };
    let len = wal.metadata().ok()?.len();
    if len == 0 {
        return Some(HashSet::new());
    }
    let mut header = [0u8; WAL_HEADER as usize];
    wal.read_exact_at(&mut header, 0).ok()?;
    let magic = u32::from_be_bytes(header[0..4].try_into().ok()?);
    let header_page_bytes = u32::from_be_bytes(header[8..12].try_into().ok()?);
    // A page size of 65,536 is stored as 1.
    let header_page_bytes = if header_page_bytes == 1 {
        65_536
    } else {
        header_page_bytes as usize
    };
    if !matches!(magic, 0x377f_0682 | 0x377f_0683) || header_page_bytes != page_bytes {
        return None;
    }
    let frame_bytes = FRAME_HEADER + page_bytes as u64;
    let mut pages = HashSet::new();
    let mut offset = WAL_HEADER;
    let mut number = [0u8; 4];
    while offset + 4 <= len {
        wal.read_exact_at(&mut number, offset).ok()?;
        pages.insert(u32::from_be_bytes(number));
        offset += frame_bytes;
    }
    Some(pages)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::page;
    use super::super::tests::database;
    use super::*;

    /// A WAL database of `rows` rows whose WAL keeps its frames (no
    /// automatic checkpoint), all in the file for now, and a connection to
    /// write to it.
    fn wal_database(path: &Path, rows: i64) -> Connection {
        let conn = database(path, rows);
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        conn
    }

    #[test]
    fn pages_a_wal_frame_names_are_left_to_sqlite_and_the_rest_match_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let app = wal_database(&path, 3000);
        // Into the WAL, not the file: a page changed, and pages added.
        app.execute_batch(
            "UPDATE t SET s = 'changed' WHERE n = 1500; \
             INSERT INTO t SELECT n + 3000, s FROM t WHERE n < 200;",
        )
        .unwrap();
        let file = File::open(&path).unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let pages: u32 = reader
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let mut file_pages = FilePages::open(file, &path, 4096).unwrap().unwrap();
        let (mut from_file, mut left) = (0, 0);
        for number in 1..=pages {
            match file_pages.page(number) {
                Some(data) => {
                    let through_sqlite = page(&reader, i64::from(number)).unwrap();
                    assert_eq!(data, through_sqlite, "page {number}");
                    from_file += 1;
                }
                None => left += 1,
            }
        }
        assert!(
            from_file > pages / 2,
            "{from_file} of {pages} from the file"
        );
        assert!(left >= 2, "{left} pages left to SQLite");
        // Past the file's end: left to SQLite.
        assert!(file_pages.page(pages + 1000).is_none());
        reader.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_wal_of_another_page_size_or_another_file_at_the_path_reads_nothing_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let app = wal_database(&path, 100);
        app.execute("INSERT INTO t VALUES (100, 'in the WAL')", [])
            .unwrap();
        let open = || File::open(&path).unwrap();
        assert!(FilePages::open(open(), &path, 4096).unwrap().is_some());
        assert!(FilePages::open(open(), &path, 1024).unwrap().is_none());

        let before = open();
        let moved = dir.path().join("moved.db");
        std::fs::rename(&path, &moved).unwrap();
        std::fs::copy(&moved, &path).unwrap();
        assert!(FilePages::open(before, &path, 4096).unwrap().is_none());
    }
}
