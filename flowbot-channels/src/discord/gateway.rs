//! Discord's gateway (API v10, JSON encoding, no compression): one WebSocket per shard, held
//! by one process at a time under the lease `discord:gateway:<channel>:<shard>`.
//!
//! The session follows Discord's documented lifecycle. The URL comes from `GET /gateway/bot`
//! (with the shards' identify concurrency). On `Hello` the shard identifies (token, intents,
//! `[shard, total]`) or, with a session to continue, resumes it (session id and the last
//! sequence number handled) at the session's `resume_gateway_url`. It heartbeats every
//! `heartbeat_interval` (the first after a random fraction of it) and answers a heartbeat
//! request at once; a heartbeat left without an ACK means a zombie connection, which is
//! closed and resumed. `Reconnect` (op 7), a dropped connection and most close codes resume;
//! `Invalid Session` (op 9) resumes or identifies anew as it says; close codes for bad
//! settings (4004 authentication, 4010/4011 sharding, 4012 version, 4013/4014 intents) stop
//! the shard with an error naming the fix. Failed connections are retried after a backoff of
//! 1 s doubling to 60 s.
//!
//! Each dispatch is decoded with serenity's model ([`super::model`]) into the type of its
//! event (`MESSAGE_CREATE` as a [`Message`](super::model::channel::Message), `INTERACTION_CREATE`
//! as an [`Interaction`](super::model::application::Interaction), …); one serenity cannot
//! decode is counted as `malformed <TYPE>` and the session carries on.
//!
//! Events are handled in the order they arrive, each stored on the task queue before the
//! next is read. The sequence number a resume asks from is the last one *stored*, so events
//! that could not be stored (the database is down) are sent again by Discord after the resume.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flowbot_core::lease::{LeaseTiming, hold};
use flowbot_core::{
    Attachment, ChannelListener, Event, Inbox, Message, MessageId, Result, Role, Sender, UserId,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::DiscordState;
use super::model;
use crate::adapter::{Unstored, enqueue_inbound};

/// The gateway intents by name, as Discord's documentation spells them (lower case).
const INTENTS: &[(&str, u64)] = &[
    ("guilds", 1 << 0),
    ("guild_members", 1 << 1),
    ("guild_moderation", 1 << 2),
    ("guild_expressions", 1 << 3),
    ("guild_integrations", 1 << 4),
    ("guild_webhooks", 1 << 5),
    ("guild_invites", 1 << 6),
    ("guild_voice_states", 1 << 7),
    ("guild_presences", 1 << 8),
    ("guild_messages", 1 << 9),
    ("guild_message_reactions", 1 << 10),
    ("guild_message_typing", 1 << 11),
    ("direct_messages", 1 << 12),
    ("direct_message_reactions", 1 << 13),
    ("direct_message_typing", 1 << 14),
    ("message_content", 1 << 15),
    ("guild_scheduled_events", 1 << 16),
    ("auto_moderation_configuration", 1 << 20),
    ("auto_moderation_execution", 1 << 21),
    ("guild_message_polls", 1 << 24),
    ("direct_message_polls", 1 << 25),
];

/// What a bot needs for messages (with their content) in servers and DMs, member joins and
/// reactions. `guild_members` and `message_content` are privileged: they must be switched on
/// in the developer portal.
pub const DEFAULT_INTENTS: &[&str] = &[
    "guilds",
    "guild_members",
    "guild_messages",
    "guild_message_reactions",
    "direct_messages",
    "direct_message_reactions",
    "message_content",
];

/// The intents bitfield for `names`; the error names an unknown one.
pub fn intents(names: &[impl AsRef<str>]) -> std::result::Result<u64, crate::SettingsError> {
    intent_bits(names).map_err(crate::SettingsError)
}

fn intent_bits(names: &[impl AsRef<str>]) -> std::result::Result<u64, String> {
    names.iter().try_fold(0, |bits, name| {
        let name = name.as_ref();
        INTENTS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, bit)| bits | bit)
            .ok_or_else(|| {
                format!(
                    "unknown gateway intent '{name}' (known: {})",
                    INTENTS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    })
}

/// How a Discord application connects to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// How many shards the bot runs in all (Discord requires more than one from 2,500
    /// servers). Each is connected by one of the processes sharing the database.
    pub shards: u32,
    /// The intents bitfield (see [`intents`]).
    pub intents: u64,
    /// The shards' leases.
    pub lease: LeaseTiming,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            shards: 1,
            intents: intents(DEFAULT_INTENTS).unwrap_or_default(),
            lease: LeaseTiming::default(),
        }
    }
}

