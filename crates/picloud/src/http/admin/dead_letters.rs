//! `/api/v1/admin/apps/{app_id}/dead-letters` (list, inspect, replay, delete)
//! and `/api/v1/admin/apps/{app_id}/outbox/stats`.

use crate::http::{
    auth::Principal,
    error::ApiError,
    extract::{ApiPath, ApiQuery},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_manager_core::repo::outbox::OutboxStats;
use picloud_shared::{auth::Capability, domain::DeadLetterInfo, ids::AppId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Paging of the dead-letter list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterPage {
    /// Most dead letters returned (1-200, default 50); a page also ends once it holds 8 MiB of events.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `id` of the last dead letter of the previous page.
    pub before: Option<Uuid>,
    /// The `created_at` of that dead letter (needed if it may have been deleted since).
    pub before_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The answer to a replay.
#[derive(Serialize, ToSchema)]
pub struct Replayed {
    pub dead_letter_id: Uuid,
    /// The id of the re-enqueued event in the outbox.
    pub outbox_id: i64,
}

/// `{depth, in_flight, retrying, oldest_age_secs}` of an app's outbox.
#[derive(Serialize, ToSchema)]
pub struct OutboxStatsBody {
    /// Events waiting or running.
    pub depth: i64,
    /// Events a dispatcher holds a live lease on.
    pub in_flight: i64,
    /// Events that failed at least once and wait for their next attempt.
    pub retrying: i64,
    /// Age of the oldest event, in seconds (0 when empty).
    pub oldest_age_secs: f64,
}

impl From<OutboxStats> for OutboxStatsBody {
    fn from(s: OutboxStats) -> Self {
        OutboxStatsBody {
            depth: s.depth,
            in_flight: s.in_flight,
            retrying: s.retrying,
            oldest_age_secs: s.oldest_age_secs,
        }
    }
}

/// The dead-letter and outbox routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter, delete_dead_letter))
        .routes(routes!(replay_dead_letter))
        .routes(routes!(outbox_stats))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/dead-letters", tag = "dead-letters",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), DeadLetterPage),
    responses((status = 200, description = "newest first; 404 also when `before` names a dead letter that no longer exists and `before_at` is not given", body = Vec<DeadLetterInfo>)))]
async fn list_dead_letters(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<DeadLetterPage>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    principal.require(Capability::DeadLettersRead)?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-200".into()));
    }
    Ok(Json(
        st.dead_letters
            .list(AppId(app_id), limit, page.before, page.before_at)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/dead-letters/{id}", tag = "dead-letters",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("id" = Uuid, Path)),
    responses((status = 200, body = DeadLetterInfo)))]
async fn get_dead_letter(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<DeadLetterInfo>, ApiError> {
    principal.require(Capability::DeadLettersRead)?;
    Ok(Json(st.dead_letters.get(AppId(app_id), id).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/apps/{app_id}/dead-letters/{id}/replay", tag = "dead-letters",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("id" = Uuid, Path)),
    responses((status = 202, description = "the original event is enqueued again, with fresh attempts; the dead letter stays", body = Replayed),
        (status = 409, description = "`conflict`: the dead letter's trigger was deleted, or an earlier replay of it is still pending", body = crate::http::error::ErrorBody)))]
async fn replay_dead_letter(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    principal.require(Capability::DeadLettersWrite)?;
    let outbox_id = st.dead_letters.replay(AppId(app_id), id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            dead_letter_id: id,
            outbox_id,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/admin/apps/{app_id}/dead-letters/{id}", tag = "dead-letters",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("id" = Uuid, Path)),
    responses((status = 204)))]
async fn delete_dead_letter(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::DeadLettersWrite)?;
    st.dead_letters.delete(AppId(app_id), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/outbox/stats", tag = "dead-letters",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 200, body = OutboxStatsBody)))]
async fn outbox_stats(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<OutboxStatsBody>, ApiError> {
    principal.require(Capability::OutboxRead)?;
    Ok(Json(
        st.dead_letters.outbox_stats(AppId(app_id)).await?.into(),
    ))
}
