//! SQL for the `apps` table.

use chrono::{DateTime, Utc};
use picloud_shared::{domain::App, ids::AppId};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct AppRow {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<AppRow> for App {
    fn from(r: AppRow) -> Self {
        App {
            id: AppId(r.id),
            name: r.name,
            created_at: r.created_at,
        }
    }
}

/// Inserts an app.
pub async fn insert(db: impl PgExecutor<'_>, id: AppId, name: &str) -> Result<App, sqlx::Error> {
    sqlx::query_as::<_, AppRow>(
        "INSERT INTO apps (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
    )
    .bind(id.0)
    .bind(name)
    .fetch_one(db)
    .await
    .map(App::from)
}

/// All apps, newest first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<App>, sqlx::Error> {
    let rows = sqlx::query_as::<_, AppRow>(
        "SELECT id, name, created_at FROM apps ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(App::from).collect())
}

/// One app by id.
pub async fn get(db: impl PgExecutor<'_>, id: AppId) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as::<_, AppRow>("SELECT id, name, created_at FROM apps WHERE id = $1")
        .bind(id.0)
        .fetch_optional(db)
        .await
        .map(|r| r.map(App::from))
}

/// Deletes an app and (by cascade) everything it owns; true when a row went.
pub async fn delete(db: impl PgExecutor<'_>, id: AppId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(id.0)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}
