//! A thin layer over arkworks' constraint system: linear expressions that carry their value, so
//! the circuit is written once and computes its own witness, and every product costs exactly one
//! constraint that is visible in the code.

use ark_bn254::Fr;
use ark_ff::{Field, One, Zero};
use ark_relations::gr1cs::{ConstraintSystemRef, LinearCombination, SynthesisError, Variable};

pub type R<T> = Result<T, SynthesisError>;

/// A linear combination of variables together with its value under the current assignment.
#[derive(Clone, Debug)]
pub struct L {
    pub lc: LinearCombination<Fr>,
    pub v: Fr,
}

pub fn f(x: u64) -> Fr {
    Fr::from(x)
}

/// 2^k as a field element.
pub fn pow2(k: u32) -> Fr {
    Fr::from(2u64).pow([k as u64])
}

impl L {
    pub fn zero() -> L {
        L {
            lc: LinearCombination::zero(),
            v: Fr::zero(),
        }
    }

    pub fn konst(c: Fr) -> L {
        L {
            lc: LinearCombination::zero() + (c, Variable::One),
            v: c,
        }
    }

    pub fn var(var: Variable, v: Fr) -> L {
        L {
            lc: LinearCombination::zero() + (Fr::one(), var),
            v,
        }
    }

    pub fn add(&self, o: &L) -> L {
        L {
            lc: self.lc.clone() + &o.lc,
            v: self.v + o.v,
        }
    }

    pub fn sub(&self, o: &L) -> L {
        L {
            lc: self.lc.clone() - &o.lc,
            v: self.v - o.v,
        }
    }

    pub fn scale(&self, c: Fr) -> L {
        L {
            lc: self.lc.clone() * c,
            v: self.v * c,
        }
    }

    pub fn add_c(&self, c: Fr) -> L {
        self.add(&L::konst(c))
    }

    /// `self + c * o`
    pub fn add_scaled(&self, o: &L, c: Fr) -> L {
        self.add(&o.scale(c))
    }
}

pub fn sum<'a>(items: impl IntoIterator<Item = &'a L>) -> L {
    items.into_iter().fold(L::zero(), |acc, x| acc.add(x))
}

/// The constraint system.
pub struct Cs {
    pub cs: ConstraintSystemRef<Fr>,
    /// Panic at the first constraint the assignment violates, naming the line that made it
    /// (debugging aid; the constraint system itself only knows constraint numbers).
    pub strict: bool,
    /// Where the first violated constraint was made, if any (checked natively as constraints
    /// are added, from the values every expression carries).
    pub violation: std::cell::RefCell<Option<String>>,
    /// What the constraints being added check, for [`Cs::violation`].
    pub region: std::cell::RefCell<String>,
    /// When set, every constraint's shape (variables and coefficients) is hashed into it.
    pub shape: std::cell::RefCell<Option<sha2::Sha256>>,
}

/// Feeds a linear combination's shape into a hash.
fn hash_lc(h: &mut sha2::Sha256, lc: &LinearCombination<Fr>) {
    use ark_ff::{BigInteger, PrimeField};
    use sha2::Digest;
    h.update((lc.len() as u64).to_le_bytes());
    for (coeff, var) in lc.iter() {
        let (tag, index) = if var.is_zero() {
            (0u8, 0)
        } else if var.is_one() {
            (1, 0)
        } else if var.is_instance() {
            (2, var.get_variable_index(0).unwrap_or(0))
        } else if var.is_witness() {
            (3, var.get_variable_index(0).unwrap_or(0))
        } else {
            (4, var.get_lc_index().unwrap_or(0))
        };
        h.update([tag]);
        h.update((index as u64).to_le_bytes());
        h.update(coeff.into_bigint().to_bytes_le());
    }
}

impl Cs {
    /// A plain wrapper, without strict mode, violation capture or shape hashing.
    pub fn new(cs: ConstraintSystemRef<Fr>) -> Cs {
        Cs {
            cs,
            strict: false,
            violation: Default::default(),
            region: Default::default(),
            shape: Default::default(),
        }
    }

