//! Configuration: every environment variable is read here, once, at start.
//!
//! A bad value fails start-up with one line naming the variable and the fix.

use picloud_executor_core::{
    memory::DEFAULT_MAX_MEMORY_BYTES, script_stack_bytes, PoolConfig, SandboxLimits,
    DEFAULT_AST_CACHE_BYTES,
};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use zeroize::Zeroizing;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}; {fix}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
    pub fix: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings the HTTP application needs; tests build it directly.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Request bodies above this many bytes are refused with 413.
    pub max_request_bytes: usize,
    /// kv values above this many serialised bytes are refused.
    pub kv_max_value_bytes: usize,
    /// Secret values above this many serialised bytes are refused.
    pub secret_max_value_bytes: usize,
    /// The script sandbox.
    pub limits: SandboxLimits,
    /// The script pool's size and shares.
    pub script_pool: PoolConfig,
    /// Capacity of the compiled-script cache, in bytes.
    pub ast_cache_bytes: usize,
    /// The base URL clients reach this server at (`PICLOUD_PUBLIC_URL`), for URLs it hands out.
    pub public_url: String,
    /// Longest trigger chain (`PICLOUD_MAX_TRIGGER_DEPTH`): events deeper are dropped.
    pub max_trigger_depth: u32,
    /// Events the handlers of one trigger chain may enqueue (`PICLOUD_MAX_CHAIN_EVENTS`).
    pub max_chain_events: u32,
    /// Triggers one app may register (`PICLOUD_MAX_TRIGGERS_PER_APP`).
    pub max_triggers_per_app: u32,
    /// Events one app may have waiting before its changes that fire triggers
    /// are refused (`PICLOUD_MAX_PENDING_EVENTS_PER_APP`).
    pub max_pending_events_per_app: u64,
    /// How long a request body may take to arrive (`PICLOUD_HTTP_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Bytes all request bodies being read may hold at once (`PICLOUD_MAX_BODY_BUFFER_BYTES`).
    pub max_body_buffer_bytes: usize,
    /// Outbound email (disabled unless `PICLOUD_SMTP_*` are set).
    pub email: crate::email_config::EmailConfig,
    /// Largest inbound email request body (`PICLOUD_INBOUND_MAX_BYTES`).
    pub inbound_max_bytes: usize,
    /// Requests a minute one inbound URL may send (`PICLOUD_INBOUND_RATE_PER_MIN`).
    pub inbound_rate_per_min: u32,
    /// How long tokens signed by a rotated-out realtime key keep verifying
    /// (`PICLOUD_REALTIME_KEY_GRACE_SECS`).
    pub realtime_key_grace_secs: u64,
    /// Event streams this process keeps open: derived from `PICLOUD_MAX_CONNECTIONS`.
    pub realtime_streams: crate::realtime::StreamLimits,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 2 * 1024 * 1024,
            kv_max_value_bytes: 1024 * 1024,
            secret_max_value_bytes: picloud_shared::secrets::DEFAULT_SECRET_MAX_VALUE_BYTES,
            limits: SandboxLimits::default(),
            script_pool: PoolConfig::for_cores(available_cores()),
            ast_cache_bytes: DEFAULT_AST_CACHE_BYTES,
            public_url: "http://127.0.0.1:8080".into(),
            max_trigger_depth: picloud_manager_core::service::events::DEFAULT_MAX_TRIGGER_DEPTH,
            max_chain_events: picloud_manager_core::service::events::DEFAULT_MAX_CHAIN_EVENTS,
            max_triggers_per_app:
                picloud_manager_core::service::triggers::DEFAULT_MAX_TRIGGERS_PER_APP,
            max_pending_events_per_app:
                picloud_manager_core::service::events::DEFAULT_MAX_PENDING_EVENTS_PER_APP,
            body_timeout: Duration::from_secs(30),
            max_body_buffer_bytes: 256 * 1024 * 1024,
            email: crate::email_config::EmailConfig::default(),
            inbound_max_bytes: 10 * 1024 * 1024,
            inbound_rate_per_min: 600,
            realtime_key_grace_secs: picloud_shared::realtime::DEFAULT_KEY_GRACE_SECS,
            realtime_streams: crate::realtime::StreamLimits::default(),
        }
    }
}

/// Open files this process may hold, after raising the soft limit to the hard
/// one (as Go and nginx do: the soft default of 1,024 is far below what a
/// server's connections need).
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer; raising the soft limit up to the
    // hard limit needs no privilege.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Connections that fit the open-file limit with room for the database pool,
/// the embedded cluster's files and logs; at most 10,000.
fn default_max_connections() -> usize {
    let files = raise_open_file_limit();
    usize::try_from(files.saturating_sub(512))
        .unwrap_or(usize::MAX)
        .clamp(64, 10_000)
}

