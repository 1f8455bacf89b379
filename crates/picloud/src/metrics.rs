//! Prometheus metrics: one registry, rendered at `GET /metrics`.
//!
//! Later capabilities add their counters to `Metrics`, so there is one place
//! to see everything picloud counts.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
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
        registry
            .register(Box::new(script_runs.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(script_run_duration.clone()))
            .expect("metric registered once");
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
        }
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
