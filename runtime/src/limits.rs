//! A task's limits and the wasmtime resource limiter that holds a guest to them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use wasmtime::ResourceLimiter;

use crate::config::MAX_TABLES;

/// Per-task limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Units of wasmtime fuel the guest may burn.
    pub fuel: u64,
    /// The most linear memory the guest may grow to, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock time the guest may run, counted from when it has a slot.
    pub timeout: Duration,
    /// Set to stop the guest early (the task was cancelled or its lease lost); checked on every
    /// epoch tick.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Receives a WASI guest's stderr as it is written (within the stderr cap), for logs that
    /// reach the submitter while the task runs. All of it is also in [`Outcome::stderr`].
    pub log: Option<LogSink>,
}

/// Where a running guest's stderr goes, chunk by chunk (called on the guest's thread).
#[derive(Clone)]
pub struct LogSink(pub Arc<LogFn>);

/// What a [`LogSink`] calls with each chunk of stderr kept.
pub type LogFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000_000,
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(30),
            cancel: None,
            log: None,
        }
    }
}

/// Raised by `write_output` past the limit.
#[derive(Debug)]
pub(crate) struct OutputLimit;

impl std::fmt::Display for OutputLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output limit exceeded")
    }
}

impl std::error::Error for OutputLimit {}

pub(crate) struct Limiter {
    pub(crate) memory_bytes: usize,
    pub(crate) table_elements: usize,
    pub(crate) denied: Option<Denied>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Denied {
    Memory,
    Table,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // memory.grow returns -1, as the specification says (allocators test for it); the
            // denial is remembered, so a run that then traps ends out_of_memory.
            self.denied = Some(Denied::Memory);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            // Like memory: table.grow returns -1, and a later trap ends out_of_memory.
            self.denied = Some(Denied::Table);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }

    fn memories(&self) -> usize {
        1
    }
}
