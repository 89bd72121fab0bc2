//! Slack, over the Events API, interactivity and slash commands (HTTP), and the Web API.
//!
//! Three routes take Slack's requests, each verified with the app's signing secret
//! (`X-Slack-Signature`, `X-Slack-Request-Timestamp`, a 5-minute replay window, compared in
//! constant time; slack-morphism's verifier):
//!
//! - `POST /hooks/slack/{channel}/events`: the Events API. `url_verification` is answered with
//!   its challenge. Messages, mentions of the bot, reactions and members joining become events,
//!   stored on the task queue before the 200. Slack's retried deliveries (and the `message` and
//!   `app_mention` events of one message) are recognised and handled once. Other event types
//!   are ignored and counted.
//! - `POST /hooks/slack/{channel}/interactions`: block actions (button clicks).
//! - `POST /hooks/slack/{channel}/commands`: slash commands, as the message `/command text`.
//!
//! Replies go out with `chat.postMessage` (threads kept; Markdown as Slack's `markdown_text`
//! or a markdown block; buttons as an actions block), `chat.postEphemeral` for ephemeral
//! replies, `chat.update` for edits, and files through `files.getUploadURLExternal` and
//! `files.completeUploadExternal`. Payloads are parsed with slack-morphism's models; calls go
//! through a small client of ours on reqwest (slack-morphism's own needs hyper with TLS set up
//! separately, and this one paces each method's tier and waits out `Retry-After`).

mod settings;
pub use settings::SlackSettings;
mod api;
mod socket;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flowbot_core::lease::{LeaseTiming, hold};
use flowbot_core::{
    Capabilities, Channel, ChannelListener, ChannelName, ChannelSender, ChannelStore, Error, Event,
    Format, Inbox, Interaction, Message, MessageId, Outbound, Result, Role, Sender, SentId,
    Streaming, Target, UserId,
};
use serde::Deserialize;
use serde_json::{Value, json};
use slack_morphism::prelude::{
    SlackCommandEvent, SlackEventCallbackBody, SlackInteractionEvent, SlackPushEvent,
    SlackReactionsItem,
};
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;
use tokio_util::sync::CancellationToken;

pub use api::SlackApiError;

use crate::AdapterCounters;
use crate::adapter::{check_name, check_url, enqueue_inbound};
use crate::problem::Problem;

/// The public Web API.
pub const DEFAULT_API_BASE: &str = "https://slack.com/api";

/// One Slack app's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct SlackConfig {
    /// Channel name.
    pub name: String,
    /// The bot token (`xoxb-…`).
    pub bot_token: String,
    /// The app's signing secret.
    pub signing_secret: String,
    /// The Web API's base URL.
    pub api_base: String,
    /// The app-level token (`xapp-…`, scope `connections:write`): with it the app also
    /// receives over Socket Mode.
    pub app_token: Option<String>,
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("name", &self.name)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl SlackConfig {
    /// Check the settings; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), crate::SettingsError> {
        self.check().map_err(crate::SettingsError)
    }

    /// [`Self::validate`], in words.
    fn check(&self) -> std::result::Result<(), String> {
        check_name(&self.name)?;
        if !self.bot_token.starts_with("xoxb-") {
            return Err("bot_token must be a bot token (xoxb-…)".into());
        }
        if self.signing_secret.len() < 16 {
            return Err(
                "signing_secret must be the app's signing secret (at least 16 characters)".into(),
            );
        }
        if self
            .app_token
            .as_ref()
            .is_some_and(|t| !t.starts_with("xapp-"))
        {
            return Err("app_token must be an app-level token (xapp-…)".into());
        }
        check_url("api_base", &self.api_base)
    }
}

/// A Slack app: its routes, its sender, its statistics.
#[derive(Clone)]
pub struct Slack {
    state: Arc<SlackState>,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack")
            .field("name", &self.state.config.name)
            .finish_non_exhaustive()
    }
}

