//! Running a module: the store, the deadline and cancellation, fuel accounting, and
//! classifying how the guest ended.

use std::sync::atomic::Ordering;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::{Store, Trap};

use crate::abi::Abi;
use crate::config::FUEL_SYNC;
use crate::host::{Cancelled, Host};
use crate::limits::{Denied, Limiter, Limits, OutputLimit};
use crate::outcome::{Exit, Outcome, unrun};
use crate::random::RandomStream;
use crate::sandbox::compile::{Compiled, ModuleError, Prepared};
use crate::sandbox::{Sandbox, bump};
use crate::wasi::deterministic_wasi;
use crate::wasi::stdio;
use crate::wasi::stdio::{CappedPipe, Overflow};

impl Sandbox {
    /// Runs `wasm` on `input`. `seed` makes WASI randomness deterministic per task.
    pub fn run(&self, wasm: &[u8], input: &[u8], limits: &Limits, seed: &[u8]) -> Outcome {
        self.run_hashed(Sha256::digest(wasm).into(), wasm, input, limits, seed)
    }

    /// [`Sandbox::run`] for a module whose SHA-256 the caller has already checked (a worker
    /// checks every module it downloads): a cached module then starts without hashing its bytes
    /// again, which for a 50 KiB module costs more than instantiating it. A wrong `sha256` would
    /// run whatever module is cached under it, so it must be the hash of `wasm`.
    pub fn run_hashed(
        &self,
        sha256: [u8; 32],
        wasm: &[u8],
        input: &[u8],
        limits: &Limits,
        seed: &[u8],
    ) -> Outcome {
        match self.compile_keyed(sha256, wasm) {
            Ok(compiled) => self.run_prepared(&Prepared(compiled), input, limits, seed),
            Err(e) => self.refused(&e, limits),
        }
    }

    /// The outcome of a task whose module could not be prepared: `invalid_module` or
    /// `forbidden_import`, billed nothing.
    pub fn refused(&self, e: &ModuleError, limits: &Limits) -> Outcome {
        let exit = match e {
            ModuleError::ForbiddenImport { .. } => Exit::ForbiddenImport(e.to_string()),
            _ => Exit::InvalidModule(e.to_string()),
        };
        unrun(exit.message(limits, &self.config), exit)
    }

    /// Runs a module [`Sandbox::prepare_hashed`] made ready: as [`Sandbox::run_hashed`], without
    /// looking the module up again (so nothing can make it compile a second time).
    pub fn run_prepared(
        &self,
        prepared: &Prepared,
        input: &[u8],
        limits: &Limits,
        seed: &[u8],
    ) -> Outcome {
        let compiled = prepared.0.clone();
        let started = Instant::now();
        if compiled.initial_memory > limits.memory_bytes {
            let message = format!(
                "needs {} MiB of memory to start; the limit is {} MiB",
                compiled.initial_memory.div_ceil(1 << 20),
                limits.memory_bytes >> 20
            );
            return unrun(message, Exit::OutOfMemory);
        }
        let _slot = self.slots.acquire();
        // The wall clock counts from here: a task's time limit is for running it, not for the
        // node's compile or its wait for a free slot (a cold node must not time out, and be
        // billed its whole fuel limit, where a warm one would finish).
        let deadline = Instant::now() + limits.timeout;
        // So does the CPU time: instantiating and running the guest, not loading its module.
        let cpu = cpu_time::ThreadTime::now();
        bump(&self.counters.runs);
        let stdout = CappedPipe::new(self.config.max_output_bytes, Overflow::Trap, None);
        let stderr = CappedPipe::new(
            self.config.max_stderr_bytes,
            Overflow::Truncate,
            limits.log.clone(),
        );
        let random = (compiled.abi == Abi::Wasi).then(|| RandomStream::new(seed));
        let wasi = random
            .as_ref()
            .map(|r| deterministic_wasi(input, r.key, stdout.clone(), stderr.clone()));
        let host = Host {
            input: input.to_vec(),
            output: Vec::new(),
            max_output: self.config.max_output_bytes,
            limiter: Limiter {
                memory_bytes: limits.memory_bytes as usize,
                table_elements: self.config.max_table_elements,
                denied: None,
            },
            stdio: wasi.as_ref().map(|_| crate::wasi::io::Stdio {
                stdout: stdout.clone(),
                stderr: stderr.clone(),
                stdin_read: 0,
            }),
            random,
            wasi,
            deadline,
            cancel: limits.cancel.clone(),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        let _ = store.set_fuel(limits.fuel);
        // Every epoch tick the guest is checked against its wall-clock deadline and its
        // cancellation flag.
        let cancel = limits.cancel.clone();
        if self.config.consume_fuel {
            store
                .fuel_async_yield_interval(Some(FUEL_SYNC))
                .expect("fuel is on and the interval is not zero");
        }
        // (Off only in benches: see `SandboxConfig::wall_clock`.)
        if self.config.wall_clock {
            store.set_epoch_deadline(1);
        }
        store.epoch_deadline_callback(move |_| {
            if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(wasmtime::Error::new(Cancelled));
            }
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(Trap::Interrupt));
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });

