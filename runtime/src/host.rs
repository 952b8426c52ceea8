//! The state a running guest's store holds ([`Host`]) and what host functions share.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use wasmtime::{Caller, Extern};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::limits::Limiter;
use crate::random::RandomStream;

pub(crate) struct Host {
    pub(crate) input: Vec<u8>,
    pub(crate) output: Vec<u8>,
    pub(crate) max_output: usize,
    pub(crate) limiter: Limiter,
    pub(crate) wasi: Option<WasiP1Ctx>,
    /// WASI `random_get`'s stream, for WASI guests.
    pub(crate) random: Option<RandomStream>,
    /// When the run must end, and the flag that cancels it: for host calls whose work can take
    /// long enough to matter (the epoch deadline only reaches wasm code).
    pub(crate) deadline: Instant,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
}

/// Raised when a run is cancelled.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

pub(crate) fn memory_of(caller: &mut Caller<'_, Host>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::Error::msg(
            "the module does not export its memory",
        )),
    }
}
