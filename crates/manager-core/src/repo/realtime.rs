//! SQL for realtime: the apps' signing keys (`app_secrets`), and messages
//! too large for a NOTIFY payload (`realtime_messages`).

use picloud_shared::crypto::Sealed;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The NOTIFY channel realtime messages travel on.
pub const CHANNEL: &str = "picloud_realtime";

/// A sealed value as stored: key id (hex), nonce, ciphertext.
#[derive(Debug, Clone)]
pub struct StoredSeal {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// An app's row of `app_secrets`.
#[derive(Debug, Clone, Default)]
pub struct SigningKeyRow {
    /// An older install's plaintext key.
    pub plaintext: Option<Vec<u8>>,
    pub sealed: Option<StoredSeal>,
    /// The previous key, while its grace period lasts.
    pub previous: Option<StoredSeal>,
    /// When the previous key's grace period ends (Unix seconds).
    pub previous_until: Option<i64>,
}

fn seal_of(row: &sqlx::postgres::PgRow, prefix: &str) -> Result<Option<StoredSeal>, sqlx::Error> {
    let key_id: Option<String> = row.try_get(format!("{prefix}_key_id").as_str())?;
    let nonce: Option<Vec<u8>> = row.try_get(format!("{prefix}_nonce").as_str())?;
    let ciphertext: Option<Vec<u8>> = row.try_get(format!("{prefix}_ciphertext").as_str())?;
    Ok(match (key_id, nonce, ciphertext) {
        (Some(key_id), Some(nonce), Some(ciphertext)) => Some(StoredSeal {
            key_id,
            nonce,
            ciphertext,
        }),
        _ => None,
    })
}

/// The app's signing key row, if it has one; with `lock`, locked until the
/// transaction ends.
pub async fn signing_key(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
    lock: bool,
) -> Result<Option<SigningKeyRow>, sqlx::Error> {
    let locking = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT realtime_key, realtime_key_id, realtime_nonce, realtime_ciphertext, \
             CASE WHEN previous_until > now() THEN previous_key_id END AS previous_key_id, \
             CASE WHEN previous_until > now() THEN previous_nonce END AS previous_nonce, \
             CASE WHEN previous_until > now() THEN previous_ciphertext END AS previous_ciphertext, \
             CASE WHEN previous_until > now() \
                 THEN floor(extract(epoch FROM previous_until))::int8 END AS previous_until \
         FROM app_secrets WHERE app_id = $1{locking}"
    ))
    .bind(app)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        Ok(SigningKeyRow {
            plaintext: row.try_get("realtime_key")?,
            sealed: seal_of(&row, "realtime")?,
            previous: seal_of(&row, "previous")?,
            previous_until: row.try_get("previous_until")?,
        })
    })
    .transpose()
}

/// Stores `sealed` as the app's signing key unless it has one (sealed or
/// plaintext) already, or the app does not exist: of two first uses at once,
/// one key wins, and both read it afterwards.
pub async fn create_signing_key(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
    sealed: &Sealed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO app_secrets AS s (app_id, realtime_key_id, realtime_nonce, realtime_ciphertext) \
         SELECT id, $2, $3, $4 FROM apps WHERE id = $1 \
         ON CONFLICT (app_id) DO UPDATE SET realtime_key_id = EXCLUDED.realtime_key_id, \
             realtime_nonce = EXCLUDED.realtime_nonce, \
             realtime_ciphertext = EXCLUDED.realtime_ciphertext, updated_at = now() \
         WHERE s.realtime_ciphertext IS NULL AND s.realtime_key IS NULL",
    )
    .bind(app)
    .bind(sealed.key_id.to_hex())
    .bind(sealed.nonce.to_vec())
    .bind(sealed.ciphertext.clone())
    .execute(db)
    .await?;
    Ok(())
}

