//! Why a registry call fails, and the status each kind of failure maps to.

use tonic::Status;
use zkmesh_kit::error::{Code, ServiceError};

/// Why a registry call failed; [`ServiceError::code`] decides the status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Denied(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("certificate: {0}")]
    Cert(#[from] zkmesh_kit::identity::IdentityError),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError for RegistryError {
    fn code(&self) -> Code {
        match self {
            RegistryError::BadRequest(_) => Code::InvalidArgument,
            RegistryError::NotFound(_) => Code::NotFound,
            RegistryError::Precondition(_) => Code::FailedPrecondition,
            RegistryError::Denied(_) => Code::PermissionDenied,
            RegistryError::Db(e) => e.code(),
            // Requests are validated (the CSR parses, node ids are the registry's own) before
            // anything is signed, so a failure to sign is the registry's.
            RegistryError::Cert(_) | RegistryError::Internal(_) => Code::Internal,
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        zkmesh_kit::error::status("registry", &e)
    }
}

pub(crate) type Result<T, E = RegistryError> = std::result::Result<T, E>;
