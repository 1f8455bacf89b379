//! Inbound email (SPEC §7): a request to an email trigger's endpoint is
//! checked against the trigger's secret, read as an email, and delivered
//! once (deduplicated by `webhook-id` or `message_id` for 24 hours).

use crate::{
    error::ManagerError,
    repo::{
        self,
        inbound::{Delivery, DeliveryItem, EmailTarget},
        triggers::SealedInbound,
    },
    service::events::OutboxNotifier,
};
use bytes::Bytes;
use chrono::Utc;
use picloud_shared::{
    crypto::{Aad, Keyring, Sealed},
    ids::AppId,
    inbound::{
        parse_json_email, parse_mime_email, recipient_matches, validate_inbound_secret,
        verify_signature, AppInbound, MalformedEmail, SignatureError, SignatureHeaderValues,
        SignatureScheme,
    },
    triggers::{InboundEmail, TriggerEvent},
};
use sqlx::PgPool;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;
use zeroize::Zeroizing;

/// An accepted email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Enqueued as this event.
    Accepted(i64),
    /// Seen within 24 hours: the first delivery's event, nothing enqueued.
    Duplicate(i64),
}

/// Why a request was not accepted; each maps to one status and one metric result.
#[derive(Debug, thiserror::Error)]
pub enum InboundRefusal {
    /// No email trigger with this id (or, for the per-app endpoint, no such app).
    #[error("no email trigger with this id")]
    UnknownTrigger,
    #[error("{0}")]
    Unsigned(SignatureError),
    /// The stored secret does not open with the configured keys: fail closed.
    #[error("the signature cannot be checked")]
    SecretUnreadable,
    #[error("{0}")]
    Malformed(MalformedEmail),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The email could not be stored (logged where it happened); the sender should retry.
    #[error("the email could not be stored; retry later")]
    NotStored,
}

/// Receives inbound email for email triggers.
#[derive(Clone)]
pub struct InboundService {
    pool: PgPool,
    keyring: Arc<Keyring>,
    writer: DeliveryWriter,
    /// Email triggers as last read, by id: a request to a known trigger costs
    /// no lookup. An entry is only a hint: a delivery commits only if the
    /// trigger still has the secret the request was verified with.
    targets: Arc<Mutex<HashMap<Uuid, Arc<EmailTarget>>>>,
    /// The server's public base URL, for `inbound_url`.
    public_url: String,
}

/// Email triggers remembered at most; past it the memo starts over.
const MAX_REMEMBERED_TARGETS: usize = 10_000;

