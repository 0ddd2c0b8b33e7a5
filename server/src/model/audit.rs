//! Audit events: one recorded per operation of the service, and the
//! filters that select them.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::Error;

/// A stored event. Ids increase in commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    /// `service.action`, e.g. `backup_files.create`.
    pub event_type: String,
    /// Who acted: the caller, 0 for the system.
    pub user_id: i64,
    /// Whose resource the event is about; the actor unless set otherwise.
    pub subject_user_id: i64,
    pub resource_type: String,
    pub resource_id: String,
    /// What follows the last `.` of the event type.
    pub action: String,
    pub success: bool,
    /// Event-specific fields: a JSON object.
    pub details: Value,
    /// The caller-safe message of a failure; empty on success.
    pub error_message: String,
    pub timestamp: DateTime<Utc>,
}

/// An event about to be recorded.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_type: String,
    /// Who acted.
    pub user_id: i64,
    /// Whose resource it is about; `None`: the actor's own.
    pub subject: Option<i64>,
    pub resource_type: String,
    pub resource_id: String,
    pub success: bool,
    pub details: Value,
    pub error_message: String,
}

impl NewEvent {
    /// A successful event of `event_type` (`service.action`) by `user_id`,
    /// the actor (0 for the system), about the actor's own resources unless
    /// [`NewEvent::subject`] says otherwise.
    pub fn new(event_type: &str, user_id: i64) -> Self {
        Self {
            event_type: event_type.to_owned(),
            user_id,
            subject: None,
            resource_type: String::new(),
            resource_id: String::new(),
            success: true,
            details: json!({}),
            error_message: String::new(),
        }
    }

    /// The user whose resource the event is about (a backup's owner, a
    /// settings row's user; 0 for the system), when not the actor. That
    /// user sees the event too.
    pub fn subject(mut self, user_id: i64) -> Self {
        self.subject = Some(user_id);
        self
    }

    pub fn resource(mut self, resource_type: &str, resource_id: impl Into<String>) -> Self {
        self.resource_type = resource_type.to_owned();
        self.resource_id = resource_id.into();
        self
    }

    /// Event-specific fields; must be a JSON object.
    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// Marks the event failed with the caller-safe message of `error`.
    pub fn failed(mut self, error: &Error) -> Self {
        self.success = false;
        self.error_message = error.public_message();
        self
    }

    /// The action: what follows the last `.` of the event type.
    pub fn action(&self) -> &str {
        self.event_type
            .rsplit_once('.')
            .map_or(self.event_type.as_str(), |(_, action)| action)
    }
}

/// Which events a listing or a subscription is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only event types starting with this (compared exactly, case and all).
    pub event_type_prefix: String,
    /// Only events this user is the actor or the subject of; `None` for
    /// everyone's (admins only).
    pub user_id: Option<i64>,
    /// Only events at or after this time.
    pub start_time: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub end_time: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether a (live) event passes the filter; the same test as
    /// [`Filter::condition`] applies in the store.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        (self.event_type_prefix.is_empty() || event.event_type.starts_with(&self.event_type_prefix))
            && self
                .user_id
                .is_none_or(|id| event.user_id == id || event.subject_user_id == id)
            && self.start_time.is_none_or(|t| event.timestamp >= t)
            && self.end_time.is_none_or(|t| event.timestamp < t)
    }
}
