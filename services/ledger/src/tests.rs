//! The ledger's store and handlers without a mesh: what they write must always audit.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use prometheus_client::metrics::counter::Counter;
use tonic::Request;
use zkmesh_kit::journal::{check_accounts, check_holds, replay};
use zkmesh_proto::ledger_service_server::LedgerService as LedgerApi;
use zkmesh_proto::*;

use crate::handlers::LedgerService;
use crate::store::{Movement, Store, entry_from_row};

/// The verifier's settlement key in these tests.
fn verifier() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

async fn ledger(dir: &tempfile::TempDir) -> LedgerService {
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let db = zkmesh_kit::db::connect(&url).await.unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    LedgerService {
        store: Store::open(db, key, Counter::default()).await.unwrap(),
        verifiers: vec![verifier().verifying_key()],
    }
}

/// A settlement for `task` paying each `(account, amount)` at a micro-credit a fuel, signed
/// by `by`.
fn settlement(by: &SigningKey, task: &str, pays: &[(&str, u64)]) -> SignedSettlement {
    let payees = pays
        .iter()
        .map(|(account, amount)| SettlementPayee {
            account: account.to_string(),
            fuel: *amount,
            micro_credits_per_million_fuel: 1_000_000,
            amount: *amount,
            ..Default::default()
        })
        .collect();
    zkmesh_kit::settlement::sign(
        &Settlement {
            task_id: task.into(),
            payees,
            ..Default::default()
        },
        by,
    )
}

async fn capture(
    ledger: &LedgerService,
    task: &str,
    settlement: Option<SignedSettlement>,
) -> Result<HoldInfo, tonic::Status> {
    ledger
        .capture(Request::new(CaptureRequest {
            task_id: task.into(),
            settlement,
        }))
        .await
        .map(|r| r.into_inner().hold.unwrap())
}

