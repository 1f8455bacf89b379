//! The HTTP surface: one router built from per-resource modules.
//!
//! Every route is registered through `utoipa_axum::routes!`, which adds the
//! handler and its OpenAPI entry together, so a route cannot exist without
//! documentation.

pub mod admin;
pub mod auth;
pub mod contract;
pub mod error;
pub mod extract;
pub mod inbound;
pub mod invoke;
pub mod realtime;
pub mod system;

use crate::{
    cache_sync::Caches, config::AppConfig, email_config::EmailConfig, metrics::Metrics,
    script_cache::ScriptCache,
};
use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    Router,
};
use picloud_executor_core::{Executor, PooledCompiler, ScriptPool, Services};
use picloud_manager_core::{
    email::smtp::SmtpTransport,
    service::{
        api_keys::ApiKeysService,
        apps::AppsService,
        dead_letters::DeadLettersService,
        email::{EmailServiceImpl, EmailSettings},
        events::EventPolicy,
        inbound::InboundService,
        kv::KvServiceImpl,
        pubsub::PubsubServiceImpl,
        realtime::RealtimeServiceImpl,
        scripts::ScriptsService,
        secrets::SecretsServiceImpl,
        triggers::TriggersService,
    },
};
use picloud_shared::{crypto::Keyring, email::EmailTransport, secrets::SecretsService};
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use tower_http::trace::TraceLayer;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_axum::router::OpenApiRouter;

/// Everything a handler needs, cloned cheaply into each request.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub apps: AppsService,
    pub scripts: ScriptsService,
    pub api_keys: ApiKeysService,
    pub secrets: Arc<dyn SecretsService>,
    pub triggers: TriggersService,
    pub dead_letters: DeadLettersService,
    /// Outbound email: policy, caps, idempotency, the relay.
    pub email: EmailServiceImpl,
    /// Inbound email: signatures, parsing, deduplicated delivery.
    pub inbound: InboundService,
    /// The per-URL rate limit of the inbound endpoints.
    pub inbound_limiter: inbound::InboundLimiter,
    /// Realtime signing keys and subscriber tokens.
    pub realtime: RealtimeServiceImpl,
    /// This process's realtime subscribers.
    pub hub: crate::realtime::Hub,
    /// The trigger-chain depth limit and its drop counter, shared by every event writer.
    pub events: EventPolicy,
    pub executor: Arc<Executor>,
    /// The bounded script pool every run and compile goes through.
    pub script_pool: ScriptPool,
    /// API keys and scripts in memory; admin writes invalidate through `Caches::apply`.
    pub caches: Caches,
    pub metrics: Metrics,
    pub config: Arc<AppConfig>,
    /// Bytes of request bodies being read, server-wide (see `extract::read_body`).
    pub body_budget: extract::BodyBudget,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    openapi_json: Arc<OnceLock<String>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "picloud", description = "Self-hosted backend platform: apps, Rhai scripts, kv, secrets."),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pk_...")
                    .build(),
            ),
        );
    }
}

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(admin::routes())
        .merge(invoke::routes())
        .merge(inbound::routes())
        .merge(realtime::routes())
        .merge(system::routes())
}

/// The OpenAPI document of every route, with the shared error statuses and links.
pub fn openapi() -> serde_json::Value {
    finished_document(routes().into_openapi())
}

fn finished_document(doc: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    contract::finish(&mut doc);
    doc
}

/// Builds the application over a migrated database, sealing secrets with
/// `keyring` (a parameter, so tests never touch process env). Call inside a
/// tokio runtime. Fails only when the script pool's threads cannot start.
pub fn build_app(
    pool: impl Into<Pools>,
    config: AppConfig,
    keyring: Arc<Keyring>,
) -> std::io::Result<Router> {
    build_app_with_caches(pool, config, keyring).map(|(router, _)| router)
}

/// [`build_app`], also handing out its caches so a server can keep them in step
/// with other processes (`cache_sync::listen`).
pub fn build_app_with_caches(
    pool: impl Into<Pools>,
    config: AppConfig,
    keyring: Arc<Keyring>,
) -> std::io::Result<(Router, Caches)> {
    let state = build_state(pool, config, keyring)?;
    let caches = state.caches.clone();
    Ok((build_router(state), caches))
}

/// The server's two connection pools.
#[derive(Clone)]
pub struct Pools {
    /// The admin API, the dispatcher, the scheduler: statements as long as they need.
    pub system: PgPool,
    /// The services behind SDK calls: each statement bounded by
    /// `PICLOUD_SDK_TIMEOUT_MS` (`database::pool_options`), so a call that
    /// times out did not take effect.
    pub sdk: PgPool,
}

