//! Conversions between JSON and Rhai values, at the edges of a run and of
//! every SDK call.
//!
//! Walked by hand rather than through serde so that each failure names the
//! offending type and where it sits (`.items[3]`), never the value itself.
//! JSON → Rhai: `null` → `()`, integers that fit `i64` → `INT`, other numbers
//! → `FLOAT`. Rhai → JSON: `()` → `null`, `INT`/`FLOAT` → numbers (NaN and
//! infinities refused), chars → strings, BLOBs → arrays of bytes; function
//! pointers, timestamps and custom types are refused.
//!
//! Rhai → JSON runs under a byte budget (roughly the serialised size) and
//! stops as soon as it is passed: a map holding one shared 1 MiB string under
//! thousands of keys is small inside Rhai but huge as JSON, and must not be
//! built whole to find that out.

use rhai::{Array, Dynamic, Map};
use serde_json::{Map as JsonMap, Number, Value};

/// Deepest nesting of arrays and maps a Rhai value may have to become JSON
/// (serde_json's own parse limit), so the walk's recursion stays bounded.
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// Why a Rhai value has no JSON form, and where in the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotJson {
    /// The budget that was passed, when that is the reason.
    too_large: Option<usize>,
    reason: String,
    /// Path segments, innermost first (pushed while unwinding).
    path: Vec<String>,
}

impl NotJson {
    fn new(reason: String) -> Self {
        Self {
            too_large: None,
            reason,
            path: Vec::new(),
        }
    }

    fn within(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }
}

impl NotJson {
    /// The byte budget the value's JSON passed, when that is why it has none.
    pub(crate) fn too_large(&self) -> Option<usize> {
        self.too_large
    }

    /// The reason, starting from `root`: "value[1].f is a function pointer, ...".
    pub(crate) fn describe(&self, root: &str) -> String {
        let mut out = String::from(root);
        for segment in self.path.iter().rev() {
            out.push_str(segment);
        }
        out.push(' ');
        out.push_str(&self.reason);
        out
    }
}

/// The array items and object entries a JSON text holds, counted in one pass
/// over its bytes without building anything.
///
/// Why: a 2 MiB request body of `[[],[],…]` holds 700,000 arrays; parsed and
/// converted it takes ~50 MB, only for the sandbox to refuse it at the first
/// operation (nested items count against `max_array_items`). Counting first lets
/// the HTTP layer refuse it for the price of a scan. Malformed JSON gives
/// meaningless counts; it fails to parse afterwards anyway.
pub fn json_container_items(text: &[u8]) -> (usize, usize) {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Array,
        Object,
    }
    let (mut items, mut entries) = (0usize, 0usize);
    // Open containers, and whether each has seen its first element yet.
    let mut open: Vec<(Kind, bool)> = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut count_element = |open: &mut Vec<(Kind, bool)>, first_only: bool| {
        if let Some((kind, seen)) = open.last_mut() {
            if first_only && *seen {
                return;
            }
            *seen = true;
            match kind {
                Kind::Array => items += 1,
                Kind::Object => entries += 1,
            }
        }
    };
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                // A key or a string value: in an object only keys open an entry.
                count_element(&mut open, true);
                in_string = true;
            }
            b'[' | b'{' => {
                count_element(&mut open, true);
                open.push((
                    if byte == b'[' {
                        Kind::Array
                    } else {
                        Kind::Object
                    },
                    false,
                ));
            }
            b']' | b'}' => {
                open.pop();
            }
            b',' => count_element(&mut open, false),
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            _ => count_element(&mut open, true),
        }
    }
    (items, entries)
}

/// Converts a JSON value into a Rhai value, consuming it.
pub(crate) fn json_to_dynamic(value: Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s),
        Value::Array(items) => {
            Dynamic::from_array(items.into_iter().map(json_to_dynamic).collect::<Array>())
        }
        Value::Object(fields) => Dynamic::from_map(
            fields
                .into_iter()
                .map(|(k, v)| (k.into(), json_to_dynamic(v)))
                .collect::<Map>(),
        ),
    }
}

/// Converts a Rhai value into JSON of at most about `budget` bytes, or says
/// why it has none.
pub(crate) fn dynamic_to_json(value: &Dynamic, budget: usize) -> Result<Value, NotJson> {
    let mut left = budget;
    to_json(value, 0, &mut left).map_err(|mut err| {
        if err.too_large.is_some() {
            err.too_large = Some(budget);
        }
        err
    })
}

/// Takes `bytes` from the budget, or fails once it is spent.
fn spend(left: &mut usize, bytes: usize) -> Result<(), NotJson> {
    match left.checked_sub(bytes) {
        Some(rest) => {
            *left = rest;
            Ok(())
        }
        None => Err(NotJson {
            too_large: Some(0),
            reason: "is larger than the byte limit for script values".into(),
            path: Vec::new(),
        }),
    }
}

/// Bytes charged for each non-string value (a number, a keyword, brackets):
/// about its text, so the budget tracks the serialised size.
const SCALAR_BYTES: usize = 8;

