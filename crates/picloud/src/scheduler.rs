//! The cron scheduler: turns due ticks of `cron` triggers into outbox events.
//!
//! Each trigger row holds its next tick (`cron_next_at`). A process locks the
//! due rows with `FOR UPDATE SKIP LOCKED`, and in one transaction enqueues
//! each tick's event and moves the row to the schedule's next tick after
//! *now*: with several processes on one database every tick is enqueued once,
//! and after downtime the missed ticks of a trigger fire once, not once each.

use chrono::{SecondsFormat, Utc};
use picloud_manager_core::repo;
use picloud_shared::triggers::CronSchedule;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;

/// The longest the scheduler sleeps between two looks (a trigger created by
/// another process is seen within it).
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// Most triggers fired in one transaction.
const BATCH: i64 = 100;

/// Runs until `stopped` turns true.
pub async fn run(pool: PgPool, mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        let sleep = match fire_due(&pool).await {
            Ok(true) => Duration::ZERO,
            Ok(false) => until_next(&pool).await,
            Err(e) => {
                tracing::warn!(error = %e, "firing cron ticks failed; retrying");
                Duration::from_secs(1)
            }
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            _ = stopped.changed() => break,
        }
    }
}

/// Fires the due ticks of one batch; true when the batch was full (more may be due).
async fn fire_due(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due = repo::triggers::lock_due_cron(&mut tx, BATCH).await?;
    let now = Utc::now();
    for tick in &due {
        let next = match CronSchedule::parse(&tick.schedule) {
            Ok(schedule) => schedule.next_after(now),
            Err(_) => {
                tracing::error!(trigger_id = %tick.id, "a stored cron schedule does not parse; the trigger stops firing");
                None
            }
        };
        let event = json!({
            "kind": "cron",
            "schedule": tick.schedule,
            "fired_at": tick.due_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        repo::triggers::fire_cron(&mut tx, tick.id, &event, next).await?;
    }
    if !due.is_empty() {
        sqlx::query("SELECT pg_notify('picloud_outbox', '')")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(due.len() as i64 == BATCH)
}

/// How long until the next tick of any trigger (at most [`MAX_SLEEP`]).
async fn until_next(pool: &PgPool) -> Duration {
    match repo::triggers::next_cron_at(pool).await {
        Ok(Some(at)) => (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP),
        _ => MAX_SLEEP,
    }
    .max(Duration::from_millis(5))
}
