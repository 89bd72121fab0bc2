//! Tailchat, through its open platform ("openapi") bots.
//!
//! Tailchat calls a bot's callback URL when someone mentions the bot, in a group or in a
//! direct message: `POST` with the inbox item `{"type": "message", "payload": {"groupId",
//! "converseId", "messageId", "messageAuthor", "messageSnippet", "messagePlainContent"}}`. The
//! server takes it at `POST /hooks/tailchat/{channel}?token=<callback_token>`: Tailchat signs
//! nothing, so the token in the URL you give Tailchat is what authenticates it. The message is
//! stored as a task before the answer, and a redelivery is handled once.
//!
//! Replies go out as the bot: it logs in with `POST /api/openapi/bot/login` (`appId` and the MD5
//! of app id and secret), sends with `POST /api/chat/message/sendMessage` and the JWT in
//! `X-Token`, and logs in again when Tailchat answers 401 (an expired or revoked token) and
//! every day. Markdown goes in Tailchat's `[markdown]` tag; Tailchat has no buttons, so a
//! reply's buttons are listed under its text and the user answers with one of them.

mod settings;
pub use settings::TailchatSettings;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flowbot_core::{
    Capabilities, Channel, ChannelName, ChannelSender, ChannelStore, Error, Event, Format, Message,
    MessageId, Outbound, Result, Role, Sender, SentId, UserId,
};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::AdapterCounters;
use crate::adapter::{check_name, check_url, enqueue_inbound, same_secret};
use crate::problem::Problem;

/// One Tailchat bot's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct TailchatConfig {
    /// Channel name.
    pub name: String,
    /// The Tailchat server, e.g. `https://tailchat.example.com`.
    pub api_base: String,
    /// The open app's id.
    pub app_id: String,
    /// The open app's secret.
    pub app_secret: String,
    /// The `token` query parameter Tailchat must send with each callback (part of the callback
    /// URL you configure in Tailchat); at least 16 characters.
    pub callback_token: String,
    /// Most messages sent per second.
    pub sends_per_second: u32,
}

impl std::fmt::Debug for TailchatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailchatConfig")
            .field("name", &self.name)
            .field("api_base", &self.api_base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl TailchatConfig {
    /// Check the settings; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), crate::SettingsError> {
        check_name(&self.name)?;
        check_url("api_base", &self.api_base)?;
        if self.app_id.trim().is_empty() {
            return Err("app_id must not be empty".into());
        }
        if self.app_secret.trim().is_empty() {
            return Err("app_secret must not be empty".into());
        }
        if self.callback_token.len() < 16
            || !self
                .callback_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("callback_token must be at least 16 characters of A-Z a-z 0-9 _ -".into());
        }
        if self.sends_per_second == 0 {
            return Err("sends_per_second must be at least 1".into());
        }
        Ok(())
    }
}

/// A Tailchat bot: its callback route, its sender, its statistics.
#[derive(Clone)]
pub struct Tailchat {
    state: Arc<TcState>,
}

impl std::fmt::Debug for Tailchat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailchat")
            .field("name", &self.state.config.name)
            .finish_non_exhaustive()
    }
}

/// A JWT is renewed after this long even if Tailchat still takes it (they last 30 days).
const RENEW_AFTER: Duration = Duration::from_secs(24 * 3600);

struct TcState {
    config: TailchatConfig,
    channel: ChannelName,
    store: Arc<dyn ChannelStore>,
    client: reqwest::Client,
    /// The bot's JWT and when it was issued.
    jwt: Mutex<Option<(String, Instant)>>,
    stats: AdapterCounters,
    limiter: governor::DefaultDirectRateLimiter,
}

impl Tailchat {
    /// A Tailchat bot with `config` (checked here; no call to Tailchat until the first send),
    /// and the channel to register with the bot builder.
    pub fn new(
        store: Arc<dyn ChannelStore>,
        config: TailchatConfig,
    ) -> std::result::Result<(Tailchat, Channel), crate::Error> {
        let fail = |e: String| crate::Error::settings(config.name.as_str(), e);
        config.validate().map_err(|e| fail(e.0))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| fail(format!("HTTP client: {e}")))?;
        let per_second = NonZeroU32::new(config.sends_per_second).unwrap_or(NonZeroU32::MIN);
        let tc = Tailchat {
            state: Arc::new(TcState {
                channel: ChannelName::from(config.name.as_str()),
                config,
                store,
                client,
                jwt: Mutex::new(None),
                stats: AdapterCounters::default(),
                limiter: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
            }),
        };
        let channel = Channel::new(tc.state.config.name.as_str(), TcSender(tc.state.clone()));
        Ok((tc, channel))
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// What the channel has seen.
    pub fn stats(&self) -> &AdapterCounters {
        &self.state.stats
    }

    /// The callback route, `POST /hooks/tailchat/{channel}`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                &format!("/hooks/tailchat/{}", self.state.config.name),
                post(receive),
            )
            .with_state(self.state.clone())
    }
}