/// What `zkmesh ledger audit` checks, against the tables and journal in the database, plus
/// the tip: the next entry the ledger writes follows the last one stored.
async fn audit(ledger: &LedgerService) -> Result<(), String> {
    let rows = sqlx::query("SELECT * FROM journal ORDER BY seq")
        .fetch_all(&ledger.store.db)
        .await
        .unwrap();
    let entries: Vec<JournalEntry> = rows.iter().map(entry_from_row).collect();
    let keys = zkmesh_kit::journal::TrustedKeys {
        ledger: ledger.store.key.verifying_key().to_bytes().to_vec(),
        verifiers: vec![verifier().verifying_key()],
    };
    let replayed = replay(&entries, &keys).map_err(|e| e.to_string())?;
    if !replayed.conserved() {
        return Err("not conserved".into());
    }
    let accounts = ledger
        .list_accounts(Request::new(ListAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let holds = ledger
        .list_holds(Request::new(ListHoldsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let head = entries.len() as u64;
    if accounts.journal_seq != head || holds.journal_seq != head {
        return Err(format!(
            "snapshots name entries {} and {}, the journal has {head}",
            accounts.journal_seq, holds.journal_seq
        ));
    }
    check_accounts(&replayed, &accounts.accounts)?;
    check_holds(&replayed, &holds.holds)
}

async fn mint(ledger: &LedgerService, account: &str, amount: u64) -> Result<(), tonic::Status> {
    ledger
        .mint(Request::new(MintRequest {
            account: account.into(),
            amount,
            request_id: String::new(),
        }))
        .await
        .map(|_| ())
}

async fn hold(ledger: &LedgerService, task: &str, amount: u64) {
    ledger
        .hold(Request::new(HoldRequest {
            task_id: task.into(),
            account: "user/alice".into(),
            amount,
        }))
        .await
        .unwrap();
}

/// With a price of zero every hold is of nothing; capturing one pays and refunds nothing, and
/// the journal must still say the hold closed (before, the table said captured and the
/// journal kept it open, so an honest ledger failed its audit).
#[tokio::test]
async fn holds_of_nothing_close_in_the_journal_too() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir).await;
    mint(&ledger, "user/alice", 100).await.unwrap();
    hold(&ledger, "t-zero-captured", 0).await;
    hold(&ledger, "t-zero-released", 0).await;
    hold(&ledger, "t-paid", 40).await;
    audit(&ledger).await.unwrap();
    let nothing = settlement(&verifier(), "t-zero-captured", &[("operator/acme", 0)]);
    let captured = capture(&ledger, "t-zero-captured", Some(nothing))
        .await
        .unwrap();
    assert_eq!(captured.state(), HoldState::Captured);
    ledger
        .release(Request::new(ReleaseRequest {
            task_id: "t-zero-released".into(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    let all = settlement(&verifier(), "t-paid", &[("operator/acme", 40)]);
    capture(&ledger, "t-paid", Some(all)).await.unwrap();
    audit(&ledger).await.unwrap();
}

/// Writes abandoned at every point (a caller's deadline, a dropped request) never leave the
/// tip behind a transaction that landed: every later write succeeds and the tables' snapshot
/// names the journal's last entry. The store is called directly, so a write that landed
/// without finishing was abandoned inside its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_abandoned_midway_leave_the_chain_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir).await;
    let mint = [Movement::plain(JournalEntryKind::Mint, "user/bob", "", 1)];
    let write = || ledger.store.commit(&mint, |_| Box::pin(async { Ok(()) }));
    let mut finished = 0u64;
    for i in 0..1000u64 {
        let deadline = Duration::from_micros(i * 13 % 1000);
        if let Ok(done) = tokio::time::timeout(deadline, write()).await {
            done.unwrap();
            finished += 1;
        }
        if i % 100 == 0 {
            audit(&ledger).await.unwrap();
        }
    }
    for _ in 0..3 {
        write().await.unwrap();
    }
    audit(&ledger).await.unwrap();
    let landed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal")
        .fetch_one(&ledger.store.db)
        .await
        .unwrap();
    eprintln!("{finished} writes finished in time, {landed} landed");
    assert!(landed as u64 >= finished + 3);
}

/// All credits ever minted stay within i64: a mint past it is refused and writes nothing, so
/// no balance, hold or payout can overflow however the credits gather.
#[tokio::test]
async fn minting_past_the_supply_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir).await;
    mint(&ledger, "user/alice", i64::MAX as u64 - 1)
        .await
        .unwrap();
    mint(&ledger, "user/bob", 1).await.unwrap();
    let refused = mint(&ledger, "user/carol", 1).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("in circulation"), "{refused:?}");
    assert_eq!(
        zkmesh_kit::error::reason_of(&refused).as_deref(),
        Some("SUPPLY_LIMIT")
    );
    let refused = mint(&ledger, "user/alice", u64::MAX).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal")
        .fetch_one(&ledger.store.db)
        .await
        .unwrap();
    assert_eq!(entries, 2);
    audit(&ledger).await.unwrap();
}

/// Accounts and holds come in pages that together list each exactly once, each page naming
/// the journal entry it reflects; a bad token is refused; a hold past the balance says why
/// in a machine-readable reason.
#[tokio::test]
async fn accounts_and_holds_are_paged_and_refusals_carry_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir).await;
    for i in 0..5 {
        mint(&ledger, &format!("user/u{i}"), 10).await.unwrap();
    }
    mint(&ledger, "user/alice", 100).await.unwrap();
    for i in 0..3 {
        hold(&ledger, &format!("t-{i}"), 10).await;
    }
    let mut token = String::new();
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = ledger
            .list_accounts(Request::new(ListAccountsRequest {
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.journal_seq, 9);
        assert!(page.accounts.len() <= 2);
        names.extend(page.accounts.into_iter().map(|a| a.account));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut want: Vec<String> = (0..5).map(|i| format!("user/u{i}")).collect();
    want.push("user/alice".into());
    want.sort();
    assert_eq!((names, pages), (want, 3));
    let holds = ledger
        .list_holds(Request::new(ListHoldsRequest {
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(holds.holds.len(), 2);
    let rest = ledger
        .list_holds(Request::new(ListHoldsRequest {
            page_size: 2,
            page_token: holds.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = holds
        .holds
        .iter()
        .chain(&rest.holds)
        .map(|h| h.task_id.as_str())
        .collect();
    assert_eq!(
        (ids, rest.next_page_token.as_str()),
        (vec!["t-0", "t-1", "t-2"], "")
    );
    let bad = ledger
        .list_holds(Request::new(ListHoldsRequest {
            page_size: 2,
            page_token: "zz".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let poor = ledger
        .hold(Request::new(HoldRequest {
            task_id: "t-too-much".into(),
            account: "user/alice".into(),
            amount: 1000,
        }))
        .await
        .unwrap_err();
    assert_eq!(poor.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        zkmesh_kit::error::reason_of(&poor).as_deref(),
        Some("INSUFFICIENT_CREDITS")
    );
    audit(&ledger).await.unwrap();
}

/// Retries are safe: a mint retried with its request id mints once; a hold retried for the same
/// task, account and amount holds once; either with a different request is refused.
#[tokio::test]
async fn retried_mints_and_holds_happen_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir).await;
    let mint_once = |amount: u64, account: &str| {
        ledger.mint(Request::new(MintRequest {
            account: account.into(),
            amount,
            request_id: "mint-1".into(),
        }))
    };
    for _ in 0..3 {
        let answer = mint_once(100, "user/alice").await.unwrap().into_inner();
        assert_eq!(answer.account.unwrap().balance, 100);
    }
    let reused = mint_once(5, "user/alice").await.unwrap_err();
    assert_eq!(reused.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        zkmesh_kit::error::reason_of(&reused).as_deref(),
        Some("REQUEST_ID_REUSED")
    );
    assert!(mint_once(100, "user/bob").await.is_err(), "another account");
    for _ in 0..3 {
        hold(&ledger, "t-1", 30).await;
    }
    let other = ledger
        .hold(Request::new(HoldRequest {
            task_id: "t-1".into(),
            account: "user/alice".into(),
            amount: 31,
        }))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists);
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal")
        .fetch_one(&ledger.store.db)
        .await
        .unwrap();
    assert_eq!(entries, 2, "one mint, one hold");
    assert_eq!(ledger.store.balance("user/alice").await.unwrap(), 70);
    audit(&ledger).await.unwrap();
}

/// The attack: the scheduler's key (stolen, or a scheduler that turned) asks the ledger to pay
/// an account of its choosing. Without a settlement the verifier signed for this very task,
/// naming that account and amount, nothing is paid and nothing is written; with one, exactly
/// its payees are paid, and a retry pays nothing more.
#[tokio::test]
async fn a_capture_pays_only_what_the_verifier_settled() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(&dir).await;
    mint(&ledger, "user/alice", 100).await.unwrap();
    hold(&ledger, "t-1", 50).await;
    hold(&ledger, "t-2", 10).await;
    let mallory = [("operator/mallory", 50)];
    let scheduler = SigningKey::from_bytes(&[5; 32]);
    let attacks = [
        ("no settlement", None),
        (
            "signed by another key",
            Some(settlement(&scheduler, "t-1", &mallory)),
        ),
        (
            "signed by the ledger's own key",
            Some(settlement(&ledger.store.key, "t-1", &mallory)),
        ),
        (
            "another task's settlement",
            Some(settlement(&verifier(), "t-2", &[("operator/acme", 10)])),
        ),
        (
            "more than the hold",
            Some(settlement(&verifier(), "t-1", &[("operator/acme", 51)])),
        ),
        (
            "to the submitter's own account",
            Some(settlement(&verifier(), "t-1", &[("user/alice", 50)])),
        ),
    ];
    for (what, s) in attacks {
        let refused = capture(&ledger, "t-1", s).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{what}");
        assert_eq!(
            zkmesh_kit::error::reason_of(&refused).as_deref(),
            Some("SETTLEMENT_INVALID"),
            "{what}"
        );
    }
    let entries = |db| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM journal")
            .fetch_one(db)
            .await
            .unwrap()
    };
    assert_eq!(entries(&ledger.store.db).await, 3, "nothing written");
    let honest = settlement(
        &verifier(),
        "t-1",
        &[("operator/acme", 20), ("operator/bolt", 5)],
    );
    for _ in 0..2 {
        let hold = capture(&ledger, "t-1", Some(honest.clone())).await.unwrap();
        assert_eq!((hold.paid, hold.refunded), (25, 25));
    }
    assert_eq!(ledger.store.balance("operator/acme").await.unwrap(), 20);
    assert_eq!(ledger.store.balance("operator/bolt").await.unwrap(), 5);
    assert_eq!(ledger.store.balance("user/alice").await.unwrap(), 65);
    // Each payout carries the settlement, and the audit checks it.
    let with: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal WHERE settlement IS NOT NULL")
        .fetch_one(&ledger.store.db)
        .await
        .unwrap();
    assert_eq!(with, 2);
    audit(&ledger).await.unwrap();
}
