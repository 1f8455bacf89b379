//! Rhai built-ins replaced so that no single call can outrun the sandbox.
//!
//! `on_progress` runs between operations, never inside a native call, so a
//! built-in that works long inside one call (or whose output is a product of
//! its inputs) escapes the deadline and the size limits. Functions registered
//! on the engine take precedence over Rhai's packages, so each of these
//! replaces the package function of the same name and signature:
//!
//! - `sleep` — refused: a script has nothing to wait for.
//! - `sort`/`sort_by`/`order`/`order_by` with a comparator, and `sort`,
//!   `sort_desc`, `order`, `order_desc` without: a merge sort that stops at
//!   the first comparator error (Rhai's discards them all, the timeout
//!   included) and checks the deadline at every comparison.
//! - `==`, `!=` on arrays and maps, `contains` / `in`, `index_of(value)`:
//!   element by element, checking the deadline between elements (comparing
//!   100,000 shared 1 MiB strings is one operation to Rhai).
//! - `replace` (string and character patterns): the result's length is
//!   computed before it is built, against the string limit.
//! - `to_string`, `to_debug`, `print`, `debug` of arrays and maps (so string
//!   interpolation too), and `to_json` of maps: written under the string
//!   limit by `render`/`convert` instead of Rhai's unbounded formatting.

use crate::convert::dynamic_to_json;
use crate::render::render;
use crate::run_state;
use crate::sandbox::TIMEOUT_TOKEN;
use crate::watchdog;
use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, NativeCallContext,
    Position, INT,
};
use std::cmp::Ordering;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Registers every replacement on `engine`.
pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn("sleep", |_: INT| -> Res<()> { Err(no_sleep()) });
    engine.register_fn("sleep", |_: rhai::FLOAT| -> Res<()> { Err(no_sleep()) });

    for name in ["sort", "sort_by"] {
        engine.register_fn(name, |ctx: NativeCallContext, a: &mut Array, f: FnPtr| {
            sort_with(&ctx, a, &f)
        });
    }
    for name in ["order", "order_by"] {
        engine.register_fn(name, |ctx: NativeCallContext, a: &mut Array, f: FnPtr| {
            let mut copy = a.clone();
            sort_with(&ctx, &mut copy, &f).map(|()| copy)
        });
    }
    engine.register_fn("sort", |a: &mut Array| sort_builtin(a, false));
    engine.register_fn("sort_desc", |a: &mut Array| sort_builtin(a, true));
    engine.register_fn("order", |a: &mut Array| {
        let mut copy = a.clone();
        sort_builtin(&mut copy, false).map(|()| copy)
    });
    engine.register_fn("order_desc", |a: &mut Array| {
        let mut copy = a.clone();
        sort_builtin(&mut copy, true).map(|()| copy)
    });

    engine.register_fn("==", |ctx: NativeCallContext, a: &mut Array, b: Array| {
        arrays_equal(&ctx, a, b)
    });
    engine.register_fn("!=", |ctx: NativeCallContext, a: &mut Array, b: Array| {
        arrays_equal(&ctx, a, b).map(|eq| !eq)
    });
    engine.register_fn("==", |ctx: NativeCallContext, a: &mut Map, b: Map| {
        maps_equal(&ctx, a, b)
    });
    engine.register_fn("!=", |ctx: NativeCallContext, a: &mut Map, b: Map| {
        maps_equal(&ctx, a, b).map(|eq| !eq)
    });
    engine.register_fn(
        "contains",
        |ctx: NativeCallContext, a: &mut Array, value: Dynamic| {
            index_of(&ctx, a, value).map(|i| i >= 0)
        },
    );
    engine.register_fn(
        "index_of",
        |ctx: NativeCallContext, a: &mut Array, value: Dynamic| index_of(&ctx, a, value),
    );

    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, sub: &str| {
            replace(&ctx, s, find, sub)
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, sub: &str| {
            replace(&ctx, s, find.encode_utf8(&mut [0; 4]), sub)
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, sub: char| {
            replace(&ctx, s, find, sub.encode_utf8(&mut [0; 4]))
        },
    );

    for name in ["to_string", "to_debug", "print", "debug"] {
        engine.register_fn(name, |ctx: NativeCallContext, a: &mut Array| {
            let (text, kept) = text_of(&ctx, Dynamic::from_array(std::mem::take(a)));
            if let Some(kept) = kept {
                *a = kept.into_array().unwrap_or_default();
            }
            text
        });
        engine.register_fn(name, |ctx: NativeCallContext, m: &mut Map| {
            let (text, kept) = text_of(&ctx, Dynamic::from_map(std::mem::take(m)));
            if let Some(kept) = kept {
                *m = kept.try_cast::<Map>().unwrap_or_default();
            }
            text
        });
    }
    engine.register_fn(
        "to_json",
        |ctx: NativeCallContext, m: &mut Map| -> Res<String> {
            let budget = string_budget(&ctx);
            let json =
                dynamic_to_json(&Dynamic::from_map(m.clone()), budget).map_err(|err| match err
                    .too_large()
                {
                    Some(_) => string_too_large(),
                    None => runtime_error(format!("to_json: {}", err.describe("map"))),
                })?;
            Ok(json.to_string())
        },
    );
}

