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
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    /// The verifier's key in these tests.
    fn verifier() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn keys(ledger: &SigningKey) -> TrustedKeys {
        TrustedKeys {
            ledger: ledger.verifying_key().to_bytes().to_vec(),
            verifiers: vec![verifier().verifying_key()],
        }
    }

    /// A settlement for `task` paying each `(account, amount)` (at a price of one micro-credit
    /// a fuel), signed by `by`.
    fn settlement(by: &SigningKey, task: &str, pays: &[(&str, u64)]) -> SignedSettlement {
        let payees = pays
            .iter()
            .map(|(account, amount)| zkmesh_proto::SettlementPayee {
                account: account.to_string(),
                fuel: *amount,
                micro_credits_per_million_fuel: 1_000_000,
                amount: *amount,
                ..Default::default()
            })
            .collect();
        crate::settlement::sign(
            &zkmesh_proto::Settlement {
                task_id: task.into(),
                payees,
                ..Default::default()
            },
            by,
        )
    }

    /// A signed chain of `(kind, account, task, amount)` entries; each pay entry carries the
    /// verifier's settlement for exactly the pay entries of its task.
    fn chain(key: &SigningKey, moves: &[(&str, &str, &str, u64)]) -> Vec<JournalEntry> {
        chain_with(key, moves, |task| {
            let pays: Vec<(&str, u64)> = moves
                .iter()
                .filter(|m| m.0 == "pay" && m.2 == task)
                .map(|m| (m.1, m.3))
                .collect();
            Some(settlement(&verifier(), task, &pays))
        })
    }

    /// [`chain`], with each pay entry's settlement made by `settle(task)`.
    fn chain_with(
        key: &SigningKey,
        moves: &[(&str, &str, &str, u64)],
        mut settle: impl FnMut(&str) -> Option<SignedSettlement>,
    ) -> Vec<JournalEntry> {
        let mut prev = genesis_hash();
        let mut out = Vec::new();
        for (i, (kind, account, task, amount)) in moves.iter().enumerate() {
            let mut e = JournalEntry {
                seq: i as u64 + 1,
                at_ms: 1,
                // A name no kind has stands for an unknown wire value.
                kind: kind.parse::<JournalEntryKind>().map_or(99, |k| k as i32),
                account: account.to_string(),
                task_id: task.to_string(),
                amount: *amount,
                prev_hash: prev.clone(),
                hash: String::new(),
                signature: Vec::new(),
                settlement: if *kind == "pay" { settle(task) } else { None },
            };
            e.hash = entry_hash(&e);
            e.signature = key.sign(e.hash.as_bytes()).to_bytes().to_vec();
            prev = e.hash.clone();
            out.push(e);
        }
        out
    }

    fn hold(task: &str, amount: u64, paid: u64, refunded: u64, state: HoldState) -> HoldInfo {
        HoldInfo {
            task_id: task.into(),
            account: "user/alice".into(),
            amount,
            paid,
            refunded,
            state: state as i32,
        }
    }

    fn account(name: &str, balance: u64) -> Account {
        Account {
            account: name.into(),
            balance,
        }
    }

    fn replayed(moves: &[(&str, &str, &str, u64)]) -> Result<Replay, AuditError> {
        let key = SigningKey::from_bytes(&[3; 32]);
        replay(&chain(&key, moves), &keys(&key))
    }

    const HONEST: &[(&str, &str, &str, u64)] = &[
        ("mint", "user/alice", "", 100),
        ("hold", "user/alice", "t-a", 30),
        ("hold", "user/alice", "t-b", 20),
        ("pay", "operator/acme", "t-b", 15),
        ("refund", "user/alice", "t-b", 5),
    ];

    #[test]
    fn kinds_hash_under_their_names_and_unknown_kinds_fail_the_replay() {
        // The wire carries an enum; the hash is of the short name, as when it was a string, so
        // journals written before stay valid.
        let key = SigningKey::from_bytes(&[3; 32]);
        let e = chain(&key, &[("mint", "user/alice", "", 1)]).remove(0);
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(1u64.to_be_bytes());
        h.update(1i64.to_be_bytes());
        for field in [&b"mint"[..], b"user/alice", b""] {
            put(&mut h, field);
        }
        h.update(1u64.to_be_bytes());
        put(&mut h, genesis_hash().as_bytes());
        assert_eq!(e.hash, hex::encode(h.finalize()));
        // Unknown wire values hash apart from each other and from every known kind.
        let mut other = e.clone();
        for kind in [0, 6, 99] {
            other.kind = kind;
            assert_ne!(entry_hash(&other), e.hash, "{kind}");
        }
        other.kind = 0;
        let unspecified = entry_hash(&other);
        other.kind = 99;
        assert_ne!(entry_hash(&other), unspecified);
        let e = replayed(&[
            ("mint", "user/alice", "", 1),
            ("bogus", "user/alice", "", 1),
        ])
        .unwrap_err();
        assert!(matches!(e, AuditError::Invalid { seq: 2, .. }), "{e}");
    }

    #[test]
    fn pages_are_checked_against_the_range_they_cover() {
        let r = replayed(HONEST).unwrap();
        let (acme, alice) = (account("operator/acme", 15), account("user/alice", 55));
        // Two honest pages: up to and including "operator/acme", then the rest.
        let first = (Bound::Unbounded, Bound::Included("operator/acme"));
        let rest = (Bound::Excluded("operator/acme"), Bound::Unbounded);
        check_accounts_in(&r, std::slice::from_ref(&acme), first).unwrap();
        check_accounts_in(&r, std::slice::from_ref(&alice), rest).unwrap();
        // A page that skips an account in its range, or lists one outside it, fails.
        assert!(check_accounts_in(&r, &[], rest).is_err());
        assert!(check_accounts_in(&r, &[acme.clone(), alice.clone()], first).is_err());
        let holds = [
            hold("t-a", 30, 0, 0, HoldState::Open),
            hold("t-b", 20, 15, 5, HoldState::Captured),
        ];
        let first = (Bound::Unbounded, Bound::Included("t-a"));
        let rest = (Bound::Excluded("t-a"), Bound::Unbounded);
        check_holds_in(&r, &holds[..1], first).unwrap();
        check_holds_in(&r, &holds[1..], rest).unwrap();
        assert!(check_holds_in(&r, &[], rest).is_err(), "t-b withheld");
        assert!(check_holds_in(&r, &holds, first).is_err(), "t-b outside");
    }

    #[test]
    fn honest_tables_pass() {
        let r = replayed(HONEST).unwrap();
        assert!(r.conserved());
        let accounts = [account("operator/acme", 15), account("user/alice", 55)];
        let holds = [
            hold("t-a", 30, 0, 0, HoldState::Open),
            hold("t-b", 20, 15, 5, HoldState::Captured),
        ];
        check_accounts(&r, &accounts).unwrap();
        check_holds(&r, &holds).unwrap();
    }

    /// The attack: list the open hold as released and make up another open hold of nothing, so
    /// that the count of open holds and every listed amount still agree.
    #[test]
    fn a_hidden_open_hold_is_found() {
        let r = replayed(HONEST).unwrap();
        let captured = hold("t-b", 20, 15, 5, HoldState::Captured);
        let attacks: Vec<(&str, Vec<HoldInfo>)> = vec![
            (
                "released and replaced",
                vec![
                    hold("t-a", 30, 0, 30, HoldState::Released),
                    hold("t-fake", 0, 0, 0, HoldState::Open),
                    captured.clone(),
                ],
            ),
            ("left out", vec![captured.clone()]),
            (
                "listed twice",
                vec![
                    hold("t-a", 30, 0, 0, HoldState::Open),
                    hold("t-a", 30, 0, 0, HoldState::Open),
                    captured.clone(),
                ],
            ),
            (
                "closed with other amounts",
                vec![
                    hold("t-a", 30, 0, 0, HoldState::Open),
                    hold("t-b", 20, 20, 0, HoldState::Captured),
                ],
            ),
            (
                "in no known state",
                vec![
                    hold("t-a", 30, 0, 0, HoldState::Unspecified),
                    captured.clone(),
                ],
            ),
        ];
        for (what, holds) in attacks {
            assert!(check_holds(&r, &holds).is_err(), "{what}");
        }
    }

    #[test]
    fn accounts_listed_twice_or_never_journaled_are_found() {
        let r = replayed(HONEST).unwrap();
        let acme = account("operator/acme", 15);
        let alice = account("user/alice", 55);
        for (what, accounts) in [
            ("twice", vec![acme.clone(), alice.clone(), alice.clone()]),
            (
                "made up",
                vec![acme.clone(), alice.clone(), account("user/ghost", 0)],
            ),
            ("missing", vec![alice.clone()]),
            ("wrong", vec![acme.clone(), account("user/alice", 56)]),
        ] {
            assert!(check_accounts(&r, &accounts).is_err(), "{what}");
        }
    }

    #[test]
    fn refunds_and_releases_go_only_to_the_account_held_from() {
        for kind in ["refund", "release"] {
            let e = replayed(&[
                ("mint", "user/alice", "", 10),
                ("hold", "user/alice", "t", 10),
                (kind, "user/mallory", "t", 10),
            ])
            .unwrap_err();
            assert!(matches!(e, AuditError::Invalid { seq: 3, .. }), "{e}");
        }
        // Paying nodes is what a capture is for: any account the verifier's settlement names.
        replayed(&[
            ("mint", "user/alice", "", 10),
            ("hold", "user/alice", "t", 10),
            ("pay", "operator/x", "t", 10),
        ])
        .unwrap();
    }

    #[test]
    fn no_second_hold_no_spending_a_closed_one_no_overflow() {
        let cases: [&[(&str, &str, &str, u64)]; 3] = [
            &[
                ("mint", "user/alice", "", 10),
                ("hold", "user/alice", "t", 5),
                ("hold", "user/alice", "t", 5),
            ],
            &[
                ("mint", "user/alice", "", 10),
                ("hold", "user/alice", "t", 0),
                ("release", "user/alice", "t", 0),
                ("release", "user/alice", "t", 0),
            ],
            &[
                ("mint", "user/alice", "", u64::MAX),
                ("mint", "user/bob", "", 1),
            ],
        ];
        for moves in cases {
            let e = replayed(moves).unwrap_err();
            assert!(
                matches!(e, AuditError::Invalid { seq, .. } if seq == moves.len() as u64),
                "{e}"
            );
        }
    }

    /// The attack: a stolen ledger key (or a scheduler that asks the ledger) pays an account of
    /// its choosing. Every entry is signed with the real ledger key; only the verifier's
    /// settlement is missing, forged, another task's, or says something else.
    #[test]
    fn a_payout_the_verifier_did_not_settle_fails_the_audit() {
        let ledger = SigningKey::from_bytes(&[3; 32]);
        let moves: &[(&str, &str, &str, u64)] = &[
            ("mint", "user/alice", "", 100),
            ("hold", "user/alice", "t-1", 50),
            ("hold", "user/alice", "t-2", 40),
            ("pay", "operator/acme", "t-2", 30),
            ("pay", "operator/mallory", "t-1", 20),
        ];
        let honest_t2 = settlement(&verifier(), "t-2", &[("operator/acme", 30)]);
        type Settle<'a> = Box<dyn Fn(&str) -> Option<SignedSettlement> + 'a>;
        let attacks: Vec<(&str, Settle<'_>)> = vec![
            ("no settlement", Box::new(|_| None)),
            (
                "signed by the ledger key",
                Box::new(|t| Some(settlement(&ledger, t, &[("operator/mallory", 20)]))),
            ),
            (
                "another task's settlement, replayed",
                Box::new(|_| Some(settlement(&verifier(), "t-9", &[("operator/mallory", 20)]))),
            ),
            (
                "the settlement pays someone else",
                Box::new(|t| Some(settlement(&verifier(), t, &[("operator/acme", 20)]))),
            ),
            (
                "the settlement pays less",
                Box::new(|t| Some(settlement(&verifier(), t, &[("operator/mallory", 19)]))),
            ),
        ];
        for (what, mallory) in attacks {
            let entries = chain_with(&ledger, moves, |task| {
                if task == "t-2" {
                    Some(honest_t2.clone())
                } else {
                    mallory(task)
                }
            });
            let e = replay(&entries, &keys(&ledger)).unwrap_err();
            assert!(
                matches!(e, AuditError::Invalid { seq: 5, .. }),
                "{what}: {e}"
            );
        }
        // Paying one allowed payout twice, or two settlements for one task.
        let twice: &[(&str, &str, &str, u64)] = &[
            ("mint", "user/alice", "", 100),
            ("hold", "user/alice", "t-1", 50),
            ("pay", "operator/acme", "t-1", 20),
            ("pay", "operator/acme", "t-1", 20),
        ];
        let once = settlement(&verifier(), "t-1", &[("operator/acme", 20)]);
        let e = replay(
            &chain_with(&ledger, twice, |_| Some(once.clone())),
            &keys(&ledger),
        )
        .unwrap_err();
        assert!(matches!(e, AuditError::Invalid { seq: 4, .. }), "{e}");
        let mut n = 0;
        let e = replay(
            &chain_with(&ledger, twice, |t| {
                n += 1;
                Some(settlement(&verifier(), t, &[("operator/acme", 20 + n - 1)]))
            }),
            &keys(&ledger),
        );
        assert!(e.is_err());
        // Paying one payee and refunding the other's share to the submitter.
        let short: &[(&str, &str, &str, u64)] = &[
            ("mint", "user/alice", "", 100),
            ("hold", "user/alice", "t-1", 50),
            ("pay", "operator/acme", "t-1", 20),
            ("refund", "user/alice", "t-1", 30),
        ];
        let both = settlement(
            &verifier(),
            "t-1",
            &[("operator/acme", 20), ("operator/bolt", 10)],
        );
        let e = replay(
            &chain_with(&ledger, short, |_| Some(both.clone())),
            &keys(&ledger),
        )
        .unwrap_err();
        assert!(matches!(e, AuditError::Invalid { seq: 4, .. }), "{e}");
        // A settlement on an entry that is not a payout.
        let mut entries = chain(&ledger, &[("mint", "user/alice", "", 1)]);
        entries[0].settlement = Some(once.clone());
        entries[0].hash = entry_hash(&entries[0]);
        entries[0].signature = ledger.sign(entries[0].hash.as_bytes()).to_bytes().to_vec();
        let e = replay(&entries, &keys(&ledger)).unwrap_err();
        assert!(matches!(e, AuditError::Invalid { seq: 1, .. }), "{e}");
        // The hash covers the settlement: swapping it for another breaks the entry.
        let mut entries = chain(&ledger, twice);
        entries[2].settlement = Some(settlement(&verifier(), "t-1", &[("operator/acme", 40)]));
        let e = replay(&entries, &keys(&ledger)).unwrap_err();
        assert_eq!(e, AuditError::Hash { seq: 3 });
    }
}
