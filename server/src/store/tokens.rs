//! Users and their API tokens in the state store (tokens by SHA-256 only).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

use super::Connection;
use super::entity::{api_token, user};
use crate::error::Result;
use crate::model::user::{TokenInfo, User};

/// The user `id`, if there is one.
pub async fn user<C: Connection>(conn: &C, id: i64) -> Result<Option<User>> {
    Ok(conn.row(user::Entity::find_by_id(id)).await?.map(|u| User {
        id: u.id,
        is_admin: u.is_admin,
    }))
}

/// Creates user `id`, or makes it an admin when `admin` is set (never
/// demoting).
pub async fn ensure_user<C: ConnectionTrait>(
    conn: &C,
    id: i64,
    admin: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    match user::Entity::find_by_id(id).one(conn).await? {
        None => {
            user::ActiveModel {
                id: Set(id),
                is_admin: Set(admin),
                created_at: Set(now),
            }
            .insert(conn)
            .await?;
        }
        Some(existing) if admin && !existing.is_admin => {
            let mut promoted: user::ActiveModel = existing.into();
            promoted.is_admin = Set(true);
            promoted.update(conn).await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// Stores a new token of `user_id` by its hash.
pub async fn insert<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    token_hash: String,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<()> {
    api_token::ActiveModel {
        user_id: Set(user_id),
        token_hash: Set(token_hash),
        created_at: Set(now),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

fn info(token: api_token::Model, owner: Option<user::Model>) -> TokenInfo {
    TokenInfo {
        id: token.id,
        user_id: token.user_id,
        is_admin: owner.is_some_and(|u| u.is_admin),
        created_at: token.created_at,
        expires_at: token.expires_at,
        revoked_at: token.revoked_at,
    }
}

/// Every token, oldest first.
pub async fn list<C: ConnectionTrait>(conn: &C) -> Result<Vec<TokenInfo>> {
    let rows = api_token::Entity::find()
        .find_also_related(user::Entity)
        .order_by_asc(api_token::Column::Id)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|(t, u)| info(t, u)).collect())
}

/// Token `id`, if there is one.
pub async fn get<C: ConnectionTrait>(conn: &C, id: i64) -> Result<Option<TokenInfo>> {
    let found = api_token::Entity::find_by_id(id)
        .find_also_related(user::Entity)
        .one(conn)
        .await?;
    Ok(found.map(|(t, u)| info(t, u)))
}

/// Marks token `id` revoked at `at`.
pub async fn revoke<C: ConnectionTrait>(conn: &C, id: i64, at: DateTime<Utc>) -> Result<()> {
    api_token::Entity::update_many()
        .col_expr(
            api_token::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(at),
        )
        .filter(api_token::Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

/// The token stored under `token_hash` with its owner's admin flag, and
/// the hash as stored (for a constant-time comparison). Two keyed lookups,
/// not a join: every RPC's authentication may make them.
pub async fn by_hash<C: Connection>(
    conn: &C,
    token_hash: &str,
) -> Result<Option<(TokenInfo, String)>> {
    let query = api_token::Entity::find().filter(api_token::Column::TokenHash.eq(token_hash));
    let Some(token) = conn.row(query).await? else {
        return Ok(None);
    };
    let owner = conn.row(user::Entity::find_by_id(token.user_id)).await?;
    let stored = token.token_hash.clone();
    Ok(Some((info(token, owner), stored)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::on_each_backend;

    on_each_backend!(
        tokens_are_found_by_hash_listed_and_revoked,
        |db: Store| async move {
            let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
            let txn = db.begin_write().await.unwrap();
            ensure_user(&txn, 7, false, now).await.unwrap();
            ensure_user(&txn, 7, true, now).await.unwrap();
            ensure_user(&txn, 7, false, now).await.unwrap();
            insert(&txn, 7, "hash-a".into(), now, None).await.unwrap();
            insert(&txn, 7, "hash-b".into(), now, Some(now))
                .await
                .unwrap();
            txn.commit().await.unwrap();

            let (found, stored) = by_hash(db.reads(), "hash-a").await.unwrap().unwrap();
            assert_eq!(
                (found.user_id, found.is_admin, stored.as_str()),
                (7, true, "hash-a")
            );
            assert!(by_hash(db.reads(), "hash-c").await.unwrap().is_none());
            let listed = list(db.reads()).await.unwrap();
            assert_eq!(listed.len(), 2);
            assert_eq!(listed[1].expires_at, Some(now));

            let txn = db.begin_write().await.unwrap();
            revoke(&txn, found.id, now).await.unwrap();
            txn.commit().await.unwrap();
            let revoked = get(db.reads(), found.id).await.unwrap().unwrap();
            assert_eq!(revoked.revoked_at, Some(now));
            assert!(
                user(db.reads(), 7)
                    .await
                    .unwrap()
                    .is_some_and(|u| u.is_admin),
                "never demoted"
            );
        }
    );
}
