//! Authentication and authorization: bearer tokens minted by the operator,
//! stored as SHA-256, and the identity of the caller that every RPC acts as.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set,
};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::model::user::UserSelector;
use crate::store::{
    self,
    entity::{api_token, user},
};

/// The authenticated identity an RPC acts as; it comes from the token, never
/// from a request field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: i64,
    pub is_admin: bool,
}

impl Caller {
    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin {
            Ok(())
        } else {
            Err(Error::PermissionDenied(
                "this operation needs an admin token".into(),
            ))
        }
    }

    /// Whether the caller may see a resource owned by `owner`.
    pub fn can_access(&self, owner: i64) -> bool {
        self.is_admin || self.user_id == owner
    }

    /// The user `selector` names, if the caller may act for that user.
    pub fn resolve(&self, selector: UserSelector) -> Result<i64> {
        let user_id = match selector {
            UserSelector::Caller => self.user_id,
            UserSelector::User(id) => id,
        };
        if self.can_access(user_id) {
            Ok(user_id)
        } else {
            Err(Error::PermissionDenied(
                "only an admin may act for another user".into(),
            ))
        }
    }
}

/// NOT_FOUND unless `user_id` is a user (`token create` made one): an admin
/// naming a user id nobody has must not create anything for it.
pub async fn require_user<C: ConnectionTrait>(conn: &C, user_id: i64) -> Result<()> {
    match user::Entity::find_by_id(user_id).one(conn).await? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound(format!(
            "there is no user {user_id}; `backup-server token create --user-id {user_id}` creates one"
        ))),
    }
}

fn hash_token(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// A token row as the operator sees it (never the token itself).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub user_id: i64,
    pub is_admin: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Mints a token for `user_id`, creating the user if it does not exist and
/// making it an admin when `admin` is set (never demoting). Returns the
/// token; only its hash is stored.
pub async fn mint_token(
    db: &DatabaseConnection,
    user_id: i64,
    admin: bool,
    expires_at: Option<DateTime<Utc>>,
) -> Result<String> {
    if user_id <= 0 {
        return Err(Error::invalid("user-id", "must be a positive integer"));
    }
    let token = format!("bk_{}", hex::encode(rand::random::<[u8; 32]>()));
    let now = Utc::now();
    let txn = store::begin_write(db).await?;
    match user::Entity::find_by_id(user_id).one(&txn).await? {
        None => {
            user::ActiveModel {
                id: Set(user_id),
                is_admin: Set(admin),
                created_at: Set(now),
            }
            .insert(&txn)
            .await?;
        }
        Some(existing) if admin && !existing.is_admin => {
            let mut promoted: user::ActiveModel = existing.into();
            promoted.is_admin = Set(true);
            promoted.update(&txn).await?;
        }
        Some(_) => {}
    }
    api_token::ActiveModel {
        user_id: Set(user_id),
        token_hash: Set(hash_token(&token)),
        created_at: Set(now),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(token)
}

/// Every token, oldest first.
pub async fn list_tokens(db: &DatabaseConnection) -> Result<Vec<TokenInfo>> {
    let rows = api_token::Entity::find()
        .find_also_related(user::Entity)
        .order_by_asc(api_token::Column::Id)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(t, u)| TokenInfo {
            id: t.id,
            user_id: t.user_id,
            is_admin: u.is_some_and(|u| u.is_admin),
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        })
        .collect())
}

/// Revokes a token by id; it is refused from its next call on. A token
/// that does not exist is NotFound, and one already revoked is
/// FailedPrecondition (naming when), so an operator's typo is never
/// reported as a revocation.
pub async fn revoke_token(db: &DatabaseConnection, id: i64) -> Result<()> {
    let txn = store::begin_write(db).await?;
    let token = api_token::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no token with id {id}")))?;
    if let Some(at) = token.revoked_at {
        return Err(Error::FailedPrecondition(format!(
            "token {id} was already revoked at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    let mut revoked: api_token::ActiveModel = token.into();
    revoked.revoked_at = Set(Some(Utc::now()));
    revoked.update(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Resolves the `authorization` header's value to a caller. The error never
/// repeats the token.
pub async fn authenticate(db: &DatabaseConnection, authorization: Option<&str>) -> Result<Caller> {
    let token = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated("missing `authorization: Bearer <token>` metadata".into())
        })?;
    let hash = hash_token(token);
    let unknown = || Error::Unauthenticated("unknown, revoked or expired token".into());
    let (row, owner) = api_token::Entity::find()
        .filter(api_token::Column::TokenHash.eq(hash.as_str()))
        .find_also_related(user::Entity)
        .one(db)
        .await?
        .ok_or_else(unknown)?;
    // The index lookup found the row; compare in constant time anyway so no
    // timing difference depends on how much of the hash matched.
    let matches: bool = row.token_hash.as_bytes().ct_eq(hash.as_bytes()).into();
    let live = row.revoked_at.is_none() && row.expires_at.is_none_or(|at| at > Utc::now());
    match owner {
        Some(owner) if matches && live => Ok(Caller {
            user_id: owner.id,
            is_admin: owner.is_admin,
        }),
        _ => Err(unknown()),
    }
}
