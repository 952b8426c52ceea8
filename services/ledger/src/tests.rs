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

async fn ledger(dir: &tempfile::TempDir) -> LedgerService {
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let db = zkmesh_kit::db::connect(&url).await.unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    LedgerService {
        store: Store::open(db, key, Counter::default()).await.unwrap(),
    }
}

/// What `zkmesh ledger audit` checks, against the tables and journal in the database, plus
/// the tip: the next entry the ledger writes follows the last one stored.
async fn audit(ledger: &LedgerService) -> Result<(), String> {
    let rows = sqlx::query("SELECT * FROM journal ORDER BY seq")
        .fetch_all(&ledger.store.db)
        .await
        .unwrap();
    let entries: Vec<JournalEntry> = rows.iter().map(entry_from_row).collect();
    let key = ledger.store.key.verifying_key().to_bytes();
    let replayed = replay(&entries, &key).map_err(|e| e.to_string())?;
    if !replayed.conserved() {
        return Err("not conserved".into());
    }
    let accounts = ledger
        .list_accounts(Request::new(Empty {}))
        .await
        .unwrap()
        .into_inner();
    let holds = ledger
        .list_holds(Request::new(Empty {}))
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
    let captured = ledger
        .capture(Request::new(CaptureRequest {
            task_id: "t-zero-captured".into(),
            payouts: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(captured.state(), HoldState::Captured);
    ledger
        .release(Request::new(ReleaseRequest {
            task_id: "t-zero-released".into(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    ledger
        .capture(Request::new(CaptureRequest {
            task_id: "t-paid".into(),
            payouts: vec![Payout {
                account: "operator/acme".into(),
                amount: 40,
            }],
        }))
        .await
        .unwrap();
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
    let write = || {
        ledger.store.commit(
            &[Movement {
                kind: "mint",
                account: "user/bob",
                task_id: "",
                amount: 1,
            }],
            |_| Box::pin(async { Ok(()) }),
        )
    };
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
    let refused = mint(&ledger, "user/alice", u64::MAX).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal")
        .fetch_one(&ledger.store.db)
        .await
        .unwrap();
    assert_eq!(entries, 2);
    audit(&ledger).await.unwrap();
}
