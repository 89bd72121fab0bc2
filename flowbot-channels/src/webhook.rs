//! The generic webhook channel.
//!
//! `POST /hooks/webhook/{channel}` with `{"user": "…", "conversation": "…", "text": "…"}`
//! (optionally `"id"`, the sender's own message id, which makes redelivery idempotent, and
//! `"name"`, the user's display name; a button click sends `"button": "<value>"` instead of
//! `"text"`) answers `202 {"id": "…"}` once the message is durably
//! stored as a task on the queue; a crash right after the 202 loses nothing. Replies are
//! POSTed to the channel's callback URL; a failed POST is retried through the task queue and
//! dead-lettered after the last attempt.
//!
//! With a secret, both directions are signed: the header
//! `X-FlowBot-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Incoming
//! requests with a missing or wrong signature, or a timestamp outside the replay window, get
//! 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flowbot_core::task::{Enqueued, NewTask};
use flowbot_core::{
    Channel, ChannelSender, ChannelStore, Error, Event, INBOUND_TASK, Interaction, Message,
    MessageId, Outbound, Result, Role, Sender, SentId, UserId,
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::problem::Problem;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-flowbot-signature";

/// Longest accepted message text, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// One webhook channel's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Channel name (the `{channel}` in the URL).
    pub name: String,
    /// Where replies are POSTed; without one, replies are only stored in the history.
    pub callback_url: Option<String>,
    /// Shared secret for HMAC-SHA256 signatures in both directions.
    pub secret: Option<String>,
    /// How far a signature's timestamp may be from now.
    pub replay_window: Duration,
}

/// A webhook channel as a configuration file describes it (`[webhooks.<name>]` in the
/// server's file); [`channel_config`](Self::channel_config) checks it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Where replies are POSTed.
    pub callback_url: Option<String>,
    /// HMAC-SHA256 secret for both directions (at least 16 bytes).
    pub secret: Option<String>,
    /// Replay window for signatures, in seconds (1 to 86400; default 300).
    pub replay_window_secs: Option<u64>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is a secret; the callback URL may carry a token.
        f.debug_struct("WebhookSettings")
            .field("callback_url", &self.callback_url.is_some())
            .field("secret", &self.secret.is_some())
            .field("replay_window_secs", &self.replay_window_secs)
            .finish()
    }
}

impl WebhookSettings {
    /// The channel `name`'s configuration; the error names the key that is wrong.
    pub fn channel_config(
        &self,
        name: &str,
    ) -> std::result::Result<WebhookConfig, crate::SettingsError> {
        let secs = self.replay_window_secs.unwrap_or(300);
        if !(1..=86_400).contains(&secs) {
            return Err(
                format!("replay_window_secs must be from 1 to 86400 (1 day), got {secs}").into(),
            );
        }
        Ok(WebhookConfig {
            name: name.to_owned(),
            callback_url: self.callback_url.clone(),
            secret: self.secret.clone(),
            replay_window: Duration::from_secs(secs),
        })
    }
}

impl WebhookConfig {
    /// A channel named `name` without callback or secret, with a 5 minute replay window.
    pub fn new(name: impl Into<String>) -> Self {
        WebhookConfig {
            name: name.into(),
            callback_url: None,
            secret: None,
            replay_window: Duration::from_secs(300),
        }
    }
}

/// The webhook channels of a server, and their routes.
#[derive(Clone)]
pub struct Webhooks {
    state: Arc<HookState>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("channels", &self.state.channels.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct HookState {
    store: Arc<dyn ChannelStore>,
    channels: HashMap<String, WebhookConfig>,
}

/// The JSON body of an incoming webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    user: String,
    conversation: String,
    /// A message's text…
    #[serde(default)]
    text: Option<String>,
    /// …or the value of a clicked button.
    #[serde(default)]
    button: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The JSON body of a reply POSTed to the callback URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    /// The channel.
    pub channel: String,
    /// The conversation.
    pub conversation: String,
    /// Text.
    pub text: String,
    /// Text format.
    pub format: flowbot_core::Format,
    /// Buttons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<flowbot_core::Button>,
    /// The message id this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Unique id of this reply (the same on every retry of its delivery).
    pub id: String,
}

/// The acknowledgement of an accepted webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The message id (the sender's own, if it gave one).
    pub id: String,
}

