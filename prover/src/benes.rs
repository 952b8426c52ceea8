//! A Beneš permutation network: `n = 2^k` wires, `2k - 1` columns of `n / 2` two-input switches,
//! able to realise every permutation. The circuit uses it to prove that the address-sorted list
//! of memory accesses is a permutation of the execution-ordered list: each switch costs one
//! boolean plus one product per routed field, and no hashing or challenge is needed.
//!
//! The network is defined recursively, and [`apply`] walks it in the same order in which [`route`]
//! emits switch settings, so the native side and the circuit cannot disagree on the wiring:
//!
//! 1. the first column pairs inputs `2j, 2j+1`; a switch sends one to the upper and one to the
//!    lower half-size network (straight: the even input goes up);
//! 2. the upper network, then the lower network, recursively;
//! 3. the last column pairs output `j` of both halves into outputs `2j, 2j+1` (straight: the
//!    upper one goes to the even output).
//!
//! Settings are found with the classic looping algorithm.

/// Number of switches in a network on `n` wires.
pub fn switches(n: usize) -> usize {
    assert!(
        n.is_power_of_two() && n >= 2,
        "Beneš networks need 2^k >= 2 wires, not {n}"
    );
    if n == 2 { 1 } else { n + 2 * switches(n / 2) }
}

/// Switch settings (`true`: crossed) that send input `i` to output `perm[i]`.
pub fn route(perm: &[usize]) -> Vec<bool> {
    let n = perm.len();
    assert!(n.is_power_of_two() && n >= 2);
    let mut seen = vec![false; n];
    for &p in perm {
        assert!(p < n && !seen[p], "not a permutation");
        seen[p] = true;
    }
    let mut out = Vec::with_capacity(switches(n));
    route_into(perm, &mut out);
    out
}

fn route_into(perm: &[usize], out: &mut Vec<bool>) {
    let n = perm.len();
    if n == 2 {
        out.push(perm[0] == 1);
        return;
    }
    let mut inv = vec![0; n];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    // lower[i]: input i goes through the lower half network.
    let mut side: Vec<Option<bool>> = vec![None; n];
    for start in 0..n {
        if side[start].is_some() {
            continue;
        }
        let mut i = start;
        loop {
            side[i] = Some(false);
            let partner = i ^ 1;
            side[partner] = Some(true);
            // The output sharing a last-column switch with the partner's output must come from
            // the upper network.
            let k = inv[perm[partner] ^ 1];
            if side[k].is_some() {
                break;
            }
            i = k;
        }
    }
    let lower = |i: usize| side[i] == Some(true);
    let half = n / 2;
    let (mut up, mut down) = (vec![0; half], vec![0; half]);
    for j in 0..half {
        let (u, d) = if lower(2 * j) {
            (2 * j + 1, 2 * j)
        } else {
            (2 * j, 2 * j + 1)
        };
        out.push(lower(2 * j));
        up[j] = perm[u] / 2;
        down[j] = perm[d] / 2;
    }
    route_into(&up, out);
    route_into(&down, out);
    for k in 0..half {
        out.push(lower(inv[2 * k]));
    }
}

/// Runs `inputs` through the network, taking one setting per switch from `settings` and
/// combining each pair with `switch(a, b, setting) -> (first, second)`.
pub fn apply<T: Clone, S, E>(
    inputs: &[T],
    settings: &mut impl Iterator<Item = S>,
    switch: &mut impl FnMut(&T, &T, S) -> Result<(T, T), E>,
) -> Result<Vec<T>, E> {
    let n = inputs.len();
    let mut next = || settings.next().expect("one setting per switch");
    if n == 2 {
        let (a, b) = switch(&inputs[0], &inputs[1], next())?;
        return Ok(vec![a, b]);
    }
    let half = n / 2;
    let (mut up, mut down) = (Vec::with_capacity(half), Vec::with_capacity(half));
    for j in 0..half {
        let s = next();
        let (u, d) = switch(&inputs[2 * j], &inputs[2 * j + 1], s)?;
        up.push(u);
        down.push(d);
    }
    let up = apply(&up, settings, switch)?;
    let down = apply(&down, settings, switch)?;
    let mut out = Vec::with_capacity(n);
    for k in 0..half {
        let s = settings.next().expect("one setting per switch");
        let (a, b) = switch(&up[k], &down[k], s)?;
        out.push(a);
        out.push(b);
    }
    Ok(out)
}

/// The native switch: crossed swaps the pair.
pub fn swap<T: Clone>(a: &T, b: &T, crossed: bool) -> Result<(T, T), std::convert::Infallible> {
    Ok(if crossed {
        (b.clone(), a.clone())
    } else {
        (a.clone(), b.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(perm: &[usize]) {
        let bits = route(perm);
        assert_eq!(bits.len(), switches(perm.len()));
        let inputs: Vec<usize> = (0..perm.len()).collect();
        let out = apply(&inputs, &mut bits.into_iter(), &mut swap).unwrap();
        for (i, &p) in perm.iter().enumerate() {
            assert_eq!(out[p], i, "input {i} must reach output {p}");
        }
    }

    #[test]
    fn routes_every_permutation_of_small_sizes_and_random_large_ones() {
        // All 24 permutations of 4 and all 40320 of 8.
        fn all(n: usize) -> Vec<Vec<usize>> {
            if n == 1 {
                return vec![vec![0]];
            }
            let mut out = vec![];
            for p in all(n - 1) {
                for at in 0..n {
                    let mut q = p.clone();
                    q.insert(at, n - 1);
                    out.push(q);
                }
            }
            out
        }
        for n in [2, 4, 8] {
            for p in all(n) {
                check(&p);
            }
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        for k in 4..=12 {
            let n = 1 << k;
            let mut p: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                p.swap(i, (state % (i as u64 + 1)) as usize);
            }
            check(&p);
        }
    }
}
