//! `backup.v1.AuditLog`: list stored audit events and watch new ones.

use std::pin::Pin;

use backup_proto::audit_log_client::AuditLogClient;
use tokio_stream::{Stream, StreamExt};

use crate::{Authed, Error, Result, present, proto};

/// Which events to list or watch. The default is every event the caller
/// may see (an admin: all; a user: their own).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only event types starting with this, e.g. `backup_files.`.
    pub event_type_prefix: String,
    /// Only this user's events (a non-admin may name only themselves).
    pub user_id: Option<i64>,
    /// Only events at or after this time (listing only).
    pub start_time: Option<prost_types::Timestamp>,
    /// Only events before this time (listing only).
    pub end_time: Option<prost_types::Timestamp>,
}

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct AuditPage {
    pub events: Vec<proto::AuditEvent>,
    /// Empty on the last page.
    pub next_page_token: String,
    /// Live subscriptions on the answering server (admins only).
    pub active_subscribers: Option<i32>,
}

/// Events as they commit, in id order; ends with an error saying where to
/// resume (`after_id`) when the server stops or the connection breaks.
pub type AuditStream = Pin<Box<dyn Stream<Item = Result<proto::AuditEvent>> + Send>>;

/// `backup.v1.AuditLog`: list pages, list everything, subscribe.
#[derive(Clone)]
pub struct Audit(pub(crate) AuditLogClient<Authed>);

impl Audit {
    /// One page, oldest first; `page_size` 0 means the server's default.
    pub async fn list_page(
        &mut self,
        filter: &AuditFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<AuditPage> {
        let page = self
            .0
            .list_audit_events(proto::ListAuditEventsRequest {
                page_size,
                page_token: page_token.to_owned(),
                event_type_prefix: filter.event_type_prefix.clone(),
                user_id: filter.user_id,
                start_time: filter.start_time,
                end_time: filter.end_time,
            })
            .await?
            .into_inner();
        Ok(AuditPage {
            events: page.events,
            next_page_token: page.next_page_token,
            active_subscribers: page.active_subscribers,
        })
    }

    /// Every matching event, oldest first.
    pub async fn list_all(&mut self, filter: &AuditFilter) -> Result<Vec<proto::AuditEvent>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_page(filter, 1000, &token).await?;
            all.extend(page.events);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    /// How many audit subscriptions the server is serving (admins only;
    /// `None` for others).
    pub async fn active_subscribers(&mut self) -> Result<Option<i32>> {
        let filter = AuditFilter::default();
        Ok(self.list_page(&filter, 1, "").await?.active_subscribers)
    }

    /// Watches events: with `after_id`, stored ones after it first; without,
    /// those committed from now on. Dropping the stream cancels it.
    pub async fn subscribe(
        &mut self,
        after_id: Option<i64>,
        event_type_prefix: &str,
        user_id: Option<i64>,
    ) -> Result<AuditStream> {
        let stream = self
            .0
            .subscribe_audit_events(proto::SubscribeAuditEventsRequest {
                after_id,
                event_type_prefix: event_type_prefix.to_owned(),
                user_id,
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|message| {
            present(message.map_err(Error::from)?.event, "an event")
        })))
    }

    /// The raw generated client, for calls the wrapper does not cover.
    pub fn raw(&mut self) -> &mut AuditLogClient<Authed> {
        &mut self.0
    }
}
