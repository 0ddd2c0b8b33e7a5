//! Checking a backup's bytes against what the catalog recorded (size and
//! digest) as they are read, and checking a standalone copy as SQLite:
//! the checks every storage makes before it hands bytes out as whole.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::ContentFacts;
use crate::backup::sqlite::{self, Content};
use crate::error::{Error, Result};

/// Counts and hashes bytes as they are read, against the recorded size
/// and digest (BLAKE3 where recorded, else SHA-256): more bytes than
/// recorded fail at once, a short count or another digest at
/// [`Self::finish`].
pub struct Checker {
    expected: ContentFacts,
    hasher: Hasher,
    read: u64,
}

/// The digest a [`Checker`] computes.
enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(Box<ring::digest::Context>),
    /// Nothing recorded to check against.
    None,
}

impl Checker {
    pub fn new(expected: ContentFacts) -> Self {
        let hasher = match (&expected.blake3, &expected.sha256) {
            (Some(_), _) => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            (None, Some(_)) => {
                Hasher::Sha256(Box::new(ring::digest::Context::new(&ring::digest::SHA256)))
            }
            (None, None) => Hasher::None,
        };
        Self {
            expected,
            hasher,
            read: 0,
        }
    }

    /// Takes in the next bytes read.
    pub fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.read += bytes.len() as u64;
        match &mut self.hasher {
            Hasher::Blake3(hasher) => {
                hasher.update(bytes);
            }
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::None => {}
        }
        if i64::try_from(self.read).ok() > Some(self.expected.size_bytes) {
            return Err(size_mismatch(self.read, &self.expected));
        }
        Ok(())
    }

    /// At the end: every byte read must make up the recorded size and
    /// digest.
    pub fn finish(&self) -> Result<()> {
        if i64::try_from(self.read).ok() != Some(self.expected.size_bytes) {
            return Err(size_mismatch(self.read, &self.expected));
        }
        let (algorithm, digest, recorded) = match &self.hasher {
            Hasher::Blake3(hasher) => (
                "BLAKE3",
                hasher.finalize().to_hex().to_string(),
                &self.expected.blake3,
            ),
            Hasher::Sha256(hasher) => (
                "SHA-256",
                hex::encode(hasher.as_ref().clone().finish()),
                &self.expected.sha256,
            ),
            Hasher::None => {
                return Err(Error::DataLoss(
                    "digest: the catalog recorded none to check the bytes against".into(),
                ));
            }
        };
        let recorded = recorded.as_deref().unwrap_or_default();
        if digest != recorded {
            return Err(Error::DataLoss(format!(
                "digest: the bytes' {algorithm} is {}…, the catalog recorded {}…",
                prefix(&digest),
                prefix(recorded)
            )));
        }
        Ok(())
    }
}

/// Stored bytes of another size than recorded: DATA_LOSS saying both.
pub fn size_mismatch(stored: u64, expected: &ContentFacts) -> Error {
    Error::DataLoss(format!(
        "size: the backup has {stored} bytes, the catalog recorded {}",
        expected.size_bytes
    ))
}

/// The first 12 hex digits of a digest, enough to tell two apart.
pub fn prefix(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Size and SHA-256 of an open file, read from its current offset.
///
/// ring's SHA-256 (OpenSSL's assembly) hashes about 1.8 times as fast as
/// the sha2 crate on CPUs without SHA instructions; on a 1 GiB backup that
/// is seconds.
pub fn hash_file(mut file: &File) -> Result<ContentFacts> {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    // Small backups are common (many users, small databases): no 1 MiB
    // buffer to zero for a file of a few pages.
    let len = file.metadata()?.len().clamp(4096, 1 << 20);
    let mut buf = vec![0u8; len as usize];
    let mut size: i64 = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as i64;
    }
    Ok(ContentFacts {
        size_bytes: size,
        sha256: Some(hex::encode(hasher.finish())),
        blake3: None,
    })
}

/// Who else may touch the file [`open_intact`] opens, which decides how
/// SQLite reads it.
#[derive(Clone, Copy)]
pub enum Holder {
    /// A stored file another process might truncate or rewrite: read with
    /// `pread`, where that is an error, never a signal.
    Shared,
    /// A scratch copy the server has just written and alone holds: mapped
    /// into memory, which saves `integrity_check` a system call per page
    /// read (a fifth to a third of its time). Only a failing local disk
    /// could turn a read into a signal, and the state store beside it
    /// would not survive that either.
    Server,
}

/// Opens the standalone copy at `path`, whose bytes were already checked,
/// as SQLite and runs a full `PRAGMA integrity_check` (quick_check misses
/// index damage). An empty file, one that is not SQLite, or any problem
/// found is DATA_LOSS.
pub fn open_intact(path: &Path, holder: Holder) -> Result<Connection> {
    // An empty file opens as an empty database and passes integrity_check.
    match sqlite::sniff(sqlite::open_regular(path)?)? {
        Content::Sqlite => {}
        Content::Empty => return Err(Error::DataLoss("the backup is empty".into())),
        Content::NotSqlite => {
            return Err(Error::DataLoss(
                "the backup is not a SQLite database".into(),
            ));
        }
    }
    let conn = sqlite::open_existing(path, "the backup", OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    if let Holder::Server = holder {
        conn.pragma_update(
            None,
            "mmap_size",
            i64::try_from(std::fs::metadata(path)?.len()).unwrap_or(i64::MAX),
        )?;
    }
    sqlite::check_integrity(&conn, "the backup").map_err(|e| match e {
        Error::FailedPrecondition(why) => Error::DataLoss(format!("integrity check: {why}")),
        e => e,
    })?;
    Ok(conn)
}
