//! `/api/v1/admin/email/status` and `/api/v1/admin/apps/{app_id}/email-policy`.

use crate::{
    email_config::EmailStatus,
    http::{
        auth::Principal,
        error::{ApiError, ErrorBody},
        extract::{ApiPath, JsonBody},
        AppState,
    },
};
use axum::{extract::State, Json};
use picloud_shared::{auth::Capability, email::EmailPolicy, ids::AppId};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// The email routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(email_status))
        .routes(routes!(get_email_policy, put_email_policy))
}

#[utoipa::path(get, path = "/api/v1/admin/email/status", tag = "email",
    security(("bearer" = [])),
    responses((status = 200, description = "the relay outbound email goes through; `configured` false means every send fails with `not_configured`", body = EmailStatus)))]
async fn email_status(
    State(st): State<AppState>,
    principal: Principal,
) -> Result<Json<EmailStatus>, ApiError> {
    principal.require(Capability::EmailStatusRead)?;
    Ok(Json(st.config.email.status.clone()))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/email-policy", tag = "email",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 200, description = "who the app's scripts may email, and its daily cap (an app never set: unrestricted, no cap)", body = EmailPolicy)))]
async fn get_email_policy(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<EmailPolicy>, ApiError> {
    principal.require(Capability::EmailPolicyRead)?;
    Ok(Json(st.email.policy(AppId(app_id)).await?))
}

#[utoipa::path(put, path = "/api/v1/admin/apps/{app_id}/email-policy", tag = "email",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)), request_body = EmailPolicy,
    responses((status = 200, description = "the policy as stored (allow-list entries lower-cased)", body = EmailPolicy),
        (status = 422, description = "`validation_error`: `recipients` is neither \"unrestricted\" nor a list of addresses and @domains (at most 1,000), or `daily_cap` is negative", body = ErrorBody)))]
async fn put_email_policy(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    body: JsonBody<EmailPolicy>,
) -> Result<Json<EmailPolicy>, ApiError> {
    principal.require(Capability::EmailPolicyWrite)?;
    let policy = body.parse().await?;
    Ok(Json(st.email.set_policy(AppId(app_id), policy).await?))
}
