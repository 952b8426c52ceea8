//! The zkmesh guest ABI ([`Abi`] names the two a module may use) and the host functions
//! behind `zkmesh.input_len`, `read_input` and `write_output`.

use wasmtime::{Caller, Linker};

use crate::host::{Host, charge_fuel, memory_of};
use crate::limits::OutputLimit;

/// Which guest ABI a module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// Imports only from `zkmesh` and exports `run` (or `main`).
    Zkmesh,
    /// A WASI preview 1 command: exports `_start`, imports only from `wasi_snapshot_preview1`.
    Wasi,
}

impl Abi {
    /// The ABI's name, as the registry stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Abi::Zkmesh => "zkmesh",
            Abi::Wasi => "wasi",
        }
    }
}

pub(crate) fn define_zkmesh_abi(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap("zkmesh", "input_len", |caller: Caller<'_, Host>| -> i32 {
        caller.data().input.len() as i32
    })?;
    linker.func_wrap(
        "zkmesh",
        "read_input",
        |mut caller: Caller<'_, Host>, dst: i32, offset: i32, len: i32| -> wasmtime::Result<i32> {
            let memory = memory_of(&mut caller)?;
            let (dst, offset, len) = (
                dst as u32 as usize,
                offset as u32 as usize,
                len as u32 as usize,
            );
            let input_len = caller.data().input.len();
            let start = offset.min(input_len);
            let n = len.min(input_len - start);
            // A byte copied costs a unit of fuel: without it a loop of calls would copy the
            // whole input again and again for one unit each.
            charge_fuel(&mut caller, n as u64)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let target = mem
                .get_mut(dst..dst.saturating_add(n))
                .ok_or_else(|| wasmtime::Error::msg("read_input: destination out of bounds"))?;
            target.copy_from_slice(&host.input[start..start + n]);
            Ok(n as i32)
        },
    )?;
    linker.func_wrap(
        "zkmesh",
        "write_output",
        |mut caller: Caller<'_, Host>, src: i32, len: i32| -> wasmtime::Result<()> {
            let memory = memory_of(&mut caller)?;
            let (src, len) = (src as u32 as usize, len as u32 as usize);
            let host = caller.data();
            if host.output.len().saturating_add(len) > host.max_output {
                return Err(wasmtime::Error::new(OutputLimit));
            }
            charge_fuel(&mut caller, len as u64)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let bytes = mem
                .get(src..src.saturating_add(len))
                .ok_or_else(|| wasmtime::Error::msg("write_output: source out of bounds"))?;
            host.output.extend_from_slice(bytes);
            Ok(())
        },
    )?;
    Ok(())
}
