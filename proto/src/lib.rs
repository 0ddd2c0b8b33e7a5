//! The `backup.v1` protobuf contract as Rust: prost messages, tonic clients
//! and servers, and the encoded descriptor set that gRPC reflection serves.

/// Generated code for package `backup.v1`.
#[allow(clippy::all, missing_docs)]
pub mod backup_v1 {
    tonic::include_proto!("backup.v1");
}

pub use backup_v1::*;

/// The encoded `FileDescriptorSet` of every `backup.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/backup_v1_descriptor.bin"));

/// The fully qualified names of the services, as health checks know them.
pub const SERVICE_NAMES: [&str; 4] = [
    "backup.v1.BackupFiles",
    "backup.v1.BackupScheduler",
    "backup.v1.Retention",
    "backup.v1.AuditLog",
];
