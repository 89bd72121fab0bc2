//! Discord: the gateway for messages, member joins, reactions and interactions
//! ([`gateway`]), and the HTTP interactions endpoint for bots that run without one. Either or
//! both may be configured.
//!
//! In HTTP interactions mode Discord POSTs slash commands and component clicks to the
//! application's *Interactions Endpoint URL*, `POST /hooks/discord/{channel}/interactions`,
//! signed with Ed25519 (`X-Signature-Ed25519` over
//! `X-Signature-Timestamp` + body, checked against the application's public key; timestamps
//! older than five minutes are refused). Each interaction is stored on the task queue and
//! acknowledged at once (a deferred response), as Discord wants an answer within three
//! seconds; the bot's replies then go through the interaction's webhook: the first reply to a
//! command replaces the "thinking…" response, later ones are follow-ups. Messages the bot
//! starts itself go to `POST /channels/{id}/messages`.
//!
//! The rules' commands are registered as the application's global slash commands at start
//! ([`Discord::register_commands`]).
//!
//! Discord's payloads are decoded with serenity's model, re-exported as [`model`]: gateway
//! dispatches as the serenity type of their event, interactions as
//! [`model::application::Interaction`]. FlowBot's [`Event`] is built from the typed fields,
//! and keeps Discord's JSON in its `raw` ([`Message::raw`], [`Interaction::raw`], and the
//! `raw` of joins and reactions); [`typed`] gives it back as serenity's
//! [`model::event::Event`]:
//!
//! ```
//! use flowbot_channels::discord::{model::event::Event as Discord, typed};
//! use flowbot_core::Event;
//!
//! fn author(event: &Event) -> Option<String> {
//!     match typed(event)? {
//!         Ok(Discord::MessageCreate(m)) => Some(m.message.author.name),
//!         _ => None,
//!     }
//! }
//! ```

mod settings;
pub use settings::DiscordSettings;
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
use ed25519_dalek::{Signature, VerifyingKey};
use flowbot_core::{
    Capabilities, Channel, ChannelName, ChannelSender, ChannelStore, CommandInfo, Error, Event,
    Interaction, Message, MessageId, Outbound, Result, Role, Sender, SentId, Streaming, Target,
    UserId,
};
use serde_json::{Value, json};

use crate::AdapterCounters;
use crate::adapter::{check_name, check_url, enqueue_inbound};
use crate::problem::Problem;

pub mod gateway;

pub use gateway::GatewayConfig;

/// Discord's model as serenity defines it (serenity 0.12, without its HTTP client, gateway
/// or cache): the types [`typed`] returns, for applications that want Discord's own fields.
pub use serenity::model;

/// The serenity value of `event`, an event from a Discord channel, from the Discord JSON it
/// keeps in `raw` ([`Message::raw`], [`Interaction::raw`], and the `raw` of
/// [`Event::MemberJoined`] and [`Event::Reaction`]):
/// - a message ([`Event::Message`] read from the gateway):
///   [`MessageCreate`](model::event::Event::MessageCreate);
/// - an edit ([`Event::MessageEdited`]): [`MessageUpdate`](model::event::Event::MessageUpdate);
/// - a slash command ([`Event::Message`] from an interaction, over the gateway or the
///   endpoint): [`InteractionCreate`](model::event::Event::InteractionCreate) with a
///   [`Command`](model::application::Interaction::Command);
/// - a button click or select menu choice ([`Event::Interaction`], over the gateway or the
///   endpoint): [`InteractionCreate`](model::event::Event::InteractionCreate) with a
///   [`Component`](model::application::Interaction::Component);
/// - a member joining ([`Event::MemberJoined`]):
///   [`GuildMemberAdd`](model::event::Event::GuildMemberAdd);
/// - a reaction ([`Event::Reaction`]): [`ReactionAdd`](model::event::Event::ReactionAdd).
///
/// `None` for other events ([`Event::Custom`]), for events from other platforms (told by
/// their ids, a join by its JSON naming no guild), and for events without Discord JSON (made
/// by the application, or stored before clicks, joins and reactions kept it). An error only for
/// JSON serenity cannot decode, which the channel never stores (it decodes every payload on
/// arrival).
pub fn typed(event: &Event) -> Option<serde_json::Result<model::event::Event>> {
    use model::event::{
        Event as Typed, GuildMemberAddEvent, InteractionCreateEvent, MessageCreateEvent,
        MessageUpdateEvent, ReactionAddEvent,
    };
    use serde::Deserialize;
    Some(match event {
        Event::MessageEdited(m) => {
            MessageUpdateEvent::deserialize(m.raw.as_ref()?).map(Typed::MessageUpdate)
        }
        Event::Message(m) => {
            let raw = m.raw.as_ref()?;
            let id = m.id.as_str();
            if id.starts_with("msg:") {
                MessageCreateEvent::deserialize(raw).map(Typed::MessageCreate)
            } else if id.starts_with("command:") {
                InteractionCreateEvent::deserialize(raw).map(Typed::InteractionCreate)
            } else {
                return None;
            }
        }
        Event::Interaction(i) if i.id.as_str().starts_with("component:") => {
            InteractionCreateEvent::deserialize(i.raw.as_ref()?).map(Typed::InteractionCreate)
        }
        // Discord's GUILD_MEMBER_ADD names the guild (Telegram's and Slack's joins do not).
        Event::MemberJoined { raw: Some(raw), .. } if raw.get("guild_id").is_some() => {
            GuildMemberAddEvent::deserialize(raw).map(Typed::GuildMemberAdd)
        }
        Event::Reaction { message, raw, .. } if message.as_str().starts_with("msg:") => {
            ReactionAddEvent::deserialize(raw.as_ref()?).map(Typed::ReactionAdd)
        }
        _ => return None,
    })
}

