//! zkmesh guest: sorts whitespace-separated decimal integers.
//!
//! Input: tokens separated by ASCII whitespace, each `-?[0-9]+` and within `i64`. Output: the
//! numbers in ascending order joined by single spaces, no trailing newline (empty input gives
//! empty output). Any other token (`+1`, `1.5`, `-`, `9223372036854775808`, ...) traps: the
//! zkmesh ABI has no error channel, and a trap is a result the host reports.
#![no_std]

use zkmesh_guest_abi as abi;

/// Parses numbers as the input streams past, so only the numbers are kept, not the text.
/// A token may straddle two chunks, hence the state between calls to `byte`.
struct Tokenizer {
    in_token: bool,
    negative: bool,
    digits: usize,
    magnitude: u64,
}

impl Tokenizer {
    fn byte(&mut self, b: u8, nums: &mut Numbers) {
        match b {
            b'-' if !self.in_token => {
                self.in_token = true;
                self.negative = true;
            }
            b'0'..=b'9' => {
                self.in_token = true;
                self.digits += 1;
                self.magnitude = match self.magnitude.checked_mul(10) {
                    Some(m) => m.saturating_add(u64::from(b - b'0')),
                    None => abi::trap(),
                };
                // Checked per digit so a very long token cannot wrap back into range.
                if self.magnitude > i64::MIN.unsigned_abs() {
                    abi::trap();
                }
            }
            _ if b.is_ascii_whitespace() => self.end(nums),
            _ => abi::trap(),
        }
    }

    fn end(&mut self, nums: &mut Numbers) {
        if !self.in_token {
            return;
        }
        if self.digits == 0 {
            abi::trap(); // a lone "-"
        }
        let n = if self.negative {
            // The magnitude may be 2^63 here, which only exists as a negative i64.
            0i64.wrapping_sub_unsigned(self.magnitude)
        } else {
            match i64::try_from(self.magnitude) {
                Ok(n) => n,
                Err(_) => abi::trap(),
            }
        };
        nums.push(n);
        *self = Tokenizer::new();
    }

    fn new() -> Self {
        Tokenizer {
            in_token: false,
            negative: false,
            digits: 0,
            magnitude: 0,
        }
    }
}

/// A fixed-capacity list of numbers in memory taken from `memory.grow`. The capacity is known
/// up front (every number needs at least one digit and one separator), so a growable vector and
/// an allocator would only add code.
struct Numbers {
    buf: &'static mut [i64],
    len: usize,
}

impl Numbers {
    fn with_capacity(cap: usize) -> Self {
        const PAGE: usize = 65536;
        let bytes = cap * size_of::<i64>();
        let pages = bytes.div_ceil(PAGE);
        let old_pages = core::arch::wasm32::memory_grow(0, pages);
        if old_pages == usize::MAX {
            abi::trap(); // the host's memory limit: a result like any other
        }
        // SAFETY: the pages just added start at `old_pages * PAGE`, are zeroed (a valid i64
        // array), page-aligned, and nothing else refers to them: this guest has no allocator,
        // and the stack and statics live below the old end of memory.
        let buf = unsafe { core::slice::from_raw_parts_mut((old_pages * PAGE) as *mut i64, cap) };
        Numbers { buf, len: 0 }
    }

    fn push(&mut self, n: i64) {
        self.buf[self.len] = n;
        self.len += 1;
    }

    fn as_mut_slice(&mut self) -> &mut [i64] {
        &mut self.buf[..self.len]
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn run() {
    let mut nums = Numbers::with_capacity(abi::len().div_ceil(2));
    let mut tokens = Tokenizer::new();
    abi::read_chunks(|chunk| {
        for &b in chunk {
            tokens.byte(b, &mut nums);
        }
    });
    tokens.end(&mut nums);

    let nums = nums.as_mut_slice();
    nums.sort_unstable();

    let mut out = abi::Output::new();
    for (i, &n) in nums.iter().enumerate() {
        if i > 0 {
            out.byte(b' ');
        }
        out.i64(n);
    }
    out.flush();
}
