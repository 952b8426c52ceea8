//! The scheduler's tables: modules, tasks, attempts and task events.

use prost::Message;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use zkmesh_kit::db::Pool;
use zkmesh_kit::now_ms;
use zkmesh_kit::paging::Page;
use zkmesh_proto::*;

mod batch;

pub use batch::Change;

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Attempt states (text in the table, for readable SQL).
pub mod attempt_state {
    pub const LEASED: &str = "leased";
    pub const RUNNING: &str = "running";
    pub const REPORTED: &str = "reported";
    pub const ACCEPTED: &str = "accepted";
    pub const REJECTED: &str = "rejected";
    pub const EXPIRED: &str = "expired";
    pub const CANCELLED: &str = "cancelled";
}

pub fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Settled | TaskState::Failed | TaskState::Cancelled
    )
}

/// A task row with everything the scheduler needs to run and report it.
#[derive(Clone, Debug)]
pub struct TaskRow {
    pub task: Task,
    pub input: Vec<u8>,
    pub result: TaskResult,
    /// The price its hold was made at (0: stored before prices were kept).
    pub micro_credits_per_million_fuel: u64,
    /// Receipt policy: nodes of other operators asked to re-run its current result (0-2).
    pub spot_checks: u32,
    /// When the current round of checks began.
    pub spot_checks_at_ms: i64,
}

#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub attempt_id: String,
    pub task_id: String,
    pub node_id: String,
    pub operator: String,
    pub state: String,
    pub output: Vec<u8>,
    pub exit: i32,
    pub exit_message: String,
    pub fuel_used: u64,
    pub run_time_us: u64,
    pub cpu_time_us: u64,
    pub receipt: Option<Receipt>,
    pub proof: Option<ZkProof>,
    /// Why the node made no proof (proof policy), as it reported.
    pub proof_error: String,
    /// This attempt re-runs another's result to check it.
    pub spot_check: bool,
}

#[derive(Clone)]
/// The embedded store: one SQLite file.
pub struct SqliteStore {
    pub pool: Pool,
}

type Result<T> = std::result::Result<T, sqlx::Error>;

/// The columns of a task's summary: everything but its input, output, receipts and proof.
macro_rules! task_summary {
    () => {
        "task_id, submitter, module_hash, input_hash, input_size, fuel_limit, memory_limit_mib, timeout_secs, policy_kind, replicas, state, message, attempts, credits_held, created_at_ms, updated_at_ms"
    };
}

/// A task from a row with at least the `task_summary!` columns.
fn task_of_row(row: &SqliteRow) -> Task {
    Task {
        task_id: row.get("task_id"),
        submitter: row.get("submitter"),
        module_hash: row.get("module_hash"),
        input_hash: row.get("input_hash"),
        input_size: row.get::<i64, _>("input_size") as u64,
        fuel_limit: row.get::<i64, _>("fuel_limit") as u64,
        memory_limit_mib: row.get::<i64, _>("memory_limit_mib") as u32,
        timeout_secs: row.get::<i64, _>("timeout_secs") as u32,
        policy: Some(VerificationPolicy {
            kind: row.get::<i64, _>("policy_kind") as i32,
            replicas: row.get::<i64, _>("replicas") as u32,
        }),
        state: row.get::<i64, _>("state") as i32,
        message: row.get("message"),
        attempts: row.get::<i64, _>("attempts") as u32,
        credits_held: row.get::<i64, _>("credits_held") as u64,
        created_at_ms: row.get("created_at_ms"),
        updated_at_ms: row.get("updated_at_ms"),
    }
}

