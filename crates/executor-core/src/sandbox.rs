//! The one Rhai [`Engine`] every run shares, configured as a sandbox.
//!
//! What a script cannot do, and how each rule is enforced:
//! - run forever: `max_operations`, plus a wall-clock deadline checked from
//!   `on_progress` every [`DEADLINE_CHECK_EVERY`] operations (the deadline is
//!   per run, so it lives in `run_state`); SDK calls, which `on_progress`
//!   cannot interrupt, carry their own timeout (see `sdk`);
//! - exhaust memory: string, array and map size limits, and a per-run
//!   memory budget checked after every operation (see `memory`);
//! - exhaust the stack: call-depth and expression-depth limits;
//! - escape: no `eval` (disabled symbol), no `import` (a resolver that
//!   refuses every path — Rhai's `no_module` feature would also remove the
//!   `kv::` namespaces), no stdout (`print`/`debug` go to `tracing`).

use crate::memory;
use crate::run_state;
use crate::sdk::{self, SdkEnv};
use crate::SandboxLimits;
use rhai::module_resolvers::ModuleResolver;
use rhai::{Dynamic, Engine, EvalAltResult, Module, Position, Shared};
use std::sync::Arc;

/// How often, in operations, a run compares the clock with its deadline.
pub(crate) const DEADLINE_CHECK_EVERY: u64 = 1024;

/// The termination token of a run that passed its deadline.
pub(crate) const TIMEOUT_TOKEN: &str = "timeout";
/// The termination token of a run that exceeded its memory budget.
pub(crate) const MEMORY_TOKEN: &str = "memory";

/// Expression nesting allowed at top level and inside functions (Rhai's release defaults).
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FUNCTION_EXPR_DEPTH: usize = 32;

/// Builds the shared sandboxed engine with the SDK modules registered.
pub(crate) fn build_engine(limits: &SandboxLimits, env: Arc<SdkEnv>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_depth)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FUNCTION_EXPR_DEPTH)
        .set_max_string_size(limits.max_string_bytes)
        .set_max_array_size(limits.max_array_items)
        .set_max_map_size(limits.max_map_items)
        .set_module_resolver(RefuseImports)
        .disable_symbol("eval");
    engine.on_progress(|operations| {
        if memory::over_budget() {
            Some(Dynamic::from(MEMORY_TOKEN))
        } else if operations % DEADLINE_CHECK_EVERY == 0 && run_state::deadline_passed() {
            Some(Dynamic::from(TIMEOUT_TOKEN))
        } else {
            None
        }
    });
    engine.on_print(sdk::log::print);
    engine.on_debug(|text, _source, _pos| sdk::log::print(text));
    let env_secrets = env.clone();
    engine.register_static_module("kv", Arc::new(sdk::kv::module(env)));
    engine.register_static_module("log", Arc::new(sdk::log::module()));
    engine.register_static_module("secrets", Arc::new(sdk::secrets::module(env_secrets)));
    engine
}

/// Refuses every `import`: scripts are self-contained.
struct RefuseImports;

impl ModuleResolver for RefuseImports {
    fn resolve(
        &self,
        _engine: &Engine,
        _source: Option<&str>,
        _path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        Err(Box::new(EvalAltResult::ErrorRuntime(
            "import is not allowed: scripts cannot load modules; use the built-in SDK (kv::, log::)"
                .into(),
            pos,
        )))
    }
}