struct SlackState {
    config: SlackConfig,
    channel: ChannelName,
    store: Arc<dyn ChannelStore>,
    api: api::Api,
    verifier: SlackEventSignatureVerifier,
    stats: AdapterCounters,
}

impl Slack {
    /// A Slack app with `config` (checked here; no call to Slack until the first send), and
    /// the channel to register with the bot builder.
    pub fn new(
        store: Arc<dyn ChannelStore>,
        config: SlackConfig,
    ) -> std::result::Result<(Slack, Channel), crate::Error> {
        let fail = |e: String| crate::Error::settings(config.name.as_str(), e);
        config.validate().map_err(|e| fail(e.0))?;
        let api = api::Api::new(&config.api_base, &config.bot_token).map_err(fail)?;
        let verifier = SlackEventSignatureVerifier::new(&config.signing_secret.clone().into());
        let slack = Slack {
            state: Arc::new(SlackState {
                channel: ChannelName::from(config.name.as_str()),
                config,
                store,
                api,
                verifier,
                stats: AdapterCounters::default(),
            }),
        };
        let mut channel = Channel::new(
            slack.state.config.name.as_str(),
            SlackSender(slack.state.clone()),
        );
        if let Some(token) = &slack.state.config.app_token {
            channel = channel.with_listener(SocketListener {
                state: slack.state.clone(),
                app_token: token.clone(),
            });
        }
        Ok((slack, channel))
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// What the channel has seen.
    pub fn stats(&self) -> &AdapterCounters {
        &self.state.stats
    }

    /// `POST /hooks/slack/{channel}/events`, `/interactions` and `/commands`.
    pub fn router(&self) -> Router {
        let base = format!("/hooks/slack/{}", self.state.config.name);
        Router::new()
            .route(&format!("{base}/events"), post(events))
            .route(&format!("{base}/interactions"), post(interactions))
            .route(&format!("{base}/commands"), post(commands))
            .with_state(self.state.clone())
    }
}

#[async_trait]
impl crate::ChannelSpec for SlackConfig {
    /// [`Slack::new`] with its routes and counters, or with
    /// [`Setup::send_only`](crate::Setup::send_only) the sender alone (no Socket Mode).
    async fn build(&self, setup: &crate::Setup) -> std::result::Result<crate::Built, crate::Error> {
        if !setup.receives() {
            let config = SlackConfig {
                app_token: None,
                ..self.clone()
            };
            let (_, channel) = Slack::new(setup.store().clone(), config)?;
            return Ok(crate::Built::new(channel));
        }
        let (slack, channel) = Slack::new(setup.store().clone(), self.clone())?;
        Ok(crate::Built::new(channel)
            .routes(slack.router())
            .stats(Arc::new(slack)))
    }
}

impl crate::AdapterStats for Slack {
    fn channel(&self) -> &str {
        &self.state.config.name
    }
    fn counters(&self) -> &AdapterCounters {
        &self.state.stats
    }
}

/// How far a request's timestamp may be from now, in seconds (Slack's 5 minutes).
const REPLAY_WINDOW_SECS: u64 = 300;

/// The verified body of a Slack request, as text.
fn verified(
    state: &SlackState,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<String, Problem> {
    let body = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let unauthorized = |detail: String| Problem::new(StatusCode::UNAUTHORIZED, detail);
    let (Some(hash), Some(ts)) = (
        header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER),
        header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP),
    ) else {
        return Err(unauthorized(
            "missing X-Slack-Signature or X-Slack-Request-Timestamp header".into(),
        ));
    };
    // The replay window first, in arithmetic that cannot overflow: the verifier subtracts
    // the timestamp from the clock in plain i64 (an overflow on a timestamp near i64::MIN).
    if let Ok(at) = ts.parse::<i64>()
        && flowbot_core::clock::now().timestamp().abs_diff(at) > REPLAY_WINDOW_SECS
    {
        return Err(unauthorized(format!(
            "signature refused: the timestamp {at} is outside the 5-minute replay window"
        )));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| Problem::bad_request("the body is not UTF-8"))?;
    state
        .verifier
        .verify(hash, &text, ts)
        .map_err(|e| unauthorized(format!("signature refused: {e}")))?;
    Ok(text)
}