/// Makes `new` the app's signing key and `previous` (the current one) valid
/// until `grace_secs` from now; the plaintext column is cleared.
pub async fn rotate_signing_key(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
    new: &Sealed,
    previous: &Sealed,
    grace_secs: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE app_secrets SET realtime_key = NULL, \
             realtime_key_id = $2, realtime_nonce = $3, realtime_ciphertext = $4, \
             previous_key_id = $5, previous_nonce = $6, previous_ciphertext = $7, \
             previous_until = now() + $8 * interval '1 second', updated_at = now() \
         WHERE app_id = $1",
    )
    .bind(app)
    .bind(new.key_id.to_hex())
    .bind(new.nonce.to_vec())
    .bind(new.ciphertext.clone())
    .bind(previous.key_id.to_hex())
    .bind(previous.nonce.to_vec())
    .bind(previous.ciphertext.clone())
    .bind(grace_secs)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Up to `limit` apps whose row holds only a plaintext key: `(app_id, key)`,
/// locked (skipping rows another process is sealing) in `tx`.
pub async fn plaintext_only(
    tx: &mut sqlx::PgConnection,
    limit: i64,
) -> Result<Vec<(Uuid, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT app_id, realtime_key FROM app_secrets \
         WHERE realtime_key IS NOT NULL AND realtime_ciphertext IS NULL \
         ORDER BY app_id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Stores the sealed form of a plaintext-only row and clears the plaintext
/// (the column stays for a later migration to drop).
pub async fn seal_plaintext(
    tx: &mut sqlx::PgConnection,
    app: Uuid,
    sealed: &Sealed,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE app_secrets SET realtime_key = NULL, realtime_key_id = $2, realtime_nonce = $3, \
             realtime_ciphertext = $4, updated_at = now() \
         WHERE app_id = $1 AND realtime_ciphertext IS NULL",
    )
    .bind(app)
    .bind(sealed.key_id.to_hex())
    .bind(sealed.nonce.to_vec())
    .bind(sealed.ciphertext.clone())
    .execute(tx)
    .await?;
    Ok(())
}

/// Sends a realtime notification; `payload` must fit NOTIFY's limit.
pub async fn notify(db: impl sqlx::PgExecutor<'_>, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(db)
        .await?;
    Ok(())
}

/// Tells every process that `app`'s signing keys changed (they re-read
/// them, and end streams whose key no longer verifies).
pub async fn notify_keys_changed(
    db: impl sqlx::PgExecutor<'_>,
    app: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, json_build_object('k', 'keys', 'a', $2)::text)")
        .bind(CHANNEL)
        .bind(app)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a message too large for a notification and notifies its row id
/// (`{"a": app, "t": topic, "i": id, "r": row}`), in one statement.
pub async fn notify_stored(
    pool: &PgPool,
    app: Uuid,
    topic: &str,
    id: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH m AS (INSERT INTO realtime_messages (app_id, topic, message) VALUES ($1, $2, $3) \
             RETURNING id) \
         SELECT pg_notify($5, json_build_object('a', $1, 't', $2, 'i', $4, 'r', m.id)::text) FROM m",
    )
    .bind(app)
    .bind(topic)
    .bind(message)
    .bind(id)
    .bind(CHANNEL)
    .execute(pool)
    .await?;
    Ok(())
}

/// A stored message's text, if it is still kept and is `app`'s on `topic`.
pub async fn stored_message(
    db: impl sqlx::PgExecutor<'_>,
    row: i64,
    app: Uuid,
    topic: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT message FROM realtime_messages WHERE id = $1 AND app_id = $2 AND topic = $3",
    )
    .bind(row)
    .bind(app)
    .bind(topic)
    .fetch_optional(db)
    .await
}

/// Forgets stored messages older than a minute.
pub async fn forget_old_messages(pool: &PgPool) -> Result<u64, sqlx::Error> {
    super::delete_unlocked(
        pool,
        "realtime_messages",
        "created_at < now() - interval '1 minute'",
    )
    .await
}
