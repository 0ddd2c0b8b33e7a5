//! The backup service: a tonic gRPC server that keeps consistent, scheduled
//! backups of a live SQLite database.
//!
//! A tour of the layout, from the edge inwards:
//! - [`prepare`] opens the state store and backup storage, migrates and
//!   reconciles; [`Prepared::serve`] serves until shutdown (both in
//!   `server.rs`). `main.rs` only parses flags ([`config`]) and binds.
//! - [`api`]: one thin file per gRPC service. Requests become checked
//!   domain values (`TryFrom`, each bad field a violation), replies are
//!   converted back, and [`api::status`] maps every [`error::Error`] to a
//!   gRPC code in one exhaustive match. No decisions are made there.
//! - [`model`]: the domain's own types (backups, settings, audit events,
//!   runs, users), valid by construction; a leaf.
//! - [`backup`]: creating, reading, restoring and deleting backups, with
//!   the catalog and the bytes kept in step. The bytes are reached only
//!   through [`backup::storage::BackupStorage`] (today a directory), the
//!   live source only through [`backup::source`]; [`backup::verify`] checks
//!   bytes wherever they are read, and [`backup::scrub`] on a schedule.
//! - [`schedule`]: the next-run rule, per-user settings, and the loop that
//!   runs each slot once under a lease.
//! - [`retention`]: which backups a policy keeps ([`retention::plan`], pure)
//!   and applying it; maintenance.
//! - [`audit`]: the one write path ([`audit::Recorder::begin`]: a change and
//!   its audit events commit together, then reach live subscribers) and
//!   the live fan-out.
//! - [`auth`]: bearer tokens and the caller identity.
//! - [`store`]: the state store behind SeaORM: [`store::Store`] (one
//!   writer, a pool of readers), the entities, and per-table query
//!   functions that convert rows to [`model`] types. Nothing else names an
//!   entity.
//! - [`health`], [`telemetry`], [`paging`]: what health reports, metrics and
//!   request spans, page tokens.
//!
//! `tests/layering.sh` (part of the test command) fails the build when an
//! import crosses these lines.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod blocking;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod model;
pub mod paging;
pub mod retention;
pub mod schedule;
mod server;
pub mod store;
pub mod telemetry;

pub use server::{App, Prepared, open_repository, open_store, prepare};
