//! The ledger journal's chain: each entry's hash covers its fields and its predecessor's hash;
//! the ledger signs each hash. Shared by the ledger (which writes) and `zkmesh ledger audit`
//! (which re-checks everything from the entries alone).

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use zkmesh_proto::{
    Account, HoldInfo, HoldState, JournalEntry, JournalEntryKind, SignedSettlement,
};

const DOMAIN: &[u8] = b"zkmesh.journal.v1\0";

/// The `prev_hash` of the first entry.
pub fn genesis_hash() -> String {
    "0".repeat(64)
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The name an entry's kind is hashed under: its short name ("mint", "hold", ...), or `#N` for
/// a wire value this build does not know (kept distinct, so the hash stays injective; such an
/// entry fails the replay).
fn kind_name(kind: i32) -> std::borrow::Cow<'static, str> {
    match JournalEntryKind::try_from(kind) {
        Ok(k) if k != JournalEntryKind::Unspecified => k.short_name().into(),
        _ => format!("#{kind}").into(),
    }
}

/// The hash of an entry: every field but `hash` and `signature`.
pub fn entry_hash(e: &JournalEntry) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(e.seq.to_be_bytes());
    h.update(e.at_ms.to_be_bytes());
    put(&mut h, kind_name(e.kind).as_bytes());
    put(&mut h, e.account.as_bytes());
    put(&mut h, e.task_id.as_bytes());
    h.update(e.amount.to_be_bytes());
    put(&mut h, e.prev_hash.as_bytes());
    // Entries without a settlement hash as they did before it existed.
    if let Some(s) = &e.settlement {
        h.update(b"\x01settlement");
        put(&mut h, &s.settlement);
        put(&mut h, &s.signature);
    }
    hex::encode(h.finalize())
}

/// Balances and holds that the journal implies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Every account an entry touched, with its balance.
    pub balances: BTreeMap<String, u64>,
    /// Every hold the journal made, by task, open or closed.
    pub holds: BTreeMap<String, ReplayedHold>,
    pub minted: u64,
    pub entries: u64,
}

/// A hold as the journal tells it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayedHold {
    /// The account the credits were held from (refunds and releases go back to it).
    pub account: String,
    pub amount: u64,
    /// Paid to nodes.
    pub paid: u64,
    /// Refunded or released to `account`.
    pub refunded: u64,
    /// Closed: a pay, refund or release entry brought what remains to zero. A hold of zero
    /// stays open until its closing entry (a refund or release of zero).
    pub closed: bool,
    /// The signed settlement its payouts follow (every pay entry of a task carries the same),
    /// and the (account, amount) payouts it allows that no entry has made yet.
    pub settlement: Option<SignedSettlement>,
    pub unpaid: Vec<(String, u64)>,
}

impl ReplayedHold {
    /// What is still held.
    pub fn remaining(&self) -> u64 {
        self.amount - self.paid - self.refunded
    }
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
    /// A table the ledger listed as of entry `seq` disagrees with the journal up to it.
    #[error("{what} (as of journal entry {seq})")]
    Table { seq: u64, what: String },
}

/// The keys an audit trusts: the ledger's, which signs every entry, and the verifiers', which
/// sign the settlements that every payout must follow.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    pub ledger: Vec<u8>,
    pub verifiers: Vec<VerifyingKey>,
}

/// Re-checks the chain and signatures and replays the entries into balances and holds.
pub fn replay(entries: &[JournalEntry], keys: &TrustedKeys) -> Result<Replay, AuditError> {
    replay_visiting(entries, keys, |_, _| Ok(()))
}

/// [`replay`], showing `visit` the state after each entry (and first the empty state, as of
/// entry 0): a ledger snapshot names the last entry it reflects, and `visit` compares it with
/// the replay there, in one pass and without copies of the state. An error from `visit` ends
/// the replay as [`AuditError::Table`].
pub fn replay_visiting(
    entries: &[JournalEntry],
    keys: &TrustedKeys,
    mut visit: impl FnMut(u64, &Replay) -> Result<(), String>,
) -> Result<Replay, AuditError> {
    let key = <[u8; 32]>::try_from(keys.ledger.as_slice())
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok());
    let mut r = Replay::default();
    visit(0, &r).map_err(|what| AuditError::Table { seq: 0, what })?;
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
            Some((key, sig)) if key.verify_strict(e.hash.as_bytes(), &sig).is_ok() => {}
            _ => return Err(AuditError::Signature { seq }),
        }
        apply(&mut r, e, &keys.verifiers).map_err(|what| AuditError::Invalid { seq, what })?;
        prev = e.hash.clone();
        r.entries += 1;
        visit(seq, &r).map_err(|what| AuditError::Table { seq, what })?;
    }
    Ok(r)
}

