//! `/api/v1/admin/api-keys`: create (the key is shown once), list, delete. `admin` only.

use crate::cache_sync::Invalidation;
use crate::http::{
    auth::Principal,
    error::ApiError,
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_shared::{
    auth::{Capability, Scope},
    domain::{ApiKeyInfo, CreatedApiKey},
    ids::ApiKeyId,
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Body of `POST /api-keys`.
#[derive(Deserialize, ToSchema)]
pub struct CreateApiKey {
    /// `[A-Za-z0-9_-]{1,64}`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// At least one of the seven scopes.
    #[schema(value_type = Vec<Scope>, min_items = 1)]
    pub scopes: Vec<String>,
}

/// The API key routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
}

/// Parses scope names, rejecting unknown ones without echoing them.
pub fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, ApiError> {
    names
        .iter()
        .map(|n| {
            n.parse::<Scope>()
                .map_err(|e| ApiError::Validation(e.to_string()))
        })
        .collect()
}

#[utoipa::path(post, path = "/api/v1/admin/api-keys", tag = "api-keys", security(("bearer" = [])),
    request_body = CreateApiKey,
    responses((status = 201, description = "the key, shown this once", body = CreatedApiKey)))]
async fn create_key(
    State(st): State<AppState>,
    principal: Principal,
    body: JsonBody<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    principal.require(Capability::ApiKeysManage)?;
    let body = body.parse().await?;
    let scopes = parse_scopes(&body.scopes)?;
    Ok((
        StatusCode::CREATED,
        Json(st.api_keys.create(&body.name, &scopes).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/admin/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = Vec<ApiKeyInfo>)))]
async fn list_keys(
    State(st): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
    principal.require(Capability::ApiKeysManage)?;
    Ok(Json(st.api_keys.list().await?))
}

#[utoipa::path(delete, path = "/api/v1/admin/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204)))]
async fn delete_key(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::ApiKeysManage)?;
    st.api_keys.delete(ApiKeyId(id)).await?;
    st.caches.apply(&Invalidation::ApiKey { id: ApiKeyId(id) });
    Ok(StatusCode::NO_CONTENT)
}
