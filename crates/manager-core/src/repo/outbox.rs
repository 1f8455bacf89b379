//! SQL for the `outbox` table: what writers enqueue with their change.

use std::sync::LazyLock;
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
    /// The chain a handler's change belongs to (its root event's id); `None`
    /// for a change with no handler behind it, whose events start chains.
    pub chain: Option<i64>,
    /// How many events the handlers of one chain may enqueue in all.
    pub max_chain_events: i64,
    /// True when the app has too many events waiting: a change that would
    /// enqueue events is refused whole (a change without events is made).
    pub refuse_events: bool,
}

/// What a change did to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Enqueued {
    /// Triggers that matched the change.
    pub matched: i64,
    /// Events enqueued for them (0 when the chain was too deep or over its budget).
    pub queued: i64,
    /// True when the events were dropped because their chain spent its budget.
    pub over_budget: bool,
    /// True when the change was not made: it would have enqueued events for
    /// an app with too many waiting.
    pub refused: bool,
}

/// The CTE that decides whether a change is refused: it would enqueue events
/// (the CTE `matching` names is not empty and the chain is not too deep) for
/// an app over its pending-events quota (`refuse`). The change's own CTE must
/// hold `WHERE NOT (SELECT refused FROM quota)`.
pub(crate) fn quota_cte(refuse: &str, enqueue: &str, matching: &str) -> String {
    format!(
        "quota AS (SELECT {refuse}::boolean AND {enqueue}::boolean AND EXISTS (SELECT 1 FROM {matching}) AS refused)"
    )
}

/// The CTEs every writer of events shares, after its `matching` and `quota`
/// CTEs (the triggers the change fires; whether it is refused): `budget`
/// charges a handler's events to its chain, and `queued` inserts them unless
/// the chain is too deep (`enqueue` false), past its budget, or the change is
/// refused. `select` is the `SELECT` list of the outbox insert (its FROM
/// clause included) and `chain`, `enqueue`, `max_events` the statement's
/// parameters. The statement's result starts with [`enqueued_columns`].
pub(crate) fn enqueue_ctes(select: &str, chain: &str, enqueue: &str, max_events: &str) -> String {
    format!(
        "budget AS ( \
             INSERT INTO trigger_chains AS c (chain_id, events) \
             SELECT {chain}::bigint, count(*) FROM matching \
             HAVING {chain}::bigint IS NOT NULL AND {enqueue} AND count(*) > 0 \
                 AND NOT (SELECT refused FROM quota) \
             ON CONFLICT (chain_id) DO UPDATE SET events = c.events + EXCLUDED.events, \
                 last_event_at = now() \
             RETURNING events \
         ), queued AS ( \
             INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, \
                 backoff, base_ms, trigger_depth, origin_principal, chain_id) \
             {select} \
             WHERE {enqueue} AND coalesce((SELECT events FROM budget), 0) <= {max_events} \
                 AND NOT (SELECT refused FROM quota) \
             RETURNING 1 \
         )"
    )
}

/// The result columns of a statement built with [`enqueue_ctes`] (and it wakes the dispatchers).
pub(crate) fn enqueued_columns(max_events: &str) -> String {
    format!(
        "(SELECT count(*) FROM matching) AS matched, (SELECT count(*) FROM queued) AS queued, \
         EXISTS (SELECT 1 FROM budget WHERE events > {max_events}) AS over_budget, \
         (SELECT refused FROM quota) AS refused, \
         (SELECT count(*) FROM (SELECT pg_notify('picloud_outbox', '') FROM queued LIMIT 1) AS n) AS _notified"
    )
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
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH matching AS ( \
                 SELECT id, script_id, max_attempts, backoff, base_ms FROM triggers \
                 WHERE app_id = $1 AND kind = 'pubsub' AND ( \
                     config->>'topic' = $2 \
                     OR (right(config->>'topic', 2) = '.*' \
                         AND starts_with($2, left(config->>'topic', -1)) \
                         AND length($2) > length(config->>'topic') - 1)) \
             ), {}, {} \
             SELECT {}",
            quota_cte("$9", "$6", "matching"),
            enqueue_ctes(
                "SELECT $1, m.id, m.script_id, 'pubsub', $3, m.max_attempts, m.backoff, m.base_ms, \
                     $4, $5, $7 FROM matching m",
                "$7",
                "$6",
                "$8"
            ),
            enqueued_columns("$8")
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(app.0)
        .bind(topic)
        .bind(sqlx::types::Json(payload))
        .bind(origin.depth)
        .bind(origin.principal)
        .bind(origin.enqueue)
        .bind(origin.chain)
        .bind(origin.max_chain_events)
        .bind(origin.refuse_events)
        .fetch_one(db)
        .await
}