impl InboundService {
    /// A service over `pool`, opening inbound secrets with `keyring`. Call
    /// inside a tokio runtime (it starts its delivery writer and an [`OutboxNotifier`]).
    pub fn new(pool: PgPool, keyring: Arc<Keyring>, public_url: String) -> Self {
        Self {
            writer: DeliveryWriter::start(writer_pool(&pool), OutboxNotifier::start(pool.clone())),
            pool,
            keyring,
            targets: Arc::default(),
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The email trigger `trigger_id` names, if any (looked up before a body
    /// is read; remembered, see [`InboundService::receive`]).
    pub async fn trigger(&self, trigger_id: Uuid) -> Result<Option<Arc<EmailTarget>>, sqlx::Error> {
        let remembered = self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&trigger_id)
            .cloned();
        match remembered {
            Some(target) => Ok(Some(target)),
            None => self.look_up(trigger_id).await,
        }
    }

    /// Reads the email trigger afresh and remembers (or forgets) it.
    async fn look_up(&self, trigger_id: Uuid) -> Result<Option<Arc<EmailTarget>>, sqlx::Error> {
        let target = repo::inbound::email_trigger(&self.pool, trigger_id)
            .await?
            .map(Arc::new);
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        match &target {
            Some(target) => {
                if targets.len() >= MAX_REMEMBERED_TARGETS {
                    targets.clear();
                }
                targets.insert(trigger_id, target.clone());
            }
            None => {
                targets.remove(&trigger_id);
            }
        }
        Ok(target)
    }

    /// The app's sealed inbound secret (inner `None`: unsigned); `None` when
    /// there is no such app (looked up before a body is read).
    pub async fn app(&self, app: Uuid) -> Result<Option<Option<SealedInbound>>, sqlx::Error> {
        repo::inbound::app_secret(&self.pool, app).await
    }

    /// Checks one request to trigger `trigger_id`'s endpoint against its
    /// secret and reads its body: raw MIME when `mime` (`message/rfc822`),
    /// else the generic JSON shape. Delivered with [`InboundService::deliver`].
    pub async fn check(
        &self,
        trigger_id: Uuid,
        target: Arc<EmailTarget>,
        headers: SignatureHeaderValues,
        body: Bytes,
        mime: bool,
    ) -> Result<CheckedEmail, InboundRefusal> {
        let request = Arc::new(InboundRequest {
            headers,
            body,
            mime,
        });
        let (email, scheme) = self
            .check_and_parse(
                target.secret.clone(),
                AadOwner::Trigger(trigger_id),
                &request,
            )
            .await?;
        Ok(CheckedEmail {
            trigger_id,
            target,
            request,
            email,
            scheme,
        })
    }

    /// Delivers a checked email. Its `target` may have been a remembered
    /// one: the delivery commits only if the trigger's secret is still the
    /// one it was checked with, and otherwise the trigger is read again and
    /// the request checked again.
    pub async fn deliver(&self, checked: CheckedEmail) -> Result<Received, InboundRefusal> {
        let CheckedEmail {
            trigger_id,
            mut target,
            request,
            email,
            mut scheme,
        } = checked;
        // A secret changed since `target` was read: read it again and check
        // again, once (changed twice meanwhile: the sender is asked to retry).
        for retry in [true, false] {
            let sealed = target.secret.as_ref().map(repo::inbound::sealed_bytes);
            let webhook_id = trusted_webhook_id(scheme, &request.headers);
            let item = delivery_item(trigger_id, webhook_id, email.clone(), Some(sealed))?;
            match wait_for(self.writer.enqueue(item).await?).await? {
                Delivery::Accepted(id) => return Ok(Received::Accepted(id)),
                Delivery::Duplicate(id) => return Ok(Received::Duplicate(id)),
                Delivery::NoTrigger => {
                    self.forget(trigger_id);
                    return Err(InboundRefusal::UnknownTrigger);
                }
                Delivery::SecretChanged if retry => {
                    target = self
                        .look_up(trigger_id)
                        .await?
                        .ok_or(InboundRefusal::UnknownTrigger)?;
                    scheme = self
                        .verify(
                            target.secret.clone(),
                            AadOwner::Trigger(trigger_id),
                            &request,
                        )
                        .await?;
                }
                Delivery::SecretChanged => {}
            }
        }
        Err(InboundRefusal::NotStored)
    }

    fn forget(&self, trigger_id: Uuid) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&trigger_id);
    }

    /// Checks one request to the app's endpoint against the app's secret
    /// (`None`: unsigned) and reads its body. Delivered with [`InboundService::route`].
    pub async fn check_for_app(
        &self,
        app: Uuid,
        secret: Option<SealedInbound>,
        headers: SignatureHeaderValues,
        body: Bytes,
        mime: bool,
    ) -> Result<CheckedAppEmail, InboundRefusal> {
        let signed = secret.is_some();
        let request = Arc::new(InboundRequest {
            headers,
            body,
            mime,
        });
        let (email, scheme) = self
            .check_and_parse(secret, AadOwner::App(app), &request)
            .await?;
        Ok(CheckedAppEmail {
            app,
            signed,
            webhook_id: trusted_webhook_id(scheme, &request.headers),
            email,
        })
    }

