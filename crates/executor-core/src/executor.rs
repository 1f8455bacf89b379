//! [`Executor`]: compiles scripts (with an AST cache keyed by script id and
//! version), builds each run's `ctx`, runs the script in the sandbox and
//! turns the outcome into JSON or a [`RunError`].

use crate::convert::{dynamic_to_json, json_to_dynamic};
use crate::error::{compile_error, compile_run_error, RunError};
use crate::memory;
use crate::run_state::{self, RunState};
use crate::sandbox;
use crate::sdk::SdkEnv;
use crate::SandboxLimits;
use picloud_shared::ids::{AppId, ScriptId};
use picloud_shared::script::{CompileError, ScriptCompiler};
use picloud_shared::{kv::KvService, secrets::SecretsService};
use rhai::{Dynamic, Engine, Map, Scope, AST};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

/// The services the SDK modules call; one per executor, shared by every run.
#[derive(Clone)]
pub struct Services {
    /// Backs `kv::`.
    pub kv: Arc<dyn KvService>,
    /// Backs `secrets::`.
    pub secrets: Arc<dyn SecretsService>,
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
}

/// Runs scripts in the sandbox; `Send + Sync`, meant to be shared in an `Arc`
/// by many blocking threads at once.
pub struct Executor {
    engine: Engine,
    limits: SandboxLimits,
    max_memory_bytes: usize,
    cache: RwLock<HashMap<ScriptId, CachedAst>>,
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
        });
        Self {
            engine: sandbox::build_engine(&limits, env),
            limits,
            max_memory_bytes: memory::DEFAULT_MAX_MEMORY_BYTES,
            cache: RwLock::new(HashMap::new()),
            compiles: AtomicU64::new(0),
        }
    }

    /// Runs `script` to completion and returns its value as JSON.
    ///
    /// Synchronous and possibly long (up to the timeout): call it from a
    /// blocking thread (`spawn_blocking`), never from an async task — SDK
    /// calls use `Handle::block_on`, which panics inside async code.
    pub fn run(
        &self,
        script: &ScriptHandle,
        ctx: RunContext,
    ) -> Result<serde_json::Value, RunError> {
        let ast = self.ast_for(script)?;
        let state = RunState {
            app_id: ctx.app_id,
            script_name: script.name.clone(),
            trigger: ctx.trigger,
            deadline: Instant::now().checked_add(self.limits.timeout),
        };
        let ctx_app = ctx.app_id;
        let mut scope = Scope::new();
        scope.push("ctx", build_ctx(script, ctx));

        let guard = run_state::enter(state);
        let memory_guard = memory::start_run(self.max_memory_bytes);
        // A panic inside Rhai is a bug of the engine, not of the caller: report
        // it as a failed run. The engine is only read during a run, so it stays sound.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
        }));
        drop(memory_guard);
        drop(guard);

        let Ok(outcome) = outcome else {
            tracing::error!(
                app_id = %ctx_app,
                script = %script.name,
                "the script engine panicked"
            );
            return Err(RunError::script_at(
                "the script engine failed unexpectedly".into(),
                rhai::Position::NONE,
            ));
        };
        match outcome {
            Ok(value) => dynamic_to_json(&value).map_err(|err| {
                RunError::script_at(
                    format!(
                        "cannot convert the result to JSON: {}",
                        err.describe("result")
                    ),
                    rhai::Position::NONE,
                )
            }),
            Err(err) => Err(RunError::from_eval(
                *err,
                &self.limits,
                self.max_memory_bytes,
            )),
        }
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
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
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

    /// The cached AST of this version, or a fresh compile that then replaces
    /// any older version of the same script.
    fn ast_for(&self, script: &ScriptHandle) -> Result<Arc<AST>, RunError> {
        {
            let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cached) = cache.get(&script.id) {
                if cached.version == script.version {
                    return Ok(cached.ast.clone());
                }
            }
        }
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let ast = Arc::new(
            self.engine
                .compile(&*script.source)
                .map_err(|err| compile_run_error(&err))?,
        );
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let newer_cached = cache
            .get(&script.id)
            .is_some_and(|cached| cached.version > script.version);
        if !newer_cached {
            cache.insert(
                script.id,
                CachedAst {
                    version: script.version,
                    ast: ast.clone(),
                },
            );
        }
        Ok(ast)
    }
}

impl ScriptCompiler for Executor {
    fn check(&self, source: &str) -> Result<(), CompileError> {
        self.engine
            .compile(source)
            .map(drop)
            .map_err(|err| compile_error(&err))
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
