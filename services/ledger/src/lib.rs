//! The ledger: the only authority on credits. Accounts, mints, holds on submission, capture
//! (nodes paid for the fuel they used, the rest refunded) and release, all recorded in an
//! append-only journal whose entries are hash-chained and signed by the ledger's key.
//!
//! Amounts are integer micro-credits. Every change to a balance or a hold happens in the same
//! SQL transaction as the journal entries that explain it, so the journal alone replays to the
//! balances (`zkmesh ledger audit` checks exactly that).

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey};
use serde::Deserialize;
use sqlx::Row;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use zkmesh_kit::acl::{Acl, Allow, caller};
use zkmesh_kit::config::ServerConfig;
use zkmesh_kit::db::{self, Pool};
use zkmesh_kit::error::{Code, ServiceError};
use zkmesh_kit::identity::{Identity, Role};
use zkmesh_kit::journal::{entry_hash, genesis_hash};
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::server::{ServeSpec, Serving, serve};
use zkmesh_kit::telemetry::Metrics;
use zkmesh_kit::tls::TlsPem;
use zkmesh_kit::{CancellationToken, now_ms};
use zkmesh_proto::ledger_service_server::{LedgerService as LedgerApi, LedgerServiceServer};
use zkmesh_proto::*;

/// The ledger's configuration (`zkmesh ledger serve --config FILE`, `ZKMESH_LEDGER_*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `[server]`: listen address, metrics, database, drain time and TLS.
    pub server: ServerConfig,
    /// The ledger's Ed25519 signing key (PKCS#8 PEM); created on first start.
    pub key_file: PathBuf,
    /// The registry, for the revocation list.
    pub registry_endpoint: String,
}

/// Where the ledger listens when `[server] listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7003";

pub static ACL: Acl = Acl {
    service: "zkmesh.v1.LedgerService",
    methods: &[
        ("Mint", &[Allow::Role(Role::Admin)]),
        (
            "GetBalance",
            &[
                Allow::Role(Role::Admin),
                Allow::Role(Role::User),
                Allow::Role(Role::Service),
            ],
        ),
        ("ListAccounts", &[Allow::Role(Role::Admin)]),
        ("Hold", &[Allow::Service("scheduler")]),
        ("Capture", &[Allow::Service("scheduler")]),
        ("Release", &[Allow::Service("scheduler")]),
        (
            "History",
            &[Allow::Role(Role::Admin), Allow::Role(Role::User)],
        ),
        ("ReadJournal", &[Allow::Role(Role::Admin)]),
        ("ListHolds", &[Allow::Role(Role::Admin)]),
        ("GetLedgerKey", &[Allow::AnyRole]),
    ],
};

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Why a ledger call failed; [`ServiceError::code`] decides the status.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Denied(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl ServiceError for LedgerError {
    fn code(&self) -> Code {
        match self {
            LedgerError::BadRequest(_) => Code::InvalidArgument,
            LedgerError::NotFound(_) => Code::NotFound,
            LedgerError::Precondition(_) => Code::FailedPrecondition,
            LedgerError::Exists(_) => Code::AlreadyExists,
            LedgerError::Denied(_) => Code::PermissionDenied,
            LedgerError::Db(_) => Code::Internal,
        }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Status {
        zkmesh_kit::error::status("ledger", &e)
    }
}

type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// One movement to journal.
struct Movement<'a> {
    kind: &'static str,
    account: &'a str,
    task_id: &'a str,
    amount: u64,
}

/// The tip of the chain; the mutex also serialises every write so the chain stays linear.
struct Tip {
    seq: u64,
    hash: String,
}

pub struct LedgerService {
    db: Pool,
    key: SigningKey,
    tip: Mutex<Tip>,
    entries: prometheus_client::metrics::counter::Counter,
}

/// Parses an Ed25519 PKCS#8 PEM key.
pub fn load_key_pem(pem: &str) -> anyhow::Result<SigningKey> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))
}

/// Loads the ledger key, creating it on first start.
pub fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    if path.exists() {
        let pem = std::fs::read_to_string(path)?;
        return load_key_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("encoding the ledger key: {e}"))?;
    zkmesh_kit::identity::write_file(path, pem.as_bytes(), true)?;
    Ok(key)
}