#[async_trait]
impl crate::ChannelSpec for TailchatConfig {
    /// [`Tailchat::new`] with its callback route and counters (the sender alone with
    /// [`Setup::send_only`](crate::Setup::send_only)).
    async fn build(&self, setup: &crate::Setup) -> std::result::Result<crate::Built, crate::Error> {
        let (tc, channel) = Tailchat::new(setup.store().clone(), self.clone())?;
        if !setup.receives() {
            return Ok(crate::Built::new(channel));
        }
        Ok(crate::Built::new(channel)
            .routes(tc.router())
            .stats(Arc::new(tc)))
    }
}

impl crate::AdapterStats for Tailchat {
    fn channel(&self) -> &str {
        &self.state.config.name
    }
    fn counters(&self) -> &AdapterCounters {
        &self.state.stats
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: Option<String>,
}

/// An inbox item as Tailchat posts it.
#[derive(Deserialize)]
struct Inbox {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mention {
    #[serde(default)]
    group_id: Option<String>,
    converse_id: String,
    message_id: String,
    message_author: String,
    #[serde(default)]
    message_snippet: Option<String>,
    #[serde(default)]
    message_plain_content: Option<String>,
}

/// `groupId:converseId` in groups, `converseId` in direct messages: what a reply needs.
fn conversation(group: Option<&str>, converse: &str) -> String {
    match group {
        Some(g) if !g.is_empty() => format!("{g}:{converse}"),
        _ => converse.to_owned(),
    }
}

/// The text without the leading mention of the bot (`[at=id]name[/at]` or `@name`).
fn strip_mention(text: &str) -> &str {
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix("[at=")
        && let Some(end) = rest.find("[/at]")
    {
        return rest[end + 5..].trim_start();
    }
    if let Some(rest) = t.strip_prefix('@') {
        return rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, after)| after.trim_start());
    }
    t
}

async fn receive(
    State(state): State<Arc<TcState>>,
    query: std::result::Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&state, query.ok().and_then(|q| q.0.token), body).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({}))).into_response(),
        Err(p) => p.into_response(),
    }
}

async fn accept(
    state: &TcState,
    token: Option<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<(), Problem> {
    if !token.is_some_and(|t| same_secret(t.as_bytes(), state.config.callback_token.as_bytes())) {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong 'token' query parameter",
        ));
    }
    let body = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let inbox: Inbox = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Problem::bad_request(format!("invalid callback: {e}"))
        } else {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid callback: {e}"),
            )
        }
    })?;
    if inbox.kind != "message" {
        tracing::debug!(channel = %state.channel, kind = %inbox.kind, "tailchat callback ignored");
        state.stats.ignored.inc(&inbox.kind);
        return Ok(());
    }
    let m: Mention = serde_json::from_value(inbox.payload).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid message callback payload: {e}"),
        )
    })?;
    let raw = m
        .message_plain_content
        .as_deref()
        .or(m.message_snippet.as_deref())
        .unwrap_or("");
    let text = strip_mention(raw).to_owned();
    if text.is_empty() {
        state.stats.ignored.inc("empty message");
        return Ok(());
    }
    let conversation = conversation(m.group_id.as_deref(), &m.converse_id);
    let mut message = Message::text(
        state.channel.clone(),
        conversation.as_str(),
        Sender {
            id: UserId(m.message_author.clone()),
            name: None,
            roles: vec![Role::User],
        },
        text,
    );
    message.id = MessageId(m.message_id.clone());
    message.raw = serde_json::from_slice(&body).ok();
    enqueue_inbound(
        &*state.store,
        &state.channel,
        &state.stats,
        &Event::Message(message),
        &m.message_id,
    )
    .await
    .map_err(Problem::from)
}

struct TcSender(Arc<TcState>);

/// Why a call to Tailchat failed.
enum CallError {
    /// 401: the JWT is no longer good.
    Unauthorized,
    /// Any other failure: its HTTP status (none when Tailchat did not answer) and words.
    Other(Option<u16>, String),
}