    /// Delivers an email checked at the app's endpoint to every email
    /// trigger of the app whose `recipient_filter` matches an address in `to`
    /// or `cc` (a trigger without a filter gets every email), each with the
    /// `+tag` of the address it matched. No match: an empty list.
    pub async fn route(&self, checked: CheckedAppEmail) -> Result<Vec<Received>, InboundRefusal> {
        let CheckedAppEmail {
            app,
            signed,
            webhook_id,
            email,
        } = checked;
        let mut answers = Vec::new();
        for (trigger_id, filter, trigger_signed) in
            repo::inbound::app_email_triggers(&self.pool, app).await?
        {
            // A trigger with a secret of its own is not reached through an
            // unsigned app endpoint: its secret would be moot.
            if trigger_signed && !signed {
                continue;
            }
            let tag = match filter.as_deref() {
                None => Some(email.tag.clone()),
                Some(filter) => email
                    .to
                    .iter()
                    .chain(&email.cc)
                    .find_map(|address| recipient_matches(filter, address)),
            };
            let Some(tag) = tag else { continue };
            let mut routed = email.clone();
            routed.tag = tag;
            let item = delivery_item(trigger_id, webhook_id.clone(), routed, None)?;
            answers.push(self.writer.enqueue(item).await?);
        }
        // Enqueued together, they are usually written in one batch.
        let mut received = Vec::new();
        for answer in answers {
            match wait_for(answer).await? {
                Delivery::Accepted(id) => received.push(Received::Accepted(id)),
                Delivery::Duplicate(id) => received.push(Received::Duplicate(id)),
                // Deleted since it was listed.
                Delivery::NoTrigger | Delivery::SecretChanged => {}
            }
        }
        Ok(received)
    }

    /// The app's inbound endpoint.
    pub async fn app_endpoint(&self, app: AppId) -> Result<AppInbound, ManagerError> {
        let secret = repo::inbound::app_secret(&self.pool, app.0)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        Ok(self.app_inbound(app, secret.is_some()))
    }

    /// Sets the app's inbound secret (16-256 characters, no control
    /// characters), or with `None` makes its endpoint unsigned.
    pub async fn set_app_secret(
        &self,
        app: AppId,
        secret: Option<Zeroizing<String>>,
    ) -> Result<AppInbound, ManagerError> {
        if repo::inbound::app_secret(&self.pool, app.0)
            .await?
            .is_none()
        {
            return Err(ManagerError::NotFound("app"));
        }
        let sealed = match &secret {
            Some(secret) => {
                validate_inbound_secret(secret)
                    .map_err(|why| ManagerError::Validation(format!("secret {why}")))?;
                Some(
                    self.keyring
                        .seal(secret.as_bytes(), &Aad::InboundApp { app_id: app })
                        .map_err(|e| {
                            tracing::error!(error = %e, "sealing an app's inbound secret failed");
                            ManagerError::Unavailable("the secret could not be sealed".into())
                        })?,
                )
            }
            None => None,
        };
        repo::inbound::set_app_secret(&self.pool, app.0, sealed.as_ref())
            .await
            .map_err(|e| {
                if crate::error::is_foreign_key_violation(&e) {
                    ManagerError::NotFound("app")
                } else {
                    e.into()
                }
            })?;
        Ok(self.app_inbound(app, sealed.is_some()))
    }

    fn app_inbound(&self, app: AppId, signed: bool) -> AppInbound {
        AppInbound {
            inbound_url: format!("{}/api/v1/apps/{}/email-inbound", self.public_url, app.0),
            signed,
        }
    }

    /// Verifies the request against a stored secret, if there is one (off
    /// the async runtime when the body is large): the scheme that verified,
    /// `None` when the endpoint is unsigned.
    async fn verify(
        &self,
        stored: Option<SealedInbound>,
        owner: AadOwner,
        request: &Arc<InboundRequest>,
    ) -> Result<Option<SignatureScheme>, InboundRefusal> {
        let keyring = self.keyring.clone();
        let request = request.clone();
        off_runtime(request.body.len(), move || {
            verify_stored(&keyring, stored.as_ref(), owner, &request)
        })
        .await
    }

    /// [`InboundService::verify`], then reads the body as an email.
    async fn check_and_parse(
        &self,
        stored: Option<SealedInbound>,
        owner: AadOwner,
        request: &Arc<InboundRequest>,
    ) -> Result<(InboundEmail, Option<SignatureScheme>), InboundRefusal> {
        let keyring = self.keyring.clone();
        let request = request.clone();
        off_runtime(request.body.len(), move || {
            let scheme = verify_stored(&keyring, stored.as_ref(), owner, &request)?;
            Ok((parse(&request.body, request.mime)?, scheme))
        })
        .await
    }
}

