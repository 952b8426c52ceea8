//! The verdicts: receipts checked against the registry's node keys, replicas compared, proofs
//! checked against the module, input and output themselves; each verdict recorded once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tonic::Status;
use zkmesh_kit::db::Pool;
use zkmesh_proto::registry_service_client::RegistryServiceClient;
use zkmesh_proto::*;

use crate::policy::check_policy;

/// A report that passed its checks, with its node's operator as the registry names it.
pub(crate) type ValidReport<'a> = (&'a ReportedResult, String);

/// The most spot checks of one receipt-policy result: the first, and a third operator's run
/// when the first disagrees.
pub(crate) const MAX_SPOT_CHECKS: u32 = 2;

/// Marks a check that could not be made (the registry is unreachable).
pub(crate) const UNAVAILABLE: &str = "registry unavailable: ";

/// The schema, as SQL files under `migrations/sqlite/` (a PostgreSQL set can sit beside it),
/// embedded at build time and applied by sqlx's migrator.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// What the verifier judges with: its database, the circuits, the programs it lowered, the
/// registry's node keys.
pub(crate) struct Checker {
    pub(crate) db: Pool,
    pub(crate) circuits: Arc<crate::circuits::Circuits>,
    /// Lowered programs by module hash (the verifier's own lowering).
    pub(crate) programs: Mutex<HashMap<(String, u64), Arc<zkmesh_prover::isa::Program>>>,
    /// The program's share of the public inputs, by module hash and verifying key: computed once
    /// per module, it takes most of the multi-scalar product out of each verification.
    pub(crate) terms: Mutex<HashMap<(String, u64, String), Arc<zkmesh_prover::groth::ProgramTerm>>>,
    pub(crate) registry: RegistryServiceClient<tonic::transport::Channel>,
    /// Signs settlements: what the ledger may pay for a verified task.
    pub(crate) key: ed25519_dalek::SigningKey,
    pub(crate) verdicts: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl Checker {
    /// The node's receipt key, operator and status, from the registry (asked every time: the
    /// status may have changed to revoked).
    pub(crate) async fn node_key(
        &self,
        node_id: &str,
    ) -> Result<(Vec<u8>, String, NodeStatus), Status> {
        let node = self
            .registry
            .clone()
            .get_node(GetNodeRequest {
                node_id: node_id.to_string(),
            })
            .await?
            .into_inner()
            .node
            .ok_or_else(|| Status::internal("the registry answered GetNode without a node"))?;
        let status = node.status();
        Ok((node.receipt_public_key, node.operator, status))
    }

    /// The operator of the report's node, as the registry names it, if the report is
    /// acceptable; otherwise why it is not. The operator the scheduler wrote into the report is
    /// not used: replicas are counted, and paid, by the registry's word.
    pub(crate) async fn check_report(
        &self,
        task: &VerifyResultRequest,
        report: &ReportedResult,
    ) -> Result<String, String> {
        let Some(receipt) = &report.receipt else {
            return Err("no receipt".into());
        };
        if receipt.task_id != task.task_id
            || receipt.module_hash != task.module_hash
            || receipt.input_hash != task.input_hash
        {
            return Err("receipt is for another task, module or input".into());
        }
        if receipt.node_id != report.node_id {
            return Err("receipt names another node".into());
        }
        if receipt.output_hash != report.observed_output_hash {
            return Err("receipt's output hash differs from the output reported".into());
        }
        let (key, operator, status) = match self.node_key(&report.node_id).await {
            Ok(k) => k,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Err(format!("node unknown to the registry: {}", e.message()));
            }
            // The registry is down: no verdict now, rather than a wrong one.
            Err(e) => return Err(format!("{UNAVAILABLE}{}", e.message())),
        };
        // Only an approved node's work counts (ACTIVE, or OFFLINE since): not one waiting for
        // the admin, denied or revoked, and not one without an operator.
        if !matches!(status, NodeStatus::Active | NodeStatus::Offline) {
            return Err(format!(
                "node is {}, not approved",
                status
                    .as_str_name()
                    .trim_start_matches("NODE_STATUS_")
                    .to_lowercase()
            ));
        }
        if operator.is_empty() {
            return Err("node has no operator in the registry".into());
        }
        zkmesh_kit::receipt::verify(receipt, &key).map_err(|e| e.to_string())?;
        Ok(operator)
    }

