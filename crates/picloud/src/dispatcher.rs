//! The dispatcher: runs trigger handlers for the events in the outbox.
//!
//! Vocabulary: an event is **claimed** (leased to this process with
//! `FOR UPDATE SKIP LOCKED`, so several processes share the work), **run**
//! on the script pool (`Admission::Wait`: a handler has nobody to answer
//! 503 to), then **completed** (deleted), **retried** (attempts + 1, due again
//! after the trigger's backoff with jitter, error kept) or **dead-lettered**
//! (after its last attempt: moved to `dead_letters`, then fanned out to the
//! app's `dead_letter` triggers). An event whose process died is **rescued**:
//! a claim moves the row's due time to the lease's end, so it becomes due
//! again when the lease runs out, and that lost run counts as an attempt.
//!
//! Claims take a batch (`PICLOUD_DISPATCH_BATCH`) in one statement into a
//! local queue, topped up when it runs half empty; handlers start from it as
//! run slots free up (`PICLOUD_DISPATCH_CONCURRENCY`); outcomes are written by
//! one writer task that takes everything finished since its last write, so
//! under load completions and retries go out as one statement each. Leases
//! of running events are renewed every third of the lease. The dispatcher
//! wakes on `NOTIFY picloud_outbox` (sent at the commit of an enqueue) and
//! polls as a fallback (`PICLOUD_DISPATCH_POLL_MS`), which also picks up
//! retries when they fall due.
//!
//! Delivery is at least once: a handler can run again after it ran (its
//! process died before the completion was written, or its lease ran out).

use crate::http::AppState;
use chrono::Utc;
use picloud_executor_core::{Admission, Executor, RunContext, RunError, ScriptHandle, ScriptPool};
use picloud_manager_core::{
    repo::{
        self,
        outbox::{ClaimedEvent, Retry},
    },
    service::{dead_letters::DeadLettersService, events::EventPolicy},
};
use picloud_shared::{
    ids::{AppId, ScriptId},
    triggers::{Backoff, RetryPolicy, TriggerKind},
};
use rand::Rng;
use sqlx::PgPool;
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};
use tokio::{
    sync::{mpsc, watch, Notify, Semaphore},
    task::JoinSet,
};
use uuid::Uuid;

use crate::metrics::Metrics;

/// Longest `last_error` kept on an event or a dead letter.
const MAX_ERROR_CHARS: usize = 4096;
/// Most events one fairness claim takes.
const PER_APP_QUEUE: usize = 128;
/// A claimed event waiting for a run slot: the event, its started flag, when it was claimed.
type Queued = (ClaimedEvent, Arc<AtomicBool>, Instant);

/// Most outcomes written in one round.
const MAX_WRITE_BATCH: usize = 1024;
/// How long the writer waits for more outcomes before writing a small batch.
const WRITE_LINGER: Duration = Duration::from_millis(5);
/// Most leases one renewal statement extends.
const RENEW_CHUNK: usize = 1000;
/// How often the outbox depth gauge and the dead-letter fan-out sweep run.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a chain's event count is kept after its last event: a chain
/// quiet for longer (a handler retried a day later) starts a fresh budget.
const CHAIN_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// The dispatcher's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Handlers running (or waiting for a script worker) at once.
    pub concurrency: usize,
    /// Most events one claim takes.
    pub batch_size: usize,
    /// How long a claim holds an event before another process may rescue it.
    pub lease: Duration,
    /// The longest wait between two looks at the outbox when no NOTIFY comes.
    pub poll_interval: Duration,
    /// At shutdown, how long running handlers get to finish.
    pub shutdown_grace: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            batch_size: 512,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

/// What became of one claimed event.
enum Outcome {
    /// Its handler started (so a lost run of it counts as an attempt).
    Started(i64),
    Completed(i64),
    Retry(Retry),
    Exhausted {
        id: i64,
        kind: TriggerKind,
        attempts: i32,
        error: String,
    },
}

