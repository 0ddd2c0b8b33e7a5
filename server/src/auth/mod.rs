//! Authentication and authorization: bearer tokens minted by the operator,
//! stored as SHA-256, and the identity of the caller that every RPC acts as.

pub mod cache;

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use self::cache::{TokenCache, TokenHash};
use crate::error::{Error, Result};
use crate::model::user::{TokenInfo, UserSelector};
use crate::store::{self, Connection, Store};

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
pub async fn require_user<C: Connection>(conn: &C, user_id: i64) -> Result<()> {
    match store::tokens::user(conn, user_id).await? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound(format!(
            "there is no user {user_id}; `backup-server token create --user-id {user_id}` creates one"
        ))),
    }
}

fn token_digest(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    std::array::from_fn(|i| digest.as_ref()[i])
}

/// The stored form of a token: its SHA-256 in lowercase hex.
fn hash_token(token: &str) -> String {
    hex::encode(token_digest(token))
}

/// Mints a token for `user_id`, creating the user if it does not exist and
/// making it an admin when `admin` is set (never demoting). Returns the
/// token; only its hash is stored.
pub async fn mint_token(
    db: &Store,
    user_id: i64,
    admin: bool,
    expires_at: Option<DateTime<Utc>>,
) -> Result<String> {
    if user_id <= 0 {
        return Err(Error::invalid("user-id", "must be a positive integer"));
    }
    let token = format!("bk_{}", hex::encode(rand::random::<[u8; 32]>()));
    let now = Utc::now();
    let txn = db.begin_write().await?;
    store::tokens::ensure_user(&txn, user_id, admin, now).await?;
    store::tokens::insert(&txn, user_id, hash_token(&token), now, expires_at).await?;
    txn.commit().await?;
    Ok(token)
}

/// Every token, oldest first.
pub async fn list_tokens(db: &Store) -> Result<Vec<TokenInfo>> {
    store::tokens::list(db.reads()).await
}

/// Revokes a token by id; it is refused from its next call on. A token
/// that does not exist is NotFound, and one already revoked is
/// FailedPrecondition (naming when), so an operator's typo is never
/// reported as a revocation.
///
/// Only `backup-server token revoke` calls this, in a process of its own:
/// serving processes cannot be told, and refuse the token once their
/// [`cache`] entry for it lapses, within [`cache::TTL`].
pub async fn revoke_token(db: &Store, id: i64) -> Result<()> {
    let txn = db.begin_write().await?;
    let token = store::tokens::get(&txn, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no token with id {id}")))?;
    if let Some(at) = token.revoked_at {
        return Err(Error::FailedPrecondition(format!(
            "token {id} was already revoked at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    store::tokens::revoke(&txn, id, Utc::now()).await?;
    txn.commit().await?;
    Ok(())
}

/// Authenticates callers against the tokens in the state store, keeping
/// those it accepted for a second ([`cache`]).
pub struct Authenticator {
    store: Store,
    cache: TokenCache,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: TokenCache::default(),
        }
    }

    /// Resolves the `authorization` header's value to a caller, from the
    /// cache when the token was accepted less than [`cache::TTL`] ago. The
    /// error never repeats the token.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated("missing `authorization: Bearer <token>` metadata".into())
            })?;
        let digest = token_digest(token);
        if let Some(caller) = self.cache.get(&digest) {
            return Ok(caller);
        }
        let (caller, expires_at) = authenticate(&self.store, &digest).await?;
        self.cache.insert(digest, caller, expires_at);
        Ok(caller)
    }
}

/// The caller whose token has SHA-256 `digest`, and when the token expires.
async fn authenticate(db: &Store, digest: &TokenHash) -> Result<(Caller, Option<DateTime<Utc>>)> {
    let hash = hex::encode(digest);
    let unknown = || Error::Unauthenticated("unknown, revoked or expired token".into());
    let (found, stored_hash) = store::tokens::by_hash(db.reads(), &hash)
        .await?
        .ok_or_else(unknown)?;
    // The index lookup found the row; compare in constant time anyway so no
    // timing difference depends on how much of the hash matched.
    let matches: bool = stored_hash.as_bytes().ct_eq(hash.as_bytes()).into();
    let live = found.revoked_at.is_none() && found.expires_at.is_none_or(|at| at > Utc::now());
    if matches && live {
        let caller = Caller {
            user_id: found.user_id,
            is_admin: found.is_admin,
        };
        Ok((caller, found.expires_at))
    } else {
        Err(unknown())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::tests::memory_store;

    #[tokio::test]
    async fn a_token_revoked_elsewhere_is_refused_within_the_ttl() {
        let db = memory_store().await;
        let header = format!("Bearer {}", mint_token(&db, 7, false, None).await.unwrap());
        let auth = Authenticator::new(db.clone());
        let caller = auth.authenticate(Some(&header)).await.unwrap();
        assert_eq!(
            caller,
            Caller {
                user_id: 7,
                is_admin: false
            }
        );

        // As `token revoke` does from its own process: this cache is not told.
        let id = list_tokens(&db).await.unwrap()[0].id;
        revoke_token(&db, id).await.unwrap();
        let fresh = Authenticator::new(db.clone());
        assert!(fresh.authenticate(Some(&header)).await.is_err());
        assert_eq!(auth.authenticate(Some(&header)).await.unwrap(), caller);
        tokio::time::sleep(cache::TTL).await;
        assert!(auth.authenticate(Some(&header)).await.is_err());
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_once_it_expires() {
        let db = memory_store().await;
        // It expires well within the cache's TTL.
        let expires = Utc::now() + chrono::Duration::milliseconds(500);
        let token = mint_token(&db, 7, false, Some(expires)).await.unwrap();
        let header = format!("Bearer {token}");
        let auth = Authenticator::new(db);
        auth.authenticate(Some(&header)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(auth.authenticate(Some(&header)).await.is_err());
    }
}
