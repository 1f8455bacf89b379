//! The manager-core error enum, mapped to HTTP statuses by the server in one place.

use picloud_shared::{email::EmailFailure, script::CompileError, ServiceError};

/// What a manager service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Input broke a validation rule.
    #[error("{0}")]
    Validation(String),
    /// The named resource does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule was violated.
    #[error("{0}")]
    Conflict(String),
    /// A value above its size limit.
    #[error("value is {actual} bytes, above the limit of {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    /// Script source that does not compile.
    #[error("script does not compile: {0}")]
    Compile(CompileError),
    /// A dependency is down or timed out.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed; the detail goes to the log, never to a client.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl From<ServiceError> for ManagerError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument(m) => ManagerError::Validation(m),
            ServiceError::TooLarge { limit, actual } => ManagerError::TooLarge { limit, actual },
            ServiceError::NotFound(what) => ManagerError::NotFound(what),
            ServiceError::Conflict(m) => ManagerError::Conflict(m),
            ServiceError::Unavailable(m) => ManagerError::Unavailable(m),
            // Only script sends fail this way; should an admin path ever see
            // one, the caller's mistakes are 422 and the relay's 503.
            ServiceError::Email { failure, message } => match failure {
                EmailFailure::InvalidArgument
                | EmailFailure::InvalidAddress
                | EmailFailure::RecipientDenied
                | EmailFailure::TooLarge => ManagerError::Validation(message),
                _ => ManagerError::Unavailable(message),
            },
        }
    }
}

impl From<ManagerError> for ServiceError {
    fn from(err: ManagerError) -> Self {
        match err {
            ManagerError::Validation(m) => ServiceError::InvalidArgument(m),
            ManagerError::NotFound(what) => ServiceError::NotFound(what),
            ManagerError::Conflict(m) => ServiceError::Conflict(m),
            ManagerError::TooLarge { limit, actual } => ServiceError::TooLarge { limit, actual },
            ManagerError::Compile(e) => ServiceError::InvalidArgument(e.to_string()),
            ManagerError::Unavailable(m) => ServiceError::Unavailable(m),
            ManagerError::Database(e) if is_statement_cancelled(&e) => {
                tracing::warn!(error = %e, "a service call's statement was cancelled by the database");
                ServiceError::Unavailable(
                    "the database cancelled the call at the SDK time limit (PICLOUD_SDK_TIMEOUT_MS); it did not take effect".into(),
                )
            }
            ManagerError::Database(e) => {
                tracing::error!(error = %e, "database error in a service call");
                ServiceError::Unavailable("the database is unavailable".into())
            }
        }
    }
}

/// True when `err` is a PostgreSQL unique violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    has_sqlstate(err, "23505")
}

/// True when `err` is a PostgreSQL foreign-key violation (SQLSTATE 23503).
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    has_sqlstate(err, "23503")
}

/// True when PostgreSQL cancelled the statement (SQLSTATE 57014: a
/// `statement_timeout`, or an operator's `pg_cancel_backend`); it was rolled back.
pub(crate) fn is_statement_cancelled(err: &sqlx::Error) -> bool {
    has_sqlstate(err, "57014")
}

fn has_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}
