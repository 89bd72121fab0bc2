//! Telegram, over the Bot API.
//!
//! Updates arrive by long polling (`getUpdates`) or by webhook (`POST /hooks/telegram/{channel}`
//! with Telegram's `X-Telegram-Bot-Api-Secret-Token` header). Either way each update is stored
//! as a task on the durable queue before it is confirmed to Telegram (the next poll's offset, or
//! the webhook's 200), so a crash loses nothing, and an update delivered again while its first
//! task is queued or running is recognised by its `update_id`. Messages (text, captions, photos and documents), commands (`/cmd@this_bot` is
//! `/cmd`; commands for other bots are ignored), inline keyboard clicks (callback queries, which
//! are answered at once so the button stops spinning), reactions and members joining become
//! FlowBot events; other updates are ignored and counted.
//!
//! Replies go out with `sendMessage`: Markdown rendered to Telegram's HTML, long texts cut into
//! several messages, buttons as an inline keyboard, threads (forum topics) and replies kept,
//! attachments sent by URL or file id. Sends are throttled per bot and a 429 is waited out as
//! Telegram asks (`retry_after`); a send that still fails is retried by the task queue.

mod settings;
pub use settings::{TelegramMode, TelegramSettings};
mod api;
mod format;
mod update;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
    Capabilities, Channel, ChannelListener, ChannelName, ChannelSender, ChannelStore, Error,
    Format, Inbox, Outbound, Result, SentId, Streaming, Target,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use api::ApiError;

use crate::AdapterCounters;
use crate::adapter::{Unstored, check_name, check_url, enqueue_inbound, same_secret};
use crate::problem::Problem;

/// The header Telegram sends the webhook's secret token in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The public Bot API.
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";

/// How updates reach the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Long polling with `getUpdates`: works behind NAT, one poller per bot (in distributed
    /// mode, one server at a time holds it).
    Polling {
        /// How long one `getUpdates` call waits for updates.
        timeout: Duration,
    },
    /// Telegram POSTs updates to `/hooks/telegram/{channel}`.
    Webhook {
        /// Telegram sends it in `X-Telegram-Bot-Api-Secret-Token`; requests without it get 401.
        secret_token: String,
        /// The server's public base URL: when given, the webhook is registered with
        /// `setWebhook` at start (`{public_url}/hooks/telegram/{channel}`).
        public_url: Option<String>,
    },
}

/// One Telegram bot's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct TelegramConfig {
    /// Channel name.
    pub name: String,
    /// The bot token from @BotFather.
    pub token: String,
    /// The Bot API's base URL (a local Bot API server, or a test server).
    pub api_base: String,
    /// Polling or webhook.
    pub mode: Mode,
    /// Most messages sent per second by this bot (Telegram allows about 30).
    pub sends_per_second: u32,
    /// The polling lease: among processes sharing a database, one polls at a time; when it
    /// dies another takes over within `ttl + every`.
    pub lease: LeaseTiming,
}

impl std::fmt::Debug for TelegramConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramConfig")
            .field("name", &self.name)
            .field("api_base", &self.api_base)
            .field("sends_per_second", &self.sends_per_second)
            .finish_non_exhaustive()
    }
}

impl TelegramConfig {
    /// A long-polling bot named `name` on the public Bot API.
    pub fn polling(name: impl Into<String>, token: impl Into<String>) -> Self {
        TelegramConfig {
            name: name.into(),
            token: token.into(),
            api_base: DEFAULT_API_BASE.into(),
            mode: Mode::Polling {
                timeout: Duration::from_secs(30),
            },
            sends_per_second: 25,
            lease: LeaseTiming::default(),
        }
    }

    /// Check the settings; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), crate::SettingsError> {
        self.check().map_err(crate::SettingsError)
    }

    /// [`Self::validate`], in words.
    fn check(&self) -> std::result::Result<(), String> {
        check_name(&self.name)?;
        let (id, secret) = self.token.split_once(':').unwrap_or(("", ""));
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || secret.len() < 10 {
            return Err("token is not a bot token (<bot id>:<secret> from @BotFather)".into());
        }
        check_url("api_base", &self.api_base)?;
        crate::adapter::check_lease("polling", &self.lease)?;
        if self.sends_per_second == 0 {
            return Err("sends_per_second must be at least 1".into());
        }
        match &self.mode {
            Mode::Polling { timeout } if timeout.as_secs() > 50 => {
                Err("poll_timeout must be at most 50 seconds".into())
            }
            Mode::Webhook { secret_token, .. }
                if secret_token.is_empty()
                    || secret_token.len() > 256
                    || !secret_token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Err("secret_token must be 1-256 characters of A-Z a-z 0-9 _ -".into())
            }
            Mode::Webhook {
                public_url: Some(u),
                ..
            } if !u.starts_with("https://") && !u.starts_with("http://") => {
                Err(format!("public_url '{u}' is not an http(s) URL"))
            }
            _ => Ok(()),
        }
    }
}