/// Everything a run needs, shared by the dispatcher's tasks.
struct Shared {
    pool: PgPool,
    executor: Arc<Executor>,
    script_pool: ScriptPool,
    metrics: Metrics,
    dead_letters: DeadLettersService,
    /// The chain limits and the pending-events quota the housekeeping keeps current.
    events: EventPolicy,
    owner: Uuid,
    config: DispatchConfig,
    /// Sources of script versions, fetched once per version.
    sources: Mutex<HashMap<(Uuid, i64), Arc<str>>>,
    /// Events this process holds, and whether their handler has started.
    in_flight: Mutex<HashMap<i64, Arc<AtomicBool>>>,
    /// Outbox rows this process deleted or rewrote since its last vacuum of the outbox.
    churned: AtomicU64,
}

/// A running dispatcher; [`DispatcherHandle::shutdown`] stops it.
pub struct DispatcherHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DispatcherHandle {
    /// Stops claiming, lets running handlers finish within the grace period,
    /// gives back what never started, writes the last outcomes, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts a dispatcher over the server's state. Call inside a tokio runtime.
pub fn start(state: &AppState, config: DispatchConfig) -> DispatcherHandle {
    let shared = Arc::new(Shared {
        pool: state.pool.clone(),
        executor: state.executor.clone(),
        script_pool: state.script_pool.clone(),
        metrics: state.metrics.clone(),
        dead_letters: state.dead_letters.clone(),
        events: state.events.clone(),
        owner: Uuid::new_v4(),
        config,
        sources: Mutex::default(),
        in_flight: Mutex::default(),
        churned: AtomicU64::new(0),
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(shared, stopped));
    DispatcherHandle { stop, task }
}

async fn run(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    tracing::info!(owner = %shared.owner, concurrency = shared.config.concurrency, "dispatcher started");
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(shared.pool.clone(), wake.clone()));
    let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
    let (fan_outs, fan_outs_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_outcomes(shared.clone(), outcomes_rx, fan_outs));
    let fan_out = tokio::spawn(fan_out_dead_letters(shared.clone(), fan_outs_rx));
    let renewer = tokio::spawn(renew_leases(shared.clone()));
    let housekeeper = tokio::spawn(housekeeping(shared.clone()));
    let vacuum = tokio::spawn(vacuum_outbox(shared.clone()));
    let slots = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
    let mut handlers = JoinSet::new();
    let mut backoff = Duration::from_millis(50);

    // Claimed events wait here, per app, for a run slot: claims take a whole
    // batch (one round trip, one commit), runs take the slots as they free up.
    // An app gets at most `app_slots` slots (half of them, and always more than
    // its share of the script workers), apps take free slots in turn, and a
    // fairness claim fetches other apps' events when the queued ones all wait
    // at their app's cap, so one app's slow handlers can never hold every slot
    // other apps need; the pool's per-app cap then gives them the free workers.
    let mut queues: HashMap<Uuid, VecDeque<Queued>> = HashMap::new();
    let running: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
    let finished = Arc::new(Notify::new());
    let app_slots = (shared.config.concurrency / 2)
        .max(shared.script_pool.config().max_per_app + 1)
        .max(1);
    let mut turn = 0usize;
    let lease_ms = i64::try_from(shared.config.lease.as_millis()).unwrap_or(i64::MAX);
    let batch = shared.config.batch_size.max(1);
    let mut outbox_drained = false;
    let mut last_fair_claim = Instant::now();
    // Events held (queued, running, or finished with their outcome not yet
    // written): past this, no more are claimed, so a slow writer cannot make
    // the set (and each lease renewal) grow without bound.
    let max_held = batch * 2 + shared.config.concurrency;
    while !*stopped.borrow() {
        // Reap finished handler tasks so the set does not grow.
        while handlers.try_join_next().is_some() {}
        let startable: usize = {
            let running = lock(&running);
            queues
                .iter()
                .map(|(app, queue)| {
                    queue
                        .len()
                        .min(app_slots.saturating_sub(running.get(app).copied().unwrap_or(0)))
                })
                .sum()
        };
        let queued_total: usize = queues.values().map(VecDeque::len).sum();
        // Normal top-up: a whole batch when the local queue runs half empty.
        // Fairness top-up: when some app waits at its slot cap while slots are
        // free, other apps' events may sit behind its in the outbox; at most once a
        // poll interval, claim passing over the apps at their cap (that scan can
        // be long when one app owns most of the outbox, hence the rate limit).
        let held = lock(&shared.in_flight).len();
        let claim = if held >= max_held {
            None
        } else if queued_total <= batch / 2 && !outbox_drained {
            Some((batch - queued_total, Vec::new()))
        } else {
            let at_cap: Vec<Uuid> = {
                let running = lock(&running);
                queues
                    .keys()
                    .filter(|app| running.get(*app).copied().unwrap_or(0) >= app_slots)
                    .copied()
                    .collect()
            };
            let fair = !at_cap.is_empty()
                && startable == 0
                && slots.available_permits() > 0
                && last_fair_claim.elapsed() >= shared.config.poll_interval;
            fair.then(|| {
                last_fair_claim = Instant::now();
                (PER_APP_QUEUE, at_cap)
            })
        };
        if let Some((limit, skip)) = claim {
            match repo::outbox::claim(&shared.pool, shared.owner, lease_ms, limit as i64, &skip)
                .await
            {
                Ok(claimed) => {
                    backoff = Duration::from_millis(50);
                    if skip.is_empty() {
                        outbox_drained = claimed.len() < limit;
                    }
                    let now = Instant::now();
                    let mut in_flight = lock(&shared.in_flight);
                    for event in claimed {
                        let started = Arc::new(AtomicBool::new(false));
                        in_flight.insert(event.id, started.clone());
                        queues
                            .entry(event.app_id)
                            .or_default()
                            .push_back((event, started, now));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming events failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        // Start what may start: every app in turn, within its slots and the free slots.
        let mut blocked = false;
        // Apps take the free slots in turn, starting one further each time round.
        let mut order: Vec<Uuid> = queues.keys().copied().collect();
        order.sort_unstable();
        if !order.is_empty() {
            turn = turn.wrapping_add(1);
            let start = turn % order.len();
            order.rotate_left(start);
        }
        for app in &order {
            let Some(queue) = queues.get_mut(app) else {
                continue;
            };
            while !queue.is_empty() {
                let under_cap = {
                    let mut running = lock(&running);
                    let count = running.entry(*app).or_insert(0);
                    if *count < app_slots {
                        *count += 1;
                        true
                    } else {
                        false
                    }
                };
                if !under_cap {
                    break;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    // Undo the count taken above: no global slot is free.
                    if let Some(count) = lock(&running).get_mut(app) {
                        *count = count.saturating_sub(1);
                    }
                    blocked = true;
                    break;
                };
                let Some((event, started, claimed_at)) = queue.pop_front() else {
                    break;
                };
                let (shared, outcomes, running, finished) = (
                    shared.clone(),
                    outcomes.clone(),
                    running.clone(),
                    finished.clone(),
                );
                let app = *app;
                handlers.spawn(async move {
                    let id = event.id;
                    if let Some(outcome) =
                        handle(&shared, event, started, claimed_at, &outcomes).await
                    {
                        let _ = outcomes.send(outcome);
                    } else {
                        lock(&shared.in_flight).remove(&id);
                    }
                    drop(permit);
                    if let Some(count) = lock(&running).get_mut(&app) {
                        *count = count.saturating_sub(1);
                    }
                    finished.notify_one();
                });
            }
            if blocked {
                break;
            }
        }
        queues.retain(|_, queue| !queue.is_empty());
        let waiting = !queues.is_empty();
        if waiting || outbox_drained {
            // Wait for a handler to finish (a slot or an app's share frees up), new
            // events, the poll interval (retries falling due), or the stop.
            tokio::select! {
                () = finished.notified() => {}
                () = wake.notified(), if outbox_drained => { outbox_drained = false; }
                () = tokio::time::sleep(shared.config.poll_interval) => { outbox_drained = false; }
                _ = stopped.changed() => break,
            }
        }
    }

    // Shutdown: what has not started is given back at once; what runs gets the grace period.
    let not_started: Vec<i64> = lock(&shared.in_flight)
        .iter()
        .filter(|(_, started)| !started.load(Ordering::SeqCst))
        .map(|(id, _)| *id)
        .collect();
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_grace;
    let mut released = Vec::new();
    for id in not_started {
        let flag = lock(&shared.in_flight).get(&id).cloned();
        // Taking it out of the map first: a handler that starts now finds it
        // gone and does not run (see `handle`).
        if let Some(flag) = flag {
            if flag
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                lock(&shared.in_flight).remove(&id);
                released.push(id);
            }
        }
    }
    if !released.is_empty() {
        match repo::outbox::release(&shared.pool, shared.owner, &released).await {
            Ok(n) => tracing::info!(released = n, "gave back events that had not started"),
            Err(e) => {
                tracing::warn!(error = %e, "giving back unstarted events failed; their leases will expire")
            }
        }
    }
    loop {
        tokio::select! {
            next = handlers.join_next() => if next.is_none() { break },
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    running = handlers.len(),
                    "handlers still running after the grace period; their events will be rescued when their leases expire"
                );
                handlers.abort_all();
                break;
            }
        }
    }
    drop(outcomes);
    // The last outcomes must be written before the pool closes, or finished
    // events would run again; fan-outs left over are the sweep's.
    if tokio::time::timeout(shared.config.shutdown_grace, writer)
        .await
        .is_err()
    {
        tracing::warn!("the last outcomes were not written within the grace period; those events run again after their leases expire");
    }
    fan_out.abort();
    renewer.abort();
    housekeeper.abort();
    vacuum.abort();
    listener.abort();
    tracing::info!("dispatcher stopped");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes the claim loop on every `NOTIFY picloud_outbox`; reconnects on failure.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen("picloud_outbox").await?;
            // Events may have been enqueued while nobody listened.
            wake.notify_one();
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = listening.await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "listening for outbox notifications failed; polling until it is back");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs one claimed event; `None` when it was given back before it started.
async fn handle(
    shared: &Arc<Shared>,
    event: ClaimedEvent,
    started: Arc<AtomicBool>,
    claimed_at: Instant,
    outcomes: &mpsc::UnboundedSender<Outcome>,
) -> Option<Outcome> {
    let kind = TriggerKind::parse(&event.source_kind).unwrap_or(TriggerKind::Kv);
    let policy = RetryPolicy {
        max_attempts: u32::try_from(event.max_attempts).unwrap_or(1),
        backoff: Backoff::parse(&event.backoff).unwrap_or(Backoff::Exponential),
        base_ms: u64::try_from(event.base_ms).unwrap_or(1000),
    };
    // A run lost with its process already used the last attempt.
    if event.attempts >= event.max_attempts {
        return Some(Outcome::Exhausted {
            id: event.id,
            kind,
            attempts: event.attempts,
            error: event
                .last_error
                .clone()
                .unwrap_or_else(|| "no attempts left".into()),
        });
    }
    let script = match source_of(shared, &event).await {
        Ok(script) => script,
        Err(error) => return Some(failed(shared, &event, kind, &policy, error)),
    };
    let ctx = RunContext {
        app_id: AppId(event.app_id),
        trigger: kind.as_str(),
        request: None,
        event: Some(event.payload.0.clone()),
        trigger_depth: u32::try_from(event.trigger_depth).unwrap_or(0),
        origin_principal: event.origin_principal,
        chain_id: Some(event.chain_id),
    };
    let executor = shared.executor.clone();
    let metrics = shared.metrics.clone();
    let waited = event.waited_secs.max(0.0);
    let run_started = started.clone();
    let report_start = outcomes.clone();
    let event_id = event.id;
    let result = shared
        .script_pool
        .run(AppId(event.app_id), Admission::Wait, move || {
            // Given back at shutdown before a worker took it: do not run.
            if run_started.swap(true, Ordering::SeqCst) {
                return None;
            }
            let _ = report_start.send(Outcome::Started(event_id));
            metrics
                .dispatch_latency
                .observe(waited + claimed_at.elapsed().as_secs_f64());
            let begin = Instant::now();
            let result = executor.run(&script, ctx);
            Some((result, begin.elapsed()))
        })
        .await;
    let (result, took) = match result {
        Ok(Some(ran)) => ran,
        Ok(None) => return None,
        Err(_) => {
            return Some(failed(
                shared,
                &event,
                kind,
                &policy,
                "internal error: the script worker failed".into(),
            ))
        }
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(RunError::Script { .. }) => "error",
        Err(RunError::Limit { .. }) => "limit",
    };
    shared
        .metrics
        .handler_runs
        .with_label_values(&[kind.as_str(), outcome])
        .inc();
    shared
        .metrics
        .record_run(kind.as_str(), outcome, took.as_secs_f64());
    Some(match result {
        Ok(_) => Outcome::Completed(event.id),
        Err(err) => failed(shared, &event, kind, &policy, err.to_string()),
    })
}

/// The outcome of a failed run: a retry, or exhaustion after the last attempt.
fn failed(
    shared: &Shared,
    event: &ClaimedEvent,
    kind: TriggerKind,
    policy: &RetryPolicy,
    error: String,
) -> Outcome {
    let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
    let runs = event.attempts.saturating_add(1);
    if runs >= event.max_attempts {
        return Outcome::Exhausted {
            id: event.id,
            kind,
            attempts: runs,
            error,
        };
    }
    shared
        .metrics
        .handler_retries
        .with_label_values(&[kind.as_str()])
        .inc();
    let jitter = rand::thread_rng().gen_range(0.5..1.5);
    let delay = policy.delay(u32::try_from(runs).unwrap_or(1), jitter);
    let next_attempt_at = Utc::now()
        + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::days(1));
    Outcome::Retry(Retry {
        id: event.id,
        next_attempt_at,
        error,
    })
}

/// The script version the event was claimed with (its source fetched once per version).
async fn source_of(shared: &Shared, event: &ClaimedEvent) -> Result<ScriptHandle, String> {
    let key = (event.script_id, event.script_version);
    let cached = lock(&shared.sources).get(&key).cloned();
    let source = match cached {
        Some(source) => source,
        None => {
            let script =
                repo::scripts::get(&shared.pool, AppId(event.app_id), ScriptId(event.script_id))
                    .await
                    .map_err(|e| format!("the handler script could not be loaded: {e}"))?
                    .ok_or_else(|| "the handler script no longer exists".to_owned())?;
            let source: Arc<str> = script.source.into();
            let mut sources = lock(&shared.sources);
            // A bounded memo: dropped whole when it grows past what any server needs.
            if sources.len() >= 4096 {
                sources.clear();
            }
            sources.insert((event.script_id, script.script.version), source.clone());
            if script.script.version != event.script_version {
                // Updated since the claim: run the current version.
                return Ok(ScriptHandle {
                    id: ScriptId(event.script_id),
                    version: script.script.version,
                    name: script.script.name,
                    source,
                });
            }
            source
        }
    };
    Ok(ScriptHandle {
        id: ScriptId(event.script_id),
        version: event.script_version,
        name: event.script_name.clone(),
        source,
    })
}

/// Writes outcomes as they come, everything finished since the last write at
/// once; new dead letters go to `fan_outs` (their fan-out never holds up a write).
async fn write_outcomes(
    shared: Arc<Shared>,
    mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    fan_outs: mpsc::UnboundedSender<Uuid>,
) {
    let mut batch = Vec::with_capacity(MAX_WRITE_BATCH);
    while outcomes.recv_many(&mut batch, MAX_WRITE_BATCH).await > 0 {
        // Under load, linger a moment so one statement (one commit) covers many
        // outcomes; this delays the bookkeeping, never a handler's start.
        if batch.len() < MAX_WRITE_BATCH / 4 {
            let linger = tokio::time::sleep(WRITE_LINGER);
            tokio::pin!(linger);
            while batch.len() < MAX_WRITE_BATCH {
                let room = MAX_WRITE_BATCH - batch.len();
                tokio::select! {
                    got = outcomes.recv_many(&mut batch, room) => if got == 0 { break },
                    () = &mut linger => break,
                }
            }
        }
        let mut started = Vec::new();
        let mut completed = Vec::new();
        let mut retries = Vec::new();
        let mut exhausted = Vec::new();
        for outcome in batch.drain(..) {
            match outcome {
                Outcome::Started(id) => started.push(id),
                Outcome::Completed(id) => completed.push(id),
                Outcome::Retry(retry) => retries.push(retry),
                Outcome::Exhausted {
                    id,
                    kind,
                    attempts,
                    error,
                } => exhausted.push((id, kind, attempts, error)),
            }
        }
        // Marks only for handlers still running: finished ones are written below.
        {
            let finished: std::collections::HashSet<i64> = completed
                .iter()
                .copied()
                .chain(retries.iter().map(|r| r.id))
                .chain(exhausted.iter().map(|(id, ..)| *id))
                .collect();
            started.retain(|id| !finished.contains(id));
        }
        let mut done: Vec<i64> = completed.clone();
        if !completed.is_empty() || !started.is_empty() {
            let write = || {
                repo::outbox::complete_and_mark_started(
                    &shared.pool,
                    shared.owner,
                    &completed,
                    &started,
                )
            };
            if let Err(e) = with_retries(write).await {
                tracing::error!(error = %e, events = completed.len(), "recording completed and started events failed; they will run again after their leases expire");
            }
        }
        if !retries.is_empty() {
            done.extend(retries.iter().map(|r| r.id));
            if let Err(e) =
                with_retries(|| repo::outbox::retry(&shared.pool, shared.owner, &retries)).await
            {
                tracing::error!(error = %e, events = retries.len(), "scheduling retries failed; the events run again after their leases expire");
            }
        }
        if !exhausted.is_empty() {
            done.extend(exhausted.iter().map(|(id, ..)| *id));
            for letter in exhaust(&shared, exhausted).await {
                let _ = fan_outs.send(letter);
            }
        }
        shared
            .churned
            .fetch_add((done.len() + started.len()) as u64, Ordering::Relaxed);
        let mut in_flight = lock(&shared.in_flight);
        for id in done {
            in_flight.remove(&id);
        }
    }
}

/// Outbox rows deleted or rewritten after which the dispatcher vacuums the outbox.
const VACUUM_AFTER_CHURN: u64 = 2_000;

/// Vacuums the outbox after every [`VACUUM_AFTER_CHURN`] rows this process
/// deleted or rewrote. Every event leaves dead rows behind (its claim and
/// its delete), and autovacuum visits a table at most once a naptime (a
/// minute by default) whatever its settings, so under a steady load each claim
/// would otherwise walk tens of thousands of dead rows. `SKIP_LOCKED`: a
/// vacuum already running (another replica's, autovacuum's) is enough.
async fn vacuum_outbox(shared: Arc<Shared>) {
    let mut warned = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if shared.churned.load(Ordering::Relaxed) < VACUUM_AFTER_CHURN {
            continue;
        }
        shared.churned.store(0, Ordering::Relaxed);
        match repo::outbox::vacuum(&shared.pool).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "vacuuming the outbox failed; autovacuum remains");
            }
            Err(_) => {}
        }
    }
}

