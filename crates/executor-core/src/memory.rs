//! Per-run memory accounting: an opt-in global allocator that counts the
//! bytes each thread holds, so the sandbox can stop a script that allocates
//! too much.
//!
//! Why it exists: Rhai checks its size limits only at some points. An
//! indexed assignment (`m[key] = value`, `a[i] = value`) checks the new item
//! but not the container, so a loop storing fresh 1 MiB strings under new
//! keys stays inside every Rhai limit while allocating gigabytes in seconds.
//! Counting allocations closes that hole whatever path the memory takes.
//!
//! How: the binary installs [`CountingAllocator`] as its `#[global_allocator]`.
//! Every allocation adds to a thread-local byte count and every free
//! subtracts from it. A run records the count when it starts; the sandbox's
//! `on_progress` hook compares the growth with the budget after every Rhai
//! operation (one thread-local read), and ends the run when it is exceeded.
//! Scripts run on one thread, so the growth is the script's own data (and
//! the SDK calls it makes). Without the allocator installed the count never
//! moves and the budget is not enforced; [`is_installed`] tells which.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Default memory budget of one run, in bytes (128 MiB).
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 128 * 1024 * 1024;

struct Accounting {
    /// Net bytes allocated by this thread, wrapping (frees of memory another
    /// thread allocated can take it "below zero").
    allocated: Cell<usize>,
    /// `allocated` when the current run started.
    baseline: Cell<usize>,
    /// The current run's budget; 0 outside a run.
    budget: Cell<usize>,
}

thread_local! {
    // Const-initialised and without `Drop`: reading it never allocates, so the
    // allocator itself may use it.
    static ACCOUNTING: Accounting = const {
        Accounting {
            allocated: Cell::new(0),
            baseline: Cell::new(0),
            budget: Cell::new(0),
        }
    };
}

fn add(bytes: usize) {
    let _ = ACCOUNTING.try_with(|a| a.allocated.set(a.allocated.get().wrapping_add(bytes)));
}

fn sub(bytes: usize) {
    let _ = ACCOUNTING.try_with(|a| a.allocated.set(a.allocated.get().wrapping_sub(bytes)));
}

/// The system allocator, counting each thread's net allocated bytes.
///
/// Install it in the binary: `#[global_allocator] static ALLOC:
/// CountingAllocator = CountingAllocator;`
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping only touches a thread-local counter and never
// allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            add(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) };
        sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            sub(layout.size());
            add(new_size);
        }
        new
    }
}

/// True when [`CountingAllocator`] is the global allocator (allocations move the count).
pub fn is_installed() -> bool {
    let before = ACCOUNTING.with(|a| a.allocated.get());
    let probe = std::hint::black_box(vec![0u8; 64]);
    let after = ACCOUNTING.with(|a| a.allocated.get());
    drop(probe);
    before != after
}

/// Net bytes this thread has allocated so far (wrapping); the difference of
/// two readings is what the code between them kept.
pub(crate) fn allocated_on_this_thread() -> usize {
    ACCOUNTING.try_with(|a| a.allocated.get()).unwrap_or(0)
}

/// Starts counting a run on this thread against `budget` bytes (0: unlimited)
/// until the guard drops.
pub(crate) fn start_run(budget: usize) -> RunMemoryGuard {
    let previous = ACCOUNTING.with(|a| {
        let previous = (a.baseline.get(), a.budget.get());
        a.baseline.set(a.allocated.get());
        a.budget.set(budget.min(isize::MAX as usize));
        previous
    });
    RunMemoryGuard { previous }
}

/// Restores the enclosing run's accounting (usually none) when dropped.
pub(crate) struct RunMemoryGuard {
    previous: (usize, usize),
}

impl Drop for RunMemoryGuard {
    fn drop(&mut self) {
        let (baseline, budget) = self.previous;
        let _ = ACCOUNTING.try_with(|a| {
            a.baseline.set(baseline);
            a.budget.set(budget);
        });
    }
}

/// True when the current run has grown past its budget.
#[inline]
pub(crate) fn over_budget() -> bool {
    ACCOUNTING
        .try_with(|a| {
            let budget = a.budget.get();
            budget != 0
                && (a.allocated.get().wrapping_sub(a.baseline.get()) as isize) > budget as isize
        })
        .unwrap_or(false)
}
