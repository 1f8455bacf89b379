//! Prometheus metrics: one registry, rendered at `GET /metrics`.
//!
//! Later capabilities add their counters to `Metrics`, so there is one place
//! to see everything picloud counts.

use picloud_executor_core::PoolStats;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

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
}

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
        let collectors: [Box<dyn prometheus::core::Collector>; 6] = [
            Box::new(script_runs.clone()),
            Box::new(script_run_duration.clone()),
            Box::new(pool_workers.clone()),
            Box::new(pool_busy.clone()),
            Box::new(pool_queued.clone()),
            Box::new(pool_rejections.clone()),
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
        Self {
            registry,
            script_runs,
            script_run_duration,
            pool_workers,
            pool_busy,
            pool_queued,
            pool_rejections,
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
