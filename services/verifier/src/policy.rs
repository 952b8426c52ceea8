//! The verification policies the verifier serves, and the check of a policy's shape.

use tonic::Status;
use zkmesh_proto::*;

/// The most replicas a task may ask for.
pub const MAX_REPLICAS: u32 = 9;

/// Checks a policy's shape; the reason is the client's error message.
pub fn check_policy(policy: &VerificationPolicy) -> Result<(), Status> {
    match policy.kind() {
        PolicyKind::Receipt => Ok(()),
        PolicyKind::Replicate if (2..=MAX_REPLICAS).contains(&policy.replicas) => Ok(()),
        PolicyKind::Replicate => Err(Status::invalid_argument(format!(
            "replicate:k needs 2 <= k <= {MAX_REPLICAS}, got {}",
            policy.replicas
        ))),
        PolicyKind::Proof => Ok(()),
        PolicyKind::Unspecified => Err(Status::invalid_argument(
            "a policy is required: receipt, replicate:K or proof",
        )),
    }
}
