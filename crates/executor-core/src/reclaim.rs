//! Giving memory a heavy run touched back to the operating system.
//!
//! Why: a chain of closures nests as deep as the memory budget allows, and
//! dropping it recurses once per level, touching hundreds of MB of the
//! worker's stack (reserved large for exactly this; see `script_stack_bytes`).
//! Touched stack pages stay resident after the run, and so do the freed
//! allocations glibc keeps in its per-thread arenas: without this, every
//! worker that ever ran such a script holds its peak forever. After a run
//! that took long enough to have built something big, a worker releases the
//! stack below its current frame (`MADV_DONTNEED`: the pages read as zero
//! the next time they are touched) and asks glibc to trim its arenas.

use std::time::Duration;

/// Runs shorter than this cannot have built a value deep or large enough to matter.
const HEAVY_RUN: Duration = Duration::from_millis(20);

thread_local! {
    static STACK_LOW: Option<usize> = stack_low_address();
}

/// After a job that ran `elapsed`: when it was heavy, gives back what it
/// touched. Called before the job's result is handed over, so the memory is
/// back by the time anyone sees the answer.
pub(crate) fn after_job(elapsed: Duration) {
    if elapsed >= HEAVY_RUN {
        release(STACK_LOW.try_with(|low| *low).ok().flatten());
    }
}

/// Stack kept untouched near either end: the guard area at the bottom, the
/// live frames (and the red zone) at the top.
const MARGIN: usize = 256 * 1024;

/// The lowest address of this thread's stack, when the platform tells.
pub(crate) fn stack_low_address() -> Option<usize> {
    // SAFETY: `attr` is initialised by `pthread_getattr_np` before use and
    // destroyed once; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0 && !addr.is_null()).then_some(addr as usize)
    }
}

/// Releases the stack pages between `stack_low` (when known) and the caller's
/// frame, and trims the allocator's free memory.
pub(crate) fn release(stack_low: Option<usize>) {
    if let Some(stack_low) = stack_low {
        release_stack(stack_low);
    }
    // SAFETY: `malloc_trim` has no preconditions; it returns free memory only.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn release_stack(stack_low: usize) {
    let here = {
        let marker = 0u8;
        std::hint::black_box(&marker) as *const u8 as usize
    };
    // SAFETY: `sysconf` has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (stack_low + MARGIN).div_ceil(page) * page;
    let end = here.saturating_sub(MARGIN) / page * page;
    if end > start {
        // SAFETY: [start, end) lies inside this thread's own stack, strictly
        // below every live frame (the stack grows down from `here`), so no
        // live data is discarded; MADV_DONTNEED on private anonymous memory
        // only makes the pages read as zero when next touched.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of `len` bytes at `addr`, by `mincore`.
    fn resident_pages(addr: usize, len: usize) -> usize {
        let page = 4096;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: the range is this thread's mapped stack; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[inline(never)]
    fn touch_deep(levels: usize) -> usize {
        let block = std::hint::black_box([1u8; 4096]);
        if levels == 0 {
            return block[0] as usize;
        }
        touch_deep(levels - 1) + block[17] as usize
    }

    #[test]
    fn a_deep_stack_is_given_back() {
        let worker = std::thread::Builder::new()
            .stack_size(64 * 1024 * 1024)
            .spawn(|| {
                let low = stack_low_address().expect("stack bounds on Linux");
                let span = 48 * 1024 * 1024;
                // About 32 MiB of frames.
                std::hint::black_box(touch_deep(8_000));
                let here = &low as *const usize as usize;
                let region = (here - span) / 4096 * 4096;
                let touched = resident_pages(region, span - MARGIN * 2);
                release(Some(low));
                let left = resident_pages(region, span - MARGIN * 2);
                (touched, left)
            })
            .unwrap();
        let (touched, left) = worker.join().unwrap();
        assert!(touched > 4_000, "the deep call touched {touched} pages");
        assert!(
            left < touched / 10,
            "{left} of {touched} pages still resident"
        );
    }
}
