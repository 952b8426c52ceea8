//! The engine without a mesh: a real SQLite store, workers that are channels, and in-process
//! stand-ins for the registry, ledger and verifier behind the [`crate::peers`] traits. Leases,
//! placement, expiry, requeueing and settlement are driven step by step (no background loops).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tonic::Status;
use zkmesh_kit::CancellationToken;
use zkmesh_kit::revocation::RevocationList;
use zkmesh_kit::telemetry::Metrics;
use zkmesh_proto::*;

use crate::SchedulerConfig;
use crate::dispatch::Core;
use crate::peers::{Ledger, Peers, Registry, Verifier};
use crate::store::{NewTask, SqliteStore, attempt_state};

mod spot_checks;

struct Nodes(HashMap<String, Node>);

#[tonic::async_trait]
impl Registry for Nodes {
    async fn get_node(&self, node_id: &str) -> Result<Node, Status> {
        self.0
            .get(node_id)
            .cloned()
            .ok_or_else(|| Status::not_found(node_id.to_string()))
    }
    async fn list_nodes(&self) -> Result<Vec<Node>, Status> {
        Ok(self.0.values().cloned().collect())
    }
}

/// Records what the scheduler asks of the ledger.
#[derive(Default)]
struct Books {
    captures: Mutex<Vec<CaptureRequest>>,
    releases: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl Ledger for Books {
    async fn hold(&self, req: HoldRequest) -> Result<HoldInfo, Status> {
        Ok(HoldInfo {
            task_id: req.task_id,
            amount: req.amount,
            ..Default::default()
        })
    }
    async fn capture(&self, req: CaptureRequest) -> Result<HoldInfo, Status> {
        let settlement = zkmesh_kit::settlement::open_for(
            req.settlement.as_ref(),
            &[judge_key().verifying_key()],
            &req.task_id,
        )
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let paid = zkmesh_kit::settlement::total(&settlement).unwrap();
        self.captures.lock().unwrap().push(req);
        Ok(HoldInfo {
            paid,
            ..Default::default()
        })
    }
    async fn release(&self, req: ReleaseRequest) -> Result<HoldInfo, Status> {
        self.releases.lock().unwrap().push(req.task_id);
        Ok(HoldInfo::default())
    }
}

/// The stand-in verifier's settlement key.
fn judge_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9; 32])
}

/// Accepts every report (settling each for its receipt's fuel), or rejects them all while
/// `reject` is set, or leaves one spot check undecided while `undecided` is set.
#[derive(Default)]
struct Judge {
    reject: Mutex<bool>,
    undecided: Mutex<bool>,
    /// Answers as a verifier that knows nothing of spot checks.
    forget_checks: Mutex<bool>,
    asked: Mutex<usize>,
    last: Mutex<Option<VerifyResultRequest>>,
}