impl Webhooks {
    /// Webhook channels storing into `store`, configured from `configs`. Returns the
    /// channels to register with the bot, too.
    pub fn new(
        store: Arc<dyn ChannelStore>,
        configs: &[WebhookConfig],
    ) -> std::result::Result<(Self, Vec<Channel>), crate::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| crate::Error::settings("webhook", format!("HTTP client: {e}")))?;
        let mut channels = HashMap::new();
        let mut out = Vec::new();
        for c in configs {
            let fail = |e: String| crate::Error::settings(c.name.as_str(), e);
            if !crate::valid_id(&c.name, 64) {
                return Err(fail(
                    "a webhook channel's name must be 1-64 characters of A-Z a-z 0-9 _ - . : @"
                        .into(),
                ));
            }
            if channels.contains_key(&c.name) {
                return Err(fail("the webhook channel is configured twice".into()));
            }
            if let Some(url) = &c.callback_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(fail(format!(
                    "callback_url '{url}' is not an http:// or https:// URL"
                )));
            }
            if c.secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err(fail("secret must be at least 16 bytes".into()));
            }
            channels.insert(c.name.clone(), c.clone());
            out.push(Channel::new(
                c.name.as_str(),
                CallbackSender {
                    config: c.clone(),
                    client: client.clone(),
                },
            ));
        }
        Ok((
            Webhooks {
                state: Arc::new(HookState { store, channels }),
            },
            out,
        ))
    }

    /// The route `POST /hooks/webhook/{channel}`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/hooks/webhook/{channel}", post(receive))
            .with_state(self.state.clone())
    }
}

#[async_trait::async_trait]
impl crate::ChannelSpec for Vec<WebhookConfig> {
    /// [`Webhooks::new`]: the channels, and their route (not with
    /// [`Setup::send_only`](crate::Setup::send_only)).
    async fn build(&self, setup: &crate::Setup) -> std::result::Result<crate::Built, crate::Error> {
        let (hooks, channels) = Webhooks::new(setup.store().clone(), self)?;
        let built = crate::Built::many(channels);
        Ok(if setup.receives() {
            built.routes(hooks.router())
        } else {
            built
        })
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The signature header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No signature header.
    #[error("missing {SIGNATURE_HEADER} header")]
    Missing,
    /// The header is not `t=…,v1=…`.
    #[error("malformed {SIGNATURE_HEADER} header; expected t=<unix seconds>,v1=<hex>")]
    Malformed,
    /// The timestamp is too old or too far in the future.
    #[error("signature timestamp is outside the replay window of {0} seconds")]
    Expired(u64),
    /// The HMAC does not match.
    #[error("signature does not match")]
    Mismatch,
}

/// Check a signature header for `body` against `secret`, at `now` (unix seconds).
pub fn verify(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now: i64,
    window: Duration,
) -> std::result::Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    if now.abs_diff(t) > window.as_secs() {
        return Err(SignatureError::Expired(window.as_secs()));
    }
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&v1).map_err(|_| SignatureError::Mismatch)
}

fn check_field(name: &str, value: &str, max: usize) -> std::result::Result<(), Problem> {
    if value.trim().is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("field '{name}' must not be empty"),
        ));
    }
    if value.len() > max {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "field '{name}' is {} bytes, over the limit of {max}",
                value.len()
            ),
        ));
    }
    Ok(())
}

