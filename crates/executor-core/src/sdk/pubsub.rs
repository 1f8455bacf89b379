//! `pubsub::` — the script bridge to [`PubsubService`](picloud_shared::pubsub::PubsubService).
//!
//! ```text
//! pubsub::publish(topic, message)    // message: any JSON value; enqueues every matching trigger's event
//! ```

use super::{block_on, current_run, json_arg, string_arg, SdkEnv, SdkResult};
use rhai::{Dynamic, Module, NativeCallContext, Position};
use std::sync::Arc;

/// Builds the `pubsub` module over the executor's services.
pub(crate) fn module(env: Arc<SdkEnv>) -> Module {
    let mut module = Module::new();
    module.set_native_fn(
        "publish",
        move |ctx: NativeCallContext, topic: Dynamic, message: Dynamic| {
            publish(&env, ctx.call_position(), topic, message)
        },
    );
    module
}

fn publish(env: &SdkEnv, pos: Position, topic: Dynamic, message: Dynamic) -> SdkResult<()> {
    const F: &str = "pubsub::publish";
    let topic = string_arg(F, "topic", topic, pos)?;
    let message = json_arg(env, F, "message", &message, pos)?;
    let run = current_run(pos)?;
    let call = env.services.pubsub.publish(&run.call, &topic, message);
    block_on(env, &run, pos, F, call).map(|_| ())
}