#[tonic::async_trait]
impl Verifier for Judge {
    async fn check_policy(&self, _: VerificationPolicy) -> Result<(), Status> {
        Ok(())
    }
    async fn list_circuits(&self) -> Result<Vec<CircuitInfo>, Status> {
        Ok(vec![])
    }
    async fn verify_result(&self, req: VerifyResultRequest) -> Result<TaskVerdict, Status> {
        *self.asked.lock().unwrap() += 1;
        *self.last.lock().unwrap() = Some(req.clone());
        let ids: Vec<String> = req.reports.iter().map(|r| r.attempt_id.clone()).collect();
        let checks = req.spot_checks;
        let mut verdict = if *self.undecided.lock().unwrap() && req.spot_checks == 1 {
            TaskVerdict {
                task_id: req.task_id,
                verdict: Verdict::Pending as i32,
                reason: "the stand-in finds the check disagreeing".into(),
                ..Default::default()
            }
        } else if *self.reject.lock().unwrap() {
            TaskVerdict {
                task_id: req.task_id,
                verdict: Verdict::Rejected as i32,
                reason: "the stand-in rejects".into(),
                rejected_attempt_ids: ids,
                ..Default::default()
            }
        } else {
            let price = req.micro_credits_per_million_fuel;
            let payees = req
                .reports
                .iter()
                .map(|r| {
                    let fuel = r.receipt.as_ref().map_or(0, |x| x.fuel_used);
                    SettlementPayee {
                        account: format!("operator/{}", r.operator),
                        node_id: r.node_id.clone(),
                        attempt_id: r.attempt_id.clone(),
                        fuel,
                        micro_credits_per_million_fuel: price,
                        amount: crate::cost(fuel, price),
                    }
                })
                .collect();
            let settlement = zkmesh_kit::settlement::sign(
                &Settlement {
                    task_id: req.task_id.clone(),
                    payees,
                    ..Default::default()
                },
                &judge_key(),
            );
            TaskVerdict {
                task_id: req.task_id,
                verdict: Verdict::Verified as i32,
                reason: "the stand-in accepts".into(),
                accepted_attempt_ids: ids,
                output_hash: req.reports[0].observed_output_hash.clone(),
                settlement: Some(settlement),
                ..Default::default()
            }
        };
        if !*self.forget_checks.lock().unwrap() {
            verdict.spot_checks = checks;
        }
        Ok(verdict)
    }
}

type Inbox = mpsc::Receiver<Result<WorkResponse, Status>>;

struct Bench {
    core: Core,
    pool: zkmesh_kit::db::Pool,
    books: Arc<Books>,
    judge: Arc<Judge>,
    _dir: tempfile::TempDir,
}

fn config(overrides: &[(&str, &str)]) -> SchedulerConfig {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/config/scheduler.toml");
    let env = overrides
        .iter()
        .map(|(k, v)| (format!("ZKMESH_SCHEDULER_{k}"), v.to_string()))
        .collect();
    zkmesh_kit::config::load(Some(&example), "scheduler", &env).unwrap()
}

/// A scheduler engine whose nodes are `(node_id, operator)`, all active.
async fn bench(nodes: &[(&str, &str)], overrides: &[(&str, &str)]) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("scheduler.db").display());
    let pool = zkmesh_kit::db::connect(&url).await.unwrap();
    zkmesh_kit::db::migrate(&pool, "scheduler", &crate::store::MIGRATOR)
        .await
        .unwrap();
    let registry = Nodes(
        nodes
            .iter()
            .map(|(id, operator)| {
                let node = Node {
                    node_id: id.to_string(),
                    operator: operator.to_string(),
                    status: NodeStatus::Active as i32,
                    ..Default::default()
                };
                (id.to_string(), node)
            })
            .collect(),
    );
    let books = Arc::new(Books::default());
    let judge = Arc::new(Judge::default());
    let peers = Peers {
        registry: Arc::new(registry),
        ledger: books.clone(),
        verifier: judge.clone(),
    };
    // No spot checks unless a test asks: which results are checked is random.
    let overrides: Vec<(&str, &str)> = std::iter::once(("SPOT_CHECK_RATE", "0.0"))
        .chain(overrides.iter().copied())
        .collect();
    let core = Core::new(
        config(&overrides),
        Arc::new(SqliteStore::new(pool.clone())),
        peers,
        RevocationList::default(),
        &Metrics::new("scheduler"),
        CancellationToken::new(),
    );
    Bench {
        core,
        pool,
        books,
        judge,
        _dir: dir,
    }
}

impl Bench {
    async fn connect(&self, node_id: &str, operator: &str, slots: u32) -> Inbox {
        let (tx, rx) = mpsc::channel(16);
        self.core.register(node_id, operator, slots, tx).await;
        rx
    }

    async fn submit(&self, task_id: &str, policy: VerificationPolicy) {
        self.submit_at(task_id, policy, 1000).await
    }

