//! The ledger journal's chain: each entry's hash covers its fields and its predecessor's hash;
//! the ledger signs each hash. Shared by the ledger (which writes) and `zkmesh ledger audit`
//! (which re-checks everything from the entries alone).

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zkmesh_proto::JournalEntry;

const DOMAIN: &[u8] = b"zkmesh.journal.v1\0";

/// The `prev_hash` of the first entry.
pub fn genesis_hash() -> String {
    "0".repeat(64)
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The hash of an entry: every field but `hash` and `signature`.
pub fn entry_hash(e: &JournalEntry) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(e.seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    put(&mut h, e.kind.as_bytes());
    put(&mut h, e.account.as_bytes());
    put(&mut h, e.task_id.as_bytes());
    h.update(e.amount.to_be_bytes());
    put(&mut h, e.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

/// Balances and open holds that the journal implies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    pub balances: BTreeMap<String, u64>,
    /// Open amount held per task.
    pub holds: BTreeMap<String, u64>,
    pub minted: u64,
    pub entries: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("entry {seq}: expected sequence number {expected}")]
    Sequence { seq: u64, expected: u64 },
    #[error("entry {seq}: prev_hash does not match the previous entry's hash")]
    Chain { seq: u64 },
    #[error("entry {seq}: hash does not match its contents (altered entry)")]
    Hash { seq: u64 },
    #[error("entry {seq}: signature does not verify with the ledger key")]
    Signature { seq: u64 },
    #[error("entry {seq}: {what}")]
    Invalid { seq: u64, what: String },
}

/// Re-checks the chain and signatures and replays the entries into balances and holds.
pub fn replay(entries: &[JournalEntry], ledger_key: &[u8]) -> Result<Replay, AuditError> {
    replay_at(entries, ledger_key, &[]).map(|(all, _)| all)
}

/// [`replay`], also keeping the state after each sequence number in `checkpoints` (a ledger
/// snapshot names the last entry it reflects; 0 is the empty journal). A checkpoint past the
/// last entry is not in the map.
pub fn replay_at(
    entries: &[JournalEntry],
    ledger_key: &[u8],
    checkpoints: &[u64],
) -> Result<(Replay, BTreeMap<u64, Replay>), AuditError> {
    let key = <[u8; 32]>::try_from(ledger_key)
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok());
    let mut r = Replay::default();
    let mut at = BTreeMap::new();
    if checkpoints.contains(&0) {
        at.insert(0, r.clone());
    }
    let mut prev = genesis_hash();
    for (i, e) in entries.iter().enumerate() {
        let seq = e.seq;
        if seq != i as u64 + 1 {
            return Err(AuditError::Sequence {
                seq,
                expected: i as u64 + 1,
            });
        }
        if e.prev_hash != prev {
            return Err(AuditError::Chain { seq });
        }
        if entry_hash(e) != e.hash {
            return Err(AuditError::Hash { seq });
        }
        let signed = key.as_ref().zip(Signature::from_slice(&e.signature).ok());
        match signed {
            Some((key, sig)) if key.verify(e.hash.as_bytes(), &sig).is_ok() => {}
            _ => return Err(AuditError::Signature { seq }),
        }
        apply(&mut r, e).map_err(|what| AuditError::Invalid { seq, what })?;
        prev = e.hash.clone();
        r.entries += 1;
        if checkpoints.contains(&seq) {
            at.insert(seq, r.clone());
        }
    }
    Ok((r, at))
}

fn apply(r: &mut Replay, e: &JournalEntry) -> Result<(), String> {
    let amount = e.amount;
    match e.kind.as_str() {
        "mint" => {
            *r.balances.entry(e.account.clone()).or_default() += amount;
            r.minted += amount;
        }
        "hold" => {
            let bal = r.balances.entry(e.account.clone()).or_default();
            *bal = bal
                .checked_sub(amount)
                .ok_or_else(|| format!("hold of {amount} exceeds the balance of {}", e.account))?;
            *r.holds.entry(e.task_id.clone()).or_default() += amount;
        }
        "pay" | "refund" | "release" => {
            let held = r.holds.entry(e.task_id.clone()).or_default();
            *held = held.checked_sub(amount).ok_or_else(|| {
                format!(
                    "{} of {amount} exceeds the hold of task {}",
                    e.kind, e.task_id
                )
            })?;
            if *held == 0 {
                r.holds.remove(&e.task_id);
            }
            *r.balances.entry(e.account.clone()).or_default() += amount;
        }
        other => return Err(format!("unknown entry kind {other:?}")),
    }
    Ok(())
}

impl Replay {
    /// Balances plus holds equal everything minted.
    pub fn conserved(&self) -> bool {
        let total: u128 = self.balances.values().map(|&v| v as u128).sum::<u128>()
            + self.holds.values().map(|&v| v as u128).sum::<u128>();
        total == self.minted as u128
    }
}