/// A request to a trigger's endpoint whose signature held, with its email.
pub struct CheckedEmail {
    trigger_id: Uuid,
    target: Arc<EmailTarget>,
    request: Arc<InboundRequest>,
    email: InboundEmail,
    scheme: Option<SignatureScheme>,
}

/// A request to an app's endpoint whose signature held, with its email.
pub struct CheckedAppEmail {
    app: Uuid,
    signed: bool,
    webhook_id: Option<String>,
    email: InboundEmail,
}

/// A request to an inbound endpoint, as received.
struct InboundRequest {
    headers: SignatureHeaderValues,
    body: Bytes,
    mime: bool,
}

/// Whose secret a request is checked against (its associated data).
#[derive(Clone, Copy)]
enum AadOwner {
    Trigger(Uuid),
    App(Uuid),
}

/// Bodies above this are checked and parsed on a blocking thread: a 10 MB
/// MIME message takes milliseconds, which an async worker must not spend.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// Runs `work` here for a body of `size` bytes up to [`INLINE_BODY_BYTES`],
/// else on tokio's blocking threads.
async fn off_runtime<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> Result<T, InboundRefusal> + Send + 'static,
) -> Result<T, InboundRefusal> {
    if size <= INLINE_BODY_BYTES {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| InboundRefusal::NotStored)?
}

/// Verifies `request` against a stored secret, if there is one.
fn verify_stored(
    keyring: &Keyring,
    stored: Option<&SealedInbound>,
    owner: AadOwner,
    request: &InboundRequest,
) -> Result<Option<SignatureScheme>, InboundRefusal> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    let aad = match owner {
        AadOwner::Trigger(trigger_id) => Aad::Inbound { trigger_id },
        AadOwner::App(app) => Aad::InboundApp { app_id: AppId(app) },
    };
    let sealed = Sealed::from_stored(&stored.key_id, &stored.nonce, stored.ciphertext.clone())
        .map_err(|_| InboundRefusal::SecretUnreadable)?;
    let secret = keyring.open(&sealed, &aad).map_err(|_| {
        tracing::error!(
            "an inbound secret does not open with the configured keys; refusing its requests"
        );
        InboundRefusal::SecretUnreadable
    })?;
    let secret = std::str::from_utf8(&secret).map_err(|_| InboundRefusal::SecretUnreadable)?;
    verify_signature(
        secret,
        &request.headers.headers(),
        &request.body,
        Utc::now().timestamp(),
    )
    .map(Some)
    .map_err(InboundRefusal::Unsigned)
}

/// The `webhook-id` an email may be deduplicated by: one a Standard Webhooks
/// signature covers, or any on an unsigned endpoint (which takes anything
/// anyway). `X-PiCloud-Signature` covers the body only, so a `webhook-id`
/// beside it could be anyone's: such an email is deduplicated by its `message_id`.
fn trusted_webhook_id(
    scheme: Option<SignatureScheme>,
    headers: &SignatureHeaderValues,
) -> Option<String> {
    match scheme {
        Some(SignatureScheme::PiCloud) => None,
        Some(SignatureScheme::StandardWebhooks) | None => headers.webhook_id.clone(),
    }
}

/// One email for one trigger, deduplicated by `webhook_id`, else its
/// `message_id`; `secret: Some(s)` commits only while the trigger's sealed
/// secret is `s` (`Some(None)`: unsigned).
fn delivery_item(
    trigger_id: Uuid,
    webhook_id: Option<String>,
    email: InboundEmail,
    secret: Option<Option<Vec<u8>>>,
) -> Result<DeliveryItem, InboundRefusal> {
    // Hashed: ids are the sender's, of any length (an index entry is not).
    let digest = |kind: &str, id: &str| {
        use sha2::{Digest, Sha256};
        format!("{kind}:{}", hex::encode(Sha256::digest(id.as_bytes())))
    };
    let dedupe_key = webhook_id
        .map(|id| digest("webhook-id", &id))
        .or_else(|| email.message_id.as_deref().map(|m| digest("message-id", m)));
    let payload = serde_json::to_string(&TriggerEvent::Email { email }).map_err(|_| {
        InboundRefusal::Malformed(MalformedEmail("the email cannot be encoded".into()))
    })?;
    Ok(DeliveryItem {
        trigger_id,
        dedupe_key,
        payload,
        check_secret: secret.is_some(),
        secret: secret.flatten(),
    })
}

