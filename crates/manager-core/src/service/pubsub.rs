//! `PubsubService` over PostgreSQL: a publish enqueues the events of the app's
//! matching `pubsub` triggers in one statement, then reaches the app's
//! realtime subscribers of the topic.

use crate::{error::ManagerError, repo, service::events::EventPolicy};
use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use picloud_shared::{
    pubsub::PubsubService,
    triggers::{validate_topic, CallContext},
    values::capped_json,
    ServiceError,
};
use serde_json::{json, Value};
use sqlx::PgPool;

/// Pubsub backed by the outbox.
#[derive(Clone)]
pub struct PubsubServiceImpl {
    pool: PgPool,
    max_message_bytes: usize,
    events: EventPolicy,
}

impl PubsubServiceImpl {
    /// A service over `pool` capping messages at `max_message_bytes` of JSON.
    pub fn new(pool: PgPool, max_message_bytes: usize, events: EventPolicy) -> Self {
        Self {
            pool,
            max_message_bytes,
            events,
        }
    }
}

#[async_trait]
impl PubsubService for PubsubServiceImpl {
    async fn publish(
        &self,
        ctx: &CallContext,
        topic: &str,
        message: Value,
    ) -> Result<u64, ServiceError> {
        validate_topic(topic)?;
        let encoded = capped_json(&message, self.max_message_bytes)?;
        // PostgreSQL's jsonb refuses NUL characters: a clear refusal, not "unavailable".
        if encoded.windows(6).any(|w| w == b"\\u0000") {
            return Err(ServiceError::InvalidArgument(
                "message must not contain NUL characters".into(),
            ));
        }
        let payload = json!({
            "kind": "pubsub",
            "topic": topic,
            "message": message,
            "published_at": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        });
        let origin = self.events.origin(ctx);
        let enqueued =
            repo::outbox::enqueue_pubsub(&self.pool, ctx.app_id, topic, &payload, &origin)
                .await
                .map_err(|e| ServiceError::from(ManagerError::Database(e)))?;
        self.events.check_refused(ctx, &enqueued)?;
        self.events.record(ctx, "pubsub", &origin, &enqueued);
        // Realtime subscribers, on every process (after the triggers' events committed).
        crate::service::realtime::publish(&self.pool, ctx.app_id, topic, &payload["message"])
            .await
            .map_err(ServiceError::from)?;
        Ok(enqueued.queued as u64)
    }
}
