//! One error model for every service: an error says what kind of failure it is ([`Code`]);
//! [`status`] is the one place that turns it into a gRPC status, and the one place that logs
//! an internal error (with its detail, once) while the client hears only that the service
//! failed.

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

/// An error a service can return to a caller.
pub trait ServiceError: std::error::Error {
    /// What kind of failure it is.
    fn code(&self) -> Code;
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
        code => tonic::Status::new(code.grpc(), e.to_string()),
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
        let s = status("ledger", &Failure::internal("disk full at /var/lib/x"));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(s.message(), "internal ledger error");
        let s = status("scheduler", &sqlx::Error::RowNotFound);
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("no rows"), "{}", s.message());
    }
}
