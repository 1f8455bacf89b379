//! The secrets service contract: per-app JSON values, sealed at rest.

use crate::{ids::AppId, ServiceError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Default cap on a secret's serialised JSON size (64 KiB).
pub const DEFAULT_SECRET_MAX_VALUE_BYTES: usize = 64 * 1024;

/// A secret's name and when it last changed; never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

/// Per-app secrets. Values round-trip as JSON; writes emit no trigger events.
#[async_trait]
pub trait SecretsService: Send + Sync {
    /// The secret's value, or `None` when absent.
    async fn get(&self, app: AppId, name: &str) -> Result<Option<Value>, ServiceError>;
    /// Stores (seals) a value; `null` is a value, not a delete.
    async fn set(&self, app: AppId, name: &str, value: Value) -> Result<SecretInfo, ServiceError>;
    /// Removes a secret; true when something was removed.
    async fn delete(&self, app: AppId, name: &str) -> Result<bool, ServiceError>;
    /// The app's secret names, by name.
    async fn list(&self, app: AppId) -> Result<Vec<SecretInfo>, ServiceError>;
}