/// A Telegram bot: its sender, its poller or webhook route, its statistics.
#[derive(Clone)]
pub struct Telegram {
    state: Arc<TgState>,
}

impl std::fmt::Debug for Telegram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram")
            .field("name", &self.state.config.name)
            .field("username", &self.state.username)
            .finish_non_exhaustive()
    }
}

type Limiter = governor::DefaultDirectRateLimiter;

struct TgState {
    config: TelegramConfig,
    channel: ChannelName,
    api: api::Api,
    store: Arc<dyn ChannelStore>,
    /// The bot's username (from `getMe`).
    username: String,
    stats: AdapterCounters,
    limiter: Limiter,
}

impl Telegram {
    /// Check `config`, ask Telegram who the bot is (`getMe`: a wrong token fails here), and in
    /// polling mode remove any webhook (Telegram refuses `getUpdates` while one is set), in
    /// webhook mode register it when `public_url` is given. Returns the bot and the channel to
    /// register with the bot builder.
    pub async fn connect(
        store: Arc<dyn ChannelStore>,
        config: TelegramConfig,
    ) -> std::result::Result<(Telegram, Channel), crate::Error> {
        let name = config.name.clone();
        let api = Self::api(&config)?;
        let api_err = |method: &'static str| {
            let name = name.clone();
            move |e: ApiError| crate::Error::platform(name, method, e.classified())
        };
        let me = api
            .call("getMe", &json!({}))
            .await
            .map_err(api_err("getMe"))?;
        let username = me
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match &config.mode {
            Mode::Polling { .. } => {
                api.call("deleteWebhook", &json!({ "drop_pending_updates": false }))
                    .await
                    .map_err(api_err("deleteWebhook"))?;
            }
            Mode::Webhook {
                secret_token,
                public_url: Some(base),
            } => {
                let url = format!("{}/hooks/telegram/{}", base.trim_end_matches('/'), name);
                api.call(
                    "setWebhook",
                    &json!({
                        "url": url,
                        "secret_token": secret_token,
                        "allowed_updates": update::ALLOWED_UPDATES,
                    }),
                )
                .await
                .map_err(api_err("setWebhook"))?;
            }
            Mode::Webhook { .. } => {}
        }
        let tg = Telegram::build(store, config, api, username);
        let mut channel = Channel::new(tg.state.config.name.as_str(), TgSender(tg.state.clone()));
        if matches!(tg.state.config.mode, Mode::Polling { .. }) {
            channel = channel.with_listener(Poller(tg.state.clone()));
        }
        Ok((tg, channel))
    }

    /// The channel for a process that only sends (an agent delivering replies): no calls to
    /// Telegram at start, no poller, no route.
    pub fn sender_only(
        store: Arc<dyn ChannelStore>,
        config: TelegramConfig,
    ) -> std::result::Result<Channel, crate::Error> {
        let api = Self::api(&config)?;
        let tg = Telegram::build(store, config, api, String::new());
        Ok(Channel::new(
            tg.state.config.name.as_str(),
            TgSender(tg.state.clone()),
        ))
    }

    /// The Bot API client of `config`, once `config` is checked.
    fn api(config: &TelegramConfig) -> std::result::Result<api::Api, crate::Error> {
        let fail = |e: String| crate::Error::settings(config.name.as_str(), e);
        config.validate().map_err(|e| fail(e.0))?;
        api::Api::new(&config.api_base, &config.token, Duration::from_secs(15)).map_err(fail)
    }

    fn build(
        store: Arc<dyn ChannelStore>,
        config: TelegramConfig,
        api: api::Api,
        username: String,
    ) -> Telegram {
        let per_second = NonZeroU32::new(config.sends_per_second).unwrap_or(NonZeroU32::MIN);
        Telegram {
            state: Arc::new(TgState {
                channel: ChannelName::from(config.name.as_str()),
                config,
                api,
                store,
                username,
                stats: AdapterCounters::default(),
                limiter: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
            }),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// Declare the bot's commands (`setMyCommands`), shown in Telegram's command menu. Names
    /// Telegram does not accept (1-32 of `a-z 0-9 _`) are left out; a missing description
    /// becomes the usage. Returns how many were declared.
    pub async fn set_commands(
        &self,
        commands: &[flowbot_core::CommandInfo],
    ) -> std::result::Result<usize, crate::Error> {
        let list: Vec<Value> = commands
            .iter()
            .map(|c| (&c.name, c.description.as_ref().unwrap_or(&c.usage)))
            .filter(|(name, _)| {
                (1..=32).contains(&name.len())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .take(100)
            .map(|(name, description)| {
                let d: String = if description.trim().is_empty() {
                    name.clone()
                } else {
                    description.chars().take(256).collect()
                };
                json!({ "command": name, "description": d })
            })
            .collect();
        let n = list.len();
        self.state
            .api
            .call("setMyCommands", &json!({ "commands": list }))
            .await
            .map_err(|e| {
                crate::Error::platform(
                    self.state.config.name.as_str(),
                    "setMyCommands",
                    e.classified(),
                )
            })?;
        Ok(n)
    }

    /// The bot's username, as Telegram reported it.
    pub fn username(&self) -> &str {
        &self.state.username
    }

    /// What the channel has seen.
    pub fn stats(&self) -> &AdapterCounters {
        &self.state.stats
    }

    /// The webhook route, `POST /hooks/telegram/{channel}` (answers 404 in polling mode).
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                &format!("/hooks/telegram/{}", self.state.config.name),
                post(receive),
            )
            .with_state(self.state.clone())
    }

    /// Poll for updates until `shutdown` (what the channel's listener does; exposed so an
    /// application can hold the poll under its own lease).
    pub async fn poll(&self, shutdown: CancellationToken) {
        poll(self.state.clone(), shutdown).await;
    }

    /// The lease that long polling runs under.
    pub fn lease_name(&self) -> String {
        lease_name(&self.state.config.name)
    }
}

#[async_trait]
impl crate::CommandMenu for Telegram {
    fn channel(&self) -> &str {
        &self.state.config.name
    }

    /// [`Telegram::set_commands`].
    async fn declare(
        &self,
        commands: &[flowbot_core::CommandInfo],
    ) -> std::result::Result<usize, crate::Error> {
        self.set_commands(commands).await
    }
}

#[async_trait]
impl crate::ChannelSpec for TelegramConfig {
    /// [`Telegram::connect`] (its webhook route, counters and command menu included), or
    /// with [`Setup::send_only`](crate::Setup::send_only) [`Telegram::sender_only`].
    async fn build(&self, setup: &crate::Setup) -> std::result::Result<crate::Built, crate::Error> {
        if !setup.receives() {
            return Telegram::sender_only(setup.store().clone(), self.clone())
                .map(crate::Built::new);
        }
        let (tg, channel) = Telegram::connect(setup.store().clone(), self.clone()).await?;
        tracing::info!(channel = %self.name, username = %tg.username(), "telegram bot connected");
        let tg = Arc::new(tg);
        Ok(crate::Built::new(channel)
            .routes(tg.router())
            .stats(tg.clone())
            .menu(tg))
    }
}

impl crate::AdapterStats for Telegram {
    fn channel(&self) -> &str {
        &self.state.config.name
    }
    fn counters(&self) -> &AdapterCounters {
        &self.state.stats
    }
}

async fn receive(
    State(state): State<Arc<TgState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let Mode::Webhook { secret_token, .. } = &state.config.mode else {
        return Problem::not_found(format!(
            "telegram channel '{}' uses long polling, not a webhook",
            state.config.name
        ))
        .into_response();
    };
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes());
    if !given.is_some_and(|g| same_secret(g, secret_token.as_bytes())) {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong {SECRET_HEADER} header"),
        )
        .into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return Problem::new(e.status(), e.body_text()).into_response(),
    };
    let raw: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Problem::bad_request(format!("invalid update: {e}")).into_response();
        }
    };
    match accept(&state, raw).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({}))).into_response(),
        Err(Rejected::Malformed(e)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid update: {e}"),
        )
        .into_response(),
        Err(Rejected::Unstored(e)) => Problem::from(e).into_response(),
    }
}

