//! SQL for inbound email: the email trigger an endpoint names, and the
//! delivery of emails (dedupe records and outbox rows in one transaction).

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

/// One email for one trigger, as [`deliver_batch`] takes it.
pub struct DeliveryItem {
    pub trigger_id: Uuid,
    /// Deduplicates deliveries to this trigger for 24 hours.
    pub dedupe_key: Option<String>,
    /// The event payload, JSON text.
    pub payload: String,
    /// The sealed secret the request was verified with, as [`sealed_bytes`]
    /// (`None`: unsigned); `check_secret: false` delivers whatever the
    /// trigger's secret now is.
    pub secret: Option<Vec<u8>>,
    pub check_secret: bool,
}

/// A sealed secret as [`deliver_batch`] compares it with the stored one.
pub fn sealed_bytes(sealed: &SealedInbound) -> Vec<u8> {
    [sealed.key_id.as_bytes(), &sealed.nonce, &sealed.ciphertext].concat()
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
    /// The trigger's secret changed since the request was verified: check it again.
    SecretChanged,
}

/// Enqueues each item's payload for its email trigger unless an email with
/// its `dedupe_key` was accepted for that trigger within 24 hours: one
/// statement and one commit for the whole batch, dedupe records and outbox
/// rows together. Of two copies committing at once (from two batches), the
/// second waits for the first's record and answers it. Two items of one
/// batch must not share a trigger and dedupe key (the caller splits them).
/// The dispatchers are not notified here (see `OutboxNotifier`).
pub async fn deliver_batch(
    pool: &PgPool,
    items: &[DeliveryItem],
) -> Result<Vec<Delivery>, sqlx::Error> {
    let mut trigger_ids = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut payloads = Vec::with_capacity(items.len());
    let mut nonces = Vec::with_capacity(items.len());
    let mut checks = Vec::with_capacity(items.len());
    for item in items {
        trigger_ids.push(item.trigger_id);
        keys.push(item.dedupe_key.as_deref());
        payloads.push(item.payload.as_str());
        nonces.push(item.secret.as_deref());
        checks.push(item.check_secret);
    }
    // The outbox ids are drawn first so that an event is only written for
    // an item whose dedupe record was (the duplicates' ids go unused).
    let rows: Vec<(i64, i64, bool, bool)> = sqlx::query_as(
        "WITH input AS ( \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bool[]) \
                 WITH ORDINALITY AS i(trigger_id, dedupe_key, payload, secret, check_secret, n) \
         ), found AS MATERIALIZED ( \
             SELECT i.n, i.dedupe_key, i.payload::jsonb AS payload, t.app_id, t.id AS trigger_id, \
                 t.script_id, t.max_attempts, t.backoff, t.base_ms, t.created_by, \
                 (NOT i.check_secret OR (convert_to(t.inbound_key_id, 'UTF8') || t.inbound_nonce \
                     || t.inbound_ciphertext) IS NOT DISTINCT FROM i.secret) AS current, \
                 nextval('outbox_id_seq') AS event_id \
             FROM input i JOIN triggers t ON t.id = i.trigger_id AND t.kind = 'email' \
         ), recorded AS ( \
             INSERT INTO inbound_deliveries AS d (trigger_id, dedupe_key, event_id) \
             SELECT trigger_id, dedupe_key, event_id FROM found WHERE current AND dedupe_key IS NOT NULL \
             ON CONFLICT (trigger_id, dedupe_key) DO UPDATE \
                 SET event_id = EXCLUDED.event_id, created_at = now() \
                 WHERE d.created_at <= now() - interval '24 hours' \
             RETURNING event_id \
         ), queued AS ( \
             INSERT INTO outbox (id, app_id, trigger_id, script_id, source_kind, payload, \
                 max_attempts, backoff, base_ms, trigger_depth, origin_principal) \
             OVERRIDING SYSTEM VALUE \
             SELECT event_id, app_id, trigger_id, script_id, 'email', payload, max_attempts, \
                 backoff, base_ms, 1, created_by \
             FROM found \
             WHERE current AND (dedupe_key IS NULL OR event_id IN (SELECT event_id FROM recorded)) \
             RETURNING id \
         ) \
         SELECT n, event_id, current, event_id IN (SELECT id FROM queued) FROM found",
    )
    .bind(&trigger_ids)
    .bind(&keys)
    .bind(&payloads)
    .bind(&nonces)
    .bind(&checks)
    .fetch_all(pool)
    .await?;
    let mut outcomes = vec![Delivery::NoTrigger; items.len()];
    let mut duplicates = Vec::new();
    for (n, event_id, current, queued) in rows {
        let Some(index) = usize::try_from(n).ok().and_then(|n| n.checked_sub(1)) else {
            continue;
        };
        outcomes[index] = if queued {
            Delivery::Accepted(event_id)
        } else if !current {
            Delivery::SecretChanged
        } else {
            duplicates.push(index);
            Delivery::NoTrigger
        };
    }
    if !duplicates.is_empty() {
        // Seen before (maybe committed after this statement's snapshot was
        // taken): the first delivery's event, read afresh.
        let first: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT d.trigger_id, d.dedupe_key, d.event_id FROM inbound_deliveries d \
             JOIN unnest($1::uuid[], $2::text[]) AS k(trigger_id, dedupe_key) \
                 ON d.trigger_id = k.trigger_id AND d.dedupe_key = k.dedupe_key \
             WHERE d.created_at > now() - interval '24 hours'",
        )
        .bind(
            duplicates
                .iter()
                .map(|&i| items[i].trigger_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            duplicates
                .iter()
                .map(|&i| items[i].dedupe_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await?;
        for index in duplicates {
            let item = &items[index];
            if let Some((_, _, event_id)) = first.iter().find(|(trigger, key, _)| {
                *trigger == item.trigger_id && Some(key.as_str()) == item.dedupe_key.as_deref()
            }) {
                outcomes[index] = Delivery::Duplicate(*event_id);
            }
        }
    }
    Ok(outcomes)
}

/// Forgets deliveries older than 24 hours.
pub async fn forget_old_deliveries(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    super::delete_unlocked(
        pool,
        "inbound_deliveries",
        "created_at < now() - interval '24 hours'",
    )
    .await
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
