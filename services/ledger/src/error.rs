//! Why a ledger call fails, and the status each kind of failure maps to.

use tonic::Status;
use zkmesh_kit::error::{Code, ServiceError};

/// Why a ledger call failed; [`ServiceError::code`] decides the status.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Denied(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError for LedgerError {
    fn code(&self) -> Code {
        match self {
            LedgerError::BadRequest(_) => Code::InvalidArgument,
            LedgerError::NotFound(_) => Code::NotFound,
            LedgerError::Precondition(_) => Code::FailedPrecondition,
            LedgerError::Exists(_) => Code::AlreadyExists,
            LedgerError::Denied(_) => Code::PermissionDenied,
            LedgerError::Db(e) => e.code(),
            LedgerError::Internal(_) => Code::Internal,
        }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Status {
        zkmesh_kit::error::status("ledger", &e)
    }
}

pub(crate) type Result<T, E = LedgerError> = std::result::Result<T, E>;
