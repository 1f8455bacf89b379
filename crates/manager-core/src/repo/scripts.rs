//! SQL for the `scripts` table.

use chrono::{DateTime, Utc};
use picloud_shared::{
    domain::{Script, ScriptWithSource},
    ids::{AppId, ScriptId},
};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct ScriptRow {
    id: Uuid,
    app_id: Uuid,
    name: String,
    public: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    source: String,
}

impl From<ScriptRow> for ScriptWithSource {
    fn from(r: ScriptRow) -> Self {
        ScriptWithSource {
            script: Script {
                id: ScriptId(r.id),
                app_id: AppId(r.app_id),
                name: r.name,
                public: r.public,
                version: r.version,
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            source: r.source,
        }
    }
}

const COLUMNS: &str = "id, app_id, name, public, version, created_at, updated_at, source";

/// Inserts a script at version 1.
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: ScriptId,
    app_id: AppId,
    name: &str,
    source: &str,
    public: bool,
) -> Result<ScriptWithSource, sqlx::Error> {
    sqlx::query_as::<_, ScriptRow>(&format!(
        "INSERT INTO scripts (id, app_id, name, source, public) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {COLUMNS}"
    ))
    .bind(id.0)
    .bind(app_id.0)
    .bind(name)
    .bind(source)
    .bind(public)
    .fetch_one(db)
    .await
    .map(ScriptWithSource::from)
}

/// An app's scripts with their sources, newest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    app_id: AppId,
) -> Result<Vec<ScriptWithSource>, sqlx::Error> {
    let rows = sqlx::query_as::<_, ScriptRow>(&format!(
        "SELECT {COLUMNS} FROM scripts WHERE app_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(app_id.0)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(ScriptWithSource::from).collect())
}

/// One script of an app by id.
pub async fn get(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    id: ScriptId,
) -> Result<Option<ScriptWithSource>, sqlx::Error> {
    sqlx::query_as::<_, ScriptRow>(&format!(
        "SELECT {COLUMNS} FROM scripts WHERE app_id = $1 AND id = $2"
    ))
    .bind(app_id.0)
    .bind(id.0)
    .fetch_optional(db)
    .await
    .map(|r| r.map(ScriptWithSource::from))
}

/// One script of an app by name.
pub async fn get_by_name(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    name: &str,
) -> Result<Option<ScriptWithSource>, sqlx::Error> {
    sqlx::query_as::<_, ScriptRow>(&format!(
        "SELECT {COLUMNS} FROM scripts WHERE app_id = $1 AND name = $2"
    ))
    .bind(app_id.0)
    .bind(name)
    .fetch_optional(db)
    .await
    .map(|r| r.map(ScriptWithSource::from))
}

/// Replaces name, source and (when given) the public flag; bumps the version.
pub async fn update(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    id: ScriptId,
    name: &str,
    source: &str,
    public: Option<bool>,
) -> Result<Option<ScriptWithSource>, sqlx::Error> {
    sqlx::query_as::<_, ScriptRow>(&format!(
        "UPDATE scripts SET name = $3, source = $4, public = COALESCE($5, public), \
         version = version + 1, updated_at = now() \
         WHERE app_id = $1 AND id = $2 RETURNING {COLUMNS}"
    ))
    .bind(app_id.0)
    .bind(id.0)
    .bind(name)
    .bind(source)
    .bind(public)
    .fetch_optional(db)
    .await
    .map(|r| r.map(ScriptWithSource::from))
}

/// Deletes a script; the deleted row's name when one went.
pub async fn delete(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    id: ScriptId,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar::<_, String>(
        "DELETE FROM scripts WHERE app_id = $1 AND id = $2 RETURNING name",
    )
    .bind(app_id.0)
    .bind(id.0)
    .fetch_optional(db)
    .await
}

/// Whether the app has a script with this id.
pub async fn exists(
    db: impl PgExecutor<'_>,
    app: AppId,
    id: ScriptId,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM scripts WHERE app_id = $1 AND id = $2)")
        .bind(app.0)
        .bind(id.0)
        .fetch_one(db)
        .await
}
