//! One error model for every service: an error says what kind of failure it is ([`Code`]) and
//! why, as a stable machine-readable reason; [`status`] is the one place that turns it into a
//! gRPC status (with a `google.rpc.ErrorInfo` carrying the reason, see [`refusal`]), and the
//! one place that logs an internal error (with its detail, once) while the client hears only
//! that the service failed.

use std::fmt;

/// What kind of failure an error is; it decides the gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The request is malformed or out of range, whatever the state.
    InvalidArgument,
    /// What the request names does not exist (or the caller may not know it does).
    NotFound,
    /// The request is well-formed, but the state does not allow it now.
    FailedPrecondition,
    /// What the request would create exists.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// The caller presented no usable identity.
    Unauthenticated,
    /// A quota or limit was reached.
    ResourceExhausted,
    /// A service this one depends on, or this one, cannot serve now; trying later may work.
    Unavailable,
    /// A bug or a broken dependency (database, disk): logged, and hidden from the client.
    Internal,
}

impl Code {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            Code::InvalidArgument => tonic::Code::InvalidArgument,
            Code::NotFound => tonic::Code::NotFound,
            Code::FailedPrecondition => tonic::Code::FailedPrecondition,
            Code::AlreadyExists => tonic::Code::AlreadyExists,
            Code::PermissionDenied => tonic::Code::PermissionDenied,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
            Code::ResourceExhausted => tonic::Code::ResourceExhausted,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Internal => tonic::Code::Internal,
        }
    }
}

impl Code {
    /// The reason an error of this code carries when it has no more precise one: the code's
    /// name, `INVALID_ARGUMENT`, `NOT_FOUND`, ...
    pub fn reason(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
        }
    }
}

/// The reasons more precise than a code's name, as `google.rpc.ErrorInfo.reason`. Stable: a
/// client may branch on them (the README lists them with the RPCs that return them).
pub mod reasons {
    /// SubmitTask, GetModule, FetchModule: no module with that hash was uploaded.
    pub const MODULE_NOT_FOUND: &str = "MODULE_NOT_FOUND";
    /// UploadModule: the bytes are not a module the mesh can run (invalid, too large, no
    /// entry point, an unsupported feature).
    pub const MODULE_REJECTED: &str = "MODULE_REJECTED";
    /// SubmitTask under the proof policy: the zkVM cannot prove this module.
    pub const MODULE_NOT_PROVABLE: &str = "MODULE_NOT_PROVABLE";
    /// SubmitTask under the proof policy: the task does not fit the largest circuit class the
    /// mesh serves.
    pub const TASK_TOO_LARGE_TO_PROVE: &str = "TASK_TOO_LARGE_TO_PROVE";
    /// SubmitTask, CheckPolicy: the verifier cannot judge this policy now (no circuit keys).
    pub const POLICY_UNAVAILABLE: &str = "POLICY_UNAVAILABLE";
    /// SubmitTask under replicate:K: fewer than K operators have nodes connected.
    pub const NOT_ENOUGH_OPERATORS: &str = "NOT_ENOUGH_OPERATORS";
    /// SubmitTask, Hold: the account's balance is below the credits the task needs.
    pub const INSUFFICIENT_CREDITS: &str = "INSUFFICIENT_CREDITS";
    /// Mint: the amount would take the credit supply past its limit.
    pub const SUPPLY_LIMIT: &str = "SUPPLY_LIMIT";
    /// SubmitTask, Mint: the request id was used before for a different request.
    pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
    /// SubmitTask, UploadModule: a per-user quota (tasks in flight, their input bytes, module
    /// bytes) is reached; the message names it.
    pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
    /// Capture: the settlement is missing, not signed by a verifier key the ledger trusts, for
    /// another task, or pays more than the hold.
    pub const SETTLEMENT_INVALID: &str = "SETTLEMENT_INVALID";
    /// GetResult: the task has no result yet.
    pub const RESULT_NOT_READY: &str = "RESULT_NOT_READY";
}

/// The `google.rpc.ErrorInfo` domain of every zkmesh error.
pub const ERROR_DOMAIN: &str = "zkmesh.dev";

/// An error a service can return to a caller.
pub trait ServiceError: std::error::Error {
    /// What kind of failure it is.
    fn code(&self) -> Code;

    /// Why, as a stable UPPER_SNAKE_CASE name clients can act on (the message is for people).
    fn reason(&self) -> &'static str {
        self.code().reason()
    }
}

/// A status with code `code`, message `message` and a `google.rpc.ErrorInfo` detail with
/// `reason` in the zkmesh domain: what every refusal a client can act on looks like.
pub fn refusal(
    code: tonic::Code,
    reason: &'static str,
    message: impl Into<String>,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    tonic::Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new()),
    )
}

/// The `ErrorInfo` reason a status carries, if it carries one in the zkmesh domain.
pub fn reason_of(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN)
        .map(|info| info.reason)
}

/// The one mapping from a service's error to the status its caller gets. The message of a
/// client error goes to the client; an internal error is logged here with its detail and the
/// client is told only `internal <service> error`.
pub fn status(service: &'static str, e: &(impl ServiceError + ?Sized)) -> tonic::Status {
    match e.code() {
        Code::Internal => {
            tracing::error!(service, error = %e, "internal error");
            tonic::Status::internal(format!("internal {service} error"))
        }
        code => refusal(code.grpc(), e.reason(), e.to_string()),
    }
}

/// A database error is internal.
impl ServiceError for sqlx::Error {
    fn code(&self) -> Code {
        Code::Internal
    }
}

/// An error with a code and a message, for the places that need no error type of their own.
#[derive(Debug)]
pub struct Failure {
    /// What kind of failure it is.
    pub code: Code,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// An internal failure: `message` is logged, never shown to the client.
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure {
            code: Code::Internal,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl ServiceError for Failure {
    fn code(&self) -> Code {
        self.code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_keep_their_message_and_internal_ones_are_hidden() {
        let denied = Failure {
            code: Code::PermissionDenied,
            message: "node n-1 is revoked".into(),
        };
        let s = status("registry", &denied);
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(s.message(), "node n-1 is revoked");
        assert_eq!(reason_of(&s).as_deref(), Some("PERMISSION_DENIED"));
        let s = status("ledger", &Failure::internal("disk full at /var/lib/x"));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), "internal ledger error");
        let s = status("scheduler", &sqlx::Error::RowNotFound);
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("no rows"), "{}", s.message());
    }

    #[test]
    fn refusals_carry_their_reason_through_the_wire_encoding() {
        let s = refusal(tonic::Code::FailedPrecondition, "MODULE_NOT_PROVABLE", "no");
        // What a client decodes: the code, the message and the encoded details it receives.
        let back = tonic::Status::with_details(s.code(), s.message(), s.details().to_vec().into());
        assert_eq!(back.code(), tonic::Code::FailedPrecondition);
        assert_eq!(reason_of(&back).as_deref(), Some("MODULE_NOT_PROVABLE"));
        assert_eq!(reason_of(&tonic::Status::not_found("plain")), None);
    }
}
