//! SeaORM entities, one per state-store table.

pub mod api_token;
pub mod audit_event;
pub mod backup;
pub mod backup_settings;
pub mod scheduled_run;
pub mod scheduler_lease;
pub mod secret;
pub mod user;
