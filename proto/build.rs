//! Generates the Rust code for every service from `zkmesh/v1/*.proto` with a pure-Rust compiler
//! (protox), so a fresh machine needs no system `protoc`. The descriptor set is kept for server
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["types", "registry", "scheduler", "ledger", "verifier"]
        .map(|name| format!("zkmesh/v1/{name}.proto"));
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(&files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("zkmesh_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
