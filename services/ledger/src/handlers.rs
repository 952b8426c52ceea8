//! The gRPC handlers: who may read which account, and each RPC on top of the store.

use std::pin::Pin;

use sqlx::Row;
use tonic::{Request, Response, Status};
use zkmesh_kit::acl::caller;
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_kit::now_ms;
use zkmesh_kit::paging::Page;
use zkmesh_proto::ledger_service_server::LedgerService as LedgerApi;
use zkmesh_proto::*;

use crate::error::{LedgerError, Result};
use crate::store::{Movement, Store, amount, close_hold, entry_from_row, hold_from_row};

/// The ledger's gRPC service: the store behind the access rules.
pub struct LedgerService {
    pub(crate) store: Store,
    /// The verifier keys whose settlements a capture pays.
    pub(crate) verifiers: Vec<ed25519_dalek::VerifyingKey>,
}

/// The account a caller may read: its own unless it is an admin or a service.
pub(crate) fn readable_account(me: &Identity, requested: &str) -> Result<String> {
    if requested.is_empty() || requested == me.account() {
        return Ok(me.account());
    }
    match me.role {
        Role::Admin | Role::Service => Ok(requested.to_string()),
        _ => Err(LedgerError::Denied(format!(
            "{me} may read only its own account {}",
            me.account()
        ))),
    }
}

/// A write's outcome, where a retry of a request already done ([`LedgerError::Repeat`]) is
/// success: the caller answers the state as it is.
fn done_unless_repeated(done: Result<()>) -> Result<()> {
    match done {
        Err(LedgerError::Repeat) => Ok(()),
        other => other,
    }
}

#[tonic::async_trait]
impl LedgerApi for LedgerService {
    async fn mint(&self, req: Request<MintRequest>) -> Result<Response<MintResponse>, Status> {
        let req = req.into_inner();
        if req.account.is_empty() || req.amount == 0 {
            return Err(Status::invalid_argument(
                "mint needs an account and a positive amount",
            ));
        }
        let minting = amount(req.amount, "amount")?;
        if req.request_id.len() > 128 {
            return Err(Status::invalid_argument(
                "request_id is longer than 128 characters",
            ));
        }
        let request = (req.request_id.clone(), req.account.clone());
        let done = self
            .store
            .commit(
                &[Movement::plain(JournalEntryKind::Mint, &req.account, "", req.amount)],
                // Inside the write lock: all credits ever minted stay within i64, so no balance,
                // hold or payout can overflow a column however they gather.
                move |tx| {
                    Box::pin(async move {
                        let minted: i64 = sqlx::query_scalar(
                            "SELECT COALESCE(SUM(amount), 0) FROM journal WHERE kind = 'mint'",
                        )
                        .fetch_one(&mut *tx)
                        .await?;
                        let (request_id, account) = request;
                        if !request_id.is_empty() {
                            let before = sqlx::query(
                                "SELECT account, amount FROM mint_requests WHERE request_id = $1",
                            )
                            .bind(&request_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            if let Some(row) = before {
                                let same = row.get::<String, _>(0) == account
                                    && row.get::<i64, _>(1) == minting;
                                return Err(if same {
                                    LedgerError::Repeat
                                } else {
                                    LedgerError::RequestIdReused(format!(
                                        "request_id {request_id:?} minted another amount or account before"
                                    ))
                                });
                            }
                        }
                        if minted.checked_add(minting).is_none() {
                            return Err(LedgerError::SupplyLimit(format!(
                                "minting {minting} would take the credits in circulation past {}",
                                i64::MAX
                            )));
                        }
                        if !request_id.is_empty() {
                            sqlx::query(
                                "INSERT INTO mint_requests (request_id, account, amount, at_ms) VALUES ($1, $2, $3, $4)",
                            )
                            .bind(&request_id)
                            .bind(&account)
                            .bind(minting)
                            .bind(now_ms())
                            .execute(&mut *tx)
                            .await?;
                        }
                        Ok(())
                    })
                },
            )
            .await;
        done_unless_repeated(done)?;
        tracing::info!(account = %req.account, amount = req.amount, "minted");
        Ok(Response::new(MintResponse {
            account: Some(Account {
                balance: self.store.balance(&req.account).await?,
                account: req.account,
            }),
        }))
    }

    async fn get_balance(
        &self,
        req: Request<GetBalanceRequest>,
    ) -> Result<Response<GetBalanceResponse>, Status> {
        let me = caller(&req)?;
        let account = readable_account(&me, &req.into_inner().account)?;
        Ok(Response::new(GetBalanceResponse {
            account: Some(Account {
                balance: self.store.balance(&account).await?,
                account,
            }),
        }))
    }

    async fn list_accounts(
        &self,
        req: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 1000, 10_000)?;
        let (rows, journal_seq) = self
            .store
            .page_at_tip(
                "SELECT account, balance FROM accounts WHERE $1 IS NULL OR account > $2 ORDER BY account LIMIT $3",
                &page,
            )
            .await?;
        let accounts = rows
            .iter()
            .map(|r| Account {
                account: r.get(0),
                balance: r.get::<i64, _>(1) as u64,
            })
            .collect();
        let (accounts, next_page_token) = page.finish(accounts, |a| a.account.clone());
        Ok(Response::new(ListAccountsResponse {
            journal_seq,
            accounts,
            next_page_token,
        }))
    }

