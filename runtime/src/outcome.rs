//! What a run returns: how the guest ended ([`Exit`]) and the [`Outcome`] with its output,
//! log, fuel and time.

use std::time::Duration;

use crate::config::SandboxConfig;
use crate::limits::Limits;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned (or a WASI guest exited with code 0).
    Ok,
    /// A WebAssembly trap, with wasmtime's description.
    Trap(String),
    /// The guest burnt its whole fuel limit.
    OutOfFuel,
    /// The guest needed more memory (or table elements) than its limits allow.
    OutOfMemory,
    /// The guest exhausted the fixed wasm stack.
    StackExhausted,
    /// The guest ran past its wall-clock limit.
    Timeout,
    /// The guest wrote more output than the sandbox keeps.
    OutputTooLarge,
    /// A WASI guest called `proc_exit` with a non-zero code.
    ExitCode(i32),
    /// The module did not compile or does not fit a guest ABI; it never ran.
    InvalidModule(String),
    /// The module imports something outside its ABI; it never ran.
    ForbiddenImport(String),
}

impl Exit {
    /// A stable short name, used in JSON output and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Trap(_) => "trap",
            Exit::OutOfFuel => "out_of_fuel",
            Exit::OutOfMemory => "out_of_memory",
            Exit::StackExhausted => "stack_exhausted",
            Exit::Timeout => "timeout",
            Exit::OutputTooLarge => "output_too_large",
            Exit::ExitCode(_) => "exit_code",
            Exit::InvalidModule(_) => "invalid_module",
            Exit::ForbiddenImport(_) => "forbidden_import",
        }
    }

    /// A sentence for the submitter.
    pub fn message(&self, limits: &Limits, config: &SandboxConfig) -> String {
        match self {
            Exit::Ok => "completed".into(),
            Exit::Trap(t) => format!("trapped: {t}"),
            Exit::OutOfFuel => format!("ran out of fuel (limit {})", limits.fuel),
            Exit::OutOfMemory => format!(
                "tried to grow memory past its limit of {} MiB",
                limits.memory_bytes >> 20
            ),
            Exit::StackExhausted => "exhausted the wasm stack (unbounded recursion?)".into(),
            Exit::Timeout => format!(
                "did not finish within its timeout of {:.1}s",
                limits.timeout.as_secs_f64()
            ),
            Exit::OutputTooLarge => format!(
                "wrote more than the output limit of {} bytes",
                config.max_output_bytes
            ),
            Exit::ExitCode(c) => format!("exited with code {c}"),
            // The module error's own text says what it is ("invalid module: ...").
            Exit::InvalidModule(m) | Exit::ForbiddenImport(m) => m.clone(),
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// How the guest ended.
    pub exit: Exit,
    /// The ending in words, for the task's log.
    pub message: String,
    /// What the guest wrote with `write_output` (or to stdout); empty if it wrote too much.
    pub output: Vec<u8>,
    /// What a WASI guest wrote to stderr, up to the sandbox's cap.
    pub stderr: Vec<u8>,
    /// Bytes of stderr past the cap, dropped (the guest is not told).
    pub stderr_dropped: u64,
    /// Fuel burnt (see the crate docs for how exact it is at each ending).
    pub fuel_used: u64,
    /// Wall-clock time spent instantiating and running the guest (compiling included, if it was
    /// not cached).
    pub run_time: Duration,
    /// CPU time of the thread that instantiated and ran the guest (a compile runs on a thread
    /// of its own and is not included; `run_time` includes waiting for it).
    pub cpu_time: Duration,
}

/// The outcome of a task that ended before its guest started: no output, no fuel, no time.
pub(crate) fn unrun(message: String, exit: Exit) -> Outcome {
    Outcome {
        message,
        exit,
        output: Vec::new(),
        stderr: Vec::new(),
        stderr_dropped: 0,
        fuel_used: 0,
        run_time: Duration::ZERO,
        cpu_time: Duration::ZERO,
    }
}
