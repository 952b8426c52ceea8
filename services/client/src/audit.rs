//! The ledger audit a client runs itself: it trusts nothing the ledger says about itself.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
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
    /// The oldest journal entry a page of the ledger's tables was taken at: the tables were
    /// checked as of entries from here to `entries`. The ledger chooses it within the bounds
    /// the audit sets (no older than the journal it had already served, nor than `--expect`),
    /// so a value far below `entries` on a quiet ledger deserves a look.
    pub tables_as_of: u64,
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

/// The client config pins no ledger key: an audit against the key the ledger itself serves
/// would accept a journal the ledger re-signed with any key, so none is run.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to audit without a pinned ledger key: set ledger_public_key (hex) in the client config; `zkmesh dev` writes it, and a ledger's operator publishes it (the ledger logs it at start and serves it with GetLedgerKey; compare out of band before pinning)"
)]
pub struct UnpinnedLedgerKey;

/// The client config pins no verifier key: payouts could not be checked against the
/// verifier's settlements, so no audit is run.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to audit without a pinned verifier key: set verifier_public_key (hex) in the client config; `zkmesh dev` writes it, and the verifier's operator publishes it (the verifier logs it at start and serves it with GetVerifierKey; compare out of band before pinning)"
)]
pub struct UnpinnedVerifierKey;

/// Re-checks the ledger: every journal entry's hash, chain link and signature with the key
/// pinned in the client config, the replayed balances and holds against the ledger's tables,
/// and that balances plus holds equal everything minted.
pub async fn audit(api: &MeshClient) -> anyhow::Result<AuditReport> {
    audit_expecting(api, &[]).await
}

