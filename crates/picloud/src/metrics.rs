//! Prometheus metrics: one registry, rendered at `GET /metrics`.
//!
//! Later capabilities add their counters to `Metrics`, so there is one place
//! to see everything picloud counts.

use picloud_executor_core::PoolStats;
use picloud_manager_core::service::{email::EmailCounters, events::EventCounters};
use picloud_shared::email::EmailFailure;
use picloud_shared::triggers::TriggerKind;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::sync::atomic::Ordering;

/// The `outcome` label values of script runs.
pub const RUN_OUTCOMES: [&str; 3] = ["ok", "error", "limit"];

/// Every metric picloud exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `picloud_script_runs_total{trigger, outcome}`.
    pub script_runs: IntCounterVec,
    /// `picloud_script_run_duration_seconds{outcome}`.
    pub script_run_duration: HistogramVec,
    /// `picloud_script_pool_workers`: worker threads.
    pool_workers: IntGauge,
    /// `picloud_script_pool_busy_workers`: workers running a script now.
    pool_busy: IntGauge,
    /// `picloud_script_pool_queue_depth`: runs waiting for a worker now.
    pool_queued: IntGauge,
    /// `picloud_script_pool_rejections_total`: runs refused with 503 (queue full or wait too long).
    pool_rejections: IntCounter,
    /// `picloud_outbox_depth`: events waiting or running, all apps (sampled by the dispatcher).
    pub outbox_depth: IntGauge,
    /// `picloud_dispatch_latency_seconds`: from an event being due (enqueued, or
    /// its retry time) to its handler starting.
    pub dispatch_latency: Histogram,
    /// `picloud_handler_runs_total{kind, outcome}`: trigger handler runs.
    pub handler_runs: IntCounterVec,
    /// `picloud_handler_retries_total{kind}`: failed runs scheduled again.
    pub handler_retries: IntCounterVec,
    /// `picloud_dead_letters_total{kind}`: events that failed every attempt.
    pub dead_letters: IntCounterVec,
    /// `picloud_dead_letter_handlers_exhausted_total`: dead-letter handler events
    /// that failed every attempt (dropped: never dead-lettered again).
    pub dead_letter_handlers_exhausted: IntCounter,
    /// `picloud_trigger_depth_drops_total`: events dropped for a chain deeper
    /// than `PICLOUD_MAX_TRIGGER_DEPTH` (caught up from the writers' counter at scrape time).
    depth_drops: IntCounter,
    /// `picloud_trigger_budget_drops_total`: events dropped because their
    /// chain's handlers had enqueued `PICLOUD_MAX_CHAIN_EVENTS` (caught up at scrape time).
    budget_drops: IntCounter,
    /// `picloud_trigger_quota_refusals_total`: changes refused because their
    /// app had `PICLOUD_MAX_PENDING_EVENTS_PER_APP` events waiting (caught up at scrape time).
    quota_refusals: IntCounter,
    /// `picloud_email_send_total{outcome}`: sends by outcome, `ok` or a failure
    /// kind (caught up with the email service's counters at scrape time).
    email_sends: IntCounterVec,
    /// `picloud_inbound_requests_total{result}`: inbound email requests by result.
    inbound_requests: IntCounterVec,
    /// `picloud_realtime_subscribers`: SSE subscribers connected to this process.
    pub realtime_subscribers: IntGauge,
    /// `picloud_realtime_messages_delivered_total`: messages handed to subscribers.
    pub realtime_delivered: IntCounter,
    /// `picloud_realtime_slow_disconnects_total`: subscribers disconnected
    /// because their buffer was full.
    pub realtime_slow_disconnects: IntCounter,
}

/// The `result` label values of inbound email requests: SPEC §7's,
/// `not_found` for an unknown trigger or app, and `unavailable` for an email
/// that could not be stored (a database failure; the sender retries).
pub const INBOUND_RESULTS: [&str; 9] = [
    "accepted",
    "duplicate",
    "unrouted",
    "unauthorized",
    "malformed",
    "too_large",
    "rate_limited",
    "not_found",
    "unavailable",
];

