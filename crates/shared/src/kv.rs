//! The kv service contract: per-app JSON values addressed by collection and key.

use crate::{ids::AppId, triggers::CallContext, ServiceError};
use async_trait::async_trait;
use serde_json::Value;

/// Most keys one `list` call returns; `list_page` pages past it.
pub const KV_LIST_MAX: usize = 1000;

/// The page size a `list_page` call really uses: at least 1, at most [`KV_LIST_MAX`].
pub fn page_limit(requested: usize) -> usize {
    requested.clamp(1, KV_LIST_MAX)
}

/// One page of keys, in ascending byte order, and the cursor for the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPage {
    pub keys: Vec<String>,
    /// The `after` argument that fetches the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Per-app key-value storage. The app id always comes from the execution context.
#[async_trait]
pub trait KvService: Send + Sync {
    /// Stores `value` (any JSON; `null` is a value, not a delete), and enqueues
    /// the events of the app's matching `kv` triggers in the same transaction.
    async fn set(
        &self,
        ctx: &CallContext,
        collection: &str,
        key: &str,
        value: Value,
    ) -> Result<(), ServiceError>;
    /// The stored value, or `None` when the key is absent.
    async fn get(
        &self,
        app: AppId,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ServiceError>;
    /// Removes the key; true when something was removed (and then, in the same
    /// transaction, the events of the app's matching `kv` triggers are enqueued).
    async fn delete(
        &self,
        ctx: &CallContext,
        collection: &str,
        key: &str,
    ) -> Result<bool, ServiceError>;
    /// Keys with `prefix` after the cursor `after`, ascending, at most `limit` (capped at 1,000).
    async fn list_page(
        &self,
        app: AppId,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, ServiceError>;
}