enum Rejected {
    Malformed(String),
    Unstored(Unstored),
}

/// Store the events of one update (its JSON is `raw`) as inbound tasks.
async fn accept(state: &TgState, raw: Value) -> std::result::Result<(), Rejected> {
    let parsed: update::Update = match serde_json::from_value(raw.clone()) {
        Ok(u) => u,
        Err(e) => {
            state.stats.ignored.inc("malformed");
            return Err(Rejected::Malformed(e.to_string()));
        }
    };
    let update_id = parsed.update_id;
    let converted = update::convert(&state.channel, &state.username, parsed, &raw);
    if let Some(query) = converted.callback_query {
        // Answered at once and off the request path: the click is stored either way.
        let api = state.api.clone();
        tokio::spawn(async move {
            if let Err(e) = api
                .call(
                    "answerCallbackQuery",
                    &json!({ "callback_query_id": query }),
                )
                .await
            {
                tracing::debug!(error = %e, "answerCallbackQuery failed");
            }
        });
    }
    if let Some(why) = &converted.ignored {
        tracing::debug!(channel = %state.channel, update_id, reason = %why, "telegram update ignored");
        state.stats.ignored.inc(why);
    }
    for (i, event) in converted.events.iter().enumerate() {
        let dedupe = format!("update:{update_id}:{i}");
        enqueue_inbound(&*state.store, &state.channel, &state.stats, event, &dedupe)
            .await
            .map_err(Rejected::Unstored)?;
    }
    Ok(())
}

