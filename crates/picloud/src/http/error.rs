//! The one mapping from errors to HTTP responses.
//!
//! Every error leaves as `{"error": {"code", "message", ...}}`. Messages never
//! echo request values: serde and axum rejection texts can quote input, so
//! they are replaced by fixed descriptions here.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use picloud_executor_core::{PoolError, RunError};
use picloud_manager_core::ManagerError;
use picloud_shared::{auth::Scope, ServiceError};
use serde::Serialize;
use utoipa::ToSchema;

/// What a 503 for a busy script pool asks the client to wait, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// An error an HTTP handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this API key lacks the scope {0} needed here")]
    Forbidden(Scope),
    /// A valid credential that does not grant this request (e.g. a realtime token's topics).
    #[error("{0}")]
    Denied(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    TooLarge {
        message: String,
        limit: Option<usize>,
        actual: Option<usize>,
    },
    #[error("{0}")]
    Validation(String),
    /// The request body did not arrive in time: 408.
    #[error("{0}")]
    Timeout(String),
    #[error("{message}")]
    Compile {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{0}")]
    Script(String),
    #[error("{0}")]
    ScriptLimit(String),
    #[error("{0}")]
    Unavailable(String),
    /// Every script worker is busy: 503 with `Retry-After`.
    #[error("{0}")]
    Busy(String),
    /// Over a limit: 429 with `Retry-After: retry_after`; `limit` says which.
    #[error("{limit}; retry after {retry_after} seconds")]
    RateLimited {
        limit: std::borrow::Cow<'static, str>,
        retry_after: u64,
    },
    #[error("internal error")]
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The stable codes of SPEC §3, one per kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    TooLarge,
    ValidationError,
    CompileError,
    RateLimited,
    ScriptError,
    ScriptLimit,
    Internal,
    NotConfigured,
    Unavailable,
}

/// What went wrong: a stable `code`, a readable `message`, and fields that help.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<usize>,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) | ApiError::Denied(_) => {
                (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            ApiError::Validation(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationError)
            }
            ApiError::Compile { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::CompileError),
            ApiError::Script(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::ScriptError),
            ApiError::ScriptLimit(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::ScriptLimit),
            ApiError::Unavailable(_) | ApiError::Busy(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
        }
    }

    /// A 413 for a request body above the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        ApiError::TooLarge {
            message: format!("request body is above the limit of {limit} bytes"),
            limit: Some(limit),
            actual: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut detail = ErrorDetail {
            code,
            message: self.to_string(),
            line: None,
            column: None,
            limit: None,
            actual: None,
        };
        match &self {
            ApiError::Compile { line, column, .. } => {
                detail.line = Some(*line);
                detail.column = Some(*column);
            }
            ApiError::TooLarge { limit, actual, .. } => {
                detail.limit = *limit;
                detail.actual = *actual;
            }
            _ => {}
        }
        let mut response = (status, Json(ErrorBody { error: detail })).into_response();
        if matches!(self, ApiError::Busy(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let ApiError::RateLimited { retry_after, .. } = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after.max(1)),
            );
        }
        response
    }
}

impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        match err {
            ManagerError::Validation(m) => ApiError::Validation(m),
            ManagerError::NotFound(what) => ApiError::NotFound(what),
            ManagerError::Conflict(m) => ApiError::Conflict(m),
            ManagerError::TooLarge { limit, actual } => ApiError::TooLarge {
                message: format!("value is {actual} bytes, above the limit of {limit} bytes"),
                limit: Some(limit),
                actual: Some(actual),
            },
            ManagerError::Compile(e) => ApiError::Compile {
                message: e.message,
                line: e.line,
                column: e.column,
            },
            ManagerError::Unavailable(m) => ApiError::Unavailable(m),
            ManagerError::Database(e) => {
                tracing::error!(error = %e, "database error");
                match e.as_database_error().and_then(|db| db.code()).as_deref() {
                    Some("57014") => {
                        return ApiError::Unavailable(
                            "the database cancelled the statement; nothing was changed".into(),
                        )
                    }
                    // A deadlock or serialization failure: one side was rolled back.
                    Some("40P01" | "40001") => return ApiError::Unavailable(
                        "a concurrent change conflicted with this one; nothing was changed, retry"
                            .into(),
                    ),
                    _ => {}
                }
                match e {
                    sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                        ApiError::Unavailable("the database is unavailable".into())
                    }
                    _ => ApiError::Internal,
                }
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        ManagerError::from(err).into()
    }
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> Self {
        match err {
            PoolError::Busy => ApiError::Busy(err.to_string()),
            PoolError::Failed => ApiError::Internal,
        }
    }
}

impl From<RunError> for ApiError {
    fn from(err: RunError) -> Self {
        match err {
            RunError::Script { message } => ApiError::Script(message),
            RunError::Limit { message, .. } => ApiError::ScriptLimit(message),
        }
    }
}