fn credit(r: &mut Replay, account: &str, amount: u64) -> Result<(), String> {
    let balance = r.balances.entry(account.to_string()).or_default();
    *balance = balance
        .checked_add(amount)
        .ok_or_else(|| format!("the balance of {account} overflows"))?;
    Ok(())
}

fn apply(r: &mut Replay, e: &JournalEntry, verifiers: &[VerifyingKey]) -> Result<(), String> {
    let amount = e.amount;
    let kind = kind_name(e.kind);
    if e.settlement.is_some() && e.kind != JournalEntryKind::Pay as i32 {
        return Err(format!("a {kind} entry carries a settlement"));
    }
    match JournalEntryKind::try_from(e.kind).unwrap_or(JournalEntryKind::Unspecified) {
        JournalEntryKind::Mint => {
            credit(r, &e.account, amount)?;
            r.minted = r
                .minted
                .checked_add(amount)
                .ok_or("the credits minted overflow")?;
        }
        JournalEntryKind::Hold => {
            if r.holds.contains_key(&e.task_id) {
                return Err(format!("a second hold for task {}", e.task_id));
            }
            let bal = r.balances.entry(e.account.clone()).or_default();
            *bal = bal
                .checked_sub(amount)
                .ok_or_else(|| format!("hold of {amount} exceeds the balance of {}", e.account))?;
            r.holds.insert(
                e.task_id.clone(),
                ReplayedHold {
                    account: e.account.clone(),
                    amount,
                    ..ReplayedHold::default()
                },
            );
        }
        JournalEntryKind::Pay | JournalEntryKind::Refund | JournalEntryKind::Release => {
            let hold = r
                .holds
                .get_mut(&e.task_id)
                .filter(|h| !h.closed)
                .ok_or_else(|| format!("{kind} for task {} which has no open hold", e.task_id))?;
            if amount > hold.remaining() {
                return Err(format!(
                    "{kind} of {amount} exceeds the hold of task {}",
                    e.task_id
                ));
            }
            if e.kind == JournalEntryKind::Pay as i32 {
                follow_settlement(hold, e, verifiers)?;
                hold.paid += amount;
            } else if let Some((account, owed)) = hold.unpaid.first() {
                // Once a settlement is being paid, the rest goes back to the submitter only
                // after every payout it allows: none may be refunded away.
                return Err(format!(
                    "{kind} for task {} while its settlement still owes {owed} to {account}",
                    e.task_id
                ));
            } else if e.account != hold.account {
                return Err(format!(
                    "{kind} for task {} goes to {}, not to {} whose credits were held",
                    e.task_id, e.account, hold.account
                ));
            } else {
                hold.refunded += amount;
            }
            hold.closed = hold.remaining() == 0;
            if hold.closed {
                hold.settlement = None;
                hold.unpaid = Vec::new();
            }
            credit(r, &e.account, amount)?;
        }
        JournalEntryKind::Unspecified => return Err(format!("unknown entry kind {kind}")),
    }
    Ok(())
}

/// A pay entry must be one the verifier's settlement for its task allows: the settlement
/// verifies with a trusted verifier key, is for this task, is the one every other payout of the
/// task follows, and names this account and amount in a payout not yet made.
fn follow_settlement(
    hold: &mut ReplayedHold,
    e: &JournalEntry,
    verifiers: &[VerifyingKey],
) -> Result<(), String> {
    let what = || {
        format!(
            "payout of {} to {} for task {}",
            e.amount, e.account, e.task_id
        )
    };
    match &hold.settlement {
        Some(first) if Some(first) != e.settlement.as_ref() => {
            return Err(format!(
                "{} follows another settlement than the task's earlier payouts",
                what()
            ));
        }
        Some(_) => {}
        None => {
            let s = crate::settlement::open_for(e.settlement.as_ref(), verifiers, &e.task_id)
                .map_err(|err| format!("{} is not backed by the verifier: {err}", what()))?;
            hold.settlement = e.settlement.clone();
            hold.unpaid = s
                .payees
                .into_iter()
                .filter(|p| p.amount > 0)
                .map(|p| (p.account, p.amount))
                .collect();
        }
    }
    let Some(i) = hold
        .unpaid
        .iter()
        .position(|(account, amount)| *account == e.account && *amount == e.amount)
    else {
        return Err(format!(
            "{} is not a payout the verifier's settlement allows (or was made already)",
            what()
        ));
    };
    hold.unpaid.swap_remove(i);
    Ok(())
}

