//! The per-run state of the script running on this thread.
//!
//! A run is synchronous and stays on one (blocking) thread, so the state the
//! sandbox and the SDK bridges need — which app, which script, when the
//! wall-clock deadline falls — lives in a thread-local installed by
//! [`enter`] and removed when the returned guard drops, even on panic.
//! `on_progress` only sees an operation count, and SDK functions are shared
//! by every run, so this is how both learn whose run they serve.
//!
//! It also holds what the run revealed through `secrets::get`, so that every
//! message the run produces (errors, log lines) can be scrubbed of those
//! values ([`scrub`]), and a limit a native function hit without failing
//! (text output cut at its budget) for `on_progress` to end the run with.

use picloud_shared::ids::AppId;
use std::cell::{Cell, RefCell};
use std::time::Instant;

/// Secret values shorter than this are not scrubbed: replacing every "1" or
/// "ok" in a message would garble it while hiding nothing worth hiding.
pub(crate) const MIN_SCRUBBED_CHARS: usize = 4;

/// What a scrubbed secret value is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// What the sandbox and the SDK know about the run in progress.
#[derive(Debug, Clone)]
pub(crate) struct RunState {
    pub app_id: AppId,
    pub trigger_depth: u32,
    pub origin_principal: Option<uuid::Uuid>,
    pub chain_id: Option<i64>,
    pub script_name: String,
    pub trigger: &'static str,
    /// `None` when the timeout is too large to represent.
    pub deadline: Option<Instant>,
    /// Text forms of values this run obtained from `secrets::get`.
    pub revealed: Vec<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<RunState>> = const { RefCell::new(None) };
    static PENDING_LIMIT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Records that the run passed `limit` inside a native call that could not
/// fail (Rhai falls back to unbounded formatting when `to_string` fails), so
/// the run ends at its next operation.
pub(crate) fn set_pending_limit(limit: &'static str) {
    let _ = PENDING_LIMIT.try_with(|pending| pending.set(Some(limit)));
}

/// The limit a native call recorded with [`set_pending_limit`], if any.
#[inline]
pub(crate) fn pending_limit() -> Option<&'static str> {
    PENDING_LIMIT.try_with(Cell::get).ok().flatten()
}

/// Remembers the text forms of a value from `secrets::get`: `value` as the
/// service returned it and `held` as the script holds it (big integers become
/// floats, which Rhai writes in its own way): every leaf, every object key,
/// and the whole value as JSON and as Rhai displays it.
pub(crate) fn reveal(value: &serde_json::Value, held: &rhai::Dynamic) {
    let _ = CURRENT.try_with(|current| {
        let Ok(mut current) = current.try_borrow_mut() else {
            return;
        };
        let Some(run) = current.as_mut() else {
            return;
        };
        let mut texts = Vec::new();
        collect_texts(value, &mut texts);
        collect_held_texts(held, &mut texts);
        if !value.is_string() {
            texts.push(value.to_string());
        }
        for text in texts {
            if text.chars().count() < MIN_SCRUBBED_CHARS {
                continue;
            }
            for form in written_forms(&text) {
                if !run.revealed.contains(&form) {
                    run.revealed.push(form);
                }
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        run.revealed.sort_by_key(|t| std::cmp::Reverse(t.len()));
    });
}

/// The value as the script holds it: every container whole, as
/// `to_string`/`print`/`throw` and `to_json` write it, and every scalar in
/// Rhai's display and debug forms and, for floats, as JSON writes them.
fn collect_held_texts(held: &rhai::Dynamic, out: &mut Vec<String>) {
    let is_container = held.is_array() || held.is_map();
    if is_container {
        out.push(crate::render::render(held, usize::MAX).text);
        if let Ok(json) = crate::convert::dynamic_to_json(held, usize::MAX) {
            out.push(json.to_string());
        }
    }
    if let Ok(items) = held.as_array_ref() {
        items.iter().for_each(|item| collect_held_texts(item, out));
    } else if let Ok(map) = held.as_map_ref() {
        map.values().for_each(|item| collect_held_texts(item, out));
    } else if !held.is_string() && !held.is_unit() {
        out.push(format!("{held}"));
        out.push(format!("{held:?}"));
        if let Ok(f) = held.as_float() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                out.push(n.to_string());
            }
        }
    }
}

/// The ways a text can be written into a message: as is, with control
/// characters made spaces (error messages and log lines are single lines),
/// escaped as Rhai's and Rust's debug form do (`to_debug`, strings inside
/// containers), and escaped as JSON.
fn written_forms(text: &str) -> Vec<String> {
    let quoted_only = text.replace('\\', "\\\\").replace('"', "\\\"");
    // Rust's `{:?}` (which Rhai's `to_debug` uses) escapes more than
    // `str::escape_debug` does: every combining mark, not only a leading one.
    let debug = format!("{text:?}");
    let debug = debug
        .strip_prefix('"')
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned();
    let json = serde_json::to_string(text).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned();
    let mut forms: Vec<String> = Vec::new();
    for form in [text.to_owned(), quoted_only, debug, json] {
        let spaced = crate::render::single_line(&form).into_owned();
        for form in [form, spaced] {
            if !form.is_empty() && !forms.contains(&form) {
                forms.push(form);
            }
        }
    }
    forms
}