    /// [`Bench::submit`], with the hold made at `price` micro-credits per million fuel.
    async fn submit_at(&self, task_id: &str, policy: VerificationPolicy, price: u64) {
        let store = &self.core.store;
        store
            .insert_module(
                &ModuleInfo {
                    module_hash: "m".into(),
                    name: "m".into(),
                    ..Default::default()
                },
                b"\0asm",
                "user/alice",
            )
            .await
            .unwrap();
        store
            .insert_task(&NewTask {
                task_id,
                submitter: "user/alice",
                module_hash: "m",
                input: b"in",
                input_hash: "h",
                fuel_limit: 1_000_000,
                memory_limit_mib: 16,
                timeout_secs: 10,
                policy,
                credits_held: 5_000,
                micro_credits_per_million_fuel: price,
                request_id: "",
                pending_hold: false,
            })
            .await
            .unwrap();
    }

    async fn state(&self, task_id: &str) -> TaskState {
        self.core
            .store
            .task(task_id)
            .await
            .unwrap()
            .unwrap()
            .task
            .state()
    }

    async fn attempt_states(&self, task_id: &str) -> Vec<(String, String)> {
        self.core
            .store
            .attempts(task_id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.node_id, a.state))
            .collect()
    }

    /// Makes every lease of `task_id` lapse, as if its node stopped heartbeating long ago.
    async fn lapse(&self, task_id: &str) {
        sqlx::query("UPDATE attempts SET lease_expires_at_ms = 0 WHERE task_id = $1")
            .bind(task_id)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

fn receipt() -> VerificationPolicy {
    VerificationPolicy {
        kind: PolicyKind::Receipt as i32,
        replicas: 0,
    }
}

fn replicate(k: u32) -> VerificationPolicy {
    VerificationPolicy {
        kind: PolicyKind::Replicate as i32,
        replicas: k,
    }
}

/// The assignments waiting in a worker's inbox.
fn assignments(inbox: &mut Inbox) -> Vec<Assignment> {
    let mut out = Vec::new();
    while let Ok(Ok(m)) = inbox.try_recv() {
        if let Some(work_response::Kind::Assignment(a)) = m.kind {
            out.push(a);
        }
    }
    out
}

/// The attempts a worker was told to stop.
fn cancels(inbox: &mut Inbox) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Ok(m)) = inbox.try_recv() {
        if let Some(work_response::Kind::Cancel(c)) = m.kind {
            out.push(c.attempt_id);
        }
    }
    out
}

