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

/// The guest's standard streams: what it writes, and how far it has read its input.
pub(crate) struct Stdio {
    pub(crate) stdout: CappedPipe,
    pub(crate) stderr: CappedPipe,
    pub(crate) stdin_read: usize,
}

/// The (pointer, length) pairs of an iovec list, or `None` when the list is outside memory.
fn iovecs(mem: &[u8], iovs: u32, count: u32) -> Option<Vec<(usize, usize)>> {
    let start = iovs as usize;
    let end = start.checked_add((count as usize).checked_mul(8)?)?;
    let list = mem.get(start..end)?;
    Some(
        list.chunks_exact(8)
            .map(|v| {
                let ptr = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
                let len = u32::from_le_bytes(v[4..].try_into().expect("4 bytes"));
                (ptr as usize, len as usize)
            })
            .collect(),
    )
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
    charge_fuel(&mut caller, iovs_len as u32 as u64)?;
    let memory = memory_of(&mut caller)?;
    let Some(list) = iovecs(memory.data(&caller), iovs as u32, iovs_len as u32) else {
        return Ok(ERRNO_FAULT);
    };
    let total = list.iter().map(|(_, len)| *len as u64).sum::<u64>();
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
    let mut written: u64 = 0;
    for (ptr, len) in list {
        let Some(bytes) = mem.get(ptr..ptr.saturating_add(len)) else {
            return Ok(ERRNO_FAULT);
        };
        pipe.append(bytes).map_err(wasmtime::Error::new)?;
        written += len as u64;
    }
    if !put_u32(mem, nwritten as u32, written as u32) {
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
    charge_fuel(&mut caller, iovs_len as u32 as u64)?;
    let memory = memory_of(&mut caller)?;
    let Some(list) = iovecs(memory.data(&caller), iovs as u32, iovs_len as u32) else {
        return Ok(ERRNO_FAULT);
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
        if n == 0 {
            break;
        }
        let Some(target) = mem.get_mut(ptr..ptr.saturating_add(n)) else {
            return Ok(ERRNO_FAULT);
        };
        target.copy_from_slice(&host.input[from..from + n]);
        stdio.stdin_read += n;
        read += n;
    }
    if !put_u32(mem, nread as u32, read as u32) {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}
