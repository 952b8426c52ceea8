//! Verdicts and settlement: asking the verifier, paying or releasing the hold at the ledger,
//! and ending or cancelling a task.

use tonic::Status;
use zkmesh_kit::sha256_hex;
use zkmesh_proto::*;

use crate::dispatch::Result;
use crate::dispatch::{Core, Count, Transition, db_error, internal};
use crate::store::{AttemptRow, Change, TaskRow, attempt_state, is_terminal};

impl Core {
    /// The task, if it is (still) in `state`. Call with `transitions` held.
    pub(in crate::dispatch) async fn task_in(
        &self,
        task_id: &str,
        state: TaskState,
    ) -> Result<Option<TaskRow>> {
        let task = self.store.task(task_id).await.map_err(db_error)?;
        Ok(task.filter(|t| t.task.state() == state))
    }

    /// REPORTED -> verdict -> VERIFIED -> SETTLED (or back to the queue). The verifier and the
    /// ledger are called without holding `transitions`; the state is re-checked after each call,
    /// so a concurrent cancel or sweep is never overwritten.
    pub(in crate::dispatch) async fn verify_and_settle(&self, task_id: &str) -> Result<()> {
        let request = {
            let _t = self.transitions.lock().await;
            let Some(task) = self.task_in(task_id, TaskState::Reported).await? else {
                return Ok(());
            };
            let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
            // A proof is checked against the module, the input and the output themselves.
            let proof = task.task.policy.unwrap_or_default().kind() == PolicyKind::Proof;
            let module = if proof {
                self.store
                    .module_bytes(&task.task.module_hash)
                    .await
                    .map_err(db_error)?
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            VerifyResultRequest {
                task_id: task_id.to_string(),
                module_hash: task.task.module_hash.clone(),
                input_hash: task.task.input_hash.clone(),
                policy: task.task.policy,
                reports: attempts
                    .iter()
                    .filter(|x| x.state == attempt_state::REPORTED)
                    .map(|r| ReportedResult {
                        attempt_id: r.attempt_id.clone(),
                        node_id: r.node_id.clone(),
                        operator: r.operator.clone(),
                        receipt: r.receipt.clone(),
                        observed_output_hash: sha256_hex(&r.output),
                        output: if proof { r.output.clone() } else { Vec::new() },
                        proof: r.proof.clone(),
                        proof_error: r.proof_error.clone(),
                        spot_check: r.spot_check,
                    })
                    .collect(),
                module,
                input: if proof {
                    task.input.clone()
                } else {
                    Vec::new()
                },
                memory_limit_mib: task.task.memory_limit_mib,
                // The price the hold was made at: a price changed since (a restart with another
                // configuration) must not bill more than was held.
                micro_credits_per_million_fuel: match task.micro_credits_per_million_fuel {
                    0 => self.config.micro_credits_per_million_fuel,
                    price => price,
                },
                spot_checks: task.spot_checks,
            }
        };
        let asked: std::collections::BTreeSet<String> = request
            .reports
            .iter()
            .map(|r| r.attempt_id.clone())
            .collect();
        let checks = request.spot_checks;
        let verdict = match self.verifier.verify_result(request).await {
            Ok(v) => v,
            Err(e) => {
                // The reports stay; the sweep asks again.
                tracing::warn!(task_id, error = %e.message(), "no verdict yet; will retry");
                return Ok(());
            }
        };
        if verdict.verdict() == Verdict::Verified && verdict.settlement.is_none() {
            // The ledger pays only on a settlement; a verifier that accepts without one is of
            // an older build. Ask again later rather than keep a verdict nothing can settle.
            tracing::warn!(
                task_id,
                "the verifier accepted without a settlement; will retry"
            );
            return Ok(());
        }
        if verdict.spot_checks != checks {
            // A verifier of an older build judges checked results by the unchecked rule (one
            // operator suffices, every agreeing run paid): ask again once it is upgraded.
            tracing::warn!(
                task_id,
                checks,
                applied = verdict.spot_checks,
                "the verifier did not apply the spot checks; will retry"
            );
            return Ok(());
        }
        {
            let _t = self.transitions.lock().await;
            let Some(task) = self.task_in(task_id, TaskState::Reported).await? else {
                return Ok(());
            };
            let attempts = self.store.attempts(task_id).await.map_err(db_error)?;
            // A verdict answers the reports it was asked about: if the task went round again
            // meanwhile (another caller's verdict applied first), this one is stale.
            let reported: std::collections::BTreeSet<String> = attempts
                .iter()
                .filter(|a| a.state == attempt_state::REPORTED)
                .map(|a| a.attempt_id.clone())
                .collect();
            if reported != asked || task.spot_checks != checks {
                tracing::info!(task_id, "a verdict on reports since changed is dropped");
                return Ok(());
            }
            let mut t = Transition::default();
            let verified = self
                .apply_verdict(&task, &attempts, verdict, &mut t)
                .await?;
            self.finish(t).await?;
            if !verified {
                return Ok(());
            }
        }
        self.settle(task_id).await
    }

    /// Records a verdict in `t`; true when the task is now VERIFIED.
    pub(in crate::dispatch) async fn apply_verdict(
        &self,
        task: &TaskRow,
        attempts: &[AttemptRow],
        verdict: TaskVerdict,
        t: &mut Transition,
    ) -> Result<bool> {
        let task_id = &task.task.task_id;
        if verdict.verdict() == Verdict::Pending {
            // Undecided: one spot check that disagrees with the result. A third operator's
            // node decides; nothing is rejected yet.
            if task.spot_checks == 1 {
                self.escalate_spot_check(task, &verdict.reason, t);
                return Ok(false);
            }
            return Err(internal(format!(
                "the verifier left task {task_id} undecided with {} spot checks: {}",
                task.spot_checks, verdict.reason
            )));
        }
        self.record_verdict(task, attempts, &verdict, t);
        for id in &verdict.rejected_attempt_ids {
            t.push(Change::attempt(id, attempt_state::REJECTED));
            t.count(Count::Rejected);
        }
        if verdict.verdict() == Verdict::Verified {
            for id in &verdict.accepted_attempt_ids {
                t.push(Change::attempt(id, attempt_state::ACCEPTED));
            }
            let accepted: Vec<&AttemptRow> = attempts
                .iter()
                .filter(|a| verdict.accepted_attempt_ids.contains(&a.attempt_id))
                .collect();
            let Some(first) = accepted.first() else {
                return Err(internal("verifier accepted no attempt"));
            };
            let receipts = accepted.iter().filter_map(|a| a.receipt.clone()).collect();
            let reason = verdict.reason.clone();
            t.push(Change::Result {
                task_id: task_id.clone(),
                attempt: Box::new((*first).clone()),
                verdict,
                receipts,
            });
            t.event(task_id, TaskState::Verified, reason);
            Ok(true)
        } else {
            t.push(Change::Verdict {
                task_id: task_id.clone(),
                verdict: verdict.verdict(),
                reason: verdict.reason.clone(),
            });
            // The next run's result is a new one: checked (or not) afresh.
            let mut fresh = task.clone();
            if task.spot_checks > 0 {
                t.push(Change::SpotChecks {
                    task_id: task_id.clone(),
                    checks: 0,
                });
                fresh.spot_checks = 0;
            }
            self.requeue(
                &fresh,
                TaskState::Rejected,
                &format!("rejected: {}", verdict.reason),
                t,
            )
            .await?;
            Ok(false)
        }
    }

    /// Pays the nodes whose results were accepted, as the verifier's signed settlement says
    /// (the ledger pays nothing else), and refunds the rest of the hold. Capture is idempotent
    /// at the ledger, so a retry is safe.
    pub(in crate::dispatch) async fn settle(&self, task_id: &str) -> Result<()> {
        let Some(settlement) = self.store.settlement(task_id).await.map_err(db_error)? else {
            // Verified by a build that made no settlements: the ledger would refuse to pay. It
            // stays VERIFIED (and says so) without holding up the sweep's other work.
            tracing::error!(
                task_id,
                "verified without a settlement from the verifier (an older build); the ledger cannot pay it"
            );
            return Ok(());
        };
        let capture = CaptureRequest {
            task_id: task_id.to_string(),
            settlement: Some(settlement),
        };
        let hold = match self.ledger.capture(capture).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(task_id, error = %e.message(), "capture failed; will retry");
                return Ok(());
            }
        };
        let _t = self.transitions.lock().await;
        if self.task_in(task_id, TaskState::Verified).await?.is_none() {
            return Ok(());
        }
        let mut t = Transition::of(Change::Charged {
            task_id: task_id.to_string(),
            charged: hold.paid,
        });
        t.count(Count::Settled);
        t.push(Change::HoldClosed {
            task_id: task_id.to_string(),
        });
        t.event(
            task_id,
            TaskState::Settled,
            format!(
                "paid {} micro-credits to the node operator(s), refunded {}",
                hold.paid, hold.refunded
            ),
        );
        self.finish(t).await
    }

    /// Ends the task's leased and running attempts in `state` and stops them on their nodes.
    pub(in crate::dispatch) async fn stop_active(
        &self,
        task_id: &str,
        state: &'static str,
        reason: &str,
        t: &mut Transition,
    ) -> Result<()> {
        for a in self.store.attempts(task_id).await.map_err(db_error)? {
            if matches!(
                t.attempt_state(&a.attempt_id, &a.state),
                attempt_state::LEASED | attempt_state::RUNNING
            ) {
                t.push(Change::attempt(&a.attempt_id, state));
                t.stop(&a.node_id, &a.attempt_id, reason);
            }
        }
        Ok(())
    }

    /// FAILED; the hold is released by the sweep (outside the lock, retried until it succeeds).
    pub(in crate::dispatch) async fn fail(
        &self,
        task: &TaskRow,
        reason: &str,
        t: &mut Transition,
    ) -> Result<()> {
        let task_id = &task.task.task_id;
        self.stop_active(task_id, attempt_state::CANCELLED, reason, t)
            .await?;
        t.event(task_id, TaskState::Failed, reason);
        t.count(Count::Failed);
        t.wake_sweep();
        Ok(())
    }

    /// Gives the hold of a failed or cancelled task back. Release is idempotent at the ledger.
    pub(in crate::dispatch) async fn release(&self, task_id: &str, reason: &str) -> Result<()> {
        let release = ReleaseRequest {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        };
        match self.ledger.release(release).await {
            Ok(_) => {
                self.finish(Transition::of(Change::HoldClosed {
                    task_id: task_id.to_string(),
                }))
                .await
            }
            Err(e) => {
                tracing::warn!(task_id, error = %e.message(), "releasing held credits failed; will retry");
                Ok(())
            }
        }
    }

    /// Cancels a task for its submitter.
    pub async fn cancel(&self, task_id: &str) -> Result<()> {
        {
            let _t = self.transitions.lock().await;
            let task = self
                .store
                .task_summary(task_id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| Status::not_found(format!("no task {task_id}")))?;
            let state = task.state();
            // A retried cancel (its answer was lost) is answered with the state as it is.
            if state == TaskState::Cancelled {
                return Ok(());
            }
            if is_terminal(state) || state == TaskState::Verified {
                return Err(Status::failed_precondition(format!(
                    "task {task_id} is already {state}"
                )));
            }
            let mut t = Transition::default();
            self.stop_active(
                task_id,
                attempt_state::CANCELLED,
                "cancelled by the submitter",
                &mut t,
            )
            .await?;
            t.event(
                task_id,
                TaskState::Cancelled,
                "cancelled by the submitter; held credits released",
            );
            self.finish(t).await?;
        }
        self.release(task_id, "cancelled").await
    }
}
