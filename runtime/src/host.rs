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
    /// A WASI guest's standard streams, for the sandbox's own `fd_write` and `fd_read`.
    pub(crate) stdio: Option<crate::wasi::io::Stdio>,
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

/// Bills `cost` units of fuel for host work a call does (copying or making bytes), up front: a
/// call that costs more than the fuel left runs out of fuel, billed all of it, before any work.
/// Without metering (no fuel configured), nothing is billed.
pub(crate) fn charge_fuel(
    caller: &mut wasmtime::Caller<'_, Host>,
    cost: u64,
) -> wasmtime::Result<()> {
    if let Ok(fuel) = caller.get_fuel() {
        if fuel < cost {
            caller.set_fuel(0)?;
            return Err(wasmtime::Error::new(wasmtime::Trap::OutOfFuel));
        }
        caller.set_fuel(fuel - cost)?;
    }
    Ok(())
}
