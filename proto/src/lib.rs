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

/// The path of every `backup.v1` RPC, as HTTP/2 requests name it
/// (`/backup.v1.BackupFiles/CreateBackup`), read from the descriptor set.
pub fn rpc_paths() -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|file| {
            file.service.iter().flat_map(move |service| {
                service.method.iter().map(move |method| {
                    format!("/{}.{}/{}", file.package(), service.name(), method.name())
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rpc_has_a_path() {
        let paths = super::rpc_paths();
        assert!(paths.contains(&"/backup.v1.BackupFiles/CreateBackup".to_owned()));
        assert!(paths.contains(&"/backup.v1.AuditLog/SubscribeAuditEvents".to_owned()));
        for service in super::SERVICE_NAMES {
            assert!(paths.iter().any(|p| p.starts_with(&format!("/{service}/"))));
        }
    }
}
