//! zkmesh guest: Collatz step counts, a CPU-bound workload whose running time grows with its input.
//!
//! Input: a decimal `N` (`0..=u32::MAX`, surrounded by optional ASCII whitespace). Output:
//! `"{total} {argmax}"`, where `total` is the sum over `n` in `1..=N` of the number of steps to
//! reach 1 (halve if even, else `3n + 1`) and `argmax` is the smallest `n` with the most steps
//! (`"0 0"` for `N = 0`). Bad input traps, and so would a trajectory leaving `u64`, which first
//! happens above n = 1.9 billion.
//!
//! There is deliberately no memoisation: tests use this guest as a long-running task whose cost
//! is predictable from `N` (N = 3,000,000 is about 4.3e8 steps).
#![no_std]

use zkmesh_guest_abi as abi;

fn steps(n: u32) -> u32 {
    let mut x = u64::from(n);
    let mut steps = 0;
    while x > 1 {
        x = if x % 2 == 0 {
            x / 2
        } else {
            match x.checked_mul(3).and_then(|x| x.checked_add(1)) {
                Some(x) => x,
                None => abi::trap(),
            }
        };
        steps += 1;
    }
    steps
}

#[unsafe(no_mangle)]
pub extern "C" fn run() {
    let n = match u32::try_from(abi::read_u64()) {
        Ok(n) => n,
        Err(_) => abi::trap(),
    };

    let (mut total, mut argmax, mut max) = (0u64, 0u32, 0u32);
    for i in 1..=n {
        let s = steps(i);
        total += u64::from(s);
        // Strictly greater, so ties keep the smallest n. `argmax == 0` catches n = 1 (0 steps).
        if s > max || argmax == 0 {
            max = s;
            argmax = i;
        }
    }

    let mut out = abi::Output::new();
    out.u64(total);
    out.byte(b' ');
    out.u64(u64::from(argmax));
    out.flush();
}
