//! The ledger's SQL: the schema, and the one transaction that moves balances and holds and
//! appends the journal entries that explain them, under the chain's tip.

use std::pin::Pin;
use std::sync::Arc;

use ed25519_dalek::Signer;
use ed25519_dalek::SigningKey;
use prometheus_client::metrics::counter::Counter;
use sqlx::Row;
use tokio::sync::Mutex;
use zkmesh_kit::db::Pool;
use zkmesh_kit::journal::{entry_hash, genesis_hash};
use zkmesh_kit::now_ms;
use zkmesh_proto::*;

use crate::error::{LedgerError, Result};

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// One movement to journal.
pub(crate) struct Movement<'a> {
    pub(crate) kind: JournalEntryKind,
    pub(crate) account: &'a str,
    pub(crate) task_id: &'a str,
    pub(crate) amount: u64,
    /// Pay entries: the settlement the payment follows.
    pub(crate) settlement: Option<&'a SignedSettlement>,
}

impl<'a> Movement<'a> {
    /// A movement that no settlement explains (all but payouts).
    pub(crate) fn plain(
        kind: JournalEntryKind,
        account: &'a str,
        task_id: &'a str,
        amount: u64,
    ) -> Movement<'a> {
        Movement {
            kind,
            account,
            task_id,
            amount,
            settlement: None,
        }
    }
}

/// The tip of the chain; the mutex also serialises every write so the chain stays linear.
pub(crate) struct Tip {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

pub(crate) fn amount(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| LedgerError::BadRequest(format!("{what} is too large")))
}