impl From<PgPool> for Pools {
    /// One pool for both (tests).
    fn from(pool: PgPool) -> Self {
        Pools {
            system: pool.clone(),
            sdk: pool,
        }
    }
}

/// Everything the server runs on: services, the script pool, caches, metrics.
/// The router and the dispatcher are built over it. Call inside a tokio
/// runtime; fails only when the script pool's threads cannot start.
pub fn build_state(
    pools: impl Into<Pools>,
    config: AppConfig,
    keyring: Arc<Keyring>,
) -> std::io::Result<AppState> {
    let Pools { system: pool, sdk } = pools.into();
    let script_pool = ScriptPool::start(config.script_pool.clone())?;
    let events = EventPolicy::new(config.max_trigger_depth, config.max_chain_events)
        .with_max_pending_per_app(config.max_pending_events_per_app);
    let kv = Arc::new(KvServiceImpl::with_events(
        sdk.clone(),
        config.kv_max_value_bytes,
        events.clone(),
    ));
    // A published message is held to the size of a kv value.
    let pubsub = Arc::new(PubsubServiceImpl::new(
        sdk.clone(),
        config.kv_max_value_bytes,
        events.clone(),
    ));
    let secrets: Arc<dyn SecretsService> = Arc::new(SecretsServiceImpl::new(
        sdk.clone(),
        keyring.clone(),
        config.secret_max_value_bytes,
    ));
    let inbound = InboundService::new(pool.clone(), keyring.clone(), config.public_url.clone());
    let realtime = RealtimeServiceImpl::new(
        pool.clone(),
        keyring.clone(),
        config.realtime_key_grace_secs,
    );
    let triggers = TriggersService::new(pool.clone(), keyring, config.public_url.clone())
        .with_max_per_app(config.max_triggers_per_app);
    let email = EmailServiceImpl::new(
        sdk,
        email_transport(&config.email),
        EmailSettings {
            default_from: config.email.from.clone(),
            max_message_bytes: config.email.max_message_bytes,
            send_timeout: config.limits.sdk_timeout,
        },
    );
    let executor = Arc::new(
        Executor::new(
            config.limits.clone(),
            Services {
                kv,
                secrets: secrets.clone(),
                pubsub,
                email: Arc::new(email.clone()),
                realtime: Arc::new(realtime.clone()),
            },
            tokio::runtime::Handle::current(),
        )
        .with_ast_cache_bytes(config.ast_cache_bytes),
    );
    let api_keys = ApiKeysService::new(pool.clone());
    let metrics = Metrics::new();
    let state = AppState {
        apps: AppsService::new(pool.clone()),
        scripts: ScriptsService::new(
            pool.clone(),
            Arc::new(PooledCompiler::new(script_pool.clone(), executor.clone())),
        ),
        caches: Caches {
            auth: auth::AuthCache::new(api_keys.clone()),
            scripts: ScriptCache::default(),
            executor: executor.clone(),
            resyncs: Arc::default(),
        },
        api_keys,
        secrets,
        triggers,
        dead_letters: DeadLettersService::new(pool.clone(), events.clone()),
        email,
        inbound,
        inbound_limiter: inbound::InboundLimiter::new(config.inbound_rate_per_min),
        realtime,
        hub: crate::realtime::Hub::new(metrics.clone(), config.realtime_streams),
        events,
        executor,
        script_pool,
        metrics,
        body_budget: extract::BodyBudget::new(config.max_body_buffer_bytes),
        body_timeout: config.body_timeout,
        config: Arc::new(config),
        openapi_json: Arc::default(),
        pool,
    };
    Ok(state)
}

/// The SMTP transport of `config`, or `None` when email is disabled.
fn email_transport(config: &EmailConfig) -> Option<Arc<dyn EmailTransport>> {
    let settings = config.smtp.as_ref()?;
    match SmtpTransport::new(settings) {
        Ok(transport) => Some(Arc::new(transport)),
        Err(problem) => {
            tracing::warn!(
                problem,
                "outbound email is disabled: the SMTP transport cannot be built"
            );
            None
        }
    }
}

/// The HTTP application over `state`.
pub fn build_router(state: AppState) -> Router {
    let max_request_bytes = state.config.max_request_bytes;
    let (router, doc) = routes().split_for_parts();
    let doc_json = finished_document(doc).to_string();
    let _ = state.openapi_json.set(doc_json);
    router
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(
            // Spans carry the route template only: never query strings or bodies.
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::info_span!("request", method = %req.method(), route)
            }),
        )
        .with_state(state)
}