    pub fn witness(&self, v: Fr) -> R<L> {
        let var = self.cs.new_witness_variable(|| Ok(v))?;
        Ok(L::var(var, v))
    }

    pub fn input(&self, v: Fr) -> R<L> {
        let var = self.cs.new_input_variable(|| Ok(v))?;
        Ok(L::var(var, v))
    }

    /// Enforces `a * b = c`.
    #[track_caller]
    pub fn enforce(&self, a: &L, b: &L, c: &L) -> R<()> {
        if a.v * b.v != c.v {
            let at = std::panic::Location::caller();
            if self.strict {
                panic!("constraint violated in {} at {at}", self.region.borrow());
            }
            self.violation.borrow_mut().get_or_insert_with(|| {
                format!("{} ({}:{})", self.region.borrow(), at.file(), at.line())
            });
        }
        if let Some(h) = self.shape.borrow_mut().as_mut() {
            hash_lc(h, &a.lc);
            hash_lc(h, &b.lc);
            hash_lc(h, &c.lc);
        }
        let (a, b, c) = (a.lc.clone(), b.lc.clone(), c.lc.clone());
        self.cs.enforce_r1cs_constraint(|| a, || b, || c)
    }

    /// Enforces `a = b` (one constraint).
    #[track_caller]
    pub fn equal(&self, a: &L, b: &L) -> R<()> {
        self.enforce(&a.sub(b), &L::konst(Fr::one()), &L::zero())
    }

    /// Enforces `s * e = 0`: `e` must vanish whenever the selector `s` is on.
    #[track_caller]
    pub fn gate(&self, s: &L, e: &L) -> R<()> {
        self.enforce(s, e, &L::zero())
    }

    /// Names what the following constraints check.
    pub fn region(&self, name: impl Into<String>) {
        *self.region.borrow_mut() = name.into();
    }

    /// A new variable equal to `e`: one constraint that keeps expressions carried from step to
    /// step (registers) from growing with the number of steps.
    #[track_caller]
    pub fn fresh(&self, e: &L) -> R<L> {
        let v = self.witness(e.v)?;
        self.equal(&v, e)?;
        Ok(v)
    }

    /// A new variable equal to `a * b`.
    #[track_caller]
    pub fn mul(&self, a: &L, b: &L) -> R<L> {
        let c = self.witness(a.v * b.v)?;
        self.enforce(a, b, &c)?;
        Ok(c)
    }

    /// A boolean witness with value `v` (which need not be 0 or 1: the constraint decides).
    #[track_caller]
    pub fn bit(&self, v: Fr) -> R<L> {
        let b = self.witness(v)?;
        self.enforce(&b, &L::konst(Fr::one()).sub(&b), &L::zero())?;
        Ok(b)
    }

    /// `bits` as boolean witnesses, and their weighted sum `Σ bits[i] 2^i`.
    pub fn bits(&self, bits: &[Fr]) -> R<(Vec<L>, L)> {
        let mut out = Vec::with_capacity(bits.len());
        let mut acc = L::zero();
        for (i, b) in bits.iter().enumerate() {
            let b = self.bit(*b)?;
            acc = acc.add_scaled(&b, pow2(i as u32));
            out.push(b);
        }
        Ok((out, acc))
    }

    /// `(is_zero(x), inverse witness)`: two constraints, `x * inv = 1 - z` and `x * z = 0`.
    #[track_caller]
    pub fn is_zero(&self, x: &L) -> R<L> {
        let inv = x.v.inverse().unwrap_or(Fr::zero());
        let z = if x.v.is_zero() { Fr::one() } else { Fr::zero() };
        let inv = self.witness(inv)?;
        let z = self.witness(z)?;
        self.enforce(x, &inv, &L::konst(Fr::one()).sub(&z))?;
        self.enforce(x, &z, &L::zero())?;
        Ok(z)
    }
}

/// The little-endian bits of `v` as field elements.
pub fn bits_of(v: u128, n: usize) -> Vec<Fr> {
    (0..n).map(|i| f(((v >> i) & 1) as u64)).collect()
}
