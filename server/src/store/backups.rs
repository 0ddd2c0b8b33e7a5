//! The backup catalog in the state store: its queries, and the one
//! conversion between its rows and [`Backup`]. A stored kind this server
//! does not know is an error, never a default.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait,
    FromQueryResult, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};

use super::Connection;
use super::entity::backup;
use crate::error::{Error, Result};
use crate::model::backup::{Backup, BackupKind, Cursor, Entry, Totals};

/// A catalog row as a [`Backup`]; a kind this server does not know is an
/// error naming the row.
fn from_row(row: backup::Model) -> Result<Backup> {
    let kind = BackupKind::parse(&row.kind).ok_or_else(|| {
        Error::Internal(format!(
            "the catalog row of {:?} has the kind {:?}, which this server does not know",
            row.filename, row.kind
        ))
    })?;
    Ok(Backup {
        filename: row.filename,
        name: row.name,
        owner_user_id: row.owner_user_id,
        kind,
        size_bytes: row.size_bytes,
        sha256: row.sha256,
        is_protected: row.is_protected,
        created_at: row.created_at,
        damage: row.damage,
        last_verified_at: row.last_verified_at,
        blake3: row.blake3,
        stored_bytes: row.stored_bytes,
    })
}

fn from_rows(rows: Vec<backup::Model>) -> Result<Vec<Backup>> {
    rows.into_iter().map(from_row).collect()
}

fn to_row(backup: Backup) -> backup::Model {
    backup::Model {
        filename: backup.filename,
        name: backup.name,
        owner_user_id: backup.owner_user_id,
        kind: backup.kind.as_str().into(),
        size_bytes: backup.size_bytes,
        sha256: backup.sha256,
        is_protected: backup.is_protected,
        created_at: backup.created_at,
        damage: backup.damage,
        last_verified_at: backup.last_verified_at,
        blake3: backup.blake3,
        stored_bytes: backup.stored_bytes,
    }
}

/// The backup whose bytes are in `filename`.
pub async fn by_filename<C: Connection>(conn: &C, filename: &str) -> Result<Option<Backup>> {
    conn.row(backup::Entity::find_by_id(filename))
        .await?
        .map(from_row)
        .transpose()
}

/// `owner`'s backup called `name`.
pub async fn by_name<C: Connection>(conn: &C, owner: i64, name: &str) -> Result<Option<Backup>> {
    let query = backup::Entity::find()
        .filter(backup::Column::OwnerUserId.eq(owner))
        .filter(backup::Column::Name.eq(name));
    conn.row(query).await?.map(from_row).transpose()
}

/// Every owner's backups called `name` (at most one per owner).
pub async fn all_named<C: Connection>(conn: &C, name: &str) -> Result<Vec<Backup>> {
    let query = backup::Entity::find().filter(backup::Column::Name.eq(name));
    from_rows(conn.rows(query).await?)
}

/// How many manual backups `owner` has.
pub async fn count_manual<C: ConnectionTrait>(conn: &C, owner: i64) -> Result<u64> {
    Ok(backup::Entity::find()
        .filter(backup::Column::OwnerUserId.eq(owner))
        .filter(backup::Column::Kind.eq(BackupKind::Manual.as_str()))
        .count(conn)
        .await?)
}

/// How many backups are marked damaged.
pub async fn count_damaged<C: ConnectionTrait>(conn: &C) -> Result<u64> {
    Ok(backup::Entity::find()
        .filter(backup::Column::Damage.is_not_null())
        .count(conn)
        .await?)
}

/// Records what verifying `filename` found at `at`: `damage` is what is
/// wrong, `None` when intact. False when there is no such backup (any
/// more).
pub async fn record_verification<C: ConnectionTrait>(
    conn: &C,
    filename: &str,
    damage: Option<&str>,
    at: DateTime<Utc>,
) -> Result<bool> {
    let updated = backup::Entity::update_many()
        .col_expr(
            backup::Column::Damage,
            Expr::value(damage.map(str::to_owned)),
        )
        .col_expr(backup::Column::LastVerifiedAt, Expr::value(Some(at)))
        .filter(backup::Column::Filename.eq(filename))
        .exec(conn)
        .await?;
    Ok(updated.rows_affected > 0)
}

