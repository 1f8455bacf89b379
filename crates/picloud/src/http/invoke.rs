//! `POST /api/v1/apps/{app_id}/invoke/{script_name}`: run a script over HTTP.
//!
//! The hot path touches no database once the key and the script are cached:
//! look up the script, check the key (unless the script is public), run it
//! on the script pool, answer its value as JSON. A full pool answers 503
//! with `Retry-After`. A public script called without a valid key gets a
//! generic message and an error id for an uncaught error; the detail is
//! logged under that id.

use super::{
    auth::authenticate,
    error::{ApiError, ErrorBody},
    extract::{parse_json, read_body, ApiPath},
    AppState,
};
use crate::script_cache::CachedScript;
use axum::{
    extract::{Request, State},
    http::{header, HeaderMap},
    Json,
};
use picloud_executor_core::{json_container_items, Admission, RequestInfo, RunContext, RunError};
use picloud_shared::{auth::Capability, ids::AppId, names::validate_resource_name};
use serde_json::Value;
use std::{sync::Arc, time::Instant};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// The invoke route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(invoke))
}

/// Request headers a script may see: never credentials.
fn script_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION && *name != header::COOKIE)
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

/// A body with more array items or object entries than a script may hold
/// would be refused by the sandbox at its first operation, after costing many
/// times its size in memory: refuse it before parsing (413, with the limit).
fn refuse_more_items_than_scripts_hold(bytes: &[u8], st: &AppState) -> Result<(), ApiError> {
    let limits = &st.config.limits;
    let (items, entries) = json_container_items(bytes);
    for (what, count, limit) in [
        ("array items", items, limits.max_array_items),
        ("object entries", entries, limits.max_map_items),
    ] {
        if limit != 0 && count > limit {
            return Err(ApiError::TooLarge {
                message: format!(
                    "the request body holds {count} {what}; a script may hold at most {limit}"
                ),
                limit: Some(limit),
                actual: Some(count),
            });
        }
    }
    Ok(())
}

async fn find_script(
    st: &AppState,
    app: AppId,
    name: &str,
) -> Result<Option<Arc<CachedScript>>, ApiError> {
    if let Some(hit) = st.caches.scripts.get(app, name) {
        return Ok(Some(hit));
    }
    let seen = st.caches.scripts.generation();
    match st.scripts.get_by_name(app, name).await {
        Ok(script) => {
            let cached = Arc::new(CachedScript::from(script));
            st.caches.scripts.insert(app, cached.clone(), seen);
            Ok(Some(cached))
        }
        Err(picloud_manager_core::ManagerError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(post, path = "/api/v1/apps/{app_id}/invoke/{script_name}", tag = "invoke",
    security((), ("bearer" = [])),
    params(("app_id" = Uuid, Path), ("script_name" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = Option<serde_json::Value>, description = "any JSON; becomes ctx.request.body (an empty body is null)"),
    responses((status = 200, description = "the script's return value as JSON", body = serde_json::Value),
        (status = 500, description = "script_error or script_limit", body = ErrorBody),
        (status = 503, description = "every script worker is busy (`unavailable`); retry after the `Retry-After` seconds", body = ErrorBody)))]
async fn invoke(
    State(st): State<AppState>,
    ApiPath((app_id, script_name)): ApiPath<(Uuid, String)>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let app = AppId(app_id);
    // Checked before anything reads the database (a NUL would reach PostgreSQL).
    validate_resource_name("script", &script_name)
        .map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let (parts, body) = request.into_parts();
    // `caller`: the key that may invoke, if any; it is the origin of the events the run causes.
    let (script, caller) = match find_script(&st, app, &script_name).await? {
        Some(script) if script.public => {
            // No key is needed; a key that is sent must be valid (a client with
            // a broken or revoked key should hear so), and one that may invoke
            // sees error details.
            let caller = if parts.headers.contains_key(header::AUTHORIZATION) {
                let principal = authenticate(&parts, &st).await?;
                principal
                    .require(Capability::ScriptInvoke)
                    .is_ok()
                    .then_some(principal.key_id)
            } else {
                None
            };
            (script, caller)
        }
        found => {
            // Private or unknown: authenticate first, so names do not leak to strangers.
            let principal = authenticate(&parts, &st).await?;
            principal.require(Capability::ScriptInvoke)?;
            (
                found.ok_or(ApiError::NotFound("script"))?,
                Some(principal.key_id),
            )
        }
    };
    let trusted_caller = caller.is_some();
    let headers = script_headers(&parts.headers);
    let body_read = read_body(Request::from_parts(parts, body), &st).await?;
    let bytes = &body_read.bytes;
    refuse_more_items_than_scripts_hold(bytes, &st)?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_json::<Value>(bytes)?
    };
    // Parsed: the raw bytes leave the server-wide body budget before the run.
    drop(body_read);

    let ctx = RunContext {
        app_id: app,
        trigger: "http",
        request: Some(RequestInfo { body, headers }),
        event: None,
        trigger_depth: 0,
        origin_principal: caller.map(|key| key.0),
        chain_id: None,
    };
    let executor = st.executor.clone();
    let started = Instant::now();
    let handle = script.handle.clone();
    let result = st
        .script_pool
        .run(app, Admission::Reject, move || executor.run(&handle, ctx))
        .await?;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(RunError::Script { .. }) => "error",
        Err(RunError::Limit { .. }) => "limit",
    };
    st.metrics
        .record_run("http", outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(value) => Ok(Json(value)),
        Err(RunError::Script { message }) if !trusted_caller => {
            let error_id = Uuid::new_v4();
            tracing::warn!(
                app_id = %app,
                script = %script.handle.name,
                %error_id,
                error = %message,
                "a public script failed"
            );
            Err(ApiError::Script(format!(
                "the script failed; error id {error_id} (the detail is in the server log)"
            )))
        }
        Err(err) => Err(err.into()),
    }
}
