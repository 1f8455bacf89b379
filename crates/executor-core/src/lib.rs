//! picloud-executor-core: runs an app's Rhai scripts in a sandbox.
//!
//! It owns the one shared Rhai engine and its sandbox configuration
//! (`sandbox`), the compiled-AST cache keyed by (script id, version), the
//! `ctx` each run sees and the conversion of its result to JSON
//! ([`Executor`]), the mapping of Rhai failures to [`RunError`], and the SDK
//! bridges scripts call (`sdk::kv`, `sdk::log`).
//!
//! It knows nothing of Postgres or HTTP: storage is reached only through the
//! service traits of `picloud-shared` (`Arc<dyn KvService>`), so everything
//! here is testable with the in-memory fakes in `testing` (feature `testing`).
//!
//! # What a script sees
//!
//! - `ctx`: `#{app_id, script: #{id, name}, request: #{body, headers} or (),
//!   event: map or ()}`. Header names are lower-case; `Authorization`,
//!   `Proxy-Authorization` and `Cookie` are never present. `ctx` is a
//!   top-level variable: Rhai functions do not see globals, so pass it to
//!   them as an argument.
//! - The script's final value is the result: `()` → `null`, maps → objects,
//!   arrays → arrays, integers and floats → numbers. A value with no JSON
//!   form (a function pointer, NaN) is a script error.
//! - SDK calls take effect when they return, each on its own: a script that
//!   throws after `kv::set` leaves that write in place (as Cloudflare Workers
//!   do). SDK failures are catchable: `try { … } catch (e) { e.kind }` where
//!   `e` is `#{kind, message}`.
//!
//! # Threads
//!
//! [`Executor::run`] is synchronous. Callers run it on the [`ScriptPool`]
//! (bounded, fair, threads with [`script_stack_bytes`] of stack); SDK
//! calls drive their async service call with `Handle::block_on` on that
//! thread, so runtime workers never block. The tokio runtime needs its time
//! driver (`enable_all`). Install [`memory::CountingAllocator`] as the
//! binary's global allocator so the per-run memory budget is enforced (see
//! [`memory`] for why). Script saves compile on the pool too
//! ([`PooledCompiler`]).

#![warn(missing_docs)]

mod builtins;
mod compiler;
mod convert;
mod error;
mod executor;
mod limits;
pub mod memory;
pub mod pool;
mod reclaim;
mod render;
mod run_state;
mod sandbox;
mod sdk;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod watchdog;

pub use compiler::PooledCompiler;
pub use convert::json_container_items;
pub use error::RunError;
pub use executor::{
    Executor, RequestInfo, RunContext, ScriptHandle, Services, DEFAULT_AST_CACHE_BYTES,
};
pub use limits::SandboxLimits;
pub use pool::{Admission, PoolConfig, PoolError, PoolStats, ScriptPool};

/// Stack bytes a script thread needs per byte of its memory budget.
///
/// Rhai clones, size-checks, compares and drops nested values recursively,
/// and a chain of closures that each capture the previous one (`f = || g.call()`)
/// nests without any item limit: only the memory budget bounds its depth.
/// Measured on a debug build (2026-12-01): such a chain costs about 100 heap
/// bytes and 500–600 stack bytes per level when it is dropped, a ratio near 5;
/// release builds use less stack per level. 8 leaves room.
pub const STACK_BYTES_PER_BUDGET_BYTE: usize = 8;

/// Stack bytes a script thread needs per nesting level of arrays and maps.
///
/// Measured on a debug build (2026-12-01): `a = [a]` needs about 1.6 KiB and
/// `a = #{x: a}` about 2 KiB per level; their depth is bounded by the item
/// limits (nested items count).
pub const STACK_BYTES_PER_ITEM: usize = 4 * 1024;

/// The stack a script thread needs so that no value the limits allow can
/// overflow it: the larger of what the memory budget and the item limits permit.
/// Reserved, not committed: pages are touched only by scripts that nest deeply.
pub fn script_stack_bytes(limits: &SandboxLimits, max_memory_bytes: usize) -> usize {
    let by_memory = max_memory_bytes.saturating_mul(STACK_BYTES_PER_BUDGET_BYTE);
    let by_items = (limits.max_array_items.saturating_add(limits.max_map_items))
        .saturating_mul(STACK_BYTES_PER_ITEM);
    by_memory.max(by_items).max(MIN_SCRIPT_STACK_BYTES)
}

/// The smallest script thread stack, whatever the limits.
const MIN_SCRIPT_STACK_BYTES: usize = 8 * 1024 * 1024;

#[cfg(test)]
mod tests;

#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: memory::CountingAllocator = memory::CountingAllocator;
