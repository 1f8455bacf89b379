//! [`ScriptPool`]: the bounded, fair pool of threads every script runs on.
//!
//! Why not `spawn_blocking`: tokio's blocking pool grows to 512 threads, so a
//! flood of slow public invokes takes every thread (and 512 memory budgets)
//! while harmless work waits; and its threads have the runtime's stack size.
//! Here a fixed number of dedicated threads, each with a stack sized for the
//! deepest value the sandbox limits allow, take jobs from one bounded queue:
//!
//! - **Bounded wait.** At most `queue` jobs wait. A job submitted with
//!   [`Admission::Reject`] (an HTTP invoke) fails at once with
//!   [`PoolError::Busy`] when the queue (or its app's share of it) is full,
//!   and gives up after `max_wait`; a job submitted with [`Admission::Wait`]
//!   (a trigger handler, which has nowhere to answer) waits for room instead.
//! - **Fairness.** One app runs at most `max_per_app` jobs at once and holds
//!   at most its share of the queue (`queue × max_per_app / workers`), so one
//!   app flooding the pool leaves workers and room for the others. Workers
//!   take the oldest queued job whose app is under its cap.
//! - **Cancellation.** A job whose submitter went away (a client hung up, the
//!   wait timed out) is removed from the queue and never runs.
//!
//! - **Priority.** Workers run at a nice value 10 above the process, so
//!   CPU-bound scripts cannot starve the async runtime (health checks, admin
//!   calls, other requests' I/O) on a small machine.
//!
//! Workers are plain threads the process does not join: at shutdown a script
//! still running past the grace period does not hold the process. After a
//! long job a worker gives the memory it touched back (see `reclaim`).

use crate::reclaim;
use picloud_shared::ids::AppId;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// How a submitter waits for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Fail with [`PoolError::Busy`] when there is no room, or when no worker
    /// took the job within `max_wait` (a job that started always finishes).
    Reject,
    /// Wait as long as it takes for room in the queue (background work).
    Wait,
}

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No room in the queue, or no worker within the wait bound: try again later.
    #[error("all script workers are busy; retry shortly")]
    Busy,
    /// The job panicked outside the sandbox's own panic guard.
    #[error("the script worker failed")]
    Failed,
}

/// The pool's size and shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads.
    pub workers: usize,
    /// Most jobs waiting for a worker.
    pub queue: usize,
    /// Most jobs of one app running at once.
    pub max_per_app: usize,
    /// Longest a [`Admission::Reject`] job waits for a worker before [`PoolError::Busy`].
    pub max_wait: Duration,
    /// Stack size of each worker thread.
    pub stack_bytes: usize,
}

impl PoolConfig {
    /// Defaults for a machine with `cores` cores: twice as many workers (scripts
    /// wait on PostgreSQL as often as they compute), at least 4; half of them per
    /// app; 32 queued jobs per worker; the stack the default limits need.
    pub fn for_cores(cores: usize) -> Self {
        let workers = (cores * 2).max(4);
        Self {
            workers,
            queue: workers * 32,
            max_per_app: (workers / 2).max(1),
            max_wait: Duration::from_secs(10),
            stack_bytes: crate::script_stack_bytes(
                &crate::SandboxLimits::default(),
                crate::memory::DEFAULT_MAX_MEMORY_BYTES,
            ),
        }
    }

    /// The most queued jobs one app may hold.
    fn queue_per_app(&self) -> usize {
        (self.queue * self.max_per_app / self.workers.max(1)).max(1)
    }
}

/// A point-in-time reading of the pool, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Worker threads.
    pub workers: usize,
    /// Workers running a job now.
    pub busy: usize,
    /// Jobs waiting for a worker now.
    pub queued: usize,
    /// Jobs refused with [`PoolError::Busy`] since start.
    pub rejected_total: u64,
}

type Work = Box<dyn FnOnce() + Send>;

struct Job {
    id: u64,
    app: AppId,
    work: Work,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    running: HashMap<AppId, usize>,
    queued: HashMap<AppId, usize>,
    busy: usize,
}

