//! `/api/v1/admin/apps`: create, list, get, delete apps.

use crate::cache_sync::Invalidation;
use crate::http::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_shared::{auth::Capability, domain::App, ids::AppId};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Body of `POST /apps`.
#[derive(Deserialize, ToSchema)]
pub struct CreateApp {
    /// `[A-Za-z0-9_-]{1,64}`, unique.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
}

/// The app routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_app, list_apps))
        .routes(routes!(get_app, delete_app))
}

#[utoipa::path(post, path = "/api/v1/admin/apps", tag = "apps", request_body = CreateApp,
    security(("bearer" = [])),
    responses((status = 201, body = App),
        (status = 409, description = "`conflict`: an app with this name exists", body = ErrorBody)))]
async fn create_app(
    State(st): State<AppState>,
    principal: Principal,
    body: JsonBody<CreateApp>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    principal.require(Capability::AppsWrite)?;
    let body = body.parse().await?;
    Ok((StatusCode::CREATED, Json(st.apps.create(&body.name).await?)))
}

#[utoipa::path(get, path = "/api/v1/admin/apps", tag = "apps", security(("bearer" = [])),
    responses((status = 200, body = Vec<App>)))]
async fn list_apps(
    State(st): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<App>>, ApiError> {
    principal.require(Capability::AppsRead)?;
    Ok(Json(st.apps.list().await?))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = Uuid, Path)),
    responses((status = 200, body = App)))]
async fn get_app(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<App>, ApiError> {
    principal.require(Capability::AppsRead)?;
    Ok(Json(st.apps.get(AppId(app_id)).await?))
}

#[utoipa::path(delete, path = "/api/v1/admin/apps/{app_id}", tag = "apps", security(("bearer" = [])),
    params(("app_id" = Uuid, Path)),
    responses((status = 204)))]
async fn delete_app(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::AppsWrite)?;
    let app = AppId(app_id);
    st.apps.delete(app).await?;
    // Compiled scripts are dropped by their own (cascaded) delete notifications.
    st.caches.apply(&Invalidation::App { app_id: app });
    Ok(StatusCode::NO_CONTENT)
}
