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

use crate::dispatch::{Core, Transition};
use crate::store::{AttemptRow, Change, TaskRow};

/// The most checks of one result: the first check, and a third operator when it disagrees.
pub(crate) const MAX_SPOT_CHECKS: u32 = 2;

/// Whether a record is clean enough to be preferred: nothing rejected, or at most one result
/// in a hundred.
pub(crate) fn clean(record: &NodeRecord) -> bool {
    record.rejected == 0 || record.rejected.saturating_mul(100) <= record.verified
}

impl Core {
    /// Whether to check the result of `task` that a node of `operator` just reported: at the
    /// configured rate, when a node of another operator is connected to check it (a mesh
    /// with one operator online has nobody to check against).
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
        self.workers.lock().await.iter().any(|(id, w)| {
            w.operator != operator
                && nodes
                    .get(id)
                    .is_none_or(|n| n.status() == NodeStatus::Active)
        })
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
                spot_failures: u64::from(checked && rejected),
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
    ) -> Result<(Vec<NodeRecord>, String), tonic::Status> {
        let records = self
            .store
            .node_records(page)
            .await
            .map_err(crate::dispatch::db_error)?;
        Ok(page.finish(records, |r| r.node_id.clone()))
    }
}