/// An event a dispatcher claimed, with what it needs to run and to fail it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedEvent {
    pub id: i64,
    pub app_id: Uuid,
    pub trigger_id: Uuid,
    pub script_id: Uuid,
    pub script_name: String,
    pub script_version: i64,
    pub source_kind: String,
    pub payload: sqlx::types::Json<serde_json::Value>,
    /// Runs made before this claim (a run lost with its process counts as one).
    pub attempts: i32,
    pub max_attempts: i32,
    pub backoff: String,
    pub base_ms: i64,
    pub trigger_depth: i32,
    pub origin_principal: Option<Uuid>,
    /// The chain the event belongs to (its root event's id).
    pub chain_id: i64,
    pub first_attempt_at: chrono::DateTime<chrono::Utc>,
    /// Why the previous run failed, if one did.
    pub last_error: Option<String>,
    /// How long the event had been due when it was claimed, in seconds.
    pub waited_secs: f64,
}

/// Claims up to `limit` due events for `owner`, leasing them for `lease_ms`,
/// passing over the apps in `skip_apps` (those the caller holds enough of).
/// A claim moves `next_attempt_at` to the lease's end, so the row of a process
/// that dies becomes due again when its lease runs out (a rescue); the lost run
/// counts as an attempt if its handler had started ([`complete_and_mark_started`]), or from
/// the fifth rescue on (an event that kills its process before the mark is
/// written must not loop forever).
pub async fn claim(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    lease_ms: i64,
    limit: i64,
    skip_apps: &[Uuid],
) -> Result<Vec<ClaimedEvent>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS ( \
             SELECT id, next_attempt_at, lease_owner IS NOT NULL AS lost, \
                 lease_owner IS NOT NULL AND (started_at IS NOT NULL OR rescues >= 4) AS charged \
             FROM outbox \
             WHERE next_attempt_at <= now() AND NOT (app_id = ANY($4)) \
             ORDER BY next_attempt_at LIMIT $3 \
             FOR UPDATE SKIP LOCKED \
         ) \
         UPDATE outbox o SET lease_owner = $1, \
             lease_until = now() + $2 * interval '1 millisecond', \
             next_attempt_at = now() + $2 * interval '1 millisecond', \
             first_attempt_at = coalesce(o.first_attempt_at, now()), \
             attempts = o.attempts + CASE WHEN due.charged THEN 1 ELSE 0 END, \
             rescues = o.rescues + CASE WHEN due.lost THEN 1 ELSE 0 END, \
             started_at = NULL, \
             last_error = CASE WHEN due.charged \
                 THEN 'the process running this event stopped before it finished (its lease expired)' \
                 ELSE o.last_error END \
         FROM due, scripts s \
         WHERE o.id = due.id AND s.id = o.script_id \
         RETURNING o.id, o.app_id, o.trigger_id, o.script_id, s.name AS script_name, \
             s.version AS script_version, o.source_kind, o.payload, o.attempts, o.max_attempts, \
             o.backoff, o.base_ms, o.trigger_depth, o.origin_principal, coalesce(o.chain_id, o.id) AS chain_id, \
             o.first_attempt_at, o.last_error, extract(epoch FROM now() - due.next_attempt_at)::float8 AS waited_secs",
    )
    .bind(owner)
    .bind(lease_ms)
    .bind(limit)
    .bind(skip_apps)
    .fetch_all(db)
    .await
}

/// In one statement (one commit): deletes the handled events `completed` and
/// marks the handlers of `started` as running, for the events `owner` still holds.
pub async fn complete_and_mark_started(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    completed: &[i64],
    started: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH done AS (DELETE FROM outbox WHERE id = ANY($1) AND lease_owner = $3 RETURNING 1), \
              marked AS (UPDATE outbox SET started_at = now() WHERE id = ANY($2) AND lease_owner = $3 RETURNING 1) \
         SELECT (SELECT count(*) FROM done) + (SELECT count(*) FROM marked)",
    )
    .bind(completed)
    .bind(started)
    .bind(owner)
    .execute(db)
    .await?;
    Ok(())
}

/// A failed run to schedule again.
#[derive(Debug, Clone)]
pub struct Retry {
    pub id: i64,
    pub next_attempt_at: chrono::DateTime<chrono::Utc>,
    pub error: String,
}

