//! `realtime::` — the script bridge to [`RealtimeService`](picloud_shared::realtime::RealtimeService).
//!
//! ```text
//! realtime::token(topics, ttl_secs) -> string   // a subscriber token for topics of this app
//! ```

use super::{block_on, current_run, int_arg, invalid_argument, json_arg, SdkEnv, SdkResult};
use rhai::{Dynamic, Module, NativeCallContext, Position};
use std::sync::Arc;

/// Builds the `realtime` module over the executor's services.
pub(crate) fn module(env: Arc<SdkEnv>) -> Module {
    let mut module = Module::new();
    module.set_native_fn(
        "token",
        move |ctx: NativeCallContext, topics: Dynamic, ttl_secs: Dynamic| {
            token(&env, ctx.call_position(), topics, ttl_secs)
        },
    );
    module
}

fn token(env: &SdkEnv, pos: Position, topics: Dynamic, ttl_secs: Dynamic) -> SdkResult<String> {
    const F: &str = "realtime::token";
    let topics: Vec<String> = match json_arg(env, F, "topics", &topics, pos)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(topic) => Ok(topic),
                _ => Err(invalid_argument(
                    format!("{F}: topics must be an array of strings"),
                    pos,
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid_argument(
                format!("{F}: topics must be an array of strings"),
                pos,
            ))
        }
    };
    let ttl_secs = u64::try_from(int_arg(F, "ttl_secs", &ttl_secs, pos)?)
        .map_err(|_| invalid_argument(format!("{F}: ttl_secs must be positive"), pos))?;
    let run = current_run(pos)?;
    let call = env.services.realtime.token(&run.call, topics, ttl_secs);
    block_on(env, &run, pos, F, call).map(|issued| issued.token)
}
