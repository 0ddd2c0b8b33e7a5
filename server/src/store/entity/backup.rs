//! The backup catalog: one row per file in the backups directory.
//!
//! A backup is identified by its owner and `name`; `filename` is where its
//! bytes live in the backups directory (see `backup::naming`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub filename: String,
    /// The name the API shows, unique among the owner's backups.
    pub name: String,
    /// 0 for system backups (pre-restore, pre-migration, adopted files).
    pub owner_user_id: i64,
    /// `auto`, `manual`, `pre_restore` or `pre_migration` (see `model::backup::BackupKind`).
    pub kind: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub is_protected: bool,
    /// When the snapshot was taken; retention orders by this, never by file mtime.
    pub created_at: DateTimeUtc,
    /// What the last verification found wrong; `None` while intact.
    pub damage: Option<String>,
    /// When the backup last passed or failed verification.
    pub last_verified_at: Option<DateTimeUtc>,
    /// BLAKE3 (hex) of the standalone file, where it was computed.
    pub blake3: Option<String>,
    /// Stored bytes the backup added to the storage.
    pub stored_bytes: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