/// Discord's API, version 10.
pub const DEFAULT_API_BASE: &str = "https://discord.com/api/v10";

/// How far an interaction's timestamp may be from now.
const REPLAY_WINDOW_SECS: u64 = 300;

/// Discord's limit on a message's content, in characters.
const MAX_CONTENT: usize = 2000;

/// The `EPHEMERAL` message flag.
const EPHEMERAL: u64 = 1 << 6;

/// One Discord application's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct DiscordConfig {
    /// Channel name.
    pub name: String,
    /// The bot token.
    pub bot_token: String,
    /// The application id.
    pub application_id: String,
    /// The application's public key (64 hex digits), for request signatures: with it, the
    /// interactions endpoint is served.
    pub public_key: Option<String>,
    /// The API's base URL.
    pub api_base: String,
    /// With it, the bot connects to the gateway. (With neither this nor `public_key`, the
    /// channel only sends.)
    pub gateway: Option<GatewayConfig>,
}

impl std::fmt::Debug for DiscordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordConfig")
            .field("name", &self.name)
            .field("application_id", &self.application_id)
            .field("api_base", &self.api_base)
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl DiscordConfig {
    /// Check the settings; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), crate::SettingsError> {
        self.check().map_err(crate::SettingsError)
    }

    /// [`Self::validate`], in words.
    fn check(&self) -> std::result::Result<(), String> {
        check_name(&self.name)?;
        if self.bot_token.trim().len() < 20 {
            return Err("bot_token is not a bot token".into());
        }
        if self.application_id.is_empty()
            || !self.application_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("application_id must be the application's numeric id".into());
        }
        if let Some(key) = &self.public_key {
            public_key(key)?;
        }
        if let Some(g) = &self.gateway {
            g.validate()?;
        }
        check_url("api_base", &self.api_base)
    }
}

fn public_key(hex_key: &str) -> std::result::Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("public_key must be the application's public key: 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "public_key is not a valid Ed25519 public key".to_owned())
}

/// A Discord application: its interactions route, its sender, its statistics.
#[derive(Clone)]
pub struct Discord {
    state: Arc<DiscordState>,
}

impl std::fmt::Debug for Discord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discord")
            .field("name", &self.state.config.name)
            .finish_non_exhaustive()
    }
}

struct DiscordState {
    config: DiscordConfig,
    channel: ChannelName,
    store: Arc<dyn ChannelStore>,
    key: Option<VerifyingKey>,
    client: reqwest::Client,
    stats: AdapterCounters,
    /// Interaction tokens whose deferred response was already replaced by a reply.
    /// (Kept for the 15 minutes a token lives, then forgotten.)
    answered: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    /// Per route (method and path): when its rate-limit bucket has room again, from
    /// `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset-After`.
    exhausted: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    /// The bot's own user id, from the gateway's READY (its own messages are not events).
    bot_user: std::sync::Mutex<Option<String>>,
    /// Per server, its system channel (where member joins are answered), from GUILD_CREATE.
    system_channels: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The edits already turned into events, by message and edit time: a later update of an
    /// edited message (an embed resolved, a pin) keeps its `edited_timestamp`.
    edits_seen: std::sync::Mutex<gateway::SeenEdits>,
    /// Per identify bucket, when a shard of this process last identified.
    identified: tokio::sync::Mutex<std::collections::HashMap<u32, tokio::time::Instant>>,
}