/// A range of keys (account names, task ids) one page of a listing covers: after the previous
/// page's last key, up to and including its own last key (the last page: to the end).
pub type KeyRange<'a> = (Bound<&'a str>, Bound<&'a str>);

fn covers(range: &KeyRange<'_>, key: &str) -> bool {
    RangeBounds::<str>::contains(range, key)
}

/// Every key: a listing in one page.
pub const EVERY_KEY: KeyRange<'static> = (Bound::Unbounded, Bound::Unbounded);

/// Compares a ledger's accounts with the replay of its journal up to the entry they reflect:
/// no account twice, none the journal never touched, and every balance equal (an account the
/// journal leaves at zero may be missing).
pub fn check_accounts(replayed: &Replay, accounts: &[Account]) -> Result<(), String> {
    check_accounts_in(replayed, accounts, EVERY_KEY)
}

/// [`check_accounts`] for one page of a listing, which covers the accounts in `range`: a
/// listed account outside it, or a replayed one inside it that is missing, fails.
pub fn check_accounts_in(
    replayed: &Replay,
    accounts: &[Account],
    range: KeyRange<'_>,
) -> Result<(), String> {
    let mut listed = BTreeMap::new();
    for a in accounts {
        if !covers(&range, a.account.as_str()) {
            return Err(format!(
                "the ledger lists account {} on a page that does not cover it",
                a.account
            ));
        }
        if listed.insert(a.account.as_str(), a.balance).is_some() {
            return Err(format!("the ledger lists account {} twice", a.account));
        }
        match replayed.balances.get(&a.account) {
            None => {
                return Err(format!(
                    "the ledger lists account {} which no journal entry touched",
                    a.account
                ));
            }
            Some(&balance) if balance != a.balance => {
                return Err(format!(
                    "account {} holds {} but the journal gives {balance}",
                    a.account, a.balance
                ));
            }
            Some(_) => {}
        }
    }
    for (account, &balance) in &replayed.balances {
        if balance > 0 && covers(&range, account.as_str()) && !listed.contains_key(account.as_str())
        {
            return Err(format!(
                "the journal gives {account} {balance} but the ledger has no such account"
            ));
        }
    }
    Ok(())
}

/// Compares a ledger's holds with the replay of its journal up to the entry they reflect: the
/// same holds, each once, with the same account, amounts and state.
pub fn check_holds(replayed: &Replay, holds: &[HoldInfo]) -> Result<(), String> {
    check_holds_in(replayed, holds, EVERY_KEY)
}

/// [`check_holds`] for one page of a listing, which covers the task ids in `range`.
pub fn check_holds_in(
    replayed: &Replay,
    holds: &[HoldInfo],
    range: KeyRange<'_>,
) -> Result<(), String> {
    let mut listed = BTreeMap::new();
    for h in holds {
        let task = &h.task_id;
        if !covers(&range, task.as_str()) {
            return Err(format!(
                "the ledger lists the hold for task {task} on a page that does not cover it"
            ));
        }
        if listed.insert(task.as_str(), ()).is_some() {
            return Err(format!("the ledger lists the hold for task {task} twice"));
        }
        let Some(r) = replayed.holds.get(task) else {
            return Err(format!(
                "the ledger lists a hold for task {task} that the journal never made"
            ));
        };
        let open = match h.state() {
            HoldState::Open => true,
            HoldState::Captured | HoldState::Released => false,
            HoldState::Unspecified => {
                return Err(format!("the hold for task {task} is in no known state"));
            }
        };
        let journal = (&r.account, r.amount, r.paid, r.refunded, !r.closed);
        let table = (&h.account, h.amount, h.paid, h.refunded, open);
        if journal != table {
            return Err(format!(
                "the hold for task {task} is (account, amount, paid, refunded, open) = {table:?} but the journal gives {journal:?}"
            ));
        }
    }
    if let Some(task) = replayed
        .holds
        .keys()
        .find(|t| covers(&range, t.as_str()) && !listed.contains_key(t.as_str()))
    {
        return Err(format!(
            "the journal holds credits for task {task} but the ledger lists no such hold"
        ));
    }
    Ok(())
}

impl Replay {
    /// Balances plus holds equal everything minted.
    pub fn conserved(&self) -> bool {
        let total: u128 = self.balances.values().map(|&v| v as u128).sum::<u128>()
            + self
                .holds
                .values()
                .map(|h| h.remaining() as u128)
                .sum::<u128>();
        total == self.minted as u128
    }
}

#[cfg(test)]
mod tests;
