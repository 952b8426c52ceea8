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
    /// The hash of the last entry checked (empty for an empty journal). Keep it with `entries`:
    /// passing both to a later audit ([`Expect`]) proves the ledger kept that history, since a
    /// ledger that rewrote or withheld it cannot produce the same entry at the same place.
    pub head_hash: String,
}

/// A journal entry an earlier audit saw: the later audit fails unless the journal still has
/// it, unchanged, at the same place (`zkmesh ledger audit --expect SEQ:HASH`).
#[derive(Clone, Debug)]
pub struct Expect {
    pub seq: u64,
    pub hash: String,
}

impl std::str::FromStr for Expect {
    type Err = String;
    fn from_str(s: &str) -> Result<Expect, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or("expected SEQ:HASH, as an earlier audit printed them")?;
        let seq = seq
            .parse()
            .map_err(|_| format!("{seq:?} is not a journal sequence number"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{hash:?} is not a journal entry hash (64 hex digits)"
            ));
        }
        Ok(Expect {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// Re-checks the ledger: every journal entry's hash, chain link and signature (with the pinned
/// key when the config has one), the replayed balances and holds against the ledger's tables,
/// and that balances plus holds equal everything minted.
pub async fn audit(api: &MeshClient) -> anyhow::Result<AuditReport> {
    audit_expecting(api, None).await
}

/// [`audit`], also checking that the journal still holds an entry an earlier audit saw.
pub async fn audit_expecting(
    api: &MeshClient,
    expect: Option<&Expect>,
) -> anyhow::Result<AuditReport> {
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
    zkmesh_kit::journal::check_accounts(snapshot(accounts_seq)?, &accounts)
        .map_err(|e| anyhow::anyhow!("{e} (as of journal entry {accounts_seq})"))?;
    zkmesh_kit::journal::check_holds(snapshot(holds_seq)?, &holds)
        .map_err(|e| anyhow::anyhow!("{e} (as of journal entry {holds_seq})"))?;
    let open_holds = holds
        .iter()
        .filter(|h| h.state() == HoldState::Open)
        .count();
    if let Some(expect) = expect {
        let found = entries
            .get(
                usize::try_from(expect.seq)
                    .ok()
                    .and_then(|s| s.checked_sub(1))
                    .unwrap_or(usize::MAX),
            )
            .map(|e| e.hash.as_str());
        anyhow::ensure!(
            found == Some(expect.hash.as_str()),
            "the journal no longer holds entry {} with hash {} (it has {}): the ledger rewrote or withheld its history",
            expect.seq,
            expect.hash,
            found.unwrap_or("no such entry")
        );
    }
    Ok(AuditReport {
        head_hash: entries.last().map(|e| e.hash.clone()).unwrap_or_default(),
        entries: replay.entries,
        accounts: accounts.len(),
        open_holds,
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
