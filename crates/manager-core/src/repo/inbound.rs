//! SQL for inbound email: the email trigger an endpoint names, and the
//! delivery of one email (dedupe record and outbox row in one transaction).

use crate::repo::triggers::SealedInbound;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// An email trigger as its inbound endpoint needs it.
pub struct EmailTarget {
    pub app_id: Uuid,
    /// Its sealed inbound secret, when it is signed.
    pub secret: Option<SealedInbound>,
}

/// The email trigger `id`, if there is one.
pub async fn email_trigger(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<EmailTarget>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT app_id, inbound_key_id, inbound_nonce, inbound_ciphertext FROM triggers \
         WHERE id = $1 AND kind = 'email'",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        let key_id: Option<String> = row.try_get("inbound_key_id")?;
        let secret = match key_id {
            Some(key_id) => Some(SealedInbound {
                key_id,
                nonce: row.try_get("inbound_nonce")?,
                ciphertext: row.try_get("inbound_ciphertext")?,
            }),
            None => None,
        };
        Ok(EmailTarget {
            app_id: row.try_get("app_id")?,
            secret,
        })
    })
    .transpose()
}

/// What became of one delivered email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Enqueued as this outbox event.
    Accepted(i64),
    /// The same email (by `dedupe_key`) was accepted within 24 hours as this event.
    Duplicate(i64),
    /// The trigger is gone.
    NoTrigger,
}

/// Enqueues `payload` for email trigger `trigger_id` unless an email with
/// `dedupe_key` was accepted for it within 24 hours. The dedupe record and
/// the outbox row commit together; of two copies arriving at once, the
/// second waits for the first's record and answers it. The dispatchers are
/// not notified here (see `OutboxNotifier`).
pub async fn deliver(
    pool: &PgPool,
    trigger_id: Uuid,
    dedupe_key: Option<&str>,
    payload: &serde_json::Value,
) -> Result<Delivery, sqlx::Error> {
    let earlier = |key: &str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT event_id FROM inbound_deliveries WHERE trigger_id = $1 AND dedupe_key = $2 \
             AND created_at > now() - interval '24 hours'",
        )
        .bind(trigger_id)
        .bind(key.to_owned())
        .fetch_optional(pool)
    };
    // No NOTIFY here: the caller pokes an `OutboxNotifier` after the commit.
    const ENQUEUE: &str =
        "INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, \
             backoff, base_ms, trigger_depth, origin_principal) \
         SELECT app_id, id, script_id, 'email', $2, max_attempts, backoff, base_ms, 1, created_by \
         FROM triggers WHERE id = $1 AND kind = 'email' \
         RETURNING id";
    let Some(key) = dedupe_key else {
        // Nothing to deduplicate by: one statement, one commit.
        let queued: Option<i64> = sqlx::query_scalar(ENQUEUE)
            .bind(trigger_id)
            .bind(sqlx::types::Json(payload))
            .fetch_optional(pool)
            .await?;
        return Ok(queued.map_or(Delivery::NoTrigger, Delivery::Accepted));
    };
    if let Some(event_id) = earlier(key).await? {
        return Ok(Delivery::Duplicate(event_id));
    }
    let mut tx = pool.begin().await?;
    let Some(event_id): Option<i64> = sqlx::query_scalar(ENQUEUE)
        .bind(trigger_id)
        .bind(sqlx::types::Json(payload))
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(Delivery::NoTrigger);
    };
    {
        let recorded: Option<i64> = sqlx::query_scalar(
            "INSERT INTO inbound_deliveries AS d (trigger_id, dedupe_key, event_id) VALUES ($1, $2, $3) \
             ON CONFLICT (trigger_id, dedupe_key) DO UPDATE \
                 SET event_id = EXCLUDED.event_id, created_at = now() \
                 WHERE d.created_at <= now() - interval '24 hours' \
             RETURNING event_id",
        )
        .bind(trigger_id)
        .bind(key)
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?;
        if recorded.is_none() {
            // Another copy committed first: drop this one's event.
            tx.rollback().await?;
            return Ok(match earlier(key).await? {
                Some(first) => Delivery::Duplicate(first),
                None => Delivery::NoTrigger,
            });
        }
    }
    tx.commit().await?;
    Ok(Delivery::Accepted(event_id))
}

/// Forgets deliveries older than 24 hours.
pub async fn forget_old_deliveries(db: impl sqlx::PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM inbound_deliveries WHERE created_at < now() - interval '24 hours'",
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The sealed inbound secret of `app`: `Ok(None)` when the app has none,
/// `Err` on a database failure; the outer `Option` is whether the app exists.
pub async fn app_secret(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
) -> Result<Option<Option<SealedInbound>>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.key_id, s.nonce, s.ciphertext FROM apps a \
         LEFT JOIN app_inbound_secrets s ON s.app_id = a.id WHERE a.id = $1",
    )
    .bind(app)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        let key_id: Option<String> = row.try_get("key_id")?;
        Ok(match key_id {
            Some(key_id) => Some(SealedInbound {
                key_id,
                nonce: row.try_get("nonce")?,
                ciphertext: row.try_get("ciphertext")?,
            }),
            None => None,
        })
    })
    .transpose()
}

/// Stores (or with `None`, removes) the app's sealed inbound secret.
pub async fn set_app_secret(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
    sealed: Option<&picloud_shared::crypto::Sealed>,
) -> Result<(), sqlx::Error> {
    match sealed {
        Some(sealed) => {
            sqlx::query(
                "INSERT INTO app_inbound_secrets (app_id, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (app_id) DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, \
                     ciphertext = EXCLUDED.ciphertext, updated_at = now()",
            )
            .bind(app)
            .bind(sealed.key_id.to_hex())
            .bind(sealed.nonce.to_vec())
            .bind(sealed.ciphertext.clone())
            .execute(db)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM app_inbound_secrets WHERE app_id = $1")
                .bind(app)
                .execute(db)
                .await?;
        }
    }
    Ok(())
}

/// The app's email triggers: `(id, recipient_filter, signed)`.
pub async fn app_email_triggers(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
) -> Result<Vec<(Uuid, Option<String>, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, config->>'recipient_filter', inbound_ciphertext IS NOT NULL FROM triggers \
         WHERE app_id = $1 AND kind = 'email' ORDER BY created_at, id",
    )
    .bind(app)
    .fetch_all(db)
    .await
}
