//! `POST /api/v1/email-inbound/{trigger_id}`: inbound email for one email
//! trigger (SPEC §7). No API key: a signed trigger's requests carry a
//! signature, an unsigned trigger's URL is its only secret.

use crate::http::{
    error::{ApiError, ErrorBody},
    extract::{read_body_within, ApiPath},
    AppState,
};
use axum::{extract::Request, extract::State, http::StatusCode, Json};
use picloud_manager_core::{
    service::inbound::{InboundRefusal, Received},
    ManagerError,
};
use picloud_shared::inbound::SignatureHeaderValues;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// The answer to an inbound email: the event it became (or became the first time).
#[derive(Serialize, ToSchema)]
pub struct InboundAccepted {
    pub event_id: i64,
}

/// The generic JSON shape of an inbound email (SPEC §7); `from` is required.
/// A raw MIME message is accepted too, with `Content-Type: message/rfc822`.
/// Documentation only: the body is read by `picloud_shared::inbound`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct InboundEmailBody {
    #[schema(min_length = 1, pattern = r"\S")]
    from: String,
    to: Option<Vec<String>>,
    cc: Option<Vec<String>>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    message_id: Option<String>,
    attachments: Option<Vec<InboundAttachmentBody>>,
}

/// An attachment: its content (kept as size and SHA-256 only), or that metadata itself.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct InboundAttachmentBody {
    filename: Option<String>,
    content_type: Option<String>,
    /// base64.
    #[schema(pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    content: Option<String>,
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    size: Option<u64>,
    sha256: Option<String>,
}

/// Bursts an inbound URL may send before its per-minute rate applies.
const INBOUND_BURST: u32 = 100;

/// The per-URL rate limit of the inbound endpoints (`PICLOUD_INBOUND_RATE_PER_MIN`,
/// bursts of 100), in this process. Keys are only ids of existing triggers
/// (unknown ones are answered 404 first), so the table stays bounded.
#[derive(Clone)]
pub struct InboundLimiter {
    limiter: std::sync::Arc<governor::DefaultKeyedRateLimiter<Uuid>>,
}

impl InboundLimiter {
    /// A limiter allowing `per_minute` requests a minute per URL.
    pub fn new(per_minute: u32) -> Self {
        let rate =
            std::num::NonZeroU32::new(per_minute.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(INBOUND_BURST.min(per_minute.max(1)))
            .unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_minute(rate).allow_burst(burst);
        Self {
            limiter: std::sync::Arc::new(governor::RateLimiter::keyed(quota)),
        }
    }

    /// A 429 (with the seconds to wait) when the URL of `key` is over its rate.
    fn check(&self, key: Uuid) -> Result<(), ApiError> {
        use governor::clock::{Clock, DefaultClock};
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                limit: "too many requests to this URL".into(),
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }
}

/// The answer to an email posted to an app's endpoint: the events it became,
/// one per email trigger its recipients matched (none: unrouted).
#[derive(Serialize, ToSchema)]
pub struct InboundRouted {
    pub event_ids: Vec<i64>,
}

/// The inbound routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive_for_trigger))
        .routes(routes!(receive_for_app))
}

#[utoipa::path(post, path = "/api/v1/apps/{app_id}/email-inbound", tag = "email",
    params(("app_id" = Uuid, Path)), request_body = InboundEmailBody,
    responses((status = 202, description = "accepted: delivered to every email trigger of the app whose `recipient_filter` matches a `to` or `cc` address (`event_ids` empty: no trigger matched)", body = InboundRouted),
        (status = 200, description = "a duplicate for every trigger it matched (same `webhook-id` or `message_id` within 24 h): their first events; nothing enqueued", body = InboundRouted),
        (status = 401, description = "`unauthorized`: the app's endpoint is signed and the request's signature is missing, wrong, stale, or cannot be checked", body = ErrorBody),
        (status = 404, description = "`not_found`: no such app", body = ErrorBody),
        (status = 429, description = "`rate_limited`: this URL sent more than `PICLOUD_INBOUND_RATE_PER_MIN` requests a minute (bursts of 100); retry after `Retry-After` seconds", body = ErrorBody)))]
