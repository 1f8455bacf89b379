//! [`Executor`]: compiles scripts (with an AST cache keyed by script id and
//! version, bounded by memory), builds each run's `ctx`, runs the script in
//! the sandbox and turns the outcome into JSON or a [`RunError`].
//!
//! Compiling is bounded twice: sources above `max_source_bytes` are refused
//! before the parser sees them, and the parser stops at `compile_timeout`
//! (the watchdog flag, checked at every token). The cache charges each AST
//! the bytes its compile kept allocated (measured by the counting allocator;
//! 16 bytes per source byte when it is not installed) and evicts the least
//! recently used entries past its capacity.

use crate::convert::{dynamic_to_json, json_to_dynamic};
use crate::error::{compile_error, compile_run_error, RunError};
use crate::memory;
use crate::run_state::{self, RunState};
use crate::sandbox;
use crate::sdk::SdkEnv;
use crate::watchdog;
use crate::SandboxLimits;
use picloud_shared::email::EmailService;
use picloud_shared::ids::{AppId, ScriptId};
use picloud_shared::pubsub::PubsubService;
use picloud_shared::script::CheckError;
use picloud_shared::{kv::KvService, secrets::SecretsService, ServiceError};
use rhai::{Dynamic, Engine, Map, Scope, AST};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

/// Default capacity of the AST cache, in (measured) bytes.
pub const DEFAULT_AST_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Bytes charged per source byte when allocations cannot be measured.
const AST_BYTES_PER_SOURCE_BYTE: usize = 16;

/// The services the SDK modules call; one per executor, shared by every run.
#[derive(Clone)]
pub struct Services {
    /// Backs `kv::`.
    pub kv: Arc<dyn KvService>,
    /// Backs `secrets::`.
    pub secrets: Arc<dyn SecretsService>,
    /// Backs `pubsub::`.
    pub pubsub: Arc<dyn PubsubService>,
    /// Backs `email::`.
    pub email: Arc<dyn EmailService>,
    /// Backs `realtime::`.
    pub realtime: Arc<dyn picloud_shared::realtime::RealtimeService>,
}

/// The script to run: its identity, version (the cache key) and source.
#[derive(Debug, Clone)]
pub struct ScriptHandle {
    /// The script's id.
    pub id: ScriptId,
    /// Grows by one on every update; a new version is compiled afresh.
    pub version: i64,
    /// The script's name, shown to the script as `ctx.script.name` and in logs.
    pub name: String,
    /// The Rhai source.
    pub source: Arc<str>,
}

/// What a run is about: whose app, why it runs, and its input.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The app the script belongs to; the only app its SDK calls can touch.
    pub app_id: AppId,
    /// Why it runs: `"http"` for invoke, else the trigger kind.
    pub trigger: &'static str,
    /// The HTTP request of an invoke, as `ctx.request`.
    pub request: Option<RequestInfo>,
    /// The trigger event, as `ctx.event`.
    pub event: Option<serde_json::Value>,
    /// 0 for an HTTP invoke; a handler runs at its event's depth. Events the
    /// run causes get one more (the chain limit counts them).
    pub trigger_depth: u32,
    /// The API key the chain started from, passed to every SDK call.
    pub origin_principal: Option<uuid::Uuid>,
    /// The trigger chain a handler belongs to (the id of its root event).
    pub chain_id: Option<i64>,
}

/// The parts of an HTTP request a script sees.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The JSON body, as `ctx.request.body`.
    pub body: serde_json::Value,
    /// Header names and values; `Authorization`, `Proxy-Authorization` and
    /// `Cookie` are dropped here too, whatever the caller passed.
    pub headers: Vec<(String, String)>,
}

/// Headers a script never sees: they carry the caller's credentials.
const HIDDEN_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

struct CachedAst {
    version: i64,
    ast: Arc<AST>,
    bytes: usize,
    last_used: AtomicU64,
}

/// ASTs compiled by [`Executor::check`] kept for the first run of their source.
const MAX_CHECKED_KEPT: usize = 8;

