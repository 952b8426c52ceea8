//! Placement: leasing queued tasks to connected workers with free slots, replicas to nodes
//! of distinct operators.

use std::collections::BTreeSet;

use zkmesh_kit::{now_ms, random_id};
use zkmesh_proto::*;

use crate::dispatch::Result;
use crate::dispatch::spot_checks::clean;
use crate::dispatch::{Core, Transition, WorkerConn, db_error};
use crate::store::{AttemptRow, Change, TaskRow, attempt_state};
use rand::seq::SliceRandom;

impl Core {
    /// Leases queued tasks to workers with free slots.
    pub async fn dispatch_once(&self) -> Result<()> {
        if !self.has_free_slot().await {
            return Ok(());
        }
        let queued = self.store.queued(128).await.map_err(db_error)?;
        for task_id in queued {
            // The lock is taken per task, so reports and starts interleave with a long queue.
            let _t = self.transitions.lock().await;
            let Some(task) = self.store.task(&task_id).await.map_err(db_error)? else {
                continue;
            };
            if task.task.state() != TaskState::Queued {
                continue;
            }
            let mut workers = self.workers.lock().await;
            if !workers.values().any(|w| (w.running.len() as u32) < w.slots) {
                return Ok(());
            }
            let attempts = self
                .store
                .attempts(&task.task.task_id)
                .await
                .map_err(db_error)?;
            let active: Vec<&AttemptRow> = attempts
                .iter()
                .filter(|a| {
                    matches!(
                        a.state.as_str(),
                        attempt_state::LEASED | attempt_state::RUNNING | attempt_state::REPORTED
                    )
                })
                .collect();
            let replicas = replicas(&task);
            let mut busy_operators: BTreeSet<String> =
                active.iter().map(|a| a.operator.clone()).collect();
            let mut busy_nodes: BTreeSet<String> =
                active.iter().map(|a| a.node_id.clone()).collect();
            // A node whose result was rejected for this task never gets it again.
            busy_nodes.extend(
                attempts
                    .iter()
                    .filter(|a| a.state == attempt_state::REJECTED)
                    .map(|a| a.node_id.clone()),
            );
            let eligible_exists = workers.keys().any(|n| !busy_nodes.contains(n));
            let mut t = Transition::default();
            let mut sends = Vec::new();
            if !eligible_exists && active.is_empty() && !workers.is_empty() {
                drop(workers);
                self.fail(
                    &task,
                    "no connected node is left that has not been rejected for this task",
                    &mut t,
                )
                .await?;
                self.finish(t).await?;
                continue;
            }
            // Nodes whose lease on this task lapsed are tried again only when no other will do.
            let lapsed: BTreeSet<String> = attempts
                .iter()
                .filter(|a| a.state == attempt_state::EXPIRED)
                .map(|a| a.node_id.clone())
                .collect();
            let mut leased = active.len();
            while leased < replicas {
                let nodes = self.nodes.read().unwrap().clone();
                let eligible: Vec<(&String, &WorkerConn)> = workers
                    .iter()
                    .filter(|(id, w)| {
                        (w.running.len() as u32) < w.slots
                            && !busy_nodes.contains(*id)
                            && (replicas == 1 || !busy_operators.contains(&w.operator))
                            && nodes
                                .get(*id)
                                .is_none_or(|n| n.status() == NodeStatus::Active)
                    })
                    .collect();
                let rank = |id: &String, w: &WorkerConn| (!lapsed.contains(id), clean(&w.record));
                let candidate = if task.spot_checks > 0 {
                    // A checker is drawn at random among the best placed: who checks whom
                    // must not be predictable, or two operators could arrange to check each
                    // other.
                    let best = eligible.iter().map(|(id, w)| rank(id, w)).max();
                    let pool: Vec<&String> = eligible
                        .iter()
                        .filter(|(id, w)| Some(rank(id, w)) == best)
                        .map(|(id, _)| *id)
                        .collect();
                    pool.choose(&mut rand::thread_rng()).map(|id| (*id).clone())
                } else {
                    eligible
                        .iter()
                        .max_by_key(|(id, w)| {
                            (
                                rank(id, w),
                                w.slots - w.running.len() as u32,
                                std::cmp::Reverse((*id).clone()),
                            )
                        })
                        .map(|(id, _)| (*id).clone())
                };
                let Some(node_id) = candidate else { break };
                let attempt_id = random_id("a-");
                let lease_ms = self.config.lease_secs as i64 * 1000;
                let w = workers.get_mut(&node_id).expect("candidate is connected");
                // A place in the node's stream, reserved now and used once the lease is stored:
                // a node never hears of a lease the store does not have.
                let Ok(permit) = w.tx.clone().try_reserve_owned() else {
                    // The stream is gone or hopelessly behind: leave this node out.
                    busy_nodes.insert(node_id);
                    continue;
                };
                t.push(Change::Lease {
                    attempt_id: attempt_id.clone(),
                    task_id: task.task.task_id.clone(),
                    node_id: node_id.clone(),
                    operator: w.operator.clone(),
                    lease_expires_at_ms: now_ms() + lease_ms,
                    // While the task's result is held for a check, every new lease checks it.
                    spot_check: task.spot_checks > 0,
                });
                let assignment = Assignment {
                    attempt_id: attempt_id.clone(),
                    task_id: task.task.task_id.clone(),
                    module_hash: task.task.module_hash.clone(),
                    input: task.input.clone(),
                    fuel_limit: task.task.fuel_limit,
                    memory_limit_mib: task.task.memory_limit_mib,
                    timeout_secs: task.task.timeout_secs,
                    lease_secs: self.config.lease_secs,
                    policy: task.task.policy,
                };
                sends.push((node_id.clone(), attempt_id.clone(), permit, assignment));
                w.running.insert(attempt_id.clone());
                busy_operators.insert(w.operator.clone());
                busy_nodes.insert(node_id.clone());
                leased += 1;
                let (state, msg) = if leased >= replicas {
                    (TaskState::Assigned, format!("leased to node {node_id}"))
                } else {
                    (
                        TaskState::Queued,
                        format!("replica {leased} of {replicas} leased to node {node_id}"),
                    )
                };
                t.push(Change::node_event(&task.task.task_id, state, msg, &node_id));
            }
            drop(workers);
            // Stored first (with the lock held, so a report waits for it), then sent.
            if let Err(e) = self.finish(t).await {
                for (node_id, attempt_id, _, _) in sends {
                    self.free_slot(&node_id, &attempt_id).await;
                }
                return Err(e);
            }
            for (_, _, permit, assignment) in sends {
                permit.send(Ok(WorkResponse {
                    kind: Some(work_response::Kind::Assignment(assignment)),
                }));
            }
        }
        Ok(())
    }
}

/// The runs a task needs reported before a verdict: its replicas, or under the receipt policy
/// one, plus the spot checks of that one.
pub fn replicas(task: &TaskRow) -> usize {
    match task.task.policy.unwrap_or_default().kind() {
        PolicyKind::Replicate => task.task.policy.unwrap_or_default().replicas.max(1) as usize,
        PolicyKind::Receipt => 1 + task.spot_checks as usize,
        _ => 1,
    }
}