impl Discord {
    /// A Discord application with `config` (checked here; no call to Discord until used), and
    /// the channel to register with the bot builder.
    pub fn new(
        store: Arc<dyn ChannelStore>,
        config: DiscordConfig,
    ) -> std::result::Result<(Discord, Channel), crate::Error> {
        let fail = |e: String| crate::Error::settings(config.name.as_str(), e);
        config.validate().map_err(|e| fail(e.0))?;
        let key = config
            .public_key
            .as_deref()
            .map(public_key)
            .transpose()
            .map_err(fail)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let discord = Discord {
            state: Arc::new(DiscordState {
                channel: ChannelName::from(config.name.as_str()),
                config,
                store,
                key,
                client,
                stats: AdapterCounters::default(),
                answered: std::sync::Mutex::new(std::collections::HashMap::new()),
                exhausted: std::sync::Mutex::new(std::collections::HashMap::new()),
                bot_user: std::sync::Mutex::new(None),
                system_channels: std::sync::Mutex::new(std::collections::HashMap::new()),
                edits_seen: std::sync::Mutex::default(),
                identified: tokio::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        };
        let mut channel = Channel::new(
            discord.state.config.name.as_str(),
            DiscordSender(discord.state.clone()),
        );
        if discord.state.config.gateway.is_some() {
            channel = channel.with_listener(gateway::GatewayListener(discord.state.clone()));
        }
        Ok((discord, channel))
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// `POST /hooks/discord/{channel}/interactions`, when the application's public key is
    /// set (otherwise no route).
    pub fn router(&self) -> Router {
        if self.state.key.is_none() {
            return Router::new();
        }
        Router::new()
            .route(
                &format!("/hooks/discord/{}/interactions", self.state.config.name),
                post(interactions),
            )
            .with_state(self.state.clone())
    }

    /// Register `commands` as the application's global slash commands (replacing the ones it
    /// had). Arguments become options (`int` an integer, `float` a number, `bool` a boolean,
    /// anything else a string); names Discord does not accept are left out. Returns how many
    /// were registered.
    pub async fn register_commands(
        &self,
        commands: &[CommandInfo],
    ) -> std::result::Result<usize, crate::Error> {
        let list: Vec<Value> = commands
            .iter()
            .filter(|c| valid_command_name(&c.name))
            .take(100)
            .map(|c| {
                let options: Vec<Value> = c
                    .params
                    .iter()
                    .filter(|p| valid_command_name(&p.name))
                    .take(25)
                    .map(|p| {
                        let kind = match p.kind {
                            "int" => 4,
                            "float" => 10,
                            "bool" => 5,
                            _ => 3,
                        };
                        json!({ "type": kind, "name": p.name, "description": p.name, "required": !p.optional })
                    })
                    .collect();
                let description: String = c
                    .description
                    .as_deref()
                    .filter(|d| !d.trim().is_empty())
                    .unwrap_or(&c.usage)
                    .chars()
                    .take(100)
                    .collect();
                json!({ "name": c.name, "type": 1, "description": description, "options": options })
            })
            .collect();
        let n = list.len();
        let url = format!(
            "{}/applications/{}/commands",
            self.state.api(),
            self.state.config.application_id
        );
        let name = self.state.config.name.as_str();
        DiscordSender(self.state.clone())
            .request(reqwest::Method::PUT, &url, true, &Value::Array(list))
            .await
            .map_err(|e| match e {
                // The sender's error is core's channel error around the classified cause.
                flowbot_core::Error::Channel { source, .. } => {
                    crate::Error::platform(name, "PUT commands", source)
                }
                other => crate::Error::platform(name, "PUT commands", other),
            })?;
        Ok(n)
    }
}

fn valid_command_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_lowercase() || c.is_numeric() || c == '-' || c == '_')
}

#[async_trait]
impl crate::CommandMenu for Discord {
    fn channel(&self) -> &str {
        &self.state.config.name
    }

    /// [`Discord::register_commands`].
    async fn declare(&self, commands: &[CommandInfo]) -> std::result::Result<usize, crate::Error> {
        self.register_commands(commands).await
    }
}

#[async_trait]
impl crate::ChannelSpec for DiscordConfig {
    /// [`Discord::new`] with its interactions route, counters and slash commands, or with
    /// [`Setup::send_only`](crate::Setup::send_only) the sender alone (no gateway).
    async fn build(&self, setup: &crate::Setup) -> std::result::Result<crate::Built, crate::Error> {
        if !setup.receives() {
            let mut config = self.clone();
            config.gateway = None;
            let (_, channel) = Discord::new(setup.store().clone(), config)?;
            return Ok(crate::Built::new(channel));
        }
        let (discord, channel) = Discord::new(setup.store().clone(), self.clone())?;
        let discord = Arc::new(discord);
        Ok(crate::Built::new(channel)
            .routes(discord.router())
            .stats(discord.clone())
            .menu(discord))
    }
}

impl crate::AdapterStats for Discord {
    fn channel(&self) -> &str {
        &self.state.config.name
    }
    fn counters(&self) -> &AdapterCounters {
        &self.state.stats
    }
}

impl DiscordState {
    fn api(&self) -> &str {
        self.config.api_base.trim_end_matches('/')
    }

    /// Whether this is the first reply to the command whose interaction token is `token`
    /// (it replaces the deferred response; later ones are follow-ups).
    fn first_answer(&self, token: &str) -> bool {
        const TOKEN_LIFE: Duration = Duration::from_secs(15 * 60);
        let now = tokio::time::Instant::now();
        let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        answered.retain(|_, at| now.duration_since(*at) < TOKEN_LIFE);
        answered.insert(token.to_owned(), now).is_none()
    }
}

/// Check an interaction's signature and timestamp.
fn verify(
    state: &DiscordState,
    headers: &HeaderMap,
    body: &[u8],
) -> std::result::Result<(), Problem> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let unauthorized = |d: &str| Problem::new(StatusCode::UNAUTHORIZED, d.to_owned());
    let (Some(sig), Some(ts)) = (
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
    ) else {
        return Err(unauthorized(
            "missing X-Signature-Ed25519 or X-Signature-Timestamp header",
        ));
    };
    let sig: [u8; 64] = hex::decode(sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| unauthorized("X-Signature-Ed25519 is not 64 hex-encoded bytes"))?;
    let at: i64 = ts
        .parse()
        .map_err(|_| unauthorized("X-Signature-Timestamp is not a unix time"))?;
    if flowbot_core::clock::now().timestamp().abs_diff(at) > REPLAY_WINDOW_SECS {
        return Err(unauthorized(
            "X-Signature-Timestamp is outside the replay window of 300 seconds",
        ));
    }
    let mut signed = Vec::with_capacity(ts.len() + body.len());
    signed.extend_from_slice(ts.as_bytes());
    signed.extend_from_slice(body);
    let Some(key) = &state.key else {
        return Err(unauthorized(
            "this application has no public key configured",
        ));
    };
    key.verify_strict(&signed, &Signature::from_bytes(&sig))
        .map_err(|_| unauthorized("signature does not match"))
}

