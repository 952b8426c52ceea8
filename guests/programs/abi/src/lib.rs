//! The zkmesh guest ABI seen from inside a `no_std` guest: the three host imports, chunked input,
//! buffered output, integer formatting and the panic handler.
//!
//! A zkmesh guest imports `zkmesh.input_len`, `zkmesh.read_input` and `zkmesh.write_output` and
//! nothing else, and exports `memory` and `run`. Everything here is written to keep it that way:
//! no `core::fmt` (it drags in tables of function pointers and a lot of code), no allocator, and
//! failures end in `unreachable`, which the host reports as a trap.
#![no_std]

#[link(wasm_import_module = "zkmesh")]
unsafe extern "C" {
    safe fn input_len() -> i32;
    fn read_input(dst: *mut u8, offset: i32, len: i32) -> i32;
    fn write_output(src: *const u8, len: i32);
}

/// Size of the buffers used to stream input and output. Big enough that host calls are rare,
/// small enough to live on the guest's stack.
pub const CHUNK: usize = 4096;

/// Stops the guest with a trap. The host reports it; there is no other error channel.
#[inline(always)]
pub fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

// Panics only come from bugs or from checks the guests make on purpose (bad input, overflow);
// either way the host should see a trap, and formatting a message would cost more than the guest.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    trap()
}

/// Total length of the input in bytes.
pub fn len() -> usize {
    input_len() as usize
}

/// Calls `f` with consecutive chunks of the input until it is exhausted. Streaming keeps the
/// guest's memory flat whatever the input size.
pub fn read_chunks(mut f: impl FnMut(&[u8])) {
    let mut buf = [0u8; CHUNK];
    let mut offset = 0usize;
    loop {
        // SAFETY: the host writes at most `CHUNK` bytes into `buf`, which is that long.
        let n = unsafe { read_input(buf.as_mut_ptr(), offset as i32, CHUNK as i32) };
        if n <= 0 {
            return;
        }
        // A host claiming to have written more than asked would be a host bug; stop rather
        // than read past the buffer.
        let n = n as usize;
        if n > CHUNK {
            trap();
        }
        f(&buf[..n]);
        offset += n;
    }
}

/// Collects output and hands it to the host in `CHUNK`-sized pieces, so that writing a number
/// at a time does not mean one host call per number.
pub struct Output {
    buf: [u8; CHUNK],
    len: usize,
}

impl Output {
    pub const fn new() -> Self {
        Output {
            buf: [0; CHUNK],
            len: 0,
        }
    }

    pub fn bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == CHUNK {
                self.flush();
            }
            let n = bytes.len().min(CHUNK - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    pub fn byte(&mut self, b: u8) {
        self.bytes(&[b]);
    }

    pub fn u64(&mut self, mut n: u64) {
        // u64::MAX has 20 digits.
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[i..]);
    }

    pub fn i64(&mut self, n: i64) {
        if n < 0 {
            self.byte(b'-');
        }
        // unsigned_abs, because -i64::MIN does not fit an i64.
        self.u64(n.unsigned_abs());
    }

    /// Sends whatever is buffered. Must be called before `run` returns, or the tail is lost.
    pub fn flush(&mut self) {
        if self.len > 0 {
            // SAFETY: the host only reads `len` bytes from `buf`, which holds at least that many.
            unsafe { write_output(self.buf.as_ptr(), self.len as i32) };
            self.len = 0;
        }
    }
}

impl Default for Output {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the whole input as one unsigned decimal number surrounded by optional ASCII whitespace,
/// and traps on anything else (including a number that does not fit a `u64`).
pub fn read_u64() -> u64 {
    // Tracks where we are: before the number, in it, or after it.
    let (mut n, mut digits, mut done) = (0u64, 0usize, false);
    read_chunks(|chunk| {
        for &b in chunk {
            match b {
                b'0'..=b'9' if !done => {
                    let digit = u64::from(b - b'0');
                    n = match n.checked_mul(10).and_then(|n| n.checked_add(digit)) {
                        Some(n) => n,
                        None => trap(),
                    };
                    digits += 1;
                }
                _ if b.is_ascii_whitespace() => done = digits > 0,
                _ => trap(),
            }
        }
    });
    if digits == 0 {
        trap();
    }
    n
}
