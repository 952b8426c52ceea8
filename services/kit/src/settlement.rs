//! Settlements: what the verifier allows the ledger to pay for one verified task, signed with
//! the verifier's Ed25519 key.
//!
//! The scheduler carries a settlement from the verifier's verdict to the ledger's Capture, and
//! the ledger pays exactly its payees and journals it beside each payout; an audit re-checks
//! every payout against it with the verifier key it pinned. So the scheduler's key alone cannot
//! pay anyone (it holds no verifier signature naming them), and the ledger's key alone cannot
//! either (its payouts would not match a settlement).
//!
//! The signature covers `DOMAIN || bytes`, where `bytes` is the Settlement's protobuf encoding
//! exactly as signed; it is decoded only after the signature checks, so no canonical encoding
//! is needed.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;
use zkmesh_proto::{Settlement, SignedSettlement};

const DOMAIN: &[u8] = b"zkmesh.settlement.v1\0";

/// Micro-credits for `fuel` at `price` micro-credits per million fuel, rounded up.
pub fn cost(fuel: u64, price: u64) -> u64 {
    (fuel as u128 * price as u128)
        .div_ceil(1_000_000)
        .min(u64::MAX as u128) as u64
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettlementError {
    #[error("no settlement from the verifier")]
    Missing,
    #[error("the settlement's signature does not verify with any trusted verifier key")]
    Forged,
    #[error("the settlement is malformed: {0}")]
    Malformed(String),
    #[error("the settlement is for task {found:?}, not {expected:?}")]
    OtherTask { expected: String, found: String },
    #[error("not a valid Ed25519 verifier key (32 bytes, on the curve, not of small order)")]
    BadKey,
}

/// A verifier's public key, strictly: 32 bytes, a point of the curve, not a weak one.
pub fn verifier_key(public_key: &[u8]) -> Result<VerifyingKey, SettlementError> {
    crate::receipt::receipt_key(public_key).map_err(|_| SettlementError::BadKey)
}

/// Verifier keys from hex strings (a configuration's or a pin's).
pub fn verifier_keys_hex<S: AsRef<str>>(keys: &[S]) -> Result<Vec<VerifyingKey>, String> {
    keys.iter()
        .map(|k| {
            let bytes = hex::decode(k.as_ref().trim())
                .map_err(|_| format!("verifier key {:?} is not hex", k.as_ref()))?;
            verifier_key(&bytes).map_err(|e| format!("verifier key {:?}: {e}", k.as_ref()))
        })
        .collect()
}

/// Signs a settlement.
pub fn sign(settlement: &Settlement, key: &SigningKey) -> SignedSettlement {
    let bytes = settlement.encode_to_vec();
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&bytes);
    SignedSettlement {
        settlement: bytes,
        signature: key.sign(&message).to_bytes().to_vec(),
    }
}

/// The settlement inside `signed`, if one of `keys` signed it (strictly) and it is consistent:
/// every payee is an operator's account (`operator/NAME`) and has an amount that is its fuel at its price, and the amounts'
/// sum does not overflow.
pub fn open(
    signed: Option<&SignedSettlement>,
    keys: &[VerifyingKey],
) -> Result<Settlement, SettlementError> {
    let signed = signed.ok_or(SettlementError::Missing)?;
    let signature =
        Signature::from_slice(&signed.signature).map_err(|_| SettlementError::Forged)?;
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&signed.settlement);
    if !keys
        .iter()
        .any(|k| k.verify_strict(&message, &signature).is_ok())
    {
        return Err(SettlementError::Forged);
    }
    let s = Settlement::decode(signed.settlement.as_slice())
        .map_err(|e| SettlementError::Malformed(e.to_string()))?;
    for p in &s.payees {
        // Payouts go to node operators only, never to a user's account (where refunds go).
        if p.account.len() <= "operator/".len() || !p.account.starts_with("operator/") {
            return Err(SettlementError::Malformed(format!(
                "payee {:?} is not an operator's account",
                p.account
            )));
        }
        if p.amount != cost(p.fuel, p.micro_credits_per_million_fuel) {
            return Err(SettlementError::Malformed(format!(
                "{} is paid {} for {} fuel at {}",
                p.account, p.amount, p.fuel, p.micro_credits_per_million_fuel
            )));
        }
    }
    total(&s).ok_or_else(|| SettlementError::Malformed("the amounts overflow".into()))?;
    Ok(s)
}

