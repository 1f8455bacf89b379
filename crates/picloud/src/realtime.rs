//! Realtime delivery in this process (SPEC §9): the hub of SSE subscribers by
//! app and topic, and the listener that feeds it from `NOTIFY picloud_realtime`
//! (so a publish on any process reaches subscribers on every one).
//!
//! Every subscriber has a bounded buffer. Delivery never waits: a subscriber
//! whose buffer is full is disconnected (and counted), so a slow one can
//! neither slow the publisher nor the other subscribers.

use crate::metrics::Metrics;
use picloud_manager_core::{repo, service::realtime::RealtimeServiceImpl};
use serde::Deserialize;
use sqlx::PgPool;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Messages one subscriber may have waiting before it is disconnected.
pub const SUBSCRIBER_BUFFER: usize = 256;

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
    app: Uuid,
    topics: Arc<[String]>,
    sender: mpsc::Sender<Arc<RealtimeMessage>>,
}

/// Subscribers by app and topic.
type ByTopic = HashMap<(Uuid, String), Vec<Arc<Subscriber>>>;

/// The subscribers of this process, by app and topic.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    by_topic: Mutex<ByTopic>,
    next_id: AtomicU64,
    metrics: Metrics,
    /// Whether the listener is connected and listening now.
    listening: std::sync::atomic::AtomicBool,
}

/// A subscription: messages arrive on `messages`; dropping it unsubscribes.
pub struct Subscription {
    pub messages: mpsc::Receiver<Arc<RealtimeMessage>>,
    _registration: Registration,
}

/// Removes its subscriber from the hub when dropped. It holds no sender: the
/// hub's map holds the only one, so a subscriber the hub drops (too slow) sees
/// its stream end.
struct Registration {
    hub: Hub,
    id: u64,
    app: Uuid,
    topics: Arc<[String]>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_topic = self.hub.lock();
        if self
            .hub
            .remove(&mut by_topic, self.id, self.app, &self.topics)
        {
            self.hub.inner.metrics.realtime_subscribers.dec();
        }
    }
}

impl Hub {
    /// An empty hub counting on `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(HubInner {
                by_topic: Mutex::default(),
                next_id: AtomicU64::new(0),
                metrics,
                listening: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByTopic> {
        self.inner
            .by_topic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this process's listener is receiving publishes now.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// Ends every subscription (at shutdown: an event stream never ends by
    /// itself, and graceful shutdown waits for responses to end).
    pub fn close_all(&self) {
        let mut by_topic = self.lock();
        let subscribers: std::collections::HashSet<u64> = by_topic
            .values()
            .flat_map(|list| list.iter().map(|s| s.id))
            .collect();
        by_topic.clear();
        self.inner
            .metrics
            .realtime_subscribers
            .sub(subscribers.len() as i64);
    }

    /// Subscribes to `topics` of `app` (a topic named twice counts once).
    pub fn subscribe(&self, app: Uuid, mut topics: Vec<String>) -> Subscription {
        topics.sort_unstable();
        topics.dedup();
        let (sender, messages) = mpsc::channel(SUBSCRIBER_BUFFER);
        let topics: Arc<[String]> = topics.into();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber {
            id,
            app,
            topics: topics.clone(),
            sender,
        });
        let mut by_topic = self.lock();
        for topic in subscriber.topics.iter() {
            by_topic
                .entry((app, topic.clone()))
                .or_default()
                .push(subscriber.clone());
        }
        drop(by_topic);
        self.inner.metrics.realtime_subscribers.inc();
        Subscription {
            messages,
            _registration: Registration {
                hub: self.clone(),
                id,
                app,
                topics,
            },
        }
    }

    /// Removes subscriber `id` of `app` from each of its `topics`; whether it
    /// was still registered.
    fn remove(&self, by_topic: &mut ByTopic, id: u64, app: Uuid, topics: &[String]) -> bool {
        let mut found = false;
        for topic in topics {
            let key = (app, topic.clone());
            if let Some(list) = by_topic.get_mut(&key) {
                let before = list.len();
                list.retain(|s| s.id != id);
                found |= list.len() < before;
                if list.is_empty() {
                    by_topic.remove(&key);
                }
            }
        }
        found
    }

    /// Hands `message` to every subscriber of its topic in `app`, without
    /// waiting; a subscriber whose buffer is full is disconnected.
    pub fn deliver(&self, app: Uuid, message: RealtimeMessage) {
        let message = Arc::new(message);
        let mut by_topic = self.lock();
        let Some(subscribers) = by_topic.get(&(app, message.topic.clone())) else {
            return;
        };
        let mut delivered = 0u64;
        let mut gone = Vec::new();
        for subscriber in subscribers {
            match subscriber.sender.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.inner.metrics.realtime_slow_disconnects.inc();
                    gone.push(subscriber.clone());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(subscriber.clone()),
            }
        }
        for subscriber in gone {
            // Its stream ends once it has read what is buffered.
            if self.remove(
                &mut by_topic,
                subscriber.id,
                subscriber.app,
                &subscriber.topics,
            ) {
                self.inner.metrics.realtime_subscribers.dec();
            }
        }
        self.inner.metrics.realtime_delivered.inc_by(delivered);
    }
}

