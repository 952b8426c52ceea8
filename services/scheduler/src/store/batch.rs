//! The store's write path: a transition of the scheduler is a batch of [`Change`]s, stored in
//! one transaction (all or nothing), never one call per statement. Batches are the unit a
//! later store can commit in groups (several transitions per fsync) or send to PostgreSQL.

use prost::Message;
use sqlx::{Row, SqliteConnection};
use zkmesh_kit::now_ms;
use zkmesh_proto::*;

use crate::store::{AttemptRow, ReceiptList, Result, SqliteStore, attempt_state};

/// One change to the scheduler's state.
#[derive(Clone, Debug)]
pub enum Change {
    /// A lease: a new attempt of a task on a node (counted in the task's attempts).
    Lease {
        attempt_id: String,
        task_id: String,
        node_id: String,
        operator: String,
        lease_expires_at_ms: i64,
        /// It re-runs another attempt's result to check it.
        spot_check: bool,
    },
    /// The task's current result is to be checked by this many nodes of other operators.
    SpotChecks { task_id: String, checks: u32 },
    /// What a verdict adds to a node's record (each field a count to add).
    Record(NodeRecord),
    /// An attempt moves to one of [`attempt_state`]'s states.
    Attempt {
        attempt_id: String,
        state: &'static str,
    },
    /// A node's report of an attempt (the attempt becomes REPORTED).
    Report {
        report: Box<TaskReport>,
        receipt: Receipt,
    },
    /// An event of a task, which moves the task to `state`.
    Event {
        task_id: String,
        state: TaskState,
        message: String,
        node_id: String,
        log: String,
    },
    /// The accepted result of a task, from the attempt the verifier accepted first.
    Result {
        task_id: String,
        attempt: Box<AttemptRow>,
        verdict: TaskVerdict,
        receipts: Vec<Receipt>,
    },
    /// A verdict that accepted nothing.
    Verdict {
        task_id: String,
        verdict: Verdict,
        reason: String,
    },
    /// Micro-credits paid to nodes for a task.
    Charged { task_id: String, charged: u64 },
    /// The ledger has closed the task's hold (captured or released).
    HoldClosed { task_id: String },
}

impl Change {
    /// An event of `task_id` that moves it to `state`.
    pub fn event(task_id: &str, state: TaskState, message: impl Into<String>) -> Change {
        Change::node_event(task_id, state, message, "")
    }

    /// An event about `node_id`.
    pub fn node_event(
        task_id: &str,
        state: TaskState,
        message: impl Into<String>,
        node_id: &str,
    ) -> Change {
        Change::Event {
            task_id: task_id.to_string(),
            state,
            message: message.into(),
            node_id: node_id.to_string(),
            log: String::new(),
        }
    }

    /// Attempt `attempt_id` moves to `state`.
    pub fn attempt(attempt_id: &str, state: &'static str) -> Change {
        Change::Attempt {
            attempt_id: attempt_id.to_string(),
            state,
        }
    }
}

impl SqliteStore {
    /// Stores `changes` in one transaction and returns the events among them, numbered.
    pub(super) async fn apply_batch(&self, changes: &[Change]) -> Result<Vec<TaskEvent>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let mut events = Vec::new();
        let now = now_ms();
        for change in changes {
            if let Some(event) = write(&mut tx, change, now).await? {
                events.push(event);
            }
        }
        tx.commit().await?;
        Ok(events)
    }
}

