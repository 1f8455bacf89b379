//! `/api/v1/admin/apps/{app_id}/secrets`: list names, set, delete. Values are write-only.

use crate::http::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_shared::{
    auth::Capability, ids::AppId, names::validate_dotted_name, secrets::SecretInfo,
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Body of `POST .../secrets`.
#[derive(Deserialize, ToSchema)]
pub struct SetSecret {
    /// `[A-Za-z0-9_.-]{1,128}`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
    /// Any JSON; it is sealed and never returned by the admin API.
    #[schema(value_type = serde_json::Value)]
    pub value: Value,
}

/// The secret routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets, set_secret))
        .routes(routes!(delete_secret))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/secrets", tag = "secrets",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 200, description = "names and update times, never values", body = Vec<SecretInfo>)))]
async fn list_secrets(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    principal.require(Capability::AppSecretsRead)?;
    let app = st.apps.get(AppId(app_id)).await?;
    Ok(Json(st.secrets.list(app.id).await?))
}

#[utoipa::path(post, path = "/api/v1/admin/apps/{app_id}/secrets", tag = "secrets",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)), request_body = SetSecret,
    responses((status = 200, body = SecretInfo),
        (status = 413, description = "value above PICLOUD_SECRET_MAX_VALUE_BYTES (limit and actual given)", body = ErrorBody)))]
async fn set_secret(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    body: JsonBody<SetSecret>,
) -> Result<Json<SecretInfo>, ApiError> {
    principal.require(Capability::AppSecretsWrite)?;
    let body = body.parse().await?;
    Ok(Json(
        st.secrets
            .set(AppId(app_id), &body.name, body.value)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/admin/apps/{app_id}/secrets/{name}", tag = "secrets",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("name" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    responses((status = 204)))]
async fn delete_secret(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, name)): ApiPath<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::AppSecretsWrite)?;
    // A name outside the pattern is a malformed path, as for every other name.
    validate_dotted_name("secret", &name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if st.secrets.delete(AppId(app_id), &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("secret"))
    }
}
