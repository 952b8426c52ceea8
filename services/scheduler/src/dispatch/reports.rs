//! What nodes report on the Work stream: started, progress and guest logs (within a budget per
//! task), declined attempts, heartbeats and results.

use zkmesh_kit::now_ms;
use zkmesh_proto::*;

use crate::dispatch::Result;
use crate::dispatch::placement::replicas;
use crate::dispatch::{Core, Count, Transition, db_error};
use crate::store::{Change, LeaseBound, attempt_state, is_terminal};

/// Bytes of guest log a node may send for one task, over all its events, whatever it runs: a
/// worker's sandbox keeps 64 KiB of a task's stderr, which is at most three times that once
/// invalid UTF-8 has become U+FFFD.
/// The most attempts one heartbeat renews: the most slots a node can be granted.
const MAX_HEARTBEAT_ATTEMPTS: usize = 256;

const MAX_LOG_BYTES: u64 = 3 * (64 << 10);
/// Progress events a node may send for one task: an honest worker sends guest logs at most
/// every 200 ms, so this is 55 minutes of a guest that writes to stderr all the time.
const MAX_PROGRESS_EVENTS: u64 = 16_384;
/// The most bytes of an exit message or a proof error kept from a node's report.
const MAX_NODE_TEXT: usize = 4096;

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// How the event that reaches a node's log budget for a task begins.
const LOG_CUT_NOTE: &str = "guest log reached";