impl GatewayConfig {
    pub(super) fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=1024).contains(&self.shards) {
            return Err("gateway shards must be 1 to 1024".into());
        }
        crate::adapter::check_lease("gateway", &self.lease)?;
        Ok(())
    }
}

/// The lease under which shard `shard` of `channel` is connected.
pub fn lease_name(channel: &str, shard: u32) -> String {
    format!("discord:gateway:{channel}:{shard}")
}

/// Connects every shard this process can hold.
pub(super) struct GatewayListener(pub(super) Arc<DiscordState>);

#[async_trait::async_trait]
impl ChannelListener for GatewayListener {
    async fn listen(&self, _inbox: Inbox, shutdown: CancellationToken) -> Result<()> {
        // Events go to the durable queue, not the in-memory inbox.
        let Some(config) = self.0.config.gateway.clone() else {
            return Ok(());
        };
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let mut shards = tokio::task::JoinSet::new();
        for shard in 0..config.shards {
            let (state, owner, shutdown) = (self.0.clone(), owner.clone(), shutdown.clone());
            let lease = config.lease;
            shards.spawn(async move {
                let name = lease_name(&state.config.name, shard);
                let store = state.store.clone();
                hold(&*store, &name, &owner, lease, shutdown, move |stop| {
                    run_shard(state.clone(), [shard, config.shards], stop)
                })
                .await;
            });
        }
        while shards.join_next().await.is_some() {}
        Ok(())
    }
}

/// A session that can be resumed.
#[derive(Debug, Clone)]
struct Resumable {
    id: String,
    url: String,
    /// The last sequence number stored.
    seq: Option<u64>,
}

/// How a connection ended.
enum Next {
    Shutdown,
    /// Connect again and resume the session.
    Resume,
    /// Connect again and identify: the session is gone.
    Identify,
    /// Settings Discord refused: stop until the lease is lost or the process ends.
    Fatal(String),
    /// A failure: retry after the backoff.
    Failed(String),
}