fn no_sleep() -> Box<EvalAltResult> {
    runtime_error("sleep is not available to scripts: a run has a wall-clock limit".into())
}

fn runtime_error(message: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(message.into(), Position::NONE))
}

fn string_too_large() -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorDataTooLarge(
        "Length of string".into(),
        Position::NONE,
    ))
}

/// Fails once the run's deadline has passed.
fn check_deadline() -> Res<()> {
    if watchdog::expired() {
        return Err(Box::new(EvalAltResult::ErrorTerminated(
            TIMEOUT_TOKEN.into(),
            Position::NONE,
        )));
    }
    Ok(())
}

fn string_budget(ctx: &NativeCallContext) -> usize {
    match ctx.engine().max_string_size() {
        0 => usize::MAX,
        n => n,
    }
}

/// A container's text under the string limit, and the container back unless
/// the limit was passed.
///
/// Why a container past the limit is not given back (its variable is left
/// empty): Rhai re-checks the size of a print function's argument after the
/// call, and when that check fails — a container built by index assignment
/// can hold one string thousands of times, which Rhai's check counts but
/// nothing stopped — it formats the value itself, without any limit:
/// gigabytes. An empty container passes the check, and the run ends anyway,
/// at its next operation, with the limit recorded here.
fn text_of(ctx: &NativeCallContext, value: Dynamic) -> (ImmutableString, Option<Dynamic>) {
    let rendered = render(&value, string_budget(ctx));
    if rendered.truncated {
        run_state::set_pending_limit(crate::sandbox::STRING_TOKEN);
        return (rendered.text.into(), None);
    }
    (rendered.text.into(), Some(value))
}