async fn interactions(
    State(state): State<Arc<DiscordState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match on_interaction(&state, &headers, body).await {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(p) => p.into_response(),
    }
}

/// The user of an interaction (`member.user` in a server, `user` in a DM), with `Admin` when
/// their permissions include ADMINISTRATOR.
fn sender_of(user: &model::user::User, member: Option<&model::guild::Member>) -> Sender {
    let user = member.map_or(user, |m| &m.user);
    let mut roles = vec![Role::User];
    if member
        .and_then(|m| m.permissions)
        .is_some_and(|p| p.contains(model::Permissions::ADMINISTRATOR))
    {
        roles.push(Role::Admin);
    }
    Sender {
        id: UserId(user.id.to_string()),
        name: Some(
            user.global_name
                .clone()
                .unwrap_or_else(|| user.name.clone()),
        ),
        roles,
    }
}

/// `/name value value…` from a command's options (sub-commands become words).
fn command_line(data: &model::application::CommandData) -> String {
    use model::application::{CommandDataOption, CommandDataOptionValue as V};
    fn walk(options: &[CommandDataOption], out: &mut Vec<String>) {
        for o in options {
            match &o.value {
                // Sub-command or group: its name, then its own options.
                V::SubCommand(inner) | V::SubCommandGroup(inner) => {
                    out.push(o.name.clone());
                    walk(inner, out);
                }
                V::String(s) => out.push(s.clone()),
                V::Integer(n) => out.push(n.to_string()),
                V::Number(n) => out.push(n.to_string()),
                V::Boolean(b) => out.push(b.to_string()),
                V::Autocomplete { value, .. } => out.push(value.clone()),
                V::User(id) => out.push(id.to_string()),
                V::Channel(id) => out.push(id.to_string()),
                V::Role(id) => out.push(id.to_string()),
                V::Mentionable(id) => out.push(id.to_string()),
                V::Attachment(id) => out.push(id.to_string()),
                _ => {}
            }
        }
    }
    let mut words = vec![format!("/{}", data.name)];
    walk(&data.options, &mut words);
    words.join(" ")
}

async fn on_interaction(
    state: &DiscordState,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Value, Problem> {
    let body = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    verify(state, headers, &body)?;
    let i: Value = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("invalid interaction: {e}")))?;
    let unprocessable = |e: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid interaction: {e}"),
        )
    };
    if i["type"] == 1 {
        return Ok(json!({ "type": 1 })); // PING → PONG
    }
    if !i["type"].is_u64() {
        return Err(unprocessable("no numeric 'type'".into()));
    }
    if let Some(answer) = newer_interaction(state, &i) {
        return Ok(answer);
    }
    let typed = <model::application::Interaction as serde::Deserialize>::deserialize(&i)
        .map_err(|e| unprocessable(e.to_string()))?;
    let handled = interaction_event(state, &typed, &i);
    if let Some((event, key)) = &handled.event {
        enqueue_inbound(&*state.store, &state.channel, &state.stats, event, key).await?;
    }
    Ok(handled.answer)
}

/// An interaction, as the event to store (with its deduplication key) and the answer that
/// acknowledges it.
struct Handled {
    event: Option<(Event, String)>,
    answer: Value,
}

/// For an interaction of a type newer than serenity's model (which would not decode it):
/// counted, and the answer that acknowledges it.
fn newer_interaction(state: &DiscordState, raw: &Value) -> Option<Value> {
    let kind = raw["type"].as_u64().filter(|k| !(1..=5).contains(k))?;
    state.stats.ignored.inc(&format!("interaction type {kind}"));
    Some(json!({ "type": 6 }))
}

