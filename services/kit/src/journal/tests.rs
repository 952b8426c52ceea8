//! The journal's chain, replay and table checks, and the attacks on them.

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
