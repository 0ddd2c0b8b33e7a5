//! Compiles `backup/v1/*.proto` with protox (pure Rust, so a fresh machine
//! needs no system `protoc`), writes the descriptor set for gRPC reflection,
//! and generates the prost messages and tonic clients and servers.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "backup/v1/backup_files.proto",
        "backup/v1/backup_scheduler.proto",
        "backup/v1/retention.proto",
        "backup/v1/audit_log.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("backup_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