/// [`audit`], also checking that the journal still holds each entry an earlier audit saw.
pub async fn audit_expecting(api: &MeshClient, expects: &[Expect]) -> anyhow::Result<AuditReport> {
    let pinned = api
        .config
        .ledger_public_key
        .as_deref()
        .ok_or(UnpinnedLedgerKey)?;
    let key = hex::decode(pinned).context("ledger_public_key is not hex")?;
    let verifier = api
        .config
        .verifier_public_key
        .as_deref()
        .ok_or(UnpinnedVerifierKey)?;
    let verifiers = zkmesh_kit::settlement::verifier_keys_hex(&[verifier])
        .map_err(|e| anyhow::anyhow!("verifier_public_key: {e}"))?;
    let keys = zkmesh_kit::journal::TrustedKeys {
        ledger: key.clone(),
        verifiers,
    };
    let mut ledger = api.admin_ledger()?;
    let served_key = ledger
        .get_ledger_key(GetLedgerKeyRequest {})
        .await?
        .into_inner()
        .public_key;
    anyhow::ensure!(
        key == served_key,
        "the ledger presents a different key than the one pinned in the client config"
    );
    // The journal as it stands, then the ledger's tables page by page, each page with the last
    // journal entry it reflects, then the rest of the journal: a live ledger cannot race the
    // audit. Each page is checked against the replay at its own entry, over the range of keys
    // it covers, so pages taken at different moments still add up to exact set equality. A
    // page may not be older than the journal the ledger already served in this audit, nor than
    // an entry an earlier audit saw (`--expect`): what the tables are compared with is at least
    // that recent, though only a pinned earlier entry bounds it from outside the ledger.
    let mut entries = read_journal(&mut ledger, 1).await?;
    let head = entries.len() as u64;
    let account_pages = read_pages(
        |page_token| {
            let mut ledger = ledger.clone();
            async move {
                let page = ledger
                    .list_accounts(ListAccountsRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((page.accounts, page.journal_seq, page.next_page_token))
            }
        },
        |a: &Account| a.account.clone(),
    )
    .await?;
    let hold_pages = read_pages(
        |page_token| {
            let mut ledger = ledger.clone();
            async move {
                let page = ledger
                    .list_holds(ListHoldsRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((page.holds, page.journal_seq, page.next_page_token))
            }
        },
        |h: &HoldInfo| h.task_id.clone(),
    )
    .await?;
    let floor = expects.iter().map(|e| e.seq).fold(head, u64::max);
    let seqs = (account_pages.iter().map(|p| p.journal_seq))
        .chain(hold_pages.iter().map(|p| p.journal_seq));
    for seq in seqs.clone() {
        anyhow::ensure!(
            seq >= floor,
            "the ledger lists its tables as of journal entry {seq}, older than entry {floor} it had already served"
        );
    }
    entries.extend(read_journal(&mut ledger, head + 1).await?);
    if let Some(seq) = seqs.max().filter(|&seq| seq > entries.len() as u64) {
        anyhow::bail!(
            "the ledger lists its tables as of journal entry {seq}, but its journal has {} entries",
            entries.len()
        );
    }
    // One pass over the journal, checking the pages taken at each entry when it gets there.
    let mut pages_at: BTreeMap<u64, PagesAt<'_>> = BTreeMap::new();
    for page in &account_pages {
        pages_at.entry(page.journal_seq).or_default().0.push(page);
    }
    for page in &hold_pages {
        pages_at.entry(page.journal_seq).or_default().1.push(page);
    }
    let replay = zkmesh_kit::journal::replay_visiting(&entries, &keys, |seq, replayed| {
        let Some((accounts, holds)) = pages_at.get(&seq) else {
            return Ok(());
        };
        for page in accounts {
            zkmesh_kit::journal::check_accounts_in(replayed, &page.items, page.range())?;
        }
        for page in holds {
            zkmesh_kit::journal::check_holds_in(replayed, &page.items, page.range())?;
        }
        Ok(())
    })?;
    anyhow::ensure!(
        replay.conserved(),
        "balances plus holds do not equal the {} micro-credits minted",
        replay.minted
    );
    let accounts: Vec<&Account> = account_pages.iter().flat_map(|p| &p.items).collect();
    let holds: Vec<&HoldInfo> = hold_pages.iter().flat_map(|p| &p.items).collect();
    let open_holds = holds
        .iter()
        .filter(|h| h.state() == HoldState::Open)
        .count();
    for expect in expects {
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
        tables_as_of: pages_at.keys().next().copied().unwrap_or(0),
        head_hash: entries.last().map(|e| e.hash.clone()).unwrap_or_default(),
        entries: replay.entries,
        accounts: accounts.len(),
        open_holds,
        minted: replay.minted,
    })
}

/// The pages of accounts and of holds the ledger took as of one journal entry.
type PagesAt<'a> = (Vec<&'a ListedPage<Account>>, Vec<&'a ListedPage<HoldInfo>>);

/// One page of a ledger table, with the range of keys it covers: after the previous page's last
/// key, up to and including its own last key (the last page: to the end).
struct ListedPage<T> {
    items: Vec<T>,
    journal_seq: u64,
    after: Option<String>,
    up_to: Option<String>,
}

impl<T> ListedPage<T> {
    fn range(&self) -> zkmesh_kit::journal::KeyRange<'_> {
        use std::ops::Bound;
        (
            self.after
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Excluded),
            self.up_to
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Included),
        )
    }
}

/// Every page of a ledger table. The ranges come from the items themselves, not from the
/// ledger's tokens: a ledger that skips keys, repeats them or lists one on the wrong page fails
/// the per-page check. An empty page that is not the last is refused (it would cover nothing
/// and could go on forever).
async fn read_pages<T, F, Fut>(
    mut fetch: F,
    key: impl Fn(&T) -> String,
) -> anyhow::Result<Vec<ListedPage<T>>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, u64, String), tonic::Status>>,
{
    let mut pages = Vec::new();
    let mut token = String::new();
    let mut after: Option<String> = None;
    loop {
        let (items, journal_seq, next) = fetch(std::mem::take(&mut token)).await?;
        if next.is_empty() {
            pages.push(ListedPage {
                items,
                journal_seq,
                after,
                up_to: None,
            });
            return Ok(pages);
        }
        let last = items.last().map(&key).ok_or_else(|| {
            anyhow::anyhow!("the ledger sent an empty page of its tables that is not the last")
        })?;
        // Pages move forward, so no page comes twice (the checks catch a page out of order
        // anyway, but only after the listing ends). A ledger can still list without end, as it
        // can stream a journal without end: run audits of an untrusted ledger with a timeout.
        if after.as_ref().is_some_and(|prev| last <= *prev) {
            anyhow::bail!("the ledger's pages of its tables do not move forward (at {last:?})");
        }
        pages.push(ListedPage {
            items,
            journal_seq,
            after: after.replace(last.clone()),
            up_to: Some(last),
        });
        token = next;
    }
}