fn task_from_row(row: &SqliteRow) -> TaskRow {
    let task = task_of_row(row);
    let policy = task.policy.unwrap_or_default();
    let receipts = row
        .get::<Option<Vec<u8>>, _>("receipts")
        .and_then(|b| ReceiptList::decode(b.as_slice()).ok())
        .map(|l| l.receipts)
        .unwrap_or_default();
    let result = TaskResult {
        task_id: task.task_id.clone(),
        state: task.state,
        exit: row.get::<i64, _>("exit") as i32,
        exit_message: row.get("exit_message"),
        output: row.get::<Option<Vec<u8>>, _>("output").unwrap_or_default(),
        output_hash: row.get("output_hash"),
        fuel_used: row.get::<i64, _>("fuel_used") as u64,
        verdict: row.get::<i64, _>("verdict") as i32,
        verdict_reason: row.get("verdict_reason"),
        credits_charged: row.get::<i64, _>("credits_charged") as u64,
        receipts,
        run_time_us: row.get::<i64, _>("run_time_us") as u64,
        cpu_time_us: row.get::<i64, _>("cpu_time_us") as u64,
        policy: task.policy,
        proof: row
            .get::<Option<Vec<u8>>, _>("proof")
            .and_then(|b| ZkProof::decode(b.as_slice()).ok()),
        input: Vec::new(),
    };
    let input: Vec<u8> = row.get("input");
    // Under the proof policy the input is part of what a result bundle must carry.
    let result = if policy.kind() == PolicyKind::Proof {
        TaskResult {
            input: input.clone(),
            ..result
        }
    } else {
        result
    };
    TaskRow {
        input,
        task,
        result,
        micro_credits_per_million_fuel: row.get::<i64, _>("micro_credits_per_million_fuel") as u64,
        spot_checks: row.get::<i64, _>("spot_checks") as u32,
        spot_checks_at_ms: row.get("spot_checks_at_ms"),
    }
}

fn attempt_from_row(row: &SqliteRow) -> AttemptRow {
    AttemptRow {
        attempt_id: row.get("attempt_id"),
        task_id: row.get("task_id"),
        node_id: row.get("node_id"),
        operator: row.get("operator"),
        state: row.get("state"),
        output: row.get::<Option<Vec<u8>>, _>("output").unwrap_or_default(),
        exit: row.get::<i64, _>("exit") as i32,
        exit_message: row.get("exit_message"),
        fuel_used: row.get::<i64, _>("fuel_used") as u64,
        run_time_us: row.get::<i64, _>("run_time_us") as u64,
        cpu_time_us: row.get::<i64, _>("cpu_time_us") as u64,
        receipt: row
            .get::<Option<Vec<u8>>, _>("receipt")
            .and_then(|b| Receipt::decode(b.as_slice()).ok()),
        proof: row
            .get::<Option<Vec<u8>>, _>("proof")
            .and_then(|b| ZkProof::decode(b.as_slice()).ok()),
        proof_error: row.get("proof_error"),
        spot_check: row.get::<i64, _>("spot_check") != 0,
    }
}

/// Receipts of a result, stored as one encoded message.
#[derive(Clone, PartialEq, prost::Message)]
struct ReceiptList {
    #[prost(message, repeated, tag = "1")]
    receipts: Vec<Receipt>,
}

pub struct NewTask<'a> {
    pub task_id: &'a str,
    pub submitter: &'a str,
    pub module_hash: &'a str,
    pub input: &'a [u8],
    pub input_hash: &'a str,
    pub fuel_limit: u64,
    pub memory_limit_mib: u32,
    pub timeout_secs: u32,
    pub policy: VerificationPolicy,
    pub credits_held: u64,
    /// The price the hold was made at; the settlement bills at it.
    pub micro_credits_per_million_fuel: u64,
    /// The client's idempotency key ("" for none).
    pub request_id: &'a str,
    /// Its hold was noted as pending ([`Store::add_pending_hold`]): the task is stored only if
    /// the note is still there (the sweep that gives back unfinished submissions' holds has not
    /// taken it), and the note goes with it.
    pub pending_hold: bool,
}

/// The message of the error [`Store::insert_task`] returns when the task's pending hold was
/// given back meanwhile (the submission took too long): the task is not stored.
pub const HOLD_GIVEN_BACK: &str = "the hold was given back before the task could be stored";

/// What one user has in the scheduler now, for the quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tasks submitted and not yet ended.
    pub tasks_in_flight: u64,
    /// Bytes of input of those tasks.
    pub queued_input_bytes: u64,
    /// Bytes of the modules the user uploaded.
    pub module_bytes: u64,
}

/// How far past its task's timeout a lease may be renewed.
#[derive(Clone, Copy, Debug)]
pub struct LeaseBound {
    /// For every attempt.
    pub slack_ms: i64,
    /// Also, for an attempt under the proof policy.
    pub proof_ms: i64,
}

