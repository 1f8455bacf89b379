//! Realtime delivery in this process (SPEC §9): the hub of SSE subscribers by
//! app and topic, and the listener that feeds it from `NOTIFY picloud_realtime`
//! (so a publish on any process reaches subscribers on every one).
//!
//! Every subscriber has a bounded buffer. Delivery never waits: a subscriber
//! whose buffer is full is disconnected (and counted), so a slow one can
//! neither slow the publisher nor the other subscribers.

use crate::metrics::Metrics;
use picloud_manager_core::{
    repo,
    service::realtime::{Authorized, RealtimeServiceImpl},
};
use picloud_shared::{
    ids::AppId,
    realtime::{KeyFingerprint, KeyState},
};
use serde::Deserialize;
use sqlx::PgPool;
use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};
use uuid::Uuid;

/// Messages one subscriber may have waiting before it is disconnected.
pub const SUBSCRIBER_BUFFER: usize = 256;

/// Bytes of messages one subscriber may have waiting before it is
/// disconnected (a single larger message still goes through).
pub const SUBSCRIBER_BUFFER_BYTES: usize = 8 << 20;

/// Streams one token may hold open at once on one process: a token handed
/// to a browser must not be able to take every connection.
pub const MAX_STREAMS_PER_TOKEN: usize = 16;

/// How many event streams this process keeps open, below its connection
/// maximum so that API calls always find a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub per_token: usize,
    pub per_app: usize,
    pub total: usize,
}

