//! `email::` — the script bridge to [`EmailService`](picloud_shared::email::EmailService).
//!
//! ```text
//! email::send(#{to, subject, text, from?, cc?, bcc?, reply_to?, idempotency_key?})        -> #{id}
//! email::send_html(#{to, subject, html, text?, from?, cc?, bcc?, reply_to?, idempotency_key?}) -> #{id}
//! ```
//!
//! `to`, `cc` and `bcc` take a string or an array of strings. `email::send` is
//! text only (a stray `html` is ignored); `email::send_html` requires `html`
//! and sends multipart/alternative. A send waits for the relay on the
//! script's thread, within the SDK timeout and the run's deadline.

use super::{block_on, current_run, invalid_argument, SdkEnv, SdkResult};
use picloud_shared::email::OutboundEmail;
use rhai::{Dynamic, Map, Module, NativeCallContext, Position};
use std::sync::Arc;

/// The fields an email map may have.
const FIELDS: [&str; 9] = [
    "to",
    "cc",
    "bcc",
    "subject",
    "text",
    "html",
    "from",
    "reply_to",
    "idempotency_key",
];

/// Builds the `email` module over the executor's services.
pub(crate) fn module(env: Arc<SdkEnv>) -> Module {
    let mut module = Module::new();
    let send_env = env.clone();
    module.set_native_fn("send", move |ctx: NativeCallContext, email: Dynamic| {
        send(&send_env, ctx.call_position(), "email::send", email, false)
    });
    module.set_native_fn(
        "send_html",
        move |ctx: NativeCallContext, email: Dynamic| {
            send(&env, ctx.call_position(), "email::send_html", email, true)
        },
    );
    module
}

fn send(env: &SdkEnv, pos: Position, func: &str, email: Dynamic, html: bool) -> SdkResult<Map> {
    let email = outbound(func, email, html, pos)?;
    let run = current_run(pos)?;
    let call = env.services.email.send(&run.call, email);
    let sent = block_on(env, &run, pos, func, call)?;
    let mut out = Map::new();
    out.insert("id".into(), sent.id.into());
    Ok(out)
}

/// The script's map as an [`OutboundEmail`]; type errors name the field.
fn outbound(func: &str, email: Dynamic, html: bool, pos: Position) -> SdkResult<OutboundEmail> {
    let type_name = email.type_name();
    let mut map = email.try_cast::<Map>().ok_or_else(|| {
        invalid_argument(
            format!("{func}: expects a map like #{{to, subject, text}}, got {type_name}"),
            pos,
        )
    })?;
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let unknown = unknown.to_string();
        return Err(invalid_argument(
            format!(
                "{func}: unknown field `{}`; the fields are {}",
                unknown.chars().take(40).collect::<String>(),
                FIELDS.join(", ")
            ),
            pos,
        ));
    }
    let mut take = |name: &str| map.remove(name).filter(|v| !v.is_unit());
    let to = addresses(func, "to", take("to"), pos)?;
    let cc = addresses(func, "cc", take("cc"), pos)?;
    let bcc = addresses(func, "bcc", take("bcc"), pos)?;
    let subject = text(func, "subject", take("subject"), pos)?
        .ok_or_else(|| invalid_argument(format!("{func}: subject is required"), pos))?;
    let body = text(func, "text", take("text"), pos)?;
    let html_body = text(func, "html", take("html"), pos)?;
    let from = text(func, "from", take("from"), pos)?;
    let reply_to = text(func, "reply_to", take("reply_to"), pos)?;
    let idempotency_key = text(func, "idempotency_key", take("idempotency_key"), pos)?;
    let (body, html_body) = if html {
        let html_body =
            html_body.ok_or_else(|| invalid_argument(format!("{func}: html is required"), pos))?;
        (body, Some(html_body))
    } else {
        let body =
            body.ok_or_else(|| invalid_argument(format!("{func}: text is required"), pos))?;
        (Some(body), None)
    };
    Ok(OutboundEmail {
        from,
        to,
        cc,
        bcc,
        reply_to,
        subject,
        text: body,
        html: html_body,
        idempotency_key,
    })
}

/// An optional string field.
fn text(
    func: &str,
    name: &str,
    value: Option<Dynamic>,
    pos: Position,
) -> SdkResult<Option<String>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let type_name = value.type_name();
    value
        .into_immutable_string()
        .map(|s| Some(s.to_string()))
        .map_err(|_| {
            invalid_argument(
                format!("{func}: {name} must be a string, got {type_name}"),
                pos,
            )
        })
}

/// A string or an array of strings.
fn addresses(
    func: &str,
    name: &str,
    value: Option<Dynamic>,
    pos: Position,
) -> SdkResult<Vec<String>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let wrong = |type_name: &str| {
        invalid_argument(
            format!("{func}: {name} must be a string or an array of strings, got {type_name}"),
            pos,
        )
    };
    if value.is_string() {
        return Ok(vec![value.to_string()]);
    }
    let type_name = value.type_name();
    let array = value
        .try_cast::<rhai::Array>()
        .ok_or_else(|| wrong(type_name))?;
    array
        .into_iter()
        .map(|item| {
            let item_type = item.type_name();
            item.into_immutable_string()
                .map(|s| s.to_string())
                .map_err(|_| wrong(&format!("an array holding {item_type}")))
        })
        .collect()
}
