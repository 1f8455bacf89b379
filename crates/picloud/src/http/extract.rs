//! Extractors whose rejections are picloud's JSON errors, never axum's plain text.

use super::{error::ApiError, AppState};
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request},
    http::request::Parts,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A JSON request body for `T`, not yet read: handlers check the caller's
/// scope first and [`parse`](JsonBody::parse) after, so a key without the
/// scope gets 403 at once, whatever it sends and however slowly.
pub struct JsonBody<T> {
    request: Request,
    state: AppState,
    target: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Reads the body (see [`read_body`]) and parses it; a failure is
    /// described without quoting the input.
    pub async fn parse(self) -> Result<T, ApiError> {
        let body = read_body(self.request, &self.state).await?;
        parse_json(&body.bytes)
    }
}

/// A request body read into memory, holding its share of the in-flight body budget.
pub struct ReadBody {
    pub bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// Reads the whole body, within bounds a slow or hostile client cannot stretch:
/// - a declared `Content-Length` above the limit is a 413 at once (nothing read,
///   no `100 Continue`), and a body that grows past it while read is a 413 too;
/// - the bytes read are taken from the server-wide budget of bytes in request
///   bodies (`PICLOUD_MAX_BODY_BUFFER_BYTES`) as they arrive: none left is a
///   503, so many half-sent bodies cannot exhaust memory, and a body that is
///   declared but not sent holds nothing;
/// - the whole body must arrive within `PICLOUD_HTTP_BODY_TIMEOUT_SECS`, or 408.
pub async fn read_body(req: Request, state: &AppState) -> Result<ReadBody, ApiError> {
    read_body_within(req, state, state.config.max_request_bytes).await
}

/// [`read_body`] with a limit of its own (the inbound email endpoints take
/// larger bodies than the API).
pub async fn read_body_within(
    req: Request,
    state: &AppState,
    limit: usize,
) -> Result<ReadBody, ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let read = async {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut length = 0usize;
        let mut held: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            length = length.saturating_add(data.len());
            if length > limit {
                return Err(ApiError::body_too_large(limit));
            }
            let taken = state.body_budget.reserve(data.len())?;
            match &mut held {
                Some(held) => held.merge(taken),
                None => held = Some(taken),
            }
            chunks.push(data);
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        };
        Ok(ReadBody {
            bytes,
            _budget: held,
        })
    };
    tokio::time::timeout(state.body_timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Timeout(format!(
                "the request body did not arrive within {} seconds",
                state.body_timeout.as_secs()
            )))
        })
}

/// The server-wide budget of bytes held in request bodies being read.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Takes `bytes` from the budget until the permit is dropped; 503 when it is spent.
    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let bytes = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        self.bytes
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| {
                ApiError::Busy(
                    "the server is reading too many request bodies; retry in a moment".into(),
                )
            })
    }
}

/// Parses JSON, describing a failure without quoting the input.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {}, column {}", e.line(), e.column());
        match e.classify() {
            Category::Data => {
                // serde names missing or unknown fields without quoting values.
                let text = e.to_string();
                let field = ["missing field `", "unknown field `", "duplicate field `"]
                    .iter()
                    .find_map(|p| text.strip_prefix(p))
                    .and_then(|rest| rest.split('`').next())
                    .filter(|f| {
                        f.len() <= 64 && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                match field {
                    Some(f) if text.starts_with("missing") => {
                        ApiError::Validation(format!("request body is missing the field `{f}`"))
                    }
                    Some(f) if text.starts_with("duplicate") => {
                        ApiError::Validation(format!("request body has the field `{f}` twice"))
                    }
                    Some(f) => {
                        ApiError::Validation(format!("request body has an unknown field `{f}`"))
                    }
                    None => ApiError::Validation(format!(
                        "request body has a value of the wrong type ({at})"
                    )),
                }
            }
            Category::Eof if bytes.iter().all(u8::is_ascii_whitespace) => {
                ApiError::BadRequest("request body is empty; a JSON document is required".into())
            }
            _ => ApiError::BadRequest(format!("request body is not valid JSON ({at})")),
        }
    })
}

impl<T> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(JsonBody {
            request: req,
            state: state.clone(),
            target: std::marker::PhantomData,
        })
    }
}

/// Path parameters; a malformed one (not a UUID, a control character in a
/// name) is a 400, not a 404, and is refused before any database access.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // No name or id holds a control character: refuse it before anything
        // (a NUL would otherwise reach PostgreSQL, which cannot store one).
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("a path parameter is not valid UTF-8".into()))?;
        if raw
            .iter()
            .any(|(_, value)| value.chars().any(char::is_control))
        {
            return Err(ApiError::BadRequest(
                "a path parameter contains a control character".into(),
            ));
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|_| {
                ApiError::BadRequest("a path parameter is malformed (ids are UUIDs)".into())
            })
    }
}

/// Query parameters; malformed ones are a 400 that does not quote them.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|_| ApiError::BadRequest("the query parameters are malformed".into()))
    }
}