/// The scheduler's tables, as its engine and handlers use them: reads by task, attempt and
/// state, and writes as batches of [`Change`]s (one transaction each). [`SqliteStore`] is the
/// embedded store; another database implements the same trait.
#[tonic::async_trait]
pub trait Store: Send + Sync {
    async fn module_info(&self, hash: &str) -> Result<Option<ModuleInfo>>;

    async fn module_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>>;

    /// The verifier's signed settlement of a verified task (what Capture pays from).
    async fn settlement(&self, task_id: &str) -> Result<Option<SignedSettlement>>;

    async fn insert_module(&self, info: &ModuleInfo, bytes: &[u8], uploaded_by: &str)
    -> Result<()>;

    async fn insert_task(&self, t: &NewTask<'_>) -> Result<()>;

    async fn task(&self, task_id: &str) -> Result<Option<TaskRow>>;

    /// A task without its input, output, receipts or proof: for ownership checks and answers
    /// that need no more, so they never load megabytes.
    async fn task_summary(&self, task_id: &str) -> Result<Option<Task>>;

    /// What `submitter` has in the scheduler now, for the quotas.
    async fn usage(&self, submitter: &str) -> Result<Usage>;

    /// Tasks newest first (by creation time, then task id, both descending), of `submitter`
    /// when given, after the task `after` = (created_at_ms, task_id) when given.
    async fn list_tasks(
        &self,
        submitter: Option<&str>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Task>>;

    /// Ids of the tasks waiting for nodes, oldest first (ids only: inputs can be large).
    async fn queued(&self, limit: u32) -> Result<Vec<String>>;

    /// Notes a hold about to be asked for a task not stored yet ([`Store::insert_task`]
    /// clears the note when it stores the task).
    async fn add_pending_hold(&self, task_id: &str, account: &str, amount: u64) -> Result<()>;

    /// Holds noted before `before_ms` and still pending: (task id, whether the task was stored).
    async fn pending_holds(&self, before_ms: i64) -> Result<Vec<(String, bool)>>;

    /// Clears a pending hold's note.
    async fn drop_pending_hold(&self, task_id: &str) -> Result<()>;

    /// Takes the note of a pending hold whose task was never stored, before its hold is given
    /// back: true if it was still there (a submission storing its task now finds it gone and
    /// stores nothing).
    async fn claim_unfinished_hold(&self, task_id: &str) -> Result<bool>;

    async fn tasks_in_state(&self, state: TaskState) -> Result<Vec<TaskRow>>;

    async fn attempts(&self, task_id: &str) -> Result<Vec<AttemptRow>>;

    async fn attempt(&self, attempt_id: &str) -> Result<Option<AttemptRow>>;

    /// Renews `node_id`'s own live leases among `attempt_ids` until `until_ms`, but never past
    /// the attempt's start plus its task's timeout plus `bound.slack_ms` (plus
    /// `bound.proof_ms` under the proof policy).
    async fn renew_leases(
        &self,
        node_id: &str,
        attempt_ids: &[String],
        until_ms: i64,
        bound: LeaseBound,
    ) -> Result<()>;

    /// Attempts whose lease ran out (or that belong to `node`, when given).
    async fn lapsed_attempts(&self, node: Option<&str>) -> Result<Vec<AttemptRow>>;

    /// What a node has already sent as progress for a task while it ran: the number of events,
    /// the bytes of guest log they carry (bytes: SQLite's `LENGTH` of a text stops at its first
    /// NUL), and whether one of them was the note `cut_note` that begins with.
    async fn progress_used(
        &self,
        task_id: &str,
        node_id: &str,
        cut_note: &str,
    ) -> Result<(u64, u64, bool)>;

    async fn events(&self, task_id: &str) -> Result<Vec<TaskEvent>>;

    /// Failed or cancelled tasks whose hold the ledger has not released yet.
    async fn unreleased_holds(&self) -> Result<Vec<String>>;

    /// Stores `changes` in one transaction and returns the events among them, numbered.
    async fn apply(&self, changes: &[Change]) -> Result<Vec<TaskEvent>>;

    /// Node records by node id, from after `page`'s key, one more than the page holds.
    async fn node_records(&self, page: &Page) -> Result<Vec<NodeRecord>>;

    /// One node's record (all zero when it has none yet).
    async fn node_record(&self, node_id: &str) -> Result<NodeRecord>;

    /// Whether `node_id` holds a live lease (leased or running) on a task of module `hash`.
    async fn leases_module(&self, node_id: &str, hash: &str) -> Result<bool>;

    /// Unended tasks whose round of spot checks began more than their timeout plus `slack_ms`
    /// ago.
    async fn overdue_spot_checks(&self, slack_ms: i64) -> Result<Vec<String>>;
}

impl SqliteStore {
    pub fn new(pool: Pool) -> SqliteStore {
        SqliteStore { pool }
    }
}

#[tonic::async_trait]
impl Store for SqliteStore {
    async fn module_info(&self, hash: &str) -> Result<Option<ModuleInfo>> {
        let row = sqlx::query(
            "SELECT module_hash, name, size, abi, imports, bytes FROM modules WHERE module_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            let (provable, provable_reason) = crate::provability(&r.get::<Vec<u8>, _>(5));
            ModuleInfo {
                module_hash: r.get(0),
                name: r.get(1),
                size: r.get::<i64, _>(2) as u64,
                abi: r.get::<i64, _>(3) as i32,
                imports: r
                    .get::<String, _>(4)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                provable,
                provable_reason,
            }
        }))
    }

