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
//! here is testable with the in-memory fakes in [`testing`].
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
//! [`Executor::run`] is synchronous. Callers run it on a blocking thread
//! (`tokio::task::spawn_blocking`); SDK calls drive their async service call
//! with `Handle::block_on` on that thread, so runtime workers never block.
//! The tokio runtime needs its time driver (`enable_all`). Install
//! [`memory::CountingAllocator`] as the binary's global allocator so the
//! per-run memory budget is enforced (see [`memory`] for why). Build the
//! runtime with `thread_stack_size(`[`SCRIPT_THREAD_STACK_BYTES`]`)`: Rhai
//! clones, checks and drops nested values recursively, so a script that
//! nests arrays thousands deep (`loop { a = [a]; }`, allowed by the item
//! limits) overflows tokio's default 2 MiB stack and aborts the process.

#![warn(missing_docs)]

mod convert;
mod error;
mod executor;
mod limits;
pub mod memory;
mod run_state;
mod sandbox;
mod sdk;
pub mod testing;

pub use error::RunError;
pub use executor::{Executor, RequestInfo, RunContext, ScriptHandle, Services};
pub use limits::SandboxLimits;

/// Stack size for the threads that run scripts (tokio's `thread_stack_size`).
///
/// Nesting depth is bounded only by the item limits (100,000 each for arrays
/// and maps) and by the run's time, and Rhai recurses once per level when it
/// clones, size-checks or drops a value: a debug build overflowed a 2 MiB
/// stack below 4,000 levels. 64 MiB is reserved, not committed: its pages are
/// touched only by scripts that nest deeply.
pub const SCRIPT_THREAD_STACK_BYTES: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests;

#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: memory::CountingAllocator = memory::CountingAllocator;