        // Guests run as futures so that fuel can yield every FUEL_SYNC units, which is what
        // bounds the fuel an implicit trap can leave uncounted (see the crate docs).
        let result = futures::executor::block_on(run_entry(&mut store, &compiled));
        let mut fuel_used = match self.config.consume_fuel {
            true => limits.fuel - store.get_fuel().unwrap_or(0),
            false => 0,
        };
        let host = store.into_data();
        let exit = match result {
            Ok(()) => Exit::Ok,
            Err(e) => self.classify_error(&e, host.limiter.denied.is_some()),
        };
        if exit == Exit::Timeout && self.config.consume_fuel {
            // The count at an interrupt is stale (see the crate docs): bill the whole limit.
            fuel_used = limits.fuel;
        }
        let (mut output, stderr) = match compiled.abi {
            Abi::Zkmesh => (
                host.output,
                stdio::Written {
                    bytes: Vec::new(),
                    dropped: 0,
                },
            ),
            Abi::Wasi => (stdout.take().bytes, stderr.take()),
        };
        if exit == Exit::OutputTooLarge {
            // A truncated output is no result: report none rather than up to the cap of bytes.
            output.clear();
        }
        let message = match (&exit, host.limiter.denied) {
            (Exit::OutOfMemory, Some(Denied::Table)) => format!(
                "tried to grow a table past its limit of {} elements",
                self.config.max_table_elements
            ),
            _ => exit.message(limits, &self.config),
        };
        Outcome {
            message,
            exit,
            output,
            stderr: stderr.bytes,
            stderr_dropped: stderr.dropped,
            fuel_used,
            run_time: started.elapsed(),
            cpu_time: cpu.elapsed(),
        }
    }

    /// How a run that failed with `e` ends. A run that was refused memory or table growth
    /// (`grow_denied`: the grow returned -1) and then trapped ends out_of_memory: the limit was
    /// reached, and the trap is almost always the guest giving up for want of memory. Running
    /// out of fuel or time, or exiting, stays what it is.
    pub(crate) fn classify_error(&self, e: &wasmtime::Error, grow_denied: bool) -> Exit {
        match self.classify(e) {
            Exit::Trap(_) if grow_denied && e.downcast_ref::<Cancelled>().is_none() => {
                Exit::OutOfMemory
            }
            exit => exit,
        }
    }

    fn classify(&self, e: &wasmtime::Error) -> Exit {
        if e.downcast_ref::<OutputLimit>().is_some() {
            return Exit::OutputTooLarge;
        }
        if e.downcast_ref::<Cancelled>().is_some() {
            return Exit::Trap("cancelled".into());
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return if exit.0 == 0 {
                Exit::Ok
            } else {
                Exit::ExitCode(exit.0)
            };
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            return match trap {
                Trap::OutOfFuel => Exit::OutOfFuel,
                Trap::Interrupt => Exit::Timeout,
                Trap::StackOverflow => Exit::StackExhausted,
                other => Exit::Trap(other.to_string()),
            };
        }
        let text = format!("{e:#}");
        // The outermost message is wasmtime's "error while executing at wasm backtrace:"; the
        // cause is the innermost one.
        let cause = e.root_cause().to_string();
        let cause = cause.lines().next().unwrap_or("").trim();
        Exit::Trap(if cause.is_empty() {
            text.lines().next().unwrap_or("").to_string()
        } else {
            cause.to_string()
        })
    }
}

pub(crate) async fn run_entry(
    store: &mut Store<Host>,
    compiled: &Compiled,
) -> wasmtime::Result<()> {
    let instance = compiled.pre.instantiate_async(&mut *store).await?;
    let name = match compiled.abi {
        Abi::Wasi => "_start",
        Abi::Zkmesh => {
            if instance.get_func(&mut *store, "run").is_some() {
                "run"
            } else {
                "main"
            }
        }
    };
    let entry = instance.get_typed_func::<(), ()>(&mut *store, name)?;
    entry.call_async(&mut *store, ()).await
}
