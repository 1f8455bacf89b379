//! `KvService` over PostgreSQL.

use crate::{error::ManagerError, repo, service::events::EventPolicy};
use async_trait::async_trait;
use picloud_shared::{
    ids::AppId,
    kv::{page_limit, KvPage, KvService},
    names::{validate_dotted_name, validate_kv_key, validate_kv_list_bounds},
    triggers::CallContext,
    values::capped_json,
    ServiceError,
};
use serde_json::Value;
use sqlx::PgPool;

/// Default cap on a stored value's serialised JSON size (1 MiB).
pub const DEFAULT_KV_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// kv storage in the `kv_entries` table.
#[derive(Clone)]
pub struct KvServiceImpl {
    pool: PgPool,
    max_value_bytes: usize,
    events: EventPolicy,
}

impl KvServiceImpl {
    /// A service over `pool` capping values at `max_value_bytes`, with the default event policy.
    pub fn new(pool: PgPool, max_value_bytes: usize) -> Self {
        Self::with_events(pool, max_value_bytes, EventPolicy::default())
    }

    /// A service over `pool` whose writes enqueue trigger events under `events`.
    pub fn with_events(pool: PgPool, max_value_bytes: usize, events: EventPolicy) -> Self {
        Self {
            pool,
            max_value_bytes,
            events,
        }
    }
}

fn db_error(e: sqlx::Error) -> ServiceError {
    // PostgreSQL's jsonb cannot hold a NUL character (SQLSTATE 22P05).
    if matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("22P05")) {
        return ServiceError::InvalidArgument("kv values cannot contain the NUL character".into());
    }
    ManagerError::Database(e).into()
}

#[async_trait]
impl KvService for KvServiceImpl {
    async fn set(
        &self,
        ctx: &CallContext,
        collection: &str,
        key: &str,
        value: Value,
    ) -> Result<(), ServiceError> {
        validate_dotted_name("collection", collection)?;
        validate_kv_key(key)?;
        capped_json(&value, self.max_value_bytes)?;
        let origin = self.events.origin(ctx);
        let enqueued = repo::kv::upsert(&self.pool, ctx.app_id, collection, key, &value, &origin)
            .await
            .map_err(db_error)?;
        self.events.check_refused(ctx, &enqueued)?;
        self.events.record(ctx, "kv", &origin, &enqueued);
        Ok(())
    }

    async fn get(
        &self,
        app: AppId,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ServiceError> {
        validate_dotted_name("collection", collection)?;
        validate_kv_key(key)?;
        repo::kv::get(&self.pool, app, collection, key)
            .await
            .map_err(db_error)
    }

    async fn delete(
        &self,
        ctx: &CallContext,
        collection: &str,
        key: &str,
    ) -> Result<bool, ServiceError> {
        validate_dotted_name("collection", collection)?;
        validate_kv_key(key)?;
        let origin = self.events.origin(ctx);
        let (removed, enqueued) =
            repo::kv::delete(&self.pool, ctx.app_id, collection, key, &origin)
                .await
                .map_err(db_error)?;
        self.events.check_refused(ctx, &enqueued)?;
        self.events.record(ctx, "kv", &origin, &enqueued);
        Ok(removed)
    }

    async fn list_page(
        &self,
        app: AppId,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, ServiceError> {
        validate_dotted_name("collection", collection)?;
        validate_kv_list_bounds(prefix, after)?;
        let limit = page_limit(limit);
        // One extra row tells whether another page exists.
        let mut keys =
            repo::kv::list_keys(&self.pool, app, collection, prefix, after, limit as i64 + 1)
                .await
                .map_err(db_error)?;
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Ok(KvPage { keys, next })
    }
}
