//! `zkmesh ledger`: balances, minting, history, and the audit of the signed journal.

use std::path::PathBuf;

use serde_json::json;
use zkmesh_kit::lists::all_history;
use zkmesh_proto::*;

use crate::args::LedgerCommand;
use crate::commands::{client, configured};
use crate::render::safe;
use crate::{EXIT_CONFIG, EXIT_TASK, exit};
use zkmesh_client::audit::{remember_head, remembered_head};
use zkmesh_client::{Expect, audit_expecting};

/// `zkmesh ledger` (all but `serve`).
pub(crate) async fn ledger(mesh: &Option<PathBuf>, cmd: LedgerCommand) -> anyhow::Result<i32> {
    let api = client(mesh)?;
    match cmd {
        LedgerCommand::Balance { account } => {
            let mut l = if account.is_some() {
                api.admin_ledger()?
            } else {
                api.ledger()?
            };
            let a = l
                .get_balance(GetBalanceRequest {
                    account: account.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .account
                .unwrap_or_default();
            println!("{}  {} micro-credits", safe(&a.account), a.balance);
        }
        LedgerCommand::History {
            account,
            task,
            json,
        } => {
            let l = if account.is_some() || task.is_some() {
                api.admin_ledger()?
            } else {
                api.ledger()?
            };
            let (account, task_id) = (account.unwrap_or_default(), task.unwrap_or_default());
            let entries = all_history(&l, &account, &task_id).await?;
            for e in entries {
                let kind = JournalEntryKind::short_name_of(e.kind);
                if json {
                    println!(
                        "{}",
                        json!({"seq": e.seq, "at_ms": e.at_ms, "kind": kind, "account": e.account, "task_id": e.task_id, "amount": e.amount, "hash": e.hash})
                    );
                } else {
                    println!(
                        "{:>6}  {:<8} {:>14}  {:<24} {}",
                        e.seq,
                        kind,
                        e.amount,
                        safe(&e.account),
                        safe(&e.task_id)
                    );
                }
            }
        }
        LedgerCommand::Audit {
            json,
            expect,
            forget,
        } => {
            let pinned = api.config.ledger_public_key.clone().ok_or_else(|| {
                exit(
                    EXIT_CONFIG,
                    zkmesh_client::audit::UnpinnedLedgerKey.to_string(),
                )
            })?;
            if api.config.verifier_public_key.is_none() {
                return Err(exit(
                    EXIT_CONFIG,
                    zkmesh_client::audit::UnpinnedVerifierKey.to_string(),
                ));
            }
            // The last head an audit of this ledger passed is demanded again, so a ledger that
            // truncated and re-balanced its journal since fails.
            let config_dir = configured(mesh)
                .and_then(|p| p.parent().map(|d| d.to_path_buf()))
                .unwrap_or_else(|| PathBuf::from("."));
            let memory = zkmesh_client::audit::head_file(&config_dir, &pinned);
            let mut expects: Vec<Expect> = expect.into_iter().collect();
            if !forget {
                expects.extend(
                    remembered_head(&memory).map_err(|e| exit(EXIT_CONFIG, format!("{e:#}")))?,
                );
            }
            match audit_expecting(&api, &expects).await {
                Ok(r) => {
                    if let Err(e) = remember_head(&memory, &r) {
                        eprintln!(
                            "warning: the audit passed, but its head could not be remembered for the next audit: {}",
                            safe(&format!("{e:#}"))
                        );
                    }
                    if json {
                        println!(
                            "{}",
                            json!({"ok": true, "entries": r.entries, "accounts": r.accounts, "open_holds": r.open_holds, "minted": r.minted, "head_hash": r.head_hash, "tables_as_of": r.tables_as_of})
                        );
                    } else {
                        println!(
                            "audit passed: {} journal entries, {} accounts, {} open holds, {} micro-credits minted and conserved",
                            r.entries, r.accounts, r.open_holds, r.minted
                        );
                        if r.entries > 0 {
                            println!(
                                "the ledger's tables were checked as of journal entries {} to {}",
                                r.tables_as_of, r.entries
                            );
                            println!(
                                "the journal ends at {}:{} (a later `zkmesh ledger audit --expect {}:{}` checks the ledger kept it)",
                                r.entries, r.head_hash, r.entries, r.head_hash
                            );
                        }
                    }
                }
                Err(e) => {
                    if e.downcast_ref::<tonic::Status>().is_some() {
                        return Err(e);
                    }
                    if json {
                        println!("{}", json!({"ok": false, "reason": format!("{e:#}")}));
                    } else {
                        println!("audit FAILED: {}", safe(&format!("{e:#}")));
                    }
                    return Ok(EXIT_TASK);
                }
            }
        }
        LedgerCommand::Mint {
            account,
            amount,
            request_id,
        } => {
            let a = api
                .admin_ledger()?
                .mint(MintRequest {
                    account,
                    amount,
                    request_id: request_id.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .account
                .unwrap_or_default();
            println!("{}  {} micro-credits", safe(&a.account), a.balance);
        }
        LedgerCommand::Serve { .. } | LedgerCommand::Key { .. } => {
            unreachable!("handled in execute")
        }
    }
    Ok(0)
}
