//! The domain's own types: what the service is about, independent of
//! protobuf and of how the state store keeps it. Each value is valid by
//! construction. The state store converts its rows to and from these
//! (`store::*`), the API converts requests and replies (`api::*`).
//!
//! A leaf: nothing here imports the rest of the crate but [`crate::error`].

pub mod audit;
pub mod backup;
pub mod run;
pub mod settings;
pub mod user;
