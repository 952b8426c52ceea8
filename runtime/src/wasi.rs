//! The WASI preview 1 shims: a context that grants nothing, frozen clocks, and the functions
//! that shadow wasmtime-wasi's (`poll_oneoff`, `random_get`).

pub(crate) mod io;
pub(crate) mod stdio;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::host::{Cancelled, Host, memory_of};
use crate::wasi::stdio::CappedPipe;

pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

pub(crate) fn wasi_ctx(host: &mut Host) -> &mut WasiP1Ctx {
    host.wasi
        .as_mut()
        .expect("WASI imports are only linked into modules classified as WASI")
}

/// WASI preview 1 `poll_oneoff(in, out, nsubscriptions, nevents) -> errno` in frozen time:
/// every subscription (a clock, or stdin/stdout/stderr readiness) is reported ready at once,
/// without error, in order. Deterministic, and it never blocks the worker.
pub(crate) fn poll_oneoff(
    mut caller: Caller<'_, Host>,
    subscriptions: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    const SUBSCRIPTION: usize = 48;
    const EVENT: usize = 32;
    /// More subscriptions than any program waits on at once; refused, to bound a call's work.
    const MAX_SUBSCRIPTIONS: usize = 4096;
    const ERRNO_FAULT: i32 = 21;
    const ERRNO_INVAL: i32 = 28;
    let memory = memory_of(&mut caller)?;
    let mem = memory.data_mut(&mut caller);
    let (subscriptions, events, count, nevents) = (
        subscriptions as u32 as usize,
        events as u32 as usize,
        count as u32 as usize,
        nevents as u32 as usize,
    );
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let fits = |at: usize, len: usize| at.checked_add(len).is_some_and(|end| end <= mem.len());
    if !fits(subscriptions, count * SUBSCRIPTION)
        || !fits(events, count * EVENT)
        || !fits(nevents, 4)
    {
        return Ok(ERRNO_FAULT);
    }
    // Read every subscription before writing any event: the two arrays may overlap.
    let mut ready = Vec::with_capacity(count);
    for i in 0..count {
        let sub = subscriptions + i * SUBSCRIPTION;
        let tag = mem[sub + 8];
        if tag > 2 {
            return Ok(ERRNO_INVAL);
        }
        // userdata, error 0, the subscription's type (clock, fd_read, fd_write), no bytes, no
        // flags.
        let mut event = [0u8; EVENT];
        event[..8].copy_from_slice(&mem[sub..sub + 8]);
        event[10] = tag;
        ready.push(event);
    }
    for (i, event) in ready.iter().enumerate() {
        let at = events + i * EVENT;
        mem[at..at + EVENT].copy_from_slice(event);
    }
    mem[nevents..nevents + 4].copy_from_slice(&(count as u32).to_le_bytes());
    Ok(0)
}

/// Fuel `random_get` costs per byte: the host spends a few nanoseconds a byte on SHA-256
/// (without SHA extensions), where a unit of fuel, a wasm instruction, is a fraction of one.
pub(crate) const RANDOM_FUEL_PER_BYTE: u64 = 4;

/// WASI preview 1 `random_get(buf, len) -> errno`: `len` bytes of the task's deterministic
/// stream at `buf`, for [`RANDOM_FUEL_PER_BYTE`] units of fuel a byte, charged up front. A call
/// can cover all of a 4 GiB memory, seconds of host work, so the deadline and the cancellation
/// flag are checked every 64 KiB.
pub(crate) fn random_get(
    mut caller: Caller<'_, Host>,
    buf: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    const ERRNO_FAULT: i32 = 21;
    const CHUNK: usize = 64 << 10;
    let (buf, len) = (buf as u32 as usize, len as u32 as usize);
    crate::host::charge_fuel(&mut caller, len as u64 * RANDOM_FUEL_PER_BYTE)?;
    let memory = memory_of(&mut caller)?;
    let (mem, host) = memory.data_and_store_mut(&mut caller);
    let Some(out) = buf.checked_add(len).and_then(|end| mem.get_mut(buf..end)) else {
        return Ok(ERRNO_FAULT);
    };
    let random = host
        .random
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("random_get outside a WASI guest"))?;
    for chunk in out.chunks_mut(CHUNK) {
        if host
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(wasmtime::Error::new(Cancelled));
        }
        if Instant::now() >= host.deadline {
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        random.fill(chunk);
    }
    Ok(0)
}

pub(crate) struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

pub(crate) fn deterministic_wasi(
    input: &[u8],
    random_key: [u8; 32],
    stdout: CappedPipe,
    stderr: CappedPipe,
) -> WasiP1Ctx {
    // `random_get` is the sandbox's own (see `RandomStream`); wasmtime-wasi's generators are
    // only reachable through WASI preview 2, which guests do not get, and are deterministic
    // anyway: the task's random key, cycled.
    let stream = random_key.to_vec();
    let insecure_seed = u128::from_be_bytes(random_key[..16].try_into().expect("16 bytes"));
    let mut b = wasmtime_wasi::WasiCtxBuilder::new();
    b.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(
        input.to_vec(),
    ))
    .stdout(stdout)
    .stderr(stderr)
    .arg("guest")
    .wall_clock(FrozenClock)
    .monotonic_clock(FrozenClock)
    .secure_random(wasmtime_wasi::Deterministic::new(stream.clone()))
    .insecure_random(wasmtime_wasi::Deterministic::new(stream))
    .insecure_random_seed(insecure_seed)
    .allow_tcp(false)
    .allow_udp(false)
    .allow_ip_name_lookup(false);
    b.build_p1()
}
