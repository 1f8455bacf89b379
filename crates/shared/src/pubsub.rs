//! The pubsub service contract: publishing a message to a topic of the caller's app.

use crate::{triggers::CallContext, ServiceError};
use async_trait::async_trait;
use serde_json::Value;

/// Publishes messages. Every matching `pubsub` trigger gets the event, enqueued
/// in the transaction of the publish; the topic's realtime subscribers get the
/// message after it.
#[async_trait]
pub trait PubsubService: Send + Sync {
    /// Publishes `message` (any JSON) to `topic`; returns how many triggers it was enqueued for.
    async fn publish(
        &self,
        ctx: &CallContext,
        topic: &str,
        message: Value,
    ) -> Result<u64, ServiceError>;
}
