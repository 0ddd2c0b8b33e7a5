//! Which user a request is about.

use crate::error::FieldViolation;

/// The user a request names: the caller itself, or a user by id. Requests
/// spell "the caller" as 0 on the wire; it is its own value here, never a
/// magic number (0 is also the system's id as an owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserSelector {
    Caller,
    User(i64),
}

impl UserSelector {
    /// A request's `user_id` (0 for the caller) in field `field`; negative
    /// ids name nobody.
    pub fn from_request(user_id: i64, field: &str) -> Result<Self, FieldViolation> {
        match user_id {
            0 => Ok(Self::Caller),
            id if id > 0 => Ok(Self::User(id)),
            id => Err(FieldViolation::new(
                field,
                format!("must be a positive user id, or 0 for yourself; got {id}"),
            )),
        }
    }
}

/// A user of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub is_admin: bool,
}

/// A token as the operator sees it (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub user_id: i64,
    /// Whether its user is an admin.
    pub is_admin: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}