fn report(attempt_id: &str, fuel: u64, signed_fuel: u64) -> TaskReport {
    TaskReport {
        attempt_id: attempt_id.into(),
        output: b"out".to_vec(),
        exit: ExitKind::Ok as i32,
        fuel_used: fuel,
        receipt: Some(Receipt {
            fuel_used: signed_fuel,
            exit: ExitKind::Ok as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn replicas_go_to_nodes_of_distinct_operators_and_one_replica_to_the_freest_node() {
    let b = bench(&[("n1", "acme"), ("n2", "acme"), ("n3", "zeta")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 4).await;
    let mut n2 = b.connect("n2", "acme", 4).await;
    let mut n3 = b.connect("n3", "zeta", 1).await;
    b.submit("t-rep", replicate(2)).await;
    b.core.dispatch_once().await.unwrap();
    assert_eq!(b.state("t-rep").await, TaskState::Assigned);
    let (a1, a2, a3) = (
        assignments(&mut n1),
        assignments(&mut n2),
        assignments(&mut n3),
    );
    // One replica on zeta's only node, one on one of acme's: never two on acme.
    assert_eq!(a3.len(), 1);
    assert_eq!(a1.len() + a2.len(), 1);
    // n3's only slot is taken; a single-replica task goes to the acme node with most room,
    // the one without the replica.
    let with_replica = if a1.is_empty() { "n2" } else { "n1" };
    b.submit("t-one", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let (a1, a2, a3) = (
        assignments(&mut n1),
        assignments(&mut n2),
        assignments(&mut n3),
    );
    assert!(a3.is_empty());
    let chosen = match (a1.len(), a2.len()) {
        (1, 0) => "n1",
        (0, 1) => "n2",
        other => panic!("expected one assignment, got {other:?}"),
    };
    assert_ne!(chosen, with_replica);
}

#[tokio::test]
async fn replicate_waits_for_enough_operators() {
    let b = bench(&[("n1", "acme"), ("n2", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 4).await;
    let mut n2 = b.connect("n2", "acme", 4).await;
    b.submit("t", replicate(2)).await;
    b.core.dispatch_once().await.unwrap();
    // One replica leased; the second waits for a node of another operator.
    assert_eq!(assignments(&mut n1).len() + assignments(&mut n2).len(), 1);
    assert_eq!(b.state("t").await, TaskState::Queued);
    let mut n3 = b.connect("n3", "zeta", 1).await;
    b.core.dispatch_once().await.unwrap();
    assert_eq!(assignments(&mut n3).len(), 1);
    assert_eq!(b.state("t").await, TaskState::Assigned);
}

#[tokio::test]
async fn a_lapsed_lease_is_expired_requeued_and_the_task_fails_when_attempts_are_spent() {
    let b = bench(&[("n1", "acme")], &[("MAX_ATTEMPTS", "2")]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    for round in 1..=2 {
        b.core.dispatch_once().await.unwrap();
        let leased = assignments(&mut n1);
        assert_eq!(leased.len(), 1, "round {round}");
        assert_eq!(b.state("t").await, TaskState::Assigned);
        // A lease that lapsed but was renewed by a heartbeat in time: the sweep leaves it.
        b.lapse("t").await;
        b.core
            .on_heartbeat("n1", &[leased[0].attempt_id.clone()])
            .await
            .unwrap();
        b.core.sweep().await.unwrap();
        assert_eq!(b.state("t").await, TaskState::Assigned);
        assert!(cancels(&mut n1).is_empty());
        // A heartbeat from another node cannot renew it.
        b.lapse("t").await;
        b.core
            .on_heartbeat("n2", &[leased[0].attempt_id.clone()])
            .await
            .unwrap();
        b.core.sweep().await.unwrap();
        assert_eq!(cancels(&mut n1), vec![leased[0].attempt_id.clone()]);
    }
    let states = b.attempt_states("t").await;
    assert!(
        states.iter().all(|(_, s)| s == attempt_state::EXPIRED),
        "{states:?}"
    );
    assert_eq!(b.state("t").await, TaskState::Failed);
    // The next sweep gives the hold back, once.
    b.core.sweep().await.unwrap();
    b.core.sweep().await.unwrap();
    assert_eq!(*b.books.releases.lock().unwrap(), vec!["t".to_string()]);
    // A failed task is never leased again.
    b.core.dispatch_once().await.unwrap();
    assert!(assignments(&mut n1).is_empty());
}

/// A node that keeps heartbeating cannot keep a lease past its task's timeout plus the slack:
/// hoarding a task ends at the bound, and the task goes back to the queue.
#[tokio::test]
async fn heartbeats_cannot_keep_a_lease_past_its_bound() {
    let b = bench(&[("n1", "acme")], &[("LEASE_SLACK_SECS", "5")]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1);
    // The attempt began long ago: its 10 s timeout and 5 s slack are spent.
    sqlx::query(
        "UPDATE attempts SET created_at_ms = created_at_ms - 16000, lease_expires_at_ms = 0",
    )
    .execute(&b.pool)
    .await
    .unwrap();
    b.core
        .on_heartbeat("n1", &[leased[0].attempt_id.clone()])
        .await
        .unwrap();
    b.core.sweep().await.unwrap();
    assert_eq!(cancels(&mut n1), vec![leased[0].attempt_id.clone()]);
    assert_eq!(b.attempt_states("t").await[0].1, attempt_state::EXPIRED);
    // Within the bound, the same heartbeat renews it.
    b.core.dispatch_once().await.unwrap();
    let again = assignments(&mut n1);
    assert_eq!(again.len(), 1, "the task is leased again");
    sqlx::query("UPDATE attempts SET created_at_ms = created_at_ms - 14000, lease_expires_at_ms = 0 WHERE attempt_id = $1")
        .bind(&again[0].attempt_id)
        .execute(&b.pool)
        .await
        .unwrap();
    b.core
        .on_heartbeat("n1", &[again[0].attempt_id.clone()])
        .await
        .unwrap();
    b.core.sweep().await.unwrap();
    assert!(cancels(&mut n1).is_empty(), "renewed within its bound");
}

/// A node that opens a second Work stream replaces the first and keeps its leases: reconnecting
/// does not free the slot a live lease holds, so it cannot hoard tasks by reconnecting.
#[tokio::test]
async fn a_second_work_stream_inherits_the_leases_of_the_first() {
    let b = bench(&[("n1", "acme")], &[]).await;
    let mut first = b.connect("n1", "acme", 1).await;
    b.submit("t1", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    assert_eq!(assignments(&mut first).len(), 1);
    let mut second = b.connect("n1", "acme", 1).await;
    assert!(first.try_recv().is_err(), "the first stream is closed");
    b.submit("t2", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    assert!(
        assignments(&mut second).is_empty(),
        "its one slot is still taken"
    );
    let workers = b.core.connected_workers().await;
    assert_eq!((workers.len(), workers[0].running), (1, 1));
}

/// A hold noted for a submission that never stored its task (the ledger answered too late,
/// the scheduler stopped) is given back by the sweep once its grace has passed, and the note
/// goes; a note whose task was stored just goes.
#[tokio::test]
async fn the_hold_of_an_unfinished_submission_is_given_back() {
    let b = bench(&[("n1", "acme")], &[]).await;
    b.core
        .store
        .add_pending_hold("t-lost", "user/alice", 100)
        .await
        .unwrap();
    b.core.sweep().await.unwrap();
    assert!(
        b.books.releases.lock().unwrap().is_empty(),
        "within its grace"
    );
    sqlx::query("UPDATE pending_holds SET created_at_ms = created_at_ms - 120000")
        .execute(&b.pool)
        .await
        .unwrap();
    b.core.sweep().await.unwrap();
    assert_eq!(
        *b.books.releases.lock().unwrap(),
        vec!["t-lost".to_string()]
    );
    b.core.sweep().await.unwrap();
    assert_eq!(b.books.releases.lock().unwrap().len(), 1, "once");
    assert!(
        b.core
            .store
            .pending_holds(i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    // The sweep takes a note before it gives the hold back: a submission storing its task
    // after that stores nothing (and gives its own hold back); a stored task's note is never
    // taken.
    let store = &b.core.store;
    b.submit("t-stored", receipt()).await;
    store
        .add_pending_hold("t-late", "user/alice", 100)
        .await
        .unwrap();
    assert!(store.claim_unfinished_hold("t-late").await.unwrap());
    let late = NewTask {
        task_id: "t-late",
        submitter: "user/alice",
        module_hash: "m",
        input: b"",
        input_hash: "h",
        fuel_limit: 1,
        memory_limit_mib: 1,
        timeout_secs: 1,
        policy: receipt(),
        credits_held: 100,
        micro_credits_per_million_fuel: 1000,
        request_id: "",
        pending_hold: true,
    };
    let refused = store.insert_task(&late).await.unwrap_err();
    assert!(
        refused.to_string().contains(crate::store::HOLD_GIVEN_BACK),
        "{refused}"
    );
    assert!(store.task("t-late").await.unwrap().is_none());
    store
        .add_pending_hold("t-stored", "user/alice", 100)
        .await
        .unwrap();
    assert!(!store.claim_unfinished_hold("t-stored").await.unwrap());
}

#[tokio::test]
async fn an_expired_task_goes_to_another_node_before_the_one_that_lapsed() {
    let b = bench(&[("n1", "acme"), ("n2", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    assert_eq!(assignments(&mut n1).len(), 1);
    b.lapse("t").await;
    b.core.sweep().await.unwrap();
    assert_eq!(b.state("t").await, TaskState::Queued);
    let mut n2 = b.connect("n2", "acme", 1).await;
    b.core.dispatch_once().await.unwrap();
    assert!(assignments(&mut n1).is_empty());
    assert_eq!(assignments(&mut n2).len(), 1);
}

#[tokio::test]
async fn a_verified_report_is_settled_for_the_fuel_its_receipt_signs() {
    let b = bench(&[("n1", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1).remove(0);
    b.core.on_started("n1", &leased.attempt_id).await.unwrap();
    assert_eq!(b.state("t").await, TaskState::Running);
    b.core
        .on_report("n1", report(&leased.attempt_id, 400_000, 400_000))
        .await
        .unwrap();
    assert_eq!(b.state("t").await, TaskState::Settled);
    let captures = b.books.captures.lock().unwrap().clone();
    assert_eq!(captures.len(), 1);
    let price = b.core.config.micro_credits_per_million_fuel;
    let settled = zkmesh_kit::settlement::open(
        captures[0].settlement.as_ref(),
        &[judge_key().verifying_key()],
    )
    .unwrap();
    let payees: Vec<(&str, u64)> = settled
        .payees
        .iter()
        .map(|p| (p.account.as_str(), p.amount))
        .collect();
    assert_eq!(payees, vec![("operator/acme", crate::cost(400_000, price))]);
    let task = b.core.store.task("t").await.unwrap().unwrap();
    assert_eq!(task.result.credits_charged, crate::cost(400_000, price));
    // A report again (a replay, a retry) changes nothing and pays nothing more.
    b.core
        .on_report("n1", report(&leased.attempt_id, 400_000, 400_000))
        .await
        .unwrap();
    assert_eq!(b.books.captures.lock().unwrap().len(), 1);
}

/// A task is settled at the price its hold was made at, not at the price configured when it is
/// verified (a restart with another price must not bill past the hold).
#[tokio::test]
async fn a_task_is_settled_at_the_price_its_hold_was_made_at() {
    let b = bench(&[("n1", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    let held_at = b.core.config.micro_credits_per_million_fuel + 777;
    b.submit_at("t", receipt(), held_at).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1).remove(0);
    b.core.on_started("n1", &leased.attempt_id).await.unwrap();
    b.core
        .on_report("n1", report(&leased.attempt_id, 400_000, 400_000))
        .await
        .unwrap();
    assert_eq!(b.state("t").await, TaskState::Settled);
    let captures = b.books.captures.lock().unwrap().clone();
    let settled = zkmesh_kit::settlement::open(
        captures[0].settlement.as_ref(),
        &[judge_key().verifying_key()],
    )
    .unwrap();
    assert_eq!(settled.payees[0].micro_credits_per_million_fuel, held_at);
    assert_eq!(settled.payees[0].amount, crate::cost(400_000, held_at));
}

#[tokio::test]
async fn a_report_that_its_receipt_does_not_sign_is_rejected_without_asking_the_verifier() {
    let b = bench(&[("n1", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1).remove(0);
    // Another node's report for this (still leased) attempt is ignored.
    b.core
        .on_report("n2", report(&leased.attempt_id, 400_000, 400_000))
        .await
        .unwrap();
    assert_eq!(*b.judge.asked.lock().unwrap(), 0);
    assert_eq!(
        b.attempt_states("t").await,
        vec![("n1".to_string(), attempt_state::LEASED.to_string())]
    );
    // Claims more fuel than it signed for.
    b.core
        .on_report("n1", report(&leased.attempt_id, 900_000, 400_000))
        .await
        .unwrap();
    assert_eq!(*b.judge.asked.lock().unwrap(), 0);
    assert_eq!(
        b.attempt_states("t").await,
        vec![("n1".to_string(), attempt_state::REJECTED.to_string())]
    );
    assert_eq!(b.state("t").await, TaskState::Queued);
    assert!(b.books.captures.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_rejected_node_never_gets_the_task_again() {
    let b = bench(&[("n1", "acme"), ("n2", "zeta")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1).remove(0);
    *b.judge.reject.lock().unwrap() = true;
    b.core
        .on_report("n1", report(&leased.attempt_id, 1000, 1000))
        .await
        .unwrap();
    assert_eq!(b.state("t").await, TaskState::Queued);
    assert!(b.books.captures.lock().unwrap().is_empty());
    // With no other node connected the task cannot go anywhere: placement fails it with the
    // reason rather than lease it to the rejected node again.
    b.core.dispatch_once().await.unwrap();
    assert!(
        assignments(&mut n1).is_empty(),
        "re-leased to the rejected node"
    );
    assert_eq!(b.state("t").await, TaskState::Failed);
    // A node of another operator arriving later does not revive it.
    let mut n2 = b.connect("n2", "zeta", 1).await;
    b.core.dispatch_once().await.unwrap();
    assert!(assignments(&mut n2).is_empty());
}

#[tokio::test]
async fn a_cancelled_task_stops_its_attempts_and_gives_the_hold_back() {
    let b = bench(&[("n1", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1).remove(0);
    b.core.cancel("t").await.unwrap();
    assert_eq!(b.state("t").await, TaskState::Cancelled);
    assert_eq!(cancels(&mut n1), vec![leased.attempt_id.clone()]);
    assert_eq!(*b.books.releases.lock().unwrap(), vec!["t".to_string()]);
    // A late report is ignored: nothing is judged or paid.
    b.core
        .on_report("n1", report(&leased.attempt_id, 1000, 1000))
        .await
        .unwrap();
    assert_eq!(*b.judge.asked.lock().unwrap(), 0);
    assert_eq!(b.state("t").await, TaskState::Cancelled);
    // Cancelling again (a retry whose first answer was lost) changes nothing and is no error.
    b.core.cancel("t").await.unwrap();
    assert_eq!(b.books.releases.lock().unwrap().len(), 1);
}

/// A transition is stored all or nothing: a batch whose last change fails leaves no trace of
/// the changes before it (no event, no state change).
#[tokio::test]
async fn a_batch_is_stored_all_or_nothing() {
    let b = bench(&[("n1", "acme")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    let leased = assignments(&mut n1).remove(0);
    let events_before = b.core.store.events("t").await.unwrap().len();
    let batch = [
        crate::store::Change::attempt(&leased.attempt_id, attempt_state::EXPIRED),
        crate::store::Change::event("t", TaskState::Failed, "should not stay"),
        // The same attempt id again: the primary key refuses it, and the batch with it.
        crate::store::Change::Lease {
            attempt_id: leased.attempt_id.clone(),
            task_id: "t".into(),
            node_id: "n1".into(),
            operator: "acme".into(),
            lease_expires_at_ms: 0,
            spot_check: false,
        },
    ];
    assert!(b.core.store.apply(&batch).await.is_err());
    assert_eq!(b.state("t").await, TaskState::Assigned);
    assert_eq!(b.core.store.events("t").await.unwrap().len(), events_before);
    assert_eq!(
        b.attempt_states("t").await,
        vec![("n1".to_string(), attempt_state::LEASED.to_string())]
    );
}

#[tokio::test]
async fn a_rejected_task_goes_to_another_node() {
    let b = bench(&[("n1", "acme"), ("n2", "zeta")], &[]).await;
    let mut n1 = b.connect("n1", "acme", 2).await;
    let mut n2 = b.connect("n2", "zeta", 1).await;
    b.submit("t", receipt()).await;
    b.core.dispatch_once().await.unwrap();
    // n1 has more room: it gets the task first.
    let leased = assignments(&mut n1).remove(0);
    assert!(assignments(&mut n2).is_empty());
    *b.judge.reject.lock().unwrap() = true;
    b.core
        .on_report("n1", report(&leased.attempt_id, 1000, 1000))
        .await
        .unwrap();
    b.core.dispatch_once().await.unwrap();
    assert!(assignments(&mut n1).is_empty());
    assert_eq!(assignments(&mut n2).len(), 1);
    assert_eq!(b.state("t").await, TaskState::Assigned);
}