/// An AST a save's compile check produced, waiting for its first run.
struct Checked {
    source: Arc<str>,
    ast: Arc<AST>,
    bytes: usize,
}

/// Compiled ASTs by script, bounded by their measured size.
#[derive(Default)]
struct AstCache {
    entries: HashMap<ScriptId, CachedAst>,
    bytes: usize,
}

/// Runs scripts in the sandbox; `Send + Sync`, meant to be shared in an `Arc`
/// by many blocking threads at once.
pub struct Executor {
    engine: Engine,
    limits: SandboxLimits,
    max_memory_bytes: usize,
    cache: RwLock<AstCache>,
    cache_capacity: usize,
    /// ASTs of recent compile checks, handed to the first run of the same source.
    checked: std::sync::Mutex<std::collections::VecDeque<Checked>>,
    /// A logical clock for least-recently-used eviction.
    uses: AtomicU64,
    compiles: AtomicU64,
}

impl Executor {
    /// Builds the executor and its one shared engine; SDK calls run their
    /// async work on `runtime` (which must have its time driver enabled).
    pub fn new(limits: SandboxLimits, services: Services, runtime: tokio::runtime::Handle) -> Self {
        if !memory::is_installed() {
            tracing::warn!(
                "memory::CountingAllocator is not the global allocator: \
                 the per-run memory budget is not enforced"
            );
        }
        let env = Arc::new(SdkEnv {
            services,
            runtime,
            sdk_timeout: limits.sdk_timeout,
            max_value_bytes: limits.max_value_bytes,
        });
        Self {
            engine: sandbox::build_engine(&limits, env),
            limits,
            max_memory_bytes: memory::DEFAULT_MAX_MEMORY_BYTES,
            cache: RwLock::new(AstCache::default()),
            cache_capacity: DEFAULT_AST_CACHE_BYTES,
            checked: Default::default(),
            uses: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
        }
    }

