//! The zkmesh zkVM: proofs that a WebAssembly module ran correctly.
//!
//! # Core concepts
//!
//! - [`lower`](lower::lower) turns a module into a [`Program`](isa::Program) of register-machine
//!   instructions over frame slots, with branch targets resolved. Prover and verifier lower
//!   independently and get the same program.
//! - [`trace::run`] executes a program and records every step's fetch and memory accesses: the
//!   witness.
//! - The circuit checks a trace step by step, and checks all memory accesses offline (sorted by
//!   address and time, tied to the execution order by a routing network).

pub mod benes;
pub mod circuit;
pub mod groth;
pub mod isa;
pub mod lower;
pub mod poseidon;
pub mod r1cs;
pub mod trace;
pub mod wellformed;
pub mod zkvm;

#[cfg(test)]
mod tests;