fn invalid(what: &str, e: &dyn std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("invalid {what}: {e}"),
    )
}

/// Store `event` for the pipeline under `dedupe` (the same key for Slack's redeliveries).
async fn store_event(
    state: &SlackState,
    event: &Event,
    dedupe: &str,
) -> std::result::Result<(), Problem> {
    enqueue_inbound(&*state.store, &state.channel, &state.stats, event, dedupe)
        .await
        .map_err(Problem::from)
}

fn user(id: &str) -> Sender {
    Sender {
        id: UserId(id.to_owned()),
        name: None,
        roles: vec![Role::User],
    }
}

/// A message id FlowBot uses for a Slack message: `<channel>:<ts>`.
fn message_id(channel: &str, ts: &str) -> MessageId {
    MessageId(format!("{channel}:{ts}"))
}

/// The text without a leading mention (`<@U123> `) of the bot.
fn without_mention(text: &str) -> &str {
    let t = text.trim_start();
    match t.strip_prefix("<@").and_then(|r| r.split_once('>')) {
        Some((_, rest)) => rest.trim_start(),
        None => t,
    }
}

/// Slack's escaping of `&`, `<` and `>` undone.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn events(
    State(state): State<Arc<SlackState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match on_event(&state, &headers, body).await {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn on_event(
    state: &SlackState,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Value, Problem> {
    let text = verified(state, headers, body)?;
    let raw: Value = serde_json::from_str(&text)
        .map_err(|e| Problem::bad_request(format!("invalid event: {e}")))?;
    process_event(state, raw).await
}

/// An Events API payload (over HTTP, or in a Socket Mode envelope): stored, or ignored and
/// counted; the answer for Slack.
async fn process_event(state: &SlackState, raw: Value) -> std::result::Result<Value, Problem> {
    // From the parsed value by reference: one parse, no copy of the document.
    let push = SlackPushEvent::deserialize(&raw).map_err(|e| invalid("event", &e))?;
    let callback = match push {
        SlackPushEvent::UrlVerification(v) => return Ok(json!({ "challenge": v.challenge })),
        SlackPushEvent::AppRateLimited(r) => {
            tracing::warn!(channel = %state.channel, team = %r.team_id, "Slack is dropping events: app_rate_limited");
            state.stats.ignored.inc("app_rate_limited");
            return Ok(json!({}));
        }
        SlackPushEvent::EventCallback(c) => c,
    };
    let ch = &state.channel;
    let (event, dedupe) = match callback.event {
        SlackEventCallbackBody::Message(m) => {
            if let Some(subtype) = &m.subtype {
                let why = serde_json::to_value(subtype)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "subtype".into());
                if why == "message_changed" {
                    let Some(edit) = edited(ch, &raw["event"]) else {
                        state
                            .stats
                            .ignored
                            .inc("message_changed without a person's text");
                        return Ok(json!({}));
                    };
                    // Each edit is an event of its own.
                    let dedupe = format!("event:{}", callback.event_id.0);
                    store_event(state, &edit, &dedupe).await?;
                    return Ok(json!({}));
                }
                state.stats.ignored.inc(&format!("message:{why}"));
                return Ok(json!({}));
            }
            if m.sender.bot_id.is_some() {
                state.stats.ignored.inc("message from a bot");
                return Ok(json!({}));
            }
            let (Some(from), Some(channel)) = (&m.sender.user, &m.origin.channel) else {
                state.stats.ignored.inc("message without user or channel");
                return Ok(json!({}));
            };
            let text = m
                .content
                .as_ref()
                .and_then(|c| c.text.clone())
                .unwrap_or_default();
            let mut message = Message::text(
                ch.clone(),
                channel.0.as_str(),
                user(&from.0),
                unescape(without_mention(&text)),
            );
            message.id = message_id(&channel.0, &m.origin.ts.0);
            message.thread = m.origin.thread_ts.as_ref().map(|t| t.0.clone());
            let dedupe = message.id.to_string();
            (Event::Message(message), dedupe)
        }
        SlackEventCallbackBody::AppMention(m) => {
            let text = m.content.text.clone().unwrap_or_default();
            let mut message = Message::text(
                ch.clone(),
                m.channel.0.as_str(),
                user(&m.user.0),
                unescape(without_mention(&text)),
            );
            message.id = message_id(&m.channel.0, &m.origin.ts.0);
            message.thread = m.origin.thread_ts.as_ref().map(|t| t.0.clone());
            // The same key as the `message` event of this message: handled once.
            let dedupe = message.id.to_string();
            (Event::Message(message), dedupe)
        }
        SlackEventCallbackBody::ReactionAdded(r) => {
            let SlackReactionsItem::Message(item) = &r.item else {
                state.stats.ignored.inc("reaction to a file");
                return Ok(json!({}));
            };
            let Some(channel) = &item.origin.channel else {
                state.stats.ignored.inc("reaction without channel");
                return Ok(json!({}));
            };
            (
                Event::Reaction {
                    channel: ch.clone(),
                    conversation: channel.0.as_str().into(),
                    message: message_id(&channel.0, &item.origin.ts.0),
                    user: user(&r.user.0),
                    emoji: r.reaction.0.clone(),
                    raw: None, // the payload, below
                },
                format!("event:{}", callback.event_id.0),
            )
        }
        SlackEventCallbackBody::MemberJoinedChannel(j) => (
            Event::MemberJoined {
                channel: ch.clone(),
                conversation: j.channel.0.as_str().into(),
                user: user(&j.user.0),
                raw: None, // the payload, below
            },
            format!("event:{}", callback.event_id.0),
        ),
        _ => {
            let kind = raw["event"]["type"].as_str().unwrap_or("unknown event");
            tracing::debug!(channel = %ch, kind, "Slack event ignored");
            state.stats.ignored.inc(kind);
            return Ok(json!({}));
        }
    };
    let mut event = event;
    match &mut event {
        Event::Message(m) => m.raw = Some(raw),
        Event::Reaction { raw: r, .. } | Event::MemberJoined { raw: r, .. } => *r = Some(raw),
        _ => {}
    }
    store_event(state, &event, &dedupe).await?;
    Ok(json!({}))
}

/// A `message_changed` event (`event`, Slack's JSON) as the edited message: the text as it
/// now reads, with the id of the message edited. `None` for a bot's message, or one without
/// a user, channel or text (an unfurl adds attachments through `message_changed` too).
fn edited(ch: &ChannelName, event: &Value) -> Option<Event> {
    let message = &event["message"];
    // A bot's message, or one with a subtype of its own (a deleted thread parent becomes a
    // `tombstone` by Slackbot).
    if message.get("bot_id").is_some_and(|b| !b.is_null())
        || message.get("subtype").is_some_and(|s| !s.is_null())
    {
        return None;
    }
    let (channel, from, ts, text) = (
        event["channel"].as_str()?,
        message["user"].as_str()?,
        message["ts"].as_str()?,
        message["text"].as_str()?,
    );
    // An unfurl or a bot's change leaves the text as it was: not an edit by a person.
    if event["previous_message"]["text"].as_str() == Some(text) {
        return None;
    }
    let mut m = Message::text(
        ch.clone(),
        channel,
        user(from),
        unescape(without_mention(text)),
    );
    m.id = message_id(channel, ts);
    m.thread = message["thread_ts"]
        .as_str()
        .filter(|t| *t != ts)
        .map(str::to_owned);
    m.raw = Some(event.clone());
    Some(Event::MessageEdited(m))
}

/// The JSON in the `payload` field of a form body (interactivity).
fn form_payload(body: &str) -> std::result::Result<Value, Problem> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_str(body)
        .map_err(|e| Problem::bad_request(format!("invalid form body: {e}")))?;
    let payload = fields
        .into_iter()
        .find_map(|(k, v)| (k == "payload").then_some(v))
        .ok_or_else(|| invalid("interaction", &"no 'payload' field"))?;
    serde_json::from_str(&payload)
        .map_err(|e| Problem::bad_request(format!("invalid interaction payload: {e}")))
}

