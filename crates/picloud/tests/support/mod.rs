//! Test support: the app over a fresh database, and request helpers.

#![allow(dead_code)]

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use picloud::{
    build_app,
    config::AppConfig,
    dispatcher::{self, DispatchConfig, DispatcherHandle},
    http::{build_router, build_state, AppState},
    scheduler,
};
use picloud_executor_core::SandboxLimits;
use picloud_manager_core::service::api_keys::ApiKeysService;
use picloud_shared::{
    auth::Scope,
    crypto::{Keyring, MasterKey},
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tower::ServiceExt;

/// The HTTP app over one test database, with an admin key.
pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    pub admin_key: String,
}

/// A keyring with one fresh random key.
pub fn test_keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new(MasterKey::generate(), Vec::new()))
}

/// Limits small enough that a runaway script ends quickly in a debug build.
pub fn test_config() -> AppConfig {
    AppConfig {
        max_request_bytes: 128 * 1024,
        kv_max_value_bytes: 16 * 1024,
        secret_max_value_bytes: 64 * 1024,
        limits: SandboxLimits {
            timeout: Duration::from_millis(750),
            max_operations: 50_000_000,
            max_string_bytes: 256 * 1024,
            ..SandboxLimits::default()
        },
        ..AppConfig::default()
    }
}

impl TestApp {
    /// Builds the app with `test_config()`.
    pub async fn new(pool: PgPool) -> Self {
        Self::with_config(pool, test_config()).await
    }

    /// Builds the app with a given config.
    pub async fn with_config(pool: PgPool, config: AppConfig) -> Self {
        Self::with_keyring(pool, config, test_keyring()).await
    }

    /// Builds the app sealing with `keyring`.
    pub async fn with_keyring(pool: PgPool, config: AppConfig, keyring: Arc<Keyring>) -> Self {
        let admin_key = ApiKeysService::new(pool.clone())
            .create("test-admin", &[Scope::Admin])
            .await
            .expect("create admin key")
            .key;
        Self {
            router: build_app(pool.clone(), config, keyring).expect("the app builds"),
            pool,
            admin_key,
        }
    }

    /// A new key holding exactly `scopes`.
    pub async fn key_with(&self, scopes: &[Scope]) -> String {
        ApiKeysService::new(self.pool.clone())
            .create("scoped", scopes)
            .await
            .expect("create scoped key")
            .key
    }

    /// Sends a raw request.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("read body")
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    /// Sends a JSON request and parses a JSON answer (`null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let body = match body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let (status, bytes) = self.send(builder.body(body).expect("valid request")).await;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    /// Calls with the admin key.
    pub async fn admin(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let key = self.admin_key.clone();
        self.call(method, uri, Some(&key), body).await
    }

    /// Creates an app and returns its id.
    pub async fn create_app(&self, name: &str) -> String {
        let (status, app) = self
            .admin(
                Method::POST,
                "/api/v1/admin/apps",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        app["id"].as_str().expect("app id").to_owned()
    }

    /// Saves a script and returns its id.
    pub async fn create_script(&self, app: &str, name: &str, source: &str, public: bool) -> String {
        let (status, script) = self
            .admin(
                Method::POST,
                &format!("/api/v1/admin/apps/{app}/scripts"),
                Some(json!({ "name": name, "source": source, "public": public })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{script}");
        script["id"].as_str().expect("script id").to_owned()
    }

    /// Invokes a script with the admin key.
    pub async fn invoke(&self, app: &str, script: &str, body: Value) -> (StatusCode, Value) {
        let key = self.admin_key.clone();
        self.call(
            Method::POST,
            &format!("/api/v1/apps/{app}/invoke/{script}"),
            Some(&key),
            Some(body),
        )
        .await
    }
}

/// A [`TestApp`] whose dispatcher and cron scheduler run, as in `serve`.
pub struct Running {
    pub app: TestApp,
    pub state: AppState,
    dispatcher: DispatcherHandle,
    stop_scheduler: tokio::sync::watch::Sender<bool>,
    scheduler: tokio::task::JoinHandle<()>,
}

/// Dispatcher settings for tests: quick polls, a short lease and grace.
pub fn test_dispatch() -> DispatchConfig {
    DispatchConfig {
        concurrency: 8,
        batch_size: 64,
        lease: Duration::from_secs(10),
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
    }
}

impl TestApp {
    /// The app with its background workers running.
    pub async fn running(pool: PgPool, config: AppConfig) -> Running {
        let admin_key = ApiKeysService::new(pool.clone())
            .create("test-admin", &[Scope::Admin])
            .await
            .expect("create admin key")
            .key;
        let state = build_state(pool.clone(), config, test_keyring()).expect("the app builds");
        let dispatcher = dispatcher::start(&state, test_dispatch());
        let (stop_scheduler, stopped) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(scheduler::run(pool.clone(), stopped));
        Running {
            app: TestApp {
                router: build_router(state.clone()),
                pool,
                admin_key,
            },
            state,
            dispatcher,
            stop_scheduler,
            scheduler,
        }
    }
}

impl Running {
    /// Stops the background workers.
    pub async fn stop(self) {
        let _ = self.stop_scheduler.send(true);
        let _ = self.scheduler.await;
        self.dispatcher.shutdown().await;
    }
}

/// Polls `probe` every 25 ms until it returns `Some`, for at most `within`;
/// panics with `what` otherwise. For effects that happen in the background.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asserts an error response's status and code, returning its message.
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    want_status: StatusCode,
    want_code: &str,
) -> String {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("error message")
        .to_owned()
}