impl Core {
    pub async fn on_started(&self, node_id: &str, attempt_id: &str) -> Result<()> {
        let _t = self.transitions.lock().await;
        let Some(a) = self.store.attempt(attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if a.node_id != node_id || a.state != attempt_state::LEASED {
            return Ok(());
        }
        let mut t = Transition::of(Change::attempt(attempt_id, attempt_state::RUNNING));
        let task = self.store.task(&a.task_id).await.map_err(db_error)?;
        // A task stays QUEUED while any replica still needs a node (dispatch looks only at
        // QUEUED tasks); it runs once every replica is leased.
        if task.is_some_and(|task| task.task.state() == TaskState::Assigned) {
            t.push(Change::node_event(
                &a.task_id,
                TaskState::Running,
                format!("running on node {node_id}"),
                node_id,
            ));
        }
        self.finish(t).await
    }

    /// A running attempt's progress, as an event of its task (state unchanged).
    pub async fn on_progress(
        &self,
        node_id: &str,
        attempt_id: &str,
        message: &str,
        log: &str,
    ) -> Result<()> {
        let _t = self.transitions.lock().await;
        let Some(a) = self.store.attempt(attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if a.node_id != node_id || a.state != attempt_state::RUNNING {
            return Ok(());
        }
        let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if task.task.state() != TaskState::Running {
            return Ok(());
        }
        // Bounded per node and task, over all its events, whatever the node is running: a node
        // could otherwise fill the database one capped event at a time.
        let (events, log_used, cut) = self
            .store
            .progress_used(&a.task_id, node_id, LOG_CUT_NOTE)
            .await
            .map_err(db_error)?;
        if events >= MAX_PROGRESS_EVENTS {
            tracing::debug!(
                node_id,
                attempt_id,
                "progress past the event budget dropped"
            );
            return Ok(());
        }
        let mut message: String = message.chars().take(300).collect();
        let mut log = log;
        if !log.is_empty() {
            if cut {
                // Past the budget, and said so then.
                return Ok(());
            }
            let budget = MAX_LOG_BYTES.saturating_sub(log_used) as usize;
            if log.len() >= budget {
                // This event reaches the budget: keep what fits and say that the rest goes.
                let mut end = budget;
                while !log.is_char_boundary(end) {
                    end -= 1;
                }
                log = &log[..end];
                message = format!(
                    "{LOG_CUT_NOTE} {} KiB: the rest from this node is dropped",
                    MAX_LOG_BYTES >> 10
                );
            }
        }
        self.emit_log(&a.task_id, TaskState::Running, &message, node_id, log)
            .await?;
        Ok(())
    }

    /// A node gives an attempt back unrun: as a lapsed lease, at once, with the node's reason.
    pub async fn on_declined(&self, node_id: &str, attempt_id: &str, reason: &str) -> Result<()> {
        let Some(a) = self.store.attempt(attempt_id).await.map_err(db_error)? else {
            return Ok(());
        };
        if a.node_id != node_id {
            return Ok(());
        }
        let reason: String = reason.chars().take(600).collect();
        tracing::info!(node_id, attempt_id, %reason, "attempt declined");
        self.expire(&a, &format!("node {node_id} gave the task back: {reason}"))
            .await
    }

    pub async fn on_heartbeat(&self, node_id: &str, running: &[String]) -> Result<()> {
        // A node runs at most its slots; a heartbeat naming more is cut (the rest lapse).
        if running.len() > MAX_HEARTBEAT_ATTEMPTS {
            tracing::warn!(
                node_id,
                named = running.len(),
                "heartbeat names more attempts than any node runs; the rest are not renewed"
            );
        }
        let running = &running[..running.len().min(MAX_HEARTBEAT_ATTEMPTS)];
        let until = now_ms() + self.config.lease_secs as i64 * 1000;
        let bound = LeaseBound {
            slack_ms: i64::from(self.config.lease_slack_secs) * 1000,
            proof_ms: i64::from(self.config.proving_budget_secs) * 1000,
        };
        self.store
            .renew_leases(node_id, running, until, bound)
            .await
            .map_err(db_error)
    }

    /// Records a report; once every replica has reported, asks for a verdict and settles.
    pub async fn on_report(&self, node_id: &str, mut report: TaskReport) -> Result<()> {
        // A node's words are bounded wherever they are kept and shown.
        cut(&mut report.exit_message, MAX_NODE_TEXT);
        cut(&mut report.proof_error, MAX_NODE_TEXT);
        let task_id = {
            let _t = self.transitions.lock().await;
            let Some(a) = self
                .store
                .attempt(&report.attempt_id)
                .await
                .map_err(db_error)?
            else {
                tracing::warn!(node_id, attempt_id = %report.attempt_id, "report for an unknown attempt");
                return Ok(());
            };
            if a.node_id != node_id {
                tracing::warn!(node_id, attempt_id = %a.attempt_id, "report for another node's attempt ignored");
                return Ok(());
            }
            self.free_slot(node_id, &a.attempt_id).await;
            if !matches!(
                a.state.as_str(),
                attempt_state::LEASED | attempt_state::RUNNING
            ) {
                tracing::info!(node_id, attempt_id = %a.attempt_id, state = %a.state, "late report ignored");
                return Ok(());
            }
            let Some(task) = self.store.task(&a.task_id).await.map_err(db_error)? else {
                return Ok(());
            };
            let receipt = report.receipt.clone().unwrap_or_default();
            let (fuel_used, exit) = (report.fuel_used, report.exit);
            let mut t = Transition::of(Change::Report {
                report: Box::new(report),
                receipt: receipt.clone(),
            });
            if is_terminal(task.task.state()) || task.task.state() == TaskState::Verified {
                return self.finish(t).await;
            }
            // What is paid for is what the node signed: the unsigned fields must agree with the
            // receipt, and nobody uses more fuel than the task allowed.
            if fuel_used != receipt.fuel_used
                || exit != receipt.exit
                || receipt.fuel_used > task.task.fuel_limit
            {
                t.push(Change::attempt(&a.attempt_id, attempt_state::REJECTED));
                t.count(Count::Rejected);
                self.record_rejected(node_id, &mut t);
                let reason =
                    format!("node {node_id} reported fuel or exit that its receipt does not sign");
                self.requeue(&task, TaskState::Rejected, &reason, &mut t)
                    .await?;
                return self.finish(t).await;
            }
            let attempts = self.store.attempts(&a.task_id).await.map_err(db_error)?;
            let reported = attempts
                .iter()
                .filter(|x| t.attempt_state(&x.attempt_id, &x.state) == attempt_state::REPORTED)
                .count();
            let replicas = replicas(&task);
            if reported < replicas {
                let state = match task.task.state() {
                    TaskState::Queued => TaskState::Queued,
                    _ => TaskState::Running,
                };
                let msg = format!("{reported} of {replicas} replicas reported");
                t.push(Change::node_event(&a.task_id, state, msg, node_id));
                return self.finish(t).await;
            }
            if self.draw_spot_check(&task, &a.operator).await {
                self.start_spot_check(&task, node_id, &mut t);
                return self.finish(t).await;
            }
            t.push(Change::node_event(
                &a.task_id,
                TaskState::Reported,
                format!("result reported by node {node_id}"),
                node_id,
            ));
            self.finish(t).await?;
            a.task_id
        };
        self.verify_and_settle(&task_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn node_text_is_cut_at_a_character_boundary() {
        let mut long = "é".repeat(3000); // 6000 bytes
        cut(&mut long, super::MAX_NODE_TEXT);
        assert_eq!(long.len(), 4096);
        assert!(long.chars().all(|c| c == 'é'));
        let mut odd = format!("a{}", "é".repeat(3000));
        cut(&mut odd, super::MAX_NODE_TEXT);
        assert_eq!(odd.len(), 4095, "the half character goes");
        let mut short = "ok".to_string();
        cut(&mut short, super::MAX_NODE_TEXT);
        assert_eq!(short, "ok");
    }
}