/// [`open`], for one task.
pub fn open_for(
    signed: Option<&SignedSettlement>,
    keys: &[VerifyingKey],
    task_id: &str,
) -> Result<Settlement, SettlementError> {
    let s = open(signed, keys)?;
    if s.task_id != task_id {
        return Err(SettlementError::OtherTask {
            expected: task_id.to_string(),
            found: s.task_id,
        });
    }
    Ok(s)
}

/// What a settlement pays in all, or None if that overflows.
pub fn total(s: &Settlement) -> Option<u64> {
    s.payees
        .iter()
        .try_fold(0u64, |sum, p| sum.checked_add(p.amount))
}

#[cfg(test)]
mod tests {
    use zkmesh_proto::SettlementPayee;

    use super::*;

    fn sample() -> Settlement {
        Settlement {
            task_id: "t-1".into(),
            output_hash: "ab".repeat(32),
            payees: vec![SettlementPayee {
                account: "operator/acme".into(),
                node_id: "n-1".into(),
                attempt_id: "a-1".into(),
                fuel: 2_000_000,
                micro_credits_per_million_fuel: 1000,
                amount: 2000,
            }],
            signed_at_ms: 1,
            policy: "receipt".into(),
        }
    }

    #[test]
    fn cost_rounds_up() {
        assert_eq!(cost(0, 1000), 0);
        assert_eq!(cost(1, 1000), 1);
        assert_eq!(cost(1_000_000_000, 1000), 1_000_000);
        assert_eq!(cost(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn only_the_verifier_key_opens_a_settlement_and_for_its_own_task() {
        let verifier = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let keys = [verifier.verifying_key()];
        let signed = sign(&sample(), &verifier);
        assert_eq!(open_for(Some(&signed), &keys, "t-1").unwrap(), sample());
        // Another task's settlement pays nothing here.
        assert!(matches!(
            open_for(Some(&signed), &keys, "t-2"),
            Err(SettlementError::OtherTask { .. })
        ));
        // Signed by anyone else (a stolen scheduler or ledger key), or not at all.
        let forged = sign(&sample(), &other);
        assert_eq!(open(Some(&forged), &keys), Err(SettlementError::Forged));
        assert_eq!(open(None, &keys), Err(SettlementError::Missing));
        // The bytes changed after signing: a payee renamed, an amount raised.
        let mut raised = sample();
        raised.payees[0].account = "operator/mallory".into();
        let tampered = SignedSettlement {
            settlement: raised.encode_to_vec(),
            signature: signed.signature.clone(),
        };
        assert_eq!(open(Some(&tampered), &keys), Err(SettlementError::Forged));
        // A signature under another domain (a receipt's, a journal entry's) does not open it.
        let bare = SignedSettlement {
            settlement: signed.settlement.clone(),
            signature: verifier.sign(&signed.settlement).to_bytes().to_vec(),
        };
        assert_eq!(open(Some(&bare), &keys), Err(SettlementError::Forged));
    }

    #[test]
    fn a_signed_but_inconsistent_settlement_is_refused() {
        let verifier = SigningKey::from_bytes(&[7; 32]);
        let keys = [verifier.verifying_key()];
        let mut s = sample();
        s.payees[0].amount += 1;
        assert!(matches!(
            open(Some(&sign(&s, &verifier)), &keys),
            Err(SettlementError::Malformed(_))
        ));
        for account in ["", "operator/", "user/alice", "service/scheduler"] {
            let mut s = sample();
            s.payees[0].account = account.into();
            assert!(
                open(Some(&sign(&s, &verifier)), &keys).is_err(),
                "{account}"
            );
        }
        let mut s = sample();
        let mut big = s.payees[0].clone();
        big.fuel = u64::MAX;
        big.micro_credits_per_million_fuel = u64::MAX;
        big.amount = u64::MAX;
        s.payees = vec![big.clone(), big];
        assert!(open(Some(&sign(&s, &verifier)), &keys).is_err());
    }

    #[test]
    fn weak_verifier_keys_are_refused() {
        // The identity point: a signature with R = identity, s = 0 verifies under a lax check.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(verifier_key(&identity), Err(SettlementError::BadKey));
        assert!(verifier_keys_hex(&["zz"]).is_err());
    }
}
