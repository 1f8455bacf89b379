//! SQL for the `dead_letters` table's admin operations (writing and fanning
//! out dead letters is in `outbox`, beside the dispatcher's other statements).

use chrono::{DateTime, Utc};
use picloud_shared::{domain::DeadLetterInfo, ids::AppId};
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

const COLUMNS: &str =
    "id, app_id, trigger_id, script_id, source_kind, payload, attempts, last_error, \
                       first_attempt_at, last_attempt_at, created_at";

fn from_row(row: &sqlx::postgres::PgRow) -> Result<DeadLetterInfo, sqlx::Error> {
    let attempts: i32 = row.try_get("attempts")?;
    let first: DateTime<Utc> = row.try_get("first_attempt_at")?;
    Ok(DeadLetterInfo {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        trigger_id: row.try_get("trigger_id")?,
        script_id: row.try_get("script_id")?,
        source: row.try_get("source_kind")?,
        event: row
            .try_get::<sqlx::types::Json<serde_json::Value>, _>("payload")?
            .0,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error: row.try_get("last_error")?,
        first_attempt_at: first,
        last_attempt_at: row.try_get("last_attempt_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The app's dead letters, newest first, after the cursor (`created_at`, `id`)
/// of the last one of the previous page (either part may be absent): at most
/// `limit`, and no more than `max_bytes` of events (always at least one).
pub async fn list(
    db: impl PgExecutor<'_>,
    app: AppId,
    limit: i64,
    before: Option<Uuid>,
    before_at: Option<DateTime<Utc>>,
    max_bytes: i64,
) -> Result<Vec<DeadLetterInfo>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM ( \
             SELECT {COLUMNS}, sum(octet_length(payload::text)) OVER ( \
                 ORDER BY created_at DESC, id DESC) - octet_length(payload::text) AS bytes_before \
             FROM ( \
                 SELECT {COLUMNS} FROM dead_letters WHERE app_id = $1 \
                 AND (($2::uuid IS NULL AND $4::timestamptz IS NULL) OR (created_at, id) < ( \
                     coalesce($4, (SELECT created_at FROM dead_letters WHERE id = $2 AND app_id = $1)), \
                     coalesce($2, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))) \
                 ORDER BY created_at DESC, id DESC LIMIT $3 \
             ) page \
         ) sized WHERE bytes_before < $5 \
         ORDER BY created_at DESC, id DESC"
    ))
    .bind(app.0)
    .bind(before)
    .bind(limit)
    .bind(before_at)
    .bind(max_bytes)
    .fetch_all(db)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// One dead letter of the app.
pub async fn get(
    db: impl PgExecutor<'_>,
    app: AppId,
    id: Uuid,
) -> Result<Option<DeadLetterInfo>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE app_id = $1 AND id = $2"
    ))
    .bind(app.0)
    .bind(id)
    .fetch_optional(db)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// Deletes a dead letter; true when one was deleted.
pub async fn delete(db: impl PgExecutor<'_>, app: AppId, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM dead_letters WHERE app_id = $1 AND id = $2")
        .bind(app.0)
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The original is enqueued again as this outbox event.
    Queued(i64),
    /// No such dead letter.
    NotFound,
    /// The dead letter's trigger was deleted.
    TriggerGone,
    /// An earlier replay's event is still in the outbox.
    Pending(i64),
}

/// Enqueues a dead letter's original event for its trigger with fresh
/// attempts, unless an earlier replay of it is still pending. The dead
/// letter's row is locked first, so concurrent replays queue behind each
/// other and each sees the event of the one before.
pub async fn replay(pool: &PgPool, app: AppId, id: Uuid) -> Result<Replay, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(previous): Option<Option<i64>> = sqlx::query_scalar(
        "SELECT replay_outbox_id FROM dead_letters WHERE id = $1 AND app_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(app.0)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(Replay::NotFound);
    };
    // A statement of its own: under READ COMMITTED it sees what the replay
    // that held the lock before us committed.
    if let Some(outbox_id) = previous {
        let pending: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1)")
                .bind(outbox_id)
                .fetch_one(&mut *tx)
                .await?;
        if pending {
            return Ok(Replay::Pending(outbox_id));
        }
    }
    let queued: Option<i64> = sqlx::query_scalar(
        "WITH queued AS ( \
             INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, \
                 backoff, base_ms, trigger_depth, origin_principal) \
             SELECT dl.app_id, t.id, t.script_id, dl.source_kind, dl.payload, t.max_attempts, \
                 t.backoff, t.base_ms, dl.trigger_depth, dl.origin_principal \
             FROM dead_letters dl JOIN triggers t ON t.id = dl.trigger_id AND t.app_id = dl.app_id \
             WHERE dl.id = $1 \
             RETURNING id \
         ), marked AS ( \
             UPDATE dead_letters SET replay_outbox_id = (SELECT id FROM queued) \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM queued) RETURNING 1 \
         ) \
         SELECT q.id FROM queued q CROSS JOIN LATERAL (SELECT pg_notify('picloud_outbox', '')) AS n",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match queued {
        Some(outbox_id) => Replay::Queued(outbox_id),
        None => Replay::TriggerGone,
    })
}