async fn receive_for_app(
    State(st): State<AppState>,
    ApiPath(app_id): ApiPath<Uuid>,
    req: Request,
) -> Result<(StatusCode, Json<InboundRouted>), ApiError> {
    let result = route(&st, app_id, req).await;
    st.metrics.record_inbound(match &result {
        Ok((_, Json(routed))) if routed.event_ids.is_empty() => "unrouted",
        Ok((StatusCode::ACCEPTED, _)) => "accepted",
        Ok(_) => "duplicate",
        Err(e) => refusal_result(e),
    });
    result
}

async fn route(
    st: &AppState,
    app_id: Uuid,
    req: Request,
) -> Result<(StatusCode, Json<InboundRouted>), ApiError> {
    let Some(secret) = st
        .inbound
        .app(app_id)
        .await
        .map_err(ManagerError::Database)?
    else {
        return Err(ApiError::NotFound("app"));
    };
    // An unsigned URL spends its rate before its body is read; a signed
    // one only once the signature holds, so that requests anyone can make
    // cannot spend the sender's rate.
    let signed = secret.is_some();
    if !signed {
        st.inbound_limiter.check(app_id)?;
    }
    let (headers, body, mime) = read_request(st, req).await?;
    let checked = st
        .inbound
        .check_for_app(
            app_id,
            secret,
            signature_headers(&headers),
            body.bytes.clone(),
            mime,
        )
        .await
        .map_err(|e| refusal(e, "app"))?;
    if signed {
        st.inbound_limiter.check(app_id)?;
    }
    let received = st
        .inbound
        .route(checked)
        .await
        .map_err(|e| refusal(e, "app"))?;
    let all_duplicates =
        !received.is_empty() && received.iter().all(|r| matches!(r, Received::Duplicate(_)));
    let event_ids = received
        .iter()
        .map(|r| match r {
            Received::Accepted(id) | Received::Duplicate(id) => *id,
        })
        .collect();
    let status = if all_duplicates {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(InboundRouted { event_ids })))
}

/// The headers, the body (within `PICLOUD_INBOUND_MAX_BYTES`) and whether it is raw MIME.
async fn read_request(
    st: &AppState,
    req: Request,
) -> Result<(axum::http::HeaderMap, crate::http::extract::ReadBody, bool), ApiError> {
    let headers = req.headers().clone();
    let mime = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("message/rfc822"));
    let body = read_body_within(req, st, st.config.inbound_max_bytes).await?;
    Ok((headers, body, mime))
}

fn signature_headers(headers: &axum::http::HeaderMap) -> SignatureHeaderValues {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    SignatureHeaderValues {
        picloud: header("x-picloud-signature"),
        webhook_id: header("webhook-id"),
        webhook_timestamp: header("webhook-timestamp"),
        webhook_signature: header("webhook-signature"),
    }
}

/// The metric result of a refused request.
fn refusal_result(e: &ApiError) -> &'static str {
    match e {
        ApiError::Unauthorized(_) => "unauthorized",
        ApiError::TooLarge { .. } => "too_large",
        ApiError::RateLimited { .. } => "rate_limited",
        ApiError::NotFound(_) => "not_found",
        ApiError::BadRequest(_) | ApiError::Validation(_) | ApiError::Timeout(_) => "malformed",
        _ => "unavailable",
    }
}

/// The HTTP answer to a refusal; `what` names the endpoint's owner in a 404.
fn refusal(e: InboundRefusal, what: &'static str) -> ApiError {
    match e {
        InboundRefusal::UnknownTrigger => ApiError::NotFound(what),
        InboundRefusal::Unsigned(e) => ApiError::Unauthorized(e.message()),
        InboundRefusal::SecretUnreadable => ApiError::Unauthorized(
            "the signature cannot be checked (the endpoint's secret does not open with the server's keys)",
        ),
        InboundRefusal::Malformed(e) => ApiError::BadRequest(e.0),
        InboundRefusal::Database(e) => ManagerError::Database(e).into(),
        InboundRefusal::NotStored => ApiError::Unavailable(InboundRefusal::NotStored.to_string()),
    }
}

