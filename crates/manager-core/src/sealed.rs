//! Every sealed column in the database, listed once.
//!
//! The start-up key check and `picloud keys rotate` both walk
//! [`SEALED_COLUMNS`], so a feature that seals something adds one entry here
//! and is covered by both. Rotation re-seals in batches, one transaction per
//! batch, selecting only rows not yet under the active key: it is idempotent,
//! and a crash half way loses nothing (the next run picks up the rest).

use picloud_shared::{
    crypto::{Aad, KeyId, Keyring, Sealed},
    ids::AppId,
};
use sqlx::PgPool;

/// One sealed value column set: the table, its key-id/nonce/ciphertext columns,
/// and how to rebuild a row's associated data from its identity columns.
pub struct SealedColumn {
    pub table: &'static str,
    pub key_id_column: &'static str,
    pub nonce_column: &'static str,
    pub ciphertext_column: &'static str,
    /// SQL expressions (cast to text) that identify a row, in the order `aad` expects.
    pub identity: &'static [&'static str],
    /// The associated data of a row, from its identity values.
    pub aad: for<'a> fn(&'a [String]) -> Option<Aad<'a>>,
}

fn secret_aad(ids: &[String]) -> Option<Aad<'_>> {
    match ids {
        [app_id, name] => Some(Aad::Secret {
            app_id: AppId(app_id.parse().ok()?),
            name,
        }),
        _ => None,
    }
}

fn inbound_aad(ids: &[String]) -> Option<Aad<'_>> {
    match ids {
        [trigger_id] => Some(Aad::Inbound {
            trigger_id: trigger_id.parse().ok()?,
        }),
        _ => None,
    }
}

fn inbound_app_aad(ids: &[String]) -> Option<Aad<'_>> {
    match ids {
        [app_id] => Some(Aad::InboundApp {
            app_id: AppId(app_id.parse().ok()?),
        }),
        _ => None,
    }
}

fn realtime_aad(ids: &[String]) -> Option<Aad<'_>> {
    match ids {
        [app_id] => Some(Aad::Realtime {
            app_id: AppId(app_id.parse().ok()?),
        }),
        _ => None,
    }
}

/// The one list of sealed columns.
pub static SEALED_COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        table: "secrets",
        key_id_column: "key_id",
        nonce_column: "nonce",
        ciphertext_column: "ciphertext",
        identity: &["app_id::text", "name"],
        aad: secret_aad,
    },
    // An email trigger's inbound secret (NULL when the trigger is unsigned).
    SealedColumn {
        table: "triggers",
        key_id_column: "inbound_key_id",
        nonce_column: "inbound_nonce",
        ciphertext_column: "inbound_ciphertext",
        identity: &["id::text"],
        aad: inbound_aad,
    },
    // An app's inbound secret (its per-app inbound endpoint).
    SealedColumn {
        table: "app_inbound_secrets",
        key_id_column: "key_id",
        nonce_column: "nonce",
        ciphertext_column: "ciphertext",
        identity: &["app_id::text"],
        aad: inbound_app_aad,
    },
    // An app's realtime signing key, and its previous one during the grace period.
    SealedColumn {
        table: "app_secrets",
        key_id_column: "realtime_key_id",
        nonce_column: "realtime_nonce",
        ciphertext_column: "realtime_ciphertext",
        identity: &["app_id::text"],
        aad: realtime_aad,
    },
    SealedColumn {
        table: "app_secrets",
        key_id_column: "previous_key_id",
        nonce_column: "previous_nonce",
        ciphertext_column: "previous_ciphertext",
        identity: &["app_id::text"],
        aad: realtime_aad,
    },
];

/// Why sealed data cannot be used with the configured keys.
#[derive(Debug, thiserror::Error)]
pub enum SealedDataError {
    /// Data sealed under a key the keyring lacks.
    #[error(
        "the database holds values sealed with key id {key_id} (table {table}), which is not configured; \
         set PICLOUD_SECRET_KEY to that key, or add it to PICLOUD_SECRET_KEYS_PREVIOUS"
    )]
    MissingKey { key_id: String, table: &'static str },
    /// A row could not be opened during rotation.
    #[error("a sealed value in table {table} (key id {key_id}) failed to open; rotation stopped, nothing was lost")]
    Unopenable { key_id: String, table: &'static str },
    /// The database failed.
    #[error("database error during a sealed-data walk: {0}")]
    Database(#[from] sqlx::Error),
}

/// Fails when any key id present in the database is not in `keyring`.
pub async fn check_keys(pool: &PgPool, keyring: &Keyring) -> Result<(), SealedDataError> {
    for column in SEALED_COLUMNS {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT {k} FROM {t} WHERE {k} IS NOT NULL",
            k = column.key_id_column,
            t = column.table
        ))
        .fetch_all(pool)
        .await?;
        for id in ids {
            let known = KeyId::from_hex(&id).is_some_and(|k| keyring.contains(k));
            if !known {
                return Err(SealedDataError::MissingKey {
                    key_id: id,
                    table: column.table,
                });
            }
        }
    }
    Ok(())
}

