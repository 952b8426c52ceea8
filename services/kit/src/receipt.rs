//! Receipts: what a node signs for every result, whatever the policy.
//!
//! The signed message is a domain-separated, length-prefixed encoding of (task, module hash,
//! input hash, output hash, fuel used, exit kind, node id), so no two receipts share bytes.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zkmesh_proto::Receipt;

const DOMAIN: &[u8] = b"zkmesh.receipt.v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt field {0} is not a 32-byte hex hash")]
    BadHash(&'static str),
    #[error("the node's receipt key is not a valid Ed25519 public key")]
    BadKey,
    #[error("receipt signature is malformed")]
    BadSignature,
    #[error("receipt signature does not verify with the node's key")]
    Forged,
}

fn hash32(field: &'static str, hex_str: &str) -> Result<[u8; 32], ReceiptError> {
    let bytes = hex::decode(hex_str).map_err(|_| ReceiptError::BadHash(field))?;
    bytes.try_into().map_err(|_| ReceiptError::BadHash(field))
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The exact bytes a receipt's signature covers.
pub fn signed_message(r: &Receipt) -> Result<Vec<u8>, ReceiptError> {
    let mut out = DOMAIN.to_vec();
    put(&mut out, r.task_id.as_bytes());
    out.extend_from_slice(&hash32("module_hash", &r.module_hash)?);
    out.extend_from_slice(&hash32("input_hash", &r.input_hash)?);
    out.extend_from_slice(&hash32("output_hash", &r.output_hash)?);
    out.extend_from_slice(&r.fuel_used.to_be_bytes());
    out.extend_from_slice(&r.exit.to_be_bytes());
    put(&mut out, r.node_id.as_bytes());
    Ok(out)
}

/// Fills in `r.signature`.
pub fn sign(r: &mut Receipt, key: &SigningKey) -> Result<(), ReceiptError> {
    let message = signed_message(r)?;
    r.signature = key.sign(&message).to_bytes().to_vec();
    Ok(())
}

/// A node's receipt key, refused when it is not a point of the curve or a weak one (of small
/// order, for which signatures can be made without the private key).
pub fn receipt_key(public_key: &[u8]) -> Result<VerifyingKey, ReceiptError> {
    let key: [u8; 32] = public_key.try_into().map_err(|_| ReceiptError::BadKey)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| ReceiptError::BadKey)?;
    if key.is_weak() {
        return Err(ReceiptError::BadKey);
    }
    Ok(key)
}

/// Checks `r.signature` against the node's public key, strictly (no weak keys, no
/// non-canonical signatures).
pub fn verify(r: &Receipt, public_key: &[u8]) -> Result<(), ReceiptError> {
    let key = receipt_key(public_key)?;
    let signature = Signature::from_slice(&r.signature).map_err(|_| ReceiptError::BadSignature)?;
    key.verify_strict(&signed_message(r)?, &signature)
        .map_err(|_| ReceiptError::Forged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        Receipt {
            task_id: "t-1".into(),
            module_hash: "11".repeat(32),
            input_hash: "22".repeat(32),
            output_hash: "33".repeat(32),
            fuel_used: 1234,
            exit: 1,
            node_id: "n-1".into(),
            signature: vec![],
        }
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key().to_bytes();
        let mut r = sample();
        sign(&mut r, &key).unwrap();
        assert_eq!(verify(&r, &public), Ok(()));
        type Tamper = Box<dyn Fn(&mut Receipt)>;
        let tampered: Vec<Tamper> = vec![
            Box::new(|r| r.task_id.push('x')),
            Box::new(|r| r.output_hash = "44".repeat(32)),
            Box::new(|r| r.input_hash = "44".repeat(32)),
            Box::new(|r| r.module_hash = "44".repeat(32)),
            Box::new(|r| r.fuel_used += 1),
            Box::new(|r| r.exit = 2),
            Box::new(|r| r.node_id = "n-2".into()),
            Box::new(|r| r.signature[0] ^= 1),
        ];
        for t in tampered {
            let mut bad = r.clone();
            t(&mut bad);
            assert!(verify(&bad, &public).is_err());
        }
        let other = SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert_eq!(verify(&r, &other), Err(ReceiptError::Forged));
    }

    /// The identity point is a weak key: with it, R = identity and s = 0 "sign" any message
    /// for a lax verifier. It is refused as a key, whatever the signature.
    #[test]
    fn a_weak_key_signs_nothing() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(weak.is_weak());
        let mut r = sample();
        let mut forged = identity.to_vec();
        forged.extend([0u8; 32]);
        r.signature = forged.clone();
        let lax = ed25519_dalek::Verifier::verify(
            &weak,
            &signed_message(&r).unwrap(),
            &Signature::from_slice(&forged).unwrap(),
        );
        assert!(lax.is_ok(), "the forgery a lax check would accept");
        assert_eq!(verify(&r, &identity), Err(ReceiptError::BadKey));
        assert_eq!(receipt_key(&identity).err(), Some(ReceiptError::BadKey));
    }
}
