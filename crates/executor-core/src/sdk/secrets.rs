//! `secrets::` — the script bridge to [`SecretsService`](picloud_shared::secrets::SecretsService).
//!
//! ```text
//! secrets::get(name) -> value or ()     secrets::set(name, value)
//! secrets::delete(name) -> bool         secrets::list() -> [names]
//! ```
//! Values round-trip as JSON with their Rhai types; names and the size cap
//! are enforced by the service. Plaintext never enters an error message.

use super::{block_on, current_run, json_arg, string_arg, SdkEnv, SdkResult};
use crate::convert::json_to_dynamic;
use crate::run_state;
use rhai::{Array, Dynamic, Module, NativeCallContext, Position};
use std::sync::Arc;

/// Builds the `secrets` module over the executor's services.
pub(crate) fn module(env: Arc<SdkEnv>) -> Module {
    let mut module = Module::new();
    let e = env.clone();
    module.set_native_fn("get", move |ctx: NativeCallContext, name: Dynamic| {
        get(&e, ctx.call_position(), name)
    });
    let e = env.clone();
    module.set_native_fn(
        "set",
        move |ctx: NativeCallContext, name: Dynamic, value: Dynamic| {
            set(&e, ctx.call_position(), name, value)
        },
    );
    let e = env.clone();
    module.set_native_fn("delete", move |ctx: NativeCallContext, name: Dynamic| {
        delete(&e, ctx.call_position(), name)
    });
    let e = env;
    module.set_native_fn("list", move |ctx: NativeCallContext| {
        list(&e, ctx.call_position())
    });
    module
}

fn get(env: &SdkEnv, pos: Position, name: Dynamic) -> SdkResult<Dynamic> {
    const F: &str = "secrets::get";
    let name = string_arg(F, "name", name, pos)?;
    let run = current_run(pos)?;
    let call = env.services.secrets.get(run.app_id, &name);
    let Some(value) = block_on(env, &run, pos, F, call)? else {
        return Ok(Dynamic::UNIT);
    };
    let held = json_to_dynamic(value.clone());
    // From here on this run's messages are scrubbed of the value.
    run_state::reveal(&value, &held);
    Ok(held)
}

fn set(env: &SdkEnv, pos: Position, name: Dynamic, value: Dynamic) -> SdkResult<()> {
    const F: &str = "secrets::set";
    let name = string_arg(F, "name", name, pos)?;
    let value = json_arg(env, F, "value", &value, pos)?;
    let run = current_run(pos)?;
    let call = env.services.secrets.set(run.app_id, &name, value);
    block_on(env, &run, pos, F, call).map(|_| ())
}

fn delete(env: &SdkEnv, pos: Position, name: Dynamic) -> SdkResult<bool> {
    const F: &str = "secrets::delete";
    let name = string_arg(F, "name", name, pos)?;
    let run = current_run(pos)?;
    let call = env.services.secrets.delete(run.app_id, &name);
    block_on(env, &run, pos, F, call)
}

fn list(env: &SdkEnv, pos: Position) -> SdkResult<Array> {
    const F: &str = "secrets::list";
    let run = current_run(pos)?;
    let call = env.services.secrets.list(run.app_id);
    let infos = block_on(env, &run, pos, F, call)?;
    Ok(infos.into_iter().map(|i| Dynamic::from(i.name)).collect())
}
