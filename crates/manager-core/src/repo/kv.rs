//! SQL for the `kv_entries` table. A write and the outbox rows of the
//! triggers it fires are one statement, so they commit together.

use super::outbox::{enqueue_ctes, enqueued_columns, quota_cte, Enqueued, EventOrigin};
use picloud_shared::ids::AppId;
use serde_json::Value;
use sqlx::PgExecutor;
use std::sync::LazyLock;

/// Inserts or replaces a value and, in the same statement, enqueues an event
/// for every matching `kv` trigger of the app (with the value it replaced).
/// The row is locked before it is read, so `previous` is the value this write
/// replaced even under concurrent writers of the key.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    app: AppId,
    collection: &str,
    key: &str,
    value: &Value,
    origin: &EventOrigin,
) -> Result<Enqueued, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH previous AS MATERIALIZED ( \
                 SELECT value FROM kv_entries WHERE app_id = $1 AND collection = $2 AND key = $3 FOR UPDATE \
             ), matching AS ( \
                 SELECT id, script_id, max_attempts, backoff, base_ms FROM triggers \
                 WHERE app_id = $1 AND kind = 'kv' AND config->>'collection' = $2 \
                   AND starts_with($3, coalesce(config->>'key_prefix', '')) AND config->'ops' ? 'set' \
             ), {}, written AS ( \
                 INSERT INTO kv_entries (app_id, collection, key, value) \
                 SELECT $1, $2, $3, $4 FROM (SELECT count(*) FROM previous) AS after_the_lock \
                 WHERE NOT (SELECT refused FROM quota) \
                 ON CONFLICT (app_id, collection, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now() \
                 RETURNING 1 \
             ), {} \
             SELECT {}, (SELECT count(*) FROM written) AS _written",
            quota_cte("$10", "$7", "matching"),
            enqueue_ctes(
                "SELECT $1, m.id, m.script_id, 'kv', \
                     jsonb_build_object('kind', 'kv', 'op', 'set', 'collection', $2::text, 'key', $3::text, 'value', $4::jsonb) \
                       || coalesce((SELECT jsonb_build_object('previous', value) FROM previous), '{}'::jsonb), \
                     m.max_attempts, m.backoff, m.base_ms, $5, $6, $8 FROM matching m",
                "$8",
                "$7",
                "$9"
            ),
            enqueued_columns("$9")
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(app.0)
        .bind(collection)
        .bind(key)
        .bind(sqlx::types::Json(value))
        .bind(origin.depth)
        .bind(origin.principal)
        .bind(origin.enqueue)
        .bind(origin.chain)
        .bind(origin.max_chain_events)
        .bind(origin.refuse_events)
        .fetch_one(db)
        .await
}

/// The stored value, if any.
pub async fn get(
    db: impl PgExecutor<'_>,
    app: AppId,
    collection: &str,
    key: &str,
) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(
        "SELECT value FROM kv_entries WHERE app_id = $1 AND collection = $2 AND key = $3",
    )
    .bind(app.0)
    .bind(collection)
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|j| j.0))
}

/// Deletes a key and, if it existed, enqueues in the same statement an event
/// (with the value it held) for every matching `kv` trigger of the app.
/// Returns whether a row was removed.
pub async fn delete(
    db: impl PgExecutor<'_>,
    app: AppId,
    collection: &str,
    key: &str,
    origin: &EventOrigin,
) -> Result<(bool, Enqueued), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Deleted {
        removed: i64,
        #[sqlx(flatten)]
        enqueued: Enqueued,
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH candidates AS ( \
                 SELECT id, script_id, max_attempts, backoff, base_ms FROM triggers \
                 WHERE app_id = $1 AND kind = 'kv' AND config->>'collection' = $2 \
                   AND starts_with($3, coalesce(config->>'key_prefix', '')) AND config->'ops' ? 'delete' \
             ), {}, removed AS ( \
                 DELETE FROM kv_entries WHERE app_id = $1 AND collection = $2 AND key = $3 \
                   AND NOT (SELECT refused FROM quota) RETURNING value \
             ), matching AS ( \
                 SELECT * FROM candidates WHERE EXISTS (SELECT 1 FROM removed) \
             ), {} \
             SELECT (SELECT count(*) FROM removed) AS removed, {}",
            quota_cte("$9", "$6", "candidates"),
            enqueue_ctes(
                "SELECT $1, m.id, m.script_id, 'kv', \
                     jsonb_build_object('kind', 'kv', 'op', 'delete', 'collection', $2::text, 'key', $3::text, 'previous', r.value), \
                     m.max_attempts, m.backoff, m.base_ms, $4, $5, $7 FROM matching m CROSS JOIN removed r",
                "$7",
                "$6",
                "$8"
            ),
            enqueued_columns("$8")
        )
    });
    let deleted: Deleted = sqlx::query_as(SQL.as_str())
        .bind(app.0)
        .bind(collection)
        .bind(key)
        .bind(origin.depth)
        .bind(origin.principal)
        .bind(origin.enqueue)
        .bind(origin.chain)
        .bind(origin.max_chain_events)
        .bind(origin.refuse_events)
        .fetch_one(db)
        .await?;
    Ok((deleted.removed > 0, deleted.enqueued))
}

/// Up to `limit` keys starting with `prefix` and greater than `after`, ascending by byte.
pub async fn list_keys(
    db: impl PgExecutor<'_>,
    app: AppId,
    collection: &str,
    prefix: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT key FROM kv_entries \
         WHERE app_id = $1 AND collection = $2 AND key LIKE $3 AND ($4::text IS NULL OR key > $4) \
         ORDER BY key LIMIT $5",
    )
    .bind(app.0)
    .bind(collection)
    .bind(like_prefix(prefix))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A LIKE pattern matching strings that start with `prefix` literally.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(super::like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(super::like_prefix(""), "%");
    }
}