/// The outcome of an enqueued delivery.
async fn wait_for(
    answer: oneshot::Receiver<Result<Delivery, ()>>,
) -> Result<Delivery, InboundRefusal> {
    answer
        .await
        .map_err(|_| InboundRefusal::NotStored)?
        .map_err(|()| InboundRefusal::NotStored)
}

/// How long the delivery writer waits for a row lock (the trigger's or the
/// app's, which each outbox row's foreign-key checks take) before giving up
/// on a batch: one app's locked row must not hold up every app's email.
const WRITER_LOCK_TIMEOUT_MS: u64 = 2_000;

/// The delivery writer's connections: `pool`'s database, with
/// [`WRITER_LOCK_TIMEOUT_MS`] as their `lock_timeout`.
fn writer_pool(pool: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::query(&format!("SET lock_timeout = {WRITER_LOCK_TIMEOUT_MS}"))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(pool.connect_options().as_ref().clone())
}

/// Whether `e` is PostgreSQL's `lock_timeout` (55P03).
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Emails waiting for the delivery writer, most.
const WRITER_QUEUE: usize = 4096;
/// Batches written at once. One: requests arriving during a commit gather
/// into the next batch, and concurrent batches would contend for the same
/// trigger and app rows (each outbox row's foreign-key checks lock them);
/// measured, one writer accepted 6,200-8,900 POSTs/s where two did 5,000-5,600.
const WRITERS: usize = 1;
/// Emails in one batch, most.
const MAX_BATCH_ITEMS: usize = 256;
/// Payload bytes in one batch, most (one email may exceed it alone).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// One email waiting to be written, and where its outcome goes.
struct PendingDelivery {
    item: DeliveryItem,
    answer: oneshot::Sender<Result<Delivery, ()>>,
}

/// Writes inbound emails in batches: whatever arrived while the previous
/// batches were being committed goes in one statement and one commit, so
/// concurrent requests share a WAL flush (group commit at the application)
/// and an idle server adds no delay. Each request is answered after its
/// batch commits.
#[derive(Clone)]
struct DeliveryWriter {
    queue: mpsc::Sender<PendingDelivery>,
}

impl DeliveryWriter {
    /// Starts the writer on the current tokio runtime; it ends when every
    /// sender is gone.
    fn start(pool: PgPool, notifier: OutboxNotifier) -> Self {
        let (queue, pending) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(write_batches(pool, notifier, pending));
        Self { queue }
    }

    /// Queues `item`; its outcome arrives on the returned receiver.
    async fn enqueue(
        &self,
        item: DeliveryItem,
    ) -> Result<oneshot::Receiver<Result<Delivery, ()>>, InboundRefusal> {
        let (answer, outcome) = oneshot::channel();
        self.queue
            .send(PendingDelivery { item, answer })
            .await
            .map_err(|_| InboundRefusal::NotStored)?;
        Ok(outcome)
    }
}

/// A batch being assembled.
#[derive(Default)]
struct Batch {
    deliveries: Vec<PendingDelivery>,
    keys: HashSet<(Uuid, String)>,
    bytes: usize,
}

impl Batch {
    /// Adds `delivery`, or holds it for a later batch when this one has its dedupe key.
    fn add(&mut self, delivery: PendingDelivery, held: &mut VecDeque<PendingDelivery>) {
        if let Some(key) = &delivery.item.dedupe_key {
            if !self.keys.insert((delivery.item.trigger_id, key.clone())) {
                held.push_back(delivery);
                return;
            }
        }
        self.bytes += delivery.item.payload.len();
        self.deliveries.push(delivery);
    }

    fn full(&self) -> bool {
        self.deliveries.len() >= MAX_BATCH_ITEMS || self.bytes >= MAX_BATCH_BYTES
    }
}

