//! SQL for the `kv_entries` table. Functions take any executor, so a later
//! change can write a kv entry and its outbox rows in one transaction.

use picloud_shared::ids::AppId;
use serde_json::Value;
use sqlx::PgExecutor;

/// Inserts or replaces a value.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    app: AppId,
    collection: &str,
    key: &str,
    value: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kv_entries (app_id, collection, key, value) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (app_id, collection, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
    )
    .bind(app.0)
    .bind(collection)
    .bind(key)
    .bind(sqlx::types::Json(value))
    .execute(db)
    .await?;
    Ok(())
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

/// Deletes a key, returning the value it held.
pub async fn delete(
    db: impl PgExecutor<'_>,
    app: AppId,
    collection: &str,
    key: &str,
) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<sqlx::types::Json<Value>> = sqlx::query_scalar(
        "DELETE FROM kv_entries WHERE app_id = $1 AND collection = $2 AND key = $3 RETURNING value",
    )
    .bind(app.0)
    .bind(collection)
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|j| j.0))
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
