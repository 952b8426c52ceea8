//! Settlements: what the ledger may pay for a verified task, signed with the verifier's key.
//!
//! Each accepted report's node is paid through its operator's account, as the registry names
//! the operator, for the fuel its receipt signs, but never more than the agreeing receipts'
//! median (the lower one): replicas that agree on (output, exit, fuel) all sign the same fuel,
//! while timeouts agree on the exit alone, and then one replica that claims much more than the
//! others is not paid for it, nor can one that claims nothing cut the others' pay.
//!
//! The fuel of receipt-policy results is the node's signed word, kept honest by spot checks:
//! a checked result stands only when another operator's run agrees on it, fuel included. A
//! spot-checked result pays one run, as an unchecked one does. Under the proof policy the fuel
//! is the node's word as well: the proof shows the zkVM's steps, which are not wasmtime's fuel (the lowering fuses several
//! wasm instructions into one step, and expands `memory.copy` into many), so it bounds nothing
//! until the zkVM meters fuel itself.

use zkmesh_kit::now_ms;
use zkmesh_kit::settlement::{cost, sign};
use zkmesh_proto::*;

use crate::checker::{Checker, ValidReport};

/// Who is paid for the accepted `members` (each a report and its node's operator, from the
/// registry), and for how much fuel.
pub(crate) fn payees(task: &VerifyResultRequest, members: &[&ValidReport]) -> Vec<SettlementPayee> {
    let fuel_of = |r: &ReportedResult| r.receipt.as_ref().map_or(0, |x| x.fuel_used);
    let mut claims: Vec<u64> = members.iter().map(|m| fuel_of(m.0)).collect();
    claims.sort_unstable();
    let median = claims.get(claims.len().saturating_sub(1) / 2).copied();
    let price = task.micro_credits_per_million_fuel;
    // A spot-checked receipt-policy result pays one run, as an unchecked one does: the first
    // run's node when its result stands, otherwise the first checker the majority agrees with.
    let members: Vec<&&ValidReport> = if task.spot_checks > 0 {
        let first = members.iter().find(|m| !m.0.spot_check);
        first.or(members.first()).into_iter().collect()
    } else {
        members.iter().collect()
    };
    members
        .iter()
        .map(|(report, operator)| {
            let fuel = fuel_of(report).min(median.unwrap_or(0));
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
        members: &[&ValidReport],
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

    fn paid(members: &[(&ReportedResult, String)]) -> Vec<(String, u64, u64)> {
        payees(
            &task(PolicyKind::Replicate),
            &members.iter().collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|p| (p.account, p.fuel, p.amount))
        .collect()
    }

    /// Replicas that agree sign the same fuel and are paid it. Timeouts agree on the exit
    /// alone: one that claims far more than the others is paid the median, and one that claims
    /// nothing cannot cut the others' pay (of three; of two, the lower claim is the median).
    #[test]
    fn replicas_are_paid_their_fuel_up_to_the_median() {
        let (a, b, c) = (
            report("a", 500, None),
            report("b", 500, None),
            report("c", 500, None),
        );
        let honest = paid(&[
            (&a, "acme".into()),
            (&b, "bolt".into()),
            (&c, "coil".into()),
        ]);
        assert!(
            honest.iter().all(|p| (p.1, p.2) == (500, 1000)),
            "{honest:?}"
        );
        let greedy = report("c", 5_000_000, None);
        let got = paid(&[
            (&a, "acme".into()),
            (&b, "bolt".into()),
            (&greedy, "coil".into()),
        ]);
        assert_eq!(got[2], ("operator/coil".to_string(), 500, 1000));
        let nothing = report("c", 0, None);
        let got = paid(&[
            (&a, "acme".into()),
            (&b, "bolt".into()),
            (&nothing, "coil".into()),
        ]);
        assert_eq!((got[0].1, got[1].1, got[2].1), (500, 500, 0));
        let got = paid(&[(&a, "acme".into()), (&greedy, "coil".into())]);
        assert_eq!((got[0].1, got[1].1), (500, 500));
        // The scheduler's word on the operator is not used.
        assert_eq!(got[0].0, "operator/acme");
    }
}