async fn receive(
    State(state): State<Arc<HookState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&state, &channel, &headers, body).await {
        Ok(accepted) => (StatusCode::ACCEPTED, axum::Json(accepted)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn accept(
    state: &HookState,
    channel: &str,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Accepted, Problem> {
    let config = state
        .channels
        .get(channel)
        .ok_or_else(|| Problem::not_found(format!("no webhook channel named '{channel}'")))?;
    let body = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json, got '{content_type}'"),
        ));
    }
    if let Some(secret) = &config.secret {
        let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        verify(
            secret,
            header,
            &body,
            flowbot_core::clock::now().timestamp(),
            config.replay_window,
        )
        .map_err(|e| Problem::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    }
    let incoming: Incoming = serde_json::from_slice(&body).map_err(|e| {
        let status = if e.is_syntax() || e.is_eof() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Problem::new(status, format!("invalid body: {e}"))
    })?;
    check_field("user", &incoming.user, 200)?;
    check_field("conversation", &incoming.conversation, 200)?;
    if let Some(id) = &incoming.id {
        check_field("id", id, 200)?;
    }
    let sender = Sender {
        id: UserId(incoming.user),
        name: incoming.name,
        roles: vec![Role::User],
    };
    let event = match (incoming.text, incoming.button) {
        (Some(text), None) => {
            check_field("text", &text, MAX_TEXT_BYTES)?;
            let mut message = Message::text(channel, incoming.conversation.as_str(), sender, text);
            if let Some(id) = &incoming.id {
                message.id = MessageId(id.clone());
            }
            Event::Message(message)
        }
        (None, Some(value)) => {
            check_field("button", &value, MAX_TEXT_BYTES)?;
            Event::Interaction(Interaction {
                channel: channel.into(),
                conversation: incoming.conversation.as_str().into(),
                sender,
                value,
                id: MessageId(
                    incoming
                        .id
                        .clone()
                        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                ),
                raw: None,
            })
        }
        _ => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give exactly one of 'text' (a message) and 'button' (a clicked button's value)",
            ));
        }
    };
    let id = event
        .dedupe_id()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut task = NewTask::new(INBOUND_TASK, &event)
        .map_err(|e| Problem::bad_request(e.to_string()))?
        .concurrency_key(format!("inbound:{channel}:{}", incoming.conversation));
    if incoming.id.is_some() {
        task = task.dedupe_key(format!("inbound:{channel}:{id}"));
    }
    match state.store.enqueue(&task).await {
        Ok(Enqueued::New(_) | Enqueued::Duplicate(_)) => Ok(Accepted { id }),
        Err(e) => Err(Problem::from_store(&e)),
    }
}

struct CallbackSender {
    config: WebhookConfig,
    client: reqwest::Client,
}

#[async_trait]
impl ChannelSender for CallbackSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        let err = |source: flowbot_core::BoxError| Error::channel(self.config.name.clone(), source);
        let target = message.target.as_ref().ok_or_else(|| {
            err(crate::retry_after::unsendable(
                "outbound message has no target",
            ))
        })?;
        let id = uuid::Uuid::now_v7().to_string();
        let Some(url) = &self.config.callback_url else {
            tracing::debug!(channel = %self.config.name, "no callback URL; reply kept in the history only");
            return Ok(SentId(id));
        };
        let body = Callback {
            channel: self.config.name.clone(),
            conversation: target.conversation.to_string(),
            text: message.text.clone(),
            format: message.format,
            buttons: message.buttons.clone(),
            reply_to: message.reply_to.as_ref().map(|r| r.to_string()),
            id: id.clone(),
        };
        let bytes =
            serde_json::to_vec(&body).map_err(|e| err(crate::retry_after::unsendable(e)))?;
        let mut req = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.config.secret {
            req = req.header(
                SIGNATURE_HEADER,
                sign(secret, flowbot_core::clock::now().timestamp(), &bytes),
            );
        }
        let res = req.body(bytes).send().await.map_err(|e| {
            err(Box::new(flowbot_core::Transient::new(format!(
                "callback POST failed: {}",
                e.without_url()
            ))))
        })?;
        let status = res.status();
        if !status.is_success() {
            let wait = res
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::retry_after::parse_header(v, flowbot_core::clock::now()));
            // The application's own endpoint: any refusal may be fixed there, so the reply
            // is retried (no earlier than its Retry-After) and dead-lettered at the end.
            return Err(err(Box::new(
                flowbot_core::Transient::new(format!("callback answered {status}"))
                    .retry_after_opt(wait),
            )));
        }
        Ok(SentId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_reject_tampering() {
        let secret = "0123456789abcdef-secret";
        let body = br#"{"user":"u","conversation":"c","text":"hi"}"#;
        let header = sign(secret, 1_700_000_000, body);
        let w = Duration::from_secs(300);
        assert_eq!(
            verify(secret, Some(&header), body, 1_700_000_100, w),
            Ok(())
        );
        assert_eq!(
            verify(secret, Some(&header), b"{}", 1_700_000_100, w),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                "another-secret-value!",
                Some(&header),
                body,
                1_700_000_100,
                w
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(secret, Some(&header), body, 1_700_000_400, w),
            Err(SignatureError::Expired(300))
        );
        assert_eq!(
            verify(secret, None, body, 1_700_000_000, w),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(secret, Some("v1=zz"), body, 1_700_000_000, w),
            Err(SignatureError::Malformed)
        );
    }
}
