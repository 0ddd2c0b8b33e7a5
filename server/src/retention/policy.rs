//! Retention requests and who may make them.

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::settings::KeepCount;

/// Whose backups a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One owner (a user, or 0 for the system, whose backups all stay).
    Owner(i64),
    /// Every owner, each on its own.
    AllOwners,
}

/// Whose backups a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owners {
    /// The caller's own.
    Caller,
    /// One owner's: a user, or 0 for the system.
    Owner(i64),
    /// Every owner's, each on its own.
    All,
}

/// A retention request, its values checked: how many to keep, of whose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub keep_count: KeepCount,
    pub owners: Owners,
}

/// A policy the caller may apply: a `keep_count` and a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub keep_count: KeepCount,
    pub scope: Scope,
}

impl Policy {
    /// `request` as `caller` may apply it: a non-admin naming another owner
    /// or every owner is PERMISSION_DENIED.
    pub fn authorized(caller: Caller, request: PolicyRequest) -> Result<Self> {
        let scope = match request.owners {
            Owners::All => {
                caller.require_admin()?;
                Scope::AllOwners
            }
            Owners::Caller => Scope::Owner(caller.user_id),
            Owners::Owner(owner) if caller.can_access(owner) => Scope::Owner(owner),
            Owners::Owner(_) => {
                return Err(Error::PermissionDenied(
                    "only an admin may apply retention to another user's backups".into(),
                ));
            }
        };
        Ok(Self {
            keep_count: request.keep_count,
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_needs_an_admin_for_other_owners() {
        let user = Caller {
            user_id: 5,
            is_admin: false,
        };
        let admin = Caller {
            user_id: 1,
            is_admin: true,
        };
        let keep = |n| KeepCount::new(n, "keep_count").unwrap();
        let request = |n, owners| PolicyRequest {
            keep_count: keep(n),
            owners,
        };
        for owners in [Owners::Owner(6), Owners::Owner(0), Owners::All] {
            assert!(matches!(
                Policy::authorized(user, request(3, owners)),
                Err(Error::PermissionDenied(_))
            ));
        }
        assert_eq!(
            Policy::authorized(user, request(3, Owners::Caller)).unwrap(),
            Policy {
                keep_count: keep(3),
                scope: Scope::Owner(5)
            }
        );
        let scope = |caller, owners| {
            Policy::authorized(caller, request(1, owners))
                .unwrap()
                .scope
        };
        assert_eq!(scope(user, Owners::Owner(5)), Scope::Owner(5));
        assert_eq!(scope(admin, Owners::Owner(6)), Scope::Owner(6));
        assert_eq!(scope(admin, Owners::Owner(0)), Scope::Owner(0));
        assert_eq!(scope(admin, Owners::All), Scope::AllOwners);
    }
}