/// Runs a write up to three times (a brief database hiccup should not cost a lease expiry).
async fn with_retries<T, F, Fut>(mut write: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut wait = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(e) if tries >= 2 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
        }
    }
}

/// After the last attempt: dead letters (one statement for all of them), or
/// — for dead-letter handlers' own events — logged, counted drops. Returns
/// the new dead letters, to fan out.
async fn exhaust(shared: &Shared, exhausted: Vec<(i64, TriggerKind, i32, String)>) -> Vec<Uuid> {
    let (dropped, dying): (Vec<_>, Vec<_>) = exhausted
        .into_iter()
        .partition(|(_, kind, ..)| *kind == TriggerKind::DeadLetter);
    if !dropped.is_empty() {
        let ids: Vec<i64> = dropped.iter().map(|(id, ..)| *id).collect();
        match with_retries(|| repo::outbox::discard(&shared.pool, shared.owner, &ids)).await {
            Ok(gone) => {
                for (id, _, attempts, error) in dropped.iter().filter(|(id, ..)| gone.contains(id))
                {
                    shared.metrics.dead_letter_handlers_exhausted.inc();
                    tracing::error!(
                        event = id,
                        attempts,
                        error,
                        "a dead-letter handler failed every attempt; its event is dropped (dead letters are never dead-lettered again)"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = ids.len(), "dropping exhausted dead-letter events failed; they run again after their leases expire")
            }
        }
    }
    if dying.is_empty() {
        return Vec::new();
    }
    let kinds: HashMap<i64, (TriggerKind, i32)> = dying
        .iter()
        .map(|(id, kind, attempts, _)| (*id, (*kind, *attempts)))
        .collect();
    let input: Vec<repo::outbox::Exhausted> = dying
        .into_iter()
        .map(|(id, _, attempts, error)| repo::outbox::Exhausted {
            id,
            attempts,
            error,
        })
        .collect();
    match with_retries(|| repo::outbox::dead_letter(&shared.pool, shared.owner, &input)).await {
        Ok(moved) => moved
            .into_iter()
            .map(|(id, letter)| {
                let (kind, attempts) = kinds.get(&id).copied().unwrap_or((TriggerKind::Kv, 0));
                shared
                    .metrics
                    .dead_letters
                    .with_label_values(&[kind.as_str()])
                    .inc();
                tracing::warn!(dead_letter_id = %letter, kind = kind.as_str(), attempts, "an event failed every attempt and was dead-lettered");
                letter
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, events = input.len(), "writing dead letters failed; the events run again after their leases expire");
            Vec::new()
        }
    }
}

/// Fans out new dead letters as the writer reports them, beside the writer
/// (a slow fan-out never holds up outcomes); what fails is the sweep's.
async fn fan_out_dead_letters(shared: Arc<Shared>, mut letters: mpsc::UnboundedReceiver<Uuid>) {
    let mut batch = Vec::new();
    while letters.recv_many(&mut batch, 100).await > 0 {
        let ids: Vec<Uuid> = std::mem::take(&mut batch);
        let limit = i64::try_from(ids.len()).unwrap_or(i64::MAX);
        if let Err(e) = shared.dead_letters.fan_out(Some(&ids), limit).await {
            tracing::warn!(error = %e, dead_letters = ids.len(), "fanning out dead letters failed; the sweep tries again");
        }
    }
}

/// Renews the leases of running events every third of the lease.
async fn renew_leases(shared: Arc<Shared>) {
    let every = shared.config.lease / 3;
    let lease_ms = i64::try_from(shared.config.lease.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(every).await;
        let mut ids: Vec<i64> = lock(&shared.in_flight).keys().copied().collect();
        // In id order and in bounded statements, so a renewal takes its row
        // locks in the order other batched writers do and stays short.
        ids.sort_unstable();
        for chunk in ids.chunks(RENEW_CHUNK) {
            if let Err(e) = repo::outbox::renew(&shared.pool, shared.owner, chunk, lease_ms).await {
                tracing::warn!(error = %e, events = chunk.len(), "renewing leases failed; retrying at the next renewal");
            }
        }
    }
}

/// Samples the outbox depth, fans out dead letters a crash left behind, and
/// forgets what is only remembered for a while (chain counts, inbound
/// deliveries, email idempotency keys).
async fn housekeeping(shared: Arc<Shared>) {
    loop {
        // One count per app: the depth gauge, and the apps at their
        // pending-events quota, whose changes that fire triggers are refused.
        match repo::outbox::pending_by_app(&shared.pool).await {
            Ok(pending) => {
                shared
                    .metrics
                    .outbox_depth
                    .set(pending.iter().map(|(_, n)| n).sum());
                let max = i64::try_from(shared.events.max_pending_per_app()).unwrap_or(i64::MAX);
                shared.events.set_over_quota(
                    pending
                        .into_iter()
                        .filter(|(_, n)| *n >= max)
                        .map(|(app, _)| app)
                        .collect(),
                );
            }
            Err(e) => tracing::warn!(error = %e, "counting waiting events failed; retrying later"),
        }
        if let Err(e) = shared.dead_letters.fan_out(None, 100).await {
            tracing::warn!(error = %e, "fanning out pending dead letters failed; retrying later");
        }
        if let Err(e) = repo::outbox::forget_chains(&shared.pool, CHAIN_MEMORY).await {
            tracing::warn!(error = %e, "forgetting old trigger chains failed; retrying later");
        }
        // Inbound deliveries and email idempotency keys are remembered for 24 hours.
        if let Err(e) = repo::inbound::forget_old_deliveries(&shared.pool).await {
            tracing::warn!(error = %e, "forgetting old inbound deliveries failed; retrying later");
        }
        if let Err(e) = repo::realtime::forget_old_messages(&shared.pool).await {
            tracing::warn!(error = %e, "forgetting old stored realtime messages failed; retrying later");
        }
        if let Err(e) = repo::email::forget_old_keys(&shared.pool).await {
            tracing::warn!(error = %e, "forgetting old email idempotency keys failed; retrying later");
        }
        tokio::time::sleep(HOUSEKEEPING_INTERVAL).await;
    }
}
