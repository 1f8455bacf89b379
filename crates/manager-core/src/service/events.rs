//! What every writer of trigger events shares: the chain limits (depth, and
//! events per chain) and the counters of events they dropped. Events are enqueued by the repositories in
//! the statement that makes their change, so a change and its events commit
//! together (the transactional outbox of SPEC §8).

use crate::repo::outbox::{Enqueued, EventOrigin};
use picloud_shared::{triggers::CallContext, ServiceError};
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
};
use uuid::Uuid;

/// Wakes the dispatchers (`NOTIFY picloud_outbox`) after enqueues that
/// committed without notifying, many pokes making one NOTIFY. A NOTIFY in a
/// transaction serialises its commit with every other notifying commit
/// (PostgreSQL's notify queue lock), so a hot path that commits concurrently
/// (inbound email) pokes this instead, after its commit.
#[derive(Clone)]
pub struct OutboxNotifier {
    wake: Arc<tokio::sync::Notify>,
}

impl OutboxNotifier {
    /// Starts the notifying task on the current tokio runtime; it ends when
    /// `pool` closes.
    pub fn start(pool: sqlx::PgPool) -> Self {
        let wake = Arc::new(tokio::sync::Notify::new());
        let waiting = wake.clone();
        tokio::spawn(async move {
            loop {
                // One stored permit stands for every poke since the last NOTIFY.
                waiting.notified().await;
                if let Err(e) = sqlx::query("SELECT pg_notify('picloud_outbox', '')")
                    .execute(&pool)
                    .await
                {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "waking the dispatchers failed; they find the events at their next poll");
                }
                // Pokes meanwhile make the next NOTIFY: under a steady load the
                // dispatchers wake (and claim) at most once an interval, with
                // more events each time; an idle server's first poke goes at once.
                tokio::time::sleep(NOTIFY_INTERVAL).await;
            }
        });
        Self { wake }
    }

    /// Asks for a NOTIFY soon (after the caller's commit).
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

/// The shortest time between two NOTIFYs of an [`OutboxNotifier`].
const NOTIFY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// Default `PICLOUD_MAX_TRIGGER_DEPTH`.
pub const DEFAULT_MAX_TRIGGER_DEPTH: u32 = 8;

/// Default `PICLOUD_MAX_CHAIN_EVENTS`.
pub const DEFAULT_MAX_CHAIN_EVENTS: u32 = 1000;

/// Default `PICLOUD_MAX_PENDING_EVENTS_PER_APP`.
pub const DEFAULT_MAX_PENDING_EVENTS_PER_APP: u64 = 100_000;

/// Counts of events not enqueued, for `/metrics`.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Events dropped because their chain was deeper than the limit.
    pub depth_drops: AtomicU64,
    /// Events dropped because their chain had enqueued its budget of events.
    pub budget_drops: AtomicU64,
    /// Writes refused because their app had too many events waiting.
    pub quota_refusals: AtomicU64,
}

/// The chain limits and counters, shared by the kv, pubsub, cron and dead-letter writers.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    max_trigger_depth: u32,
    max_chain_events: u32,
    max_pending_per_app: u64,
    /// Apps with at least `max_pending_per_app` events waiting, as the
    /// dispatcher's housekeeping last counted them.
    over_quota: Arc<RwLock<HashSet<Uuid>>>,
    counters: Arc<EventCounters>,
}

impl EventPolicy {
    /// A policy dropping the events of chains deeper than `max_trigger_depth`
    /// and of chains whose handlers enqueued `max_chain_events` events already.
    pub fn new(max_trigger_depth: u32, max_chain_events: u32) -> Self {
        Self {
            max_trigger_depth,
            max_chain_events,
            max_pending_per_app: DEFAULT_MAX_PENDING_EVENTS_PER_APP,
            over_quota: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// The same policy refusing writes that fire triggers of an app with
    /// `max` events waiting.
    pub fn with_max_pending_per_app(mut self, max: u64) -> Self {
        self.max_pending_per_app = max;
        self
    }

    /// `PICLOUD_MAX_PENDING_EVENTS_PER_APP`.
    pub fn max_pending_per_app(&self) -> u64 {
        self.max_pending_per_app
    }

    /// Replaces the set of apps at their pending-events quota (the housekeeping's count).
    pub fn set_over_quota(&self, apps: HashSet<Uuid>) {
        *self
            .over_quota
            .write()
            .unwrap_or_else(PoisonError::into_inner) = apps;
    }

    /// Where the events of a change made by a call in `ctx` stand in their chain.
    pub fn origin(&self, ctx: &CallContext) -> EventOrigin {
        let (depth, enqueue) = self.child_depth(ctx);
        EventOrigin {
            depth,
            principal: ctx.origin_principal,
            enqueue,
            chain: ctx.chain_id,
            max_chain_events: i64::from(self.max_chain_events),
            refuse_events: self
                .over_quota
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&ctx.app_id.0),
        }
    }

    /// The error for a write refused because its app has too many events
    /// waiting (counted); `Ok` when `done` was not refused.
    pub fn check_refused(&self, ctx: &CallContext, done: &Enqueued) -> Result<(), ServiceError> {
        if !done.refused {
            return Ok(());
        }
        self.counters.quota_refusals.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            app_id = %ctx.app_id,
            limit = self.max_pending_per_app,
            "a write that fires triggers was refused: its app has too many events waiting"
        );
        Err(ServiceError::Unavailable(format!(
            "this app has at least {} trigger events waiting (PICLOUD_MAX_PENDING_EVENTS_PER_APP); changes that fire triggers are refused until they drain. Nothing was written",
            self.max_pending_per_app
        )))
    }

    /// Counts and logs the events of a change that a chain limit dropped.
    pub fn record(&self, ctx: &CallContext, source: &str, origin: &EventOrigin, done: &Enqueued) {
        if !origin.enqueue {
            self.record_depth_drop(ctx, source, done.matched);
        } else if done.over_budget && done.matched > 0 {
            self.counters
                .budget_drops
                .fetch_add(done.matched as u64, Ordering::Relaxed);
            tracing::error!(
                app_id = %ctx.app_id,
                source,
                chain_id = ctx.chain_id,
                limit = self.max_chain_events,
                dropped = done.matched,
                "a trigger chain's handlers enqueued more events than PICLOUD_MAX_CHAIN_EVENTS; these were dropped (handlers that fan out to each other?)"
            );
        }
    }

    /// The counters, for `/metrics`.
    pub fn counters(&self) -> Arc<EventCounters> {
        self.counters.clone()
    }

    /// The depth of the events a call in `ctx` causes, and whether they may be enqueued.
    fn child_depth(&self, ctx: &CallContext) -> (i32, bool) {
        let depth = ctx.trigger_depth.saturating_add(1);
        (
            i32::try_from(depth).unwrap_or(i32::MAX),
            depth <= self.max_trigger_depth,
        )
    }

    /// Records that `matched` events of a call in `ctx` were dropped for depth.
    fn record_depth_drop(&self, ctx: &CallContext, source: &str, matched: i64) {
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
        Self::new(DEFAULT_MAX_TRIGGER_DEPTH, DEFAULT_MAX_CHAIN_EVENTS)
    }
}
