//! Dead letters: fanning them out to `dead_letter` triggers, and the admin
//! operations (list, inspect, replay, delete).

use crate::{
    error::ManagerError,
    repo::{
        self,
        dead_letters::Replay,
        outbox::{DeadLetterToFanOut, OutboxStats},
    },
    service::events::EventPolicy,
};
use picloud_shared::{
    domain::DeadLetterInfo,
    ids::AppId,
    triggers::{CallContext, TriggerEvent},
};
use sqlx::PgPool;
use uuid::Uuid;

/// Most bytes of events one list call returns (at least one dead letter is
/// always returned): a page of large events stays a bounded response.
pub const DEAD_LETTER_PAGE_BYTES: i64 = 8 * 1024 * 1024;

/// Most dead letters one list call returns.
pub const DEAD_LETTER_PAGE_MAX: i64 = 200;

/// Dead letters stored in `dead_letters`.
#[derive(Clone)]
pub struct DeadLettersService {
    pool: PgPool,
    events: EventPolicy,
}

impl DeadLettersService {
    /// A service over `pool`; fan-out obeys `events`' depth limit.
    pub fn new(pool: PgPool, events: EventPolicy) -> Self {
        Self { pool, events }
    }

    /// Enqueues the dead-letter events of dead letters not fanned out yet:
    /// those named (`ids`), or the oldest `limit` of them. Returns how many
    /// dead letters were fanned out (a failure is logged and left to the next sweep).
    pub async fn fan_out(&self, ids: Option<&[Uuid]>, limit: i64) -> Result<usize, ManagerError> {
        let rows = repo::outbox::dead_letters_to_fan_out(&self.pool, ids, limit).await?;
        let mut handled = 0;
        // One dead letter that cannot be fanned out now must not hold up the others.
        for row in rows {
            let id = row.id;
            match self.fan_out_one(row).await {
                Ok(()) => handled += 1,
                Err(e) => tracing::warn!(
                    error = %e,
                    cancelled = matches!(&e, ManagerError::Database(db) if crate::error::is_statement_cancelled(db)),
                    dead_letter_id = %id,
                    "fanning out a dead letter failed; the sweep tries it again"
                ),
            }
        }
        Ok(handled)
    }

    async fn fan_out_one(&self, row: DeadLetterToFanOut) -> Result<(), ManagerError> {
        let original: TriggerEvent = match serde_json::from_value(row.payload.0.clone()) {
            Ok(event) => event,
            Err(_) => {
                tracing::warn!(
                    dead_letter_id = %row.id,
                    app_id = %row.app_id,
                    "a dead letter's event cannot be decoded; it is kept, and no dead_letter trigger is told"
                );
                repo::outbox::skip_fan_out(&self.pool, row.id).await?;
                return Ok(());
            }
        };
        let event = TriggerEvent::DeadLetter {
            dead_letter_id: row.id,
            original: Box::new(original),
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            last_error: row.last_error.clone(),
            trigger_id: row.trigger_id.unwrap_or_default(),
            script_id: row.script_id.unwrap_or_default(),
            first_attempt_at: row.first_attempt_at,
            last_attempt_at: row.last_attempt_at,
        };
        let payload = serde_json::to_value(&event).map_err(|_| {
            ManagerError::Unavailable("a dead-letter event could not be encoded".into())
        })?;
        let ctx = CallContext {
            app_id: AppId(row.app_id),
            trigger_depth: u32::try_from(row.trigger_depth).unwrap_or(u32::MAX),
            origin_principal: None,
            chain_id: None,
        };
        let origin = self.events.origin(&ctx);
        let enqueued =
            repo::outbox::fan_out_dead_letter(&self.pool, row.id, &payload, &origin).await?;
        self.events.record(&ctx, "dead_letter", &origin, &enqueued);
        Ok(())
    }

    /// The app's dead letters, newest first, `limit` at most (1-200), after the
    /// cursor of the previous page's last one: its `id` (`before`) and
    /// `created_at` (`before_at`). With `before` alone, that dead letter must
    /// still exist (404 otherwise; deleting while paging needs `before_at`).
    pub async fn list(
        &self,
        app: AppId,
        limit: i64,
        before: Option<Uuid>,
        before_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<DeadLetterInfo>, ManagerError> {
        repo::apps::get(&self.pool, app)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        if let (Some(id), None) = (before, before_at) {
            if repo::dead_letters::get(&self.pool, app, id)
                .await?
                .is_none()
            {
                return Err(ManagerError::NotFound(
                    "the `before` dead letter (when paging while deleting, pass `before_at` too)",
                ));
            }
        }
        let limit = limit.clamp(1, DEAD_LETTER_PAGE_MAX);
        Ok(repo::dead_letters::list(
            &self.pool,
            app,
            limit,
            before,
            before_at,
            DEAD_LETTER_PAGE_BYTES,
        )
        .await?)
    }

    /// One dead letter of the app.
    pub async fn get(&self, app: AppId, id: Uuid) -> Result<DeadLetterInfo, ManagerError> {
        repo::dead_letters::get(&self.pool, app, id)
            .await?
            .ok_or(ManagerError::NotFound("dead letter"))
    }

    /// Deletes a dead letter.
    pub async fn delete(&self, app: AppId, id: Uuid) -> Result<(), ManagerError> {
        if repo::dead_letters::delete(&self.pool, app, id).await? {
            Ok(())
        } else {
            Err(ManagerError::NotFound("dead letter"))
        }
    }

    /// Enqueues the dead letter's original event again for its trigger, with
    /// fresh attempts under the trigger's current retry policy. The dead
    /// letter stays (delete it when done). Returns the new outbox row's id.
    /// A second replay is refused (409) while the first one's event is pending.
    pub async fn replay(&self, app: AppId, id: Uuid) -> Result<i64, ManagerError> {
        match repo::dead_letters::replay(&self.pool, app, id).await? {
            Replay::Queued(outbox_id) => Ok(outbox_id),
            Replay::NotFound => Err(ManagerError::NotFound("dead letter")),
            Replay::TriggerGone => Err(ManagerError::Conflict(
                "the trigger of this dead letter no longer exists; nothing to replay it to".into(),
            )),
            Replay::Pending(outbox_id) => Err(ManagerError::Conflict(format!(
                "this dead letter was replayed already and its event (outbox id {outbox_id}) has not been handled yet"
            ))),
        }
    }

    /// The app's outbox, counted.
    pub async fn outbox_stats(&self, app: AppId) -> Result<OutboxStats, ManagerError> {
        repo::apps::get(&self.pool, app)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        Ok(repo::outbox::stats(&self.pool, Some(app.0)).await?)
    }
}
