//! WASI randomness: a stream every node derives alike from the task's seed.

use sha2::{Digest, Sha256};

/// The bytes WASI `random_get` returns: SHA-256 in counter mode under a key derived from the
/// task's seed, so every node running the task gives its guest the same stream, which never
/// repeats.
pub(crate) struct RandomStream {
    pub(crate) key: [u8; 32],
    pub(crate) counter: u64,
    pub(crate) block: [u8; 32],
    /// Bytes of `block` already handed out.
    pub(crate) used: usize,
}

impl RandomStream {
    pub(crate) fn new(seed: &[u8]) -> RandomStream {
        let mut h = Sha256::new();
        h.update(b"zkmesh.wasi.random\0");
        h.update(seed);
        RandomStream {
            key: h.finalize().into(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    pub(crate) fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(self.key);
                h.update(self.counter.to_be_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            let n = (self.block.len() - self.used).min(out.len());
            out[..n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            out = &mut out[n..];
        }
    }
}
