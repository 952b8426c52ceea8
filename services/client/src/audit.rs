//! The ledger audit a client runs itself: it trusts nothing the ledger says about itself.

use anyhow::Context;
use serde::Serialize;
use zkmesh_proto::Empty;
use zkmesh_proto::ledger_service_client::LedgerServiceClient;
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
    // The journal as it stands, then the ledger's tables, each with the last journal entry it
    // reflects (no older than the journal just read, so a ledger cannot pass by serving stale
    // tables), then the rest of the journal: a live ledger cannot race the audit.
    let mut entries = read_journal(&mut ledger, 1).await?;
    let head = entries.len() as u64;
    let listed = ledger.list_accounts(Empty {}).await?.into_inner();
    let (accounts, accounts_seq) = (listed.accounts, listed.journal_seq);
    let listed = ledger.list_holds(Empty {}).await?.into_inner();
    let (holds, holds_seq) = (listed.holds, listed.journal_seq);
    for seq in [accounts_seq, holds_seq] {
        anyhow::ensure!(
            seq >= head,
            "the ledger lists its tables as of journal entry {seq}, older than the {head} entries it had already served"
        );
    }
    entries.extend(read_journal(&mut ledger, head + 1).await?);
    let (replay, at) = zkmesh_kit::journal::replay_at(&entries, &key, &[accounts_seq, holds_seq])?;
    anyhow::ensure!(
        replay.conserved(),
        "balances plus holds do not equal the {} micro-credits minted",
        replay.minted
    );
    let snapshot = |seq: u64| {
        at.get(&seq).ok_or_else(|| {
            anyhow::anyhow!(
                "the ledger lists its tables as of journal entry {seq}, but its journal has {} entries",
                replay.entries
            )
        })
    };
    let balances = &snapshot(accounts_seq)?.balances;
    for a in &accounts {
        let replayed = balances.get(&a.account).copied().unwrap_or(0);
        anyhow::ensure!(
            replayed == a.balance,
            "account {} holds {} but the journal gives {replayed} (as of entry {accounts_seq})",
            a.account,
            a.balance
        );
    }
    for (account, balance) in balances {
        if *balance > 0 {
            anyhow::ensure!(
                accounts.iter().any(|a| &a.account == account),
                "the journal gives {account} {balance} but the ledger has no such account"
            );
        }
    }
    let replayed_holds = &snapshot(holds_seq)?.holds;
    let open: Vec<&HoldInfo> = holds
        .iter()
        .filter(|h| h.state() == HoldState::Open)
        .collect();
    for h in &open {
        let replayed = replayed_holds.get(&h.task_id).copied().unwrap_or(0);
        anyhow::ensure!(
            replayed == h.amount,
            "hold for task {} is {} but the journal gives {replayed} (as of entry {holds_seq})",
            h.task_id,
            h.amount
        );
    }
    anyhow::ensure!(
        open.len() == replayed_holds.len(),
        "the ledger has {} open holds but the journal gives {}",
        open.len(),
        replayed_holds.len()
    );
    Ok(AuditReport {
        entries: replay.entries,
        accounts: accounts.len(),
        open_holds: open.len(),
        minted: replay.minted,
    })
}

async fn read_journal(
    ledger: &mut LedgerServiceClient<tonic::transport::Channel>,
    from_seq: u64,
) -> anyhow::Result<Vec<JournalEntry>> {
    let mut stream = ledger
        .read_journal(ReadJournalRequest { from_seq })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(e) = stream.message().await? {
        entries.push(e);
    }
    Ok(entries)
}