/// The first line of a notification on `picloud_realtime`; the message's
/// JSON text follows on the next line as published (never parsed here: any
/// depth, `null` included), or sits in row `r` of `realtime_messages`.
#[derive(Deserialize)]
struct Notification {
    a: Uuid,
    t: String,
    i: String,
    r: Option<i64>,
}

/// Feeds `hub` from `NOTIFY picloud_realtime` until the pool closes. A lost
/// listening connection is reconnected, and the log says so (messages
/// published meanwhile are not delivered: realtime does not replay).
pub async fn listen(pool: PgPool, hub: Hub) {
    let mut lost = false;
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(repo::realtime::CHANNEL).await?;
            hub.inner.listening.store(true, Ordering::Relaxed);
            if lost {
                tracing::info!("the realtime listener is connected again");
                lost = false;
            }
            // `None`: the connection was lost (sqlx would reconnect quietly on
            // the next call; a fresh listener makes the gap visible in the log).
            while let Some(notification) = listener.try_recv().await? {
                receive(&pool, &hub, notification.payload()).await;
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

async fn receive(pool: &PgPool, hub: &Hub, payload: &str) {
    let (head, inline) = match payload.split_once('\n') {
        Some((head, message)) => (head, Some(message)),
        None => (payload, None),
    };
    // Anyone who can reach the database can NOTIFY: ids and topics must be
    // what picloud writes (a newline in an SSE field would break the stream).
    let note = serde_json::from_str::<Notification>(head).ok().filter(|n| {
        n.i.len() == 32
            && n.i.bytes().all(|b| b.is_ascii_hexdigit())
            && picloud_shared::triggers::validate_topic(&n.t).is_ok()
    });
    let Some(note) = note else {
        tracing::warn!("a malformed realtime notification was ignored");
        return;
    };
    let data = match (inline, note.r) {
        (Some(message), _) => message.to_owned(),
        (None, Some(row)) => match repo::realtime::stored_message(pool, row).await {
            Ok(Some(text)) => text,
            Ok(None) => {
                tracing::warn!("a stored realtime message was gone before it was read");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading a stored realtime message failed");
                return;
            }
        },
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
    hub.deliver(
        note.a,
        RealtimeMessage {
            id: note.i,
            topic: note.t,
            data,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, n: usize) -> RealtimeMessage {
        RealtimeMessage {
            id: n.to_string(),
            topic: topic.into(),
            data: n.to_string(),
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_keep_up_is_disconnected_and_others_are_not() {
        let metrics = Metrics::new();
        let hub = Hub::new(metrics.clone());
        let app = Uuid::new_v4();
        let mut reader = hub.subscribe(app, vec!["t".into()]);
        let stalled = hub.subscribe(app, vec!["t".into(), "u".into()]);
        let mut other_topic = hub.subscribe(app, vec!["u".into()]);
        assert_eq!(metrics.realtime_subscribers.get(), 3);
        for n in 0..SUBSCRIBER_BUFFER * 2 {
            hub.deliver(app, message("t", n));
            assert_eq!(reader.messages.recv().await.unwrap().id, n.to_string());
        }
        assert_eq!(metrics.realtime_slow_disconnects.get(), 1);
        assert_eq!(metrics.realtime_subscribers.get(), 2);
        // Gone from its other topic too; that topic's subscribers still get theirs.
        hub.deliver(app, message("u", 0));
        assert_eq!(other_topic.messages.recv().await.unwrap().topic, "u");
        let mut stalled = stalled;
        let mut buffered = 0;
        // Its stream ends (a hang here: the hub's removal left a sender alive).
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while stalled.messages.recv().await.is_some() {
                buffered += 1;
            }
        })
        .await
        .expect("the disconnected subscriber's stream ends");
        assert_eq!(
            buffered, SUBSCRIBER_BUFFER,
            "it reads what was buffered, then ends"
        );
        drop(stalled);
        drop(reader);
        assert_eq!(metrics.realtime_subscribers.get(), 1);
        // At shutdown every stream ends.
        let mut open = hub.subscribe(app, vec!["v".into(), "v".into()]);
        hub.close_all();
        assert!(open.messages.recv().await.is_none());
        assert!(other_topic.messages.recv().await.is_none());
        assert_eq!(metrics.realtime_subscribers.get(), 0);
        // Another app's subscribers never see this app's messages.
        let mut elsewhere = hub.subscribe(Uuid::new_v4(), vec!["u".into()]);
        hub.deliver(app, message("u", 1));
        assert!(elsewhere.messages.try_recv().is_err());
    }
}