async fn interactions(
    State(state): State<Arc<SlackState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match on_interaction(&state, &headers, body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(p) => p.into_response(),
    }
}

async fn on_interaction(
    state: &SlackState,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<(), Problem> {
    let text = verified(state, headers, body)?;
    process_interaction(state, form_payload(&text)?).await
}

/// An interaction payload (over HTTP, or in a Socket Mode envelope).
async fn process_interaction(
    state: &SlackState,
    payload: Value,
) -> std::result::Result<(), Problem> {
    let kind = payload["type"].as_str().unwrap_or("unknown").to_owned();
    // From the parsed value by reference: the payload itself is kept in each event's `raw`.
    let event =
        SlackInteractionEvent::deserialize(&payload).map_err(|e| invalid("interaction", &e))?;
    let SlackInteractionEvent::BlockActions(actions) = event else {
        state.stats.ignored.inc(&format!("interaction:{kind}"));
        return Ok(());
    };
    let (Some(who), Some(channel)) = (&actions.user, &actions.channel) else {
        state.stats.ignored.inc("block action outside a channel");
        return Ok(());
    };
    for (i, action) in actions.actions.iter().flatten().enumerate() {
        let Some(value) = &action.value else {
            state.stats.ignored.inc("block action without value");
            continue;
        };
        let id = format!("action:{}:{i}", actions.trigger_id.0);
        let event = Event::Interaction(Interaction {
            channel: state.channel.clone(),
            conversation: channel.id.0.as_str().into(),
            sender: user(&who.id.0),
            value: value.clone(),
            id: MessageId(id.clone()),
            raw: Some(payload.clone()),
        });
        store_event(state, &event, &id).await?;
    }
    Ok(())
}

async fn commands(
    State(state): State<Arc<SlackState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match on_command(&state, &headers, body).await {
        // An empty 200: the answer comes as a message.
        Ok(()) => StatusCode::OK.into_response(),
        Err(p) => p.into_response(),
    }
}

async fn on_command(
    state: &SlackState,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<(), Problem> {
    let text = verified(state, headers, body)?;
    let command: SlackCommandEvent =
        serde_urlencoded::from_str(&text).map_err(|e| invalid("slash command", &e))?;
    process_command(state, &command).await
}

/// A slash command (over HTTP, or in a Socket Mode envelope), as the message `/command text`.
async fn process_command(
    state: &SlackState,
    command: &SlackCommandEvent,
) -> std::result::Result<(), Problem> {
    let args = command.text.as_deref().unwrap_or("").trim();
    let line = if args.is_empty() {
        command.command.0.clone()
    } else {
        format!("{} {args}", command.command.0)
    };
    let mut message = Message::text(
        state.channel.clone(),
        command.channel_id.0.as_str(),
        user(&command.user_id.0),
        unescape(&line),
    );
    let id = format!("command:{}", command.trigger_id.0);
    message.id = MessageId(id.clone());
    store_event(state, &Event::Message(message), &id).await
}

/// Socket Mode, under the lease `slack:socket:<channel>` (one connection per app among the
/// servers sharing a database).
struct SocketListener {
    state: Arc<SlackState>,
    app_token: String,
}

#[async_trait]
impl ChannelListener for SocketListener {
    async fn listen(&self, _inbox: Inbox, shutdown: CancellationToken) -> Result<()> {
        // Payloads go to the durable queue, not the in-memory inbox.
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let (state, token) = (self.state.clone(), self.app_token.clone());
        hold(
            &*self.state.store,
            &format!("slack:socket:{}", self.state.config.name),
            &owner,
            LeaseTiming::default(),
            shutdown,
            move |stop| socket::run(state.clone(), token.clone(), stop),
        )
        .await;
        Ok(())
    }
}

struct SlackSender(Arc<SlackState>);

impl SlackSender {
    /// A message Slack can never take as it is.
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::unsendable(detail.into()),
        )
    }

    /// A Slack error as the channel's, counted, permanent or transient by its kind.
    fn failed(&self, e: SlackApiError) -> Error {
        self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
        Error::channel(self.0.config.name.clone(), e.classified())
    }

    /// A file transfer that failed (no answer, or a refusal): tried again later.
    fn transfer_failed(&self, detail: String) -> Error {
        self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::classified(None, None, detail),
        )
    }

    async fn call(&self, method: &str, body: &Value) -> Result<Value> {
        self.0
            .api
            .call(method, body)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Upload an attachment (fetched from its URL) into `channel`.
    async fn upload(
        &self,
        channel: &str,
        thread: Option<&str>,
        a: &flowbot_core::Attachment,
    ) -> Result<()> {
        let bytes = self
            .0
            .api
            .download(&a.url)
            .await
            .map_err(|e| self.transfer_failed(e))?;
        let name = a
            .name
            .clone()
            .or_else(|| a.url.rsplit('/').next().map(str::to_owned))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "file".into());
        let slot = self
            .0
            .api
            .call_form(
                "files.getUploadURLExternal",
                &[
                    ("filename", name.clone()),
                    ("length", bytes.len().to_string()),
                ],
            )
            .await
            .map_err(|e| self.failed(e))?;
        let (Some(url), Some(id)) = (slot["upload_url"].as_str(), slot["file_id"].as_str()) else {
            return Err(self.err("files.getUploadURLExternal: no upload_url or file_id"));
        };
        self.0
            .api
            .upload(url, bytes)
            .await
            .map_err(|e| self.transfer_failed(e))?;
        let mut done = json!({ "files": [{ "id": id, "title": name }], "channel_id": channel });
        if let Some(t) = thread {
            done["thread_ts"] = t.into();
        }
        self.call("files.completeUploadExternal", &done).await?;
        Ok(())
    }
}