/// The cores this process may use (1 when unknown).
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The whole process configuration. No `Debug`: it holds key material.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: String,
    pub data_dir: PathBuf,
    pub dev_mode: bool,
    pub database_url: Option<String>,
    pub log_format: LogFormat,
    /// `PICLOUD_SECRET_KEY` as given (parsed by `keys::load_keyring`), wiped on drop.
    pub secret_key: Option<Zeroizing<String>>,
    /// `PICLOUD_SECRET_KEYS_PREVIOUS` as given, wiped on drop.
    pub secret_keys_previous: Option<Zeroizing<String>>,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// The listener's connection limits.
    pub connections: crate::connections::ConnectionLimits,
    /// The trigger dispatcher's settings.
    pub dispatch: crate::dispatcher::DispatchConfig,
    pub app: AppConfig,
}

/// Reads a variable; unset and empty are the same.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_num<T>(name: &'static str, default: T, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = var(name) else {
        return Ok(default);
    };
    match raw.trim().parse::<T>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(ConfigError {
            var: name,
            problem: "not a whole number in range".into(),
            fix: format!(
                "set it to a whole number of at least {min}, or unset it for the default {default}"
            ),
        }),
    }
}

fn parse_bool(name: &'static str) -> Result<bool, ConfigError> {
    match var(name).as_deref().map(str::trim) {
        None => Ok(false),
        Some("1" | "true" | "TRUE" | "True" | "yes") => Ok(true),
        Some("0" | "false" | "FALSE" | "False" | "no") => Ok(false),
        Some(_) => Err(ConfigError {
            var: name,
            problem: "not a boolean".into(),
            fix: "set it to true or false".into(),
        }),
    }
}