/// Keep shard `shard` (`[id, total]`) connected until `stop`.
pub(super) async fn run_shard(state: Arc<DiscordState>, shard: [u32; 2], stop: CancellationToken) {
    let mut session: Option<Resumable> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut live = false;
        let next = connect(&state, shard, &mut session, &mut live, &stop).await;
        if live {
            backoff = Duration::from_secs(1);
        }
        let mut grow = || {
            let wait = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(60));
            wait
        };
        let wait = match next {
            Next::Shutdown => return,
            // At once after a live session; a connection that never got going backs off.
            Next::Resume if live => Duration::ZERO,
            Next::Resume => grow(),
            Next::Identify => {
                session = None;
                // Discord asks for a random 1-5 s before identifying again.
                Duration::from_millis(fastrand::u64(1000..5000))
            }
            Next::Fatal(why) => {
                state.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(channel = %state.channel, shard = shard[0], "Discord gateway refused the bot: {why}; the shard stays down until the settings are fixed and the server restarted");
                stop.cancelled().await;
                return;
            }
            Next::Failed(why) => {
                state.stats.api_errors.fetch_add(1, Ordering::Relaxed);
                let wait = grow();
                tracing::warn!(channel = %state.channel, shard = shard[0], error = %why, ?wait, "Discord gateway connection failed; reconnecting");
                wait
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// `GET /gateway/bot`: the gateway's URL, and when this shard may identify.
async fn gateway_bot(state: &Arc<DiscordState>) -> std::result::Result<(String, u32), String> {
    let url = format!("{}/gateway/bot", state.api());
    let answer = super::DiscordSender(Arc::clone(state))
        .request(reqwest::Method::GET, &url, true, &Value::Null)
        .await
        .map_err(|e| e.to_string())?;
    let gateway = answer["url"]
        .as_str()
        .filter(|u| u.starts_with("wss://") || u.starts_with("ws://"))
        .ok_or("GET /gateway/bot gave no WebSocket URL")?
        .to_owned();
    let limit = &answer["session_start_limit"];
    if limit["remaining"].as_u64() == Some(0) {
        // Out of identifies for the day: wait for the reset (Discord's number, at most a day).
        let ms = limit["reset_after"]
            .as_u64()
            .unwrap_or(60_000)
            .min(86_400_000);
        return Err(format!(
            "no session starts left today; the next in {} s",
            ms / 1000
        ));
    }
    let concurrency = limit["max_concurrency"].as_u64().unwrap_or(1).max(1);
    Ok((gateway, u32::try_from(concurrency).unwrap_or(1)))
}

/// Wait for this shard's turn to identify: shards in one bucket (`id % max_concurrency`)
/// identify at most once per five seconds.
async fn identify_turn(state: &DiscordState, shard: u32, concurrency: u32) {
    const PERIOD: Duration = Duration::from_secs(5);
    let bucket = shard % concurrency.max(1);
    let mut last = state.identified.lock().await;
    if let Some(at) = last.get(&bucket) {
        tokio::time::sleep_until(*at + PERIOD).await;
    }
    last.insert(bucket, tokio::time::Instant::now());
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: hello, identify or resume, then heartbeats and events until it ends.
async fn connect(
    state: &Arc<DiscordState>,
    shard: [u32; 2],
    session: &mut Option<Resumable>,
    live: &mut bool,
    stop: &CancellationToken,
) -> Next {
    let (base, concurrency) = match session {
        Some(s) => (s.url.clone(), 1),
        None => match gateway_bot(state).await {
            Ok(found) => found,
            Err(e) => return Next::Failed(e),
        },
    };
    let url = format!("{}/?v=10&encoding=json", base.trim_end_matches('/'));
    let connecting = tokio_tungstenite::connect_async(url.as_str());
    let mut ws = tokio::select! {
        () = stop.cancelled() => return Next::Shutdown,
        c = tokio::time::timeout(Duration::from_secs(30), connecting) => match c {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Next::Failed(format!("connecting to {base}: {e}")),
            Err(_) => return Next::Failed(format!("connecting to {base}: timed out")),
        },
    };
    // Hello first.
    let hello = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Ws::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).ok(),
        _ => None,
    };
    let Some(interval) = hello
        .filter(|h| h["op"] == 10)
        .and_then(|h| h["d"]["heartbeat_interval"].as_u64())
        .filter(|ms| *ms > 0)
    else {
        return Next::Failed("the gateway did not say Hello".into());
    };
    let interval = Duration::from_millis(interval);
    let token = state.config.bot_token.clone();
    let opening = match session {
        Some(s) => json!({"op": 6, "d": {"token": token, "session_id": s.id, "seq": s.seq}}),
        None => {
            identify_turn(state, shard[0], concurrency).await;
            let intents = state.config.gateway.as_ref().map_or(0, |g| g.intents);
            json!({"op": 2, "d": {
                "token": token,
                "intents": intents,
                "shard": shard,
                "properties": {"os": std::env::consts::OS, "browser": "flowbot", "device": "flowbot"},
            }})
        }
    };
    if let Err(e) = ws.send(Ws::text(opening.to_string())).await {
        return Next::Failed(format!("identifying: {e}"));
    }
    let mut conn = Connection {
        state,
        shard: shard[0],
        received: session.as_ref().and_then(|s| s.seq),
        acked: true,
    };
    let jitter = interval.mul_f64(fastrand::f64());
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + jitter, interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => {
                // 1000: Discord ends the session (the next holder identifies afresh).
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "shutting down".into() })).await;
                return Next::Shutdown;
            }
            _ = beat.tick() => {
                if !conn.acked {
                    return end(&mut ws, Next::Failed("no heartbeat ACK: zombie connection".into())).await;
                }
                if let Err(e) = conn.heartbeat(&mut ws).await {
                    return Next::Failed(e);
                }
                continue;
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            None => return Next::Failed("the gateway closed the connection".into()),
            Some(Err(e)) => return Next::Failed(format!("gateway connection: {e}")),
            Some(Ok(Ws::Text(t))) => t,
            Some(Ok(Ws::Close(frame))) => return closed(frame.as_ref()),
            Some(Ok(Ws::Binary(_))) => {
                state.stats.ignored.inc("gateway binary frame");
                continue;
            }
            Some(Ok(_)) => continue, // pings are answered by the library
        };
        let payload: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(channel = %state.channel, error = %e, "Discord gateway frame is not JSON; ignored");
                state.stats.ignored.inc("gateway frame not JSON");
                continue;
            }
        };
        match payload["op"].as_u64() {
            Some(0) => {
                let seq = payload["s"].as_u64();
                if seq.is_some() {
                    conn.received = seq;
                }
                let kind = payload["t"].as_str().unwrap_or_default();
                let data = &payload["d"];
                match kind {
                    "READY" => {
                        let ready = match decode::<model::event::ReadyEvent>(data) {
                            Ok(r) => r.ready,
                            Err(e) => {
                                return end(&mut ws, Next::Failed(format!("malformed READY: {e}")))
                                    .await;
                            }
                        };
                        *session = Some(Resumable {
                            id: ready.session_id,
                            url: ready.resume_gateway_url,
                            seq,
                        });
                        *state.bot_user.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(ready.user.id.to_string());
                        *live = true;
                        tracing::info!(channel = %state.channel, shard = shard[0], servers = ready.guilds.len(), "Discord gateway session ready");
                    }
                    "RESUMED" => {
                        *live = true;
                        tracing::info!(channel = %state.channel, shard = shard[0], "Discord gateway session resumed");
                    }
                    _ => {
                        if let Err(Unstored::Store(e)) = dispatch(state, kind, data).await {
                            // Not stored: resume from the last stored event, so Discord sends
                            // this one again.
                            return end(
                                &mut ws,
                                Next::Failed(format!("storing a {kind} event: {e}")),
                            )
                            .await;
                        }
                    }
                }
                if let (Some(s), Some(seq)) = (session.as_mut(), seq) {
                    s.seq = Some(seq);
                }
            }
            Some(1) => {
                if let Err(e) = conn.heartbeat(&mut ws).await {
                    return Next::Failed(e);
                }
            }
            Some(7) => {
                tracing::info!(channel = %state.channel, shard = shard[0], "Discord asked the gateway to reconnect");
                return end(&mut ws, Next::Resume).await;
            }
            Some(9) => {
                let resumable = payload["d"].as_bool() == Some(true) && session.is_some();
                tracing::info!(channel = %state.channel, shard = shard[0], resumable, "Discord invalidated the gateway session");
                return end(
                    &mut ws,
                    if resumable {
                        Next::Resume
                    } else {
                        Next::Identify
                    },
                )
                .await;
            }
            Some(11) => conn.acked = true,
            Some(10) => {}
            other => {
                tracing::warn!(channel = %state.channel, op = ?other, "unknown gateway opcode; ignored");
                state.stats.ignored.inc("gateway unknown opcode");
            }
        }
    }
}

