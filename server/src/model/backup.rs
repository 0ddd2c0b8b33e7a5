//! A backup as the service knows it: its kind, owner, recorded size and
//! digest, and what verification last found; with the listing cursor and
//! the lighter entry retention plans with.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// Why a backup exists. Stored as its `as_str` in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Auto,
    Manual,
    PreRestore,
    PreMigration,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
            Self::PreRestore => "pre_restore",
            Self::PreMigration => "pre_migration",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Auto,
            Self::Manual,
            Self::PreRestore,
            Self::PreMigration,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Protected backups are never deleted by retention, and only by an
    /// admin with force.
    pub fn is_protected(self) -> bool {
        matches!(self, Self::PreRestore | Self::PreMigration)
    }
}

/// As its `as_str`, the spelling audit details have always used.
impl serde::Serialize for BackupKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A catalogued backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// Where its bytes are stored: unique among every owner's backups.
    pub filename: String,
    /// The name the API shows, unique among the owner's backups.
    pub name: String,
    /// 0 for system backups (pre-restore, pre-migration, adopted files).
    pub owner_user_id: i64,
    pub kind: BackupKind,
    /// Size and SHA-256 (hex) of the bytes when they were written: every
    /// read is checked against the size and BLAKE3 where it is set, else
    /// SHA-256. SHA-256 is empty where the storage did not compute it (the
    /// repository, which computes BLAKE3 alone).
    pub size_bytes: i64,
    pub sha256: String,
    /// Never deleted by retention; only by an admin with force.
    pub is_protected: bool,
    /// When the snapshot was taken (microseconds); retention orders by
    /// this, never by a file's modification time.
    pub created_at: DateTime<Utc>,
    /// What the last verification found wrong; `None` while intact.
    pub damage: Option<String>,
    /// When the backup last passed or failed verification.
    pub last_verified_at: Option<DateTime<Utc>>,
    /// BLAKE3 (hex) of the bytes, where the storage computed it.
    pub blake3: Option<String>,
    /// Stored bytes the backup added to the storage (0 when it shares
    /// everything with backups stored before).
    pub stored_bytes: i64,
}

/// The whole catalog, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub backups: u64,
    /// The sum of every backup's size: what full copies take.
    pub logical_bytes: u64,
    /// The oldest last verification, when every backup has one: by then
    /// each had been verified.
    pub all_verified_by: Option<DateTime<Utc>>,
}

/// Where a newest-first listing resumes: after this (created_at, filename).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub filename: String,
}

impl Cursor {
    pub fn after(backup: &Backup) -> Self {
        Self {
            created_at: backup.created_at,
            filename: backup.filename.clone(),
        }
    }

    /// `<micros since epoch>|<filename>`, the text inside a page token.
    pub fn encode(&self) -> String {
        format!("{}|{}", self.created_at.timestamp_micros(), self.filename)
    }

    pub fn decode(text: &str) -> Result<Self> {
        let invalid = || Error::invalid("page_token", "is malformed");
        let (micros, filename) = text.split_once('|').ok_or_else(invalid)?;
        let micros: i64 = micros.parse().map_err(|_| invalid())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
            filename: filename.to_owned(),
        })
    }
}

/// A backup without its size and checksum: what retention plans with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub filename: String,
    pub name: String,
    pub owner_user_id: i64,
    /// `None` for a stored kind this server does not know: retention keeps
    /// such a backup as protected rather than failing a whole run on it.
    pub kind: Option<BackupKind>,
    pub is_protected: bool,
    pub created_at: DateTime<Utc>,
    /// Marked damaged by its last verification.
    pub damaged: bool,
}
