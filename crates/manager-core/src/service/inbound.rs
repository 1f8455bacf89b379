//! Inbound email (SPEC §7): a request to an email trigger's endpoint is
//! checked against the trigger's secret, read as an email, and delivered
//! once (deduplicated by `webhook-id` or `message_id` for 24 hours).

use crate::{
    error::ManagerError,
    repo::{
        self,
        inbound::{Delivery, EmailTarget},
        triggers::SealedInbound,
    },
    service::events::OutboxNotifier,
};
use chrono::Utc;
use picloud_shared::{
    crypto::{Aad, Keyring, Sealed},
    ids::AppId,
    inbound::{
        parse_json_email, parse_mime_email, recipient_matches, verify_signature, AppInbound,
        MalformedEmail, SignatureError, SignatureHeaders,
    },
    triggers::{InboundEmail, TriggerEvent},
};
use sqlx::PgPool;
use std::sync::Arc;
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
}

/// Receives inbound email for email triggers.
#[derive(Clone)]
pub struct InboundService {
    pool: PgPool,
    keyring: Arc<Keyring>,
    notifier: OutboxNotifier,
    /// The server's public base URL, for `inbound_url`.
    public_url: String,
}

impl InboundService {
    /// A service over `pool`, opening inbound secrets with `keyring`. Call
    /// inside a tokio runtime (it starts an [`OutboxNotifier`]).
    pub fn new(pool: PgPool, keyring: Arc<Keyring>, public_url: String) -> Self {
        Self {
            notifier: OutboxNotifier::start(pool.clone()),
            pool,
            keyring,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The email trigger `trigger_id` names, if any (looked up before a body is read).
    pub async fn trigger(&self, trigger_id: Uuid) -> Result<Option<EmailTarget>, sqlx::Error> {
        repo::inbound::email_trigger(&self.pool, trigger_id).await
    }

    /// The app's sealed inbound secret (inner `None`: unsigned); `None` when
    /// there is no such app (looked up before a body is read).
    pub async fn app(&self, app: Uuid) -> Result<Option<Option<SealedInbound>>, sqlx::Error> {
        repo::inbound::app_secret(&self.pool, app).await
    }

    /// Checks and delivers one request to trigger `trigger_id`'s endpoint;
    /// `mime` when the body is a raw message (`message/rfc822`), else the
    /// generic JSON shape.
    pub async fn receive(
        &self,
        trigger_id: Uuid,
        target: &EmailTarget,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        mime: bool,
    ) -> Result<Received, InboundRefusal> {
        self.check_signature(
            target.secret.as_ref(),
            &Aad::Inbound { trigger_id },
            headers,
            body,
        )?;
        let email = parse(body, mime)?;
        self.deliver(trigger_id, headers, email).await
    }

    /// Checks one request to the app's endpoint and delivers it to every email
    /// trigger of the app whose `recipient_filter` matches an address in `to`
    /// or `cc` (a trigger without a filter gets every email), each with the
    /// `+tag` of the address it matched. No match: an empty list.
    pub async fn receive_for_app(
        &self,
        app: Uuid,
        secret: Option<&SealedInbound>,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        mime: bool,
    ) -> Result<Vec<Received>, InboundRefusal> {
        self.check_signature(
            secret,
            &Aad::InboundApp { app_id: AppId(app) },
            headers,
            body,
        )?;
        let email = parse(body, mime)?;
        let mut received = Vec::new();
        for (trigger_id, filter, signed) in
            repo::inbound::app_email_triggers(&self.pool, app).await?
        {
            // A trigger with a secret of its own is not reached through an
            // unsigned app endpoint: its secret would be moot.
            if signed && secret.is_none() {
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
            match self.deliver(trigger_id, headers, routed).await {
                Ok(one) => received.push(one),
                // Deleted since it was listed.
                Err(InboundRefusal::UnknownTrigger) => {}
                Err(e) => return Err(e),
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
                if !(16..=256).contains(&secret.chars().count())
                    || secret.chars().any(char::is_control)
                {
                    return Err(ManagerError::Validation(
                        "secret must be 16-256 characters without control characters".into(),
                    ));
                }
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

    /// Verifies `body` against a stored secret, if there is one.
    fn check_signature(
        &self,
        stored: Option<&SealedInbound>,
        aad: &Aad<'_>,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
    ) -> Result<(), InboundRefusal> {
        let Some(stored) = stored else {
            return Ok(());
        };
        let sealed = Sealed::from_stored(&stored.key_id, &stored.nonce, stored.ciphertext.clone())
            .map_err(|_| InboundRefusal::SecretUnreadable)?;
        let secret = self.keyring.open(&sealed, aad).map_err(|_| {
            tracing::error!(
                "an inbound secret does not open with the configured keys; refusing its requests"
            );
            InboundRefusal::SecretUnreadable
        })?;
        let secret = std::str::from_utf8(&secret).map_err(|_| InboundRefusal::SecretUnreadable)?;
        verify_signature(secret, headers, body, Utc::now().timestamp())
            .map_err(InboundRefusal::Unsigned)
    }

    /// Delivers one email to one trigger, deduplicated by `webhook-id`, else `message_id`.
    async fn deliver(
        &self,
        trigger_id: Uuid,
        headers: &SignatureHeaders<'_>,
        email: InboundEmail,
    ) -> Result<Received, InboundRefusal> {
        // Hashed: ids are the sender's, of any length (an index entry is not).
        let digest = |kind: &str, id: &str| {
            use sha2::{Digest, Sha256};
            format!("{kind}:{}", hex::encode(Sha256::digest(id.as_bytes())))
        };
        let dedupe_key = headers
            .webhook_id
            .map(|id| digest("webhook-id", id))
            .or_else(|| email.message_id.as_deref().map(|m| digest("message-id", m)));
        let payload = serde_json::to_value(TriggerEvent::Email { email }).map_err(|_| {
            InboundRefusal::Malformed(MalformedEmail("the email cannot be encoded".into()))
        })?;
        match repo::inbound::deliver(&self.pool, trigger_id, dedupe_key.as_deref(), &payload)
            .await?
        {
            Delivery::Accepted(id) => {
                self.notifier.poke();
                Ok(Received::Accepted(id))
            }
            Delivery::Duplicate(id) => Ok(Received::Duplicate(id)),
            Delivery::NoTrigger => Err(InboundRefusal::UnknownTrigger),
        }
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
