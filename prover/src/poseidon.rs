//! Poseidon over BN254 (width 9, rate 8, x^5, 8 full and 63 partial rounds, constants from the
//! standard Grain LFSR), natively and as constraints: the commitment to the memory state that
//! chains the segments of a long run.
//!
//! A list is hashed as a sponge with a zero capacity element: each chunk of 8 elements is added
//! to the rate part and the state permuted; the digest is the first rate element. The lists a
//! class hashes have a fixed length, so no padding rule is needed. The permutation is checked
//! against arkworks' `PoseidonSponge` in the tests.

use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_ff::{Field, Zero};

use crate::r1cs::{Cs, L, R};

pub const WIDTH: usize = 9;
pub const RATE: usize = 8;
pub const FULL_ROUNDS: usize = 8;
pub const PARTIAL_ROUNDS: usize = 63;

/// Round constants (`ark[round][lane]`) and the MDS matrix.
pub struct Params {
    pub ark: Vec<Vec<Fr>>,
    pub mds: Vec<Vec<Fr>>,
}

pub fn params() -> &'static Params {
    static P: OnceLock<Params> = OnceLock::new();
    P.get_or_init(|| {
        let (ark, mds) = ark_crypto_primitives::sponge::poseidon::find_poseidon_ark_and_mds::<Fr>(
            254,
            RATE,
            FULL_ROUNDS as u64,
            PARTIAL_ROUNDS as u64,
            0,
        );
        Params { ark, mds }
    })
}

fn is_full(round: usize) -> bool {
    round < FULL_ROUNDS / 2 || round >= FULL_ROUNDS / 2 + PARTIAL_ROUNDS
}

/// The permutation, natively.
pub fn permute(state: &mut [Fr; WIDTH]) {
    let p = params();
    for r in 0..FULL_ROUNDS + PARTIAL_ROUNDS {
        for (s, c) in state.iter_mut().zip(&p.ark[r]) {
            *s += c;
        }
        let lanes = if is_full(r) { WIDTH } else { 1 };
        for s in state.iter_mut().take(lanes) {
            *s = s.pow([5]);
        }
        let old = *state;
        for (i, s) in state.iter_mut().enumerate() {
            *s = old.iter().zip(&p.mds[i]).map(|(x, m)| *x * m).sum();
        }
    }
}

/// The digest of `items`, natively.
pub fn hash(items: &[Fr]) -> Fr {
    let mut state = [Fr::zero(); WIDTH];
    for chunk in items.chunks(RATE) {
        for (k, x) in chunk.iter().enumerate() {
            state[1 + k] += x;
        }
        permute(&mut state);
    }
    state[1]
}

/// Longest expression a lane is carried as through the partial rounds.
const LANE_TERMS: usize = 24;

/// The permutation as constraints: three per S-box (`x^2`, `x^4`, `x^5`), 405 in all, plus a
/// few that keep the lanes of the partial rounds short.
pub fn permute_gadget(cs: &Cs, state: &mut [L; WIDTH]) -> R<()> {
    let p = params();
    for r in 0..FULL_ROUNDS + PARTIAL_ROUNDS {
        for (s, c) in state.iter_mut().zip(&p.ark[r]) {
            *s = s.add_c(*c);
        }
        let lanes = if is_full(r) { WIDTH } else { 1 };
        for s in state.iter_mut().take(lanes) {
            let x2 = cs.mul(s, s)?;
            let x4 = cs.mul(&x2, &x2)?;
            *s = cs.mul(&x4, s)?;
        }
        let old = state.clone();
        for (i, s) in state.iter_mut().enumerate() {
            let mut acc = L::zero();
            for (x, m) in old.iter().zip(&p.mds[i]) {
                acc = acc.add_scaled(x, *m);
            }
            *s = if acc.lc.len() > LANE_TERMS {
                cs.fresh(&acc)?
            } else {
                acc
            };
        }
    }
    Ok(())
}

/// The digest of `items` as constraints.
pub fn hash_gadget(cs: &Cs, items: &[L]) -> R<L> {
    let mut state: [L; WIDTH] = std::array::from_fn(|_| L::zero());
    for chunk in items.chunks(RATE) {
        for (k, x) in chunk.iter().enumerate() {
            state[1 + k] = state[1 + k].add(x);
        }
        permute_gadget(cs, &mut state)?;
    }
    Ok(state[1].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_crypto_primitives::sponge::poseidon::{PoseidonConfig, PoseidonSponge};
    use ark_crypto_primitives::sponge::{CryptographicSponge, FieldBasedCryptographicSponge};
    use ark_relations::gr1cs::ConstraintSystem;

    fn items(n: usize) -> Vec<Fr> {
        (0..n as u64).map(|k| Fr::from(k * k + 7)).collect()
    }

    #[test]
    fn matches_arkworks_sponge() {
        let p = params();
        let config = PoseidonConfig::new(
            FULL_ROUNDS,
            PARTIAL_ROUNDS,
            5,
            p.mds.clone(),
            p.ark.clone(),
            RATE,
            1,
        );
        for n in [8, 16, 64] {
            let xs = items(n);
            let mut sponge = PoseidonSponge::new(&config);
            sponge.absorb(&xs);
            let theirs = sponge.squeeze_native_field_elements(1)[0];
            assert_eq!(hash(&xs), theirs, "{n} items");
        }
    }

    #[test]
    fn gadget_matches_native_and_binds_every_item() {
        let xs = items(16);
        let cs = Cs::new(ConstraintSystem::<Fr>::new_ref());
        let vars: Vec<L> = xs.iter().map(|x| cs.witness(*x).unwrap()).collect();
        let digest = hash_gadget(&cs, &vars).unwrap();
        assert_eq!(digest.v, hash(&xs));
        assert!(cs.cs.is_satisfied().unwrap());
        let per_permutation = cs.cs.num_constraints() / 2;
        assert!(
            (405..460).contains(&per_permutation),
            "{per_permutation} constraints per permutation"
        );
        // Every item changes the digest.
        for k in 0..xs.len() {
            let mut ys = xs.clone();
            ys[k] += Fr::from(1u64);
            assert_ne!(hash(&ys), hash(&xs), "item {k}");
        }
    }
}
