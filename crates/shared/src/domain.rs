//! Domain records the admin API returns: apps, scripts, API keys, triggers.

use crate::{
    auth::Scope,
    ids::{ApiKeyId, AppId, ScriptId},
    triggers::{RetryPolicy, TriggerKind},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// An app: the unit of isolation for scripts and data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct App {
    #[schema(value_type = uuid::Uuid)]
    pub id: AppId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A script's metadata, as lists return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Script {
    #[schema(value_type = uuid::Uuid)]
    pub id: ScriptId,
    #[schema(value_type = uuid::Uuid)]
    pub app_id: AppId,
    pub name: String,
    pub public: bool,
    /// Starts at 1 and grows by one on every update.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A script with its source, as a single `GET` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ScriptWithSource {
    #[serde(flatten)]
    pub script: Script,
    pub source: String,
}

/// An API key's public record; the key itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    #[schema(value_type = uuid::Uuid)]
    pub id: ApiKeyId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The create response: the only time the key is shown.
#[derive(Clone, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("info", &self.info)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A trigger as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TriggerInfo {
    pub id: uuid::Uuid,
    pub app_id: uuid::Uuid,
    pub kind: TriggerKind,
    pub script_id: uuid::Uuid,
    /// The kind's config, without secrets.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub retry: RetryPolicy,
    pub created_at: DateTime<Utc>,
    /// `email` triggers: where the inbound webhook posts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_url: Option<String>,
    /// `email` triggers: whether posts must be signed with the trigger's secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<bool>,
}

/// A dead letter: an event whose handler failed every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeadLetterInfo {
    pub id: uuid::Uuid,
    pub app_id: uuid::Uuid,
    /// The trigger whose handler failed (null once that trigger is deleted).
    pub trigger_id: Option<uuid::Uuid>,
    pub script_id: Option<uuid::Uuid>,
    /// The kind of that trigger.
    pub source: String,
    /// The event that failed, as the handler saw it.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// Runs made.
    pub attempts: u32,
    pub last_error: String,
    pub first_attempt_at: DateTime<Utc>,
    pub last_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}
