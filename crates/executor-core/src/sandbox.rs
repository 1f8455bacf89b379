//! The one Rhai [`Engine`] every run shares, configured as a sandbox.
//!
//! What a script cannot do, and how each rule is enforced:
//! - run forever: `max_operations`, plus a wall-clock deadline checked from
//!   `on_progress` after every operation (a flag the `watchdog` flips; the
//!   clock itself is read every [`DEADLINE_CHECK_EVERY`] operations too, in
//!   case the watchdog thread is starved); SDK calls, which `on_progress`
//!   cannot interrupt, carry their own timeout (see `sdk`); built-ins that
//!   work long inside one call are replaced (see `builtins`); compiling stops
//!   at its own deadline through the token hook;
//! - exhaust memory: string, array and map size limits, a per-run memory
//!   budget checked after every operation (see `memory`), and byte budgets
//!   for every conversion of a value to text or JSON (`render`, `convert`);
//! - exhaust the stack: call-depth and expression-depth limits;
//! - escape: no `eval` (disabled symbol), no `import` (a resolver that
//!   refuses every path — Rhai's `no_module` feature would also remove the
//!   `kv::` namespaces), no stdout (`print`/`debug` go to `tracing`).

use crate::builtins;
use crate::memory;
use crate::run_state;
use crate::sdk::{self, SdkEnv};
use crate::watchdog;
use crate::SandboxLimits;
use rhai::module_resolvers::ModuleResolver;
use rhai::{Dynamic, Engine, EvalAltResult, LexError, Module, Position, Shared, Token};
use std::sync::Arc;

/// How often, in operations, a run compares the clock with its deadline.
pub(crate) const DEADLINE_CHECK_EVERY: u64 = 1024;

/// The termination token of a run that passed its deadline.
pub(crate) const TIMEOUT_TOKEN: &str = "timeout";
/// The termination token of a run that exceeded its memory budget.
pub(crate) const MEMORY_TOKEN: &str = "memory";
/// The termination token of a run whose text output passed the string limit
/// inside a call that could not fail (see `builtins::text_of`).
pub(crate) const STRING_TOKEN: &str = "string";
/// The lexer error that stops a compile at its deadline.
pub(crate) const COMPILE_TIMEOUT_MARK: &str = "compile time limit reached";

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
        .disable_symbol("eval")
        // Rhai's optimiser propagates constants in time quadratic in the number
        // of variables and offers no hook to stop it (a 440 KB script took 40 s
        // after parsing); the parser alone is bounded by the token hook below.
        .set_optimization_level(rhai::OptimizationLevel::None);
    engine.on_progress(|operations| {
        if watchdog::expired() {
            Some(Dynamic::from(TIMEOUT_TOKEN))
        } else if memory::over_budget() {
            Some(Dynamic::from(MEMORY_TOKEN))
        } else if run_state::pending_limit().is_some() {
            Some(Dynamic::from(STRING_TOKEN))
        } else if operations % DEADLINE_CHECK_EVERY == 0 && run_state::deadline_passed() {
            Some(Dynamic::from(TIMEOUT_TOKEN))
        } else {
            None
        }
    });
    // The parser has no progress hook; its token hook is where a compile can stop.
    #[allow(deprecated)]
    engine.on_parse_token(|token, _pos, _state| {
        if watchdog::expired() {
            Token::LexError(Box::new(LexError::Runtime(COMPILE_TIMEOUT_MARK.into())))
        } else {
            token
        }
    });
    builtins::register(&mut engine);
    engine.on_print(sdk::log::print);
    engine.on_debug(|text, _source, _pos| sdk::log::print(text));
    let env_secrets = env.clone();
    let env_pubsub = env.clone();
    let env_email = env.clone();
    let env_realtime = env.clone();
    engine.register_static_module("kv", Arc::new(sdk::kv::module(env)));
    engine.register_static_module("email", Arc::new(sdk::email::module(env_email)));
    engine.register_static_module("pubsub", Arc::new(sdk::pubsub::module(env_pubsub)));
    engine.register_static_module("realtime", Arc::new(sdk::realtime::module(env_realtime)));
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
