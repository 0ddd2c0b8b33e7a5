//! Who may read which audit events: a non-admin sees the events they did
//! and those about them; an admin sees everyone's.

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::audit::Filter;

/// The filter `caller` may use for the `requested` one, whose `user_id`
/// absent means the caller's own events (everyone's for an admin):
/// another user's events are refused to a non-admin.
pub fn visible_to(caller: Caller, requested: Filter) -> Result<Filter> {
    let user_id = match requested.user_id {
        Some(id) if !caller.can_access(id) => {
            return Err(Error::PermissionDenied(
                "only an admin may see another user's audit events".into(),
            ));
        }
        Some(id) => Some(id),
        None if caller.is_admin => None,
        None => Some(caller.user_id),
    };
    Ok(Filter {
        user_id,
        ..requested
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(caller: Caller, user_id: Option<i64>) -> Result<Option<i64>> {
        let requested = Filter {
            user_id,
            ..Filter::default()
        };
        Ok(visible_to(caller, requested)?.user_id)
    }

    #[test]
    fn users_see_their_own_events_and_admins_everyones() {
        let admin = Caller {
            user_id: 1,
            is_admin: true,
        };
        let user = Caller {
            user_id: 2,
            is_admin: false,
        };
        assert_eq!(visible(admin, None).unwrap(), None);
        assert_eq!(visible(admin, Some(0)).unwrap(), Some(0));
        assert_eq!(visible(user, None).unwrap(), Some(2));
        assert_eq!(visible(user, Some(2)).unwrap(), Some(2));
        for theirs in [Some(3), Some(0)] {
            assert!(matches!(
                visible(user, theirs),
                Err(Error::PermissionDenied(_))
            ));
        }
    }
}
