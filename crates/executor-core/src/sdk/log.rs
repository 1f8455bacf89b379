//! `log::info/warn/error(msg)` and the engine's `print`/`debug`: script output
//! as `tracing` events on target `picloud::script`, tagged with the app id,
//! script name and trigger of the current run.
//!
//! Messages are cut to [`MAX_LOG_CHARS`] so a script cannot flood the logs
//! with one call; a non-string argument is logged in its display form,
//! written under a byte budget (`render`), never whole. Values the run got
//! from `secrets::get` are scrubbed from every line.

use super::SdkResult;
use crate::render::{render, single_line};
use crate::run_state::{self, RunState};
use rhai::{Dynamic, Module};

/// Longest logged message, in characters.
pub(crate) const MAX_LOG_CHARS: usize = 4096;

#[derive(Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Builds the `log` module.
pub(crate) fn module() -> Module {
    let mut module = Module::new();
    module.set_native_fn("info", |msg: Dynamic| emit_dynamic(Level::Info, &msg));
    module.set_native_fn("warn", |msg: Dynamic| emit_dynamic(Level::Warn, &msg));
    module.set_native_fn("error", |msg: Dynamic| emit_dynamic(Level::Error, &msg));
    module
}

/// Where the engine's `print` and `debug` output goes: debug-level events.
pub(crate) fn print(text: &str) {
    emit(Level::Debug, text);
}

fn emit_dynamic(level: Level, msg: &Dynamic) -> SdkResult<()> {
    match msg.as_immutable_string_ref() {
        Ok(text) => emit(level, text.as_str()),
        // Four bytes per kept character at most, and room for a secret at the cut.
        Err(_) => emit(
            level,
            &render(msg, MAX_LOG_CHARS * 4 + run_state::scrub_margin()).text,
        ),
    }
    Ok(())
}

fn emit(level: Level, text: &str) {
    let enabled = match level {
        Level::Debug => tracing::enabled!(target: "picloud::script", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "picloud::script", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "picloud::script", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "picloud::script", tracing::Level::ERROR),
    };
    if !enabled {
        return;
    }
    // Scrubbed before the cut (a cut secret would no longer match), one line after.
    let scrubbed = run_state::scrub(text.to_owned());
    let text = single_line(&truncate(&scrubbed)).into_owned();
    let (app_id, script, trigger) = run_state::with_current(|run: &RunState| {
        (run.app_id.to_string(), run.script_name.clone(), run.trigger)
    })
    .unwrap_or_default();
    let (app_id, script) = (app_id.as_str(), script.as_str());
    match level {
        Level::Debug => {
            tracing::debug!(target: "picloud::script", app_id, script, trigger, "{text}")
        }
        Level::Info => {
            tracing::info!(target: "picloud::script", app_id, script, trigger, "{text}")
        }
        Level::Warn => {
            tracing::warn!(target: "picloud::script", app_id, script, trigger, "{text}")
        }
        Level::Error => {
            tracing::error!(target: "picloud::script", app_id, script, trigger, "{text}")
        }
    }
}

fn truncate(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_LOG_CHARS) {
        None => text.into(),
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(MAX_LOG_CHARS + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_LOG_CHARS + 1);
    }
}