#[utoipa::path(post, path = "/api/v1/email-inbound/{trigger_id}", tag = "email",
    params(("trigger_id" = Uuid, Path)), request_body = InboundEmailBody,
    responses((status = 202, description = "accepted: the email trigger's handler will run", body = InboundAccepted),
        (status = 200, description = "a duplicate (same `webhook-id` or `message_id` within 24 h): the first delivery's event; nothing enqueued", body = InboundAccepted),
        (status = 401, description = "`unauthorized`: the trigger is signed and the request's signature is missing, wrong, stale, or cannot be checked", body = ErrorBody),
        (status = 404, description = "`not_found`: no email trigger with this id", body = ErrorBody),
        (status = 429, description = "`rate_limited`: this URL sent more than `PICLOUD_INBOUND_RATE_PER_MIN` requests a minute (bursts of 100); retry after `Retry-After` seconds", body = ErrorBody)))]
async fn receive_for_trigger(
    State(st): State<AppState>,
    ApiPath(trigger_id): ApiPath<Uuid>,
    req: Request,
) -> Result<(StatusCode, Json<InboundAccepted>), ApiError> {
    let result = receive(&st, trigger_id, req).await;
    st.metrics.record_inbound(match &result {
        Ok((StatusCode::ACCEPTED, _)) => "accepted",
        Ok(_) => "duplicate",
        Err(e) => refusal_result(e),
    });
    result
}

async fn receive(
    st: &AppState,
    trigger_id: Uuid,
    req: Request,
) -> Result<(StatusCode, Json<InboundAccepted>), ApiError> {
    // Unknown ids are answered before the body is read or any crypto runs.
    let Some(target) = st
        .inbound
        .trigger(trigger_id)
        .await
        .map_err(ManagerError::Database)?
    else {
        return Err(ApiError::NotFound("email trigger"));
    };
    // As for the app endpoint: a signed URL's rate is spent only by requests
    // whose signature holds.
    let signed = target.secret.is_some();
    if !signed {
        st.inbound_limiter.check(trigger_id)?;
    }
    let (headers, body, mime) = read_request(st, req).await?;
    let checked = st
        .inbound
        .check(
            trigger_id,
            target,
            signature_headers(&headers),
            body.bytes.clone(),
            mime,
        )
        .await
        .map_err(|e| refusal(e, "email trigger"))?;
    if signed {
        st.inbound_limiter.check(trigger_id)?;
    }
    match st
        .inbound
        .deliver(checked)
        .await
        .map_err(|e| refusal(e, "email trigger"))?
    {
        Received::Accepted(event_id) => {
            Ok((StatusCode::ACCEPTED, Json(InboundAccepted { event_id })))
        }
        Received::Duplicate(event_id) => Ok((StatusCode::OK, Json(InboundAccepted { event_id }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_counts_under_a_result_the_metrics_declare() {
        for (error, result) in [
            (ApiError::Unauthorized("x"), "unauthorized"),
            (ApiError::body_too_large(1), "too_large"),
            (
                ApiError::RateLimited {
                    limit: "too many requests to this URL".into(),
                    retry_after: 1,
                },
                "rate_limited",
            ),
            (ApiError::NotFound("email trigger"), "not_found"),
            (ApiError::BadRequest("x".into()), "malformed"),
            (ApiError::Timeout("x".into()), "malformed"),
            (ApiError::Unavailable("x".into()), "unavailable"),
            (ApiError::Busy("x".into()), "unavailable"),
        ] {
            assert_eq!(refusal_result(&error), result);
            assert!(crate::metrics::INBOUND_RESULTS.contains(&result));
        }
        assert_eq!(
            refusal_result(&refusal(InboundRefusal::NotStored, "email trigger")),
            "unavailable"
        );
    }
}
