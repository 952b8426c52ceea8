//! zkmesh guest for benchmarks: runs one of the kernels in `kernels.rs`, which benches/ also
//! compiles natively.
//!
//! Input: a kernel name, a space, then its argument:
//! - `sha256 <bytes>`: the hex SHA-256 of the bytes after the space;
//! - `sort <n>`: sorts n xorshift numbers, writes a checksum of the sorted order;
//! - `sieve <n>`: writes "{primes <= n} {largest}".
//!
//! Anything else traps.
#![no_std]

use zkmesh_guest_abi as abi;

mod kernels;

/// `bytes` of fresh linear memory (the guest has no allocator).
fn buffer(bytes: usize) -> &'static mut [u8] {
    const PAGE: usize = 65536;
    let old = core::arch::wasm32::memory_grow(0, bytes.div_ceil(PAGE));
    if old == usize::MAX {
        abi::trap();
    }
    // SAFETY: the pages were just added to memory and nothing else refers to them.
    unsafe { core::slice::from_raw_parts_mut((old * PAGE) as *mut u8, bytes) }
}

fn number(digits: &[u8]) -> usize {
    if digits.is_empty() {
        abi::trap();
    }
    digits.iter().fold(0usize, |n, &d| match d {
        b'0'..=b'9' => n.wrapping_mul(10).wrapping_add(usize::from(d - b'0')),
        _ => abi::trap(),
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn run() {
    let input = buffer(abi::len());
    let mut at = 0;
    abi::read_chunks(|chunk| {
        input[at..at + chunk.len()].copy_from_slice(chunk);
        at += chunk.len();
    });
    let Some(space) = input.iter().position(|&b| b == b' ') else {
        abi::trap();
    };
    let (name, arg) = (&input[..space], &input[space + 1..]);
    let mut out = abi::Output::new();
    match name {
        b"sha256" => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for byte in kernels::sha256(arg) {
                out.byte(HEX[usize::from(byte >> 4)]);
                out.byte(HEX[usize::from(byte & 0xf)]);
            }
        }
        b"sort" => {
            let n = number(arg);
            let bytes = buffer(n * 8);
            // SAFETY: page-aligned, n * 8 bytes long, and used only as i64s from here on.
            let nums =
                unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut i64, n) };
            out.u64(kernels::sort(nums, 0x9e37_79b9_7f4a_7c15));
        }
        b"sieve" => {
            let n = number(arg);
            let (count, largest) = kernels::sieve(buffer(n + 1));
            out.u64(u64::from(count));
            out.byte(b' ');
            out.u64(u64::from(largest));
        }
        _ => abi::trap(),
    }
    out.flush();
}
