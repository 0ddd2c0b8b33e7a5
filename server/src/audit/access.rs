//! Who may read which audit events: a non-admin sees the events they did
//! and those about them; an admin sees everyone's.

use chrono::{DateTime, Utc};

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::model::audit::Filter;

/// A listing or subscription request, its values checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only event types starting with this.
    pub event_type_prefix: String,
    /// Only events of this user (actor or subject; 0 is the system);
    /// `None`: the caller's own, or everyone's for an admin.
    pub user_id: Option<i64>,
    /// Only events at or after this time.
    pub start_time: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub end_time: Option<DateTime<Utc>>,
}

impl EventQuery {
    /// The filter `caller` may use for this query: another user's events
    /// are refused to a non-admin.
    pub fn visible_to(self, caller: Caller) -> Result<Filter> {
        let user_id = match self.user_id {
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
            event_type_prefix: self.event_type_prefix,
            user_id,
            start_time: self.start_time,
            end_time: self.end_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(caller: Caller, user_id: Option<i64>) -> Result<Option<i64>> {
        let query = EventQuery {
            user_id,
            ..EventQuery::default()
        };
        Ok(query.visible_to(caller)?.user_id)
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
