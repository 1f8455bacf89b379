//! The email service (SPEC §7): a send is checked and formatted, then held to
//! the app's recipient policy, its idempotency key and its daily cap, and
//! handed to the transport.

use crate::{
    email::compose::{compose, Composed},
    error::ManagerError,
    repo::{self, email::KeyClaim},
};
use async_trait::async_trait;
use picloud_shared::{
    email::{
        email_error, EmailFailure, EmailPolicy, EmailService, EmailTransport, OutboundEmail,
        SentEmail,
    },
    ids::AppId,
    triggers::CallContext,
    ServiceError,
};
use sqlx::PgPool;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How often a send waits to see whether another send with its idempotency key finished.
const KEY_POLL: Duration = Duration::from_millis(50);

/// Sends by outcome (`ok` or a kind), for `picloud_email_send_total{outcome}`.
#[derive(Debug, Default)]
pub struct EmailCounters {
    ok: AtomicU64,
    failed: [AtomicU64; EmailFailure::ALL.len()],
}

impl EmailCounters {
    fn record(&self, outcome: Result<(), EmailFailure>) {
        let counter = match outcome {
            Ok(()) => &self.ok,
            Err(failure) => {
                let index = EmailFailure::ALL
                    .iter()
                    .position(|f| *f == failure)
                    .unwrap_or(0);
                &self.failed[index]
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(outcome, count)` for `ok` and every kind, each present from the start.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        std::iter::once(("ok", self.ok.load(Ordering::Relaxed)))
            .chain(
                EmailFailure::ALL
                    .iter()
                    .zip(&self.failed)
                    .map(|(f, n)| (f.as_str(), n.load(Ordering::Relaxed))),
            )
            .collect()
    }
}

/// What the service needs to know besides its transport.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// `PICLOUD_EMAIL_FROM`: the sender when a script names none.
    pub default_from: Option<String>,
    /// `PICLOUD_EMAIL_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: usize,
    /// Longest wait for the relay to take one message (the SDK timeout).
    pub send_timeout: Duration,
}

/// Email over a transport; `None` as transport when SMTP is not configured.
#[derive(Clone)]
pub struct EmailServiceImpl {
    pool: PgPool,
    transport: Option<Arc<dyn EmailTransport>>,
    settings: Arc<EmailSettings>,
    counters: Arc<EmailCounters>,
}

impl EmailServiceImpl {
    /// A service sending through `transport` (every send is `not_configured` without one).
    pub fn new(
        pool: PgPool,
        transport: Option<Arc<dyn EmailTransport>>,
        settings: EmailSettings,
    ) -> Self {
        Self {
            pool,
            transport,
            settings: Arc::new(settings),
            counters: Arc::default(),
        }
    }

    /// The send counters, for `/metrics`.
    pub fn counters(&self) -> Arc<EmailCounters> {
        self.counters.clone()
    }

    /// The app's policy.
    pub async fn policy(&self, app: AppId) -> Result<EmailPolicy, ManagerError> {
        repo::apps::get(&self.pool, app)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        Ok(repo::email::policy(&self.pool, app).await?)
    }

    /// Replaces the app's policy; returns it as stored (allow-list lower-cased).
    pub async fn set_policy(
        &self,
        app: AppId,
        policy: EmailPolicy,
    ) -> Result<EmailPolicy, ManagerError> {
        let policy = policy.normalized()?;
        repo::apps::get(&self.pool, app)
            .await?
            .ok_or(ManagerError::NotFound("app"))?;
        repo::email::put_policy(&self.pool, app, &policy)
            .await
            .map_err(|e| {
                if crate::error::is_foreign_key_violation(&e) {
                    ManagerError::NotFound("app")
                } else {
                    e.into()
                }
            })?;
        Ok(policy)
    }

    /// Everything after formatting, run as a task of its own so that a caller
    /// that stops waiting (its run's deadline) still leaves the cap and the
    /// idempotency key settled.
    async fn deliver(
        self,
        app: AppId,
        key: Option<String>,
        composed: Composed,
        transport: Arc<dyn EmailTransport>,
    ) -> Result<SentEmail, ServiceError> {
        let policy = repo::email::policy(&self.pool, app)
            .await
            .map_err(database_unavailable)?;
        if !composed
            .raw
            .recipients
            .iter()
            .all(|r| policy.recipients.allows(r))
        {
            return Err(email_error(
                EmailFailure::RecipientDenied,
                "a recipient is not on this app's allow-list (its email policy)",
            ));
        }
        if let Some(key) = &key {
            if let Some(sent) = self.claim_key(app, key, &composed.message_id).await? {
                return Ok(sent);
            }
        }
        let (result, maybe_sent) = self
            .send_within_cap(app, &policy, &composed, &*transport)
            .await;
        if let Some(key) = &key {
            // A send whose outcome is unknown keeps its key: a retry with it
            // must not deliver the message a second time.
            if let Err(e) =
                repo::email::settle_key(&self.pool, app, key, &composed.message_id, maybe_sent)
                    .await
            {
                tracing::error!(error = %e, app_id = %app, "settling an idempotency key failed");
            }
        }
        result.map(|()| SentEmail {
            id: composed.message_id,
        })
    }

    /// Claims the idempotency key for this send, waiting while another send
    /// holds it. `Some` when a send with the key already succeeded.
    async fn claim_key(
        &self,
        app: AppId,
        key: &str,
        message_id: &str,
    ) -> Result<Option<SentEmail>, ServiceError> {
        let started = Instant::now();
        // A claim older than a send can take (plus margin) was left by a dead process.
        let abandoned_after = self.settings.send_timeout.saturating_mul(3);
        loop {
            match repo::email::claim_key(&self.pool, app, key, message_id, abandoned_after)
                .await
                .map_err(database_unavailable)?
            {
                KeyClaim::Claimed => return Ok(None),
                KeyClaim::Sent(id) => return Ok(Some(SentEmail { id })),
                KeyClaim::InProgress if started.elapsed() >= self.settings.send_timeout => {
                    return Err(email_error(
                        EmailFailure::Transient,
                        "another send with this idempotency_key is still in progress",
                    ))
                }
                KeyClaim::InProgress => tokio::time::sleep(KEY_POLL).await,
            }
        }
    }

    /// Reserves a send under the daily cap, hands the message to the
    /// transport, and counts it if it was taken — or may have been: a relay
    /// that did not answer in time may still deliver it, so that counts too.
    /// Returns the outcome and whether the message may have been sent.
    async fn send_within_cap(
        &self,
        app: AppId,
        policy: &EmailPolicy,
        composed: &Composed,
        transport: &dyn EmailTransport,
    ) -> (Result<(), ServiceError>, bool) {
        let cap = policy.daily_cap.map_or(i64::MAX, i64::from);
        let day = match repo::email::reserve_send(&self.pool, app, cap).await {
            Ok(Some(day)) => day,
            Ok(None) => {
                return (
                    Err(email_error(
                        EmailFailure::RateLimitedLocal,
                        format!("this app has sent its daily cap of {cap} messages (UTC day)"),
                    )),
                    false,
                )
            }
            Err(e) => return (Err(database_unavailable(e)), false),
        };
        let outcome =
            match tokio::time::timeout(self.settings.send_timeout, transport.send(&composed.raw))
                .await
            {
                Ok(Ok(())) => (Ok(()), true),
                Ok(Err(e)) => (Err(email_error(e.failure, e.message)), false),
                // The connection goes with the dropped send (never reused),
                // but the relay may have taken the message already.
                Err(_) => (
                    Err(email_error(
                        EmailFailure::Transient,
                        format!(
                            "the SMTP relay did not answer within {} ms; the message may still be delivered (a retry with the same idempotency_key will not send it again)",
                            self.settings.send_timeout.as_millis()
                        ),
                    )),
                    true,
                ),
            };
        if let Err(e) = repo::email::settle_send(&self.pool, app, day, outcome.1).await {
            tracing::error!(error = %e, app_id = %app, "settling a send under the daily cap failed");
        }
        outcome
    }
}

fn database_unavailable(e: sqlx::Error) -> ServiceError {
    tracing::error!(error = %e, "database error in an email send");
    email_error(
        EmailFailure::Transient,
        "the database is unavailable; nothing was sent",
    )
}

#[async_trait]
impl EmailService for EmailServiceImpl {
    async fn send(
        &self,
        ctx: &CallContext,
        email: OutboundEmail,
    ) -> Result<SentEmail, ServiceError> {
        let result = match self.transport.clone() {
            None => Err(email_error(
                EmailFailure::NotConfigured,
                "email is not configured on this server (PICLOUD_SMTP_HOST, _USER and _PASSWORD)",
            )),
            Some(transport) => {
                match compose(
                    &email,
                    self.settings.default_from.as_deref(),
                    self.settings.max_message_bytes,
                ) {
                    Err(e) => Err(e),
                    Ok(composed) => {
                        let task = self.clone().deliver(
                            ctx.app_id,
                            email.idempotency_key,
                            composed,
                            transport,
                        );
                        tokio::spawn(task).await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "an email send task failed");
                            Err(email_error(EmailFailure::Transient, "the send failed"))
                        })
                    }
                }
            }
        };
        self.counters.record(match &result {
            Ok(_) => Ok(()),
            Err(ServiceError::Email { failure, .. }) => Err(*failure),
            Err(_) => Err(EmailFailure::InvalidArgument),
        });
        result
    }
}
