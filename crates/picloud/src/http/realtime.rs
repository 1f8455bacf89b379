//! `GET /api/v1/apps/{app_id}/realtime?topics=a,b`: Server-Sent Events for a
//! subscriber token's topics (SPEC §9). The token comes in `Authorization:
//! Bearer` or, for browsers' `EventSource`, the `token` query parameter
//! (query strings are never logged). `Last-Event-ID` is not replayed.

use crate::http::{
    error::{ApiError, ErrorBody},
    extract::ApiPath,
    AppState,
};
use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;
use picloud_manager_core::service::realtime::SubscribeRefusal;
use picloud_shared::{ids::AppId, realtime::TokenError};
use serde::Deserialize;
use std::{convert::Infallible, time::Duration};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// The query of a subscription.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RealtimeQuery {
    /// Comma-separated topics (1-64) the token must grant.
    topics: Option<String>,
    /// The subscriber token, when it cannot go in `Authorization` (`EventSource`).
    token: Option<String>,
}

/// The route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(subscribe))
}

/// Seconds between keep-alive comments.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(get, path = "/api/v1/apps/{app_id}/realtime", tag = "realtime",
    params(("app_id" = Uuid, Path), RealtimeQuery),
    responses((status = 200, description = "`text/event-stream`: one event per message (`event` the topic, `data` its JSON, an `id`), keep-alive comments; a subscriber that does not keep up is disconnected", content_type = "text/event-stream", body = String),
        (status = 400, description = "`bad_request`: topics missing or malformed", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, or a malformed, forged or expired one", body = ErrorBody),
        (status = 403, description = "`forbidden`: a token of another app, or without a requested topic", body = ErrorBody),
        (status = 404, description = "`not_found`: no such app", body = ErrorBody)))]
async fn subscribe(
    State(st): State<AppState>,
    ApiPath(app_id): ApiPath<Uuid>,
    headers: HeaderMap,
    query: Result<Query<RealtimeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::BadRequest("the query string is malformed".into()))?;
    let topics: Vec<String> = query
        .topics
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let bearer = crate::http::auth::bearer_token(&headers)?;
    let Some(token) = bearer.or(query.token.as_deref()) else {
        return Err(ApiError::Unauthorized(
            "a subscriber token is required (Authorization: Bearer, or the token parameter)",
        ));
    };
    let claims = st
        .realtime
        .authorize(AppId(app_id), token, &topics)
        .await
        .map_err(refusal)?;
    let subscription = st.hub.subscribe(app_id, topics);
    // The stream ends when the token expires: a client reconnects with a fresh one.
    let expires_in = Duration::from_secs(
        u64::try_from(claims.exp - chrono::Utc::now().timestamp()).unwrap_or(0),
    );
    let expiry = Box::pin(tokio::time::sleep(expires_in));
    let events = futures_util::stream::unfold(
        (subscription, expiry),
        |(mut subscription, mut expiry)| async move {
            let message = tokio::select! {
                message = subscription.messages.recv() => message?,
                () = &mut expiry => return None,
            };
            let event = Event::default()
                .id(message.id.as_str())
                .event(message.topic.as_str())
                .data(message.data.as_str());
            Some((Ok(event), (subscription, expiry)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn refusal(e: SubscribeRefusal) -> ApiError {
    match e {
        SubscribeRefusal::NoApp => ApiError::NotFound("app"),
        SubscribeRefusal::BadTopics(message) => ApiError::BadRequest(message),
        SubscribeRefusal::Token(e @ (TokenError::OtherApp | TokenError::TopicNotGranted)) => {
            ApiError::Denied(match e {
                TokenError::OtherApp => "the token is for another app",
                _ => "the token does not grant a requested topic",
            })
        }
        SubscribeRefusal::Token(TokenError::Expired) => {
            ApiError::Unauthorized("the token has expired")
        }
        SubscribeRefusal::Token(TokenError::Forged) => {
            ApiError::Unauthorized("the token's signature does not match")
        }
        SubscribeRefusal::Token(TokenError::Malformed) => {
            ApiError::Unauthorized("the token is malformed")
        }
        SubscribeRefusal::Manager(e) => e.into(),
    }
}