/// Closes an open hold inside the transaction that journals it. The state condition makes a
/// second capture or release impossible even when two race.
pub(crate) async fn close_hold(
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

pub(crate) fn entry_from_row(row: &sqlx::sqlite::SqliteRow) -> JournalEntry {
    JournalEntry {
        seq: row.get::<i64, _>("seq") as u64,
        at_ms: row.get("at_ms"),
        // Stored by short name; a name no kind has (a corrupted row) fails any audit.
        kind: row
            .get::<String, _>("kind")
            .parse::<JournalEntryKind>()
            .map_or(JournalEntryKind::Unspecified as i32, |k| k as i32),
        account: row.get("account"),
        task_id: row.get("task_id"),
        amount: row.get::<i64, _>("amount") as u64,
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
        signature: row.get("signature"),
        // A stored settlement that does not decode reads as an empty one: the entry's hash no
        // longer matches, so an audit finds it.
        settlement: row
            .get::<Option<Vec<u8>>, _>("settlement")
            .map(|b| prost::Message::decode(b.as_slice()).unwrap_or_default()),
    }
}

pub(crate) fn hold_from_row(row: &sqlx::sqlite::SqliteRow) -> HoldInfo {
    let state = match row.get::<String, _>("state").as_str() {
        "open" => HoldState::Open,
        "captured" => HoldState::Captured,
        "released" => HoldState::Released,
        // Only the ledger writes the state; an audit reports a hold in no known state.
        _ => HoldState::Unspecified,
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

/// The last entry of the journal as stored.
async fn read_tip(db: &Pool) -> Result<Tip> {
    let row = sqlx::query("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
        .fetch_optional(db)
        .await?;
    Ok(match row {
        Some(row) => Tip {
            seq: row.get::<i64, _>(0) as u64,
            hash: row.get(1),
        },
        None => Tip {
            seq: 0,
            hash: genesis_hash(),
        },
    })
}

/// The ledger's state: the database, the signing key and the chain's tip.
pub(crate) struct Store {
    pub(crate) db: Pool,
    pub(crate) key: SigningKey,
    /// Held by every write (and by reads that must be one snapshot with the tip).
    pub(crate) tip: Arc<Mutex<Tip>>,
    pub(crate) entries: Counter,
}

impl Store {
    /// Migrates `db` and picks the chain up at its last entry.
    pub(crate) async fn open(
        db: Pool,
        key: SigningKey,
        entries: Counter,
    ) -> Result<Store, anyhow::Error> {
        zkmesh_kit::db::migrate(&db, "ledger", &MIGRATOR).await?;
        let tip = read_tip(&db).await?;
        Ok(Store {
            db,
            key,
            tip: Arc::new(Mutex::new(tip)),
            entries,
        })
    }

    /// One page of a table (`sql` binds the page's start twice, then its read limit) and the
    /// sequence number of the last journal entry it reflects. Under the tip lock no write is in
    /// flight, so the rows and the tip are one snapshot.
    pub(crate) async fn page_at_tip(
        &self,
        sql: &'static str,
        page: &zkmesh_kit::paging::Page,
    ) -> Result<(Vec<sqlx::sqlite::SqliteRow>, u64)> {
        let tip = self.tip.lock().await;
        let rows = sqlx::query(sql)
            .bind(page.after.as_deref())
            .bind(page.after.as_deref())
            .bind(page.read_limit())
            .fetch_all(&self.db)
            .await?;
        Ok((rows, tip.seq))
    }

    /// Applies balance changes and appends their journal entries in one transaction.
    pub(crate) async fn commit<F>(&self, movements: &[Movement<'_>], extra: F) -> Result<()>
    where
        F: for<'c> FnOnce(
            &'c mut sqlx::SqliteConnection,
        )
            -> Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'c>>,
    {
        let mut tip = self.tip.clone().lock_owned().await;
        let mut tx = self.db.begin().await?;
        extra(&mut tx).await?;
        let mut seq = tip.seq;
        let mut prev = tip.hash.clone();
        for m in movements {
            let delta = amount(m.amount, "amount")?;
            let hold = m.kind == JournalEntryKind::Hold;
            let delta = if hold { -delta } else { delta };
            if !hold || m.amount > 0 {
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
                kind: m.kind as i32,
                account: m.account.to_string(),
                task_id: m.task_id.to_string(),
                amount: m.amount,
                prev_hash: prev.clone(),
                hash: String::new(),
                signature: Vec::new(),
                settlement: m.settlement.cloned(),
            };
            entry.hash = entry_hash(&entry);
            entry.signature = self.key.sign(entry.hash.as_bytes()).to_bytes().to_vec();
            sqlx::query(
                "INSERT INTO journal (seq, at_ms, kind, account, task_id, amount, prev_hash, hash, signature, settlement) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(seq as i64)
            .bind(entry.at_ms)
            .bind(m.kind.short_name())
            .bind(&entry.account)
            .bind(&entry.task_id)
            .bind(delta.abs())
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .bind(&entry.signature)
            .bind(
                entry
                    .settlement
                    .as_ref()
                    .map(prost::Message::encode_to_vec),
            )
            .execute(&mut *tx)
            .await?;
            prev = entry.hash;
        }
        // Until here a caller that goes away (a deadline, a cancelled request) drops the
        // transaction, and it rolls back. From here on it may land even so, and the tip must
        // follow it, or the next write reuses a sequence number and snapshots name the wrong
        // entry: a task of its own, holding the lock, finishes the commit and the tip together.
        // If COMMIT reports an error it may still have landed: the tip is read back from the
        // journal then, so it never lags what is stored.
        let (entries, db) = (self.entries.clone(), self.db.clone());
        tokio::spawn(async move {
            match tx.commit().await {
                Ok(()) => {
                    entries.inc_by(seq - tip.seq);
                    tip.seq = seq;
                    tip.hash = prev;
                    Ok(())
                }
                Err(e) => {
                    *tip = read_tip(&db).await?;
                    Err(LedgerError::Db(e))
                }
            }
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("the commit task failed: {e}")))?
    }

    pub(crate) async fn balance(&self, account: &str) -> Result<u64> {
        let row = sqlx::query("SELECT balance FROM accounts WHERE account = $1")
            .bind(account)
            .fetch_optional(&self.db)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64).unwrap_or(0))
    }

    pub(crate) async fn hold_row(&self, task_id: &str) -> Result<HoldInfo> {
        let row = sqlx::query("SELECT * FROM holds WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| LedgerError::NotFound(format!("no hold for task {task_id}")))?;
        Ok(hold_from_row(&row))
    }

    pub(crate) async fn open_hold(&self, task_id: &str) -> Result<HoldInfo> {
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
