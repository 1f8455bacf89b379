//! Realtime under load (issue #18): `SUBSCRIBERS` (1,000) SSE subscribers on one
//! topic while messages are published at a steady `RATE` (100/s) for `SECS`
//! (10) seconds, through picloud (token check, `NOTIFY` on the embedded
//! PostgreSQL `serve --dev` runs, the listener, the hub) and, in the same run,
//! through a bare axum SSE broadcast (`tokio::sync::broadcast`, no auth, no
//! database) built here as the ceiling. Prints delivered messages/s, missing
//! deliveries, p50/p99 publish-to-receive latency, and the ratios. Plain
//! `main`: `cargo bench -p picloud --bench realtime`.

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
    Router,
};
use picloud::{
    connections::{serve, ConnectionLimits},
    embedded_pg::{DataDirLock, EmbeddedPostgres},
    http::{build_router, build_state},
    realtime,
};
use picloud_executor_core::memory::CountingAllocator;
use picloud_manager_core::MIGRATOR;
use picloud_shared::{
    crypto::{Keyring, MasterKey},
    ids::AppId,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::{
    convert::Infallible,
    os::unix::fs::PermissionsExt,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// The clock publish times are taken on (one process: the same for both ends).
static START: OnceLock<Instant> = OnceLock::new();

fn micros() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one run measured.
struct Measured {
    delivered: u64,
    expected: u64,
    secs: f64,
    latencies: Vec<u64>,
}

impl Measured {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[at] as f64 / 1000.0
    }

    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    fn print(&self, name: &str) {
        println!(
            "{name}: delivered {} of {} ({:.0} messages/s), latency p50 {:.2} ms, p99 {:.2} ms",
            self.delivered,
            self.expected,
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
        );
    }
}

/// The load: subscribers, and messages a second for how long.
#[derive(Clone, Copy)]
struct Load {
    subscribers: u64,
    rate: u64,
    secs: u64,
}

/// Where subscribers connect: address, path, and each one's `Authorization`
/// value (a token holds at most 16 streams; none for the bare broadcast).
struct Target {
    addr: std::net::SocketAddr,
    path: String,
    auths: Vec<String>,
}

/// Opens the load's SSE connections to `target`, waits for `ready`,
/// publishes with `publish` at the load's rate, and collects every client's latencies.
async fn load<F, Fut>(target: Target, load: Load, ready: impl Fn() -> bool, publish: F) -> Measured
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Load {
        subscribers,
        rate,
        secs,
    } = load;
    let Target { addr, path, auths } = target;
    let messages = rate * secs;
    let mut clients = Vec::new();
    for client in 0..subscribers {
        let path = path.clone();
        let auth = auths.get(client as usize).cloned();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{}\r\n",
            auth.map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default()
        );
        stream.write_all(head.as_bytes()).await.expect("request");
        clients.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            let mut latencies = Vec::with_capacity(messages as usize);
            while latencies.len() < messages as usize {
                let next = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
                let Ok(Ok(Some(line))) = next else { break };
                // Chunked framing lines are skipped: only `data:` lines count.
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Some(sent) = serde_json::from_str::<serde_json::Value>(data)
                        .ok()
                        .and_then(|v| v["t"].as_u64())
                    {
                        latencies.push(micros().saturating_sub(sent));
                    }
                }
            }
            latencies
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "subscribers did not all connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for _ in 0..messages {
        tick.tick().await;
        publish(micros()).await;
    }
    let secs_taken = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.expect("client"));
    }
    latencies.sort_unstable();
    Measured {
        delivered: latencies.len() as u64,
        expected: messages * subscribers,
        secs: secs_taken,
        latencies,
    }
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        max_connections: 8192,
        idle_timeout: Duration::from_secs(60),
    }
}

fn main() {
    let subscribers = env("SUBSCRIBERS", 1000);
    let rate = env("RATE", 100).max(1);
    let secs = env("SECS", 10).max(1);
    picloud::config::raise_open_file_limit();
    micros();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
    println!(
        "realtime bench: {subscribers} subscribers, {rate} messages/s for {secs} s; {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(pg.database_url())
            .await
            .expect("connect");
        MIGRATOR.run(&pool).await.expect("migrate");
        let keyring = Arc::new(Keyring::new(MasterKey::generate(), Vec::new()));
        let state = build_state(pool.clone(), picloud::config::AppConfig::default(), keyring)
            .expect("state");
        tokio::spawn(realtime::listen(
            pool.clone(),
            state.hub.clone(),
            state.realtime.clone(),
        ));
        let app = state.apps.create("bench").await.expect("app").id;
        // A token per subscriber, as each browser would have its own.
        let mut auths = Vec::new();
        for _ in 0..subscribers {
            let token = state
                .realtime
                .mint(app, vec!["load".into()], 3600)
                .await
                .expect("token")
                .token;
            auths.push(format!("Bearer {token}"));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(
            listener,
            build_router(state.clone()),
            limits(),
            std::future::pending(),
        ));
        let metrics = state.metrics.clone();
        let the_load = Load {
            subscribers,
            rate,
            secs,
        };
        let picloud = load(
            Target {
                addr,
                path: format!("/api/v1/apps/{}/realtime?topics=load", app.0),
                auths,
            },
            the_load,
            || metrics.realtime_subscribers.get() as u64 >= subscribers,
            |t| {
                let pool = pool.clone();
                async move {
                    picloud_manager_core::service::realtime::publish(
                        &pool,
                        AppId(app.0),
                        "load",
                        &json!({"t": t}),
                    )
                    .await
                    .expect("publish");
                }
            },
        )
        .await;
        picloud.print("picloud");

        // The ceiling: the same load through a bare broadcast.
        let (sender, _) = broadcast::channel::<Arc<str>>(4096);
        let bare = Router::new()
            .route("/sse", get(bare_sse))
            .with_state(sender.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, bare, limits(), std::future::pending()));
        let counted = sender.clone();
        let ceiling = load(
            Target {
                addr,
                path: "/sse".into(),
                auths: Vec::new(),
            },
            the_load,
            || counted.receiver_count() as u64 >= subscribers,
            |t| {
                let _ = sender.send(json!({"t": t}).to_string().into());
                async {}
            },
        )
        .await;
        ceiling.print("bare axum broadcast");
        println!(
            "ratio (picloud / bare): delivered rate {:.2}, p50 {:.2}x, p99 {:.2}x",
            picloud.rate() / ceiling.rate(),
            picloud.percentile(0.5) / ceiling.percentile(0.5),
            picloud.percentile(0.99) / ceiling.percentile(0.99),
        );
    });
    runtime.block_on(pg.stop()).ok();
}

async fn bare_sse(
    State(sender): State<broadcast::Sender<Arc<str>>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(sender.subscribe(), |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(data) => return Some((Ok(Event::default().data(data.as_ref())), receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
