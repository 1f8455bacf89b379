//! `/api/v1/admin/apps/{app_id}/email-inbound`: an app's inbound email
//! endpoint and its secret (write-only).

use crate::http::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, Json};
use picloud_shared::{auth::Capability, ids::AppId, inbound::AppInbound};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use zeroize::Zeroizing;

/// Body of `PUT .../email-inbound`: the secret requests must be signed with
/// (16-256 characters; a `whsec_` secret is base64-decoded for Standard
/// Webhooks), or `null` for an unsigned endpoint. Never shown again.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetInboundSecret {
    #[schema(
        min_length = 16,
        max_length = 256,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    secret: Option<String>,
}

/// The routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_email_inbound, put_email_inbound))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/email-inbound", tag = "email",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 200, description = "the app's inbound endpoint; `signed` false means any POST to it is accepted", body = AppInbound)))]
async fn get_email_inbound(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<AppInbound>, ApiError> {
    principal.require(Capability::EmailInboundRead)?;
    Ok(Json(st.inbound.app_endpoint(AppId(app_id)).await?))
}

#[utoipa::path(put, path = "/api/v1/admin/apps/{app_id}/email-inbound", tag = "email",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)), request_body = SetInboundSecret,
    responses((status = 200, description = "the app's inbound endpoint (the secret is sealed and never shown)", body = AppInbound),
        (status = 422, description = "`validation_error`: a secret outside 16-256 characters or with a control character", body = ErrorBody)))]
async fn put_email_inbound(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    body: JsonBody<SetInboundSecret>,
) -> Result<Json<AppInbound>, ApiError> {
    principal.require(Capability::EmailInboundWrite)?;
    let body = body.parse().await?;
    Ok(Json(
        st.inbound
            .set_app_secret(AppId(app_id), body.secret.map(Zeroizing::new))
            .await?,
    ))
}
