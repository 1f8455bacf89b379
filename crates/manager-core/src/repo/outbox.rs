//! SQL for the `outbox` table: what writers enqueue with their change.

use uuid::Uuid;

/// Who caused a change, for the events it enqueues.
#[derive(Debug, Clone, Copy)]
pub struct EventOrigin {
    /// The depth of the enqueued events (the cause's depth + 1).
    pub depth: i32,
    /// The API key the chain started from.
    pub principal: Option<Uuid>,
    /// False when the chain is too deep: the change is made, its events are not enqueued.
    pub enqueue: bool,
}

/// What a change did to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Enqueued {
    /// Triggers that matched the change.
    pub matched: i64,
    /// Events enqueued for them (0 when the chain was too deep).
    pub queued: i64,
}

/// Enqueues `payload` (a pubsub event) for every `pubsub` trigger of `app`
/// whose topic matches `topic` exactly or as `prefix.*`.
pub async fn enqueue_pubsub(
    db: impl sqlx::PgExecutor<'_>,
    app: picloud_shared::ids::AppId,
    topic: &str,
    payload: &serde_json::Value,
    origin: &EventOrigin,
) -> Result<Enqueued, sqlx::Error> {
    sqlx::query_as(
        "WITH matching AS ( \
             SELECT id, script_id, max_attempts, backoff, base_ms FROM triggers \
             WHERE app_id = $1 AND kind = 'pubsub' AND ( \
                 config->>'topic' = $2 \
                 OR (right(config->>'topic', 2) = '.*' \
                     AND starts_with($2, left(config->>'topic', -1)) \
                     AND length($2) > length(config->>'topic') - 1)) \
         ), queued AS ( \
             INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, backoff, \
                                 base_ms, trigger_depth, origin_principal) \
             SELECT $1, m.id, m.script_id, 'pubsub', $3, m.max_attempts, m.backoff, m.base_ms, $4, $5 \
             FROM matching m WHERE $6 \
             RETURNING 1 \
         ) \
         SELECT (SELECT count(*) FROM matching) AS matched, (SELECT count(*) FROM queued) AS queued, \
                (SELECT count(*) FROM (SELECT pg_notify('picloud_outbox', '') FROM queued LIMIT 1) AS n) AS _notified",
    )
    .bind(app.0)
    .bind(topic)
    .bind(sqlx::types::Json(payload))
    .bind(origin.depth)
    .bind(origin.principal)
    .bind(origin.enqueue)
    .fetch_one(db)
    .await
}
