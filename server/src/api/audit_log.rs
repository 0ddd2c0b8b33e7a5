//! `backup.v1.AuditLog`.

use std::pin::Pin;

use backup_proto as pb;
use backup_proto::audit_log_server::AuditLog;
use prost_types::value::Kind;
use serde_json::Value;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::{request_time, timestamp};
use crate::audit::access::visible_to;
use crate::error::{Error, FieldViolation, Result, Violations};
use crate::model::audit::{AuditEvent, Filter};
use crate::paging::page_size;

const LISTING: &str = "audit_events";

pub struct AuditLogApi {
    app: Shared,
}

impl AuditLogApi {
    pub fn new(app: Shared) -> Self {
        Self { app }
    }
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeAuditEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditLog for AuditLogApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = self.app.caller(&request, "ListAuditEvents").await?;
        let req = request.into_inner();
        let filter = visible_to(caller, Filter::try_from(&req)?)?;
        let limit = page_size(req.page_size, 100, 1000)?;
        let after = match self.app.page_tokens.cursor(LISTING, &req.page_token)? {
            Some(cursor) => cursor
                .parse()
                .map_err(|_| Error::invalid("page_token", "does not hold an event id"))?,
            None => 0,
        };
        let events = self.app.audit.page(&filter, after, limit).await?;
        let next_page_token = match events.last() {
            Some(last) if events.len() as u64 == limit => {
                self.app.page_tokens.issue(LISTING, &last.id.to_string())
            }
            _ => String::new(),
        };
        let active_subscribers = caller
            .is_admin
            .then(|| i32::try_from(self.app.audit_subscriptions.active()).unwrap_or(i32::MAX));
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(|e| event(e)).collect(),
            next_page_token,
            active_subscribers,
        }))
    }

    type SubscribeAuditEventsStream = EventStream;

    async fn subscribe_audit_events(
        &self,
        request: Request<pb::SubscribeAuditEventsRequest>,
    ) -> Result<Response<Self::SubscribeAuditEventsStream>, Status> {
        let caller = self.app.caller(&request, "SubscribeAuditEvents").await?;
        let req = request.into_inner();
        let filter = visible_to(caller, Filter::try_from(&req)?)?;
        let events = self
            .app
            .audit_subscriptions
            .subscribe(filter, req.after_id)
            .await?;
        let stream = events.map(|delivery| {
            delivery
                .map(|e| pb::SubscribeAuditEventsResponse {
                    event: Some(event(&e)),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A request's `user_id`: absent, or a user (0 for the system).
fn user_id(user_id: Option<i64>) -> Result<Option<i64>, FieldViolation> {
    match user_id {
        Some(id) if id < 0 => Err(FieldViolation::new(
            "user_id",
            "must not be negative; 0 is the system",
        )),
        other => Ok(other),
    }
}

impl TryFrom<&pb::ListAuditEventsRequest> for Filter {
    type Error = Error;

    fn try_from(req: &pb::ListAuditEventsRequest) -> Result<Self> {
        let mut bad = Violations::default();
        let user_id = bad.check(user_id(req.user_id));
        let start_time = bad.check(request_time(req.start_time, "start_time"));
        let end_time = bad.check(request_time(req.end_time, "end_time"));
        if let (Some(Some(start)), Some(Some(end))) = (start_time, end_time)
            && end < start
        {
            bad.push(FieldViolation::new(
                "end_time",
                "must not be before start_time",
            ));
        }
        bad.into_result()?;
        Ok(Self {
            event_type_prefix: req.event_type_prefix.clone(),
            // Only absent when a violation was returned above.
            user_id: user_id.flatten(),
            start_time: start_time.flatten(),
            end_time: end_time.flatten(),
        })
    }
}

impl TryFrom<&pb::SubscribeAuditEventsRequest> for Filter {
    type Error = Error;

    fn try_from(req: &pb::SubscribeAuditEventsRequest) -> Result<Self> {
        Ok(Self {
            event_type_prefix: req.event_type_prefix.clone(),
            user_id: user_id(req.user_id)?,
            ..Self::default()
        })
    }
}

fn event(e: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        event_type: e.event_type.clone(),
        user_id: e.user_id,
        resource_type: e.resource_type.clone(),
        resource_id: e.resource_id.clone(),
        action: e.action.clone(),
        success: e.success,
        details: Some(details(&e.details)),
        error_message: e.error_message.clone(),
        timestamp: Some(timestamp(e.timestamp)),
        subject_user_id: e.subject_user_id,
    }
}

/// Details are a JSON object; anything else is kept under `value`.
fn details(value: &Value) -> prost_types::Struct {
    match value {
        Value::Object(map) => prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        },
        Value::Null => prost_types::Struct::default(),
        other => prost_types::Struct {
            fields: [("value".to_owned(), json_value(other))].into(),
        },
    }
}

fn json_value(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(details(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn listing_requests_are_checked_field_by_field() {
        let fields = |req: pb::ListAuditEventsRequest| match Filter::try_from(&req) {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|v| v.field).collect::<Vec<_>>(),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        };
        let bad_everything = pb::ListAuditEventsRequest {
            user_id: Some(-1),
            start_time: at(i64::MAX),
            end_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(bad_everything),
            ["user_id", "start_time", "end_time"]
        );
        let backwards = pb::ListAuditEventsRequest {
            start_time: at(100),
            end_time: at(99),
            ..Default::default()
        };
        assert_eq!(fields(backwards), ["end_time"]);
        let fine = pb::ListAuditEventsRequest {
            event_type_prefix: "backup_files.".into(),
            user_id: Some(0),
            start_time: at(100),
            end_time: at(100),
            ..Default::default()
        };
        let query = Filter::try_from(&fine).unwrap();
        assert_eq!(query.user_id, Some(0));
        assert_eq!(query.event_type_prefix, "backup_files.");
        assert_eq!(query.start_time, query.end_time);
    }
}
