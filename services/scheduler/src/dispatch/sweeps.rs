//! Sweeps: expiring lapsed leases and putting their tasks back in the queue, following the
//! registry's node list, and the background loops that drive dispatch and sweeps.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use zkmesh_kit::now_ms;
use zkmesh_proto::*;

use crate::dispatch::Result;
use crate::dispatch::placement::replicas;
use crate::dispatch::spot_checks::MAX_SPOT_CHECKS;
use crate::dispatch::{Core, Count, Outbound, Transition, db_error};
use crate::store::{AttemptRow, Change, TaskRow, attempt_state, is_terminal};

/// How long a submission may take between noting its hold and storing its task before the
/// sweep gives the hold back (the ledger call alone has a 10 s deadline).
const PENDING_HOLD_GRACE_MS: i64 = 60_000;

impl Core {
    /// A lease ends unfinished (lapsed, given back, its node gone): the attempt expires, its
    /// node is told to stop, and the task goes back to the queue or fails.
    pub(in crate::dispatch) async fn expire(&self, a: &AttemptRow, reason: &str) -> Result<()> {
        self.expire_if(a, reason, false).await
    }

    /// [`Core::expire`], unless `unless_reconnected` and the attempt's node has a Work stream
    /// again (a new stream took its leases over), decided under the transitions lock so no
    /// stream registers in between.
    pub(in crate::dispatch) async fn expire_if(
        &self,
        a: &AttemptRow,
        reason: &str,
        unless_reconnected: bool,
    ) -> Result<()> {
        let _t = self.transitions.lock().await;
        if unless_reconnected && self.workers.lock().await.contains_key(&a.node_id) {
            return Ok(());
        }
        let Some(current) = self.store.attempt(&a.attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if !matches!(
            current.state.as_str(),
            attempt_state::LEASED | attempt_state::RUNNING
        ) {
            return Ok(());
        }
        let mut t = Transition::of(Change::attempt(&a.attempt_id, attempt_state::EXPIRED));
        t.count(Count::Expired);
        // Tell a still-connected node to stop working on it.
        t.stop(&a.node_id, &a.attempt_id, reason);
        if let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)?
            && !is_terminal(task.task.state())
            && task.task.state() != TaskState::Verified
        {
            self.requeue(&task, TaskState::Expired, reason, &mut t)
                .await?;
        }
        self.finish(t).await
    }

    /// After an expiry or a rejection: back to the queue, or failed once the attempts are spent
    /// (counted with the attempt changes already in `t`).
    pub(in crate::dispatch) async fn requeue(
        &self,
        task: &TaskRow,
        why_state: TaskState,
        reason: &str,
        t: &mut Transition,
    ) -> Result<()> {
        let task_id = &task.task.task_id;
        t.event(task_id, why_state, reason);
        let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
        let failed = |a: &&AttemptRow| {
            matches!(
                t.attempt_state(&a.attempt_id, &a.state),
                attempt_state::EXPIRED | attempt_state::REJECTED
            )
        };
        // Spot checks have a budget of their own: checkers that lapse, give the task back or
        // misreport never use up the attempts of the task itself (whose result is in hand).
        let spent = attempts
            .iter()
            .filter(|a| !a.spot_check)
            .filter(failed)
            .count();
        let budget =
            self.config.max_attempts as usize * (replicas(task) - task.spot_checks as usize);
        if spent >= budget {
            return self
                .fail(
                    task,
                    &format!("gave up after {spent} failed attempts; last: {reason}"),
                    t,
                )
                .await;
        }
        if task.spot_checks > 0 {
            let checks_spent = attempts
                .iter()
                .filter(|a| a.spot_check)
                .filter(failed)
                .count();
            if checks_spent >= self.config.max_attempts as usize * MAX_SPOT_CHECKS as usize {
                let why = format!("{checks_spent} checks failed; last: {reason}");
                return self.abandon_spot_check(task, &why, t).await;
            }
        }
        t.event(task_id, TaskState::Queued, "back in the queue");
        t.wake_placement();
        Ok(())
    }

