//! Benchmark kernels: plain `core` Rust over caller-provided buffers. The `kernels` guest runs
//! them in the sandbox and benches/ compiles this same file natively, so the two sides of the
//! runtime-overhead figure run the same source.

#[path = "../../sha256/src/sha.rs"]
pub mod sha;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = sha::Sha256::new();
    h.update(data);
    h.finish()
}

/// Fills `buf` with xorshift64 numbers from `seed`, sorts it, and returns a checksum of the
/// sorted order (so that the sort cannot be skipped).
pub fn sort(buf: &mut [i64], seed: u64) -> u64 {
    let mut x = seed | 1;
    for v in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = x as i64;
    }
    buf.sort_unstable();
    buf.iter().enumerate().fold(0u64, |acc, (i, &v)| {
        acc.rotate_left(5) ^ (v as u64).wrapping_mul(i as u64 + 1)
    })
}

/// The sieve of Eratosthenes over `is_prime` (length N + 1): the number of primes <= N and the
/// largest of them (0 if none).
pub fn sieve(is_prime: &mut [u8]) -> (u32, u32) {
    let n = is_prime.len().saturating_sub(1);
    is_prime.fill(1);
    is_prime[0] = 0;
    if n >= 1 {
        is_prime[1] = 0;
    }
    let mut p = 2;
    while p <= n / p {
        if is_prime[p] == 1 {
            let mut m = p * p;
            while m <= n {
                is_prime[m] = 0;
                m += p;
            }
        }
        p += 1;
    }
    let count = is_prime.iter().filter(|&&b| b == 1).count() as u32;
    let largest = is_prime.iter().rposition(|&b| b == 1).unwrap_or(0) as u32;
    (count, largest)
}