/// The backup whose last verification (or, never verified, creation) lies
/// furthest back, of those not in `passed_over` (file names): the next one
/// a scrub looks at.
pub async fn least_recently_verified<C: ConnectionTrait>(
    conn: &C,
    passed_over: &[String],
) -> Result<Option<Backup>> {
    backup::Entity::find()
        .filter(backup::Column::Filename.is_not_in(passed_over.iter().map(String::as_str)))
        .order_by_asc(Expr::cust("coalesce(last_verified_at, created_at)"))
        .order_by_asc(backup::Column::Filename)
        .one(conn)
        .await?
        .map(from_row)
        .transpose()
}

/// Records what the storage knows of a backup's bytes moved into it: the
/// stored bytes they added, and their BLAKE3 (`blake3`) if their SHA-256
/// (`sha256`) is the one recorded. Bytes that changed (a damaged backup
/// moved as it is) keep being checked against the SHA-256 of the bytes
/// first written, and so stay damaged.
pub async fn set_storage_facts<C: ConnectionTrait>(
    conn: &C,
    filename: &str,
    sha256: &str,
    blake3: &str,
    stored_bytes: i64,
) -> Result<()> {
    backup::Entity::update_many()
        .col_expr(backup::Column::StoredBytes, Expr::value(stored_bytes))
        .filter(backup::Column::Filename.eq(filename))
        .exec(conn)
        .await?;
    backup::Entity::update_many()
        .col_expr(backup::Column::Blake3, Expr::value(blake3.to_owned()))
        .filter(backup::Column::Filename.eq(filename))
        .filter(backup::Column::Sha256.eq(sha256))
        .exec(conn)
        .await?;
    Ok(())
}

pub async fn insert<C: ConnectionTrait>(conn: &C, backup: Backup) -> Result<()> {
    to_row(backup)
        .into_active_model()
        .reset_all()
        .insert(conn)
        .await?;
    Ok(())
}

pub async fn remove<C: ConnectionTrait>(conn: &C, filename: &str) -> Result<()> {
    backup::Entity::delete_by_id(filename).exec(conn).await?;
    Ok(())
}

pub async fn all_filenames<C: ConnectionTrait>(conn: &C) -> Result<HashSet<String>> {
    let names: Vec<String> = backup::Entity::find()
        .select_only()
        .column(backup::Column::Filename)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(names.into_iter().collect())
}

