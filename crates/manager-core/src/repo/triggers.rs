//! SQL for the `triggers` table.

use chrono::{DateTime, Utc};
use picloud_shared::{
    crypto::Sealed,
    ids::{AppId, ScriptId},
    triggers::{Backoff, RetryPolicy, TriggerKind},
};
use serde_json::Value;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

/// A trigger as stored (the inbound secret stays sealed; only whether it exists is read).
#[derive(Debug, Clone)]
pub struct TriggerRow {
    pub id: Uuid,
    pub app_id: AppId,
    pub script_id: ScriptId,
    pub kind: TriggerKind,
    pub config: Value,
    pub retry: RetryPolicy,
    pub created_by: Option<Uuid>,
    pub signed: bool,
    pub created_at: DateTime<Utc>,
}

/// What a new trigger row holds.
pub struct NewTrigger<'a> {
    pub id: Uuid,
    pub app_id: AppId,
    pub script_id: ScriptId,
    pub kind: TriggerKind,
    pub config: &'a Value,
    pub retry: RetryPolicy,
    pub created_by: Option<Uuid>,
    pub inbound_secret: Option<&'a Sealed>,
    pub cron_next_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, app_id, script_id, kind, config, max_attempts, backoff, base_ms, \
                       created_by, inbound_ciphertext IS NOT NULL AS signed, created_at";

fn from_row(row: &sqlx::postgres::PgRow) -> Result<TriggerRow, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let backoff: String = row.try_get("backoff")?;
    let corrupt =
        |what: &str| sqlx::Error::Decode(format!("triggers.{what} holds an unknown value").into());
    Ok(TriggerRow {
        id: row.try_get("id")?,
        app_id: AppId(row.try_get("app_id")?),
        script_id: ScriptId(row.try_get("script_id")?),
        kind: TriggerKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
        config: row.try_get::<sqlx::types::Json<Value>, _>("config")?.0,
        retry: RetryPolicy {
            max_attempts: u32::try_from(row.try_get::<i32, _>("max_attempts")?)
                .map_err(|_| corrupt("max_attempts"))?,
            backoff: Backoff::parse(&backoff).ok_or_else(|| corrupt("backoff"))?,
            base_ms: u64::try_from(row.try_get::<i64, _>("base_ms")?)
                .map_err(|_| corrupt("base_ms"))?,
        },
        created_by: row.try_get("created_by")?,
        signed: row.try_get("signed")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts a trigger.
pub async fn insert(
    db: impl PgExecutor<'_>,
    new: &NewTrigger<'_>,
) -> Result<TriggerRow, sqlx::Error> {
    let sql = format!(
        "INSERT INTO triggers (id, app_id, script_id, kind, config, max_attempts, backoff, base_ms, \
         created_by, inbound_key_id, inbound_nonce, inbound_ciphertext, cron_next_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(new.id)
        .bind(new.app_id.0)
        .bind(new.script_id.0)
        .bind(new.kind.as_str())
        .bind(sqlx::types::Json(new.config))
        .bind(new.retry.max_attempts as i32)
        .bind(new.retry.backoff.as_str())
        .bind(new.retry.base_ms as i64)
        .bind(new.created_by)
        .bind(new.inbound_secret.map(|s| s.key_id.to_hex()))
        .bind(new.inbound_secret.map(|s| s.nonce.to_vec()))
        .bind(new.inbound_secret.map(|s| s.ciphertext.clone()))
        .bind(new.cron_next_at)
        .fetch_one(db)
        .await?;
    from_row(&row)
}

/// Locks the app's row against concurrent trigger registrations (held until
/// the transaction ends); false when there is no such app.
pub async fn lock_app(db: impl PgExecutor<'_>, app: AppId) -> Result<bool, sqlx::Error> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM apps WHERE id = $1 FOR NO KEY UPDATE")
            .bind(app.0)
            .fetch_optional(db)
            .await?;
    Ok(found.is_some())
}

/// How many triggers the app has.
pub async fn count(db: impl PgExecutor<'_>, app: AppId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM triggers WHERE app_id = $1")
        .bind(app.0)
        .fetch_one(db)
        .await
}

/// True when `id` is a trigger of the app.
pub async fn exists(db: impl PgExecutor<'_>, app: AppId, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM triggers WHERE app_id = $1 AND id = $2)")
        .bind(app.0)
        .bind(id)
        .fetch_one(db)
        .await
}

/// The app's triggers, newest first.
pub async fn list(db: impl PgExecutor<'_>, app: AppId) -> Result<Vec<TriggerRow>, sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM triggers WHERE app_id = $1 ORDER BY created_at DESC, id");
    sqlx::query(&sql)
        .bind(app.0)
        .fetch_all(db)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// One trigger of the app.
pub async fn get(
    db: impl PgExecutor<'_>,
    app: AppId,
    id: Uuid,
) -> Result<Option<TriggerRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM triggers WHERE app_id = $1 AND id = $2");
    sqlx::query(&sql)
        .bind(app.0)
        .bind(id)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Deletes a trigger (its pending events go with it); true when one was deleted.
pub async fn delete(db: impl PgExecutor<'_>, app: AppId, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM triggers WHERE app_id = $1 AND id = $2")
        .bind(app.0)
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// An email trigger's sealed inbound secret, as stored.
#[derive(Clone)]
pub struct SealedInbound {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// The sealed inbound secret of email trigger `id`, if it is signed.
pub async fn inbound_secret(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<SealedInbound>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT inbound_key_id, inbound_nonce, inbound_ciphertext FROM triggers \
         WHERE id = $1 AND kind = 'email' AND inbound_ciphertext IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        Ok(SealedInbound {
            key_id: row.try_get("inbound_key_id")?,
            nonce: row.try_get("inbound_nonce")?,
            ciphertext: row.try_get("inbound_ciphertext")?,
        })
    })
    .transpose()
}

/// A cron trigger whose tick is due.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueCron {
    pub id: Uuid,
    pub schedule: String,
    pub due_at: DateTime<Utc>,
}

/// Locks up to `limit` cron triggers whose tick is due (skipping those another
/// process holds); the caller moves each forward with [`fire_cron`] in the same transaction.
pub async fn lock_due_cron(
    tx: &mut sqlx::PgConnection,
    limit: i64,
) -> Result<Vec<DueCron>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, config->>'schedule' AS schedule, cron_next_at AS due_at FROM triggers \
         WHERE kind = 'cron' AND cron_next_at <= now() ORDER BY cron_next_at LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Enqueues the cron event of a locked due trigger (`fired_at` its tick) and
/// moves its next tick to `next` (`None`: the schedule never fires again).
pub async fn fire_cron(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    event: &Value,
    next: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH moved AS ( \
             UPDATE triggers SET cron_next_at = $3 WHERE id = $1 \
             RETURNING id, app_id, script_id, max_attempts, backoff, base_ms, created_by \
         ) \
         INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, backoff, \
             base_ms, trigger_depth, origin_principal) \
         SELECT app_id, id, script_id, 'cron', $2, max_attempts, backoff, base_ms, 1, created_by FROM moved",
    )
    .bind(id)
    .bind(sqlx::types::Json(event))
    .bind(next)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// When the next cron tick of any trigger is due, if any is scheduled.
pub async fn next_cron_at(db: impl PgExecutor<'_>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(cron_next_at) FROM triggers WHERE kind = 'cron'")
        .fetch_one(db)
        .await
}
