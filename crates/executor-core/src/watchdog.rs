//! The wall-clock deadline of the run on each thread, as a flag that one
//! watchdog thread flips.
//!
//! Why a flag: the sandbox must notice a passed deadline after *every* Rhai
//! operation — checking only every N operations multiplies the overrun by N
//! when each operation is slow (comparing two large arrays, say). Reading the
//! clock on every operation would cost more than the operation; reading an
//! atomic flag costs about a nanosecond. So each thread that runs scripts owns
//! a [`Slot`] (its deadline and an `expired` flag), registered once with the
//! process-wide watchdog thread, which compares every armed slot's deadline
//! with the clock every [`TICK`] and sets the flag. A deadline is therefore
//! noticed at most one tick plus one operation after it passes. The flag stays
//! set until the run ends, so a built-in that swallows one error (a callback
//! inside `sort`) meets it again at the next operation.
//!
//! The watchdog parks while no slot is armed and is woken by the next arm.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How often the watchdog compares armed deadlines with the clock.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// The top bit of a slot's state: its deadline has passed.
const EXPIRED: u64 = 1 << 63;
/// The deadline bits of a disarmed slot.
const DISARMED: u64 = EXPIRED - 1;

/// One thread's deadline and expired flag, in one word so that the watchdog
/// can flag exactly the deadline it compared (never a newer run's).
#[derive(Debug)]
pub(crate) struct Slot {
    /// Nanoseconds since [`epoch`] (or [`DISARMED`]), with [`EXPIRED`] set once passed.
    state: AtomicU64,
}

/// Every thread's slot; dead threads' entries are pruned by the watchdog.
static SLOTS: Mutex<Vec<Weak<Slot>>> = Mutex::new(Vec::new());
/// True while the watchdog sleeps with nothing armed.
static PARKED: AtomicBool = AtomicBool::new(false);
/// The watchdog thread, started by the first slot.
static THREAD: OnceLock<Thread> = OnceLock::new();

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos())
        .unwrap_or(DISARMED - 1)
        .min(DISARMED - 1)
}

fn watchdog_thread() -> &'static Thread {
    THREAD.get_or_init(|| {
        std::thread::Builder::new()
            .name("picloud-watchdog".into())
            .spawn(watch)
            .expect("the watchdog thread starts (timeouts cannot be enforced otherwise)")
            .thread()
            .clone()
    })
}

fn watch() {
    loop {
        if scan() {
            std::thread::sleep(TICK);
            continue;
        }
        PARKED.store(true, Ordering::SeqCst);
        // Scan again after announcing the park: an arm that came before the
        // announcement is seen here, one that comes after it unparks us.
        if !scan() {
            std::thread::park_timeout(Duration::from_secs(1));
        }
        PARKED.store(false, Ordering::SeqCst);
    }
}

/// Flags every armed slot whose deadline has passed; true when any slot is armed.
fn scan() -> bool {
    let now = nanos_since_epoch(Instant::now());
    let mut armed = false;
    SLOTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|weak| {
            let Some(slot) = weak.upgrade() else {
                return false;
            };
            let state = slot.state.load(Ordering::SeqCst);
            if state & DISARMED != DISARMED {
                armed = true;
                if state & EXPIRED == 0 && state <= now {
                    // Fails harmlessly when the thread re-armed in between.
                    let _ = slot.state.compare_exchange(
                        state,
                        state | EXPIRED,
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    );
                }
            }
            true
        });
    armed
}

thread_local! {
    static SLOT: Arc<Slot> = register();
}

fn register() -> Arc<Slot> {
    let slot = Arc::new(Slot {
        state: AtomicU64::new(DISARMED),
    });
    watchdog_thread();
    SLOTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::downgrade(&slot));
    slot
}

/// Arms this thread's deadline until the guard drops; `None` never expires.
pub(crate) fn arm(deadline: Option<Instant>) -> ArmGuard {
    SLOT.with(|slot| {
        let previous = slot.state.load(Ordering::SeqCst);
        let new = deadline.map_or(DISARMED, nanos_since_epoch);
        // A nested arm (compiling inside a run) never extends the outer deadline.
        let effective = new.min(previous & DISARMED);
        let passed = effective != DISARMED && effective <= nanos_since_epoch(Instant::now());
        let state = if passed || previous & EXPIRED != 0 && effective == previous & DISARMED {
            effective | EXPIRED
        } else {
            effective
        };
        slot.state.store(state, Ordering::SeqCst);
        if effective != DISARMED && PARKED.load(Ordering::SeqCst) {
            watchdog_thread().unpark();
        }
        ArmGuard { previous }
    })
}

/// Restores the deadline that was armed before [`arm`] (usually none).
pub(crate) struct ArmGuard {
    previous: u64,
}

impl Drop for ArmGuard {
    fn drop(&mut self) {
        let _ = SLOT.try_with(|slot| slot.state.store(self.previous, Ordering::SeqCst));
    }
}

/// True when this thread's armed deadline has passed (as last seen by the watchdog).
#[inline]
pub(crate) fn expired() -> bool {
    SLOT.try_with(|slot| slot.state.load(Ordering::Relaxed) & EXPIRED != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_flips_within_a_few_ticks_of_the_deadline() {
        let start = Instant::now();
        let _guard = arm(Some(start + Duration::from_millis(30)));
        assert!(!expired());
        while !expired() {
            assert!(start.elapsed() < Duration::from_secs(5), "never expired");
            std::thread::yield_now();
        }
        let late = start.elapsed();
        assert!(late >= Duration::from_millis(30), "expired early: {late:?}");
    }

    #[test]
    fn disarming_clears_the_flag_and_nested_arms_never_extend() {
        {
            let _outer = arm(Some(Instant::now()));
            assert!(expired(), "a deadline already passed is expired at once");
            let _inner = arm(Some(Instant::now() + Duration::from_secs(60)));
            assert!(expired(), "the inner arm keeps the earlier outer deadline");
        }
        assert!(!expired());
    }
}