    /// Runs `script` to completion and returns its value as JSON.
    ///
    /// Synchronous and possibly long (up to the timeout): call it from a
    /// script-pool thread ([`crate::ScriptPool`]), never from an async task — SDK
    /// calls use `Handle::block_on`, which panics inside async code.
    pub fn run(
        &self,
        script: &ScriptHandle,
        ctx: RunContext,
    ) -> Result<serde_json::Value, RunError> {
        // A compile (rare at run time: saves compile, and hand their AST to the
        // first run) has its own bound; the run's clock starts after it, so a
        // slow compile neither fails the run that paid for it nor is lost.
        let ast = self.ast_for(script)?;
        let deadline = Instant::now().checked_add(self.limits.timeout);
        let state = RunState {
            app_id: ctx.app_id,
            trigger_depth: ctx.trigger_depth,
            origin_principal: ctx.origin_principal,
            chain_id: ctx.chain_id,
            script_name: script.name.clone(),
            trigger: ctx.trigger,
            deadline,
            revealed: Vec::new(),
        };
        let ctx_app = ctx.app_id;
        let mut scope = Scope::new();
        scope.push("ctx", build_ctx(script, ctx));

        let guard = run_state::enter(state);
        let armed = watchdog::arm(deadline);
        let memory_guard = memory::start_run(self.max_memory_bytes);
        // A panic inside Rhai is a bug of the engine, not of the caller: report
        // it as a failed run. The engine is only read during a run, so it stays sound.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
        }));
        // A built-in that swallowed the deadline's error, or a limit passed in
        // the run's last call (with no operation after it to stop the run),
        // must not turn into a success.
        let stopped_by = if watchdog::expired() {
            Some(sandbox::TIMEOUT_TOKEN)
        } else {
            run_state::pending_limit().map(|_| sandbox::STRING_TOKEN)
        };
        let result = match outcome {
            Ok(Ok(_)) if stopped_by.is_some() => Err(RunError::from_eval(
                rhai::EvalAltResult::ErrorTerminated(
                    stopped_by.unwrap_or(sandbox::TIMEOUT_TOKEN).into(),
                    rhai::Position::NONE,
                ),
                &self.limits,
                self.max_memory_bytes,
            )),
            Ok(Ok(value)) => dynamic_to_json(&value, self.limits.max_value_bytes).map_err(|err| {
                match err.too_large() {
                    Some(limit) => RunError::Limit {
                        limit: "max_value_bytes",
                        message: format!(
                            "the result is larger than the limit of {limit} bytes for script values"
                        ),
                    },
                    None => RunError::script_at(
                        format!(
                            "cannot convert the result to JSON: {}",
                            err.describe("result")
                        ),
                        rhai::Position::NONE,
                    ),
                }
            }),
            Ok(Err(err)) => Err(RunError::from_eval(
                *err,
                &self.limits,
                self.max_memory_bytes,
            )),
            Err(_) => {
                tracing::error!(
                    app_id = %ctx_app,
                    script = %script.name,
                    "the script engine panicked"
                );
                Err(RunError::script_at(
                    "the script engine failed unexpectedly".into(),
                    rhai::Position::NONE,
                ))
            }
        };
        // Dropped while the budget still applies: freeing a huge result is the run's own work.
        drop(scope);
        drop(memory_guard);
        drop(armed);
        // Error messages were scrubbed of the run's secret values as they were built.
        drop(guard);
        result
    }

    /// Compiles `source` without running it, under the source size limit and
    /// the compile time bound; meant to run on the script pool.
    ///
    /// The compiled AST is kept for the first run of the same source, so a
    /// script saved through this process is compiled once per version.
    pub fn check(&self, source: &str) -> Result<(), CheckError> {
        self.check_source_size(source.len())?;
        let (ast, bytes) = self
            .compile_measured(source)
            .map_err(|err| CheckError::Compile(compile_error(&err, &self.limits)))?;
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        if checked.len() == MAX_CHECKED_KEPT {
            checked.pop_front();
        }
        checked.push_back(Checked {
            source: source.into(),
            ast: Arc::new(ast),
            bytes,
        });
        Ok(())
    }

    /// Compiles under the compile deadline; also answers the bytes the AST
    /// keeps (measured by the counting allocator, else estimated).
    fn compile_measured(&self, source: &str) -> Result<(AST, usize), rhai::ParseError> {
        let _deadline = watchdog::arm(Instant::now().checked_add(self.limits.compile_timeout));
        let before = memory::allocated_on_this_thread();
        let ast = self.engine.compile(source)?;
        let measured = memory::allocated_on_this_thread().wrapping_sub(before);
        let bytes = if memory::is_installed() && measured < isize::MAX as usize {
            measured.max(source.len())
        } else {
            source.len().saturating_mul(AST_BYTES_PER_SOURCE_BYTE)
        };
        Ok((ast, bytes))
    }

    /// The AST a recent [`Executor::check`] compiled from exactly `source`, if kept.
    fn take_checked(&self, source: &str) -> Option<(Arc<AST>, usize)> {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        let index = checked.iter().position(|c| &*c.source == source)?;
        checked.remove(index).map(|c| (c.ast, c.bytes))
    }

    /// Refuses a source above `max_source_bytes` before anything reads it.
    pub fn check_source_size(&self, bytes: usize) -> Result<(), CheckError> {
        if bytes > self.limits.max_source_bytes {
            return Err(CheckError::Refused(ServiceError::TooLarge {
                limit: self.limits.max_source_bytes,
                actual: bytes,
            }));
        }
        Ok(())
    }

    /// Sets the capacity of the AST cache in bytes.
    pub fn with_ast_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Cached ASTs and the bytes charged for them; for tests and metrics.
    pub fn ast_cache_usage(&self) -> (usize, usize) {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        (cache.entries.len(), cache.bytes)
    }

    /// Sets the memory budget of one run in bytes (0: unlimited); enforced only
    /// when [`memory::CountingAllocator`] is the global allocator.
    pub fn with_max_memory_bytes(mut self, bytes: usize) -> Self {
        self.max_memory_bytes = bytes;
        self
    }

    /// The memory budget of one run, in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// Drops the cached AST of script `id` (after an update or a delete).
    pub fn invalidate(&self, id: ScriptId) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = cache.entries.remove(&id) {
            cache.bytes -= old.bytes;
        }
    }

    /// The limits every run is held to.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// How many times a script was compiled for running (cache misses); for tests.
    #[doc(hidden)]
    pub fn compile_count(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// The cached AST of this version, or a fresh compile (under the armed
    /// compile deadline) that then replaces any older version of the script.
    fn ast_for(&self, script: &ScriptHandle) -> Result<Arc<AST>, RunError> {
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        {
            let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = cache.entries.get(&script.id) {
                if cached.version == script.version {
                    cached.last_used.store(tick, Ordering::Relaxed);
                    return Ok(cached.ast.clone());
                }
            }
        }
        if script.source.len() > self.limits.max_source_bytes {
            return Err(RunError::Limit {
                limit: "max_source_bytes",
                message: format!(
                    "the script is {} bytes, above the source limit of {} bytes",
                    script.source.len(),
                    self.limits.max_source_bytes
                ),
            });
        }
        let (ast, bytes) = match self.take_checked(&script.source) {
            Some(checked) => checked,
            None => {
                self.compiles.fetch_add(1, Ordering::Relaxed);
                let (ast, bytes) = self
                    .compile_measured(&script.source)
                    .map_err(|err| compile_run_error(&err, &self.limits))?;
                (Arc::new(ast), bytes)
            }
        };
        self.insert(script, ast.clone(), bytes, tick);
        Ok(ast)
    }

    fn insert(&self, script: &ScriptHandle, ast: Arc<AST>, bytes: usize, tick: u64) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let newer_cached = cache
            .entries
            .get(&script.id)
            .is_some_and(|cached| cached.version > script.version);
        if newer_cached || bytes > self.cache_capacity {
            return;
        }
        if let Some(old) = cache.entries.remove(&script.id) {
            cache.bytes -= old.bytes;
        }
        while cache.bytes + bytes > self.cache_capacity {
            let Some(oldest) = cache
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(evicted) = cache.entries.remove(&oldest) {
                cache.bytes -= evicted.bytes;
            }
        }
        cache.bytes += bytes;
        cache.entries.insert(
            script.id,
            CachedAst {
                version: script.version,
                ast,
                bytes,
                last_used: AtomicU64::new(tick),
            },
        );
    }
}

