//! WASI guest: counts the primes up to N with a sieve of Eratosthenes.
//!
//! stdin: a decimal `N` (`0..=u32::MAX`, surrounded by optional ASCII whitespace). stdout:
//! `"{count} {largest}\n"`, the number of primes `<= N` and the largest of them (0 if none).
//! The sieve takes N + 1 bytes of memory, so a large N is also a way to meet the memory limit.
//! Bad input: a message on stderr and exit code 2.

use std::io::{Read, Write};
use std::process::ExitCode;

fn parse(input: &[u8]) -> Option<u32> {
    let digits = input.trim_ascii();
    // Checked by hand because `str::parse` would also accept a leading '+'.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("primes: reading stdin: {e}");
        return ExitCode::from(2);
    }
    let Some(n) = parse(&input) else {
        eprintln!("primes: expected a decimal number from 0 to {}", u32::MAX);
        return ExitCode::from(2);
    };

    // On wasm32 usize is 32 bits, so N = u32::MAX would wrap; such a sieve cannot fit anyway.
    let n = n as usize;
    let Some(len) = n.checked_add(1) else {
        eprintln!("primes: N is too large for this guest's memory");
        return ExitCode::from(2);
    };
    let mut is_prime = vec![true; len];
    is_prime[0] = false;
    if n >= 1 {
        is_prime[1] = false;
    }
    let mut p = 2;
    while p <= n / p {
        if is_prime[p] {
            // Smaller multiples were already crossed out by smaller primes.
            for multiple in (p * p..=n).step_by(p) {
                is_prime[multiple] = false;
            }
        }
        p += 1;
    }

    let count = is_prime.iter().filter(|&&b| b).count();
    let largest = is_prime.iter().rposition(|&b| b).unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{count} {largest}").and_then(|()| stdout.flush());
    if written.is_err() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