impl StreamLimits {
    /// The limits under `max_connections`: a token 16 streams, an app half
    /// of the connections, all apps together three quarters.
    pub fn under(max_connections: usize) -> Self {
        Self {
            per_token: MAX_STREAMS_PER_TOKEN,
            per_app: (max_connections / 2).max(1),
            total: (max_connections / 4 * 3).max(1),
        }
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self::under(10_000)
    }
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefusal {
    #[error("this token already holds as many streams as one token may")]
    TokenFull,
    #[error("this app already holds as many streams as one app may on this server")]
    AppFull,
    #[error("this server already holds as many streams as it may")]
    ServerFull,
    /// The app's keys changed after the token was checked: check it again.
    #[error("the app's signing keys changed while the token was checked")]
    KeysChanged,
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// One message as subscribers receive it.
#[derive(Debug)]
pub struct RealtimeMessage {
    /// The SSE `id`.
    pub id: String,
    /// The SSE `event` name.
    pub topic: String,
    /// The SSE `data`: the message's JSON.
    pub data: String,
}

struct Subscriber {
    id: u64,
    topics: Arc<[String]>,
    mailbox: Arc<Mailbox>,
    /// The key that verified its token, and the token's expiry.
    key: KeyFingerprint,
    exp: i64,
}

/// A subscriber's waiting messages and until when its stream may stay open:
/// the hub fills it, the stream drains it, and either can close it.
struct Mailbox {
    state: Mutex<MailboxState>,
    wake: tokio::sync::Notify,
}

struct MailboxState {
    messages: VecDeque<Arc<RealtimeMessage>>,
    /// Bytes of the waiting messages' `data`.
    bytes: usize,
    /// Over: what waited was dropped and nothing more comes.
    closed: bool,
    /// Unix seconds; only ever lowered.
    open_until: i64,
}

/// What became of a message handed to a mailbox.
enum Posted {
    Queued,
    /// The subscriber was too far behind: its mailbox is closed now.
    TooSlow,
    Closed,
}

impl Mailbox {
    fn new(open_until: i64) -> Self {
        Self {
            state: Mutex::new(MailboxState {
                messages: VecDeque::new(),
                bytes: 0,
                closed: false,
                open_until,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `message`, unless the subscriber is [`SUBSCRIBER_BUFFER`]
    /// messages or [`SUBSCRIBER_BUFFER_BYTES`] behind: then it is closed.
    fn post(&self, message: &Arc<RealtimeMessage>) -> Posted {
        let size = message.data.len();
        let mut state = self.lock();
        if state.closed {
            return Posted::Closed;
        }
        let full = state.messages.len() >= SUBSCRIBER_BUFFER
            || (state.bytes > 0 && state.bytes.saturating_add(size) > SUBSCRIBER_BUFFER_BYTES);
        let posted = if full {
            state.close();
            Posted::TooSlow
        } else {
            state.messages.push_back(message.clone());
            state.bytes += size;
            Posted::Queued
        };
        drop(state);
        self.wake.notify_one();
        posted
    }

    /// Ends the stream now, dropping what waits (the memory goes at once,
    /// whatever the client's connection does).
    fn close(&self) {
        self.lock().close();
        self.wake.notify_one();
    }

    /// Ends the stream at `until` (Unix seconds) if that is sooner.
    fn end_by(&self, until: i64) {
        let mut state = self.lock();
        if until < state.open_until {
            state.open_until = until;
            drop(state);
            self.wake.notify_one();
        }
    }
}

impl MailboxState {
    fn close(&mut self) {
        self.closed = true;
        self.messages = VecDeque::new();
        self.bytes = 0;
    }
}

/// What the hub's lock guards.
#[derive(Default)]
struct HubState {
    /// Subscribers by app and topic (those still receiving).
    by_topic: HashMap<(Uuid, String), Vec<Arc<Subscriber>>>,
    /// The same subscribers by app.
    by_app: HashMap<Uuid, HashMap<u64, Arc<Subscriber>>>,
    /// Open streams (received from or not) by token digest, by app, in all.
    streams_by_token: HashMap<[u8; 32], usize>,
    streams_by_app: HashMap<Uuid, usize>,
    streams: usize,
    /// How many times each app's key changes were applied here.
    key_changes: HashMap<Uuid, u64>,
    /// Set by [`Hub::close_all`]: no stream opens after it.
    closed: bool,
}

/// The subscribers of this process, by app and topic.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    state: Mutex<HubState>,
    next_id: AtomicU64,
    limits: StreamLimits,
    metrics: Metrics,
    /// Whether the listener is connected and listening now.
    listening: AtomicBool,
}

/// A subscription: messages arrive from [`Subscription::recv`]; dropping it
/// unsubscribes.
pub struct Subscription {
    mailbox: Arc<Mailbox>,
    /// Fires at the mailbox's `open_until`; `deadline` is what it is set for.
    timer: Pin<Box<tokio::time::Sleep>>,
    deadline: i64,
    _registration: Registration,
}

impl Subscription {
    /// The next message; `None` once the stream is over: its token expired,
    /// its key was rotated out, it fell too far behind, or the server is
    /// shutting down.
    pub async fn recv(&mut self) -> Option<Arc<RealtimeMessage>> {
        loop {
            let until = {
                let mut state = self.mailbox.lock();
                // Checked here, not by the timer alone: a timer set for now
                // fires a tick later, and nothing may slip out of a stream
                // that is over.
                let over =
                    state.open_until.saturating_mul(1000) <= chrono::Utc::now().timestamp_millis();
                if state.closed || over {
                    return None;
                }
                if let Some(message) = state.messages.pop_front() {
                    state.bytes -= message.data.len();
                    return Some(message);
                }
                state.open_until
            };
            if until != self.deadline {
                self.deadline = until;
                self.timer.as_mut().reset(instant_at(until));
            }
            // A post between the check above and this wait leaves a permit.
            tokio::select! {
                biased;
                () = self.mailbox.wake.notified() => {}
                () = self.timer.as_mut() => return None,
            }
        }
    }
}

/// The tokio instant of Unix second `at` (now, when it has passed).
fn instant_at(at: i64) -> tokio::time::Instant {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let left_ms = at.saturating_mul(1000).saturating_sub(now_ms).max(0);
    tokio::time::Instant::now() + Duration::from_millis(left_ms.unsigned_abs())
}

/// Ends its stream's hold on the hub when dropped.
struct Registration {
    hub: Hub,
    id: u64,
    app: Uuid,
    topics: Arc<[String]>,
    token: [u8; 32],
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        decrement(&mut state.streams_by_token, self.token);
        decrement(&mut state.streams_by_app, self.app);
        state.streams -= 1;
        if self.hub.remove(&mut state, self.id, self.app, &self.topics) {
            self.hub.inner.metrics.realtime_subscribers.dec();
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut count) = counts.entry(key) {
        *count.get_mut() -= 1;
        if *count.get() == 0 {
            count.remove();
        }
    }
}

impl Hub {
    /// An empty hub counting on `metrics`.
    pub fn new(metrics: Metrics, limits: StreamLimits) -> Self {
        Self {
            inner: Arc::new(HubInner {
                state: Mutex::default(),
                next_id: AtomicU64::new(0),
                limits,
                metrics,
                listening: AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this process's listener is receiving publishes now.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// Ends every subscription and refuses new ones (at shutdown: an event
    /// stream never ends by itself, and graceful shutdown waits for responses
    /// to end).
    pub fn close_all(&self) {
        let mut state = self.lock();
        state.closed = true;
        let receiving: usize = state.by_app.values().map(HashMap::len).sum();
        for subscriber in state.by_app.values().flat_map(HashMap::values) {
            subscriber.mailbox.close();
        }
        state.by_topic.clear();
        state.by_app.clear();
        self.inner
            .metrics
            .realtime_subscribers
            .sub(receiving as i64);
    }

    /// How many key changes of `app` this process has applied: read before
    /// checking a token, handed to [`Hub::subscribe`].
    pub fn key_changes(&self, app: Uuid) -> u64 {
        self.lock().key_changes.get(&app).copied().unwrap_or(0)
    }

    /// Opens a stream of `topics` of `app` (a topic named twice counts once)
    /// for `token`, verified as `authorized` after `key_changes` key changes
    /// of the app had been applied here.
    pub fn subscribe(
        &self,
        app: Uuid,
        mut topics: Vec<String>,
        token: &str,
        authorized: &Authorized,
        key_changes: u64,
    ) -> Result<Subscription, StreamRefusal> {
        use sha2::{Digest, Sha256};
        let token: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        topics.sort_unstable();
        topics.dedup();
        let topics: Arc<[String]> = topics.into();
        let mailbox = Arc::new(Mailbox::new(authorized.open_until));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber {
            id,
            topics: topics.clone(),
            mailbox: mailbox.clone(),
            key: authorized.key,
            exp: authorized.claims.exp,
        });
        let limits = self.inner.limits;
        let mut state = self.lock();
        // A request that was under way when shutdown began.
        if state.closed {
            return Err(StreamRefusal::ShuttingDown);
        }
        // A key change applied since the token was checked may have retired its key.
        if state.key_changes.get(&app).copied().unwrap_or(0) != key_changes {
            return Err(StreamRefusal::KeysChanged);
        }
        if state.streams >= limits.total {
            return Err(StreamRefusal::ServerFull);
        }
        if state.streams_by_app.get(&app).copied().unwrap_or(0) >= limits.per_app {
            return Err(StreamRefusal::AppFull);
        }
        if state.streams_by_token.get(&token).copied().unwrap_or(0) >= limits.per_token {
            return Err(StreamRefusal::TokenFull);
        }
        state.streams += 1;
        *state.streams_by_app.entry(app).or_default() += 1;
        *state.streams_by_token.entry(token).or_default() += 1;
        for topic in subscriber.topics.iter() {
            state
                .by_topic
                .entry((app, topic.clone()))
                .or_default()
                .push(subscriber.clone());
        }
        state.by_app.entry(app).or_default().insert(id, subscriber);
        drop(state);
        self.inner.metrics.realtime_subscribers.inc();
        Ok(Subscription {
            mailbox,
            timer: Box::pin(tokio::time::sleep_until(instant_at(authorized.open_until))),
            deadline: authorized.open_until,
            _registration: Registration {
                hub: self.clone(),
                id,
                app,
                topics,
                token,
            },
        })
    }

    /// Stops delivering to subscriber `id` of `app`; whether it was still
    /// receiving.
    fn remove(&self, state: &mut HubState, id: u64, app: Uuid, topics: &[String]) -> bool {
        for topic in topics {
            let key = (app, topic.clone());
            if let Some(list) = state.by_topic.get_mut(&key) {
                list.retain(|s| s.id != id);
                if list.is_empty() {
                    state.by_topic.remove(&key);
                }
            }
        }
        let Some(subscribers) = state.by_app.get_mut(&app) else {
            return false;
        };
        let found = subscribers.remove(&id).is_some();
        if subscribers.is_empty() {
            state.by_app.remove(&app);
        }
        found
    }

    /// Applies `app`'s key state: streams whose key is now the previous one
    /// end with its grace, streams whose key verifies nothing end now.
    pub fn keys_changed(&self, app: Uuid, keys: KeyState) {
        let now = chrono::Utc::now().timestamp();
        let mut state = self.lock();
        *state.key_changes.entry(app).or_default() += 1;
        let Some(subscribers) = state.by_app.get(&app) else {
            return;
        };
        let mut retired = Vec::new();
        for subscriber in subscribers.values() {
            match keys.open_until(subscriber.key, subscriber.exp, now) {
                Some(until) => subscriber.mailbox.end_by(until),
                None => {
                    subscriber.mailbox.close();
                    retired.push(subscriber.clone());
                }
            }
        }
        for subscriber in retired {
            if self.remove(&mut state, subscriber.id, app, &subscriber.topics) {
                self.inner.metrics.realtime_subscribers.dec();
            }
        }
    }

    /// The apps with subscribers here.
    fn apps(&self) -> Vec<Uuid> {
        self.lock().by_app.keys().copied().collect()
    }

    /// Hands `message` to every subscriber of its topic in `app`, without
    /// waiting; a subscriber too far behind (by messages or by bytes) is
    /// disconnected.
    pub fn deliver(&self, app: Uuid, message: RealtimeMessage) {
        let message = Arc::new(message);
        let mut state = self.lock();
        let Some(subscribers) = state.by_topic.get(&(app, message.topic.clone())) else {
            return;
        };
        let mut delivered = 0u64;
        let mut gone = Vec::new();
        for subscriber in subscribers {
            match subscriber.mailbox.post(&message) {
                Posted::Queued => delivered += 1,
                Posted::TooSlow => {
                    self.inner.metrics.realtime_slow_disconnects.inc();
                    gone.push(subscriber.clone());
                }
                Posted::Closed => gone.push(subscriber.clone()),
            }
        }
        for subscriber in gone {
            if self.remove(&mut state, subscriber.id, app, &subscriber.topics) {
                self.inner.metrics.realtime_subscribers.dec();
            }
        }
        self.inner.metrics.realtime_delivered.inc_by(delivered);
    }
}

/// The first line of a notification on `picloud_realtime`: a message's
/// (`t`, `i`; its JSON text follows on the next line as published, never
/// parsed here: any depth, `null` included, or sits in row `r` of
/// `realtime_messages`), or with `k` = `keys`, word that app `a`'s signing
/// keys changed.
#[derive(Deserialize)]
struct Notification {
    a: Uuid,
    k: Option<String>,
    t: Option<String>,
    i: Option<String>,
    r: Option<i64>,
}

/// Feeds `hub` from `NOTIFY picloud_realtime` until the pool closes. A lost
/// listening connection is reconnected, and the log says so (messages
/// published meanwhile are not delivered: realtime does not replay; key
/// changes made meanwhile are applied on reconnecting).
pub async fn listen(pool: PgPool, hub: Hub, realtime: RealtimeServiceImpl) {
    let mut lost = false;
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(repo::realtime::CHANNEL).await?;
            hub.inner.listening.store(true, Ordering::Relaxed);
            if lost {
                tracing::info!("the realtime listener is connected again");
                lost = false;
                // A rotation while it was away must still end the streams it retired.
                for app in hub.apps() {
                    apply_key_changes(&realtime, &hub, app).await;
                }
            }
            // `None`: the connection was lost (sqlx would reconnect quietly on
            // the next call; a fresh listener makes the gap visible in the log).
            while let Some(notification) = listener.try_recv().await? {
                receive(&pool, &hub, &realtime, notification.payload()).await;
            }
            Ok::<(), sqlx::Error>(())
        };
        let outcome = listening.await;
        hub.inner.listening.store(false, Ordering::Relaxed);
        if pool.is_closed() {
            return;
        }
        lost = true;
        match outcome {
            Ok(()) => tracing::warn!(
                "the realtime listener lost its database connection; reconnecting (messages published meanwhile are not delivered)"
            ),
            Err(e) => tracing::warn!(error = %e, "the realtime listener failed; reconnecting (messages published meanwhile are not delivered)"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Re-reads `app`'s keys and ends the streams they no longer cover.
async fn apply_key_changes(realtime: &RealtimeServiceImpl, hub: &Hub, app: Uuid) {
    match realtime.key_state(AppId(app)).await {
        Ok(keys) => hub.keys_changed(app, keys),
        Err(e) => {
            tracing::warn!(error = %e, %app, "reading an app's realtime keys after a change failed; its streams end at their tokens' expiry")
        }
    }
}

/// The start-up task: seals every signing key an older install stored in
/// plaintext (idempotent; replicas starting together share the rows).
pub async fn seal_plaintext_keys(realtime: RealtimeServiceImpl) {
    match realtime.seal_plaintext_keys().await {
        Ok(0) => {}
        Ok(sealed) => tracing::info!(sealed, "sealed realtime signing keys stored in plaintext"),
        Err(e) => {
            tracing::warn!(error = %e, "sealing plaintext realtime signing keys failed; reads fall back to the plaintext until the next start")
        }
    }
}

async fn receive(pool: &PgPool, hub: &Hub, realtime: &RealtimeServiceImpl, payload: &str) {
    let (head, inline) = match payload.split_once('\n') {
        Some((head, message)) => (head, Some(message)),
        None => (payload, None),
    };
    let Ok(note) = serde_json::from_str::<Notification>(head) else {
        tracing::warn!("a malformed realtime notification was ignored");
        return;
    };
    if note.k.as_deref() == Some("keys") {
        // Harmless to forge: the keys are read from their table.
        apply_key_changes(realtime, hub, note.a).await;
        return;
    }
    // Anyone who can reach the database can NOTIFY: ids and topics must be
    // what picloud writes (a newline in an SSE field would break the stream).
    let message = note.t.zip(note.i).filter(|(topic, id)| {
        id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && picloud_shared::triggers::validate_topic(topic).is_ok()
    });
    let Some((topic, id)) = message else {
        tracing::warn!("a malformed realtime notification was ignored");
        return;
    };
    let data = match (inline, note.r) {
        (Some(message), _) => message.to_owned(),
        (None, Some(row)) => {
            match repo::realtime::stored_message(pool, row, note.a, &topic).await {
                Ok(Some(text)) => text,
                Ok(None) => {
                    tracing::warn!("a stored realtime message was gone before it was read");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading a stored realtime message failed");
                    return;
                }
            }
        }
        (None, None) => {
            tracing::warn!("a realtime notification without a message was ignored");
            return;
        }
    };
    if data.contains('\n') || data.contains('\r') {
        // picloud writes compact JSON; anything else did not come from it.
        tracing::warn!("a malformed realtime notification was ignored");
        return;
    }
    hub.deliver(note.a, RealtimeMessage { id, topic, data });
}

#[cfg(test)]
mod tests {
    use super::*;
    use picloud_shared::realtime::TokenClaims;

    fn message(topic: &str, n: usize) -> RealtimeMessage {
        RealtimeMessage {
            id: n.to_string(),
            topic: topic.into(),
            data: n.to_string(),
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// A token verified by key `key` that may stay open `secs` more seconds.
    fn verified(app: Uuid, key: u8, secs: i64) -> Authorized {
        Authorized {
            claims: TokenClaims {
                app_id: app,
                topics: vec!["t".into()],
                exp: now() + secs,
                jti: String::new(),
            },
            key: KeyFingerprint::of(&[key; 32]),
            open_until: now() + secs,
        }
    }

    fn open(hub: &Hub, app: Uuid, topics: &[&str], token: &str) -> Subscription {
        let topics = topics.iter().map(|t| (*t).to_owned()).collect();
        hub.subscribe(app, topics, token, &verified(app, 1, 3600), 0)
            .expect("opens")
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_keep_up_is_disconnected_and_others_are_not() {
        let metrics = Metrics::new();
        let hub = Hub::new(metrics.clone(), StreamLimits::default());
        let app = Uuid::new_v4();
        let mut reader = open(&hub, app, &["t"], "a");
        let stalled = open(&hub, app, &["t", "u"], "b");
        let mut other_topic = open(&hub, app, &["u"], "c");
        assert_eq!(metrics.realtime_subscribers.get(), 3);
        for n in 0..SUBSCRIBER_BUFFER * 2 {
            hub.deliver(app, message("t", n));
            assert_eq!(reader.recv().await.unwrap().id, n.to_string());
            // Cut off at the first message past its buffer, not before.
            let cut = u64::from(n >= SUBSCRIBER_BUFFER);
            assert_eq!(metrics.realtime_slow_disconnects.get(), cut, "after {n}");
        }
        assert_eq!(metrics.realtime_subscribers.get(), 2);
        // Gone from its other topic too; that topic's subscribers still get theirs.
        hub.deliver(app, message("u", 0));
        assert_eq!(other_topic.recv().await.unwrap().topic, "u");
        // Its stream ends at once, and what waited for it is freed.
        assert!(stalled.mailbox.lock().messages.is_empty());
        let mut stalled = stalled;
        assert!(stalled.recv().await.is_none());
        drop(stalled);
        drop(reader);
        assert_eq!(metrics.realtime_subscribers.get(), 1);
        // At shutdown every stream ends at once, even with messages waiting
        // (a client that does not read must not hold the shutdown up).
        let mut open_one = open(&hub, app, &["v", "v"], "d");
        hub.deliver(app, message("v", 0));
        hub.close_all();
        assert!(open_one.recv().await.is_none());
        assert!(other_topic.recv().await.is_none());
        assert_eq!(metrics.realtime_subscribers.get(), 0);
        // A subscribe that was under way opens nothing after that.
        assert_eq!(
            hub.subscribe(app, vec!["t".into()], "late", &verified(app, 1, 60), 0)
                .err(),
            Some(StreamRefusal::ShuttingDown)
        );
        // Another app's subscribers never see this app's messages.
        let hub = Hub::new(metrics.clone(), StreamLimits::default());
        let elsewhere = open(&hub, Uuid::new_v4(), &["u"], "e");
        hub.deliver(app, message("u", 1));
        assert!(elsewhere.mailbox.lock().messages.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_behind_by_too_many_bytes_is_disconnected() {
        let metrics = Metrics::new();
        let hub = Hub::new(metrics.clone(), StreamLimits::default());
        let app = Uuid::new_v4();
        let mut reader = open(&hub, app, &["t"], "a");
        let mut stalled = open(&hub, app, &["t"], "b");
        let big = |n: usize| RealtimeMessage {
            id: n.to_string(),
            topic: "t".into(),
            data: "x".repeat(1 << 20),
        };
        // Far fewer messages than the buffer holds, but 1 MiB each: cut off
        // at the first one past 8 MiB, not before.
        let fit = SUBSCRIBER_BUFFER_BYTES / (1 << 20);
        for n in 0..fit + 2 {
            hub.deliver(app, big(n));
            assert_eq!(reader.recv().await.unwrap().id, n.to_string());
            let cut = u64::from(n >= fit);
            assert_eq!(metrics.realtime_slow_disconnects.get(), cut, "after {n}");
        }
        assert_eq!(stalled.mailbox.lock().bytes, 0, "its 8 MiB were freed");
        assert!(stalled.recv().await.is_none());
        // One message larger than the whole budget still reaches a reader.
        hub.deliver(
            app,
            RealtimeMessage {
                id: "huge".into(),
                topic: "t".into(),
                data: "x".repeat(SUBSCRIBER_BUFFER_BYTES + 1),
            },
        );
        assert_eq!(reader.recv().await.unwrap().id, "huge");
    }

    #[tokio::test]
    async fn streams_are_held_to_their_token_app_and_server_limits() {
        let hub = Hub::new(
            Metrics::new(),
            StreamLimits {
                per_token: 2,
                per_app: 3,
                total: 4,
            },
        );
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        let try_open = |app: Uuid, token: &str| {
            hub.subscribe(app, vec!["t".into()], token, &verified(app, 1, 60), 0)
        };
        let a1 = try_open(one, "a").unwrap();
        let _a2 = try_open(one, "a").unwrap();
        assert_eq!(try_open(one, "a").err(), Some(StreamRefusal::TokenFull));
        let _b1 = try_open(one, "b").unwrap();
        assert_eq!(try_open(one, "c").err(), Some(StreamRefusal::AppFull));
        let _d1 = try_open(two, "d").unwrap();
        assert_eq!(try_open(two, "e").err(), Some(StreamRefusal::ServerFull));
        // A closed stream frees its place on every count.
        drop(a1);
        assert!(try_open(one, "a").is_ok());
        let limits = StreamLimits::under(10_000);
        assert_eq!((limits.per_app, limits.total), (5_000, 7_500));
    }

    #[tokio::test]
    async fn streams_end_with_their_token_and_with_the_key_that_verified_it() {
        let metrics = Metrics::new();
        let hub = Hub::new(metrics.clone(), StreamLimits::default());
        let app = Uuid::new_v4();
        let subscribe = |key: u8, secs: i64, token: &str| {
            let changes = hub.key_changes(app);
            hub.subscribe(
                app,
                vec!["t".into()],
                token,
                &verified(app, key, secs),
                changes,
            )
            .unwrap()
        };
        let ends = |mut subscription: Subscription| async move {
            let started = std::time::Instant::now();
            tokio::time::timeout(Duration::from_secs(60), async {
                while subscription.recv().await.is_some() {}
            })
            .await
            .expect("the stream ends");
            started.elapsed()
        };
        // A token's stream ends at its expiry (2 s in whole seconds: over 1 s from now).
        let lasted = ends(subscribe(1, 2, "short")).await;
        assert!(lasted >= Duration::from_millis(900), "{lasted:?}");

        let mut by_previous = subscribe(1, 3600, "p");
        let mut by_older = subscribe(2, 3600, "o");
        let mut by_current = subscribe(3, 3600, "c");
        hub.deliver(app, message("t", 1));
        // Key 3 is current now, key 1 previous for 2 more seconds, key 2 retired.
        let seen = hub.key_changes(app);
        hub.keys_changed(
            app,
            KeyState {
                current: Some(KeyFingerprint::of(&[3; 32])),
                previous: Some((KeyFingerprint::of(&[1; 32]), now() + 2)),
            },
        );
        assert_eq!(metrics.realtime_subscribers.get(), 2);
        // Retired at once, its waiting message unread.
        assert!(by_older.recv().await.is_none());
        // A token checked before the change must be checked again.
        assert_eq!(
            hub.subscribe(app, vec!["t".into()], "late", &verified(app, 2, 60), seen)
                .err(),
            Some(StreamRefusal::KeysChanged)
        );
        assert_eq!(by_previous.recv().await.unwrap().id, "1");
        assert_eq!(by_current.recv().await.unwrap().id, "1");
        let lasted = ends(by_previous).await;
        assert!(lasted >= Duration::from_millis(900), "{lasted:?}");
        // The current key's stream is still open.
        hub.deliver(app, message("t", 2));
        assert_eq!(by_current.recv().await.unwrap().id, "2");
    }
}