impl TcSender {
    /// What Tailchat can never take as it is (a message without a target).
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::unsendable(detail.into()),
        )
    }

    /// Tailchat's refusal (or silence: no `status`), permanent or transient by its status.
    fn failed(&self, status: Option<u16>, detail: String) -> Error {
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::classified(status, None, detail),
        )
    }

    async fn post(
        &self,
        path: &str,
        jwt: Option<&str>,
        body: &Value,
    ) -> std::result::Result<Value, CallError> {
        let url = format!("{}{path}", self.0.config.api_base.trim_end_matches('/'));
        let mut req = self.0.client.post(url).json(body);
        if let Some(jwt) = jwt {
            req = req.header("X-Token", jwt);
        }
        let res = req
            .send()
            .await
            .map_err(|e| CallError::Other(None, format!("{path}: {e}")))?;
        let status = res.status();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Unauthorized);
        }
        if !status.is_success() {
            let why = answer["message"].as_str().unwrap_or("no message");
            return Err(CallError::Other(
                Some(status.as_u16()),
                format!("{path}: Tailchat answered {status}: {why}"),
            ));
        }
        Ok(answer.get("data").cloned().unwrap_or(Value::Null))
    }

    /// The bot's JWT, logging in when there is none, it is a day old, or `stale` was refused.
    async fn jwt(&self, stale: Option<&str>) -> Result<String> {
        let mut slot = self.0.jwt.lock().await;
        if let Some((jwt, at)) = slot.as_ref()
            && at.elapsed() < RENEW_AFTER
            && Some(jwt.as_str()) != stale
        {
            return Ok(jwt.clone());
        }
        let c = &self.0.config;
        let token = hex::encode(Md5::digest(format!("{}{}", c.app_id, c.app_secret)));
        let data = self
            .post(
                "/api/openapi/bot/login",
                None,
                &json!({ "appId": c.app_id, "token": token }),
            )
            .await
            .map_err(|e| {
                self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                match e {
                    CallError::Unauthorized => self.failed(
                        Some(401),
                        "login refused (401): check app_id and app_secret".into(),
                    ),
                    CallError::Other(status, e) => {
                        self.failed(status, format!("login failed: {e}"))
                    }
                }
            })?;
        let jwt = data["jwt"]
            .as_str()
            .ok_or_else(|| self.err("login answer has no data.jwt"))?
            .to_owned();
        *slot = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    /// `POST path` as the bot, logging in again once if Tailchat refuses the token.
    async fn call(&self, path: &str, body: &Value) -> Result<Value> {
        self.0.limiter.until_ready().await;
        let mut jwt = self.jwt(None).await?;
        for attempt in 0..2 {
            match self.post(path, Some(&jwt), body).await {
                Ok(v) => return Ok(v),
                Err(CallError::Unauthorized) if attempt == 0 => {
                    tracing::info!(channel = %self.0.channel, "tailchat token refused; logging in again");
                    jwt = self.jwt(Some(&jwt)).await?;
                }
                Err(e) => {
                    self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(match e {
                        CallError::Unauthorized => {
                            self.failed(Some(401), format!("{path}: 401 after a fresh login"))
                        }
                        CallError::Other(status, e) => self.failed(status, e),
                    });
                }
            }
        }
        Err(self.failed(Some(401), format!("{path}: token refused twice")))
    }
}

/// The message's content in Tailchat's markup: Markdown in its `[markdown]` tag, buttons listed
/// under the text (Tailchat has none), attachments as images or file cards.
fn content(message: &Outbound) -> String {
    let mut out = match message.format {
        Format::Markdown => format!("[markdown]{}[/markdown]", message.text),
        Format::Plain => message.text.clone(),
    };
    if !message.buttons.is_empty() {
        let options: Vec<String> = message
            .buttons
            .iter()
            .map(|b| {
                if b.label == b.value {
                    format!("[b]{}[/b]", b.value)
                } else {
                    format!("{} ([b]{}[/b])", b.label, b.value)
                }
            })
            .collect();
        out.push_str(&format!("\nReply with: {}", options.join(" · ")));
    }
    for a in &message.attachments {
        let name = a.name.as_deref().unwrap_or(&a.url);
        if a.mime.as_deref().is_some_and(|m| m.starts_with("image/")) {
            out.push_str(&format!("\n[img]{}[/img]", a.url));
        } else {
            out.push_str(&format!("\n[card type=file url={}]{name}[/card]", a.url));
        }
    }
    out
}

#[async_trait]
impl ChannelSender for TcSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        let target = message
            .target
            .as_ref()
            .ok_or_else(|| self.err("outbound message has no target"))?;
        let (group, converse) = match target.conversation.as_str().split_once(':') {
            Some((g, c)) => (Some(g), c),
            None => (None, target.conversation.as_str()),
        };
        let mut body = json!({
            "converseId": converse,
            "content": content(message),
            "plain": message.text,
        });
        if let Some(g) = group {
            body["groupId"] = g.into();
        }
        let sent = self.call("/api/chat/message/sendMessage", &body).await?;
        let id = sent["_id"].as_str().unwrap_or_default();
        Ok(SentId(id.to_owned()))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            markdown: true,
            buttons: false,
            edit: false,
            threads: false,
            ephemeral: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_stripped_and_buttons_listed() {
        assert_eq!(strip_mention("[at=bot1]FlowBot[/at] /echo hi"), "/echo hi");
        assert_eq!(strip_mention("@FlowBot  /help"), "/help");
        assert_eq!(strip_mention("plain"), "plain");
        assert_eq!(conversation(Some("g1"), "c1"), "g1:c1");
        assert_eq!(conversation(None, "c1"), "c1");
        let out = Outbound::markdown("**Rate** us")
            .button("1", "1")
            .button("Great", "5");
        assert_eq!(
            content(&out),
            "[markdown]**Rate** us[/markdown]\nReply with: [b]1[/b] · Great ([b]5[/b])"
        );
    }
}
