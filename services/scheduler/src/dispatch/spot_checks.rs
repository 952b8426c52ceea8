//! Spot checks and node records.
//!
//! A receipt-policy result is the word of one node. At the configured rate the scheduler holds
//! such a result back and has a node of another operator run the task again (a *check*),
//! before any verdict. The node that is checked cannot tell: its result is reported like any
//! other, and the checking node gets an ordinary assignment. When the two agree, the result
//! stands. When they disagree, a node of a third operator runs it, and the verifier decides by
//! majority, so one dishonest checker cannot get an honest node's result rejected; whoever
//! loses is rejected and it shows in their record. Only one run is paid (the first run's
//! node's, when its result stands): the submitter pays the same whether checked or not.
//!
//! Each verdict adds to the records of the nodes it judged (verified, rejected, spot checks
//! and spot checks lost), in the transition that stores the verdict, so a verdict counts once.
//! Placement prefers nodes with a clean record ([`clean`]).

use zkmesh_proto::*;

use crate::dispatch::{Core, Result, Transition, db_error};
use crate::store::{AttemptRow, Change, TaskRow, attempt_state};

/// The most checks of one result: the first check, and a third operator when it disagrees.
pub(crate) const MAX_SPOT_CHECKS: u32 = 2;

/// Whether a record is clean enough to be preferred: nothing rejected, or at most one result
/// in a hundred.
pub(crate) fn clean(record: &NodeRecord) -> bool {
    record.rejected == 0 || record.rejected.saturating_mul(100) <= record.verified
}

impl Core {
    /// Whether to check the result of `task` that a node of `operator` just reported: at the
    /// configured rate, when nodes of two other operators are connected, one to check and one
    /// to decide should the check disagree (with fewer, nobody could settle a disagreement).
    pub(in crate::dispatch) async fn draw_spot_check(
        &self,
        task: &TaskRow,
        operator: &str,
    ) -> bool {
        let policy = task.task.policy.unwrap_or_default();
        if policy.kind() != PolicyKind::Receipt || task.spot_checks > 0 {
            return false;
        }
        let rate = self.config.spot_check_rate;
        if rate <= 0.0 || rand::random::<f64>() >= rate {
            return false;
        }
        let nodes = self.nodes.read().unwrap().clone();
        let workers = self.workers.lock().await;
        let others: std::collections::BTreeSet<&str> = workers
            .iter()
            .filter(|(id, w)| {
                w.operator != operator
                    && nodes
                        .get(*id)
                        .is_none_or(|n| n.status() == NodeStatus::Active)
            })
            .map(|(_, w)| w.operator.as_str())
            .collect();
        others.len() >= 2
    }

    /// Gives up the task's round of checks (its checkers lapsed, declined or misreported too
    /// often, or the round outlived its bound). Before any check has reported, the result is
    /// judged as an unchecked one would be: the checks' absence proves nothing against it.
    /// Once a check has disagreed, nobody can say which is right, so the task fails (its hold
    /// is given back) rather than stand on a result in dispute.
    pub(in crate::dispatch) async fn abandon_spot_check(
        &self,
        task: &TaskRow,
        why: &str,
        t: &mut Transition,
    ) -> Result<()> {
        let task_id = &task.task.task_id;
        if task.spot_checks >= MAX_SPOT_CHECKS {
            let reason = format!(
                "a spot check disagreed with the result and no third operator decided: {why}"
            );
            return self.fail(task, &reason, t).await;
        }
        let reason = format!("spot check given up: {why}");
        for a in self.store.attempts(task_id).await.map_err(db_error)? {
            if a.spot_check
                && matches!(
                    t.attempt_state(&a.attempt_id, &a.state),
                    attempt_state::LEASED | attempt_state::RUNNING
                )
            {
                t.push(Change::attempt(&a.attempt_id, attempt_state::CANCELLED));
                t.stop(&a.node_id, &a.attempt_id, &reason);
            }
        }
        t.push(Change::SpotChecks {
            task_id: task_id.clone(),
            checks: 0,
        });
        t.event(
            task_id,
            TaskState::Reported,
            format!("{reason}; the result is judged unchecked"),
        );
        t.wake_sweep();
        Ok(())
    }

