//! Domain types of our own, shared by the layers: what the service talks
//! about, not how a table or a message spells it.
//!
//! A leaf: nothing here imports the rest of the crate but [`crate::error`].
//! The state store converts its rows to and from these (`store::*`), the
//! API converts them to and from protobuf (`api::convert`).

pub mod backup;
