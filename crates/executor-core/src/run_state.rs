//! The per-run state of the script running on this thread.
//!
//! A run is synchronous and stays on one (blocking) thread, so the state the
//! sandbox and the SDK bridges need — which app, which script, when the
//! wall-clock deadline falls — lives in a thread-local installed by
//! [`enter`] and removed when the returned guard drops, even on panic.
//! `on_progress` only sees an operation count, and SDK functions are shared
//! by every run, so this is how both learn whose run they serve.

use picloud_shared::ids::AppId;
use std::cell::RefCell;
use std::time::Instant;

/// What the sandbox and the SDK know about the run in progress.
#[derive(Debug, Clone)]
pub(crate) struct RunState {
    pub app_id: AppId,
    pub script_name: String,
    pub trigger: &'static str,
    /// `None` when the timeout is too large to represent.
    pub deadline: Option<Instant>,
}

thread_local! {
    static CURRENT: RefCell<Option<RunState>> = const { RefCell::new(None) };
}

/// Restores the state that was current before [`enter`] when dropped.
pub(crate) struct RunGuard {
    previous: Option<RunState>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
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
            script_name: name.into(),
            trigger: "http",
            deadline: None,
        }
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
}
