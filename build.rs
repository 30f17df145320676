//! Compiles the protos with protox (pure Rust) so no system protoc is needed,
//! and saves the descriptor set for gRPC server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/volmig/v1/identity.proto",
    "proto/volmig/v1/migration.proto",
    "proto/volmig/v1/node.proto",
    "proto/volmig/v1/controller.proto",
    "proto/volmig/v1/fleet.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("volmig_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
