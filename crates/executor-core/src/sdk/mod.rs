//! The SDK modules scripts call (`kv::`, `secrets::`, `pubsub::`, `realtime::`, `email::`, `log::`): thin bridges that convert
//! Rhai values to domain arguments, call a service trait and convert back.
//!
//! Rules every bridge keeps:
//! - the app id comes from the current run (see `run_state`), never from an
//!   argument;
//! - an SDK call takes effect when it returns: a script that throws later
//!   keeps its earlier writes, as in Cloudflare Workers;
//! - each async service call runs with `Handle::block_on` (`on_progress`
//!   cannot interrupt a native call). Services bound their own work by the
//!   SDK timeout (the database cancels a statement past it, so a call that
//!   times out did not take effect); the bridge waits a little longer than a
//!   service can take — [`answer_wait`] — and only a service that stops
//!   answering leaves an outcome unknown. The wait is shortened to what is
//!   left of the run's wall-clock budget;
//! - failures are catchable Rhai exceptions whose value is `#{kind, message}`,
//!   built in exactly one place: [`service_error_to_exception`].

pub(crate) mod email;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod pubsub;
pub(crate) mod realtime;
pub(crate) mod secrets;

use crate::convert::{dynamic_to_json, NotJson};
use crate::run_state::{self, RunState};
use crate::Services;
use picloud_shared::ids::AppId;
use picloud_shared::triggers::CallContext;
use picloud_shared::ServiceError;
use rhai::{Dynamic, EvalAltResult, ImmutableString, Map, Position, INT};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// What the SDK bridges share for the executor's lifetime.
pub(crate) struct SdkEnv {
    pub services: Services,
    pub runtime: Handle,
    pub sdk_timeout: Duration,
    /// The byte budget of every value converted to JSON for a service.
    pub max_value_bytes: usize,
}

/// A Rhai native-function result.
pub(crate) type SdkResult<T> = Result<T, Box<EvalAltResult>>;

/// The one conversion of a [`ServiceError`] into a catchable Rhai exception:
/// `throw #{kind, message}` at `pos`.
pub(crate) fn service_error_to_exception(err: &ServiceError, pos: Position) -> Box<EvalAltResult> {
    exception(err.kind(), err.to_string(), pos)
}

/// `throw #{kind, message}`: the one shape of every SDK exception.
fn exception(kind: &str, message: String, pos: Position) -> Box<EvalAltResult> {
    let mut map = Map::new();
    map.insert("kind".into(), kind.into());
    map.insert("message".into(), message.into());
    Box::new(EvalAltResult::ErrorRuntime(map.into(), pos))
}

/// A `too_large` exception for a value whose conversion passed `limit` bytes
/// (its full size is never measured: the conversion stops at the limit).
pub(crate) fn too_large(what: &str, limit: usize, pos: Position) -> Box<EvalAltResult> {
    exception(
        "too_large",
        format!("{what} is larger than the limit of {limit} bytes for script values"),
        pos,
    )
}

/// An `invalid_argument` exception.
pub(crate) fn invalid_argument(message: String, pos: Position) -> Box<EvalAltResult> {
    service_error_to_exception(&ServiceError::InvalidArgument(message), pos)
}

/// The uncatchable error that ends a run whose wall-clock budget is spent.
fn out_of_time(pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(
        crate::sandbox::TIMEOUT_TOKEN.into(),
        pos,
    ))
}

/// What an SDK call needs to know about the run it serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunInfo {
    pub app_id: AppId,
    pub deadline: Option<Instant>,
    /// Who the run acts for, as the services see it.
    pub call: CallContext,
}

/// The current run, or `unavailable` when called outside one.
pub(crate) fn current_run(pos: Position) -> SdkResult<RunInfo> {
    run_state::with_current(|run: &RunState| RunInfo {
        app_id: run.app_id,
        deadline: run.deadline,
        call: CallContext {
            app_id: run.app_id,
            trigger_depth: run.trigger_depth,
            origin_principal: run.origin_principal,
            chain_id: run.chain_id,
        },
    })
    .ok_or_else(|| {
        service_error_to_exception(
            &ServiceError::Unavailable("SDK called outside a script run".into()),
            pos,
        )
    })
}

/// Runs one async service call to completion on the executor's runtime,
/// under the SDK timeout and the run's deadline.
pub(crate) fn block_on<T>(
    env: &SdkEnv,
    run: &RunInfo,
    pos: Position,
    what: &str,
    call: impl Future<Output = Result<T, ServiceError>>,
) -> SdkResult<T> {
    let remaining = match run.deadline {
        Some(deadline) => deadline.saturating_duration_since(Instant::now()),
        None => Duration::MAX,
    };
    if remaining.is_zero() {
        return Err(out_of_time(pos));
    }
    let answer_wait = answer_wait(env.sdk_timeout);
    let wait = answer_wait.min(remaining);
    // The timer is created inside `block_on`, where the runtime's time driver is in context.
    match env
        .runtime
        .block_on(async { tokio::time::timeout(wait, call).await })
    {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(service_error_to_exception(&err, pos)),
        Err(_) if wait < answer_wait => Err(out_of_time(pos)),
        Err(_) => Err(service_error_to_exception(
            &ServiceError::Unavailable(format!(
                "{what} got no answer within {} ms; its outcome is unknown (a write may still take effect)",
                answer_wait.as_millis()
            )),
            pos,
        )),
    }
}

/// How long a bridge waits for a service bounded by `sdk_timeout`: its wait
/// for a connection and its statement may each take that long, plus a margin
/// for the answer to arrive.
pub(crate) fn answer_wait(sdk_timeout: Duration) -> Duration {
    sdk_timeout
        .saturating_mul(2)
        .saturating_add(sdk_timeout / 4)
}

/// A required string argument.
pub(crate) fn string_arg(
    func: &str,
    name: &str,
    value: Dynamic,
    pos: Position,
) -> SdkResult<ImmutableString> {
    let type_name = value.type_name();
    value.into_immutable_string().map_err(|_| {
        invalid_argument(
            format!("{func}: {name} must be a string, got {type_name}"),
            pos,
        )
    })
}

/// A string argument that may be `()`.
pub(crate) fn optional_string_arg(
    func: &str,
    name: &str,
    value: Dynamic,
    pos: Position,
) -> SdkResult<Option<ImmutableString>> {
    if value.is_unit() {
        return Ok(None);
    }
    let type_name = value.type_name();
    value.into_immutable_string().map(Some).map_err(|_| {
        invalid_argument(
            format!("{func}: {name} must be a string or (), got {type_name}"),
            pos,
        )
    })
}

/// An integer argument.
pub(crate) fn int_arg(func: &str, name: &str, value: &Dynamic, pos: Position) -> SdkResult<INT> {
    value.as_int().map_err(|type_name| {
        invalid_argument(
            format!("{func}: {name} must be an integer, got {type_name}"),
            pos,
        )
    })
}

/// A value argument that must have a JSON form within the value byte budget.
pub(crate) fn json_arg(
    env: &SdkEnv,
    func: &str,
    name: &str,
    value: &Dynamic,
    pos: Position,
) -> SdkResult<serde_json::Value> {
    dynamic_to_json(value, env.max_value_bytes).map_err(|err: NotJson| match err.too_large() {
        Some(limit) => too_large(&format!("{func}: {name}"), limit, pos),
        None => invalid_argument(format!("{func}: {}", err.describe(name)), pos),
    })
}
