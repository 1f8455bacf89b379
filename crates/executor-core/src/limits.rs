//! The sandbox limits every script run is held to.

use std::time::Duration;

/// Resource limits applied to every script run; the defaults are the safe values of the spec.
///
/// A zero in `max_operations`, `max_string_bytes`, `max_array_items` or `max_map_items`
/// means "unlimited" (Rhai's convention); the binary never configures that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Most Rhai operations one run may perform.
    pub max_operations: u64,
    /// Wall-clock time one run may take, SDK calls included.
    pub timeout: Duration,
    /// Deepest nesting of script function calls.
    pub max_call_depth: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Most items an array may hold (nested arrays count their items too).
    pub max_array_items: usize,
    /// Most entries an object map may hold (nested maps count their entries too).
    pub max_map_items: usize,
    /// Longest one SDK call may take before it fails with `unavailable`.
    pub sdk_timeout: Duration,
    /// Largest text or JSON a script value may turn into: the run's result, an
    /// SDK argument, a thrown value. Conversions stop as soon as they pass it.
    pub max_value_bytes: usize,
    /// Largest script source that is compiled, in bytes.
    pub max_source_bytes: usize,
    /// Longest compiling one script may take.
    pub compile_timeout: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            max_operations: 10_000_000,
            timeout: Duration::from_secs(10),
            max_call_depth: 64,
            max_string_bytes: 1024 * 1024,
            max_array_items: 100_000,
            max_map_items: 100_000,
            sdk_timeout: Duration::from_secs(5),
            max_value_bytes: 16 * 1024 * 1024,
            max_source_bytes: 512 * 1024,
            compile_timeout: Duration::from_secs(5),
        }
    }
}
