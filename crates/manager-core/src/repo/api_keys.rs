//! SQL for the `api_keys` table. Only digests of keys are stored.

use chrono::{DateTime, Utc};
use picloud_shared::{auth::Scope, domain::ApiKeyInfo, ids::ApiKeyId};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for ApiKeyInfo {
    fn from(r: ApiKeyRow) -> Self {
        ApiKeyInfo {
            id: ApiKeyId(r.id),
            name: r.name,
            // Scopes are validated on insert; an unknown one (from a future version) is dropped.
            scopes: r.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        }
    }
}

const COLUMNS: &str = "id, name, scopes, created_at, last_used_at";

/// Inserts a key record by its digest.
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: ApiKeyId,
    name: &str,
    digest: &[u8],
    scopes: &[Scope],
) -> Result<ApiKeyInfo, sqlx::Error> {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query_as::<_, ApiKeyRow>(&format!(
        "INSERT INTO api_keys (id, name, key_digest, scopes) VALUES ($1, $2, $3, $4) \
         RETURNING {COLUMNS}"
    ))
    .bind(id.0)
    .bind(name)
    .bind(digest)
    .bind(&scopes)
    .fetch_one(db)
    .await
    .map(ApiKeyInfo::from)
}

/// The key whose digest matches.
pub async fn find_by_digest(
    db: impl PgExecutor<'_>,
    digest: &[u8],
) -> Result<Option<ApiKeyInfo>, sqlx::Error> {
    sqlx::query_as::<_, ApiKeyRow>(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE key_digest = $1"
    ))
    .bind(digest)
    .fetch_optional(db)
    .await
    .map(|r| r.map(ApiKeyInfo::from))
}

/// All keys, newest first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<ApiKeyInfo>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ApiKeyRow>(&format!(
        "SELECT {COLUMNS} FROM api_keys ORDER BY created_at DESC, id DESC"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(ApiKeyInfo::from).collect())
}

/// How many keys exist (zero means first start).
pub async fn count(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(db)
        .await
}

/// Deletes a key; `true` when one went.
pub async fn delete(db: impl PgExecutor<'_>, id: ApiKeyId) -> Result<bool, sqlx::Error> {
    let result = sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(id.0)
        .execute(db)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Records a use of the key.
pub async fn touch_last_used(db: impl PgExecutor<'_>, id: ApiKeyId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1")
        .bind(id.0)
        .execute(db)
        .await?;
    Ok(())
}
