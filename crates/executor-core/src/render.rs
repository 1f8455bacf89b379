//! Script values as text, under a byte budget.
//!
//! Why not Rhai's own `Display`: a map holding one 1 MiB string under 3,000
//! keys is a few MiB inside Rhai (the string is shared), but its text is
//! 3 GB, built whole before any limit is checked. Every place that turns a
//! script value into text — `to_string`/`to_debug`/`print`/`debug` and
//! string interpolation (overridden in `builtins`), log messages, thrown
//! values — goes through [`render`], which stops writing at the budget.
//! Shared values are written (and counted) as often as they occur.

use rhai::Dynamic;
use std::fmt::Write;

/// What ends a text cut at its budget.
const ELLIPSIS: &str = "…";

/// Containers nested deeper than this are written as `…`.
const MAX_DEPTH: usize = 64;

/// A value's text, cut at `budget` bytes.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// At most `budget` bytes, a closing `…` included when cut. Never more:
    /// Rhai re-checks a print function's result against the string limit and,
    /// when that fails, formats the value itself without any limit.
    pub text: String,
    /// True when the value's full text is longer than the budget.
    pub truncated: bool,
}

/// Writes `value` as Rhai displays it (strings bare at the top, quoted inside
/// containers), stopping once `budget` bytes are written.
pub(crate) fn render(value: &Dynamic, budget: usize) -> Rendered {
    let mut out = Budgeted {
        text: String::new(),
        budget: budget.saturating_sub(ELLIPSIS.len()),
        truncated: false,
    };
    write_value(&mut out, value, 0, false);
    if out.truncated {
        out.text.push_str(ELLIPSIS);
    }
    Rendered {
        text: out.text,
        truncated: out.truncated,
    }
}

/// `text` with every control character (newlines included) made a space: error
/// messages and log lines are single lines, and a script must not forge log lines.
pub(crate) fn single_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

struct Budgeted {
    text: String,
    budget: usize,
    truncated: bool,
}

impl Budgeted {
    /// Appends as much of `s` as fits; false once the budget is spent.
    fn push(&mut self, s: &str) -> bool {
        if self.truncated {
            return false;
        }
        let room = self.budget.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return true;
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.truncated = true;
        false
    }
}

fn write_value(out: &mut Budgeted, value: &Dynamic, depth: usize, quoted: bool) -> bool {
    if value.is_shared() {
        return write_value(out, &value.flatten_clone(), depth, quoted);
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        return if quoted {
            write_quoted(out, s.as_str())
        } else {
            out.push(s.as_str())
        };
    }
    if let Ok(items) = value.as_array_ref() {
        if depth >= MAX_DEPTH {
            return out.push("[…]");
        }
        if !out.push("[") {
            return false;
        }
        for (i, item) in items.iter().enumerate() {
            if (i > 0 && !out.push(", ")) || !write_value(out, item, depth + 1, true) {
                return false;
            }
        }
        return out.push("]");
    }
    if let Ok(map) = value.as_map_ref() {
        if depth >= MAX_DEPTH {
            return out.push("#{…}");
        }
        if !out.push("#{") {
            return false;
        }
        for (i, (key, item)) in map.iter().enumerate() {
            if (i > 0 && !out.push(", "))
                || !write_quoted(out, key)
                || !out.push(": ")
                || !write_value(out, item, depth + 1, true)
            {
                return false;
            }
        }
        return out.push("}");
    }
    if value.is_unit() {
        return out.push(if quoted { "()" } else { "" });
    }
    if let Ok(c) = value.as_char() {
        let mut buf = [0u8; 4];
        return if quoted {
            out.push("'") && out.push(c.encode_utf8(&mut buf)) && out.push("'")
        } else {
            out.push(c.encode_utf8(&mut buf))
        };
    }
    if let Some(f) = value.read_lock::<rhai::FnPtr>() {
        // Curried values are not shown.
        return out.push("Fn(") && out.push(f.fn_name()) && out.push(")");
    }
    // Scalars (numbers, booleans, timestamps) and blobs (bounded by the array limit).
    let mut text = String::new();
    let _ = write!(text, "{value}");
    out.push(&text)
}

fn write_quoted(out: &mut Budgeted, s: &str) -> bool {
    if !out.push("\"") {
        return false;
    }
    for chunk in s.split_inclusive(['"', '\\']) {
        let (body, escaped) = match chunk.as_bytes().last() {
            Some(b'"') => (&chunk[..chunk.len() - 1], Some("\\\"")),
            Some(b'\\') => (&chunk[..chunk.len() - 1], Some("\\\\")),
            _ => (chunk, None),
        };
        if !out.push(body) || !escaped.is_none_or(|e| out.push(e)) {
            return false;
        }
    }
    out.push("\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::{Array, Map};

    #[test]
    fn renders_like_rhai() {
        let mut map = Map::new();
        map.insert("a".into(), Dynamic::from_int(1));
        map.insert("s".into(), Dynamic::from("x\"y"));
        let value = Dynamic::from_array(vec![Dynamic::from_map(map), Dynamic::UNIT, 'c'.into()]);
        let rendered = render(&value, 1000);
        assert_eq!(rendered.text, r#"[#{"a": 1, "s": "x\"y"}, (), 'c']"#);
        assert!(!rendered.truncated);
        assert_eq!(render(&Dynamic::from("bare"), 100).text, "bare");
    }

    #[test]
    fn a_shared_string_written_many_times_stops_at_the_budget() {
        let big: rhai::ImmutableString = "x".repeat(1 << 20).into();
        let items: Array = (0..3000).map(|_| Dynamic::from(big.clone())).collect();
        let rendered = render(&Dynamic::from_array(items), 4096);
        assert!(rendered.truncated);
        assert_eq!(rendered.text.len(), 4096);
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let rendered = render(&Dynamic::from("ééé"), 6);
        assert_eq!(rendered.text, "é…");
    }
}