/// The message body for `chat.postMessage`, `chat.postEphemeral` and `chat.update`: Markdown
/// as Slack's standard Markdown (`markdown_text`, or a markdown block next to buttons), plain
/// text unformatted, buttons as an actions block.
fn content(message: &Outbound) -> Value {
    let mut body = serde_json::Map::new();
    let buttons: Vec<Value> = message
        .buttons
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({ "type": "button", "action_id": format!("flowbot-{i}"),
                    "text": { "type": "plain_text", "text": b.label, "emoji": true }, "value": b.value })
        })
        .collect();
    match (message.format, buttons.is_empty()) {
        (Format::Markdown, true) => {
            body.insert("markdown_text".into(), message.text.clone().into());
        }
        (Format::Markdown, false) => {
            body.insert("text".into(), message.text.clone().into());
            body.insert(
                "blocks".into(),
                json!([{ "type": "markdown", "text": message.text },
                       { "type": "actions", "elements": buttons }]),
            );
        }
        (Format::Plain, true) => {
            body.insert("text".into(), escape(&message.text).into());
            body.insert("mrkdwn".into(), false.into());
        }
        (Format::Plain, false) => {
            body.insert("text".into(), escape(&message.text).into());
            body.insert(
                "blocks".into(),
                json!([{ "type": "section", "text": { "type": "plain_text", "text": message.text, "emoji": true } },
                       { "type": "actions", "elements": buttons }]),
            );
        }
    }
    Value::Object(body)
}