/// Counts one more run for each of `retries` that `owner` still holds, keeps
/// its error, schedules it and releases its lease — one statement for all.
pub async fn retry(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    retries: &[Retry],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<i64> = retries.iter().map(|r| r.id).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> =
        retries.iter().map(|r| r.next_attempt_at).collect();
    let errors: Vec<&str> = retries.iter().map(|r| r.error.as_str()).collect();
    let done = sqlx::query(
        "UPDATE outbox o SET attempts = o.attempts + 1, next_attempt_at = r.next_at, \
             last_error = r.error, lease_owner = NULL, lease_until = NULL, started_at = NULL \
         FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS r(id, next_at, error) \
         WHERE o.id = r.id AND o.lease_owner = $4",
    )
    .bind(&ids)
    .bind(&at)
    .bind(&errors)
    .bind(owner)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Extends the leases `owner` holds on `ids` by `lease_ms` from now.
pub async fn renew(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    ids: &[i64],
    lease_ms: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET lease_until = now() + $3 * interval '1 millisecond', \
             next_attempt_at = now() + $3 * interval '1 millisecond' \
         WHERE id = ANY($1) AND lease_owner = $2",
    )
    .bind(ids)
    .bind(owner)
    .bind(lease_ms)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Gives back events `owner` claimed but did not run: due at once, no attempt counted.
pub async fn release(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    ids: &[i64],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, started_at = NULL, \
             next_attempt_at = now() \
         WHERE id = ANY($1) AND lease_owner = $2",
    )
    .bind(ids)
    .bind(owner)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// An exhausted event to move to `dead_letters`.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub id: i64,
    /// Runs made.
    pub attempts: i32,
    pub error: String,
}

/// Moves the exhausted events `owner` still holds to `dead_letters`, all in
/// one statement (the outbox rows go, the dead letters are written, in one
/// commit). Returns `(outbox id, dead letter id)` of each moved; an event
/// missing from the answer was lost to another process.
pub async fn dead_letter(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    exhausted: &[Exhausted],
) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    let ids: Vec<i64> = exhausted.iter().map(|e| e.id).collect();
    let letters: Vec<Uuid> = exhausted.iter().map(|_| Uuid::new_v4()).collect();
    let attempts: Vec<i32> = exhausted.iter().map(|e| e.attempts).collect();
    let errors: Vec<&str> = exhausted.iter().map(|e| e.error.as_str()).collect();
    sqlx::query_as(
        "WITH input AS ( \
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::int[], $4::text[]) \
                 AS i(id, letter, attempts, error) \
         ), gone AS ( \
             DELETE FROM outbox o USING input i WHERE o.id = i.id AND o.lease_owner = $5 \
             RETURNING o.id, i.letter, i.attempts, i.error, o.app_id, o.trigger_id, o.script_id, \
                 o.source_kind, o.payload, o.trigger_depth, o.origin_principal, o.first_attempt_at, \
                 coalesce(o.chain_id, o.id) AS chain_id \
         ), written AS ( \
             INSERT INTO dead_letters (id, app_id, trigger_id, script_id, source_kind, payload, attempts, \
                 last_error, trigger_depth, origin_principal, first_attempt_at, last_attempt_at, \
                 fanned_out, chain_id) \
             SELECT letter, app_id, trigger_id, script_id, source_kind, payload, attempts, error, \
                 trigger_depth, origin_principal, coalesce(first_attempt_at, now()), now(), \
                 source_kind = 'dead_letter', chain_id \
             FROM gone RETURNING id \
         ) \
         SELECT g.id, g.letter FROM gone g JOIN written w ON w.id = g.letter",
    )
    .bind(&ids)
    .bind(&letters)
    .bind(&attempts)
    .bind(&errors)
    .bind(owner)
    .fetch_all(db)
    .await
}

/// Drops exhausted events of dead-letter handlers (never dead-lettered
/// again) that `owner` still holds; returns the ids dropped.
pub async fn discard(
    db: impl sqlx::PgExecutor<'_>,
    owner: Uuid,
    ids: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("DELETE FROM outbox WHERE id = ANY($1) AND lease_owner = $2 RETURNING id")
        .bind(ids)
        .bind(owner)
        .fetch_all(db)
        .await
}

/// A dead letter whose `dead_letter` triggers have not been given its event yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetterToFanOut {
    pub id: Uuid,
    pub app_id: Uuid,
    pub trigger_id: Option<Uuid>,
    pub script_id: Option<Uuid>,
    pub source_kind: String,
    pub payload: sqlx::types::Json<serde_json::Value>,
    pub attempts: i32,
    pub last_error: String,
    pub trigger_depth: i32,
    pub first_attempt_at: chrono::DateTime<chrono::Utc>,
    pub last_attempt_at: chrono::DateTime<chrono::Utc>,
}