/// Starts the ledger; it runs until `shutdown` is cancelled.
pub async fn start(config: LedgerConfig, shutdown: CancellationToken) -> anyhow::Result<Serving> {
    let tls = TlsPem::load(&config.server.tls)?;
    let key = load_or_create_key(&config.key_file)?;
    let db = db::connect(&config.server.database_url).await?;
    db::migrate(&db, "ledger", &MIGRATOR).await?;
    let tip = match sqlx::query("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&db)
        .await?
    {
        Some(row) => Tip {
            seq: row.get::<i64, _>(0) as u64,
            hash: row.get(1),
        },
        None => Tip {
            seq: 0,
            hash: genesis_hash(),
        },
    };
    let metrics = Metrics::new("ledger");
    let revoked = RevocationList::default();
    let registry = zkmesh_kit::client::channel(&config.registry_endpoint, &(&tls).into())?;
    zkmesh_kit::revocation::follow_revocations(
        registry,
        revoked.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let service = LedgerService {
        db,
        key,
        tip: Mutex::new(tip),
        entries: metrics.counter("journal_entries", "Journal entries appended"),
    };
    Ok(serve(
        LedgerServiceServer::new(service),
        ServeSpec {
            name: "ledger",
            acl: &ACL,
            tls,
            listen: config.server.listen_or(DEFAULT_LISTEN),
            metrics_listen: config.server.metrics_listen.clone(),
            metrics,
            revoked,
            shutdown,
            grace: config.server.grace(),
        },
    )
    .await?)
}

fn amount(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| LedgerError::BadRequest(format!("{what} is too large")))
}

/// Closes an open hold inside the transaction that journals it. The state condition makes a
/// second capture or release impossible even when two race.
async fn close_hold(
    tx: &mut sqlx::SqliteConnection,
    task: &str,
    state: &str,
    paid: u64,
    refunded: u64,
) -> Result<()> {
    let changed = sqlx::query(
        "UPDATE holds SET state = $1, paid = $2, refunded = $3 WHERE task_id = $4 AND state = 'open'",
    )
    .bind(state)
    .bind(paid as i64)
    .bind(refunded as i64)
    .bind(task)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed != 1 {
        return Err(LedgerError::Precondition(format!(
            "the hold for task {task} is no longer open"
        )));
    }
    Ok(())
}

fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> JournalEntry {
    JournalEntry {
        seq: row.get::<i64, _>("seq") as u64,
        at_ms: row.get("at_ms"),
        kind: row.get("kind"),
        account: row.get("account"),
        task_id: row.get("task_id"),
        amount: row.get::<i64, _>("amount") as u64,
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
        signature: row.get("signature"),
    }
}

fn hold_from_row(row: &sqlx::sqlite::SqliteRow) -> HoldInfo {
    let state = match row.get::<String, _>("state").as_str() {
        "open" => HoldState::Open,
        "captured" => HoldState::Captured,
        _ => HoldState::Released,
    };
    HoldInfo {
        task_id: row.get("task_id"),
        account: row.get("account"),
        amount: row.get::<i64, _>("amount") as u64,
        paid: row.get::<i64, _>("paid") as u64,
        refunded: row.get::<i64, _>("refunded") as u64,
        state: state as i32,
    }
}

/// The account a caller may read: its own unless it is an admin or a service.
fn readable_account(me: &Identity, requested: &str) -> Result<String> {
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

impl LedgerService {
    /// Applies balance changes and appends their journal entries in one transaction.
    async fn commit<F>(&self, movements: &[Movement<'_>], extra: F) -> Result<()>
    where
        F: for<'c> FnOnce(
            &'c mut sqlx::SqliteConnection,
        )
            -> Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'c>>,
    {
        let mut tip = self.tip.lock().await;
        let mut tx = self.db.begin().await?;
        extra(&mut tx).await?;
        let mut seq = tip.seq;
        let mut prev = tip.hash.clone();
        for m in movements {
            let delta = amount(m.amount, "amount")?;
            let delta = if m.kind == "hold" { -delta } else { delta };
            if m.kind != "hold" || m.amount > 0 {
                sqlx::query(
                    "INSERT INTO accounts (account, balance) VALUES ($1, 0) ON CONFLICT (account) DO NOTHING",
                )
                .bind(m.account)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE account = $2")
                    .bind(delta)
                    .bind(m.account)
                    .execute(&mut *tx)
                    .await?;
            }
            seq += 1;
            let mut entry = JournalEntry {
                seq,
                at_ms: now_ms(),
                kind: m.kind.to_string(),
                account: m.account.to_string(),
                task_id: m.task_id.to_string(),
                amount: m.amount,
                prev_hash: prev.clone(),
                hash: String::new(),
                signature: Vec::new(),
            };
            entry.hash = entry_hash(&entry);
            entry.signature = self.key.sign(entry.hash.as_bytes()).to_bytes().to_vec();
            sqlx::query(
                "INSERT INTO journal (seq, at_ms, kind, account, task_id, amount, prev_hash, hash, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(seq as i64)
            .bind(entry.at_ms)
            .bind(&entry.kind)
            .bind(&entry.account)
            .bind(&entry.task_id)
            .bind(delta.abs())
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .bind(&entry.signature)
            .execute(&mut *tx)
            .await?;
            prev = entry.hash;
        }
        tx.commit().await?;
        self.entries.inc_by(seq - tip.seq);
        tip.seq = seq;
        tip.hash = prev;
        Ok(())
    }

    async fn balance(&self, account: &str) -> Result<u64> {
        let row = sqlx::query("SELECT balance FROM accounts WHERE account = $1")
            .bind(account)
            .fetch_optional(&self.db)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64).unwrap_or(0))
    }

    async fn hold_row(&self, task_id: &str) -> Result<HoldInfo> {
        let row = sqlx::query("SELECT * FROM holds WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("no hold for task {task_id}")))?;
        Ok(hold_from_row(&row))
    }

    async fn open_hold(&self, task_id: &str) -> Result<HoldInfo> {
        let hold = self.hold_row(task_id).await?;
        if hold.state() != HoldState::Open {
            return Err(LedgerError::Precondition(format!(
                "the hold for task {task_id} is already {}",
                if hold.state() == HoldState::Captured {
                    "captured"
                } else {
                    "released"
                }
            )));
        }
        Ok(hold)
    }
}

#[tonic::async_trait]
impl LedgerApi for LedgerService {
    async fn mint(&self, req: Request<MintRequest>) -> Result<Response<Account>, Status> {
        let req = req.into_inner();
        if req.account.is_empty() || req.amount == 0 {
            return Err(Status::invalid_argument(
                "mint needs an account and a positive amount",
            ));
        }
        amount(req.amount, "amount")?;
        let current = self.balance(&req.account).await?;
        if current
            .checked_add(req.amount)
            .is_none_or(|b| b > i64::MAX as u64)
        {
            return Err(Status::invalid_argument("the balance would overflow"));
        }
        self.commit(
            &[Movement {
                kind: "mint",
                account: &req.account,
                task_id: "",
                amount: req.amount,
            }],
            |_| Box::pin(async { Ok(()) }),
        )
        .await?;
        tracing::info!(account = %req.account, amount = req.amount, "minted");
        Ok(Response::new(Account {
            balance: self.balance(&req.account).await?,
            account: req.account,
        }))
    }

    async fn get_balance(&self, req: Request<AccountRef>) -> Result<Response<Account>, Status> {
        let me = caller(&req)?;
        let account = readable_account(&me, &req.into_inner().account)?;
        Ok(Response::new(Account {
            balance: self.balance(&account).await?,
            account,
        }))
    }

    async fn list_accounts(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        // Under the tip lock no write is in flight, so the rows and the tip are one snapshot.
        let tip = self.tip.lock().await;
        let rows = sqlx::query("SELECT account, balance FROM accounts ORDER BY account")
            .fetch_all(&self.db)
            .await
            .map_err(LedgerError::from)?;
        let journal_seq = tip.seq;
        drop(tip);
        Ok(Response::new(ListAccountsResponse {
            journal_seq,
            accounts: rows
                .iter()
                .map(|r| Account {
                    account: r.get(0),
                    balance: r.get::<i64, _>(1) as u64,
                })
                .collect(),
        }))
    }

    async fn hold(&self, req: Request<HoldRequest>) -> Result<Response<HoldInfo>, Status> {
        let req = req.into_inner();
        if req.task_id.is_empty() || req.account.is_empty() {
            return Err(Status::invalid_argument("hold needs a task and an account"));
        }
        let want = amount(req.amount, "hold")?;
        let (task, account) = (req.task_id.clone(), req.account.clone());
        self.commit(
            &[Movement {
                kind: "hold",
                account: &req.account,
                task_id: &req.task_id,
                amount: req.amount,
            }],
            move |tx| {
                Box::pin(async move {
                    let exists = sqlx::query("SELECT 1 FROM holds WHERE task_id = $1")
                        .bind(&task)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if exists.is_some() {
                        return Err(LedgerError::Exists(format!("task {task} already has a hold")));
                    }
                    let balance = sqlx::query("SELECT balance FROM accounts WHERE account = $1")
                        .bind(&account)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.get::<i64, _>(0))
                        .unwrap_or(0);
                    if balance < want {
                        return Err(LedgerError::Precondition(format!(
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
        .await?;
        Ok(Response::new(self.hold_row(&req.task_id).await?))
    }

    async fn capture(&self, req: Request<CaptureRequest>) -> Result<Response<HoldInfo>, Status> {
        let req = req.into_inner();
        let paid = req
            .payouts
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(p.amount))
            .ok_or_else(|| Status::invalid_argument("payouts overflow"))?;
        // A retried capture (its answer was lost) is answered again, and changes nothing.
        let current = self.hold_row(&req.task_id).await?;
        if current.state() == HoldState::Captured && current.paid == paid {
            return Ok(Response::new(current));
        }
        let hold = self.open_hold(&req.task_id).await?;
        if paid > hold.amount {
            return Err(Status::invalid_argument(format!(
                "payouts of {paid} exceed the hold of {}",
                hold.amount
            )));
        }
        let refund = hold.amount - paid;
        let mut movements: Vec<Movement> = req
            .payouts
            .iter()
            .filter(|p| p.amount > 0)
            .map(|p| Movement {
                kind: "pay",
                account: &p.account,
                task_id: &req.task_id,
                amount: p.amount,
            })
            .collect();
        if refund > 0 {
            movements.push(Movement {
                kind: "refund",
                account: &hold.account,
                task_id: &req.task_id,
                amount: refund,
            });
        }
        let task = req.task_id.clone();
        self.commit(&movements, move |tx| {
            Box::pin(async move { close_hold(tx, &task, "captured", paid, refund).await })
        })
        .await?;
        tracing::info!(task_id = %req.task_id, paid, refund, "captured");
        Ok(Response::new(self.hold_row(&req.task_id).await?))
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<HoldInfo>, Status> {
        let req = req.into_inner();
        let current = self.hold_row(&req.task_id).await?;
        if current.state() == HoldState::Released {
            return Ok(Response::new(current));
        }
        let hold = self.open_hold(&req.task_id).await?;
        let task = req.task_id.clone();
        let amount_held = hold.amount;
        self.commit(
            &[Movement {
                kind: "release",
                account: &hold.account,
                task_id: &req.task_id,
                amount: hold.amount,
            }],
            move |tx| {
                Box::pin(async move { close_hold(tx, &task, "released", 0, amount_held).await })
            },
        )
        .await?;
        tracing::info!(task_id = %req.task_id, reason = %req.reason, "released");
        Ok(Response::new(self.hold_row(&req.task_id).await?))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let me = caller(&req)?;
        let req = req.into_inner();
        let rows = if !req.task_id.is_empty() && me.role == Role::Admin && req.account.is_empty() {
            sqlx::query("SELECT * FROM journal WHERE task_id = $1 ORDER BY seq")
                .bind(&req.task_id)
                .fetch_all(&self.db)
                .await
        } else {
            let account = readable_account(&me, &req.account)?;
            sqlx::query(
                "SELECT * FROM journal WHERE account = $1 AND ($2 = '' OR task_id = $3) ORDER BY seq",
            )
            .bind(&account)
            .bind(&req.task_id)
            .bind(&req.task_id)
            .fetch_all(&self.db)
            .await
        }
        .map_err(LedgerError::from)?;
        Ok(Response::new(HistoryResponse {
            entries: rows.iter().map(entry_from_row).collect(),
        }))
    }

    type ReadJournalStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<JournalEntry, Status>> + Send>>;

    async fn read_journal(
        &self,
        req: Request<ReadJournalRequest>,
    ) -> Result<Response<Self::ReadJournalStream>, Status> {
        let from = req.into_inner().from_seq as i64;
        let db = self.db.clone();
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
                    if tx.send(Ok(entry)).await.is_err() {
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
        _req: Request<Empty>,
    ) -> Result<Response<ListHoldsResponse>, Status> {
        let tip = self.tip.lock().await;
        let rows = sqlx::query("SELECT * FROM holds ORDER BY task_id")
            .fetch_all(&self.db)
            .await
            .map_err(LedgerError::from)?;
        let journal_seq = tip.seq;
        drop(tip);
        Ok(Response::new(ListHoldsResponse {
            journal_seq,
            holds: rows.iter().map(hold_from_row).collect(),
        }))
    }

    async fn get_ledger_key(&self, _req: Request<Empty>) -> Result<Response<LedgerKey>, Status> {
        Ok(Response::new(LedgerKey {
            public_key: self.key.verifying_key().to_bytes().to_vec(),
        }))
    }
}