async fn write(db: &mut SqliteConnection, change: &Change, now: i64) -> Result<Option<TaskEvent>> {
    match change {
        Change::Lease {
            attempt_id,
            task_id,
            node_id,
            operator,
            lease_expires_at_ms,
            spot_check,
        } => {
            sqlx::query(
                "INSERT INTO attempts (attempt_id, task_id, node_id, operator, state, lease_expires_at_ms, output, exit, exit_message, fuel_used, run_time_us, receipt, created_at_ms, spot_check)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, 0, '', 0, 0, NULL, $7, $8)",
            )
            .bind(attempt_id)
            .bind(task_id)
            .bind(node_id)
            .bind(operator)
            .bind(attempt_state::LEASED)
            .bind(lease_expires_at_ms)
            .bind(now)
            .bind(i64::from(*spot_check))
            .execute(&mut *db)
            .await?;
            sqlx::query("UPDATE tasks SET attempts = attempts + 1 WHERE task_id = $1")
                .bind(task_id)
                .execute(&mut *db)
                .await?;
        }
        Change::SpotChecks { task_id, checks } => {
            sqlx::query(
                "UPDATE tasks SET spot_checks = $1, spot_checks_at_ms = $2 WHERE task_id = $3",
            )
            .bind(i64::from(*checks))
            .bind(now)
            .bind(task_id)
            .execute(&mut *db)
            .await?;
        }
        Change::Record(r) => {
            sqlx::query(
                "INSERT INTO node_records (node_id, verified, rejected, spot_checks, spot_failures)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (node_id) DO UPDATE SET verified = verified + excluded.verified,
                    rejected = rejected + excluded.rejected,
                    spot_checks = spot_checks + excluded.spot_checks,
                    spot_failures = spot_failures + excluded.spot_failures",
            )
            .bind(&r.node_id)
            .bind(r.verified as i64)
            .bind(r.rejected as i64)
            .bind(r.spot_checks as i64)
            .bind(r.spot_failures as i64)
            .execute(&mut *db)
            .await?;
        }
        Change::Attempt { attempt_id, state } => {
            sqlx::query("UPDATE attempts SET state = $1 WHERE attempt_id = $2")
                .bind(*state)
                .bind(attempt_id)
                .execute(&mut *db)
                .await?;
        }
        Change::Report { report: r, receipt } => {
            sqlx::query(
                "UPDATE attempts SET state = $1, output = $2, exit = $3, exit_message = $4, fuel_used = $5, run_time_us = $6, receipt = $7, proof = $8, proof_error = $9, cpu_time_us = $10 WHERE attempt_id = $11",
            )
            .bind(attempt_state::REPORTED)
            .bind(&r.output)
            .bind(r.exit as i64)
            .bind(&r.exit_message)
            .bind(r.fuel_used as i64)
            .bind(r.run_time_us as i64)
            .bind(receipt.encode_to_vec())
            .bind(r.proof.as_ref().map(|p| p.encode_to_vec()))
            .bind(&r.proof_error)
            .bind(r.cpu_time_us as i64)
            .bind(&r.attempt_id)
            .execute(&mut *db)
            .await?;
        }
        Change::Event {
            task_id,
            state,
            message,
            node_id,
            log,
        } => {
            let seq: i64 =
                sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 FROM task_events WHERE task_id = $1")
                    .bind(task_id)
                    .fetch_one(&mut *db)
                    .await?
                    .get(0);
            sqlx::query("INSERT INTO task_events (task_id, seq, state, message, node_id, at_ms, log) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(task_id)
                .bind(seq)
                .bind(*state as i64)
                .bind(message)
                .bind(node_id)
                .bind(now)
                .bind(log)
                .execute(&mut *db)
                .await?;
            sqlx::query(
                "UPDATE tasks SET state = $1, message = $2, updated_at_ms = $3 WHERE task_id = $4",
            )
            .bind(*state as i64)
            .bind(message)
            .bind(now)
            .bind(task_id)
            .execute(&mut *db)
            .await?;
            return Ok(Some(TaskEvent {
                task_id: task_id.clone(),
                seq: seq as u64,
                state: *state as i32,
                message: message.clone(),
                node_id: node_id.clone(),
                at_ms: now,
                log: log.clone(),
            }));
        }
        Change::Result {
            task_id,
            attempt: a,
            verdict,
            receipts,
        } => {
            sqlx::query(
                "UPDATE tasks SET exit = $1, exit_message = $2, output = $3, output_hash = $4, fuel_used = $5, verdict = $6,
                    verdict_reason = $7, run_time_us = $8, receipts = $9, proof = $10, cpu_time_us = $11, settlement = $12 WHERE task_id = $13",
            )
            .bind(a.exit as i64)
            .bind(&a.exit_message)
            .bind(&a.output)
            .bind(&verdict.output_hash)
            .bind(a.fuel_used as i64)
            .bind(verdict.verdict as i64)
            .bind(&verdict.reason)
            .bind(a.run_time_us as i64)
            .bind(
                ReceiptList {
                    receipts: receipts.clone(),
                }
                .encode_to_vec(),
            )
            .bind(a.proof.as_ref().map(|p| p.encode_to_vec()))
            .bind(a.cpu_time_us as i64)
            .bind(verdict.settlement.as_ref().map(|s| s.encode_to_vec()))
            .bind(task_id)
            .execute(&mut *db)
            .await?;
        }
        Change::Verdict {
            task_id,
            verdict,
            reason,
        } => {
            sqlx::query("UPDATE tasks SET verdict = $1, verdict_reason = $2 WHERE task_id = $3")
                .bind(*verdict as i64)
                .bind(reason)
                .bind(task_id)
                .execute(&mut *db)
                .await?;
        }
        Change::Charged { task_id, charged } => {
            sqlx::query("UPDATE tasks SET credits_charged = $1 WHERE task_id = $2")
                .bind(*charged as i64)
                .bind(task_id)
                .execute(&mut *db)
                .await?;
        }
        Change::HoldClosed { task_id } => {
            sqlx::query("UPDATE tasks SET hold_closed = 1 WHERE task_id = $1")
                .bind(task_id)
                .execute(&mut *db)
                .await?;
        }
    }
    Ok(None)
}