    /// Why a report's proof does not prove its result, if it does not. The statement is built
    /// here, from this verifier's own lowering of the module, the task's input and the output
    /// the scheduler received.
    pub(crate) async fn check_proof(
        &self,
        task: &VerifyResultRequest,
        report: &ReportedResult,
    ) -> Option<String> {
        let Some(proof) = report.proof.clone() else {
            if report.proof_error.is_empty() {
                return Some("no proof attached".into());
            }
            return Some(format!("no proof: {}", report.proof_error));
        };
        if sha256_hex(&task.module) != task.module_hash
            || sha256_hex(&task.input) != task.input_hash
        {
            return Some(format!(
                "{UNAVAILABLE}the scheduler sent a module or input that does not match the task"
            ));
        }
        let Ok(keys) = self.checked(&proof.circuit_class).await else {
            let state = self.circuits.state(&proof.circuit_class);
            if state.starts_with("setting up") {
                return Some(format!(
                    "{UNAVAILABLE}circuit {} is {state}",
                    proof.circuit_class
                ));
            }
            return Some(format!(
                "proof is for circuit class {:?}, which is {state} here",
                proof.circuit_class
            ));
        };
        let receipt = report.receipt.as_ref().expect("checked before");
        // The halt code the statement holds; a proof without a known halt cannot be checked.
        let Some(status) = proof.halt_code() else {
            return Some(format!(
                "the proof's halt ({}) is not one this verifier knows",
                proof.halt
            ));
        };
        // The receipt's exit is the one the proof's halt status means: returned, a trap, or a
        // trap after a memory.grow past the task's memory limit returned -1.
        let proved = zkmesh_prover::zkvm::ending(status);
        if zkmesh_prover::zkvm::ending_of_exit(receipt.exit) != Some(proved) {
            return Some(format!(
                "the receipt's exit ({}) contradicts the proof's halt status {} ({proved:?})",
                receipt.exit, status
            ));
        }
        // Every stored task has its effective limit (the scheduler substitutes its default); 0
        // comes only from a scheduler older than the field, whose statement would be another.
        if task.memory_limit_mib == 0 {
            return Some(format!(
                "{UNAVAILABLE}the scheduler sent no memory limit, which the proof's program depends on"
            ));
        }
        let memory_limit = (task.memory_limit_mib as u64) << 20;
        let program = match self.program(&task.module_hash, memory_limit, &task.module) {
            Ok(p) => p,
            Err(e) => return Some(format!("module is not provable: {e}")),
        };
        let (input, output) = (task.input.clone(), report.output.clone());
        // Each segment's proof is bound to this task and to the node that reports it.
        let binding = zkmesh_prover::zkvm::Binding::new(&task.task_id, &report.node_id);
        let links: Vec<(u64, &str, &str)> = proof
            .links
            .iter()
            .map(|l| (l.steps, l.state_out.as_str(), l.memory_out.as_str()))
            .collect();
        let claim = match zkmesh_prover::zkvm::Claim::parse(
            &proof.circuit_class,
            proof.steps,
            status,
            &proof.state_out,
            &links,
        ) {
            Ok(c) => c,
            Err(e) => return Some(format!("malformed proof claim: {e}")),
        };
        let mut proofs: Vec<Vec<u8>> = proof.links.iter().map(|l| l.proof.clone()).collect();
        proofs.push(proof.proof.clone());
        let started = std::time::Instant::now();
        let term_key = (
            task.module_hash.clone(),
            memory_limit,
            keys.info.verifying_key_sha256.clone(),
        );
        let cached = self.terms.lock().unwrap().get(&term_key).cloned();
        let result = tokio::task::spawn_blocking(move || {
            use zkmesh_prover::zkvm;
            let class = zkvm::class_named(&claim.class)
                .ok_or_else(|| zkvm::VerifyError::UnknownClass(claim.class.clone()))?;
            let term = match cached {
                Some(t) => t,
                None => Arc::new(zkvm::program_term(&keys.pvk, &class, &program)?),
            };
            zkvm::verify_in(
                &class,
                &keys.pvk,
                Some(&term),
                &program,
                &input,
                &output,
                &claim,
                &proofs,
                &binding,
            )
            .map(|()| term)
        })
        .await
        .map_err(|e| format!("verification crashed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        let result = result.map(|term| {
            let mut terms = self.terms.lock().unwrap();
            if terms.len() >= 256 {
                terms.clear();
            }
            terms.insert(term_key, term);
        });
        tracing::info!(task_id = %task.task_id, us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "proof checked");
        result.err()
    }

    /// A class's keys, checked against today's constraint system at the class's first use
    /// ([`crate::circuits::Circuits::checked`]), or FAILED_PRECONDITION saying what state the class
    /// is in.
    pub(crate) async fn ready(&self, name: &str) -> Result<Arc<crate::circuits::Ready>, Status> {
        self.checked(name)
            .await
            .map_err(|e| Status::failed_precondition(format!("circuit class {name:?} {e}")))
    }