/// The writer's loop: takes a batch whenever a writer slot is free.
async fn write_batches(
    pool: PgPool,
    notifier: OutboxNotifier,
    mut pending: mpsc::Receiver<PendingDelivery>,
) {
    let slots = Arc::new(Semaphore::new(WRITERS));
    // Copies of an email already in the batch being assembled wait for the
    // next one (one statement cannot record a dedupe key twice).
    let mut held: VecDeque<PendingDelivery> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match held.pop_front() {
            Some(first) => first,
            None => match pending.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = Batch::default();
        batch.add(first, &mut held);
        for _ in 0..held.len() {
            match held.pop_front() {
                Some(next) if !batch.full() => batch.add(next, &mut held),
                Some(next) => held.push_front(next),
                None => break,
            }
        }
        while !batch.full() {
            match pending.try_recv() {
                Ok(next) => batch.add(next, &mut held),
                Err(_) => break,
            }
        }
        let batch = batch.deliveries;
        let pool = pool.clone();
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let (items, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|d| (d.item, d.answer)).unzip();
            match repo::inbound::deliver_batch(&pool, &items).await {
                Ok(outcomes) => {
                    if outcomes.iter().any(|o| matches!(o, Delivery::Accepted(_))) {
                        notifier.poke();
                    }
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        // The request may be gone; its email is stored regardless.
                        let _ = answer.send(Ok(outcome));
                    }
                }
                Err(e) if items.len() == 1 => {
                    tracing::error!(error = %e, "storing an inbound email failed");
                    for answer in answers {
                        let _ = answer.send(Err(()));
                    }
                }
                Err(e) => {
                    // One email must not fail the others: each is written alone.
                    tracing::warn!(error = %e, emails = items.len(), "storing a batch of inbound emails failed; writing them one by one");
                    let mut accepted = false;
                    // A trigger whose rows are locked fails its other emails at
                    // once rather than waiting out the lock timeout for each.
                    let mut locked: HashSet<Uuid> = HashSet::new();
                    for (item, answer) in items.iter().zip(answers) {
                        if locked.contains(&item.trigger_id) {
                            let _ = answer.send(Err(()));
                            continue;
                        }
                        let outcome =
                            repo::inbound::deliver_batch(&pool, std::slice::from_ref(item))
                                .await
                                .map_err(|e| {
                                    if is_lock_timeout(&e) {
                                        locked.insert(item.trigger_id);
                                    }
                                    tracing::error!(error = %e, "storing an inbound email failed");
                                })
                                .map(|mut outcomes| outcomes.pop().unwrap_or(Delivery::NoTrigger));
                        accepted |= matches!(outcome, Ok(Delivery::Accepted(_)));
                        let _ = answer.send(outcome);
                    }
                    if accepted {
                        notifier.poke();
                    }
                }
            }
            drop(slot);
        });
    }
}