/// What interaction `i` (from the endpoint or the gateway; `raw` is its JSON) means.
fn interaction_event(
    state: &DiscordState,
    i: &model::application::Interaction,
    raw: &Value,
) -> Handled {
    use model::application::{ComponentInteractionDataKind as Kind, Interaction as I};
    let answer_only = |answer: Value| Handled {
        event: None,
        answer,
    };
    let (event, answer, id) = match i {
        I::Ping(_) => return answer_only(json!({ "type": 1 })), // PING → PONG
        I::Command(c) => {
            let sender = sender_of(&c.user, c.member.as_deref());
            let mut message = Message::text(
                state.channel.clone(),
                c.channel_id.to_string(),
                sender,
                command_line(&c.data),
            );
            message.id = MessageId(format!("command:{}:{}", c.id, c.token));
            message.raw = Some(raw.clone());
            // DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…" until the reply replaces it.
            (Event::Message(message), json!({ "type": 5 }), c.id.get())
        }
        I::Component(c) => {
            // A button's value is its custom_id; a select menu's, the options chosen
            // (comma-separated).
            fn joined<T: std::fmt::Display>(values: &[T]) -> String {
                values
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
            let value = match &c.data.kind {
                Kind::StringSelect { values } => values.join(","),
                Kind::UserSelect { values } => joined(values),
                Kind::RoleSelect { values } => joined(values),
                Kind::ChannelSelect { values } => joined(values),
                Kind::MentionableSelect { values } => joined(values),
                _ => c.data.custom_id.clone(),
            };
            let event = Event::Interaction(Interaction {
                channel: state.channel.clone(),
                conversation: c.channel_id.to_string().into(),
                sender: sender_of(&c.user, c.member.as_ref()),
                value,
                id: MessageId(format!("component:{}:{}", c.id, c.token)),
                raw: Some(raw.clone()),
            });
            // DEFERRED_UPDATE_MESSAGE: the click is acknowledged; replies are follow-ups.
            (event, json!({ "type": 6 }), c.id.get())
        }
        I::Autocomplete(_) => {
            state.stats.ignored.inc("autocomplete");
            return answer_only(json!({ "type": 8, "data": { "choices": [] } }));
        }
        _ => {
            let kind = raw["type"].as_u64().unwrap_or_default();
            state.stats.ignored.inc(&format!("interaction type {kind}"));
            return answer_only(json!({ "type": 6 }));
        }
    };
    Handled {
        event: Some((event, format!("interaction:{id}"))),
        answer,
    }
}

struct DiscordSender(Arc<DiscordState>);

impl DiscordSender {
    /// A message Discord can never take as it is.
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::unsendable(detail.into()),
        )
    }

    /// Discord's refusal (or silence: no `status`), permanent or transient by its status.
    fn failed(&self, status: Option<u16>, wait: Option<Duration>, detail: String) -> Error {
        Error::channel(
            self.0.config.name.clone(),
            crate::retry_after::classified(status, wait, detail),
        )
    }

    /// A request to Discord, waiting out short 429s as Discord asks (`retry_after`).
    async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        bot_auth: bool,
        body: &Value,
    ) -> Result<Value> {
        let route = format!("{method} {}", url.split('?').next().unwrap_or(url));
        let mut asked = None;
        for attempt in 0..3 {
            // Wait while the route's bucket is empty (Discord's headers said so).
            let until = self
                .0
                .exhausted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&route)
                .copied();
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
            let mut req = self.0.client.request(method.clone(), url);
            if !body.is_null() {
                req = req.json(body);
            }
            if bot_auth {
                req = req.header("authorization", format!("Bot {}", self.0.config.bot_token));
            }
            let res = req.send().await.map_err(|e| {
                self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                self.failed(
                    None,
                    None,
                    format!("{method} {}: {}", redact(url), e.without_url()),
                )
            })?;
            let status = res.status();
            let header = |name: &str| {
                res.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok())
            };
            {
                let mut exhausted = self.0.exhausted.lock().unwrap_or_else(|p| p.into_inner());
                match (
                    header("x-ratelimit-remaining"),
                    header("x-ratelimit-reset-after"),
                ) {
                    (Some(r), Some(after)) if r < 1.0 && (0.0..=60.0).contains(&after) => {
                        exhausted.insert(
                            route.clone(),
                            tokio::time::Instant::now() + crate::retry_after::from_secs_f64(after),
                        );
                    }
                    _ => {
                        exhausted.remove(&route);
                    }
                }
            }
            let answer: Value = res.json().await.unwrap_or(Value::Null);
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                // At most an hour (`crate::retry_after`); one second when Discord says none.
                let wait = crate::retry_after::from_json(&answer["retry_after"])
                    .unwrap_or(Duration::from_secs(1));
                asked = Some(wait);
                if attempt < 2 && wait <= Duration::from_secs(10) {
                    tracing::info!(channel = %self.0.channel, ?wait, "Discord rate limit; waiting");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            if !status.is_success() {
                self.0.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                let why = answer["message"].as_str().unwrap_or("no message");
                return Err(self.failed(
                    Some(status.as_u16()),
                    asked,
                    format!("{method} {}: Discord answered {status}: {why}", redact(url)),
                ));
            }
            return Ok(answer);
        }
        Err(self.failed(
            Some(429),
            asked,
            format!("{method} {}: still rate limited", redact(url)),
        ))
    }
}

/// A URL without the interaction token in it (for error messages).
fn redact(url: &str) -> String {
    match url.find("/webhooks/") {
        Some(i) => format!("{}/webhooks/…", &url[..i]),
        None => url.to_owned(),
    }
}

/// The message body: content (Markdown is Discord's own), buttons as action rows of five,
/// and no pings from what the bot echoes.
fn body(message: &Outbound, content: &str) -> Value {
    let rows: Vec<Value> = message
        .buttons
        .chunks(5)
        .take(5)
        .map(|chunk| {
            let buttons: Vec<Value> = chunk
                .iter()
                .map(|b| {
                    let label: String = b.label.chars().take(80).collect();
                    json!({ "type": 2, "style": 1, "label": label, "custom_id": b.value })
                })
                .collect();
            json!({ "type": 1, "components": buttons })
        })
        .collect();
    let mut out = json!({ "content": content, "allowed_mentions": { "parse": [] } });
    if !rows.is_empty() {
        out["components"] = Value::Array(rows);
    }
    out
}