/// The journal from `from_seq` on, as the ledger serves it (unchecked: [`audit`] checks it).
pub async fn read_journal(
    ledger: &mut LedgerServiceClient<tonic::transport::Channel>,
    from_seq: u64,
) -> anyhow::Result<Vec<JournalEntry>> {
    let mut stream = ledger
        .read_journal(ReadJournalRequest { from_seq })
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(e) = stream.message().await? {
        entries.push(e.entry.ok_or_else(|| {
            anyhow::anyhow!("the ledger sent a journal message without an entry")
        })?);
    }
    Ok(entries)
}

/// Where the CLI keeps the last head it audited for a ledger key: under `dir` (the client
/// config's directory), one file per key, `SEQ:HASH`.
pub fn head_file(dir: &std::path::Path, ledger_key_hex: &str) -> std::path::PathBuf {
    let name: String = ledger_key_hex
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    dir.join("ledger-heads").join(name)
}

/// The head an earlier audit of this ledger saw and remembered, if any.
pub fn remembered_head(file: &std::path::Path) -> anyhow::Result<Option<Expect>> {
    match std::fs::read_to_string(file) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", file.display())),
    }
}

/// Remembers the head a passed audit reached, for the next audit to demand.
pub fn remember_head(file: &std::path::Path, report: &AuditReport) -> anyhow::Result<()> {
    if report.entries == 0 {
        return Ok(());
    }
    zkmesh_kit::identity::write_file(
        file,
        format!("{}:{}\n", report.entries, report.head_hash).as_bytes(),
        false,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use zkmesh_kit::journal::{Replay, check_accounts_in};

    use super::*;

    fn account(name: &str, balance: u64) -> Account {
        Account {
            account: name.into(),
            balance,
        }
    }

    /// A ledger whose tables hold a, b, c, d at 1 each (as its journal says).
    fn replayed() -> Replay {
        Replay {
            balances: ["a", "b", "c", "d"]
                .into_iter()
                .map(|n| (n.to_string(), 1))
                .collect::<BTreeMap<_, _>>(),
            ..Replay::default()
        }
    }

    /// Serves `pages` (items and next token) in order, whatever token it is asked for, and
    /// checks each page the way the audit does.
    async fn audit_pages(pages: Vec<(Vec<&'static str>, &'static str)>) -> anyhow::Result<()> {
        let mut served = pages.into_iter();
        let listed = read_pages(
            |_token| {
                let (names, next) = served.next().unwrap_or_default();
                async move {
                    let items = names.into_iter().map(|n| account(n, 1)).collect();
                    Ok((items, 7, next.to_string()))
                }
            },
            |a: &Account| a.account.clone(),
        )
        .await?;
        let r = replayed();
        for page in &listed {
            check_accounts_in(&r, &page.items, page.range()).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn honest_pages_pass_and_dishonest_paging_is_caught() {
        audit_pages(vec![
            (vec!["a", "b"], "t1"),
            (vec!["c", "d"], "t2"),
            (vec![], ""),
        ])
        .await
        .unwrap();
        audit_pages(vec![(vec!["a", "b", "c", "d"], "")])
            .await
            .unwrap();
        // c withheld at a page boundary: the second page covers (b, end) and lacks it.
        let e = audit_pages(vec![(vec!["a", "b"], "t1"), (vec!["d"], "")]).await;
        assert!(e.unwrap_err().to_string().contains("c"));
        // b listed twice, on two pages: the second page does not cover it.
        let e = audit_pages(vec![(vec!["a", "b"], "t1"), (vec!["b", "c", "d"], "")]).await;
        assert!(e.unwrap_err().to_string().contains("does not cover"));
        // A page out of order (its last item is not its largest) lists d outside its range.
        let e = audit_pages(vec![(vec!["d", "a"], "t1"), (vec!["b", "c"], "")]).await;
        assert!(e.is_err());
        // The same page again and again would never end: refused as soon as it repeats.
        let e = audit_pages(vec![(vec!["a", "b"], "t1"), (vec!["a", "b"], "t1")]).await;
        assert!(e.unwrap_err().to_string().contains("do not move forward"));
        // An empty page that claims more follow would cover nothing, forever.
        let e = audit_pages(vec![(vec!["a"], "t1"), (vec![], "t2"), (vec!["b"], "")]).await;
        assert!(e.unwrap_err().to_string().contains("empty page"));
    }
}
