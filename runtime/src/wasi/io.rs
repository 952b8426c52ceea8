//! WASI preview 1 `fd_write` (stdout, stderr) and `fd_read` (stdin), billed by the byte.
//!
//! wasmtime-wasi's own walk the iovec list and copy the first non-empty buffer on the host for a
//! few units of fuel a call: a guest could loop over calls copying tens of MiB each (or walking
//! millions of empty iovecs) without paying for it. These charge a unit of fuel per iovec and
//! per byte before any work, and copy straight between guest memory and the task's pipes.

use wasmtime::Caller;

use crate::host::{Host, charge_fuel, memory_of};
use crate::wasi::stdio::CappedPipe;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_SPIPE: i32 = 29;

/// The most iovecs one call may pass (Linux's `IOV_MAX`): the list is read onto the host.
const MAX_IOVECS: u32 = 1024;

/// The guest's standard streams: what it writes, and how far it has read its input.
pub(crate) struct Stdio {
    pub(crate) stdout: CappedPipe,
    pub(crate) stderr: CappedPipe,
    pub(crate) stdin_read: usize,
}

/// The (pointer, length) pairs of an iovec list (at most [`MAX_IOVECS`]), or `None` when the
/// list or a buffer it names is outside memory: checked whole before anything is copied.
fn iovecs(mem: &[u8], iovs: u32, count: u32) -> Option<Iovecs> {
    let start = iovs as usize;
    let end = start.checked_add((count as usize).checked_mul(8)?)?;
    let list = mem.get(start..end)?;
    let pairs: Iovecs = list
        .chunks_exact(8)
        .map(|v| {
            let ptr = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(v[4..].try_into().expect("4 bytes"));
            (ptr as usize, len as usize)
        })
        .collect();
    pairs
        .iter()
        .all(|(ptr, len)| ptr.checked_add(*len).is_some_and(|end| end <= mem.len()))
        .then_some(pairs)
}

/// An iovec list: (pointer, length) pairs.
type Iovecs = Vec<(usize, usize)>;

/// A call's iovec list, billed a unit per entry before it is read: the memory and the pairs,
/// or the errno for a list that is too long or outside memory.
fn iovec_list(
    caller: &mut Caller<'_, Host>,
    iovs: i32,
    iovs_len: i32,
) -> wasmtime::Result<Result<(wasmtime::Memory, Iovecs), i32>> {
    if iovs_len as u32 > MAX_IOVECS {
        return Ok(Err(ERRNO_INVAL));
    }
    charge_fuel(caller, iovs_len as u32 as u64)?;
    let memory = memory_of(caller)?;
    Ok(iovecs(memory.data(&*caller), iovs as u32, iovs_len as u32)
        .map(|list| (memory, list))
        .ok_or(ERRNO_FAULT))
}

fn put_u32(mem: &mut [u8], at: u32, value: u32) -> bool {
    match mem.get_mut(at as usize..(at as usize).saturating_add(4)) {
        Some(slot) => {
            slot.copy_from_slice(&value.to_le_bytes());
            true
        }
        None => false,
    }
}

/// `fd_write(fd, iovs, iovs_len, nwritten) -> errno` for stdout (1) and stderr (2).
pub(crate) fn fd_write(
    mut caller: Caller<'_, Host>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> wasmtime::Result<i32> {
    if !matches!(fd, 1 | 2) {
        return Ok(ERRNO_BADF);
    }
    let (memory, list) = match iovec_list(&mut caller, iovs, iovs_len)? {
        Ok(found) => found,
        Err(errno) => return Ok(errno),
    };
    let total = list.iter().map(|(_, len)| *len as u64).sum::<u64>();
    // Past the output cap the run ends before the bytes are billed, as `write_output` does.
    if fd == 1
        && let Some(stdio) = &caller.data().stdio
        && stdio.stdout.would_trap(total)
    {
        return Err(wasmtime::Error::new(crate::limits::OutputLimit));
    }
    charge_fuel(&mut caller, total)?;
    let (mem, host) = memory.data_and_store_mut(&mut caller);
    let stdio = host
        .stdio
        .as_ref()
        .ok_or_else(|| wasmtime::Error::msg("fd_write outside a WASI guest"))?;
    let pipe = if fd == 1 {
        &stdio.stdout
    } else {
        &stdio.stderr
    };
    for &(ptr, len) in &list {
        pipe.append(&mem[ptr..ptr + len])
            .map_err(wasmtime::Error::new)?;
    }
    if !put_u32(mem, nwritten as u32, total.min(u32::MAX as u64) as u32) {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

/// `fd_read(fd, iovs, iovs_len, nread) -> errno` for stdin (0): the task's input, in order.
pub(crate) fn fd_read(
    mut caller: Caller<'_, Host>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nread: i32,
) -> wasmtime::Result<i32> {
    if fd != 0 {
        return Ok(ERRNO_BADF);
    }
    let (memory, list) = match iovec_list(&mut caller, iovs, iovs_len)? {
        Ok(found) => found,
        Err(errno) => return Ok(errno),
    };
    let host = caller.data();
    let read_so_far = host.stdio.as_ref().map_or(0, |s| s.stdin_read);
    let left = host.input.len().saturating_sub(read_so_far) as u64;
    let wanted = list.iter().map(|(_, len)| *len as u64).sum::<u64>();
    charge_fuel(&mut caller, wanted.min(left))?;
    let (mem, host) = memory.data_and_store_mut(&mut caller);
    let stdio = host
        .stdio
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("fd_read outside a WASI guest"))?;
    let mut read = 0usize;
    for (ptr, len) in list {
        let from = stdio.stdin_read;
        let n = len.min(host.input.len() - from);
        mem[ptr..ptr + n].copy_from_slice(&host.input[from..from + n]);
        stdio.stdin_read += n;
        read += n;
    }
    if !put_u32(mem, nread as u32, read as u32) {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

/// `fd_pwrite` and `fd_pread`: the guest's only descriptors are its standard streams, which
/// have no position (wasmtime-wasi's walked the iovec list before it looked at the descriptor).
pub(crate) fn fd_pwrite(_: Caller<'_, Host>, fd: i32, _: i32, _: i32, _: i64, _: i32) -> i32 {
    if (0..=2).contains(&fd) {
        ERRNO_SPIPE
    } else {
        ERRNO_BADF
    }
}

/// See [`fd_pwrite`].
pub(crate) fn fd_pread(
    caller: Caller<'_, Host>,
    fd: i32,
    iovs: i32,
    len: i32,
    offset: i64,
    n: i32,
) -> i32 {
    fd_pwrite(caller, fd, iovs, len, offset, n)
}

/// `path_open`: a guest has no preopened directories, so no descriptor it can name is one
/// (wasmtime-wasi's read and checked the whole path before it looked).
#[allow(clippy::too_many_arguments)]
pub(crate) fn path_open(
    _: Caller<'_, Host>,
    _fd: i32,
    _dirflags: i32,
    _path: i32,
    _path_len: i32,
    _oflags: i32,
    _rights_base: i64,
    _rights_inheriting: i64,
    _fdflags: i32,
    _opened: i32,
) -> i32 {
    ERRNO_BADF
}