/// `ctx` as the script sees it: `#{app_id, script: #{id, name}, request, event}`.
fn build_ctx(script: &ScriptHandle, ctx: RunContext) -> Dynamic {
    let mut script_map = Map::new();
    script_map.insert("id".into(), script.id.to_string().into());
    script_map.insert("name".into(), script.name.as_str().into());

    let mut map = Map::new();
    map.insert("app_id".into(), ctx.app_id.to_string().into());
    map.insert("script".into(), script_map.into());
    map.insert(
        "request".into(),
        ctx.request.map_or(Dynamic::UNIT, request_to_dynamic),
    );
    map.insert(
        "event".into(),
        ctx.event.map_or(Dynamic::UNIT, json_to_dynamic),
    );
    map.into()
}

/// `#{body, headers}`; header names lower-cased, repeated headers joined with ", ".
fn request_to_dynamic(request: RequestInfo) -> Dynamic {
    let mut headers = Map::new();
    for (name, value) in request.headers {
        let name = name.to_ascii_lowercase();
        if HIDDEN_HEADERS.contains(&name.as_str()) {
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(existing) => {
                let joined = format!("{existing}, {value}");
                *existing = joined.into();
            }
            None => {
                headers.insert(name.into(), value.into());
            }
        }
    }
    let mut map = Map::new();
    map.insert("body".into(), json_to_dynamic(request.body));
    map.insert("headers".into(), headers.into());
    map.into()
}
