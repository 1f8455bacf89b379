//! The error every service trait returns.
//!
//! It carries what a caller needs to act (a kind, the limit that was hit) and
//! never a user's value: messages are built from names and numbers only.

/// An error from a service call, shared by the HTTP layer and the Rhai bridges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// A malformed argument: bad name, wrong type, missing field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A value above its configured size limit.
    #[error("value is {actual} bytes, above the limit of {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule was violated.
    #[error("{0}")]
    Conflict(String),
    /// The backing store or network is down, or the call timed out.
    #[error("{0}")]
    Unavailable(String),
    /// A send the email service refused or could not complete; `failure`
    /// is the kind a script sees.
    #[error("{message}")]
    Email {
        failure: crate::email::EmailFailure,
        message: String,
    },
}

impl ServiceError {
    /// The stable `kind` a script sees in a caught exception.
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceError::InvalidArgument(_) => "invalid_argument",
            ServiceError::TooLarge { .. } => "too_large",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::Email { failure, .. } => failure.as_str(),
        }
    }
}
