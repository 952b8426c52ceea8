//! zkmesh guest: writes the lowercase hex SHA-256 of its whole input (64 bytes, no newline).
//!
//! SHA-256 is written out here rather than taken from a crate so that the guest builds offline
//! and stays small, and because it is a realistic, integer-only workload for the prover.
#![no_std]

use zkmesh_guest_abi as abi;

mod sha;

use sha::Sha256;

#[unsafe(no_mangle)]
pub extern "C" fn run() {
    let mut hasher = Sha256::new();
    abi::read_chunks(|chunk| hasher.update(chunk));

    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(hasher.finish()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    let mut out = abi::Output::new();
    out.bytes(&hex);
    out.flush();
}
