//! How a failed run is reported: [`RunError`], and the one mapping from Rhai's
//! errors to it.
//!
//! Messages are single lines built from our own words, the thrown value and a
//! position; Rhai's multi-line call traces and Rust debug output never reach
//! a caller.

use crate::render::{render, single_line};
use crate::run_state::scrub_margin;
use crate::sandbox::{COMPILE_TIMEOUT_MARK, MEMORY_TOKEN, STRING_TOKEN};
use crate::SandboxLimits;
use picloud_shared::script::CompileError;
use rhai::{Dynamic, EvalAltResult, LexError, ParseError, ParseErrorType, Position};

/// Longest message a [`RunError`] carries, in characters; longer ones are cut.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Why a script run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The script did not compile, threw, or failed at run time.
    #[error("{message}")]
    Script {
        /// One line, with the position when known.
        message: String,
    },
    /// The sandbox stopped the script.
    #[error("{message}")]
    Limit {
        /// The limit that was hit: `max_operations`, `timeout`, `max_call_depth`,
        /// `max_string_bytes`, `max_array_items`, `max_map_items`, `max_memory_bytes`,
        /// `max_value_bytes`, `max_source_bytes` or `compile_timeout`.
        limit: &'static str,
        /// One line naming the limit and its configured value.
        message: String,
    },
}

impl RunError {
    /// The API error code: `script_error` or `script_limit`.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Script { .. } => "script_error",
            RunError::Limit { .. } => "script_limit",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            RunError::Script { message } | RunError::Limit { message, .. } => message,
        }
    }

    /// The limit that stopped the script, if one did.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            RunError::Script { .. } => None,
            RunError::Limit { limit, .. } => Some(limit),
        }
    }

    /// A script error: `body`, made one bounded line (scrubbed of the run's
    /// secret values), then the position.
    pub(crate) fn script_at(body: String, pos: Position) -> Self {
        RunError::Script {
            message: format!("{}{}", one_line(body), at(pos)),
        }
    }

    /// Classifies an error a run ended with.
    pub(crate) fn from_eval(
        err: EvalAltResult,
        limits: &SandboxLimits,
        max_memory_bytes: usize,
    ) -> Self {
        let mut err = innermost(err);
        let pos = err.position();
        let limit = |limit: &'static str, message: String| RunError::Limit { limit, message };
        match &err {
            EvalAltResult::ErrorTooManyOperations(_) => limit(
                "max_operations",
                format!(
                    "script exceeded the limit of {} operations{}",
                    limits.max_operations,
                    at(pos)
                ),
            ),
            EvalAltResult::ErrorTerminated(token, _) => {
                match token
                    .as_immutable_string_ref()
                    .as_deref()
                    .map(|t| t.as_str())
                {
                    Ok(MEMORY_TOKEN) => limit(
                        "max_memory_bytes",
                        format!(
                            "script exceeded the memory limit of {max_memory_bytes} bytes{}",
                            at(pos)
                        ),
                    ),
                    Ok(STRING_TOKEN) => string_limit(limits, pos),
                    _ => limit(
                        "timeout",
                        format!(
                            "script exceeded the wall-clock timeout of {} ms",
                            limits.timeout.as_millis()
                        ),
                    ),
                }
            }
            EvalAltResult::ErrorStackOverflow(_) => limit(
                "max_call_depth",
                format!(
                    "script exceeded the maximum call depth of {}{}",
                    limits.max_call_depth,
                    at(pos)
                ),
            ),
            EvalAltResult::ErrorDataTooLarge(what, _) => {
                let what = what.to_ascii_lowercase();
                if what.contains("string") {
                    string_limit(limits, pos)
                } else if what.contains("map") {
                    limit(
                        "max_map_items",
                        format!(
                            "an object map exceeded the limit of {} entries{}",
                            limits.max_map_items,
                            at(pos)
                        ),
                    )
                } else {
                    limit(
                        "max_array_items",
                        format!(
                            "an array exceeded the limit of {} items{}",
                            limits.max_array_items,
                            at(pos)
                        ),
                    )
                }
            }
            EvalAltResult::ErrorRuntime(value, _) => {
                RunError::script_at(thrown_message(value), pos)
            }
            EvalAltResult::ErrorParsing(parse, _) if is_compile_timeout(parse) => {
                compile_timeout(limits)
            }
            EvalAltResult::ErrorParsing(parse, _) => {
                RunError::script_at(format!("syntax error: {parse}"), pos)
            }
            _ => {
                err.clear_position();
                RunError::script_at(err.to_string(), pos)
            }
        }
    }
}