/// Newest first (created_at, then filename, descending), optionally one
/// owner's, after `after`.
pub async fn page<C: Connection>(
    conn: &C,
    owner: Option<i64>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<Vec<Backup>> {
    from_rows(conn.rows(page_query(owner, after, limit)).await?)
}

/// Read off `idx_backups_owner_page` or `idx_backups_page`, in their order.
fn page_query(owner: Option<i64>, after: Option<&Cursor>, limit: u64) -> Select<backup::Entity> {
    let mut query = backup::Entity::find();
    if let Some(owner) = owner {
        query = query.filter(backup::Column::OwnerUserId.eq(owner));
    }
    if let Some(after) = after {
        query = query.filter(
            Condition::any()
                .add(backup::Column::CreatedAt.lt(after.created_at))
                .add(
                    Condition::all()
                        .add(backup::Column::CreatedAt.eq(after.created_at))
                        .add(backup::Column::Filename.lt(after.filename.as_str())),
                ),
        );
    }
    query
        .order_by_desc(backup::Column::CreatedAt)
        .order_by_desc(backup::Column::Filename)
        .limit(limit)
}

/// The catalog's totals, as the driver hands them over.
#[derive(FromQueryResult)]
struct TotalsRow {
    backups: i64,
    logical_bytes: i64,
    never_verified: i64,
    oldest_verification: Option<DateTime<Utc>>,
}

/// How many backups there are, their logical bytes, and the time by which
/// every one had been verified (`None` while one never was).
pub async fn totals<C: ConnectionTrait>(conn: &C) -> Result<Totals> {
    let row = backup::Entity::find()
        .select_only()
        .column_as(Expr::cust("count(*)"), "backups")
        .column_as(Expr::cust("coalesce(sum(size_bytes), 0)"), "logical_bytes")
        .column_as(
            Expr::cust("count(*) - count(last_verified_at)"),
            "never_verified",
        )
        .column_as(Expr::cust("min(last_verified_at)"), "oldest_verification")
        .into_model::<TotalsRow>()
        .one(conn)
        .await?;
    let Some(row) = row else {
        return Ok(Totals::default());
    };
    Ok(Totals {
        backups: row.backups.max(0) as u64,
        logical_bytes: row.logical_bytes.max(0) as u64,
        all_verified_by: row.oldest_verification.filter(|_| row.never_verified == 0),
    })
}

/// The columns of an [`Entry`], as the driver hands them over.
#[derive(FromQueryResult)]
struct EntryRow {
    filename: String,
    name: String,
    owner_user_id: i64,
    kind: String,
    is_protected: bool,
    created_at: DateTime<Utc>,
    damaged: bool,
}

impl From<EntryRow> for Entry {
    fn from(row: EntryRow) -> Self {
        Self {
            filename: row.filename,
            name: row.name,
            owner_user_id: row.owner_user_id,
            kind: BackupKind::parse(&row.kind),
            is_protected: row.is_protected,
            created_at: row.created_at,
            damaged: row.damaged,
        }
    }
}

/// `damaged` of [`Entry`], from the `damage` column.
const DAMAGED: &str = "(damage IS NOT NULL)";

/// Every backup's [`Entry`], optionally one owner's, in no particular order.
pub async fn entries<C: ConnectionTrait>(conn: &C, owner: Option<i64>) -> Result<Vec<Entry>> {
    let mut query = backup::Entity::find()
        .select_only()
        .columns([
            backup::Column::Filename,
            backup::Column::Name,
            backup::Column::OwnerUserId,
            backup::Column::Kind,
            backup::Column::IsProtected,
            backup::Column::CreatedAt,
        ])
        .column_as(Expr::cust(DAMAGED), "damaged");
    if let Some(owner) = owner {
        query = query.filter(backup::Column::OwnerUserId.eq(owner));
    }
    let rows = query.into_model::<EntryRow>().all(conn).await?;
    Ok(rows.into_iter().map(Entry::from).collect())
}

/// Every backup's [`Entry`] grouped by owner, optionally one owner's.
///
/// On SQLite each owner's entries come packed into one text value
/// (`group_concat`), so the driver hands over one row per owner instead of
/// one per backup: with 100,000 backups the driver's per-row cost was most
/// of a retention summary's time. Fields and entries are separated by `/`,
/// which no backup file name contains.
pub async fn entries_by_owner<C: ConnectionTrait>(
    conn: &C,
    owner: Option<i64>,
) -> Result<BTreeMap<i64, Vec<Entry>>> {
    if conn.get_database_backend() != DbBackend::Sqlite {
        let mut grouped: BTreeMap<i64, Vec<Entry>> = BTreeMap::new();
        for entry in entries(conn, owner).await? {
            grouped.entry(entry.owner_user_id).or_default().push(entry);
        }
        return Ok(grouped);
    }
    let mut query = backup::Entity::find()
        .select_only()
        .column(backup::Column::OwnerUserId)
        .column_as(
            Expr::cust(format!(
                "group_concat(concat_ws('/', created_at, kind, is_protected, {DAMAGED}, filename, name), '/')"
            )),
            "packed",
        )
        .group_by(backup::Column::OwnerUserId);
    if let Some(owner) = owner {
        query = query.filter(backup::Column::OwnerUserId.eq(owner));
    }
    let packed: Vec<(i64, String)> = query.into_tuple().all(conn).await?;
    packed
        .into_iter()
        .map(|(owner, text)| Ok((owner, unpack(owner, &text)?)))
        .collect()
}

/// Reads `created_at/kind/is_protected/damaged/filename/name[/...]` back
/// into entries.
fn unpack(owner: i64, packed: &str) -> Result<Vec<Entry>> {
    let malformed = || Error::Internal(format!("unreadable catalog rows of owner {owner}"));
    let mut fields = packed.split('/');
    let mut entries = Vec::new();
    while let Some(created_at) = fields.next() {
        let (Some(kind), Some(protected), Some(damaged), Some(filename), Some(name)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(malformed());
        };
        entries.push(Entry {
            filename: filename.to_owned(),
            name: name.to_owned(),
            owner_user_id: owner,
            kind: BackupKind::parse(kind),
            is_protected: protected != "0",
            damaged: damaged != "0",
            created_at: DateTime::parse_from_rfc3339(created_at)
                .map_err(|_| malformed())?
                .to_utc(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::{Migrator, MigratorTrait};

    fn row(filename: &str, owner: i64, kind: BackupKind, protected: bool, at: &str) -> Backup {
        Backup {
            filename: filename.into(),
            name: format!("name-of-{filename}"),
            damage: filename.starts_with('c').then(|| "digest".into()),
            last_verified_at: None,
            blake3: None,
            stored_bytes: 1,
            owner_user_id: owner,
            kind,
            size_bytes: 1,
            sha256: String::new(),
            is_protected: protected,
            created_at: DateTime::parse_from_rfc3339(at).unwrap().to_utc(),
        }
    }

    crate::store::tests::on_each_backend!(
        packed_entries_match_the_plain_query,
        |db: crate::store::Store| async move {
            let rows = [
                row("a.db", 1, BackupKind::Manual, false, "2026-01-01T00:00:00Z"),
                row(
                    "b-1_x.y.db",
                    1,
                    BackupKind::Auto,
                    false,
                    "2026-01-01T00:00:00.5Z",
                ),
                row(
                    "c.db",
                    1,
                    BackupKind::Auto,
                    false,
                    "2026-01-01T00:00:00.123456789Z",
                ),
                row(
                    "pre_restore_backup_1.db",
                    0,
                    BackupKind::PreRestore,
                    true,
                    "2025-06-30T23:59:59Z",
                ),
                row(
                    "d.db",
                    7,
                    BackupKind::Manual,
                    false,
                    "2027-02-03T04:05:06.000001Z",
                ),
            ];
            for r in &rows {
                insert(db.reads(), r.clone()).await.unwrap();
            }
            let mut plain: BTreeMap<i64, Vec<Entry>> = BTreeMap::new();
            for e in entries(db.reads(), None).await.unwrap() {
                plain.entry(e.owner_user_id).or_default().push(e);
            }
            let mut packed = entries_by_owner(db.reads(), None).await.unwrap();
            for list in plain.values_mut().chain(packed.values_mut()) {
                list.sort_by(|a, b| a.filename.cmp(&b.filename));
            }
            assert_eq!(packed, plain);
            assert!(packed[&0][0].is_protected);
            assert!(packed[&1].iter().any(|e| e.damaged) && packed[&1].iter().any(|e| !e.damaged));
            let one = entries_by_owner(db.reads(), Some(7)).await.unwrap();
            assert_eq!(one.keys().collect::<Vec<_>>(), [&7]);
            assert!(
                entries_by_owner(db.reads(), Some(8))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    );

    /// Every page, whoever lists it and from wherever, walks an index in
    /// its order and stops at its last row: nothing is sorted.
    #[tokio::test]
    async fn pages_are_read_off_an_index_without_sorting() {
        let db = crate::store::Store::open("sqlite::memory:").await.unwrap();
        Migrator::up(db.orm(), None).await.unwrap();
        let cursor = Cursor {
            created_at: Utc::now(),
            filename: "a.db".into(),
        };
        for (owner, index) in [
            (Some(1), "idx_backups_owner_page"),
            (None, "idx_backups_page"),
        ] {
            for after in [None, Some(&cursor)] {
                let plan =
                    crate::store::tests::query_plan(&db, &page_query(owner, after, 20)).await;
                assert!(
                    plan.iter().any(|l| l.contains(index)),
                    "owner {owner:?}, after {after:?}: {plan:?}"
                );
                assert!(
                    plan.iter().all(|l| !l.contains("TEMP B-TREE")),
                    "owner {owner:?}, after {after:?}: {plan:?}"
                );
            }
        }
    }

    crate::store::tests::on_each_backend!(
        a_stored_kind_this_server_does_not_know_is_an_error,
        |db: crate::store::Store| async move {
            use sea_orm::ConnectionTrait;
            let mut odd = row(
                "odd.db",
                1,
                BackupKind::Manual,
                false,
                "2026-01-01T00:00:00Z",
            );
            insert(db.reads(), odd.clone()).await.unwrap();
            db.reads()
                .execute_unprepared("UPDATE backups SET kind = 'from-the-future'")
                .await
                .unwrap();
            assert!(matches!(
                by_filename(db.reads(), "odd.db").await,
                Err(Error::Internal(why)) if why.contains("from-the-future")
            ));
            odd.filename = "fine.db".into();
            odd.name = "fine.db".into();
            insert(db.reads(), odd).await.unwrap();
            assert!(
                page(db.reads(), None, None, 10).await.is_err(),
                "no row is skipped"
            );
        }
    );

    #[test]
    fn unpack_rejects_malformed_text() {
        assert!(unpack(1, "2026-01-01T00:00:00+00:00/auto/0/0/a.db").is_err());
        assert!(unpack(1, "yesterday/auto/0/0/a.db/a.db").is_err());
        let one = unpack(1, "2026-01-01T00:00:00+00:00/auto/1/1/u1~a.db/a.db").unwrap();
        assert_eq!(
            (one[0].filename.as_str(), one[0].name.as_str()),
            ("u1~a.db", "a.db")
        );
        assert!(one[0].damaged);
    }
}