/// Slack's escaping of `&`, `<` and `>` in text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[async_trait]
impl ChannelSender for SlackSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        let target = message
            .target
            .as_ref()
            .ok_or_else(|| self.err("outbound message has no target"))?;
        let channel = target.conversation.as_str();
        let thread = target.thread.as_deref();
        let mut last = None;
        if !message.text.trim().is_empty() || !message.buttons.is_empty() {
            let mut body = content(message);
            body["channel"] = channel.into();
            if let Some(t) = thread {
                body["thread_ts"] = t.into();
            }
            match (&message.recipient, message.ephemeral) {
                (Some(user), true) => {
                    body["user"] = user.as_str().into();
                    let sent = self.call("chat.postEphemeral", &body).await?;
                    last = sent["message_ts"]
                        .as_str()
                        .map(|ts| SentId(format!("{channel}:{ts}")));
                }
                _ => {
                    let sent = self.call("chat.postMessage", &body).await?;
                    last = sent["ts"]
                        .as_str()
                        .map(|ts| SentId(format!("{channel}:{ts}")));
                }
            }
        }
        for a in &message.attachments {
            self.upload(channel, thread, a).await?;
        }
        last.or_else(|| {
            (!message.attachments.is_empty()).then(|| SentId(format!("{channel}:files")))
        })
        .ok_or_else(|| self.err("nothing to send: the message has no text and no attachments"))
    }

    async fn edit(&self, id: &SentId, message: &Outbound) -> Result<()> {
        let (channel, ts) =
            id.0.split_once(':')
                .ok_or_else(|| self.err(format!("'{}' is not a Slack message id", id.0)))?;
        let mut body = content(message);
        body["channel"] = channel.into();
        body["ts"] = ts.into();
        self.call("chat.update", &body).await.map(|_| ())
    }

    /// `chat.update` the draft into the message, then upload its attachments.
    async fn finish_draft(&self, shown: &SentId, message: &Outbound) -> Result<SentId> {
        self.edit(shown, message).await?;
        if let Some((channel, _)) = shown.0.split_once(':') {
            let thread = message.target.as_ref().and_then(|t| t.thread.as_deref());
            for a in &message.attachments {
                self.upload(channel, thread, a).await?;
            }
        }
        Ok(shown.clone())
    }

    /// One message edited as the answer grows: `chat.update` is a Tier 3 method, "50+ per
    /// minute" per workspace (<https://docs.slack.dev/reference/methods/chat.update>,
    /// <https://docs.slack.dev/apis/web-api/rate-limits>), so one draft alone stays within it
    /// at an edit every 1.2 s; the adapter paces all its Tier 3 calls together as well.
    fn streaming(&self, _target: &Target) -> Streaming {
        Streaming::Edit {
            interval: std::time::Duration::from_millis(1200),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            markdown: true,
            buttons: true,
            edit: true,
            threads: true,
            ephemeral: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_escapes_and_bodies() {
        assert_eq!(without_mention("<@U0BOT> /echo hi"), "/echo hi");
        assert_eq!(unescape("a &lt;b&gt; &amp; c"), "a <b> & c");
        assert_eq!(escape("a <b> & c"), "a &lt;b&gt; &amp; c");
        let plain = content(&Outbound::text("1 < 2"));
        assert_eq!(plain, json!({"text": "1 &lt; 2", "mrkdwn": false}));
        let md = content(&Outbound::markdown("**hi**"));
        assert_eq!(md, json!({"markdown_text": "**hi**"}));
        let asked = content(&Outbound::text("Rate?").button("Good", "5"));
        assert_eq!(asked["blocks"][1]["elements"][0]["value"], "5");
        assert_eq!(asked["blocks"][1]["elements"][0]["text"]["text"], "Good");
    }
}