/// Whether Discord can show `a` as an embed's image.
fn is_image(a: &flowbot_core::Attachment) -> bool {
    match &a.mime {
        Some(mime) => mime.starts_with("image/"),
        None => {
            let path = a.url.split(['?', '#']).next().unwrap_or_default();
            let ext = path.rsplit('.').next().unwrap_or_default();
            ["png", "jpg", "jpeg", "gif", "webp"]
                .iter()
                .any(|e| ext.eq_ignore_ascii_case(e))
        }
    }
}

/// Cut `text` into pieces of at most [`MAX_CONTENT`] characters, at line breaks when it can.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if current.chars().count() + line.chars().count() > MAX_CONTENT && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        let mut line = line;
        while line.chars().count() > MAX_CONTENT {
            let cut = line
                .char_indices()
                .nth(MAX_CONTENT)
                .map_or(line.len(), |(i, _)| i);
            out.push(line[..cut].to_owned());
            line = &line[cut..];
        }
        current.push_str(line);
    }
    if !current.is_empty() || out.is_empty() {
        out.push(current);
    }
    out
}

impl DiscordSender {
    /// Send `message`. With `draft` (the channel and id of a message showing a draft of it),
    /// the first part edits that message, and the rest is sent after it.
    async fn deliver(&self, message: &Outbound, draft: Option<(&str, &str)>) -> Result<SentId> {
        let target = message
            .target
            .as_ref()
            .ok_or_else(|| self.err("outbound message has no target"))?;
        for b in &message.buttons {
            if b.value.is_empty() || b.value.len() > 100 {
                return Err(self.err(format!(
                    "button '{}': its value must be 1-100 characters for Discord",
                    b.label
                )));
            }
        }
        // A reply to an interaction goes through its webhook.
        let interaction = message.reply_to.as_ref().and_then(|r| {
            let (kind, rest) = r.as_str().split_once(':')?;
            let (_, token) = rest.split_once(':')?;
            matches!(kind, "command" | "component").then(|| (kind == "command", token.to_owned()))
        });
        let api = self.0.api().to_owned();
        let app = &self.0.config.application_id;
        // Images become embeds (up to Discord's ten); other files are linked, and Discord
        // shows their preview.
        let mut text = message.text.clone();
        let mut embeds = Vec::new();
        for a in &message.attachments {
            if is_image(a) && embeds.len() < 10 {
                let mut embed = json!({ "image": { "url": a.url } });
                if let Some(name) = &a.name {
                    embed["title"] = name.chars().take(256).collect::<String>().into();
                }
                embeds.push(embed);
            } else {
                text.push('\n');
                text.push_str(&a.url);
            }
        }
        // A reply to a message read from the gateway is shown as a reply to it.
        let reference = message
            .reply_to
            .as_ref()
            .and_then(|r| r.as_str().strip_prefix("msg:"));
        let parts = pieces(&text);
        let last = parts.len() - 1;
        let mut sent = None;
        for (n, part) in parts.iter().enumerate() {
            let mut b = if n == last {
                body(message, part)
            } else {
                body(&Outbound::default(), part)
            };
            if n == last && !embeds.is_empty() {
                b["embeds"] = Value::Array(std::mem::take(&mut embeds));
            }
            if let (0, Some((channel, id))) = (n, draft) {
                let url = format!("{api}/channels/{channel}/messages/{id}");
                self.request(reqwest::Method::PATCH, &url, true, &b).await?;
                sent = Some(SentId(format!("{channel}:{id}")));
                continue;
            }
            if let (0, Some(id)) = (n, reference) {
                b["message_reference"] = json!({ "message_id": id, "fail_if_not_exists": false });
            }
            let answer = match &interaction {
                Some((is_command, token)) => {
                    let first = *is_command && self.0.first_answer(token);
                    if first {
                        let url = format!("{api}/webhooks/{app}/{token}/messages/@original");
                        self.request(reqwest::Method::PATCH, &url, false, &b)
                            .await?
                    } else {
                        if message.ephemeral {
                            b["flags"] = EPHEMERAL.into();
                        }
                        let url = format!("{api}/webhooks/{app}/{token}?wait=true");
                        self.request(reqwest::Method::POST, &url, false, &b).await?
                    }
                }
                None => {
                    let channel = target
                        .thread
                        .as_deref()
                        .unwrap_or(target.conversation.as_str());
                    let url = format!("{api}/channels/{channel}/messages");
                    self.request(reqwest::Method::POST, &url, true, &b).await?
                }
            };
            let id = answer["id"].as_str().unwrap_or_default();
            let channel = answer["channel_id"]
                .as_str()
                .unwrap_or(target.conversation.as_str());
            sent = Some(SentId(format!("{channel}:{id}")));
        }
        sent.ok_or_else(|| self.err("nothing was sent"))
    }

    /// The channel and message of one of our message ids (`<channel>:<message>`).
    fn parse_id<'a>(&self, id: &'a SentId) -> Result<(&'a str, &'a str)> {
        id.0.split_once(':')
            .ok_or_else(|| self.err(format!("'{}' is not a Discord message id", id.0)))
    }
}