/// The longest text form of a revealed value, in bytes: text meant to be cut
/// at a budget is written this much longer, scrubbed, then cut, so a cut can
/// never fall inside a secret and leave a prefix of it.
pub(crate) fn scrub_margin() -> usize {
    with_current(|run| run.revealed.first().map_or(0, String::len)).unwrap_or(0)
}

fn collect_texts(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_texts(v, out)),
        serde_json::Value::Object(fields) => {
            for (key, v) in fields {
                out.push(key.clone());
                collect_texts(v, out);
            }
        }
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

/// `text` with every value the current run revealed replaced by [`REDACTED`].
pub(crate) fn scrub(text: String) -> String {
    // Takes the text through unchanged (no copy) unless a revealed value is in it.
    CURRENT.with(|current| match current.try_borrow() {
        Ok(run) => match run.as_ref() {
            Some(run) => scrub_with(&run.revealed, text),
            None => text,
        },
        Err(_) => text,
    })
}

/// `text` with every one of `revealed` replaced by [`REDACTED`].
pub(crate) fn scrub_with(revealed: &[String], mut text: String) -> String {
    for secret in revealed {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), REDACTED);
        }
    }
    text
}

/// Restores the state that was current before [`enter`] when dropped.
pub(crate) struct RunGuard {
    previous: Option<RunState>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let _ = PENDING_LIMIT.try_with(|pending| pending.set(None));
        let previous = self.previous.take();
        CURRENT.with(|current| {
            if let Ok(mut current) = current.try_borrow_mut() {
                *current = previous;
            }
        });
    }
}

/// Makes `state` the current run of this thread until the guard drops.
pub(crate) fn enter(state: RunState) -> RunGuard {
    let previous = CURRENT.with(|current| current.replace(Some(state)));
    let _ = PENDING_LIMIT.try_with(|pending| pending.set(None));
    RunGuard { previous }
}

/// Reads the current run's state; `None` outside a run.
pub(crate) fn with_current<R>(f: impl FnOnce(&RunState) -> R) -> Option<R> {
    CURRENT.with(|current| current.try_borrow().ok()?.as_ref().map(f))
}

/// True when the current run has a deadline and it has passed.
pub(crate) fn deadline_passed() -> bool {
    with_current(|run| run.deadline)
        .flatten()
        .is_some_and(|deadline| Instant::now() >= deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str) -> RunState {
        RunState {
            app_id: AppId::new(),
            trigger_depth: 0,
            origin_principal: None,
            chain_id: None,
            script_name: name.into(),
            trigger: "http",
            deadline: None,
            revealed: Vec::new(),
        }
    }

    fn reveal_json(value: serde_json::Value) {
        reveal(&value, &crate::convert::json_to_dynamic(value.clone()));
    }

    #[test]
    fn guards_nest_and_restore() {
        assert!(with_current(|_| ()).is_none());
        let outer = enter(state("outer"));
        {
            let _inner = enter(state("inner"));
            assert_eq!(
                with_current(|r| r.script_name.clone()).as_deref(),
                Some("inner")
            );
        }
        assert_eq!(
            with_current(|r| r.script_name.clone()).as_deref(),
            Some("outer")
        );
        drop(outer);
        assert!(with_current(|_| ()).is_none());
    }

    #[test]
    fn revealed_values_are_scrubbed_longest_first() {
        let _run = enter(state("s"));
        reveal_json(serde_json::json!("hunter2-SECRET"));
        reveal_json(serde_json::json!({"user": "admin", "pin": 123456, "x": "ab"}));
        reveal_json(serde_json::json!("hunter2"));
        let text = scrub("bad 'hunter2-SECRET' for admin (123456), ab".into());
        assert_eq!(text, "bad '[redacted]' for [redacted] ([redacted]), ab");
        assert_eq!(
            scrub("user 1234".into()),
            "[redacted] 1234",
            "object keys too"
        );
        assert_eq!(scrub("hunter2".into()), "[redacted]");
        // The longest written form: the escaped JSON of the object.
        assert!(scrub_margin() > r#"{"pin":123456,"user":"admin","x":"ab"}"#.len());
    }

    #[test]
    fn numbers_and_containers_in_the_forms_rhai_writes_are_scrubbed() {
        let _run = enter(state("s"));
        reveal_json(
            serde_json::json!({"n": 12345678901234567890u64, "f": 1e20, "list": [12, 34, 56]}),
        );
        for written in [
            "1.2345678901234567e19",
            "1.2345678901234567e+19",
            "1e20",
            "[12, 34, 56]",
        ] {
            let text = scrub(format!("<{written}>"));
            assert!(!text.contains(written), "{written}: {text}");
        }
        reveal_json(serde_json::json!("ZQXWe\u{301}KVJP"));
        assert_eq!(scrub(r#"<ZQXWe\u{301}KVJP>"#.into()), "<[redacted]>");
    }

    #[test]
    fn escaped_and_single_line_forms_are_scrubbed_too() {
        let _run = enter(state("s"));
        reveal_json(serde_json::json!("line1\nq\"b\\-SECRET"));
        for written in [
            "line1\nq\"b\\-SECRET",
            "line1 q\"b\\-SECRET",
            r#"line1\nq\"b\\-SECRET"#,
            "line1 q\\\"b\\\\-SECRET",
        ] {
            let text = scrub(format!("<{written}>"));
            assert_eq!(text, "<[redacted]>", "{written}");
        }
    }
}
