//! What a secret costs: `secrets::get` inside a script against the real database
//! (the embedded cluster `serve --dev` runs, started here in a temp data dir), beside
//! the same script shapes with no SDK call and with `kv::get`, and the raw seal/open
//! throughput of the keyring. Plain `main`, no harness: `cargo bench -p picloud
//! --bench secrets` prints one line per case (`N` sets the script runs, default 20,000).

use picloud::embedded_pg::{DataDirLock, EmbeddedPostgres};
use picloud_executor_core::memory::CountingAllocator;
use picloud_executor_core::{Executor, RunContext, SandboxLimits, ScriptHandle, Services};
use picloud_manager_core::service::{
    apps::AppsService, events::EventPolicy, kv::KvServiceImpl, pubsub::PubsubServiceImpl,
    secrets::SecretsServiceImpl,
};
use picloud_manager_core::MIGRATOR;
use picloud_shared::crypto::{Aad, Keyring, MasterKey};
use picloud_shared::ids::{AppId, ScriptId};
use picloud_shared::kv::KvService;
use picloud_shared::secrets::SecretsService;
use picloud_shared::triggers::CallContext;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

// As in the binary: the allocator that enforces the per-run memory budget.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn main() {
    let runs: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    seal_open_throughput();

    // The postgres user must reach the data dir when this runs as root.
    let tmp = tempfile::Builder::new()
        .prefix("picloud-bench-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod temp dir");
    let lock = DataDirLock::acquire(&tmp.path().join("data")).expect("data-dir lock");
    let mut pg = runtime
        .block_on(EmbeddedPostgres::start(&lock))
        .expect("embedded PostgreSQL");

    let keyring = Arc::new(Keyring::new(MasterKey::generate(), Vec::new()));
    let (executor, app) = runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(pg.database_url())
            .await
            .expect("connect");
        MIGRATOR.run(&pool).await.expect("migrate");
        let app = AppsService::new(pool.clone())
            .create("bench")
            .await
            .expect("create app")
            .id;
        let kv = Arc::new(KvServiceImpl::new(pool.clone(), 256 * 1024));
        let secrets = Arc::new(SecretsServiceImpl::new(pool.clone(), keyring, 64 * 1024));
        secrets
            .set(
                app,
                "api_token",
                json!("sk_live_0123456789abcdef0123456789abcdef"),
            )
            .await
            .expect("seed secret");
        kv.set(
            &CallContext::for_app(app),
            "bench",
            "k",
            json!("0123456789abcdef0123456789abcdef"),
        )
        .await
        .expect("seed kv");
        let executor = Executor::new(
            SandboxLimits::default(),
            Services {
                kv,
                secrets,
                pubsub: Arc::new(PubsubServiceImpl::new(
                    pool.clone(),
                    64 * 1024,
                    EventPolicy::default(),
                )),
                email: Arc::new(picloud_executor_core::testing::RecordingEmail::default()),
                realtime: Arc::new(picloud_executor_core::testing::MemoryRealtime),
            },
            tokio::runtime::Handle::current(),
        );
        (executor, app)
    });

    println!("script runs against the embedded PostgreSQL: {runs} per case");
    let baseline = time_script(&executor, app, "no SDK call", "\"x\"", runs);
    let get = time_script(
        &executor,
        app,
        "secrets::get",
        r#"secrets::get("api_token")"#,
        runs,
    );
    time_script(&executor, app, "kv::get", r#"kv::get("bench", "k")"#, runs);
    println!(
        "secrets::get in a script: p50 {:.1} µs (target < 300 µs), {:.1} µs over a script with no SDK call",
        micros(get.p50),
        micros(get.p50.saturating_sub(baseline.p50))
    );

    drop(executor);
    runtime.block_on(pg.stop()).expect("stop PostgreSQL");
}

/// Quantiles of one case, in nanoseconds.
struct Timing {
    p50: u64,
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn time_script(executor: &Executor, app: AppId, name: &str, source: &str, runs: usize) -> Timing {
    let script = ScriptHandle {
        id: ScriptId::new(),
        version: 1,
        name: "bench".into(),
        source: source.into(),
    };
    let ctx = || RunContext {
        app_id: app,
        trigger: "http",
        request: None,
        event: None,
        trigger_depth: 0,
        origin_principal: None,
        chain_id: None,
    };
    for _ in 0..runs.min(500) {
        executor.run(&script, ctx()).expect("warm-up run");
    }
    let mut nanos: Vec<u64> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let ctx = ctx();
        let started = Instant::now();
        let result = executor.run(&script, ctx);
        nanos.push(started.elapsed().as_nanos() as u64);
        std::hint::black_box(result.expect("run"));
    }
    nanos.sort_unstable();
    let pick = |q: f64| nanos[((runs as f64 * q) as usize).min(runs.saturating_sub(1))];
    println!(
        "{name}: p50 {:.1} µs, p99 {:.1} µs",
        micros(pick(0.50)),
        micros(pick(0.99))
    );
    Timing { p50: pick(0.50) }
}

/// AES-256-GCM seal and open through the keyring, for a token-sized and a 64 KiB value.
fn seal_open_throughput() {
    let keyring = Keyring::new(MasterKey::generate(), Vec::new());
    let app = AppId::new();
    let aad = Aad::Secret {
        app_id: app,
        name: "api_token",
    };
    for (label, size, rounds) in [
        ("64 B", 64usize, 200_000usize),
        ("64 KiB", 64 * 1024, 2_000),
    ] {
        let plaintext = vec![0x5a_u8; size];
        let started = Instant::now();
        let mut sealed = None;
        for _ in 0..rounds {
            sealed = Some(keyring.seal(&plaintext, &aad).expect("seal"));
        }
        let seal_time = started.elapsed();
        let sealed = sealed.expect("at least one round");
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(keyring.open(&sealed, &aad).expect("open"));
        }
        let open_time = started.elapsed();
        let report = |what: &str, time: Duration| {
            let per_sec = rounds as f64 / time.as_secs_f64();
            println!(
                "{what} {label}: {per_sec:.0} ops/s, {:.1} MiB/s, {:.2} µs each",
                per_sec * size as f64 / (1024.0 * 1024.0),
                time.as_secs_f64() * 1e6 / rounds as f64
            );
        };
        report("seal", seal_time);
        report("open", open_time);
    }
}