struct Connection<'a> {
    state: &'a DiscordState,
    shard: u32,
    /// The last sequence number received (heartbeats carry it).
    received: Option<u64>,
    acked: bool,
}

impl Connection<'_> {
    async fn heartbeat(&mut self, ws: &mut Socket) -> std::result::Result<(), String> {
        self.acked = false;
        tracing::trace!(channel = %self.state.channel, shard = self.shard, "gateway heartbeat");
        ws.send(Ws::text(json!({"op": 1, "d": self.received}).to_string()))
            .await
            .map_err(|e| format!("heartbeat: {e}"))
    }
}

/// Close with a code that keeps the session resumable, then go on with `next`.
async fn end(ws: &mut Socket, next: Next) -> Next {
    let frame = CloseFrame {
        code: CloseCode::Library(4000),
        reason: "reconnecting".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    next
}

/// What a close frame from Discord means.
fn closed(frame: Option<&CloseFrame>) -> Next {
    let code = frame.map_or(1005, |f| u16::from(f.code));
    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
    let fatal = |fix: &str| Next::Fatal(format!("close code {code} ({reason}): {fix}"));
    match code {
        4004 => fatal("the bot token is wrong"),
        4010 | 4011 => fatal("set gateway_shards to the shard count Discord requires"),
        4012 => fatal("the gateway version is not supported"),
        4013 => fatal("an intent in gateway_intents is not valid"),
        4014 => fatal(
            "a privileged intent is not enabled: switch on Server Members and Message Content \
             Intent under Bot in the developer portal, or leave them out of gateway_intents",
        ),
        4007 | 4009 => Next::Identify,
        _ => Next::Resume,
    }
}

/// The most edits [`SeenEdits`] remembers; the oldest are forgotten first.
const EDITS_REMEMBERED: usize = 4096;

/// Edits already turned into events (`message id`, `edited_timestamp`), the newest
/// [`EDITS_REMEMBERED`] of them.
#[derive(Debug, Default)]
pub(crate) struct SeenEdits {
    set: std::collections::HashSet<(String, String)>,
    order: std::collections::VecDeque<(String, String)>,
}

impl SeenEdits {
    /// Whether the edit was seen.
    fn seen(&self, edit: &(String, String)) -> bool {
        self.set.contains(edit)
    }

    /// Remember the edit.
    fn remember(&mut self, edit: (String, String)) {
        if !self.set.insert(edit.clone()) {
            return;
        }
        self.order.push_back(edit);
        if self.order.len() > EDITS_REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }
}

/// `d` as serenity's type for its event.
fn decode<T: serde::de::DeserializeOwned>(d: &Value) -> serde_json::Result<T> {
    T::deserialize(d)
}

/// Turn a dispatch into an event and store it. Malformed and unhandled ones are counted.
async fn dispatch(
    state: &Arc<DiscordState>,
    kind: &str,
    d: &Value,
) -> std::result::Result<(), Unstored> {
    let malformed = |e: &serde_json::Error| {
        tracing::warn!(channel = %state.channel, event = kind, error = %e, "malformed {kind} dispatch; ignored");
        state.stats.ignored.inc(&format!("malformed {kind}"));
        Ok(())
    };
    let is_me = |id: model::id::UserId| {
        state
            .bot_user
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(id.to_string().as_str())
    };
    // An edit turned into an event, remembered once it is stored.
    let mut edit = None;
    let (event, key) = match kind {
        "MESSAGE_CREATE" => {
            let m = match decode::<model::channel::Message>(d) {
                Ok(m) => m,
                Err(e) => return malformed(&e),
            };
            if m.author.bot || m.webhook_id.is_some() || is_me(m.author.id) {
                state.stats.ignored.inc("bot message");
                return Ok(());
            }
            let posted = Posted {
                id: m.id,
                channel: m.channel_id,
                author: &m.author,
                content: &m.content,
                attachments: &m.attachments,
                mentions: &m.mentions,
            };
            let Some(message) = posted.message(state, d) else {
                return Ok(());
            };
            (Event::Message(message), format!("message:{}", m.id))
        }
        "MESSAGE_UPDATE" => {
            let m = match decode::<model::event::MessageUpdateEvent>(d) {
                Ok(m) => m,
                Err(e) => return malformed(&e),
            };
            let Some(at) = m.edited_timestamp else {
                // An embed or a pin changed, not the text.
                state.stats.ignored.inc("message update without an edit");
                return Ok(());
            };
            let Some(author) = &m.author else {
                return malformed(&serde::de::Error::missing_field("author"));
            };
            if author.bot || m.webhook_id.flatten().is_some() || is_me(author.id) {
                state.stats.ignored.inc("bot message");
                return Ok(());
            }
            let this = (m.id.to_string(), at.to_string());
            let seen = state
                .edits_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .seen(&this);
            if seen {
                // The same edit again: another field of the message changed.
                state.stats.ignored.inc("message update without an edit");
                return Ok(());
            }
            let posted = Posted {
                id: m.id,
                channel: m.channel_id,
                author,
                content: m.content.as_deref().unwrap_or_default(),
                attachments: m.attachments.as_deref().unwrap_or_default(),
                mentions: m.mentions.as_deref().unwrap_or_default(),
            };
            let Some(message) = posted.message(state, d) else {
                return Ok(());
            };
            let key = format!("edit:{}:{}", this.0, this.1);
            edit = Some(this);
            (Event::MessageEdited(message), key)
        }
        "INTERACTION_CREATE" => {
            if super::newer_interaction(state, d).is_some() {
                return Ok(());
            }
            let i = match decode::<model::application::Interaction>(d) {
                Ok(i) => i,
                Err(e) => return malformed(&e),
            };
            let handled = super::interaction_event(state, &i, d);
            let Some((event, key)) = handled.event else {
                return Ok(());
            };
            enqueue_inbound(&*state.store, &state.channel, &state.stats, &event, &key).await?;
            // Acknowledge within Discord's three seconds, as the HTTP endpoint does.
            let (id, token) = match &i {
                model::application::Interaction::Command(c) => (c.id, &c.token),
                model::application::Interaction::Component(c) => (c.id, &c.token),
                _ => return Ok(()),
            };
            let url = format!("{}/interactions/{id}/{token}/callback", state.api());
            if let Err(e) = super::DiscordSender(Arc::clone(state))
                .request(reqwest::Method::POST, &url, false, &handled.answer)
                .await
            {
                tracing::warn!(channel = %state.channel, error = %e, "could not acknowledge an interaction");
            }
            return Ok(());
        }
        "GUILD_CREATE" => {
            let guild = match decode::<model::event::GuildCreateEvent>(d) {
                Ok(g) => g.guild,
                Err(e) => return malformed(&e),
            };
            if let Some(system) = guild.system_channel_id {
                state
                    .system_channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(guild.id.to_string(), system.to_string());
            }
            return Ok(());
        }
        "GUILD_MEMBER_ADD" => {
            let member = match decode::<model::event::GuildMemberAddEvent>(d) {
                Ok(m) => m.member,
                Err(e) => return malformed(&e),
            };
            let guild = member.guild_id.to_string();
            // Welcomes go where Discord posts its own join messages, when known.
            let conversation = state
                .system_channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&guild)
                .cloned()
                .unwrap_or_else(|| guild.clone());
            let joined = member.joined_at.map(|t| t.to_string()).unwrap_or_default();
            let key = format!("join:{guild}:{}:{joined}", member.user.id);
            let event = Event::MemberJoined {
                channel: state.channel.clone(),
                conversation: conversation.as_str().into(),
                user: sender(&member.user),
                raw: Some(d.clone()),
            };
            (event, key)
        }
        "MESSAGE_REACTION_ADD" => {
            let r = match decode::<model::event::ReactionAddEvent>(d) {
                Ok(r) => r.reaction,
                Err(e) => return malformed(&e),
            };
            let Some(who) = r.user_id else {
                return malformed(&serde::de::Error::missing_field("user_id"));
            };
            if is_me(who) {
                return Ok(());
            }
            // A custom emoji by its name, a standard one as itself.
            let emoji = match &r.emoji {
                model::channel::ReactionType::Unicode(e) => e.clone(),
                model::channel::ReactionType::Custom { name: Some(n), .. } => n.clone(),
                _ => return malformed(&serde::de::Error::missing_field("emoji.name")),
            };
            let user = r.member.as_ref().map_or_else(
                || Sender {
                    id: UserId(who.to_string()),
                    name: None,
                    roles: vec![Role::User],
                },
                |m| sender(&m.user),
            );
            let key = format!("reaction:{}:{who}:{emoji}", r.message_id);
            let event = Event::Reaction {
                channel: state.channel.clone(),
                conversation: r.channel_id.to_string().into(),
                message: MessageId(format!("msg:{}", r.message_id)),
                user,
                emoji,
                raw: Some(d.clone()),
            };
            (event, key)
        }
        other => {
            state.stats.ignored.inc(&format!("event {other}"));
            return Ok(());
        }
    };
    enqueue_inbound(&*state.store, &state.channel, &state.stats, &event, &key).await?;
    if let Some(edit) = edit {
        state
            .edits_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(edit);
    }
    Ok(())
}

