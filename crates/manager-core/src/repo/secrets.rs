//! SQL for the `secrets` table: sealed values only, never plaintext.

use chrono::{DateTime, Utc};
use picloud_shared::{ids::AppId, secrets::SecretInfo};
use sqlx::PgExecutor;

/// A sealed secret as stored.
#[derive(sqlx::FromRow)]
pub struct SealedRow {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct InfoRow {
    name: String,
    updated_at: DateTime<Utc>,
}

/// Inserts or replaces a sealed secret.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    app: AppId,
    name: &str,
    sealed: &SealedRow,
) -> Result<SecretInfo, sqlx::Error> {
    let row = sqlx::query_as::<_, InfoRow>(
        "INSERT INTO secrets (app_id, name, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (app_id, name) DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, \
         ciphertext = EXCLUDED.ciphertext, updated_at = now() \
         RETURNING name, updated_at",
    )
    .bind(app.0)
    .bind(name)
    .bind(&sealed.key_id)
    .bind(&sealed.nonce)
    .bind(&sealed.ciphertext)
    .fetch_one(db)
    .await?;
    Ok(SecretInfo {
        name: row.name,
        updated_at: row.updated_at,
    })
}

/// The sealed value of a secret.
pub async fn get(
    db: impl PgExecutor<'_>,
    app: AppId,
    name: &str,
) -> Result<Option<SealedRow>, sqlx::Error> {
    sqlx::query_as::<_, SealedRow>(
        "SELECT key_id, nonce, ciphertext FROM secrets WHERE app_id = $1 AND name = $2",
    )
    .bind(app.0)
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Deletes a secret; true when a row went.
pub async fn delete(db: impl PgExecutor<'_>, app: AppId, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM secrets WHERE app_id = $1 AND name = $2")
        .bind(app.0)
        .bind(name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// An app's secret names, by name.
pub async fn list(db: impl PgExecutor<'_>, app: AppId) -> Result<Vec<SecretInfo>, sqlx::Error> {
    let rows = sqlx::query_as::<_, InfoRow>(
        "SELECT name, updated_at FROM secrets WHERE app_id = $1 ORDER BY name",
    )
    .bind(app.0)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SecretInfo {
            name: r.name,
            updated_at: r.updated_at,
        })
        .collect())
}
