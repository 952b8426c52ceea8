//! A WASI guest's stdout and stderr: in memory, each with a cap, and a defined end when the cap
//! is reached.
//!
//! wasmtime-wasi's `MemoryOutputPipe` reports a full pipe as a closed stream, which a guest sees
//! as an I/O error: a Rust guest then panics with half its output written, and a C guest that
//! ignores `printf`'s result ends `ok` with its output cut short. Neither is a result. So:
//!
//! - **stdout** is the task's result: a write past the cap traps with [`OutputLimit`], and the
//!   run ends `output_too_large` (billed, with no output), like `zkmesh.write_output`.
//! - **stderr** is only a log: it keeps its first bytes up to the cap and counts the rest, and
//!   the guest never notices.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::limits::{LogSink, OutputLimit};

/// What a write past the cap does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// End the run with [`OutputLimit`].
    Trap,
    /// Keep what fits, count the rest.
    Truncate,
}

/// One capped in-memory pipe (cheap to clone: clones share the bytes).
#[derive(Clone)]
pub(crate) struct CappedPipe {
    shared: Arc<Mutex<Buffer>>,
    cap: usize,
    overflow: Overflow,
    sink: Option<LogSink>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// Bytes refused by a `Truncate` pipe.
    dropped: u64,
}

/// What a guest wrote, once it has finished.
pub(crate) struct Written {
    pub bytes: Vec<u8>,
    pub dropped: u64,
}

impl CappedPipe {
    /// `sink`, if any, also receives every byte kept.
    pub(crate) fn new(cap: usize, overflow: Overflow, sink: Option<LogSink>) -> CappedPipe {
        CappedPipe {
            shared: Arc::new(Mutex::new(Buffer::default())),
            cap,
            overflow,
            sink,
        }
    }

    pub(crate) fn take(&self) -> Written {
        let mut b = self.shared.lock().unwrap();
        Written {
            bytes: std::mem::take(&mut b.bytes),
            dropped: b.dropped,
        }
    }

    /// Whether appending `n` bytes would end the run (a `Trap` pipe past its cap).
    pub(crate) fn would_trap(&self, n: u64) -> bool {
        let used = self.shared.lock().unwrap().bytes.len() as u64;
        matches!(self.overflow, Overflow::Trap) && used.saturating_add(n) > self.cap as u64
    }

    /// Appends `bytes`, or as much as fits; `Err` when a `Trap` pipe would pass its cap.
    pub(crate) fn append(&self, bytes: &[u8]) -> Result<(), OutputLimit> {
        let mut b = self.shared.lock().unwrap();
        let room = self.cap - b.bytes.len();
        let kept = if bytes.len() <= room {
            bytes
        } else {
            match self.overflow {
                Overflow::Trap => return Err(OutputLimit),
                Overflow::Truncate => {
                    b.dropped += (bytes.len() - room) as u64;
                    &bytes[..room]
                }
            }
        };
        b.bytes.extend_from_slice(kept);
        drop(b);
        if let (Some(sink), false) = (&self.sink, kept.is_empty()) {
            (sink.0)(kept);
        }
        Ok(())
    }
}

/// WASI preview 1 asks for a permit before each write of at most 4 KiB; the permit is never the
/// limit (a full pipe must not look closed), [`CappedPipe::append`] is.
const PERMIT: usize = 64 << 10;

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes)
            .map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