/// What FlowBot reads of a message (created or edited), as serenity decoded it.
struct Posted<'a> {
    id: model::id::MessageId,
    channel: model::id::ChannelId,
    author: &'a model::user::User,
    content: &'a str,
    attachments: &'a [model::channel::Attachment],
    mentions: &'a [model::user::User],
}

impl Posted<'_> {
    /// The message (with `raw`, its JSON), or `None` when it has neither text nor
    /// attachments (counted).
    fn message(&self, state: &DiscordState, raw: &Value) -> Option<Message> {
        let mut message = Message::text(
            state.channel.clone(),
            self.channel.to_string(),
            sender(self.author),
            self.content,
        );
        message.id = MessageId(format!("msg:{}", self.id));
        message.attachments = self
            .attachments
            .iter()
            .map(|a| Attachment {
                url: a.url.clone(),
                name: Some(a.filename.clone()),
                mime: a.content_type.clone(),
                size: Some(u64::from(a.size)),
            })
            .collect();
        message.mentions = self
            .mentions
            .iter()
            .map(|u| UserId(u.id.to_string()))
            .collect();
        if message.text.is_empty() && message.attachments.is_empty() {
            // A server message's content is empty without the Message Content intent (or a
            // message of embeds or stickers only): nothing to answer.
            state.stats.ignored.inc("message without content");
            return None;
        }
        message.raw = Some(raw.clone());
        Some(message)
    }
}

/// A Discord user as a sender.
fn sender(u: &model::user::User) -> Sender {
    super::sender_of(u, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_and_close_codes() {
        assert_eq!(intents(&["guilds", "GUILD_MESSAGES"]), Ok(1 | 1 << 9));
        let err = intents(&["guild_mesages"]).expect_err("unknown");
        assert!(err.0.contains("'guild_mesages'"), "{err}");
        assert_eq!(intents(DEFAULT_INTENTS), Ok(0b1011_0110_0000_0011));
        let frame = |code: u16| CloseFrame {
            code: CloseCode::from(code),
            reason: "x".into(),
        };
        assert!(
            matches!(closed(Some(&frame(4014))), Next::Fatal(w) if w.contains("Message Content"))
        );
        assert!(matches!(closed(Some(&frame(4009))), Next::Identify));
        assert!(matches!(closed(Some(&frame(4000))), Next::Resume));
        assert!(matches!(closed(None), Next::Resume));
    }
}