fn to_json(value: &Dynamic, depth: usize, left: &mut usize) -> Result<Value, NotJson> {
    if value.is_shared() {
        return to_json(&value.flatten_clone(), depth, left);
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        spend(left, s.len() + 2)?;
        return Ok(Value::String(s.as_str().to_owned()));
    }
    spend(left, SCALAR_BYTES)?;
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::Number(i.into()));
    }
    if let Ok(f) = value.as_float() {
        return Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| NotJson::new(format!("is the float {f}, which JSON cannot represent")));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if depth >= MAX_JSON_DEPTH {
        return Err(NotJson::new(format!(
            "nests deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    if let Ok(items) = value.as_array_ref() {
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| to_json(item, depth + 1, left).map_err(|e| e.within(format!("[{i}]"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Ok(map) = value.as_map_ref() {
        let mut out = JsonMap::with_capacity(map.len());
        for (key, item) in map.iter() {
            spend(left, key.len() + 4)?;
            let json = to_json(item, depth + 1, left).map_err(|e| e.within(key_segment(key)))?;
            out.insert(key.to_string(), json);
        }
        return Ok(Value::Object(out));
    }
    if let Ok(blob) = value.as_blob_ref() {
        spend(left, blob.len() * 4)?;
        return Ok(Value::Array(
            blob.iter().map(|b| Value::Number((*b).into())).collect(),
        ));
    }
    let what = if value.is_fnptr() {
        "a function pointer".to_string()
    } else if value.is_timestamp() {
        "a timestamp".to_string()
    } else if value.is::<std::ops::Range<rhai::INT>>()
        || value.is::<std::ops::RangeInclusive<rhai::INT>>()
    {
        "a range".to_string()
    } else {
        format!("a value of type {}", value.type_name())
    };
    Err(NotJson::new(format!("is {what}, which has no JSON form")))
}

/// `.key` for a path, cut to 64 characters so a huge key cannot bloat a
/// message; scrubbed first, so the cut cannot leave part of a secret.
fn key_segment(key: &str) -> String {
    const MAX: usize = 64;
    let key = crate::run_state::scrub(key.to_owned());
    let mut segment = String::with_capacity(key.len().min(MAX) + 4);
    segment.push('.');
    segment.extend(key.chars().take(MAX));
    if key.chars().nth(MAX).is_some() {
        segment.push('…');
    }
    segment
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_rhai() {
        let value = json!({
            "n": 1, "neg": -7, "f": 1.5, "big": 18446744073709551615u64, "s": "ü",
            "t": true, "z": null, "a": [1, [2, {"b": []}]], "o": {}
        });
        let back = dynamic_to_json(&json_to_dynamic(value.clone()), 1 << 20).unwrap();
        assert_eq!(back["big"], json!(18446744073709551615f64));
        let mut expected = value;
        expected["big"] = json!(18446744073709551615f64);
        assert_eq!(back, expected);
    }

    #[test]
    fn non_json_values_are_refused_with_a_path() {
        let mut inner = Map::new();
        inner.insert("f".into(), Dynamic::from_float(f64::NAN));
        let value = Dynamic::from_array(vec![Dynamic::from_int(1), Dynamic::from_map(inner)]);
        let err = dynamic_to_json(&value, 1 << 20).unwrap_err();
        assert_eq!(
            err.describe("value"),
            "value[1].f is the float NaN, which JSON cannot represent"
        );
    }

    #[test]
    fn chars_and_blobs_convert() {
        assert_eq!(
            dynamic_to_json(&Dynamic::from_char('x'), 100).unwrap(),
            json!("x")
        );
        assert_eq!(
            dynamic_to_json(&Dynamic::from_blob(vec![1, 255]), 100).unwrap(),
            json!([1, 255])
        );
    }

    #[test]
    fn rust_type_names_stay_out_of_messages() {
        let err = dynamic_to_json(&Dynamic::from(1..2 as rhai::INT), 100).unwrap_err();
        assert_eq!(err.describe("v"), "v is a range, which has no JSON form");
    }

    #[test]
    fn nesting_is_bounded() {
        let mut value = Dynamic::UNIT;
        for _ in 0..=MAX_JSON_DEPTH {
            value = Dynamic::from_array(vec![value]);
        }
        let err = dynamic_to_json(&value, 1 << 20).unwrap_err();
        assert!(err.describe("v").contains("nests deeper than 128 levels"));
    }

    #[test]
    fn container_items_are_counted_without_parsing() {
        assert_eq!(json_container_items(br#"null"#), (0, 0));
        assert_eq!(json_container_items(br#"[]"#), (0, 0));
        assert_eq!(json_container_items(br#"[1, "a,[", [], {}]"#), (4, 0));
        assert_eq!(
            json_container_items(br#"{"a": [1, 2], "b\"": {"c": null}}"#),
            (2, 3)
        );
        assert_eq!(json_container_items(br#"[[[1]], [[2, 3]]]"#), (7, 0));
        let body = format!("[{}[]]", "[],".repeat(700_000));
        assert_eq!(json_container_items(body.as_bytes()), (700_001, 0));
    }

    #[test]
    fn a_shared_string_under_many_keys_stops_at_the_budget() {
        let big: rhai::ImmutableString = "x".repeat(1 << 20).into();
        let map: Map = (0..3000)
            .map(|i| (format!("k{i}").into(), Dynamic::from(big.clone())))
            .collect();
        let err = dynamic_to_json(&Dynamic::from_map(map), 8 << 20).unwrap_err();
        assert_eq!(err.too_large(), Some(8 << 20));
        assert!(dynamic_to_json(&Dynamic::from(big), 2 << 20).is_ok());
    }
}