/// The body as an email: raw MIME or the generic JSON shape.
fn parse(body: &[u8], mime: bool) -> Result<InboundEmail, InboundRefusal> {
    if mime {
        parse_mime_email(body, Utc::now())
    } else {
        parse_json_email(body, Utc::now())
    }
    .map_err(InboundRefusal::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pending(trigger_id: Uuid, key: Option<&str>) -> PendingDelivery {
        PendingDelivery {
            item: DeliveryItem {
                trigger_id,
                dedupe_key: key.map(str::to_owned),
                payload: "{}".into(),
                secret: None,
                check_secret: false,
            },
            answer: oneshot::channel().0,
        }
    }

    /// An email trigger in a new app; its id.
    async fn email_trigger(pool: &PgPool) -> Uuid {
        let (app, script, trigger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        sqlx::query("INSERT INTO apps (id, name) VALUES ($1, $2)")
            .bind(app)
            .bind(format!("a{}", app.simple()))
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO scripts (id, app_id, name, source) VALUES ($1, $2, 'h', '1')")
            .bind(script)
            .bind(app)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO triggers (id, app_id, script_id, kind, config, max_attempts, backoff, base_ms) \
             VALUES ($1, $2, $3, 'email', '{}', 3, 'exponential', 1000)",
        )
        .bind(trigger)
        .bind(app)
        .bind(script)
        .execute(pool)
        .await
        .unwrap();
        trigger
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn an_email_that_fails_its_batch_fails_alone(pool: PgPool) {
        let trigger = email_trigger(&pool).await;
        let writer = DeliveryWriter::start(pool.clone(), OutboxNotifier::start(pool.clone()));
        let item = |payload: &str| DeliveryItem {
            trigger_id: trigger,
            dedupe_key: None,
            payload: payload.into(),
            secret: None,
            check_secret: false,
        };
        // Queued before the writer runs (one thread): one batch of three, the
        // middle one not JSON, so the batch's statement fails.
        let mut answers = Vec::new();
        for payload in [r#"{"kind":"email"}"#, "not json", r#"{"kind":"email"}"#] {
            answers.push(writer.enqueue(item(payload)).await.unwrap());
        }
        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(wait_for(answer).await);
        }
        assert!(
            matches!(outcomes[0], Ok(Delivery::Accepted(_))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Err(InboundRefusal::NotStored)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Ok(Delivery::Accepted(_))),
            "{outcomes:?}"
        );
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE trigger_id = $1")
            .bind(trigger)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored, 2);
    }

    #[sqlx::test(migrator = "crate::MIGRATOR")]
    async fn one_apps_locked_row_does_not_hold_up_other_apps_email(pool: PgPool) {
        let (stuck, free) = (email_trigger(&pool).await, email_trigger(&pool).await);
        // Someone holds app `stuck`'s row (as a long admin transaction would).
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM apps a JOIN triggers t ON t.app_id = a.id WHERE t.id = $1 FOR UPDATE OF a")
            .bind(stuck)
            .execute(&mut *holder)
            .await
            .unwrap();
        let writer = DeliveryWriter::start(writer_pool(&pool), OutboxNotifier::start(pool.clone()));
        let item = |trigger_id| DeliveryItem {
            trigger_id,
            dedupe_key: None,
            payload: r#"{"kind":"email"}"#.into(),
            secret: None,
            check_secret: false,
        };
        let mut answers = Vec::new();
        for trigger in [stuck, stuck, free] {
            answers.push(writer.enqueue(item(trigger)).await.unwrap());
        }
        // Without a lock timeout this waits for `holder`, which waits for it.
        let outcomes = tokio::time::timeout(Duration::from_secs(60), async {
            let mut outcomes = Vec::new();
            for answer in answers {
                outcomes.push(wait_for(answer).await);
            }
            outcomes
        })
        .await
        .expect("the writer gave up on the locked rows");
        assert!(
            matches!(outcomes[0], Err(InboundRefusal::NotStored)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Err(InboundRefusal::NotStored)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Ok(Delivery::Accepted(_))),
            "{outcomes:?}"
        );
        holder.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn large_bodies_are_checked_off_the_async_runtime() {
        let here = std::thread::current().id();
        let small = off_runtime(INLINE_BODY_BYTES, || Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(small, here);
        let large = off_runtime(INLINE_BODY_BYTES + 1, || Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(large, here);
    }

    #[test]
    fn a_batch_holds_back_a_second_copy_of_an_email() {
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        let mut batch = Batch::default();
        let mut held = VecDeque::new();
        for delivery in [
            pending(one, Some("a")),
            pending(one, Some("a")),
            pending(two, Some("a")),
            pending(one, None),
            pending(one, None),
        ] {
            batch.add(delivery, &mut held);
        }
        assert_eq!(batch.deliveries.len(), 4);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].item.dedupe_key.as_deref(), Some("a"));
        assert_eq!(held[0].item.trigger_id, one);
    }

    #[test]
    fn a_batch_is_full_at_its_item_or_byte_limit() {
        let mut batch = Batch::default();
        let mut held = VecDeque::new();
        for _ in 0..MAX_BATCH_ITEMS - 1 {
            batch.add(pending(Uuid::new_v4(), None), &mut held);
        }
        assert!(!batch.full());
        batch.add(pending(Uuid::new_v4(), None), &mut held);
        assert!(batch.full());
        let mut big = pending(Uuid::new_v4(), None);
        big.item.payload = "x".repeat(MAX_BATCH_BYTES);
        let mut batch = Batch::default();
        batch.add(big, &mut held);
        assert!(batch.full());
    }
}
