//! Behaviour tests of whole runs: a real executor over the in-memory fakes.

mod email;
mod executor;
mod kv;
mod sandbox;

use crate::testing::MemoryKv;
use crate::{Executor, RequestInfo, RunContext, RunError, SandboxLimits, ScriptHandle, Services};
use picloud_shared::ids::{AppId, ScriptId};
use serde_json::Value;
use std::sync::Arc;

/// A runtime, an executor over a [`MemoryKv`], and one app to run scripts as.
struct Harness {
    runtime: tokio::runtime::Runtime,
    executor: Arc<Executor>,
    kv: Arc<MemoryKv>,
    pubsub: Arc<crate::testing::MemoryPubsub>,
    email: Arc<crate::testing::RecordingEmail>,
    app: AppId,
}

impl Harness {
    fn new() -> Self {
        Self::with(SandboxLimits::default(), MemoryKv::new())
    }

    fn with_limits(limits: SandboxLimits) -> Self {
        Self::with(limits, MemoryKv::new())
    }

    fn with(limits: SandboxLimits, kv: MemoryKv) -> Self {
        Self::build(limits, kv, crate::memory::DEFAULT_MAX_MEMORY_BYTES)
    }

    fn with_memory_budget(bytes: usize) -> Self {
        Self::build(SandboxLimits::default(), MemoryKv::new(), bytes)
    }

    fn build(limits: SandboxLimits, kv: MemoryKv, max_memory_bytes: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime");
        let kv = Arc::new(kv);
        let pubsub = Arc::new(crate::testing::MemoryPubsub::default());
        let email = Arc::new(crate::testing::RecordingEmail::default());
        let services = Services {
            kv: kv.clone(),
            secrets: Arc::new(crate::testing::MemorySecrets::new()),
            pubsub: pubsub.clone(),
            email: email.clone(),
            realtime: Arc::new(crate::testing::MemoryRealtime),
        };
        let executor = Arc::new(
            Executor::new(limits, services, runtime.handle().clone())
                .with_max_memory_bytes(max_memory_bytes),
        );
        Self {
            runtime,
            executor,
            kv,
            pubsub,
            email,
            app: AppId::new(),
        }
    }

    /// Runs `source` as a fresh script with an HTTP request whose body is `null`.
    fn run(&self, source: &str) -> Result<Value, RunError> {
        self.run_body(source, Value::Null)
    }

    /// Runs `source` as a fresh script with an HTTP request carrying `body`.
    fn run_body(&self, source: &str, body: Value) -> Result<Value, RunError> {
        self.executor
            .run(&script(source), self.http(body, Vec::new()))
    }

    fn http(&self, body: Value, headers: Vec<(String, String)>) -> RunContext {
        RunContext {
            app_id: self.app,
            trigger: "http",
            request: Some(RequestInfo { body, headers }),
            event: None,
            trigger_depth: 0,
            origin_principal: None,
            chain_id: None,
        }
    }
}

fn script(source: &str) -> ScriptHandle {
    ScriptHandle {
        id: ScriptId::new(),
        version: 1,
        name: "test-script".into(),
        source: source.into(),
    }
}

/// The message of a script error, failing the test on anything else.
fn script_error(result: Result<Value, RunError>) -> String {
    match result {
        Err(RunError::Script { message }) => message,
        other => panic!("expected a script error, got {other:?}"),
    }
}

/// The limit and message of a limit error, failing the test on anything else.
fn limit_error(result: Result<Value, RunError>) -> (&'static str, String) {
    match result {
        Err(RunError::Limit { limit, message }) => (limit, message),
        other => panic!("expected a limit error, got {other:?}"),
    }
}
