//! The verifier's failures as the caller sees them: database and internal errors are logged
//! once and hidden (through [`zkmesh_kit::error::status`]).

use tonic::Status;

/// A database error, as the caller sees it (logged once, in [`zkmesh_kit::error::status`]).
pub(crate) fn db_error(e: &sqlx::Error) -> Status {
    zkmesh_kit::error::status("verifier", e)
}

/// An internal failure that is not the database's (logged, hidden from the caller).
pub(crate) fn internal(message: impl Into<String>) -> Status {
    zkmesh_kit::error::status("verifier", &zkmesh_kit::error::Failure::internal(message))
}
