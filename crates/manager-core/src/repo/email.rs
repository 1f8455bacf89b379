//! SQL for outbound email: `email_policies`, `email_daily_sends`, `email_idempotency`.

use chrono::NaiveDate;
use picloud_shared::{
    email::{EmailPolicy, RecipientPolicy},
    ids::AppId,
};
use sqlx::PgExecutor;
use std::time::Duration;

/// A stored policy row.
#[derive(sqlx::FromRow)]
struct PolicyRow {
    recipients: Option<sqlx::types::Json<Vec<String>>>,
    daily_cap: Option<i32>,
}

/// The app's policy; the default (anyone, no cap) when it has none stored.
pub async fn policy(db: impl PgExecutor<'_>, app: AppId) -> Result<EmailPolicy, sqlx::Error> {
    let row: Option<PolicyRow> =
        sqlx::query_as("SELECT recipients, daily_cap FROM email_policies WHERE app_id = $1")
            .bind(app.0)
            .fetch_optional(db)
            .await?;
    Ok(match row {
        None => EmailPolicy::default(),
        Some(row) => EmailPolicy {
            recipients: match row.recipients {
                None => RecipientPolicy::Unrestricted,
                Some(list) => RecipientPolicy::AllowList(list.0),
            },
            daily_cap: row.daily_cap.and_then(|cap| u32::try_from(cap).ok()),
        },
    })
}

/// Stores the app's policy.
pub async fn put_policy(
    db: impl PgExecutor<'_>,
    app: AppId,
    policy: &EmailPolicy,
) -> Result<(), sqlx::Error> {
    let recipients = match &policy.recipients {
        RecipientPolicy::Unrestricted => None,
        RecipientPolicy::AllowList(list) => Some(sqlx::types::Json(list)),
    };
    sqlx::query(
        "INSERT INTO email_policies (app_id, recipients, daily_cap) VALUES ($1, $2, $3) \
         ON CONFLICT (app_id) DO UPDATE SET recipients = EXCLUDED.recipients, \
             daily_cap = EXCLUDED.daily_cap, updated_at = now()",
    )
    .bind(app.0)
    .bind(recipients)
    .bind(
        policy
            .daily_cap
            .map(|cap| i32::try_from(cap).unwrap_or(i32::MAX)),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Reserves one send of today (UTC) for the app if its sent and reserved
/// sends are below `cap`; the day reserved, or `None` when the cap is spent.
pub async fn reserve_send(
    db: impl PgExecutor<'_>,
    app: AppId,
    cap: i64,
) -> Result<Option<NaiveDate>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO email_daily_sends AS d (app_id, day, reserved) \
         SELECT $1, (now() AT TIME ZONE 'UTC')::date, 1 WHERE $2 > 0 \
         ON CONFLICT (app_id, day) DO UPDATE SET reserved = d.reserved + 1 \
         WHERE d.sent::bigint + d.reserved < $2 \
         RETURNING day",
    )
    .bind(app.0)
    .bind(cap)
    .fetch_optional(db)
    .await
}

/// Turns a reservation into a send (`sent`), or gives it back.
pub async fn settle_send(
    db: impl PgExecutor<'_>,
    app: AppId,
    day: NaiveDate,
    sent: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_daily_sends SET reserved = greatest(reserved - 1, 0), \
             sent = sent + CASE WHEN $3 THEN 1 ELSE 0 END \
         WHERE app_id = $1 AND day = $2",
    )
    .bind(app.0)
    .bind(day)
    .bind(sent)
    .execute(db)
    .await?;
    Ok(())
}

/// Successful sends of the app today (UTC).
pub async fn sent_today(db: impl PgExecutor<'_>, app: AppId) -> Result<i64, sqlx::Error> {
    let sent: Option<i32> = sqlx::query_scalar(
        "SELECT sent FROM email_daily_sends WHERE app_id = $1 AND day = (now() AT TIME ZONE 'UTC')::date",
    )
    .bind(app.0)
    .fetch_optional(db)
    .await?;
    Ok(sent.map_or(0, i64::from))
}

/// Where an idempotency key stands for a send that would use `message_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is this send's: go ahead.
    Claimed,
    /// A send with the key succeeded within 24 hours, with this id.
    Sent(String),
    /// Another send with the key is in progress.
    InProgress,
}

/// Claims `key` for a send with `message_id`: a new key, one older than 24
/// hours, or one whose unfinished send started more than `abandoned_after`
/// ago (its process died) is taken over.
pub async fn claim_key(
    db: impl PgExecutor<'_> + Copy,
    app: AppId,
    key: &str,
    message_id: &str,
    abandoned_after: Duration,
) -> Result<KeyClaim, sqlx::Error> {
    let claimed: Option<i32> = sqlx::query_scalar(
        "INSERT INTO email_idempotency AS k (app_id, key, message_id) VALUES ($1, $2, $3) \
         ON CONFLICT (app_id, key) DO UPDATE SET message_id = EXCLUDED.message_id, sent = false, \
             created_at = now() \
         WHERE k.created_at < now() - interval '24 hours' \
            OR (NOT k.sent AND k.created_at < now() - $4 * interval '1 millisecond') \
         RETURNING 1",
    )
    .bind(app.0)
    .bind(key)
    .bind(message_id)
    .bind(i64::try_from(abandoned_after.as_millis()).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await?;
    if claimed.is_some() {
        return Ok(KeyClaim::Claimed);
    }
    let existing: Option<(String, bool)> = sqlx::query_as(
        "SELECT message_id, sent FROM email_idempotency WHERE app_id = $1 AND key = $2",
    )
    .bind(app.0)
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(match existing {
        Some((id, true)) => KeyClaim::Sent(id),
        // Gone since (its send failed): the caller claims again.
        None => KeyClaim::InProgress,
        Some((_, false)) => KeyClaim::InProgress,
    })
}

/// Records the outcome of the send that claimed `key` with `message_id`:
/// kept as sent, or released for another try.
pub async fn settle_key(
    db: impl PgExecutor<'_>,
    app: AppId,
    key: &str,
    message_id: &str,
    sent: bool,
) -> Result<(), sqlx::Error> {
    let sql = if sent {
        "UPDATE email_idempotency SET sent = true WHERE app_id = $1 AND key = $2 AND message_id = $3"
    } else {
        "DELETE FROM email_idempotency WHERE app_id = $1 AND key = $2 AND message_id = $3 AND NOT sent"
    };
    sqlx::query(sql)
        .bind(app.0)
        .bind(key)
        .bind(message_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Forgets idempotency keys older than 24 hours.
pub async fn forget_old_keys(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    super::delete_unlocked(
        pool,
        "email_idempotency",
        "created_at < now() - interval '24 hours'",
    )
    .await
}
