//! Extractors whose rejections are picloud's JSON errors, never axum's plain text.

use super::{error::ApiError, AppState};
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request},
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

/// A JSON request body for `T`, read but not yet parsed: handlers check the
/// caller's scope first and [`parse`](JsonBody::parse) after, so a key without
/// the scope gets 403 whatever the body holds (never 400/422).
pub struct JsonBody<T> {
    bytes: Bytes,
    target: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Parses the body; a failure is described without quoting the input.
    pub fn parse(self) -> Result<T, ApiError> {
        parse_json(&self.bytes)
    }
}

/// Reads the whole body, mapping a body over the limit to 413 with the limit.
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(state.config.max_request_bytes)
        } else {
            ApiError::BadRequest("the request body could not be read".into())
        }
    })
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
                let field = ["missing field `", "unknown field `"]
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
            bytes: read_body(req, state).await?,
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
