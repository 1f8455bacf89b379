//! Health, readiness, metrics, the OpenAPI document and the start page.

use super::{
    error::{ApiError, ErrorBody},
    AppState,
};
use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse, Response},
    Json,
};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A health answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// The system routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(index))
}

#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "the process is alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, description = "the database is reachable", body = Health),
        (status = 503, description = "the database is not reachable", body = ErrorBody)))]
async fn readyz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    let ping = sqlx::query("SELECT 1").execute(&st.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(Json(Health { status: "ok" })),
        _ => Err(ApiError::Unavailable(
            "the database is not reachable".into(),
        )),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(st): State<AppState>) -> Response {
    st.metrics.observe_pool(st.script_pool.stats());
    st.metrics.observe_event_drops(&st.events.counters());
    st.metrics.observe_email_sends(&st.email.counters());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
async fn openapi_json(State(st): State<AppState>) -> Response {
    let doc = st.openapi_json.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

#[utoipa::path(get, path = "/", tag = "system",
    responses((status = 200, description = "the start page", content_type = "text/html", body = String)))]
async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// Any path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// A path that exists, with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>picloud</title></head>
<body>
<h1>picloud</h1>
<p>The server is running. The dashboard is not built yet.</p>
<p>The HTTP API is described by its <a href="/api/v1/openapi.json">OpenAPI document</a>.</p>
</body>
</html>
"#;