impl Config {
    /// Reads the configuration from the environment; `dev_flag` is `serve --dev`.
    pub fn from_env(dev_flag: bool) -> Result<Self, ConfigError> {
        let listen_raw = var("PICLOUD_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_raw.trim().parse().map_err(|_| ConfigError {
            var: "PICLOUD_LISTEN",
            problem: "not a socket address".into(),
            fix: "set it to host:port, e.g. 127.0.0.1:8080".into(),
        })?;
        let public_url = var("PICLOUD_PUBLIC_URL")
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{listen}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError {
                var: "PICLOUD_PUBLIC_URL",
                problem: "not an http(s) URL".into(),
                fix: "set it to the URL clients reach picloud at, e.g. https://picloud.example.com"
                    .into(),
            });
        }
        let data_dir =
            PathBuf::from(var("PICLOUD_DATA_DIR").unwrap_or_else(|| "./.picloud".into()));
        let log_format = match var("PICLOUD_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => {
                return Err(ConfigError {
                    var: "PICLOUD_LOG_FORMAT",
                    problem: "unknown format".into(),
                    fix: "set it to text or json".into(),
                })
            }
        };
        let defaults = SandboxLimits::default();
        let limits = SandboxLimits {
            max_operations: parse_num("PICLOUD_SCRIPT_MAX_OPERATIONS", defaults.max_operations, 1)?,
            timeout: Duration::from_millis(parse_num(
                "PICLOUD_SCRIPT_TIMEOUT_MS",
                defaults.timeout.as_millis() as u64,
                1,
            )?),
            max_string_bytes: parse_num(
                "PICLOUD_SCRIPT_MAX_STRING_BYTES",
                defaults.max_string_bytes,
                1,
            )?,
            sdk_timeout: Duration::from_millis(parse_num(
                "PICLOUD_SDK_TIMEOUT_MS",
                defaults.sdk_timeout.as_millis() as u64,
                1,
            )?),
            max_value_bytes: parse_num(
                "PICLOUD_SCRIPT_MAX_VALUE_BYTES",
                defaults.max_value_bytes,
                1024,
            )?,
            max_source_bytes: parse_num(
                "PICLOUD_SCRIPT_MAX_SOURCE_BYTES",
                defaults.max_source_bytes,
                1,
            )?,
            compile_timeout: Duration::from_millis(parse_num(
                "PICLOUD_SCRIPT_COMPILE_TIMEOUT_MS",
                defaults.compile_timeout.as_millis() as u64,
                1,
            )?),
            ..defaults
        };
        let email = crate::email_config::EmailConfig::read(var, limits.sdk_timeout);
        let app_defaults = AppConfig::default();
        let workers = parse_num(
            "PICLOUD_SCRIPT_WORKERS",
            app_defaults.script_pool.workers,
            1,
        )?;
        let script_pool = PoolConfig {
            workers,
            queue: parse_num("PICLOUD_SCRIPT_QUEUE", workers * 32, 1)?,
            max_per_app: parse_num("PICLOUD_SCRIPT_MAX_PER_APP", (workers / 2).max(1), 1)?,
            // An invoke waits for a worker at most as long as it may run.
            max_wait: limits.timeout,
            stack_bytes: script_stack_bytes(&limits, DEFAULT_MAX_MEMORY_BYTES),
        };
        let shutdown_grace = Duration::from_secs(parse_num("PICLOUD_SHUTDOWN_GRACE_SECS", 15, 0)?);
        let dispatch = crate::dispatcher::DispatchConfig {
            // Enough handlers handed to the pool that every worker stays busy, and
            // room for other apps when some apps use their whole share.
            concurrency: parse_num("PICLOUD_DISPATCH_CONCURRENCY", workers * 4, 1)?,
            batch_size: parse_num("PICLOUD_DISPATCH_BATCH", 512, 1)?,
            lease: Duration::from_secs(parse_num("PICLOUD_DISPATCH_LEASE_SECS", 30, 1)?),
            poll_interval: Duration::from_millis(parse_num("PICLOUD_DISPATCH_POLL_MS", 500, 10)?),
            shutdown_grace,
        };
        let max_connections = parse_num("PICLOUD_MAX_CONNECTIONS", default_max_connections(), 1)?;
        Ok(Self {
            listen,
            public_url: public_url.clone(),
            data_dir,
            dev_mode: dev_flag || parse_bool("PICLOUD_DEV_MODE")?,
            database_url: var("DATABASE_URL"),
            log_format,
            secret_key: var("PICLOUD_SECRET_KEY").map(Zeroizing::new),
            secret_keys_previous: var("PICLOUD_SECRET_KEYS_PREVIOUS").map(Zeroizing::new),
            shutdown_grace,
            dispatch,
            connections: crate::connections::ConnectionLimits {
                max_connections,
                idle_timeout: Duration::from_secs(parse_num(
                    "PICLOUD_HTTP_IDLE_TIMEOUT_SECS",
                    10,
                    1,
                )?),
            },
            app: AppConfig {
                max_request_bytes: parse_num(
                    "PICLOUD_MAX_REQUEST_BYTES",
                    app_defaults.max_request_bytes,
                    1,
                )?,
                kv_max_value_bytes: parse_num(
                    "PICLOUD_KV_MAX_VALUE_BYTES",
                    app_defaults.kv_max_value_bytes,
                    1,
                )?,
                secret_max_value_bytes: parse_num(
                    "PICLOUD_SECRET_MAX_VALUE_BYTES",
                    app_defaults.secret_max_value_bytes,
                    1,
                )?,
                limits,
                script_pool,
                ast_cache_bytes: parse_num(
                    "PICLOUD_SCRIPT_AST_CACHE_BYTES",
                    app_defaults.ast_cache_bytes,
                    0,
                )?,
                public_url,
                max_trigger_depth: parse_num(
                    "PICLOUD_MAX_TRIGGER_DEPTH",
                    app_defaults.max_trigger_depth,
                    1,
                )?,
                max_chain_events: parse_num(
                    "PICLOUD_MAX_CHAIN_EVENTS",
                    app_defaults.max_chain_events,
                    1,
                )?,
                max_triggers_per_app: parse_num(
                    "PICLOUD_MAX_TRIGGERS_PER_APP",
                    app_defaults.max_triggers_per_app,
                    1,
                )?,
                max_pending_events_per_app: parse_num(
                    "PICLOUD_MAX_PENDING_EVENTS_PER_APP",
                    app_defaults.max_pending_events_per_app,
                    1,
                )?,
                body_timeout: Duration::from_secs(parse_num(
                    "PICLOUD_HTTP_BODY_TIMEOUT_SECS",
                    app_defaults.body_timeout.as_secs(),
                    1,
                )?),
                max_body_buffer_bytes: parse_num(
                    "PICLOUD_MAX_BODY_BUFFER_BYTES",
                    app_defaults.max_body_buffer_bytes,
                    1024,
                )?,
                email,
                inbound_max_bytes: parse_num(
                    "PICLOUD_INBOUND_MAX_BYTES",
                    app_defaults.inbound_max_bytes,
                    1024,
                )?,
                inbound_rate_per_min: parse_num(
                    "PICLOUD_INBOUND_RATE_PER_MIN",
                    app_defaults.inbound_rate_per_min,
                    1,
                )?,
                realtime_key_grace_secs: parse_num(
                    "PICLOUD_REALTIME_KEY_GRACE_SECS",
                    app_defaults.realtime_key_grace_secs,
                    0,
                )?,
                realtime_streams: crate::realtime::StreamLimits::under(max_connections),
            },
        })
    }
}
