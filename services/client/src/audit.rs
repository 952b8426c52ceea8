//! The ledger audit a client runs itself: it trusts nothing the ledger says about itself.

use anyhow::Context;
use serde::Serialize;
use zkmesh_proto::Empty;
use zkmesh_proto::*;

use crate::connection::MeshClient;

/// What `zkmesh ledger audit` found.
#[derive(Debug, Serialize)]
pub struct AuditReport {
    pub entries: u64,
    pub accounts: usize,
    pub open_holds: usize,
    pub minted: u64,
}

/// Re-checks the ledger: every journal entry's hash, chain link and signature (with the pinned
/// key when the config has one), the replayed balances and holds against the ledger's tables,
/// and that balances plus holds equal everything minted.
pub async fn audit(api: &MeshClient) -> anyhow::Result<AuditReport> {
    let mut ledger = api.admin_ledger()?;
    let served_key = ledger
        .get_ledger_key(Empty {})
        .await?
        .into_inner()
        .public_key;
    let key = match &api.config.ledger_public_key {
        Some(pinned) => {
            let pinned = hex::decode(pinned).context("ledger_public_key is not hex")?;
            anyhow::ensure!(
                pinned == served_key,
                "the ledger presents a different key than the one pinned in the client config"
            );
            pinned
        }
        None => served_key,
    };
    let mut stream = ledger
        .read_journal(ReadJournalRequest { from_seq: 1 })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(e) = stream.message().await? {
        entries.push(e);
    }
    let replay = zkmesh_kit::journal::replay(&entries, &key)?;
    anyhow::ensure!(
        replay.conserved(),
        "balances plus holds do not equal the {} micro-credits minted",
        replay.minted
    );
    let accounts = ledger.list_accounts(Empty {}).await?.into_inner().accounts;
    for a in &accounts {
        let replayed = replay.balances.get(&a.account).copied().unwrap_or(0);
        anyhow::ensure!(
            replayed == a.balance,
            "account {} holds {} but the journal gives {replayed}",
            a.account,
            a.balance
        );
    }
    for (account, balance) in &replay.balances {
        if *balance > 0 {
            anyhow::ensure!(
                accounts.iter().any(|a| &a.account == account),
                "the journal gives {account} {balance} but the ledger has no such account"
            );
        }
    }
    let holds = ledger.list_holds(Empty {}).await?.into_inner().holds;
    let open: Vec<&HoldInfo> = holds
        .iter()
        .filter(|h| h.state() == HoldState::Open)
        .collect();
    for h in &open {
        let replayed = replay.holds.get(&h.task_id).copied().unwrap_or(0);
        anyhow::ensure!(
            replayed == h.amount,
            "hold for task {} is {} but the journal gives {replayed}",
            h.task_id,
            h.amount
        );
    }
    anyhow::ensure!(
        open.len() == replay.holds.len(),
        "the ledger has {} open holds but the journal gives {}",
        open.len(),
        replay.holds.len()
    );
    Ok(AuditReport {
        entries: replay.entries,
        accounts: accounts.len(),
        open_holds: open.len(),
        minted: replay.minted,
    })
}
