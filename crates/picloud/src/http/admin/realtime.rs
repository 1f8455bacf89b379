//! `/api/v1/admin/apps/{app_id}/realtime/...`: subscriber tokens and the
//! app's signing key (SPEC §9).

use crate::http::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_shared::{auth::Capability, ids::AppId, realtime::IssuedToken};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// The schema of `topics`: 1-64 topics, each exact or `prefix.*`.
fn topics_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(256))
                .pattern(Some("^[A-Za-z0-9_:-]+(\\.[A-Za-z0-9_:-]+)*(\\.\\*)?$")),
        )
        .min_items(Some(1))
        .max_items(Some(64))
        .build()
}

/// Body of `POST .../realtime/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// Topics the token grants (1-64), each a topic or a `prefix.*` pattern.
    #[schema(schema_with = topics_schema)]
    topics: Vec<String>,
    /// Seconds the token is valid: 1 to 604800 (7 days).
    #[schema(minimum = 1, maximum = 604800, value_type = u64, required = true)]
    #[serde(deserialize_with = "picloud_shared::values::optional_whole_number")]
    ttl_secs: Option<u64>,
}

/// The routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mint_token))
        .routes(routes!(rotate_key))
}

#[utoipa::path(post, path = "/api/v1/admin/apps/{app_id}/realtime/tokens", tag = "realtime",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)), request_body = MintToken,
    responses((status = 201, description = "a subscriber token for the topics (the app's signing key is created on first use)", body = IssuedToken),
        (status = 404, description = "`not_found`: no such app", body = ErrorBody),
        (status = 422, description = "`validation_error`: bad topics or ttl_secs", body = ErrorBody)))]
async fn mint_token(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    body: JsonBody<MintToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    principal.require(Capability::RealtimeTokensMint)?;
    let body = body.parse().await?;
    let issued = st
        .realtime
        .mint(AppId(app_id), body.topics, body.ttl_secs.unwrap_or(0))
        .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

#[utoipa::path(post, path = "/api/v1/admin/apps/{app_id}/realtime/rotate-key", tag = "realtime",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 204, description = "a new signing key; tokens signed by the previous one stay valid for `PICLOUD_REALTIME_KEY_GRACE_SECS`"),
        (status = 404, description = "`not_found`: no such app", body = ErrorBody)))]
async fn rotate_key(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::RealtimeKeyRotate)?;
    st.realtime.rotate(AppId(app_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
