//! The domain's own types: what the service is about, independent of
//! protobuf and of how the state store keeps it. Each value is valid by
//! construction; conversions from requests live in `api`, from rows in
//! `store`. This module imports nothing else of the crate but `error`.

pub mod audit;
pub mod run;
pub mod settings;
pub mod user;