    /// Expired leases, reports not judged yet, verified tasks not settled, and holds of failed
    /// or cancelled tasks not released yet. Each step re-checks the state under the lock.
    pub(in crate::dispatch) async fn sweep(&self) -> Result<()> {
        for a in self.store.lapsed_attempts(None).await.map_err(db_error)? {
            let reason = format!("lease on node {} expired (no heartbeat)", a.node_id);
            self.expire(&a, &reason).await?;
        }
        let stale = |t: &TaskRow| now_ms() - t.task.updated_at_ms > 2000;
        for task in self
            .store
            .tasks_in_state(TaskState::Reported)
            .await
            .map_err(db_error)?
        {
            if stale(&task)
                && let Err(e) = self.verify_and_settle(&task.task.task_id).await
            {
                // One task's trouble must not hold up the rest of the sweep.
                tracing::warn!(task_id = %task.task.task_id, error = %e.message(), "verdict failed; will retry");
            }
        }
        for task in self
            .store
            .tasks_in_state(TaskState::Verified)
            .await
            .map_err(db_error)?
        {
            if stale(&task)
                && let Err(e) = self.settle(&task.task.task_id).await
            {
                tracing::warn!(task_id = %task.task.task_id, error = %e.message(), "settlement failed; will retry");
            }
        }
        for task_id in self.store.unreleased_holds().await.map_err(db_error)? {
            self.release(&task_id, "task failed or was cancelled")
                .await?;
        }
        if let Err(e) = self.sweep_spot_checks().await {
            tracing::warn!(error = %e.message(), "sweeping spot checks failed; will retry");
        }
        // A hold made for a submission that never stored its task (the ledger answered after
        // the client gave up, the scheduler stopped between the two) goes back.
        let before = now_ms() - PENDING_HOLD_GRACE_MS;
        for (task_id, stored) in self.store.pending_holds(before).await.map_err(db_error)? {
            if stored {
                self.store
                    .drop_pending_hold(&task_id)
                    .await
                    .map_err(db_error)?;
                continue;
            }
            // The note is taken first: a submission that stores its task now finds it gone,
            // stores nothing and gives back its own hold.
            if !self
                .store
                .claim_unfinished_hold(&task_id)
                .await
                .map_err(db_error)?
            {
                continue;
            }
            let released = self
                .ledger
                .release(ReleaseRequest {
                    task_id: task_id.clone(),
                    reason: "the submission did not finish".into(),
                })
                .await;
            match released {
                Ok(_) => tracing::info!(%task_id, "hold of an unfinished submission released"),
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => {
                    tracing::warn!(%task_id, error = %e.message(), "releasing an unfinished submission's hold failed; a later sweep tries again");
                    self.store
                        .add_pending_hold(&task_id, "", 0)
                        .await
                        .map_err(db_error)?;
                }
            }
        }
        Ok(())
    }

    /// Refreshes node facts from the registry and disconnects nodes that are no longer active.
    pub(in crate::dispatch) async fn refresh_nodes(&self) {
        let Ok(nodes) = self.registry.list_nodes().await else {
            return;
        };
        // Revoked nodes are only ever added here: the revocation follower keeps the whole
        // list, and this snapshot may predate a revocation it has already seen.
        for n in nodes.iter().filter(|n| n.status() == NodeStatus::Revoked) {
            self.revoked.insert(&n.node_id);
        }
        // Revoked nodes are cut off; nodes the registry considers offline (missed heartbeats)
        // lose their leases and their stream, and may reconnect once they heartbeat again.
        let gone: Vec<(String, Outbound, Status)> = {
            let workers = self.workers.lock().await;
            nodes
                .iter()
                .filter_map(|n| {
                    let status = match n.status() {
                        NodeStatus::Revoked | NodeStatus::Denied => {
                            Status::permission_denied(format!("node {} is revoked", n.node_id))
                        }
                        NodeStatus::Offline => Status::unavailable(format!(
                            "node {} missed its registry heartbeats",
                            n.node_id
                        )),
                        // A node waiting for (re-)approval works for no one meanwhile.
                        NodeStatus::Pending => Status::unavailable(format!(
                            "node {} waits for an admin's approval",
                            n.node_id
                        )),
                        _ => {
                            // An active node whose operator or grant changed reconnects to
                            // work under what the registry says now.
                            let w = workers.get(&n.node_id)?;
                            if w.operator == n.operator && w.slots <= n.slots.max(1) {
                                return None;
                            }
                            Status::unavailable(format!(
                                "node {}'s operator or slots changed at the registry; reconnect",
                                n.node_id
                            ))
                        }
                    };
                    workers
                        .get(&n.node_id)
                        .map(|w| (n.node_id.clone(), w.tx.clone(), status))
                })
                .collect()
        };
        *self.nodes.write().unwrap() = nodes.into_iter().map(|n| (n.node_id.clone(), n)).collect();
        for (node_id, tx, status) in gone {
            let reason = status.message().to_string();
            let _ = tx.try_send(Err(status));
            let conn = self.workers.lock().await.get(&node_id).map(|w| w.conn_id);
            if let Some(conn) = conn {
                self.unregister(&node_id, conn, &reason).await;
            }
        }
    }
}

/// The dispatcher, the lease sweeper and the registry follower.
pub fn spawn_background(core: Arc<Core>) {
    let c = core.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                _ = c.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if let Err(e) = c.dispatch_once().await {
                tracing::warn!(error = %e.message(), "dispatch failed");
            }
        }
    });
    let c = core.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                _ = c.wake_sweep.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if let Err(e) = c.sweep().await {
                tracing::warn!(error = %e.message(), "sweep failed");
            }
        }
    });
    tokio::spawn(async move {
        loop {
            core.refresh_nodes().await;
            tokio::select! {
                _ = core.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}