/// Counts from a rotation run, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// (table, rows re-sealed in this run, rows already under the active key).
    pub tables: Vec<(&'static str, u64, u64)>,
    /// True only when no sealed value remains under a key other than the active
    /// one; false when `max_batches` stopped the run first.
    pub complete: bool,
    /// Values still under another key when the run ended.
    pub remaining: u64,
}

#[derive(sqlx::FromRow)]
struct RotationRow {
    row_ref: String,
    ids: Vec<String>,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Re-seals every sealed value not yet under the active key, `batch_size`
/// rows per transaction. `max_batches` bounds the run (tests use it to stop
/// half way, as a crash would).
pub async fn rotate(
    pool: &PgPool,
    keyring: &Keyring,
    batch_size: i64,
    max_batches: Option<u64>,
) -> Result<RotationReport, SealedDataError> {
    let active = keyring.active_id().to_hex();
    let mut report = RotationReport {
        complete: true,
        ..Default::default()
    };
    let mut batches = 0u64;
    for column in SEALED_COLUMNS {
        // First every row nobody else holds (concurrent rotations share the work);
        // then, waiting for their locks, the rows other transactions held.
        let select = |lock: &str| {
            format!(
                "SELECT ctid::text AS row_ref, ARRAY[{ids}] AS ids, {k} AS key_id, {n} AS nonce, {c} AS ciphertext \
                 FROM {t} WHERE {k} <> $1 LIMIT $2 {lock}",
                ids = column.identity.join(", "),
                k = column.key_id_column,
                n = column.nonce_column,
                c = column.ciphertext_column,
                t = column.table
            )
        };
        let passes = [select("FOR UPDATE SKIP LOCKED"), select("FOR UPDATE")];
        let update = format!(
            "UPDATE {t} SET {k} = $1, {n} = $2, {c} = $3 WHERE ctid = $4::tid",
            k = column.key_id_column,
            n = column.nonce_column,
            c = column.ciphertext_column,
            t = column.table
        );
        let mut resealed = 0u64;
        for select in &passes {
            loop {
                if max_batches.is_some_and(|max| batches >= max) {
                    report.complete = false;
                    break;
                }
                let mut tx = pool.begin().await?;
                let rows: Vec<RotationRow> = sqlx::query_as(select)
                    .bind(&active)
                    .bind(batch_size)
                    .fetch_all(&mut *tx)
                    .await?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let unopenable = || SealedDataError::Unopenable {
                        key_id: row.key_id.clone(),
                        table: column.table,
                    };
                    let aad = (column.aad)(&row.ids).ok_or_else(unopenable)?;
                    let sealed =
                        Sealed::from_stored(&row.key_id, &row.nonce, row.ciphertext.clone())
                            .map_err(|_| unopenable())?;
                    let plaintext = keyring.open(&sealed, &aad).map_err(|_| unopenable())?;
                    let resealed_value =
                        keyring.seal(&plaintext, &aad).map_err(|_| unopenable())?;
                    sqlx::query(&update)
                        .bind(resealed_value.key_id.to_hex())
                        .bind(resealed_value.nonce.to_vec())
                        .bind(&resealed_value.ciphertext)
                        .bind(&row.row_ref)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                resealed += rows.len() as u64;
                batches += 1;
            }
        }
        let (left, current): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE {k} <> $1), count(*) FILTER (WHERE {k} = $1) FROM {t}",
            t = column.table,
            k = column.key_id_column
        ))
        .bind(&active)
        .fetch_one(pool)
        .await?;
        report.remaining += left as u64;
        if left > 0 {
            report.complete = false;
        }
        report.tables.push((
            column.table,
            resealed,
            (current as u64).saturating_sub(resealed),
        ));
        // A run stopped by `max_batches` still counts what every later table holds.
    }
    Ok(report)
}
