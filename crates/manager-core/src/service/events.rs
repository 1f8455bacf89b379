//! What every writer of trigger events shares: the chain-depth limit and the
//! counters of events it dropped. Events are enqueued by the repositories in
//! the statement that makes their change, so a change and its events commit
//! together (the transactional outbox of SPEC §8).

use picloud_shared::triggers::CallContext;
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// Default `PICLOUD_MAX_TRIGGER_DEPTH`.
pub const DEFAULT_MAX_TRIGGER_DEPTH: u32 = 8;

/// Counts of events not enqueued, for `/metrics`.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Events dropped because their chain was deeper than the limit.
    pub depth_drops: AtomicU64,
}

/// The depth limit and counters, shared by the kv, pubsub, cron and dead-letter writers.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    max_trigger_depth: u32,
    counters: Arc<EventCounters>,
}

impl EventPolicy {
    /// A policy dropping chains deeper than `max_trigger_depth`.
    pub fn new(max_trigger_depth: u32) -> Self {
        Self {
            max_trigger_depth,
            counters: Arc::default(),
        }
    }

    /// The counters, for `/metrics`.
    pub fn counters(&self) -> Arc<EventCounters> {
        self.counters.clone()
    }

    /// The depth of the events a call in `ctx` causes, and whether they may be enqueued.
    pub fn child_depth(&self, ctx: &CallContext) -> (i32, bool) {
        let depth = ctx.trigger_depth.saturating_add(1);
        (
            i32::try_from(depth).unwrap_or(i32::MAX),
            depth <= self.max_trigger_depth,
        )
    }

    /// Records that `matched` events of a call in `ctx` were dropped for depth.
    pub fn record_depth_drop(&self, ctx: &CallContext, source: &str, matched: i64) {
        if matched <= 0 {
            return;
        }
        self.counters
            .depth_drops
            .fetch_add(matched as u64, Ordering::Relaxed);
        tracing::error!(
            app_id = %ctx.app_id,
            source,
            depth = ctx.trigger_depth.saturating_add(1),
            limit = self.max_trigger_depth,
            dropped = matched,
            "a trigger chain went deeper than PICLOUD_MAX_TRIGGER_DEPTH; its events were dropped (a handler that causes its own trigger?)"
        );
    }
}

impl Default for EventPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TRIGGER_DEPTH)
    }
}