    async fn module_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT bytes FROM modules WHERE module_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn settlement(&self, task_id: &str) -> Result<Option<SignedSettlement>> {
        let row = sqlx::query("SELECT settlement FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .and_then(|r| r.get::<Option<Vec<u8>>, _>(0))
            .and_then(|b| SignedSettlement::decode(b.as_slice()).ok()))
    }

    async fn insert_module(
        &self,
        info: &ModuleInfo,
        bytes: &[u8],
        uploaded_by: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO modules (module_hash, name, size, abi, imports, bytes, uploaded_by, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (module_hash) DO NOTHING",
        )
        .bind(&info.module_hash)
        .bind(&info.name)
        .bind(info.size as i64)
        .bind(info.abi as i64)
        .bind(info.imports.join(","))
        .bind(bytes)
        .bind(uploaded_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_task(&self, t: &NewTask<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tasks (task_id, submitter, module_hash, input, input_hash, fuel_limit, memory_limit_mib, timeout_secs,
                policy_kind, replicas, state, message, attempts, credits_held, exit, exit_message, output, output_hash,
                fuel_used, verdict, verdict_reason, credits_charged, run_time_us, receipts, hold_closed, created_at_ms, updated_at_ms, request_id, input_size,
                micro_credits_per_million_fuel)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, '', 0, $12, 0, '', NULL, '', 0, 0, '', 0, 0, NULL, 0, $13, $14, $15, $16, $17)",
        )
        .bind(t.task_id)
        .bind(t.submitter)
        .bind(t.module_hash)
        .bind(t.input)
        .bind(t.input_hash)
        .bind(t.fuel_limit as i64)
        .bind(t.memory_limit_mib as i64)
        .bind(t.timeout_secs as i64)
        .bind(t.policy.kind as i64)
        .bind(t.policy.replicas as i64)
        .bind(TaskState::Queued as i64)
        .bind(t.credits_held as i64)
        .bind(now)
        .bind(now)
        .bind(t.request_id)
        .bind(t.input.len() as i64)
        .bind(t.micro_credits_per_million_fuel as i64)
        .execute(&mut *tx)
        .await?;
        let noted = sqlx::query("DELETE FROM pending_holds WHERE task_id = $1")
            .bind(t.task_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if t.pending_hold && noted != 1 {
            return Err(sqlx::Error::Protocol(HOLD_GIVEN_BACK.into()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn add_pending_hold(&self, task_id: &str, account: &str, amount: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO pending_holds (task_id, account, amount, created_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO UPDATE SET created_at_ms = excluded.created_at_ms",
        )
        .bind(task_id)
        .bind(account)
        .bind(amount as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_holds(&self, before_ms: i64) -> Result<Vec<(String, bool)>> {
        let rows = sqlx::query(
            "SELECT p.task_id, t.task_id IS NOT NULL FROM pending_holds p LEFT JOIN tasks t ON t.task_id = p.task_id WHERE p.created_at_ms < $1",
        )
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn claim_unfinished_hold(&self, task_id: &str) -> Result<bool> {
        let taken = sqlx::query(
            "DELETE FROM pending_holds WHERE task_id = $1 AND NOT EXISTS (SELECT 1 FROM tasks WHERE task_id = $2)",
        )
        .bind(task_id)
        .bind(task_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn drop_pending_hold(&self, task_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM pending_holds WHERE task_id = $1")
            .bind(task_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task_summary(&self, task_id: &str) -> Result<Option<Task>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_summary!(),
            " FROM tasks WHERE task_id = $1"
        ))
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(task_of_row))
    }

    async fn usage(&self, submitter: &str) -> Result<Usage> {
        let tasks = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(input_size), 0) FROM tasks WHERE submitter = $1 AND state NOT IN ($2, $3, $4)",
        )
        .bind(submitter)
        .bind(TaskState::Settled as i64)
        .bind(TaskState::Failed as i64)
        .bind(TaskState::Cancelled as i64)
        .fetch_one(&self.pool)
        .await?;
        let modules: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM modules WHERE uploaded_by = $1")
                .bind(submitter)
                .fetch_one(&self.pool)
                .await?;
        Ok(Usage {
            tasks_in_flight: tasks.get::<i64, _>(0) as u64,
            queued_input_bytes: tasks.get::<i64, _>(1) as u64,
            module_bytes: modules as u64,
        })
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRow>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE task_id = $1")
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(task_from_row))
    }

    async fn list_tasks(
        &self,
        submitter: Option<&str>,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Task>> {
        let (after_ms, after_id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_summary!(),
            " FROM tasks WHERE ($1 = '' OR submitter = $2)
                AND (created_at_ms < $3 OR (created_at_ms = $4 AND task_id < $5) OR $6)
                ORDER BY created_at_ms DESC, task_id DESC LIMIT $7"
        ))
        .bind(submitter.unwrap_or(""))
        .bind(submitter.unwrap_or(""))
        .bind(after_ms)
        .bind(after_ms)
        .bind(&after_id)
        .bind(after_id.is_empty() && after_ms == i64::MAX)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(task_of_row).collect())
    }

    async fn queued(&self, limit: u32) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT task_id FROM tasks WHERE state = $1 ORDER BY created_at_ms, task_id LIMIT $2",
        )
        .bind(TaskState::Queued as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn tasks_in_state(&self, state: TaskState) -> Result<Vec<TaskRow>> {
        let rows = sqlx::query("SELECT * FROM tasks WHERE state = $1 ORDER BY created_at_ms")
            .bind(state as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(task_from_row).collect())
    }

    async fn attempts(&self, task_id: &str) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT * FROM attempts WHERE task_id = $1 ORDER BY created_at_ms, attempt_id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(attempt_from_row).collect())
    }

    async fn attempt(&self, attempt_id: &str) -> Result<Option<AttemptRow>> {
        let row = sqlx::query("SELECT * FROM attempts WHERE attempt_id = $1")
            .bind(attempt_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(attempt_from_row))
    }

    async fn renew_leases(
        &self,
        node_id: &str,
        attempt_ids: &[String],
        until_ms: i64,
        bound: LeaseBound,
    ) -> Result<()> {
        // One transaction for the whole heartbeat: one write to the database, however many.
        let mut tx = self.pool.begin().await?;
        for id in attempt_ids {
            sqlx::query(
                "UPDATE attempts SET lease_expires_at_ms = MIN($1, created_at_ms + $2 + (
                     SELECT timeout_secs * 1000 + CASE WHEN policy_kind = $3 THEN $4 ELSE 0 END
                     FROM tasks WHERE tasks.task_id = attempts.task_id))
                 WHERE attempt_id = $5 AND node_id = $6 AND state IN ('leased', 'running')",
            )
            .bind(until_ms)
            .bind(bound.slack_ms)
            .bind(PolicyKind::Proof as i64)
            .bind(bound.proof_ms)
            .bind(id)
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn lapsed_attempts(&self, node: Option<&str>) -> Result<Vec<AttemptRow>> {
        let rows = match node {
            Some(node) => sqlx::query("SELECT * FROM attempts WHERE state IN ('leased', 'running') AND node_id = $1")
                .bind(node)
                .fetch_all(&self.pool)
                .await?,
            None => sqlx::query("SELECT * FROM attempts WHERE state IN ('leased', 'running') AND lease_expires_at_ms < $1")
                .bind(now_ms())
                .fetch_all(&self.pool)
                .await?,
        };
        Ok(rows.iter().map(attempt_from_row).collect())
    }

    async fn progress_used(
        &self,
        task_id: &str,
        node_id: &str,
        cut_note: &str,
    ) -> Result<(u64, u64, bool)> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(log AS BLOB))), 0), \
             COALESCE(SUM(CASE WHEN substr(message, 1, length($4)) = $4 THEN 1 ELSE 0 END), 0) \
             FROM task_events WHERE task_id = $1 AND node_id = $2 AND state = $3",
        )
        .bind(task_id)
        .bind(node_id)
        .bind(TaskState::Running as i64)
        .bind(cut_note)
        .fetch_one(&self.pool)
        .await?;
        Ok((
            row.get::<i64, _>(0) as u64,
            row.get::<i64, _>(1) as u64,
            row.get::<i64, _>(2) > 0,
        ))
    }

    async fn events(&self, task_id: &str) -> Result<Vec<TaskEvent>> {
        let rows = sqlx::query("SELECT * FROM task_events WHERE task_id = $1 ORDER BY seq")
            .bind(task_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| TaskEvent {
                task_id: r.get("task_id"),
                seq: r.get::<i64, _>("seq") as u64,
                state: r.get::<i64, _>("state") as i32,
                message: r.get("message"),
                node_id: r.get("node_id"),
                at_ms: r.get("at_ms"),
                log: r.get("log"),
            })
            .collect())
    }

    async fn unreleased_holds(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT task_id FROM tasks WHERE hold_closed = 0 AND state IN ($1, $2)")
                .bind(TaskState::Failed as i64)
                .bind(TaskState::Cancelled as i64)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn apply(&self, changes: &[Change]) -> Result<Vec<TaskEvent>> {
        self.apply_batch(changes).await
    }

    async fn node_records(&self, page: &Page) -> Result<Vec<NodeRecord>> {
        let rows =
            sqlx::query("SELECT * FROM node_records WHERE node_id > $1 ORDER BY node_id LIMIT $2")
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(page.read_limit())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(record_from_row).collect())
    }

    async fn node_record(&self, node_id: &str) -> Result<NodeRecord> {
        let row = sqlx::query("SELECT * FROM node_records WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(record_from_row).unwrap_or(NodeRecord {
            node_id: node_id.to_string(),
            ..Default::default()
        }))
    }

    async fn leases_module(&self, node_id: &str, hash: &str) -> Result<bool> {
        let found = sqlx::query(
            "SELECT 1 FROM attempts a JOIN tasks t ON t.task_id = a.task_id
              WHERE a.node_id = $1 AND a.state IN ('leased', 'running') AND t.module_hash = $2 LIMIT 1",
        )
        .bind(node_id)
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn overdue_spot_checks(&self, slack_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT task_id FROM tasks WHERE spot_checks > 0 AND state IN ($1, $2, $3)
               AND spot_checks_at_ms + timeout_secs * 1000 + $4 < $5",
        )
        .bind(TaskState::Queued as i64)
        .bind(TaskState::Assigned as i64)
        .bind(TaskState::Running as i64)
        .bind(slack_ms)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

fn record_from_row(row: &SqliteRow) -> NodeRecord {
    NodeRecord {
        node_id: row.get("node_id"),
        verified: row.get::<i64, _>("verified") as u64,
        rejected: row.get::<i64, _>("rejected") as u64,
        spot_checks: row.get::<i64, _>("spot_checks") as u64,
        spot_failures: row.get::<i64, _>("spot_failures") as u64,
    }
}
