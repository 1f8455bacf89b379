//! Cost of a cached script run and of a `kv::get` round trip through the
//! in-memory fake. Plain `main`, no harness: `cargo bench -p
//! picloud-executor-core` prints one line per case (set `N` to change the
//! number of runs, default 200,000).

use picloud_executor_core::memory::{self, CountingAllocator};
use picloud_executor_core::testing::MemoryKv;
use picloud_executor_core::{
    Executor, RequestInfo, RunContext, SandboxLimits, ScriptHandle, Services,
};
use picloud_shared::ids::{AppId, ScriptId};
use picloud_shared::kv::KvService;
use picloud_shared::triggers::CallContext;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

// As in the binary: the allocator that enforces the per-run memory budget.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn main() {
    let runs: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let kv = Arc::new(MemoryKv::new());
    let app = AppId::new();
    runtime
        .block_on(kv.set(
            &CallContext::for_app(app),
            "bench",
            "k",
            json!({"n": 1, "tags": ["a", "b"]}),
        ))
        .expect("seed kv");
    let executor = Executor::new(
        SandboxLimits::default(),
        Services {
            kv,
            secrets: Arc::new(picloud_executor_core::testing::MemorySecrets::new()),
            pubsub: Arc::new(picloud_executor_core::testing::MemoryPubsub::default()),
            email: Arc::new(picloud_executor_core::testing::RecordingEmail::default()),
            realtime: Arc::new(picloud_executor_core::testing::MemoryRealtime),
        },
        runtime.handle().clone(),
    );
    println!(
        "executor bench: {runs} runs per case, counting allocator installed: {}",
        memory::is_installed()
    );

    bench(&executor, app, "unit script `()`", "()", json!(null), runs);
    bench(
        &executor,
        app,
        "cached trivial script",
        "let b = ctx.request.body; b.n + 1",
        json!({"n": 41}),
        runs,
    );
    bench(
        &executor,
        app,
        "kv::get round trip (in-memory fake)",
        r#"kv::get("bench", "k")"#,
        json!(null),
        runs,
    );
}

fn bench(executor: &Executor, app: AppId, name: &str, source: &str, body: Value, runs: usize) {
    let script = ScriptHandle {
        id: ScriptId::new(),
        version: 1,
        name: "bench".into(),
        source: source.into(),
    };
    let ctx = || RunContext {
        app_id: app,
        trigger: "http",
        request: Some(RequestInfo {
            body: body.clone(),
            headers: vec![("content-type".into(), "application/json".into())],
        }),
        event: None,
        trigger_depth: 0,
        origin_principal: None,
        chain_id: None,
    };
    for _ in 0..runs.min(1000) {
        executor.run(&script, ctx()).expect("warm-up run");
    }
    let mut nanos: Vec<u64> = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let ctx = ctx();
        let t = Instant::now();
        let result = executor.run(&script, ctx);
        nanos.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(result.expect("run"));
    }
    let total = started.elapsed();
    nanos.sort_unstable();
    let micros = |ns: u64| ns as f64 / 1000.0;
    let mean = nanos.iter().sum::<u64>() as f64 / runs.max(1) as f64 / 1000.0;
    let pick = |q: f64| micros(nanos[((runs as f64 * q) as usize).min(runs.saturating_sub(1))]);
    println!(
        "{name}: mean {mean:.2} µs, p50 {:.2} µs, p99 {:.2} µs ({runs} runs in {:.2} s)",
        pick(0.50),
        pick(0.99),
        total.as_secs_f64()
    );
}
