//! The zkmesh wire protocol: Rust types, clients and servers generated from `zkmesh/v1/*.proto`.
//!
//! Clients in other languages are generated from the same `.proto` files; the encoded
//! descriptor set ([`FILE_DESCRIPTOR_SET`]) lets every service answer server reflection.

/// Generated code for package `zkmesh.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("zkmesh.v1");
}

/// The encoded `FileDescriptorSet` of every zkmesh proto, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/zkmesh_descriptor.bin"));

pub mod names;

#[cfg(test)]
mod contract;

pub use names::UnknownName;
pub use v1::*;