    async fn hold(&self, req: Request<HoldRequest>) -> Result<Response<HoldResponse>, Status> {
        let req = req.into_inner();
        if req.task_id.is_empty() || req.account.is_empty() {
            return Err(Status::invalid_argument("hold needs a task and an account"));
        }
        let want = amount(req.amount, "hold")?;
        let (task, account) = (req.task_id.clone(), req.account.clone());
        let done = self.store.commit(
            &[Movement::plain(JournalEntryKind::Hold, &req.account, &req.task_id, req.amount)],
            move |tx| {
                Box::pin(async move {
                    let before = sqlx::query("SELECT account, amount FROM holds WHERE task_id = $1")
                        .bind(&task)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(row) = before {
                        // A retried hold (its answer was lost) is answered as it stands.
                        let same = row.get::<String, _>(0) == account && row.get::<i64, _>(1) == want;
                        return Err(if same {
                            LedgerError::Repeat
                        } else {
                            LedgerError::Exists(format!("task {task} already has another hold"))
                        });
                    }
                    let balance = sqlx::query("SELECT balance FROM accounts WHERE account = $1")
                        .bind(&account)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.get::<i64, _>(0))
                        .unwrap_or(0);
                    if balance < want {
                        return Err(LedgerError::InsufficientCredits(format!(
                            "insufficient credits: {account} has {balance} micro-credits, the task needs {want} held"
                        )));
                    }
                    sqlx::query(
                        "INSERT INTO holds (task_id, account, amount, paid, refunded, state, created_at_ms) VALUES ($1, $2, $3, 0, 0, 'open', $4)",
                    )
                    .bind(&task)
                    .bind(&account)
                    .bind(want)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    Ok(())
                })
            },
        )
        .await;
        done_unless_repeated(done)?;
        Ok(Response::new(HoldResponse {
            hold: Some(self.store.hold_row(&req.task_id).await?),
        }))
    }

    async fn capture(
        &self,
        req: Request<CaptureRequest>,
    ) -> Result<Response<CaptureResponse>, Status> {
        let req = req.into_inner();
        // Only the verifier's word pays: its signed settlement for this task names every payee
        // and amount; the scheduler chooses nothing.
        let settlement = zkmesh_kit::settlement::open_for(
            req.settlement.as_ref(),
            &self.verifiers,
            &req.task_id,
        )
        .map_err(|e| LedgerError::SettlementInvalid(format!("task {}: {e}", req.task_id)))?;
        let paid = zkmesh_kit::settlement::total(&settlement).expect("checked by open");
        // A retried capture (its answer was lost) is answered again, and changes nothing.
        let current = self.store.hold_row(&req.task_id).await?;
        if current.state() == HoldState::Captured && current.paid == paid {
            return Ok(Response::new(CaptureResponse {
                hold: Some(current),
            }));
        }
        let hold = self.store.open_hold(&req.task_id).await?;
        if paid > hold.amount {
            return Err(LedgerError::SettlementInvalid(format!(
                "the settlement pays {paid}, more than the hold of {} for task {}",
                hold.amount, req.task_id
            ))
            .into());
        }
        let refund = hold.amount - paid;
        let mut movements: Vec<Movement> = settlement
            .payees
            .iter()
            .filter(|p| p.amount > 0)
            .map(|p| Movement {
                kind: JournalEntryKind::Pay,
                account: &p.account,
                task_id: &req.task_id,
                amount: p.amount,
                settlement: req.settlement.as_ref(),
            })
            .collect();
        // The refund closes the hold in the journal; a hold of nothing is closed by a refund of
        // nothing, so the journal and the holds table never disagree about it.
        if refund > 0 || movements.is_empty() {
            movements.push(Movement::plain(
                JournalEntryKind::Refund,
                &hold.account,
                &req.task_id,
                refund,
            ));
        }
        let task = req.task_id.clone();
        self.store
            .commit(&movements, move |tx| {
                Box::pin(async move { close_hold(tx, &task, "captured", paid, refund).await })
            })
            .await?;
        tracing::info!(task_id = %req.task_id, paid, refund, "captured");
        Ok(Response::new(CaptureResponse {
            hold: Some(self.store.hold_row(&req.task_id).await?),
        }))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let req = req.into_inner();
        let current = self.store.hold_row(&req.task_id).await?;
        if current.state() == HoldState::Released {
            return Ok(Response::new(ReleaseResponse {
                hold: Some(current),
            }));
        }
        let hold = self.store.open_hold(&req.task_id).await?;
        let task = req.task_id.clone();
        let amount_held = hold.amount;
        self.store
            .commit(
                &[Movement::plain(
                    JournalEntryKind::Release,
                    &hold.account,
                    &req.task_id,
                    hold.amount,
                )],
                move |tx| {
                    Box::pin(async move { close_hold(tx, &task, "released", 0, amount_held).await })
                },
            )
            .await?;
        tracing::info!(task_id = %req.task_id, reason = %req.reason, "released");
        Ok(Response::new(ReleaseResponse {
            hold: Some(self.store.hold_row(&req.task_id).await?),
        }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let me = caller(&req)?;
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 1000, 10_000)?;
        // The token is the last sequence number sent (as text).
        let after: i64 = match &page.after {
            None => 0,
            Some(seq) => seq.parse().map_err(|_| {
                Status::invalid_argument("page_token is not one this service issued")
            })?,
        };
        let rows = if !req.task_id.is_empty() && me.role == Role::Admin && req.account.is_empty() {
            sqlx::query("SELECT * FROM journal WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(&req.task_id)
                .bind(after)
                .bind(page.read_limit())
                .fetch_all(&self.store.db)
                .await
        } else {
            let account = readable_account(&me, &req.account)?;
            sqlx::query(
                "SELECT * FROM journal WHERE account = $1 AND ($2 = '' OR task_id = $3) AND seq > $4 ORDER BY seq LIMIT $5",
            )
            .bind(&account)
            .bind(&req.task_id)
            .bind(&req.task_id)
            .bind(after)
            .bind(page.read_limit())
            .fetch_all(&self.store.db)
            .await
        }
        .map_err(LedgerError::from)?;
        let entries: Vec<JournalEntry> = rows.iter().map(entry_from_row).collect();
        let (entries, next_page_token) = page.finish(entries, |e| e.seq.to_string());
        Ok(Response::new(HistoryResponse {
            entries,
            next_page_token,
        }))
    }

    type ReadJournalStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ReadJournalResponse, Status>> + Send>>;

    async fn read_journal(
        &self,
        req: Request<ReadJournalRequest>,
    ) -> Result<Response<Self::ReadJournalStream>, Status> {
        let from = req.into_inner().from_seq as i64;
        let db = self.store.db.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // Pages, so a long journal never sits in memory at once.
            let mut next = from;
            loop {
                let rows = match sqlx::query(
                    "SELECT * FROM journal WHERE seq >= $1 ORDER BY seq LIMIT 500",
                )
                .bind(next)
                .fetch_all(&db)
                .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(LedgerError::from(e)))).await;
                        return;
                    }
                };
                if rows.is_empty() {
                    return;
                }
                for row in &rows {
                    let entry = entry_from_row(row);
                    next = entry.seq as i64 + 1;
                    if tx
                        .send(Ok(ReadJournalResponse { entry: Some(entry) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_holds(
        &self,
        req: Request<ListHoldsRequest>,
    ) -> Result<Response<ListHoldsResponse>, Status> {
        let req = req.into_inner();
        let page = Page::of(req.page_size, &req.page_token, 1000, 10_000)?;
        let (rows, journal_seq) = self
            .store
            .page_at_tip(
                "SELECT * FROM holds WHERE $1 IS NULL OR task_id > $2 ORDER BY task_id LIMIT $3",
                &page,
            )
            .await?;
        let holds = rows.iter().map(hold_from_row).collect();
        let (holds, next_page_token) = page.finish(holds, |h| h.task_id.clone());
        Ok(Response::new(ListHoldsResponse {
            journal_seq,
            holds,
            next_page_token,
        }))
    }

    async fn get_ledger_key(
        &self,
        _req: Request<GetLedgerKeyRequest>,
    ) -> Result<Response<GetLedgerKeyResponse>, Status> {
        Ok(Response::new(GetLedgerKeyResponse {
            public_key: self.store.key.verifying_key().to_bytes().to_vec(),
        }))
    }
}
