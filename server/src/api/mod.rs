//! The gRPC services: thin translations from protobuf to domain calls and
//! from domain errors to `tonic::Status`. No decisions are made here.

pub mod audit_log;
pub mod backup_files;
pub mod backup_scheduler;
pub mod convert;
pub mod retention;
pub mod status;

use std::sync::Arc;

use serde_json::json;
use tonic::Request;

use crate::App;
use crate::audit::NewEvent;
use crate::auth::Caller;
use crate::error::Result;

impl App {
    /// The caller behind a request's bearer token. A refusal is audited as
    /// `auth.denied` (without the token) before it is returned.
    pub async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Caller> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default());
        match self.auth.authenticate(header).await {
            Ok(caller) => Ok(caller),
            Err(e) => {
                let event = NewEvent::new("auth.denied", 0)
                    .resource("rpc", method)
                    .details(json!({ "method": method, "token_present": header.is_some() }))
                    .failed(&e);
                self.audit.record_or_log(event).await;
                Err(e)
            }
        }
    }
}

/// Shared handle every service holds.
pub type Shared = Arc<App>;