/// The long-polling loop: each batch is stored before the next call confirms it.
async fn poll(state: Arc<TgState>, shutdown: CancellationToken) {
    let state = &*state;
    let Mode::Polling { timeout } = state.config.mode else {
        return;
    };
    let mut offset: i64 = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        let request = json!({
            "offset": offset,
            "timeout": timeout.as_secs(),
            "allowed_updates": update::ALLOWED_UPDATES,
        });
        let call = state.api.call_with_timeout(
            "getUpdates",
            &request,
            Some(timeout + Duration::from_secs(10)),
        );
        let got = tokio::select! {
            () = shutdown.cancelled() => return,
            got = call => got,
        };
        let wait = match got {
            Ok(Value::Array(updates)) => {
                let mut stored_all = true;
                for raw in updates {
                    let Some(id) = raw.get("update_id").and_then(Value::as_i64) else {
                        state.stats.ignored.inc("malformed");
                        tracing::warn!(channel = %state.channel, "telegram update without update_id skipped");
                        continue;
                    };
                    match accept(state, raw).await {
                        Ok(()) => offset = id + 1,
                        Err(Rejected::Malformed(e)) => {
                            tracing::warn!(channel = %state.channel, update_id = id, error = %e, "malformed telegram update skipped");
                            offset = id + 1;
                        }
                        Err(Rejected::Unstored(e)) => {
                            // Not confirmed: Telegram sends it again on the next poll.
                            tracing::warn!(channel = %state.channel, update_id = id, error = ?e, "could not store telegram update; will fetch it again");
                            stored_all = false;
                            break;
                        }
                    }
                }
                if stored_all {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                backoff
            }
            Ok(other) => {
                state.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %state.channel, answer = %other, "getUpdates answered something other than a list");
                backoff
            }
            Err(e) => {
                state.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                // 409: another poller, or a webhook, holds this bot.
                tracing::warn!(channel = %state.channel, error = %e, "getUpdates failed; retrying");
                e.retry_after().unwrap_or(backoff)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

fn lease_name(channel: &str) -> String {
    format!("telegram:poll:{channel}")
}

struct Poller(Arc<TgState>);

#[async_trait]
impl ChannelListener for Poller {
    async fn listen(&self, _inbox: Inbox, shutdown: CancellationToken) -> Result<()> {
        // Updates go to the durable queue, not the in-memory inbox. Telegram allows one
        // poller per bot: the process holding the lease polls.
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let state = self.0.clone();
        hold(
            &*self.0.store,
            &lease_name(&self.0.config.name),
            &owner,
            self.0.config.lease,
            shutdown,
            move |stop| poll(state.clone(), stop),
        )
        .await;
        Ok(())
    }
}

struct TgSender(Arc<TgState>);

/// Telegram's limit on `callback_data`, in bytes.
const MAX_CALLBACK_DATA: usize = 64;

impl TgSender {
    /// A message Telegram can never take as it is.
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::unsendable(detail.into()),
        )
    }

    /// Telegram's refusal of `method`, permanent or transient by its code.
    fn failed(&self, method: &str, e: &ApiError) -> Error {
        let status = match e {
            ApiError::Refused { code, .. } => Some(*code),
            ApiError::Transport(_) => None,
        };
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::classified(status, e.retry_after(), format!("{method}: {e}")),
        )
    }

    /// Call `method`, waiting out short 429s as Telegram asks.
    async fn call(&self, method: &str, body: &Value) -> Result<Value> {
        self.call_api(method, body)
            .await
            .map_err(|e| self.failed(method, &e))
    }

    /// [`TgSender::call`] with Telegram's own error.
    async fn call_api(&self, method: &str, body: &Value) -> std::result::Result<Value, ApiError> {
        let mut tries = 0;
        loop {
            self.0.limiter.until_ready().await;
            match self.0.api.call(method, body).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_not_modified() => return Err(e),
                Err(e) => {
                    self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                    match e.retry_after() {
                        Some(wait) if tries < 2 && wait <= Duration::from_secs(10) => {
                            tracing::info!(channel = %self.0.channel, method, ?wait, "telegram rate limit; waiting");
                            tokio::time::sleep(wait).await;
                            tries += 1;
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// `editMessageText` with `body`; an edit that would change nothing (the message shows
    /// that text already) is done.
    async fn edit_text(&self, body: &Value) -> Result<()> {
        match self.call_api("editMessageText", body).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_modified() => Ok(()),
            Err(e) => Err(self.failed("editMessageText", &e)),
        }
    }

    /// The text of one piece of `message`, in its format, into `body`.
    fn put_text(body: &mut serde_json::Map<String, Value>, message: &Outbound, piece: &str) {
        match message.format {
            Format::Markdown => {
                body.insert("text".into(), format::markdown_to_html(piece).into());
                body.insert("parse_mode".into(), "HTML".into());
            }
            Format::Plain => {
                body.insert("text".into(), piece.into());
            }
        }
    }

    /// Send `message`. With `draft` (the chat and id of a message showing a draft of it),
    /// the first piece of text edits that message, and the rest is sent after it.
    async fn deliver(&self, message: &Outbound, draft: Option<(&str, i64)>) -> Result<SentId> {
        let target = message
            .target
            .as_ref()
            .ok_or_else(|| self.err("outbound message has no target"))?;
        let chat = target.conversation.to_string();
        let mut base = serde_json::Map::new();
        base.insert("chat_id".into(), chat_id(&chat));
        if let Some(thread) = target.thread.as_deref().and_then(|t| t.parse::<i64>().ok()) {
            base.insert("message_thread_id".into(), thread.into());
        }
        let keyboard = self.keyboard(message)?;
        let mut reply_to = message
            .reply_to
            .as_ref()
            .and_then(|r| telegram_message_id(&r.0))
            .map(|id| json!({ "message_id": id, "allow_sending_without_reply": true }));
        let mut last = None;
        let pieces = if message.text.trim().is_empty() {
            Vec::new()
        } else {
            format::split(&message.text, format::MAX_MESSAGE)
        };
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            if let (0, Some((draft_chat, draft_id))) = (i, draft) {
                let mut body = serde_json::Map::new();
                body.insert("chat_id".into(), chat_id(draft_chat));
                body.insert("message_id".into(), draft_id.into());
                Self::put_text(&mut body, message, piece);
                if let (1, Some(k)) = (count, &keyboard) {
                    body.insert("reply_markup".into(), k.clone());
                }
                self.edit_text(&Value::Object(body)).await?;
                // The draft replied to the message already.
                reply_to = None;
                last = Some(SentId(format!("{draft_chat}:{draft_id}")));
                continue;
            }
            let mut body = base.clone();
            Self::put_text(&mut body, message, piece);
            if let Some(r) = reply_to.take() {
                body.insert("reply_parameters".into(), r);
            }
            if i + 1 == count
                && let Some(k) = &keyboard
            {
                body.insert("reply_markup".into(), k.clone());
            }
            let result = self.call("sendMessage", &Value::Object(body)).await?;
            last = sent_id(&chat, &result);
        }
        for a in &message.attachments {
            let file = a.url.strip_prefix("telegram-file:").unwrap_or(&a.url);
            let (method, field) = if a.mime.as_deref().is_some_and(|m| m.starts_with("image/")) {
                ("sendPhoto", "photo")
            } else {
                ("sendDocument", "document")
            };
            let mut body = base.clone();
            body.insert(field.into(), file.into());
            if let Some(r) = reply_to.take() {
                body.insert("reply_parameters".into(), r);
            }
            if count == 0
                && let Some(k) = &keyboard
            {
                body.insert("reply_markup".into(), k.clone());
            }
            let result = self.call(method, &Value::Object(body)).await?;
            last = sent_id(&chat, &result);
        }
        last.ok_or_else(|| self.err("nothing to send: the message has no text and no attachments"))
    }

    /// The chat and message of one of our message ids (`<chat>:<message>`).
    fn parse_id<'a>(&self, id: &'a SentId) -> Result<(&'a str, i64)> {
        id.0.rsplit_once(':')
            .and_then(|(c, m)| Some((c, m.parse::<i64>().ok()?)))
            .ok_or_else(|| self.err(format!("'{}' is not a Telegram message id", id.0)))
    }

    fn keyboard(&self, message: &Outbound) -> Result<Option<Value>> {
        if message.buttons.is_empty() {
            return Ok(None);
        }
        let mut rows = Vec::new();
        for chunk in message.buttons.chunks(3) {
            let mut row = Vec::new();
            for b in chunk {
                if b.value.is_empty() || b.value.len() > MAX_CALLBACK_DATA {
                    return Err(self.err(format!(
                        "button '{}': its value must be 1-{MAX_CALLBACK_DATA} bytes for Telegram, got {}",
                        b.label,
                        b.value.len()
                    )));
                }
                row.push(json!({ "text": b.label, "callback_data": b.value }));
            }
            rows.push(Value::Array(row));
        }
        Ok(Some(json!({ "inline_keyboard": rows })))
    }
}

/// A chat id as Telegram takes it: a number, or `@channelusername`.
fn chat_id(conversation: &str) -> Value {
    conversation
        .parse::<i64>()
        .map_or_else(|_| Value::from(conversation), Value::from)
}

/// The sent message's id, `<chat>:<message>`.
fn sent_id(chat: &str, result: &Value) -> Option<SentId> {
    let id = result.get("message_id")?.as_i64()?;
    Some(SentId(format!("{chat}:{id}")))
}

/// The Telegram message id in a FlowBot message id (`<chat>:<message>`).
fn telegram_message_id(id: &str) -> Option<i64> {
    id.rsplit_once(':').map_or(id, |(_, m)| m).parse().ok()
}

#[async_trait]
impl ChannelSender for TgSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        self.deliver(message, None).await
    }

    async fn edit(&self, id: &SentId, message: &Outbound) -> Result<()> {
        let (chat, message_id) = self.parse_id(id)?;
        let text = format::split(&message.text, format::MAX_MESSAGE)
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut body = json!({ "chat_id": chat_id(chat), "message_id": message_id });
        match message.format {
            Format::Markdown => {
                body["text"] = format::markdown_to_html(text).into();
                body["parse_mode"] = "HTML".into();
            }
            Format::Plain => body["text"] = text.into(),
        }
        if let Some(k) = self.keyboard(message)? {
            body["reply_markup"] = k;
        }
        self.edit_text(&body).await
    }

    /// The first piece of text edits the draft's message; a longer text's other pieces and
    /// the attachments are sent after it.
    async fn finish_draft(&self, shown: &SentId, message: &Outbound) -> Result<SentId> {
        let draft = self.parse_id(shown)?;
        self.deliver(message, Some(draft)).await
    }

    /// One message edited as the answer grows: Telegram asks bots to "avoid sending more than
    /// one message per second" in one chat, and lets them send "no more than 20 messages per
    /// minute" to a group (<https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this>).
    /// Private chats have positive ids; groups and channels negative ones or `@names`.
    fn streaming(&self, target: &Target) -> Streaming {
        let private = target
            .conversation
            .as_str()
            .parse::<i64>()
            .is_ok_and(|id| id > 0);
        Streaming::Edit {
            interval: if private {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(3)
            },
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            markdown: true,
            buttons: true,
            edit: true,
            threads: true,
            ephemeral: false,
        }
    }
}
