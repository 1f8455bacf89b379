//! `GET /api/v1/apps/{app_id}/realtime?topics=a,b`: Server-Sent Events for a
//! subscriber token's topics (SPEC §9). The token comes in `Authorization:
//! Bearer` or, for browsers' `EventSource`, the `token` query parameter
//! (query strings are never logged). `Last-Event-ID` is not replayed.

use crate::http::{
    error::{ApiError, ErrorBody},
    extract::ApiPath,
    AppState,
};
use crate::realtime::{StreamRefusal, Subscription};
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
        (status = 404, description = "`not_found`: no such app", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the token (16), the app (half the connection maximum) or this server (three quarters of it) holds as many streams as it may", body = ErrorBody),
        (status = 503, description = "`unavailable`: the app's signing keys are being changed or cannot be read, or the server is shutting down", body = ErrorBody)))]
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
    let subscription = open_stream(&st, app_id, topics, token).await?;
    // Ends when the token expires (a client reconnects with a fresh one),
    // when its key is rotated out, or when the subscriber falls behind.
    let events = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let message = subscription.recv().await?;
        let event = Event::default()
            .id(message.id.as_str())
            .event(message.topic.as_str())
            .data(message.data.as_str());
        Some((Ok(event), subscription))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Checks `token` and opens its stream; checked again when the app's keys
/// changed meanwhile (a rotation must not miss a stream opening beside it).
async fn open_stream(
    st: &AppState,
    app_id: Uuid,
    topics: Vec<String>,
    token: &str,
) -> Result<Subscription, ApiError> {
    for _ in 0..3 {
        let key_changes = st.hub.key_changes(app_id);
        let authorized = st
            .realtime
            .authorize(AppId(app_id), token, &topics)
            .await
            .map_err(refusal)?;
        match st
            .hub
            .subscribe(app_id, topics.clone(), token, &authorized, key_changes)
        {
            Ok(subscription) => return Ok(subscription),
            Err(StreamRefusal::KeysChanged) => continue,
            Err(StreamRefusal::ShuttingDown) => {
                return Err(ApiError::Unavailable("the server is shutting down".into()))
            }
            Err(
                full @ (StreamRefusal::TokenFull
                | StreamRefusal::AppFull
                | StreamRefusal::ServerFull),
            ) => {
                return Err(ApiError::RateLimited {
                    limit: full.to_string().into(),
                    retry_after: 5,
                })
            }
        }
    }
    Err(ApiError::Unavailable(
        "the app's signing keys are changing; try again".into(),
    ))
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