/// The error inside any "in call to function" / "in module" wrappers: it has
/// the precise position and a one-line message.
fn innermost(err: EvalAltResult) -> EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => innermost(*inner),
        other => other,
    }
}

fn string_limit(limits: &SandboxLimits, pos: Position) -> RunError {
    RunError::Limit {
        limit: "max_string_bytes",
        message: format!(
            "a string exceeded the limit of {} bytes{}",
            limits.max_string_bytes,
            at(pos)
        ),
    }
}

/// True when the compile was stopped at its deadline (see `sandbox`).
fn is_compile_timeout(err: &ParseErrorType) -> bool {
    matches!(err, ParseErrorType::BadInput(LexError::Runtime(m)) if m == COMPILE_TIMEOUT_MARK)
}

fn compile_timeout(limits: &SandboxLimits) -> RunError {
    RunError::Limit {
        limit: "compile_timeout",
        message: format!(
            "compiling the script took longer than {} ms",
            limits.compile_timeout.as_millis()
        ),
    }
}

/// A compile failure as the shared [`CompileError`], position included.
pub(crate) fn compile_error(err: &ParseError, limits: &SandboxLimits) -> CompileError {
    let pos = err.position();
    let message = if is_compile_timeout(err.err_type()) {
        compile_timeout(limits).message().to_owned()
    } else {
        one_line(err.err_type().to_string())
    };
    CompileError {
        message,
        line: pos.line().unwrap_or(0),
        column: pos.position().unwrap_or(0),
    }
}

/// A compile failure met while running: a script error with the position in
/// its message, or the compile time limit.
pub(crate) fn compile_run_error(err: &ParseError, limits: &SandboxLimits) -> RunError {
    if is_compile_timeout(err.err_type()) {
        return compile_timeout(limits);
    }
    RunError::script_at(format!("syntax error: {}", err.err_type()), err.position())
}

/// `" (line L, column C)"`, or nothing when the position is unknown.
fn at(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
        (Some(line), None) => format!(" (line {line})"),
        _ => String::new(),
    }
}

/// The message of a thrown value: `"<kind>: <message>"` for an SDK-style error map.
fn thrown_message(value: &Dynamic) -> String {
    if let Ok(map) = value.as_map_ref() {
        if let (Some(kind), Some(message)) = (map.get("kind"), map.get("message")) {
            let kind = render(kind, MAX_MESSAGE_CHARS + scrub_margin()).text;
            let message = render(message, MAX_MESSAGE_CHARS * 4 + scrub_margin()).text;
            return format!("{kind}: {message}");
        }
    }
    if value.is_unit() {
        return "script threw ()".to_string();
    }
    // A thrown value can be a huge (or hugely shared) container: write only what
    // is kept, and enough more that a secret at the cut is still whole for scrubbing.
    render(value, MAX_MESSAGE_CHARS * 4 + scrub_margin()).text
}

/// The one way a message is finished: values the run got from `secrets::get`
/// replaced (first, so neither of the next steps can hide a secret from it),
/// control characters made spaces, the text cut to [`MAX_MESSAGE_CHARS`].
fn one_line(message: String) -> String {
    let message = crate::run_state::scrub(message);
    let needs_work = message.len() > MAX_MESSAGE_CHARS || message.chars().any(char::is_control);
    if !needs_work {
        return message;
    }
    let mut out: String = single_line(&message)
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_bounded() {
        assert_eq!(one_line("a\nb\tc".into()), "a b c");
        let long = one_line("x".repeat(5000));
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn error_kinds() {
        let script = RunError::script_at("x\ny".into(), Position::new(2, 3));
        assert_eq!(script.kind(), "script_error");
        assert_eq!(script.message(), "x y (line 2, column 3)");
        assert_eq!(script.limit(), None);
        let limit = RunError::Limit {
            limit: "timeout",
            message: "m".into(),
        };
        assert_eq!(limit.kind(), "script_limit");
        assert_eq!(limit.limit(), Some("timeout"));
        assert_eq!(limit.to_string(), "m");
    }
}
