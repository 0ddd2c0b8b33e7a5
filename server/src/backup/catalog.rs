//! Queries on the backup catalog table.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect,
};

use crate::error::{Error, Result};
use crate::store::entity::backup::{self, Model as Backup};

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

pub async fn get<C: ConnectionTrait>(conn: &C, filename: &str) -> Result<Option<Backup>> {
    Ok(backup::Entity::find_by_id(filename).one(conn).await?)
}

pub async fn insert<C: ConnectionTrait>(conn: &C, row: Backup) -> Result<()> {
    row.into_active_model().reset_all().insert(conn).await?;
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
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    owner: Option<i64>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<Vec<Backup>> {
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
    Ok(query
        .order_by_desc(backup::Column::CreatedAt)
        .order_by_desc(backup::Column::Filename)
        .limit(limit)
        .all(conn)
        .await?)
}
