//! Settlements: what the ledger may pay for a verified task, signed with the verifier's key.
//!
//! Each accepted report's node is paid through its operator's account, as the registry names
//! the operator, for the fuel the verifier bills:
//! - every policy bills no more than the fuel all accepted receipts agree on (their least: a
//!   replica that claims more than the others is not paid for it);
//! - under the proof policy, also no more than the proof allows: a unit of fuel per proved step
//!   and per byte of input and output (wasmtime bills a unit per instruction and the host a
//!   unit per byte it copies, and the zkVM takes at least one step per instruction), so a
//!   prover cannot bill a run its proof does not show.
//!
//! The fuel of receipt-policy results is the node's signed word; spot checks are what keeps it
//! honest (see the README's threat model).

use zkmesh_kit::now_ms;
use zkmesh_kit::settlement::{cost, sign};
use zkmesh_proto::*;

use crate::checker::Checker;

/// The fuel a proof shows: its steps plus the bytes of input and output the host copied.
pub(crate) fn proved_fuel(proof: &ZkProof, input: &[u8], output: &[u8]) -> u64 {
    proof
        .steps
        .saturating_add(input.len() as u64)
        .saturating_add(output.len() as u64)
}

/// Who is paid for the accepted `members` (each a report and its node's operator, from the
/// registry), and for how much fuel.
pub(crate) fn payees(
    task: &VerifyResultRequest,
    members: &[&(&ReportedResult, String)],
) -> Vec<SettlementPayee> {
    let fuel_of = |r: &ReportedResult| r.receipt.as_ref().map_or(0, |x| x.fuel_used);
    let agreed = members.iter().map(|m| fuel_of(m.0)).min().unwrap_or(0);
    let price = task.micro_credits_per_million_fuel;
    let proof = task.policy.unwrap_or_default().kind() == PolicyKind::Proof;
    members
        .iter()
        .map(|(report, operator)| {
            let fuel = match (&report.proof, proof) {
                (Some(p), true) => agreed.min(proved_fuel(p, &task.input, &report.output)),
                // Under the proof policy a report without a proof is never accepted; bill
                // nothing rather than the receipt's word if one ever were.
                (None, true) => 0,
                _ => agreed,
            };
            SettlementPayee {
                account: format!("operator/{operator}"),
                node_id: report.node_id.clone(),
                attempt_id: report.attempt_id.clone(),
                fuel,
                micro_credits_per_million_fuel: price,
                amount: cost(fuel, price),
            }
        })
        .collect()
}

impl Checker {
    /// The signed settlement for the accepted `members`.
    pub(crate) fn settle(
        &self,
        task: &VerifyResultRequest,
        members: &[&(&ReportedResult, String)],
    ) -> SignedSettlement {
        sign(
            &Settlement {
                task_id: task.task_id.clone(),
                output_hash: members
                    .first()
                    .and_then(|m| m.0.receipt.as_ref())
                    .map(|r| r.output_hash.clone())
                    .unwrap_or_default(),
                payees: payees(task, members),
                signed_at_ms: now_ms(),
                policy: task.policy.unwrap_or_default().to_string(),
            },
            &self.key,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(attempt: &str, fuel: u64, proof: Option<ZkProof>) -> ReportedResult {
        ReportedResult {
            attempt_id: attempt.into(),
            node_id: format!("n-{attempt}"),
            operator: "what the scheduler says".into(),
            receipt: Some(Receipt {
                fuel_used: fuel,
                ..Default::default()
            }),
            output: b"1234".to_vec(),
            proof,
            ..Default::default()
        }
    }

    fn task(policy: PolicyKind) -> VerifyResultRequest {
        VerifyResultRequest {
            task_id: "t".into(),
            policy: Some(VerificationPolicy {
                kind: policy as i32,
                replicas: 3,
            }),
            input: vec![0; 10],
            micro_credits_per_million_fuel: 2_000_000,
            ..Default::default()
        }
    }

    /// A prover that signs a receipt for the whole fuel limit is paid only for what its proof
    /// shows: its steps and the bytes of input and output. One that claims less gets its claim.
    #[test]
    fn a_proof_caps_the_fuel_its_prover_can_bill() {
        let proof = ZkProof {
            steps: 1000,
            ..Default::default()
        };
        let greedy = report("a", 10_000_000, Some(proof.clone()));
        let members = [(&greedy, "acme".to_string())];
        let paid = payees(
            &task(PolicyKind::Proof),
            &members.iter().collect::<Vec<_>>(),
        );
        assert_eq!((paid[0].fuel, paid[0].amount), (1000 + 10 + 4, 2028));
        assert_eq!(paid[0].account, "operator/acme");
        let modest = report("b", 900, Some(proof));
        let members = [(&modest, "acme".to_string())];
        let paid = payees(
            &task(PolicyKind::Proof),
            &members.iter().collect::<Vec<_>>(),
        );
        assert_eq!(paid[0].fuel, 900);
        // No proof: nothing, whatever the receipt says.
        let bare = report("c", 900, None);
        let members = [(&bare, "acme".to_string())];
        let paid = payees(
            &task(PolicyKind::Proof),
            &members.iter().collect::<Vec<_>>(),
        );
        assert_eq!(paid[0].fuel, 0);
    }

    /// Replicas are paid the fuel they all signed: the least of the agreeing receipts (a
    /// timeout's replicas agree on the exit alone, and one may claim more than the others).
    #[test]
    fn replicas_are_paid_the_fuel_they_agree_on() {
        let (a, b) = (report("a", 500, None), report("b", 5_000_000, None));
        let members = [(&a, "acme".to_string()), (&b, "bolt".to_string())];
        let paid = payees(
            &task(PolicyKind::Replicate),
            &members.iter().collect::<Vec<_>>(),
        );
        let got: Vec<(&str, u64, u64)> = paid
            .iter()
            .map(|p| (p.account.as_str(), p.fuel, p.amount))
            .collect();
        assert_eq!(
            got,
            vec![("operator/acme", 500, 1000), ("operator/bolt", 500, 1000)]
        );
    }
}