    pub(crate) async fn checked(&self, name: &str) -> Result<Arc<crate::circuits::Ready>, String> {
        let (circuits, name) = (self.circuits.clone(), name.to_string());
        tokio::task::spawn_blocking(move || circuits.checked(&name))
            .await
            .unwrap_or_else(|e| Err(format!("check crashed: {e}")))
    }

    /// The verifier's own lowering of a module for a memory limit (part of the program: the
    /// limit's check before every memory.grow), cached by both.
    pub(crate) fn program(
        &self,
        hash: &str,
        memory_limit: u64,
        wasm: &[u8],
    ) -> Result<Arc<zkmesh_prover::isa::Program>, String> {
        let key = (hash.to_string(), memory_limit);
        if let Some(p) = self.programs.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let p =
            Arc::new(zkmesh_prover::zkvm::program(wasm, memory_limit).map_err(|e| e.to_string())?);
        let mut programs = self.programs.lock().unwrap();
        // Bounded, as the terms are: a submitter could name many limits for one module.
        if programs.len() >= 256 {
            programs.clear();
        }
        programs.insert(key, p.clone());
        Ok(p)
    }

    pub(crate) async fn judge(&self, req: &VerifyResultRequest) -> Result<TaskVerdict, Status> {
        check_policy(
            req.policy
                .as_ref()
                .unwrap_or(&VerificationPolicy::default()),
        )?;
        let policy = req.policy.unwrap_or_default();
        let checks = req.spot_checks;
        if checks > 0 && policy.kind() != PolicyKind::Receipt {
            return Err(Status::invalid_argument(
                "spot checks are made of receipt-policy results only",
            ));
        }
        if checks > MAX_SPOT_CHECKS {
            return Err(Status::invalid_argument(format!(
                "a result is spot-checked at most {MAX_SPOT_CHECKS} times, not {checks}"
            )));
        }
        // Checks are of one run: exactly one report is not a check (the one paid when its
        // result stands), and none is a check when nothing was checked.
        let firsts = req.reports.iter().filter(|r| !r.spot_check).count();
        if (checks > 0 && firsts != 1) || (checks == 0 && firsts != req.reports.len()) {
            return Err(Status::invalid_argument(format!(
                "{firsts} of {} reports are not spot checks, with {checks} checks asked for",
                req.reports.len()
            )));
        }
        let mut valid = Vec::new();
        let mut rejected = Vec::new();
        let mut reasons = Vec::new();
        // One report per attempt and per node: the same report sent twice (by a scheduler that
        // lies) must not be counted, or paid, twice.
        let mut attempts_seen = BTreeSet::new();
        let mut nodes_seen = BTreeSet::new();
        for report in &req.reports {
            if !attempts_seen.insert(report.attempt_id.as_str())
                || !nodes_seen.insert(report.node_id.as_str())
            {
                return Err(Status::invalid_argument(format!(
                    "attempt {} (node {}) is reported more than once",
                    report.attempt_id, report.node_id
                )));
            }
        }
        for report in &req.reports {
            let mut verdict = self.check_report(req, report).await;
            if verdict.is_ok()
                && policy.kind() == PolicyKind::Proof
                && let Some(why) = self.check_proof(req, report).await
            {
                verdict = Err(why);
            }
            match verdict {
                Err(why) if why.starts_with(UNAVAILABLE) => {
                    return Err(Status::unavailable(why));
                }
                Ok(operator) => valid.push((report, operator)),
                Err(why) => {
                    tracing::warn!(task_id = %req.task_id, node_id = %report.node_id, %why, "report rejected");
                    reasons.push(format!("{}: {why}", report.node_id));
                    rejected.push(report.attempt_id.clone());
                }
            }
        }
        let needed = match policy.kind() {
            PolicyKind::Replicate => policy.replicas as usize / 2 + 1,
            // A checked result stands when two operators agree on it: the checked node and its
            // checker, or (when they disagree) either of them and a third operator.
            PolicyKind::Receipt if checks > 0 => 2,
            _ => 1,
        };
        // Group valid reports by everything the receipt asserts about the run; count each
        // operator once so one operator's many nodes cannot outvote the others.
        let mut groups: BTreeMap<(String, i32, u64), Vec<&ValidReport>> = BTreeMap::new();
        let timed_out = |r: &ReportedResult| {
            r.receipt.as_ref().expect("checked above").exit == ExitKind::Timeout as i32
        };
        // Under spot checks a run stopped by the wall clock says nothing against a run that
        // completed (a slower machine, not another answer): when one completed, timeouts abstain.
        let abstain = checks > 0 && valid.iter().any(|(r, _)| !timed_out(r));
        let voters: Vec<&ValidReport> = valid
            .iter()
            .filter(|(r, _)| !(abstain && timed_out(r)))
            .collect();
        for valid_report in voters.iter().copied() {
            let r = valid_report.0;
            let receipt = r.receipt.as_ref().expect("checked above");
            // A run stopped by the wall clock is not deterministic (how far it got depends on
            // the machine), so timeouts agree on the exit alone.
            let key = if receipt.exit == ExitKind::Timeout as i32 {
                (String::new(), receipt.exit, 0)
            } else {
                (receipt.output_hash.clone(), receipt.exit, receipt.fuel_used)
            };
            groups.entry(key).or_default().push(valid_report);
        }
        let winner = groups
            .iter()
            .find(|(_, members)| {
                members
                    .iter()
                    .map(|(_, operator)| operator.as_str())
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= needed
            })
            .map(|(_, members)| members.clone());
        // Both checks timed out where one run completed: nothing disagrees with it, and it is
        // judged as an unchecked result would be.
        let unchecked = checks as usize == MAX_SPOT_CHECKS as usize && voters.len() == 1;
        let winner = winner.or_else(|| unchecked.then(|| voters.clone()));
        let mut response = match winner {
            Some(members) => {
                let members: Vec<&ValidReport> = members.to_vec();
                let settlement = self.settle(req, &members);
                let members: Vec<&ReportedResult> = members.iter().map(|m| m.0).collect();
                let output_hash = &members[0]
                    .receipt
                    .as_ref()
                    .expect("checked above")
                    .output_hash;
                let accepted: Vec<String> = members.iter().map(|m| m.attempt_id.clone()).collect();
                for (r, _) in &valid {
                    if !accepted.contains(&r.attempt_id) {
                        if abstain && timed_out(r) {
                            reasons.push(format!("{}: timed out (no vote)", r.node_id));
                        } else {
                            reasons.push(format!("{}: outvoted", r.node_id));
                        }
                        rejected.push(r.attempt_id.clone());
                    }
                }
                TaskVerdict {
                    task_id: req.task_id.clone(),
                    verdict: Verdict::Verified as i32,
                    reason: match policy.kind() {
                        PolicyKind::Replicate => {
                            format!("{} of {} operators agree", members.len(), policy.replicas)
                        }
                        PolicyKind::Receipt if unchecked && members.len() == 1 => {
                            "receipt signature valid; its spot checks timed out, so it is judged unchecked".into()
                        }
                        PolicyKind::Receipt if checks > 0 => format!(
                            "receipt signature valid; spot-checked: {} of {} operators agree",
                            members.len(),
                            checks + 1
                        ),
                        PolicyKind::Proof => {
                            let p = members[0].proof.as_ref().expect("checked above");
                            if p.links.is_empty() {
                                format!(
                                    "Groth16 proof valid ({} steps, class {})",
                                    p.steps, p.circuit_class
                                )
                            } else {
                                format!(
                                    "Groth16 proofs valid ({} steps in {} chained segments, class {})",
                                    p.steps,
                                    p.links.len() + 1,
                                    p.circuit_class
                                )
                            }
                        }
                        _ => "receipt signature valid".into(),
                    },
                    accepted_attempt_ids: accepted,
                    rejected_attempt_ids: rejected,
                    output_hash: output_hash.clone(),
                    settlement: Some(settlement),
                    spot_checks: 0,
                }
            }
            // One check that disagrees (or is invalid) decides nothing: a third operator will.
            None if checks == 1 => TaskVerdict {
                task_id: req.task_id.clone(),
                verdict: Verdict::Pending as i32,
                reason: if reasons.is_empty() {
                    "the check's result differs from the result checked".into()
                } else {
                    reasons.join("; ")
                },
                ..Default::default()
            },
            None => {
                rejected.extend(valid.iter().map(|(r, _)| r.attempt_id.clone()));
                if reasons.is_empty() {
                    reasons.push(format!("no result has the agreement of {needed} operators"));
                }
                TaskVerdict {
                    task_id: req.task_id.clone(),
                    verdict: Verdict::Rejected as i32,
                    reason: reasons.join("; "),
                    accepted_attempt_ids: vec![],
                    rejected_attempt_ids: rejected,
                    output_hash: String::new(),
                    settlement: None,
                    spot_checks: 0,
                }
            }
        };
        response.spot_checks = checks;
        Ok(response)
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    zkmesh_prover::zkvm::sha256_hex(bytes)
}