/// A stable merge sort that never panics, whatever the comparator answers,
/// and stops at its first error.
fn merge_sort(items: &mut Array, mut less: impl FnMut(&Dynamic, &Dynamic) -> Res<bool>) -> Res<()> {
    let n = items.len();
    if n < 2 {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut buffer = vec![0usize; n];
    let mut width = 1;
    while width < n {
        let mut start = 0;
        while start < n {
            let mid = (start + width).min(n);
            let end = (start + 2 * width).min(n);
            let (mut i, mut j) = (start, mid);
            for slot in &mut buffer[start..end] {
                // Take from the right only when strictly less: equal items keep their order.
                let take_right = i >= mid || (j < end && less(&items[order[j]], &items[order[i]])?);
                if take_right {
                    *slot = order[j];
                    j += 1;
                } else {
                    *slot = order[i];
                    i += 1;
                }
            }
            start = end;
        }
        std::mem::swap(&mut order, &mut buffer);
        width *= 2;
    }
    let mut taken: Vec<Option<Dynamic>> = items.drain(..).map(Some).collect();
    items.extend(
        order
            .into_iter()
            .map(|i| taken[i].take().unwrap_or(Dynamic::UNIT)),
    );
    Ok(())
}

fn sort_with(ctx: &NativeCallContext, items: &mut Array, comparer: &FnPtr) -> Res<()> {
    merge_sort(items, |x, y| {
        check_deadline()?;
        let answer = comparer.call_raw(ctx, None, [x.clone(), y.clone()])?;
        if let Ok(n) = answer.as_int() {
            return Ok(n < 0);
        }
        if let Ok(b) = answer.as_bool() {
            return Ok(b);
        }
        Err(runtime_error(format!(
            "sort: the comparer must return an integer or a bool, not {}",
            answer.type_name()
        )))
    })
}

fn sort_builtin(items: &mut Array, descending: bool) -> Res<()> {
    merge_sort(items, |x, y| {
        check_deadline()?;
        let ordering = compare_builtin(x, y)?;
        Ok(if descending {
            ordering == Ordering::Greater
        } else {
            ordering == Ordering::Less
        })
    })
}

/// Rhai's built-in ordering: items of one type among integers, floats,
/// characters, strings, booleans and `()`.
fn compare_builtin(x: &Dynamic, y: &Dynamic) -> Res<Ordering> {
    if let (Ok(a), Ok(b)) = (x.as_int(), y.as_int()) {
        return Ok(a.cmp(&b));
    }
    if let (Ok(a), Ok(b)) = (x.as_float(), y.as_float()) {
        return Ok(a.partial_cmp(&b).unwrap_or(Ordering::Equal));
    }
    if let (Ok(a), Ok(b)) = (x.as_char(), y.as_char()) {
        return Ok(a.cmp(&b));
    }
    if let (Ok(a), Ok(b)) = (x.as_immutable_string_ref(), y.as_immutable_string_ref()) {
        return Ok(a.as_str().cmp(b.as_str()));
    }
    if let (Ok(a), Ok(b)) = (x.as_bool(), y.as_bool()) {
        return Ok(a.cmp(&b));
    }
    if x.is_unit() && y.is_unit() {
        return Ok(Ordering::Equal);
    }
    Err(runtime_error(
        "sort: every element must be of one type among integers, floats, characters, strings, \
         booleans and (); pass a comparer for anything else"
            .into(),
    ))
}

/// `==` of two values as Rhai resolves it; values of different types without
/// an `==` between them are unequal.
fn equal(ctx: &NativeCallContext, x: &mut Dynamic, y: &mut Dynamic) -> Res<bool> {
    check_deadline()?;
    let (x_type, y_type) = (x.type_id(), y.type_id());
    match ctx.call_native_fn_raw("==", true, &mut [x, y]) {
        Ok(answer) => Ok(answer.as_bool().unwrap_or(false)),
        Err(err) => match *err {
            EvalAltResult::ErrorFunctionNotFound(ref sig, ..)
                if sig.starts_with("==") && x_type != y_type =>
            {
                Ok(false)
            }
            _ => Err(err),
        },
    }
}

fn arrays_equal(ctx: &NativeCallContext, a: &mut Array, mut b: Array) -> Res<bool> {
    if a.len() != b.len() {
        return Ok(false);
    }
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        if !equal(ctx, x, y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn maps_equal(ctx: &NativeCallContext, a: &mut Map, mut b: Map) -> Res<bool> {
    if a.len() != b.len() {
        return Ok(false);
    }
    for (key, x) in a.iter_mut() {
        let Some(y) = b.get_mut(key) else {
            return Ok(false);
        };
        if !equal(ctx, x, y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn index_of(ctx: &NativeCallContext, items: &mut Array, value: Dynamic) -> Res<INT> {
    for (i, item) in items.iter_mut().enumerate() {
        if equal(ctx, item, &mut value.clone())? {
            return Ok(INT::try_from(i).unwrap_or(INT::MAX));
        }
    }
    Ok(-1)
}

/// `s.replace(find, sub)` in place, refused before building when the result
/// would pass the string limit.
fn replace(ctx: &NativeCallContext, s: &mut ImmutableString, find: &str, sub: &str) -> Res<()> {
    let matches = if find.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(find).count()
    };
    let result_len =
        (s.len() - matches * find.len()).saturating_add(matches.saturating_mul(sub.len()));
    if result_len > string_budget(ctx) {
        return Err(string_too_large());
    }
    if matches > 0 {
        *s = s.replace(find, sub).into();
    }
    Ok(())
}
