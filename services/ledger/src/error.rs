//! Why a ledger call fails, and the status each kind of failure maps to.

use tonic::Status;
use zkmesh_kit::error::{Code, ServiceError, reasons};

/// Why a ledger call failed; [`ServiceError::code`] decides the status.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    /// A hold larger than the account's balance.
    #[error("{0}")]
    InsufficientCredits(String),
    /// A mint that would take the supply past what the columns can hold.
    #[error("{0}")]
    SupplyLimit(String),
    /// An idempotency key used before for another request.
    #[error("{0}")]
    RequestIdReused(String),
    /// The request was done before (a retry): nothing to write; the caller answers the state
    /// as it is. Never reaches a client.
    #[error("already done")]
    Repeat,
    /// A capture whose settlement the ledger cannot pay from.
    #[error("{0}")]
    SettlementInvalid(String),
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
            LedgerError::Precondition(_) | LedgerError::InsufficientCredits(_) => {
                Code::FailedPrecondition
            }
            LedgerError::SupplyLimit(_) => Code::InvalidArgument,
            LedgerError::RequestIdReused(_) => Code::AlreadyExists,
            LedgerError::Repeat => Code::Internal,
            LedgerError::SettlementInvalid(_) => Code::FailedPrecondition,
            LedgerError::Exists(_) => Code::AlreadyExists,
            LedgerError::Denied(_) => Code::PermissionDenied,
            LedgerError::Db(e) => e.code(),
            LedgerError::Internal(_) => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            LedgerError::InsufficientCredits(_) => reasons::INSUFFICIENT_CREDITS,
            LedgerError::SupplyLimit(_) => reasons::SUPPLY_LIMIT,
            LedgerError::RequestIdReused(_) => reasons::REQUEST_ID_REUSED,
            LedgerError::SettlementInvalid(_) => reasons::SETTLEMENT_INVALID,
            other => other.code().reason(),
        }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Status {
        zkmesh_kit::error::status("ledger", &e)
    }
}

pub(crate) type Result<T, E = LedgerError> = std::result::Result<T, E>;
