//! `/api/v1/admin/apps/{app_id}/triggers`: register, list, get, delete.

use crate::http::{
    auth::Principal,
    error::ApiError,
    extract::{ApiPath, JsonBody},
    AppState,
};
use axum::{extract::State, http::StatusCode, Json};
use picloud_manager_core::service::triggers::NewTriggerRequest;
use picloud_shared::{
    auth::Capability,
    domain::TriggerInfo,
    ids::AppId,
    triggers::{
        CronTriggerConfig, DeadLetterTriggerConfig, EmailTriggerConfig, KvTriggerConfig,
        PubsubTriggerConfig, RetryPolicy, TriggerConfig,
    },
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// Body of `POST .../triggers`: the kind picks the config's shape (SPEC §8).
#[derive(Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CreateTrigger {
    /// Fires on `kv::set`/`kv::delete` in one collection.
    Kv {
        script_id: Uuid,
        config: KvTriggerConfig,
        retry: Option<RetryPolicy>,
    },
    /// Fires on a schedule.
    Cron {
        script_id: Uuid,
        config: CronTriggerConfig,
        retry: Option<RetryPolicy>,
    },
    /// Fires on `pubsub::publish` to a matching topic.
    Pubsub {
        script_id: Uuid,
        config: PubsubTriggerConfig,
        retry: Option<RetryPolicy>,
    },
    /// Fires on an inbound email posted to its `inbound_url`.
    Email {
        script_id: Uuid,
        #[serde(default)]
        config: EmailTriggerConfig,
        retry: Option<RetryPolicy>,
    },
    /// Fires when another trigger's event is dead-lettered.
    DeadLetter {
        script_id: Uuid,
        #[serde(default)]
        config: DeadLetterTriggerConfig,
        retry: Option<RetryPolicy>,
    },
}

impl CreateTrigger {
    fn into_request(self) -> NewTriggerRequest {
        let (script_id, config, retry) = match self {
            CreateTrigger::Kv {
                script_id,
                config,
                retry,
            } => (script_id, TriggerConfig::Kv(config), retry),
            CreateTrigger::Cron {
                script_id,
                config,
                retry,
            } => (script_id, TriggerConfig::Cron(config), retry),
            CreateTrigger::Pubsub {
                script_id,
                config,
                retry,
            } => (script_id, TriggerConfig::Pubsub(config), retry),
            CreateTrigger::Email {
                script_id,
                config,
                retry,
            } => (script_id, TriggerConfig::Email(config), retry),
            CreateTrigger::DeadLetter {
                script_id,
                config,
                retry,
            } => (script_id, TriggerConfig::DeadLetter(config), retry),
        };
        NewTriggerRequest {
            script_id,
            config,
            retry,
        }
    }
}

/// The trigger routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_trigger, list_triggers))
        .routes(routes!(get_trigger, delete_trigger))
}

#[utoipa::path(post, path = "/api/v1/admin/apps/{app_id}/triggers", tag = "triggers",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)), request_body = CreateTrigger,
    responses((status = 201, body = TriggerInfo),
        (status = 422, description = "`validation_error`: an unknown kind, a config that breaks its kind's rules, a cron schedule that does not parse or never fires, a `script_id` (or a dead_letter filter's `trigger_id`/`script_id`) that names nothing of this app, an unknown field, or an app at its trigger limit (`PICLOUD_MAX_TRIGGERS_PER_APP`)", body = crate::http::error::ErrorBody)))]
async fn create_trigger(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
    body: JsonBody<CreateTrigger>,
) -> Result<(StatusCode, Json<TriggerInfo>), ApiError> {
    principal.require(Capability::TriggersWrite)?;
    let request = body.parse().await?.into_request();
    let created = st
        .triggers
        .create(AppId(app_id), request, Some(principal.key_id))
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/triggers", tag = "triggers",
    security(("bearer" = [])), params(("app_id" = Uuid, Path)),
    responses((status = 200, body = Vec<TriggerInfo>)))]
async fn list_triggers(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath(app_id): ApiPath<Uuid>,
) -> Result<Json<Vec<TriggerInfo>>, ApiError> {
    principal.require(Capability::TriggersRead)?;
    Ok(Json(st.triggers.list(AppId(app_id)).await?))
}

#[utoipa::path(get, path = "/api/v1/admin/apps/{app_id}/triggers/{trigger_id}", tag = "triggers",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("trigger_id" = Uuid, Path)),
    responses((status = 200, body = TriggerInfo)))]
async fn get_trigger(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, trigger_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<Json<TriggerInfo>, ApiError> {
    principal.require(Capability::TriggersRead)?;
    Ok(Json(st.triggers.get(AppId(app_id), trigger_id).await?))
}

#[utoipa::path(delete, path = "/api/v1/admin/apps/{app_id}/triggers/{trigger_id}", tag = "triggers",
    security(("bearer" = [])), params(("app_id" = Uuid, Path), ("trigger_id" = Uuid, Path)),
    responses((status = 204, description = "deleted, with its pending events")))]
async fn delete_trigger(
    State(st): State<AppState>,
    principal: Principal,
    ApiPath((app_id, trigger_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    principal.require(Capability::TriggersWrite)?;
    st.triggers.delete(AppId(app_id), trigger_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