/// The `outcome` label values of handler runs.
pub const HANDLER_OUTCOMES: [&str; 3] = ["ok", "error", "limit"];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let script_runs = IntCounterVec::new(
            Opts::new(
                "picloud_script_runs_total",
                "Script runs by trigger and outcome",
            ),
            &["trigger", "outcome"],
        )
        .expect("static metric definition is valid");
        let script_run_duration = HistogramVec::new(
            HistogramOpts::new(
                "picloud_script_run_duration_seconds",
                "Script run wall-clock duration by outcome",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["outcome"],
        )
        .expect("static metric definition is valid");
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).expect("static metric definition is valid")
        };
        let pool_workers = gauge("picloud_script_pool_workers", "Script pool worker threads");
        let pool_busy = gauge(
            "picloud_script_pool_busy_workers",
            "Script pool workers running a script",
        );
        let pool_queued = gauge(
            "picloud_script_pool_queue_depth",
            "Script runs waiting for a worker",
        );
        let pool_rejections = IntCounter::new(
            "picloud_script_pool_rejections_total",
            "Script runs refused because the pool was full or the wait too long",
        )
        .expect("static metric definition is valid");
        let outbox_depth = gauge(
            "picloud_outbox_depth",
            "Trigger events waiting or running, all apps",
        );
        let dispatch_latency = Histogram::with_opts(
            HistogramOpts::new(
                "picloud_dispatch_latency_seconds",
                "From an event being due to its handler starting",
            )
            // Fine below 10 ms, where a healthy dispatcher lives.
            .buckets(vec![
                0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("static metric definition is valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid")
        };
        let handler_runs = counter_vec(
            "picloud_handler_runs_total",
            "Trigger handler runs by trigger kind and outcome",
            &["kind", "outcome"],
        );
        let handler_retries = counter_vec(
            "picloud_handler_retries_total",
            "Failed handler runs scheduled again, by trigger kind",
            &["kind"],
        );
        let dead_letters = counter_vec(
            "picloud_dead_letters_total",
            "Events that failed every attempt, by trigger kind",
            &["kind"],
        );
        let dead_letter_handlers_exhausted = IntCounter::new(
            "picloud_dead_letter_handlers_exhausted_total",
            "Dead-letter handler events that failed every attempt (dropped, never dead-lettered again)",
        )
        .expect("static metric definition is valid");
        let depth_drops = IntCounter::new(
            "picloud_trigger_depth_drops_total",
            "Events dropped because their trigger chain was deeper than PICLOUD_MAX_TRIGGER_DEPTH",
        )
        .expect("static metric definition is valid");
        let budget_drops = IntCounter::new(
            "picloud_trigger_budget_drops_total",
            "Events dropped because their trigger chain's handlers had enqueued PICLOUD_MAX_CHAIN_EVENTS events",
        )
        .expect("static metric definition is valid");
        let quota_refusals = IntCounter::new(
            "picloud_trigger_quota_refusals_total",
            "Changes refused because their app had PICLOUD_MAX_PENDING_EVENTS_PER_APP trigger events waiting",
        )
        .expect("static metric definition is valid");
        let email_sends = counter_vec(
            "picloud_email_send_total",
            "Outbound email sends by outcome (ok or the failure kind)",
            &["outcome"],
        );
        let inbound_requests = counter_vec(
            "picloud_inbound_requests_total",
            "Inbound email requests by result",
            &["result"],
        );
        for result in INBOUND_RESULTS {
            inbound_requests.with_label_values(&[result]);
        }
        let realtime_subscribers = gauge(
            "picloud_realtime_subscribers",
            "Realtime (SSE) subscribers connected to this process",
        );
        let realtime_delivered = IntCounter::new(
            "picloud_realtime_messages_delivered_total",
            "Realtime messages handed to subscribers (one per subscriber and message)",
        )
        .expect("static metric definition is valid");
        let realtime_slow_disconnects = IntCounter::new(
            "picloud_realtime_slow_disconnects_total",
            "Realtime subscribers disconnected because they did not keep up (their buffer was full)",
        )
        .expect("static metric definition is valid");
        let collectors: [Box<dyn prometheus::core::Collector>; 20] = [
            Box::new(script_runs.clone()),
            Box::new(script_run_duration.clone()),
            Box::new(pool_workers.clone()),
            Box::new(pool_busy.clone()),
            Box::new(pool_queued.clone()),
            Box::new(pool_rejections.clone()),
            Box::new(outbox_depth.clone()),
            Box::new(dispatch_latency.clone()),
            Box::new(handler_runs.clone()),
            Box::new(handler_retries.clone()),
            Box::new(dead_letters.clone()),
            Box::new(dead_letter_handlers_exhausted.clone()),
            Box::new(depth_drops.clone()),
            Box::new(budget_drops.clone()),
            Box::new(quota_refusals.clone()),
            Box::new(email_sends.clone()),
            Box::new(inbound_requests.clone()),
            Box::new(realtime_subscribers.clone()),
            Box::new(realtime_delivered.clone()),
            Box::new(realtime_slow_disconnects.clone()),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        // Known series start at zero, so a scraper sees them before the first run
        // and `rate()` has a baseline.
        for outcome in RUN_OUTCOMES {
            script_runs.with_label_values(&["http", outcome]);
            script_run_duration.with_label_values(&[outcome]);
        }
        email_sends.with_label_values(&["ok"]);
        for failure in EmailFailure::ALL {
            email_sends.with_label_values(&[failure.as_str()]);
        }
        for kind in TriggerKind::ALL {
            for outcome in HANDLER_OUTCOMES {
                handler_runs.with_label_values(&[kind.as_str(), outcome]);
                script_runs.with_label_values(&[kind.as_str(), outcome]);
            }
            handler_retries.with_label_values(&[kind.as_str()]);
            if kind != TriggerKind::DeadLetter {
                dead_letters.with_label_values(&[kind.as_str()]);
            }
        }
        Self {
            registry,
            script_runs,
            script_run_duration,
            pool_workers,
            pool_busy,
            pool_queued,
            pool_rejections,
            outbox_depth,
            dispatch_latency,
            handler_runs,
            handler_retries,
            dead_letters,
            dead_letter_handlers_exhausted,
            depth_drops,
            budget_drops,
            quota_refusals,
            email_sends,
            inbound_requests,
            realtime_subscribers,
            realtime_delivered,
            realtime_slow_disconnects,
        }
    }

    /// Counts one inbound email request by its result (one of [`INBOUND_RESULTS`]).
    pub fn record_inbound(&self, result: &str) {
        self.inbound_requests.with_label_values(&[result]).inc();
    }

    /// Catches the email send counters up with the email service's counts (at scrape time).
    pub fn observe_email_sends(&self, counters: &EmailCounters) {
        for (outcome, total) in counters.snapshot() {
            let metric = self.email_sends.with_label_values(&[outcome]);
            metric.inc_by(total.saturating_sub(metric.get()));
        }
    }

    /// Catches the drop counters up with the event writers' counts (at scrape time).
    pub fn observe_event_drops(&self, counters: &EventCounters) {
        for (metric, total) in [
            (&self.depth_drops, &counters.depth_drops),
            (&self.budget_drops, &counters.budget_drops),
            (&self.quota_refusals, &counters.quota_refusals),
        ] {
            let seen = metric.get();
            metric.inc_by(total.load(Ordering::Relaxed).saturating_sub(seen));
        }
    }

    /// Copies a reading of the script pool into its metrics (at scrape time).
    pub fn observe_pool(&self, stats: PoolStats) {
        self.pool_workers.set(stats.workers as i64);
        self.pool_busy.set(stats.busy as i64);
        self.pool_queued.set(stats.queued as i64);
        // The pool counts rejections itself; the counter catches up to it.
        let seen = self.pool_rejections.get();
        self.pool_rejections
            .inc_by(stats.rejected_total.saturating_sub(seen));
    }

    /// Records one script run.
    pub fn record_run(&self, trigger: &str, outcome: &str, seconds: f64) {
        self.script_runs
            .with_label_values(&[trigger, outcome])
            .inc();
        self.script_run_duration
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
