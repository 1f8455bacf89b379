//! `/api/v1/admin/apps/{app_id}/scripts`: save (compile-checked), list, get, update, delete.

use crate::cache_sync::Invalidation;
use crate::http::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_shared::{
    auth::Capability,
    domain::{Script, ScriptWithSource},
    ids::{AppId, ScriptId},
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Body of a script create or update.
#[derive(Deserialize, ToSchema)]
pub struct SaveScript {
    /// `[A-Za-z0-9_-]{1,64}`, unique in the app.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// Rhai source; it must compile.
    pub source: String,
    /// Runs without an API key when true. On update, omitted keeps the current value.
    pub public: Option<bool>,
}

/// The script routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_script, list_scripts))
        .routes(routes!(get_script, update_script, delete_script))
}

#[utoipa::path(post, path = "/api/v1/admin/apps/{app_id}/scripts", tag = "scripts",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)), request_body = SaveScript,
    responses((status = 201, body = Script),
        (status = 413, description = "source above PICLOUD_SCRIPT_MAX_SOURCE_BYTES (`limit` in the body)", body = ErrorBody),
        (status = 422, description = "validation_error or compile_error (with line and column; also a compile past its time bound)", body = ErrorBody),
        (status = 409, description = "`conflict`: another script of the app has this name", body = ErrorBody),
        (status = 503, description = "`unavailable`: every script worker is busy; retry after `Retry-After` seconds", body = ErrorBody)))]
async fn create_script(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    body: JsonBody<SaveScript>,
) -> Result<(StatusCode, Json<Script>), ApiError> {
    principal.require(Capability::ScriptsWrite)?;
    let body = body.parse().await?;
    let app = AppId(app_id);
    let saved = st
        .scripts
        .create(app, &body.name, &body.source, body.public.unwrap_or(false))
        .await?;
    // Another process may have just deleted a script of this name that is still cached here.
    st.caches.apply(&Invalidation::Script {
        app_id: app,
        id: saved.script.id,
        names: vec![saved.script.name.clone()],
    });
    Ok((StatusCode::CREATED, Json(saved.script)))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/scripts", tag = "scripts",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Script>)))]
async fn list_scripts(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<Vec<Script>>, ApiError> {
    principal.require(Capability::ScriptsRead)?;
    let scripts = st.scripts.list(AppId(app_id)).await?;
    Ok(Json(scripts.into_iter().map(|s| s.script).collect()))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/scripts/{script_id}", tag = "scripts",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("script_id" = Uuid, Path)),
    responses((status = 200, body = ScriptWithSource)))]
async fn get_script(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, script_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<ScriptWithSource>, ApiError> {
    principal.require(Capability::ScriptsRead)?;
    Ok(Json(
        st.scripts.get(AppId(app_id), ScriptId(script_id)).await?,
    ))
}

#[utoipa::path(put, path = "/api/v1/admin/apps/{app_id}/scripts/{script_id}", tag = "scripts",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("script_id" = Uuid, Path)),
    request_body = SaveScript,
    responses((status = 200, body = Script),
        (status = 413, description = "source above PICLOUD_SCRIPT_MAX_SOURCE_BYTES (`limit` in the body)", body = ErrorBody),
        (status = 422, description = "validation_error or compile_error (with line and column; also a compile past its time bound)", body = ErrorBody),
        (status = 409, description = "`conflict`: another script of the app has this name", body = ErrorBody),
        (status = 503, description = "`unavailable`: every script worker is busy; retry after `Retry-After` seconds", body = ErrorBody)))]
async fn update_script(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, script_id)): ApiPath<(Uuid, Uuid)>,
    body: JsonBody<SaveScript>,
) -> Result<Json<Script>, ApiError> {
    principal.require(Capability::ScriptsWrite)?;
    let body = body.parse().await?;
    let app = AppId(app_id);
    let (saved, old_name) = st
        .scripts
        .update(
            app,
            ScriptId(script_id),
            &body.name,
            &body.source,
            body.public,
        )
        .await?;
    st.caches.apply(&Invalidation::Script {
        app_id: app,
        id: saved.script.id,
        names: vec![old_name, saved.script.name.clone()],
    });
    Ok(Json(saved.script))
}

#[utoipa::path(delete, path = "/api/v1/admin/apps/{app_id}/scripts/{script_id}", tag = "scripts",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("script_id" = Uuid, Path)),
    responses((status = 204)))]
async fn delete_script(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, script_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::ScriptsWrite)?;
    let app = AppId(app_id);
    let deleted = st.scripts.delete(app, ScriptId(script_id)).await?;
    st.caches.apply(&Invalidation::Script {
        app_id: app,
        id: deleted.id,
        names: vec![deleted.name],
    });
    Ok(StatusCode::NO_CONTENT)
}