/// Up to `limit` dead letters not fanned out yet (oldest first).
pub async fn dead_letters_to_fan_out(
    db: impl sqlx::PgExecutor<'_>,
    ids: Option<&[Uuid]>,
    limit: i64,
) -> Result<Vec<DeadLetterToFanOut>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, app_id, trigger_id, script_id, source_kind, payload, attempts, last_error, \
             trigger_depth, first_attempt_at, last_attempt_at \
         FROM dead_letters WHERE NOT fanned_out AND ($1::uuid[] IS NULL OR id = ANY($1)) \
         ORDER BY created_at LIMIT $2",
    )
    .bind(ids)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Enqueues `event` (a dead-letter event) for every `dead_letter` trigger of
/// the dead letter's app whose filters match it, at `origin.depth`, with the
/// registering key as origin, charged to the dead letter's chain, and marks
/// the dead letter fanned out — one statement, so it happens once. With
/// `origin.enqueue` false (too deep) it is marked without enqueuing.
pub async fn fan_out_dead_letter(
    db: impl sqlx::PgExecutor<'_>,
    dead_letter_id: Uuid,
    event: &serde_json::Value,
    origin: &EventOrigin,
) -> Result<Enqueued, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH dl AS ( \
                 SELECT id, app_id, trigger_id, script_id, source_kind, chain_id FROM dead_letters \
                 WHERE id = $1 AND NOT fanned_out FOR UPDATE \
             ), matching AS ( \
                 SELECT t.id, t.script_id, t.max_attempts, t.backoff, t.base_ms, t.created_by \
                 FROM triggers t JOIN dl ON t.app_id = dl.app_id \
                 WHERE t.kind = 'dead_letter' \
                   AND (t.config->>'source' IS NULL OR t.config->>'source' = dl.source_kind) \
                   AND (t.config->>'trigger_id' IS NULL OR t.config->>'trigger_id' = dl.trigger_id::text) \
                   AND (t.config->>'script_id' IS NULL OR t.config->>'script_id' = dl.script_id::text) \
             ), {}, {}, marked AS ( \
                 UPDATE dead_letters SET fanned_out = true WHERE id IN (SELECT id FROM dl) RETURNING 1 \
             ) \
             SELECT {}, (SELECT count(*) FROM marked) AS _marked",
            // A dead letter is stored already: its fan-out is never refused.
            quota_cte("false", "$4", "matching"),
            enqueue_ctes(
                "SELECT dl.app_id, m.id, m.script_id, 'dead_letter', $2, m.max_attempts, m.backoff, \
                     m.base_ms, $3, m.created_by, dl.chain_id FROM matching m CROSS JOIN dl",
                "(SELECT chain_id FROM dl)",
                "$4",
                "$5"
            ),
            enqueued_columns("$5")
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(dead_letter_id)
        .bind(sqlx::types::Json(event))
        .bind(origin.depth)
        .bind(origin.enqueue)
        .bind(origin.max_chain_events)
        .fetch_one(db)
        .await
}

/// Marks a dead letter fanned out without enqueuing anything (its event cannot be decoded).
pub async fn skip_fan_out(
    db: impl sqlx::PgExecutor<'_>,
    dead_letter_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dead_letters SET fanned_out = true WHERE id = $1")
        .bind(dead_letter_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Forgets the event counts of chains that enqueued nothing for `max_age`.
pub async fn forget_chains(
    pool: &sqlx::PgPool,
    max_age: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    // A number of milliseconds this process chose, not user input.
    let condition = format!(
        "last_event_at < now() - {} * interval '1 millisecond'",
        i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX)
    );
    super::delete_unlocked(pool, "trigger_chains", &condition).await
}

/// Events waiting per app (every app with at least one).
pub async fn pending_by_app(
    db: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT app_id, count(*) FROM outbox GROUP BY app_id")
        .fetch_all(db)
        .await
}

/// `{depth, in_flight, retrying, oldest_age_secs}` of an app's outbox.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct OutboxStats {
    pub depth: i64,
    pub in_flight: i64,
    pub retrying: i64,
    pub oldest_age_secs: f64,
}

/// The outbox of `app` (all apps when `None`), counted.
pub async fn stats(
    db: impl sqlx::PgExecutor<'_>,
    app: Option<Uuid>,
) -> Result<OutboxStats, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS depth, \
             count(*) FILTER (WHERE lease_owner IS NOT NULL AND lease_until > now()) AS in_flight, \
             count(*) FILTER (WHERE attempts > 0 AND lease_owner IS NULL) AS retrying, \
             coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_secs \
         FROM outbox WHERE $1::uuid IS NULL OR app_id = $1",
    )
    .bind(app)
    .fetch_one(db)
    .await
}

/// Vacuums the outbox, unless a vacuum of it is already running.
pub async fn vacuum(db: impl sqlx::PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("VACUUM (SKIP_LOCKED) outbox")
        .execute(db)
        .await?;
    Ok(())
}