    /// Rounds of checks past their bound (the task's timeout plus the lease slack) are given
    /// up.
    pub(in crate::dispatch) async fn sweep_spot_checks(&self) -> Result<()> {
        let slack_ms = i64::from(self.config.lease_slack_secs) * 1000;
        for task_id in self
            .store
            .overdue_spot_checks(slack_ms)
            .await
            .map_err(db_error)?
        {
            let _t = self.transitions.lock().await;
            let Some(task) = self.store.task(&task_id).await.map_err(db_error)? else {
                continue;
            };
            // Re-checked under the lock: the round may have ended meanwhile.
            let bound =
                task.spot_checks_at_ms + i64::from(task.task.timeout_secs) * 1000 + slack_ms;
            let live = matches!(
                task.task.state(),
                TaskState::Queued | TaskState::Assigned | TaskState::Running
            );
            if task.spot_checks == 0 || !live || zkmesh_kit::now_ms() <= bound {
                continue;
            }
            let mut t = Transition::default();
            self.abandon_spot_check(
                &task,
                "no check ended within the task's timeout plus the lease slack",
                &mut t,
            )
            .await?;
            self.finish(t).await?;
        }
        Ok(())
    }

    /// Holds the task's reported result back for a check by a node of another operator.
    pub(in crate::dispatch) fn start_spot_check(
        &self,
        task: &TaskRow,
        node_id: &str,
        t: &mut Transition,
    ) {
        let task_id = &task.task.task_id;
        t.push(Change::SpotChecks {
            task_id: task_id.clone(),
            checks: 1,
        });
        t.push(Change::node_event(
            task_id,
            TaskState::Queued,
            "spot check: a node of another operator runs the task again before the result is accepted",
            node_id,
        ));
        t.wake_placement();
    }

    /// The verifier found the first check disagreeing: a node of a third operator decides.
    pub(in crate::dispatch) fn escalate_spot_check(
        &self,
        task: &TaskRow,
        reason: &str,
        t: &mut Transition,
    ) {
        let task_id = &task.task.task_id;
        t.push(Change::SpotChecks {
            task_id: task_id.clone(),
            checks: MAX_SPOT_CHECKS,
        });
        t.event(
            task_id,
            TaskState::Queued,
            format!("spot check disagrees ({reason}): a node of a third operator decides"),
        );
        t.wake_placement();
    }

    /// Adds a verdict to the records of the nodes whose reports it judged.
    pub(in crate::dispatch) fn record_verdict(
        &self,
        task: &TaskRow,
        attempts: &[AttemptRow],
        verdict: &TaskVerdict,
        t: &mut Transition,
    ) {
        let checked = task.spot_checks > 0;
        // A check lost is a result the majority disagreed with: not a run that timed out
        // beside a completed one (it had no vote), nor one of a round nobody won.
        let decided = verdict.verdict() == Verdict::Verified;
        for a in attempts {
            let accepted = verdict.accepted_attempt_ids.contains(&a.attempt_id);
            let rejected = verdict.rejected_attempt_ids.contains(&a.attempt_id);
            if !accepted && !rejected {
                continue;
            }
            t.push(Change::Record(NodeRecord {
                node_id: a.node_id.clone(),
                verified: u64::from(accepted),
                rejected: u64::from(rejected),
                spot_checks: u64::from(checked),
                spot_failures: u64::from(
                    checked && rejected && decided && a.exit != ExitKind::Timeout as i32,
                ),
            }));
        }
    }

    /// A node's result was refused before any verdict (its report contradicts its receipt).
    pub(in crate::dispatch) fn record_rejected(&self, node_id: &str, t: &mut Transition) {
        t.push(Change::Record(NodeRecord {
            node_id: node_id.to_string(),
            rejected: 1,
            ..Default::default()
        }));
    }

    /// Each node's record, for `ListNodeRecords`.
    pub async fn node_records(
        &self,
        page: &zkmesh_kit::paging::Page,
    ) -> Result<(Vec<NodeRecord>, String)> {
        let records = self.store.node_records(page).await.map_err(db_error)?;
        Ok(page.finish(records, |r| r.node_id.clone()))
    }
}