struct Inner {
    config: PoolConfig,
    state: Mutex<State>,
    /// Workers wait here for an eligible job.
    work_ready: Condvar,
    /// [`Admission::Wait`] submitters wait here for room in the queue.
    room: Notify,
    next_id: AtomicU64,
    rejected: AtomicU64,
}

/// The bounded, fair script pool; cheap to clone (one shared pool).
#[derive(Clone)]
pub struct ScriptPool {
    inner: Arc<Inner>,
}

impl ScriptPool {
    /// Starts `config.workers` worker threads.
    pub fn start(config: PoolConfig) -> std::io::Result<Self> {
        let config = PoolConfig {
            workers: config.workers.max(1),
            queue: config.queue.max(1),
            max_per_app: config.max_per_app.clamp(1, config.workers.max(1)),
            ..config
        };
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State::default()),
            work_ready: Condvar::new(),
            room: Notify::new(),
            next_id: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        });
        for n in 0..inner.config.workers {
            let worker = inner.clone();
            std::thread::Builder::new()
                .name(format!("picloud-script-{n}"))
                .stack_size(inner.config.stack_bytes)
                .spawn(move || worker.work())?;
        }
        Ok(Self { inner })
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Runs `job` on a worker, counted against `app`, and returns its value.
    pub async fn run<T, F>(&self, app: AppId, admission: Admission, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move || {
            let started = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(job));
            reclaim::after_job(started.elapsed());
            let _ = tx.send(result.map_err(|_| PoolError::Failed));
        });
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut job = Some(Job { id, app, work });
        loop {
            let room = self.inner.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a wake-up between the two is not lost.
            room.as_mut().enable();
            match self.inner.try_enqueue(&mut job) {
                Ok(()) => break,
                Err(()) if admission == Admission::Reject => {
                    self.inner.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(PoolError::Busy);
                }
                Err(()) => room.await,
            }
        }
        // Dropped with this future (a client that hung up): the job leaves the queue.
        let _queued = QueuedGuard {
            inner: &self.inner,
            id,
        };
        let mut rx = rx;
        if admission == Admission::Reject {
            tokio::select! {
                received = &mut rx => return received.map_err(|_| PoolError::Failed)?,
                () = tokio::time::sleep(self.inner.config.max_wait) => {
                    // Only a job still waiting is given up; one that started runs to the end.
                    if self.inner.cancel(id) {
                        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
                        return Err(PoolError::Busy);
                    }
                }
            }
        }
        rx.await.map_err(|_| PoolError::Failed)?
    }

    /// A reading of busy workers, queue depth and rejections.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            workers: self.inner.config.workers,
            busy: state.busy,
            queued: state.queue.len(),
            rejected_total: self.inner.rejected.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` (taking it) if the queue and the app's share have room.
    fn try_enqueue(&self, job: &mut Option<Job>) -> Result<(), ()> {
        let mut state = self.lock();
        let Some(app) = job.as_ref().map(|j| j.app) else {
            return Ok(());
        };
        let app_queued = state.queued.get(&app).copied().unwrap_or(0);
        if state.queue.len() >= self.config.queue || app_queued >= self.config.queue_per_app() {
            return Err(());
        }
        let Some(job) = job.take() else {
            return Ok(());
        };
        *state.queued.entry(app).or_default() += 1;
        state.queue.push_back(job);
        drop(state);
        self.work_ready.notify_one();
        Ok(())
    }

    /// Removes a job that has not started; false when it already has (or is done).
    fn cancel(&self, id: u64) -> bool {
        let mut state = self.lock();
        let Some(job) = state
            .queue
            .iter()
            .position(|job| job.id == id)
            .and_then(|index| state.queue.remove(index))
        else {
            return false;
        };
        decrement(&mut state.queued, job.app);
        drop(state);
        self.room.notify_waiters();
        true
    }

    /// A worker's life: take the oldest eligible job, run it, repeat.
    fn work(&self) {
        lower_this_threads_priority();
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    let cap = self.config.max_per_app;
                    let eligible = state
                        .queue
                        .iter()
                        .position(|job| state.running.get(&job.app).copied().unwrap_or(0) < cap);
                    if let Some(job) = eligible.and_then(|index| state.queue.remove(index)) {
                        decrement(&mut state.queued, job.app);
                        *state.running.entry(job.app).or_default() += 1;
                        state.busy += 1;
                        break job;
                    }
                    state = self
                        .work_ready
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            self.room.notify_waiters();
            let app = job.app;
            (job.work)();
            let mut state = self.lock();
            decrement(&mut state.running, app);
            state.busy -= 1;
            let more_waiting = !state.queue.is_empty();
            drop(state);
            if more_waiting {
                // A job of this app may have waited for its cap only; any idle worker may take it.
                self.work_ready.notify_all();
            }
        }
    }
}

/// How much nicer than the rest of the process script threads run.
const SCRIPT_NICENESS: libc::c_int = 10;

/// Makes the calling (worker) thread yield the CPU to the process's other
/// threads: scripts are user code, and a few CPU-bound ones on a small machine
/// must not starve the async runtime that answers health checks, admin calls
/// and every other request's I/O. Linux nice values are per thread.
fn lower_this_threads_priority() {
    // SAFETY: `gettid` has no preconditions; `getpriority`/`setpriority` on the
    // calling thread's own id only read or lower its priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        if current == -1 && *libc::__errno_location() != 0 {
            return;
        }
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, (current + SCRIPT_NICENESS).min(19));
    }
}

/// The calling thread's nice value (for tests).
#[cfg(test)]
fn this_threads_niceness() -> libc::c_int {
    // SAFETY: as above, a read of the calling thread's own priority.
    unsafe {
        libc::getpriority(
            libc::PRIO_PROCESS,
            libc::syscall(libc::SYS_gettid) as libc::id_t,
        )
    }
}

fn decrement(counts: &mut HashMap<AppId, usize>, app: AppId) {
    if let Some(count) = counts.get_mut(&app) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&app);
        }
    }
}

/// Takes a job out of the queue when its submitter stops waiting.
struct QueuedGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        let _ = self.inner.cancel(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    fn pool(workers: usize, queue: usize, max_per_app: usize) -> ScriptPool {
        ScriptPool::start(PoolConfig {
            workers,
            queue,
            max_per_app,
            max_wait: Duration::from_secs(30),
            stack_bytes: 2 * 1024 * 1024,
        })
        .unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn runs_jobs_and_returns_their_values() {
        let pool = pool(2, 8, 2);
        let value = runtime().block_on(pool.run(AppId::new(), Admission::Reject, || 41 + 1));
        assert_eq!(value, Ok(42));
        // The worker counts itself idle just after handing the value over.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.stats().busy != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker stayed busy"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn workers_run_nicer_than_the_rest_of_the_process() {
        let pool = pool(1, 4, 1);
        let mine = this_threads_niceness();
        let worker = runtime()
            .block_on(pool.run(AppId::new(), Admission::Reject, this_threads_niceness))
            .unwrap();
        assert_eq!(worker, (mine + SCRIPT_NICENESS).min(19));
    }

    #[test]
    fn a_full_queue_rejects_and_counts_it() {
        let pool = pool(1, 1, 1);
        let rt = runtime();
        let app = AppId::new();
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        let running = rt.spawn({
            let pool = pool.clone();
            async move { pool.run(app, Admission::Reject, move || g.wait()).await }
        });
        while pool.stats().busy == 0 {
            std::thread::yield_now();
        }
        let queued = rt.spawn({
            let pool = pool.clone();
            async move { pool.run(app, Admission::Reject, || 1).await }
        });
        while pool.stats().queued == 0 {
            std::thread::yield_now();
        }
        let third = rt.block_on(pool.run(AppId::new(), Admission::Reject, || 2));
        assert_eq!(third, Err(PoolError::Busy));
        assert_eq!(pool.stats().rejected_total, 1);
        gate.wait();
        assert!(rt.block_on(running).unwrap().is_ok());
        assert_eq!(rt.block_on(queued).unwrap(), Ok(1));
    }

    #[test]
    fn one_app_cannot_take_every_worker() {
        let pool = pool(2, 16, 1);
        let rt = runtime();
        let flooding = AppId::new();
        let release = Arc::new(Barrier::new(2));
        let started = Arc::new(AtomicUsize::new(0));
        let mut floods = Vec::new();
        for _ in 0..3 {
            let (pool, release, started) = (pool.clone(), release.clone(), started.clone());
            floods.push(rt.spawn(async move {
                pool.run(flooding, Admission::Reject, move || {
                    if started.fetch_add(1, Ordering::SeqCst) == 0 {
                        release.wait();
                    }
                })
                .await
            }));
        }
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // The flooding app holds its one worker; another app still gets the second.
        let other = rt.block_on(pool.run(AppId::new(), Admission::Reject, || "other"));
        assert_eq!(other, Ok("other"));
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "the cap held the flood to one worker"
        );
        release.wait();
        for flood in floods {
            assert!(rt.block_on(flood).unwrap().is_ok());
        }
    }

    #[test]
    fn a_waiting_submitter_gets_in_when_room_frees() {
        let pool = pool(1, 1, 1);
        let rt = runtime();
        let app = AppId::new();
        let results: Vec<_> = rt.block_on(async {
            let jobs = (0..6).map(|n| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(app, Admission::Wait, move || {
                        std::thread::sleep(Duration::from_millis(5));
                        n
                    })
                    .await
                })
            });
            let mut out = Vec::new();
            for job in jobs.collect::<Vec<_>>() {
                out.push(job.await.unwrap());
            }
            out
        });
        assert_eq!(results, (0..6).map(Ok).collect::<Vec<_>>());
        assert_eq!(pool.stats().rejected_total, 0);
    }

    #[test]
    fn an_abandoned_job_leaves_the_queue_and_never_runs() {
        let pool = pool(1, 4, 1);
        let rt = runtime();
        let app = AppId::new();
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        let blocker = rt.spawn({
            let pool = pool.clone();
            async move { pool.run(app, Admission::Reject, move || g.wait()).await }
        });
        while pool.stats().busy == 0 {
            std::thread::yield_now();
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let abandoned = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(20),
                pool.run(app, Admission::Reject, move || {
                    r.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .await
        });
        assert!(abandoned.is_err(), "the submitter gave up");
        assert_eq!(pool.stats().queued, 0, "the abandoned job left the queue");
        gate.wait();
        assert!(rt.block_on(blocker).unwrap().is_ok());
        assert_eq!(rt.block_on(pool.run(app, Admission::Reject, || 7)), Ok(7));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_wait_bound_gives_up_queued_jobs_but_never_started_ones() {
        let pool = ScriptPool::start(PoolConfig {
            workers: 1,
            queue: 4,
            max_per_app: 1,
            max_wait: Duration::from_millis(100),
            stack_bytes: 2 * 1024 * 1024,
        })
        .unwrap();
        let rt = runtime();
        let app = AppId::new();
        let slow = rt.spawn({
            let pool = pool.clone();
            async move {
                pool.run(app, Admission::Reject, || {
                    std::thread::sleep(Duration::from_millis(400));
                    "slow"
                })
                .await
            }
        });
        while pool.stats().busy == 0 {
            std::thread::yield_now();
        }
        let queued = rt.block_on(pool.run(app, Admission::Reject, || "queued"));
        assert_eq!(
            queued,
            Err(PoolError::Busy),
            "waited past max_wait in the queue"
        );
        assert_eq!(
            rt.block_on(slow).unwrap(),
            Ok("slow"),
            "ran past max_wait once started"
        );
    }

    #[test]
    fn a_panicking_job_fails_alone() {
        let pool = pool(1, 4, 1);
        let rt = runtime();
        let failed = rt.block_on(pool.run(AppId::new(), Admission::Reject, || {
            if true {
                panic!("boom");
            }
        }));
        assert_eq!(failed, Err(PoolError::Failed));
        assert_eq!(
            rt.block_on(pool.run(AppId::new(), Admission::Reject, || 3)),
            Ok(3)
        );
    }
}