#[async_trait]
impl ChannelSender for DiscordSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        self.deliver(message, None).await
    }

    async fn edit(&self, id: &SentId, message: &Outbound) -> Result<()> {
        let (channel, message_id) = self.parse_id(id)?;
        let url = format!("{}/channels/{channel}/messages/{message_id}", self.0.api());
        let text = pieces(&message.text).swap_remove(0);
        self.request(reqwest::Method::PATCH, &url, true, &body(message, &text))
            .await
            .map(|_| ())
    }

    /// The first part edits the draft's message; a longer text's other parts are sent after
    /// it, the last with the buttons and image embeds.
    async fn finish_draft(&self, shown: &SentId, message: &Outbound) -> Result<SentId> {
        let draft = self.parse_id(shown)?;
        self.deliver(message, Some(draft)).await
    }

    /// One message edited as the answer grows, once a second: Discord allows 5 message
    /// creations or edits per 5 seconds in a channel (the route's bucket, reported in its
    /// `X-RateLimit-*` headers, which sends also follow;
    /// <https://discord.com/developers/docs/topics/rate-limits>).
    fn streaming(&self, _target: &Target) -> Streaming {
        Streaming::Edit {
            interval: Duration::from_secs(1),
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

    /// A user as Discord sends one.
    fn user(id: &str, name: &str) -> Value {
        json!({"id": id, "username": name, "discriminator": "0", "global_name": null,
            "avatar": null, "public_flags": 0})
    }

    /// A message as Discord sends it in MESSAGE_CREATE and (edited) MESSAGE_UPDATE.
    fn message_json(content: &str, edited: Option<&str>) -> Value {
        json!({"id": "1300000000000000100", "channel_id": "1200000000000000001",
            "guild_id": "1100000000000000001", "type": 0, "content": content,
            "author": user("80351110224678912", "nelly"),
            "member": {"roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0},
            "timestamp": "2026-11-22T10:00:00.000000+00:00", "edited_timestamp": edited,
            "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": false, "flags": 0, "components": []})
    }

    fn event(id: &str, raw: Option<Value>, edit: bool) -> Event {
        let sender = Sender {
            id: UserId("80351110224678912".into()),
            name: Some("nelly".into()),
            roles: vec![Role::User],
        };
        let mut m = Message::text("dc", "1200000000000000001", sender, "hello");
        m.id = MessageId(id.into());
        m.raw = raw;
        if edit {
            Event::MessageEdited(m)
        } else {
            Event::Message(m)
        }
    }

    #[test]
    fn typed_gives_discord_json_back_as_serenity_events() {
        use model::event::Event as E;
        let created = event(
            "msg:1300000000000000100",
            Some(message_json("hello", None)),
            false,
        );
        match typed(&created) {
            Some(Ok(E::MessageCreate(m))) => {
                assert_eq!(m.message.content, "hello");
                assert_eq!(m.message.author.name, "nelly");
                assert_eq!(m.message.author.id.get(), 80_351_110_224_678_912);
            }
            other => panic!("{other:?}"),
        }
        let edited = event(
            "msg:1300000000000000100",
            Some(message_json(
                "hello again",
                Some("2026-11-22T10:00:05.000000+00:00"),
            )),
            true,
        );
        match typed(&edited) {
            Some(Ok(E::MessageUpdate(m))) => {
                assert_eq!(m.content.as_deref(), Some("hello again"));
                assert!(m.edited_timestamp.is_some());
            }
            other => panic!("{other:?}"),
        }
        let command = json!({"id": "1400000000000000001", "application_id": "1000000000000000001",
            "type": 2, "token": "itoken", "version": 1, "guild_id": "1100000000000000001",
            "channel_id": "1200000000000000001",
            "channel": {"id": "1200000000000000001", "type": 0, "name": "general"},
            "member": {"user": user("80351110224678912", "nelly"), "roles": [], "deaf": false,
                "mute": false, "flags": 0, "joined_at": "2026-01-01T00:00:00.000000+00:00",
                "permissions": "8"},
            "data": {"id": "1500000000000000001", "name": "remind", "type": 1,
                "options": [{"name": "delay", "type": 3, "value": "10m"}]},
            "app_permissions": "0", "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": "1100000000000000001"},
            "context": 0, "attachment_size_limit": 10485760});
        let decoded =
            <model::application::Interaction as serde::Deserialize>::deserialize(&command)
                .expect("a complete interaction");
        let model::application::Interaction::Command(c) = &decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(command_line(&c.data), "/remind 10m");
        assert_eq!(
            sender_of(&c.user, c.member.as_deref()).roles,
            [Role::User, Role::Admin]
        );
        match typed(&event(
            "command:1400000000000000001:itoken",
            Some(command),
            false,
        )) {
            Some(Ok(E::InteractionCreate(i))) => {
                assert!(
                    matches!(i.interaction, model::application::Interaction::Command(c) if c.data.name == "remind")
                );
            }
            other => panic!("{other:?}"),
        }
        // A button click: INTERACTION_CREATE with the component and its custom_id.
        let sender = Sender::user("80351110224678912");
        let member = json!({"user": user("80351110224678912", "nelly"), "roles": [],
            "deaf": false, "mute": false, "flags": 0,
            "joined_at": "2026-01-01T00:00:00.000000+00:00", "permissions": "0"});
        let mut clicked = message_json("pick one", None);
        clicked["author"] = user("1000000000000000001", "flowbot");
        let click = json!({"id": "1400000000000000002", "application_id": "1000000000000000001",
            "type": 3, "token": "ctoken", "version": 1, "guild_id": "1100000000000000001",
            "channel_id": "1200000000000000001",
            "channel": {"id": "1200000000000000001", "type": 0, "name": "general"},
            "member": member, "message": clicked,
            "data": {"custom_id": "yes", "component_type": 2},
            "app_permissions": "0", "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": "1100000000000000001"},
            "context": 0, "attachment_size_limit": 10485760});
        let clicked = Event::Interaction(Interaction {
            channel: "dc".into(),
            conversation: "1200000000000000001".into(),
            sender: sender.clone(),
            value: "yes".into(),
            id: MessageId("component:1400000000000000002:ctoken".into()),
            raw: Some(click),
        });
        match typed(&clicked) {
            Some(Ok(E::InteractionCreate(i))) => match i.interaction {
                model::application::Interaction::Component(c) => {
                    assert_eq!(c.data.custom_id, "yes");
                    assert_eq!(c.user.id.get(), 80_351_110_224_678_912);
                }
                other => panic!("not a component: {other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // A member joining: GUILD_MEMBER_ADD, the member with its guild.
        let mut joined = member.clone();
        joined["guild_id"] = "1100000000000000001".into();
        let join = |raw: Option<Value>| Event::MemberJoined {
            channel: "dc".into(),
            conversation: "1100000000000000001".into(),
            user: sender.clone(),
            raw,
        };
        match typed(&join(Some(joined))) {
            Some(Ok(E::GuildMemberAdd(m))) => {
                assert_eq!(m.member.user.id.get(), 80_351_110_224_678_912);
                assert_eq!(m.member.guild_id.get(), 1_100_000_000_000_000_001);
            }
            other => panic!("{other:?}"),
        }
        // A reaction: MESSAGE_REACTION_ADD with its emoji.
        let reacted = json!({"user_id": "80351110224678912",
            "channel_id": "1200000000000000001", "message_id": "1300000000000000100",
            "guild_id": "1100000000000000001", "emoji": {"id": null, "name": "👍"},
            "member": member, "burst": false, "burst_colors": [], "type": 0});
        let reaction = |message: &str, raw: Option<Value>| Event::Reaction {
            channel: "dc".into(),
            conversation: "1200000000000000001".into(),
            message: MessageId(message.into()),
            user: sender.clone(),
            emoji: "👍".into(),
            raw,
        };
        match typed(&reaction("msg:1300000000000000100", Some(reacted.clone()))) {
            Some(Ok(E::ReactionAdd(r))) => {
                assert_eq!(
                    r.reaction.emoji,
                    model::channel::ReactionType::Unicode("👍".into())
                );
                assert_eq!(r.reaction.message_id.get(), 1_300_000_000_000_000_100);
            }
            other => panic!("{other:?}"),
        }

        // No Discord JSON (made by an application, or stored before events kept it), or
        // another platform's: nothing typed; JSON serenity cannot decode: an error, not a
        // panic.
        assert!(typed(&event("msg:1", None, false)).is_none());
        assert!(typed(&join(None)).is_none());
        assert!(typed(&reaction("msg:1300000000000000100", None)).is_none());
        assert!(typed(&join(Some(json!({"update_id": 1})))).is_none());
        assert!(typed(&reaction("-100123:5", Some(reacted))).is_none());
        let Event::Interaction(mut other) = clicked else {
            unreachable!()
        };
        other.id = MessageId("callback:1".into());
        assert!(typed(&Event::Interaction(other)).is_none());
        assert!(matches!(
            typed(&event("msg:1", Some(json!({"id": "1"})), false)),
            Some(Err(_))
        ));
        assert!(matches!(
            typed(&join(Some(json!({"guild_id": "1"})))),
            Some(Err(_))
        ));
    }

    #[test]
    fn command_lines_pieces_and_names() {
        let data = |v: Value| {
            <model::application::CommandData as serde::Deserialize>::deserialize(&v)
                .expect("command data")
        };
        let remind = data(
            json!({"id": "1100", "name": "remind", "type": 1, "options": [
            {"name": "delay", "type": 3, "value": "10m"}, {"name": "text", "type": 3, "value": "tea time"}]}),
        );
        assert_eq!(command_line(&remind), "/remind 10m tea time");
        let sub = data(
            json!({"id": "1101", "name": "admin", "type": 1, "options": [{"name": "ban", "type": 1,
            "options": [{"name": "n", "type": 4, "value": 3}, {"name": "who", "type": 6, "value": "80351110224678912"},
                {"name": "hard", "type": 5, "value": true}, {"name": "x", "type": 10, "value": 2.5}]}]}),
        );
        assert_eq!(
            command_line(&sub),
            "/admin ban 3 80351110224678912 true 2.5"
        );
        let long = "x".repeat(4500);
        let p = pieces(&long);
        assert_eq!(
            p.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [2000, 2000, 500]
        );
        assert!(
            valid_command_name("remind")
                && !valid_command_name("Remind")
                && !valid_command_name("")
        );
        assert_eq!(
            redact("https://discord.com/api/v10/webhooks/1/secret-token"),
            "https://discord.com/api/v10/webhooks/…"
        );
    }
}
