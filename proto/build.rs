//! Generates the Hubble API (messages, tonic clients and servers) from `proto/**/*.proto` with the
//! system `protoc` (or the one `PROTOC` names), and writes the encoded `FileDescriptorSet` next to
//! the generated code so the crate can serve gRPC reflection and hand it to non-Rust test clients.

use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "proto/flow/flow.proto",
    "proto/relay/relay.proto",
    "proto/peer/peer.proto",
    "proto/observer/observer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-env-changed=PROTOC");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("hubble_descriptor.bin"))
        .compile_protos(&PROTOS, &["proto"])?;
    Ok(())
}
