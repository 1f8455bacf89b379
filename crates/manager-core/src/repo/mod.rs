//! Repositories: SQL only, one module per table family.

pub mod api_keys;
pub mod apps;
pub mod dead_letters;
pub mod email;
pub mod inbound;
pub mod kv;
pub mod outbox;
pub mod realtime;
pub mod scripts;
pub mod secrets;
pub mod triggers;

/// Rows one housekeeping statement deletes at most.
const HOUSEKEEPING_BATCH: i64 = 5_000;

/// Deletes the rows of `table` that match `condition` (SQL written here,
/// never user input), in batches that skip rows another session holds: two
/// processes' housekeeping at once neither deadlock nor wait on each other.
pub(crate) async fn delete_unlocked(
    pool: &sqlx::PgPool,
    table: &str,
    condition: &str,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM {table} WHERE {condition} LIMIT $1 FOR UPDATE SKIP LOCKED))"
    );
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(&sql)
            .bind(HOUSEKEEPING_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += batch;
        if batch < HOUSEKEEPING_BATCH as u64 {
            return Ok(deleted);
        }
    }
}
