//! `kv::` — the script bridge to [`KvService`](picloud_shared::kv::KvService).
//!
//! ```text
//! kv::set(collection, key, value)          kv::get(collection, key) -> value or ()
//! kv::delete(collection, key) -> bool      kv::list(collection[, prefix]) -> [keys]
//! kv::list_page(collection, prefix, after, limit) -> #{keys, next}
//! ```
//! Names, keys and value sizes are validated by the service; this module only
//! checks argument types and converts values.

use super::{
    block_on, current_run, int_arg, invalid_argument, json_arg, optional_string_arg, string_arg,
    SdkEnv, SdkResult,
};
use crate::convert::json_to_dynamic;
use picloud_shared::kv::{KvPage, KV_LIST_MAX};
use rhai::{Array, Dynamic, Map, Module, NativeCallContext, Position};
use std::sync::Arc;

/// Builds the `kv` module over the executor's services.
pub(crate) fn module(env: Arc<SdkEnv>) -> Module {
    let mut module = Module::new();
    let e = env.clone();
    module.set_native_fn(
        "set",
        move |ctx: NativeCallContext, collection: Dynamic, key: Dynamic, value: Dynamic| {
            set(&e, ctx.call_position(), collection, key, value)
        },
    );
    let e = env.clone();
    module.set_native_fn(
        "get",
        move |ctx: NativeCallContext, collection: Dynamic, key: Dynamic| {
            get(&e, ctx.call_position(), collection, key)
        },
    );
    let e = env.clone();
    module.set_native_fn(
        "delete",
        move |ctx: NativeCallContext, collection: Dynamic, key: Dynamic| {
            delete(&e, ctx.call_position(), collection, key)
        },
    );
    let e = env.clone();
    module.set_native_fn(
        "list",
        move |ctx: NativeCallContext, collection: Dynamic| {
            list(&e, ctx.call_position(), collection, Dynamic::UNIT)
        },
    );
    let e = env.clone();
    module.set_native_fn(
        "list",
        move |ctx: NativeCallContext, collection: Dynamic, prefix: Dynamic| {
            list(&e, ctx.call_position(), collection, prefix)
        },
    );
    let e = env;
    module.set_native_fn(
        "list_page",
        move |ctx: NativeCallContext,
              collection: Dynamic,
              prefix: Dynamic,
              after: Dynamic,
              limit: Dynamic| {
            list_page(&e, ctx.call_position(), collection, prefix, after, limit)
        },
    );
    module
}

fn set(
    env: &SdkEnv,
    pos: Position,
    collection: Dynamic,
    key: Dynamic,
    value: Dynamic,
) -> SdkResult<()> {
    const F: &str = "kv::set";
    let collection = string_arg(F, "collection", collection, pos)?;
    let key = string_arg(F, "key", key, pos)?;
    let value = json_arg(env, F, "value", &value, pos)?;
    let run = current_run(pos)?;
    let call = env.services.kv.set(&run.call, &collection, &key, value);
    block_on(env, &run, pos, F, call)
}

fn get(env: &SdkEnv, pos: Position, collection: Dynamic, key: Dynamic) -> SdkResult<Dynamic> {
    const F: &str = "kv::get";
    let collection = string_arg(F, "collection", collection, pos)?;
    let key = string_arg(F, "key", key, pos)?;
    let run = current_run(pos)?;
    let call = env.services.kv.get(run.app_id, &collection, &key);
    let value = block_on(env, &run, pos, F, call)?;
    Ok(value.map_or(Dynamic::UNIT, json_to_dynamic))
}

fn delete(env: &SdkEnv, pos: Position, collection: Dynamic, key: Dynamic) -> SdkResult<bool> {
    const F: &str = "kv::delete";
    let collection = string_arg(F, "collection", collection, pos)?;
    let key = string_arg(F, "key", key, pos)?;
    let run = current_run(pos)?;
    let call = env.services.kv.delete(&run.call, &collection, &key);
    block_on(env, &run, pos, F, call)
}

fn list(env: &SdkEnv, pos: Position, collection: Dynamic, prefix: Dynamic) -> SdkResult<Array> {
    const F: &str = "kv::list";
    let collection = string_arg(F, "collection", collection, pos)?;
    let prefix = optional_string_arg(F, "prefix", prefix, pos)?;
    let run = current_run(pos)?;
    let prefix = prefix.as_deref().unwrap_or("");
    let call = env
        .services
        .kv
        .list_page(run.app_id, &collection, prefix, None, KV_LIST_MAX);
    let page = block_on(env, &run, pos, F, call)?;
    Ok(keys_array(page.keys))
}

fn list_page(
    env: &SdkEnv,
    pos: Position,
    collection: Dynamic,
    prefix: Dynamic,
    after: Dynamic,
    limit: Dynamic,
) -> SdkResult<Map> {
    const F: &str = "kv::list_page";
    let collection = string_arg(F, "collection", collection, pos)?;
    let prefix = optional_string_arg(F, "prefix", prefix, pos)?;
    let after = optional_string_arg(F, "after", after, pos)?;
    let limit = int_arg(F, "limit", &limit, pos)?;
    if limit < 1 {
        return Err(invalid_argument(
            format!("{F}: limit must be at least 1"),
            pos,
        ));
    }
    // The service caps the page size (`kv::page_limit`).
    let limit = usize::try_from(limit).unwrap_or(KV_LIST_MAX);
    let run = current_run(pos)?;
    let prefix = prefix.as_deref().unwrap_or("");
    let call = env
        .services
        .kv
        .list_page(run.app_id, &collection, prefix, after.as_deref(), limit);
    let KvPage { keys, next } = block_on(env, &run, pos, F, call)?;
    let mut page = Map::new();
    page.insert("keys".into(), keys_array(keys).into());
    page.insert("next".into(), next.map_or(Dynamic::UNIT, Dynamic::from));
    Ok(page)
}

fn keys_array(keys: Vec<String>) -> Array {
    keys.into_iter().map(Dynamic::from).collect()
}
