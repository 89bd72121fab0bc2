//! Discord's HTTP API and gateway on 127.0.0.1, written from Discord's developer
//! documentation (API v10): bot-authenticated routes (`Authorization: Bot <token>`) to
//! register global application commands, to post and edit channel messages and to find the
//! gateway (`GET /gateway/bot`); the interaction routes (the initial response callback,
//! editing the original response, follow-ups); 429 answers with `retry_after` in the JSON
//! body. Its signing key stands in for Discord's: interactions sent to the app are signed with
//! it (Ed25519 over timestamp + body). Editing a message it did not create answers 404
//! `Unknown Message` (code 10008); messages created and edited are recorded with the time
//! they arrived.
//!
//! The gateway (at `/`, as Discord's is, JSON encoding) speaks the documented session lifecycle: Hello with
//! the heartbeat interval, Identify (token checked, else close 4004) answered by READY with a
//! session id and `resume_gateway_url`, then GUILD_CREATE; heartbeats answered with ACKs;
//! numbered dispatches kept per session, so a Resume (op 6) replays those after the
//! client's sequence number and then sends RESUMED, and an unknown session gets Invalid
//! Session (op 9, not resumable). Tests can ask the client to reconnect (op 7), close the
//! socket with a code, stop acknowledging heartbeats, and send frames of their own.
//!
//! Its payloads are complete objects as Discord's documentation defines them (every field
//! that is not marked optional, ids as numeric snowflakes), as Discord sends them: the bot
//! decodes them with serenity's model, which requires the fields Discord always sends.
#![allow(dead_code, unreachable_pub)] // a helper module; each test file uses some of it

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::ws::{CloseFrame, Message as Ws, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

pub const BOT_TOKEN: &str = "discord-bot-token-0123456789abcdef";
pub const APP_ID: &str = "4242";
/// The bot's own user id.
pub const BOT_USER: &str = "4243";
/// The server (guild) the bot is in, and its system channel.
pub const GUILD: &str = "777";
pub const SYSTEM_CHANNEL: &str = "778";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// The application's public key, as the developer portal shows it.
pub fn public_key() -> String {
    hex::encode(key().verifying_key().to_bytes())
}

/// The signature headers for `body` at `ts`.
pub fn sign(body: &str, ts: i64) -> [(String, String); 2] {
    let sig = key().sign(format!("{ts}{body}").as_bytes());
    [
        ("x-signature-ed25519".into(), hex::encode(sig.to_bytes())),
        ("x-signature-timestamp".into(), ts.to_string()),
    ]
}

/// A message the bot sent: where, how, what.
#[derive(Debug, Clone)]
pub struct Sent {
    pub channel: String,
    /// `original`, `followup` or `channel`.
    pub via: &'static str,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    commands: Vec<Value>,
    sent: Vec<Sent>,
    edits: Vec<(String, Value)>,
    /// Messages created (`<channel>:<id>`).
    created: HashSet<String>,
    /// Creations and edits: when, `create` or `edit`, channel, body.
    timeline: Vec<(Instant, &'static str, String, Value)>,
    tokens: HashMap<String, String>,
    next: u64,
    limited: u32,
    down: u32,
    /// Channel messages answer `X-RateLimit-Remaining: 0` with this reset (seconds).
    bucket_reset: Option<f64>,
    /// Interaction callbacks: (interaction id, response type).
    callbacks: Vec<(String, u64)>,
    gateway: Gateway,
}

#[derive(Default)]
struct Gateway {
    /// Sessions by id: shard and the dispatches sent in it (with their `s`).
    sessions: HashMap<String, Session>,
    /// Per shard, its current session (the latest identified or resumed).
    current: HashMap<u32, String>,
    /// Per session, the live connection's outbox.
    live: HashMap<String, tokio::sync::mpsc::UnboundedSender<Out>>,
    /// Identify payloads (`d`), in order.
    identifies: Vec<Value>,
    /// Resumes: (session id, seq).
    resumes: Vec<(String, Option<u64>)>,
    heartbeats: u64,
    /// Heartbeats are not acknowledged.
    silent: bool,
}

struct Session {
    shard: u32,
    sent: Vec<Value>,
}

/// What a test makes the gateway do on a live connection.
#[derive(Debug)]
enum Out {
    Frame(String),
    Close(u16),
}

/// The heartbeat interval the gateway asks for.
pub const HEARTBEAT_MS: u64 = 400;

#[derive(Clone, Default)]
pub struct FakeDiscord {
    inner: Arc<Mutex<Inner>>,
    pub base: String,
    /// Woken whenever the bot sends a message or a gateway connection comes or goes.
    pub changed: Arc<tokio::sync::Notify>,
}

impl FakeDiscord {
    pub async fn start() -> FakeDiscord {
        let mut fake = FakeDiscord::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        fake.base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route(
                "/api/v10/applications/{app}/commands",
                axum::routing::put(commands),
            )
            .route(
                "/api/v10/channels/{channel}/messages",
                axum::routing::post(channel_message),
            )
            .route(
                "/api/v10/channels/{channel}/messages/{id}",
                axum::routing::patch(edit_message),
            )
            .route(
                "/api/v10/webhooks/{app}/{token}/messages/@original",
                axum::routing::patch(original),
            )
            .route(
                "/api/v10/webhooks/{app}/{token}",
                axum::routing::post(followup),
            )
            .route("/api/v10/gateway/bot", axum::routing::get(gateway_bot))
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                axum::routing::post(callback),
            )
            .route("/", axum::routing::any(gateway))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake discord") });
        fake
    }

    pub fn api(&self) -> String {
        format!("{}/api/v10", self.base)
    }

    /// A new interaction in `channel`: its id and token (Discord gives each a fresh token).
    pub fn interaction(&self, channel: &str) -> (String, String) {
        let mut i = self.inner.lock().expect("lock");
        i.next += 1;
        let token = format!("itoken-{}", i.next);
        i.tokens.insert(token.clone(), channel.to_owned());
        (format!("9000{}", i.next), token)
    }

    /// The next webhook call answers 429 (`retry_after` 0.2 s).
    pub fn rate_limit_once(&self) {
        self.inner.lock().expect("lock").limited += 1;
    }

    /// From now on, channel messages report their bucket empty for `secs`.
    pub fn empty_bucket(&self, secs: f64) {
        self.inner.lock().expect("lock").bucket_reset = Some(secs);
    }

    /// Interaction callbacks received: (interaction id, response type).
    pub fn callbacks(&self) -> Vec<(String, u64)> {
        self.inner.lock().expect("lock").callbacks.clone()
    }

    /// Send dispatch `t` with data `d` on shard `shard`'s current session: at once if it is
    /// connected, else when the session is resumed.
    pub fn dispatch(&self, shard: u32, t: &str, d: Value) {
        let mut i = self.inner.lock().expect("lock");
        let g = &mut i.gateway;
        let id = g
            .current
            .get(&shard)
            .cloned()
            .expect("no session on that shard");
        let session = g.sessions.get_mut(&id).expect("session");
        let s = session.sent.len() as u64 + 2; // READY was 1
        let mut frame = json!({"op": 0, "t": t, "s": s});
        frame["d"] = d;
        session.sent.push(frame.clone());
        if let Some(out) = g.live.get(&id) {
            let _ = out.send(Out::Frame(frame.to_string()));
        }
    }

    /// Send `frame` as it is on shard `shard`'s live connection.
    pub fn send_raw(&self, shard: u32, frame: &str) {
        self.live_out(shard)
            .send(Out::Frame(frame.to_owned()))
            .expect("live");
    }

    /// Send `frame` as it is on shard `shard`'s live connection; false when it has none
    /// (the bot is reconnecting).
    pub fn try_send_raw(&self, shard: u32, frame: &str) -> bool {
        let i = self.inner.lock().expect("lock");
        let out = i
            .gateway
            .current
            .get(&shard)
            .and_then(|id| i.gateway.live.get(id));
        out.is_some_and(|o| o.send(Out::Frame(frame.to_owned())).is_ok())
    }

    /// Close shard `shard`'s live connection with `code`.
    pub fn close(&self, shard: u32, code: u16) {
        self.live_out(shard).send(Out::Close(code)).expect("live");
    }

    fn live_out(&self, shard: u32) -> tokio::sync::mpsc::UnboundedSender<Out> {
        let i = self.inner.lock().expect("lock");
        let id = i.gateway.current.get(&shard).expect("no session");
        i.gateway.live.get(id).expect("not connected").clone()
    }

    /// Stop (or resume) acknowledging heartbeats.
    pub fn silence_heartbeats(&self, silent: bool) {
        self.inner.lock().expect("lock").gateway.silent = silent;
    }

    pub fn identifies(&self) -> Vec<Value> {
        self.inner.lock().expect("lock").gateway.identifies.clone()
    }

    pub fn resumes(&self) -> Vec<(String, Option<u64>)> {
        self.inner.lock().expect("lock").gateway.resumes.clone()
    }

    pub fn heartbeats(&self) -> u64 {
        self.inner.lock().expect("lock").gateway.heartbeats
    }

    /// Whether shard `shard` has a live, identified or resumed connection.
    pub fn connected(&self, shard: u32) -> bool {
        let i = self.inner.lock().expect("lock");
        i.gateway
            .current
            .get(&shard)
            .is_some_and(|id| i.gateway.live.contains_key(id))
    }

    /// Wait until shard `shard` is connected.
    pub async fn wait_connected(&self, shard: u32) {
        crate::common::found(
            &format!("shard {shard} never connected"),
            || self.connected(shard).then_some(()),
            || self.identifies(),
        )
        .await
    }

    /// The next webhook call fails with 502.
    pub fn fail_once(&self) {
        self.inner.lock().expect("lock").down += 1;
    }

    pub fn commands(&self) -> Vec<Value> {
        self.inner.lock().expect("lock").commands.clone()
    }

    pub fn sent_to(&self, channel: &str) -> Vec<Sent> {
        self.inner
            .lock()
            .expect("lock")
            .sent
            .iter()
            .filter(|s| s.channel == channel)
            .cloned()
            .collect()
    }

    pub fn edits(&self) -> Vec<(String, Value)> {
        self.inner.lock().expect("lock").edits.clone()
    }

    /// Messages created or edited in `channel`, in order: when each request arrived,
    /// `create` or `edit`, its body.
    pub fn timeline(&self, channel: &str) -> Vec<(Instant, &'static str, Value)> {
        self.inner
            .lock()
            .expect("lock")
            .timeline
            .iter()
            .filter(|(_, _, c, _)| c == channel)
            .map(|(at, what, _, body)| (*at, *what, body.clone()))
            .collect()
    }

    /// Wait for a message to `channel` whose content is `text`.
    pub async fn wait_for(&self, channel: &str, text: &str) -> Sent {
        crate::common::found(
            &format!("no message {text:?} in {channel}"),
            || {
                self.sent_to(channel)
                    .into_iter()
                    .find(|s| s.body["content"] == text)
            },
            || self.sent_to(channel),
        )
        .await
    }

    fn record(&self, channel: String, via: &'static str, body: Value) -> Value {
        let mut i = self.inner.lock().expect("lock");
        i.next += 1;
        let id = format!("{}", 100_000 + i.next);
        let answer = json!({"id": id, "channel_id": channel, "content": body["content"], "components": body["components"]});
        i.created.insert(format!("{channel}:{id}"));
        i.timeline
            .push((Instant::now(), "create", channel.clone(), body.clone()));
        i.sent.push(Sent { channel, via, body });
        drop(i);
        self.changed.notify_waiters();
        answer
    }

    /// A fault due on the interaction webhook, if any.
    fn fault(&self) -> Option<Response> {
        let mut i = self.inner.lock().expect("lock");
        if i.limited > 0 {
            i.limited -= 1;
            return Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"message": "You are being rate limited.", "retry_after": 0.2, "global": false})),
                )
                    .into_response(),
            );
        }
        if i.down > 0 {
            i.down -= 1;
            return Some((StatusCode::BAD_GATEWAY, "upstream connect error").into_response());
        }
        None
    }
}

fn bot(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bot {BOT_TOKEN}"))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "401: Unauthorized", "code": 0})),
    )
        .into_response()
}

async fn commands(
    State(fake): State<FakeDiscord>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !bot(&headers) || app != APP_ID {
        return unauthorized();
    }
    fake.inner.lock().expect("lock").commands = body.as_array().cloned().unwrap_or_default();
    Json(body).into_response()
}

async fn channel_message(
    State(fake): State<FakeDiscord>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !bot(&headers) {
        return unauthorized();
    }
    let reset = fake.inner.lock().expect("lock").bucket_reset;
    let answer = Json(fake.record(channel, "channel", body));
    match reset {
        Some(secs) => (
            [
                ("x-ratelimit-limit", "5".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset-after", format!("{secs:.3}")),
            ],
            answer,
        )
            .into_response(),
        None => answer.into_response(),
    }
}

async fn edit_message(
    State(fake): State<FakeDiscord>,
    Path((channel, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !bot(&headers) {
        return unauthorized();
    }
    let mut i = fake.inner.lock().expect("lock");
    let key = format!("{channel}:{id}");
    if !i.created.contains(&key) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Unknown Message", "code": 10008})),
        )
            .into_response();
    }
    i.edits.push((key, body.clone()));
    i.timeline
        .push((Instant::now(), "edit", channel.clone(), body.clone()));
    Json(json!({"id": id, "channel_id": channel, "content": body["content"]})).into_response()
}

fn channel_of(fake: &FakeDiscord, app: &str, token: &str) -> Option<String> {
    (app == APP_ID)
        .then(|| fake.inner.lock().expect("lock").tokens.get(token).cloned())
        .flatten()
}

async fn original(
    State(fake): State<FakeDiscord>,
    Path((app, token)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(f) = fake.fault() {
        return f;
    }
    match channel_of(&fake, &app, &token) {
        Some(channel) => Json(fake.record(channel, "original", body)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Unknown Webhook", "code": 10015})),
        )
            .into_response(),
    }
}

async fn followup(
    State(fake): State<FakeDiscord>,
    Path((app, token)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(f) = fake.fault() {
        return f;
    }
    match channel_of(&fake, &app, &token) {
        Some(channel) => Json(fake.record(channel, "followup", body)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Unknown Webhook", "code": 10015})),
        )
            .into_response(),
    }
}

/// User 42, Ada.
pub const ADA: &str = "42";

/// A user object.
pub fn user(id: &str, username: &str, global_name: Option<&str>) -> Value {
    json!({"id": id, "username": username, "discriminator": "0", "global_name": global_name,
        "avatar": null, "public_flags": 0})
}

/// `user` as a member of the server, with `permissions` (as interactions carry them).
pub fn member(user: Value, permissions: Option<&str>) -> Value {
    let mut m = json!({"nick": null, "avatar": null, "roles": [],
        "joined_at": "2026-01-01T00:00:00.000000+00:00", "premium_since": null, "deaf": false,
        "mute": false, "flags": 0, "pending": false, "communication_disabled_until": null});
    m["user"] = user;
    if let Some(p) = permissions {
        m["permissions"] = p.into();
    }
    m
}

/// The fields every interaction has, of `kind`, by Ada in `channel` of the server.
fn interaction(id: &str, token: &str, channel: &str, kind: u8, permissions: &str) -> Value {
    json!({"id": id, "application_id": APP_ID, "type": kind, "token": token, "version": 1,
        "guild_id": GUILD, "channel_id": channel,
        "channel": {"id": channel, "type": 0, "name": "general", "guild_id": GUILD,
            "permissions": "2248473465835073"},
        "member": member(user(ADA, "ada", Some("Ada")), Some(permissions)),
        "app_permissions": "2248473465835073", "locale": "en-US", "guild_locale": "en-US",
        "entitlements": [], "authorizing_integration_owners": {"0": GUILD}, "context": 0,
        "attachment_size_limit": 10_485_760})
}

/// A slash command interaction by Ada (an administrator) in `channel` (a server), with string
/// options.
pub fn command(
    id: &str,
    token: &str,
    channel: &str,
    name: &str,
    options: &[(&str, &str)],
) -> Value {
    let options: Vec<Value> = options
        .iter()
        .map(|(n, v)| json!({"name": n, "type": 3, "value": v}))
        .collect();
    let mut i = interaction(id, token, channel, 2, "2147483647");
    i["data"] = json!({"id": "1300000000000000001", "name": name, "type": 1, "options": options});
    i
}

/// A click by Ada on the button whose `custom_id` is `value`, on a message of the bot's.
pub fn click(id: &str, token: &str, channel: &str, value: &str) -> Value {
    let mut i = interaction(id, token, channel, 3, "0");
    let mut clicked = message("555", channel, "…");
    clicked["author"] = bot_user();
    i["message"] = clicked;
    i["data"] = json!({"custom_id": value, "component_type": 2});
    i
}

/// The bot's own user.
pub fn bot_user() -> Value {
    let mut u = user(BOT_USER, "flowbot", None);
    u["bot"] = true.into();
    u
}

/// A message by Ada in `channel`, as MESSAGE_CREATE's data.
pub fn message(id: &str, channel: &str, content: &str) -> Value {
    json!({"id": id, "channel_id": channel, "guild_id": GUILD, "type": 0, "content": content,
        "author": user(ADA, "ada", Some("Ada")),
        "member": {"roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false,
            "mute": false, "flags": 0, "premium_since": null, "nick": null},
        "timestamp": "2026-11-22T10:00:00.000000+00:00", "edited_timestamp": null, "tts": false,
        "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": false, "flags": 0, "components": []})
}

/// GUILD_MEMBER_ADD's data: `user` joined the server.
pub fn member_add(user: Value) -> Value {
    let mut m = member(user, None);
    m["guild_id"] = GUILD.into();
    m["joined_at"] = "2026-11-22T10:00:00.000000+00:00".into();
    m
}

/// MESSAGE_REACTION_ADD's data: Ada reacted with `emoji` (a standard one) to a message.
pub fn reaction(channel: &str, message: &str, emoji: &str) -> Value {
    json!({"user_id": ADA, "channel_id": channel, "message_id": message, "guild_id": GUILD,
        "emoji": {"id": null, "name": emoji}, "member": member(user(ADA, "ada", Some("Ada")), None),
        "message_author_id": BOT_USER, "burst": false, "burst_colors": [], "type": 0})
}

/// GUILD_CREATE's data: the server, with its system channel, owned by Ada.
pub fn guild() -> Value {
    let everyone = json!({"id": GUILD, "name": "@everyone", "color": 0,
        "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false, "icon": null, "unicode_emoji": null, "position": 0,
        "permissions": "2248473465835073", "managed": false, "mentionable": false, "flags": 0});
    // The guild object, then the fields GUILD_CREATE adds to it.
    let mut g = json!({"id": GUILD, "name": "Test server", "icon": null, "icon_hash": null,
        "splash": null, "discovery_splash": null, "owner_id": ADA, "afk_channel_id": null,
        "afk_timeout": 300, "widget_enabled": false, "widget_channel_id": null,
        "verification_level": 1, "default_message_notifications": 1,
        "explicit_content_filter": 2, "roles": [everyone], "emojis": [], "features": [],
        "mfa_level": 0, "application_id": null, "system_channel_id": SYSTEM_CHANNEL,
        "system_channel_flags": 0, "rules_channel_id": null, "max_presences": null,
        "max_members": 500_000, "vanity_url_code": null, "description": null, "banner": null,
        "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50, "nsfw_level": 0, "stickers": [],
        "premium_progress_bar_enabled": false, "safety_alerts_channel_id": null});
    let created = json!({"joined_at": "2026-01-01T00:00:00.000000+00:00", "large": false,
        "unavailable": false, "member_count": 2, "voice_states": [], "members": [],
        "channels": [], "threads": [], "presences": [], "stage_instances": [],
        "guild_scheduled_events": [], "soundboard_sounds": []});
    for (k, v) in created.as_object().into_iter().flatten() {
        g[k] = v.clone();
    }
    g
}

async fn gateway_bot(State(fake): State<FakeDiscord>, headers: HeaderMap) -> Response {
    if !bot(&headers) {
        return unauthorized();
    }
    let url = fake.base.replacen("http://", "ws://", 1);
    Json(json!({"url": url, "shards": 1, "session_start_limit":
        {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}}))
    .into_response()
}

async fn callback(
    State(fake): State<FakeDiscord>,
    Path((id, token)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let mut i = fake.inner.lock().expect("lock");
    if !i.tokens.contains_key(&token) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Unknown interaction", "code": 10062})),
        )
            .into_response();
    }
    i.callbacks.push((id, body["type"].as_u64().unwrap_or(0)));
    StatusCode::NO_CONTENT.into_response()
}

async fn gateway(State(fake): State<FakeDiscord>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| connection(fake, socket))
}

/// One gateway connection, from Hello to close.
async fn connection(fake: FakeDiscord, mut ws: WebSocket) {
    use futures_util::StreamExt;
    let hello = json!({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}, "s": null, "t": null});
    if ws.send(Ws::text(hello.to_string())).await.is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
    let mut session: Option<String> = None;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Frame(f)) => if ws.send(Ws::text(f)).await.is_err() { break },
                Some(Out::Close(code)) => {
                    let _ = ws.send(Ws::Close(Some(CloseFrame { code, reason: "test".into() }))).await;
                    break;
                }
                None => break,
            },
            frame = ws.next() => {
                let Some(Ok(Ws::Text(text))) = frame else { break };
                let Ok(p) = serde_json::from_str::<Value>(text.as_str()) else {
                    let _ = ws.send(Ws::Close(Some(CloseFrame { code: 4002, reason: "decode error".into() }))).await;
                    break;
                };
                let replies = fake.on_frame(&p, &mut session, &tx);
                fake.changed.notify_waiters();
                let mut closed = false;
                for r in replies {
                    match r {
                        Out::Frame(f) => if ws.send(Ws::text(f)).await.is_err() { closed = true },
                        Out::Close(code) => {
                            let _ = ws.send(Ws::Close(Some(CloseFrame { code, reason: "refused".into() }))).await;
                            closed = true;
                        }
                    }
                }
                if closed { break }
            }
        }
    }
    if let Some(id) = session {
        let mut i = fake.inner.lock().expect("lock");
        // Only this connection's registration (a resume may have replaced it).
        if i.gateway.live.get(&id).is_some_and(|o| o.same_channel(&tx)) {
            i.gateway.live.remove(&id);
        }
    }
    fake.changed.notify_waiters();
}

impl FakeDiscord {
    /// The gateway's answers to a client frame.
    fn on_frame(
        &self,
        p: &Value,
        session: &mut Option<String>,
        tx: &tokio::sync::mpsc::UnboundedSender<Out>,
    ) -> Vec<Out> {
        let mut i = self.inner.lock().expect("lock");
        let g = &mut i.gateway;
        let frame = |v: Value| Out::Frame(v.to_string());
        match p["op"].as_u64() {
            Some(1) => {
                g.heartbeats += 1;
                if g.silent {
                    vec![]
                } else {
                    vec![frame(json!({"op": 11}))]
                }
            }
            Some(2) => {
                let d = &p["d"];
                g.identifies.push(d.clone());
                if d["token"] != BOT_TOKEN {
                    return vec![Out::Close(4004)];
                }
                let shard = d["shard"][0].as_u64().unwrap_or(0) as u32;
                let id = format!("session-{}", g.identifies.len());
                g.sessions.insert(
                    id.clone(),
                    Session {
                        shard,
                        sent: vec![],
                    },
                );
                g.current.insert(shard, id.clone());
                g.live.insert(id.clone(), tx.clone());
                *session = Some(id.clone());
                let resume = self.base.replacen("http://", "ws://", 1);
                vec![frame(json!({"op": 0, "t": "READY", "s": 1, "d": {
                        "v": 10, "session_id": id, "resume_gateway_url": resume,
                        "user": bot_user(),
                        "guilds": [{"id": GUILD, "unavailable": true}],
                        "shard": d["shard"], "application": {"id": APP_ID, "flags": 0}}}))]
                .into_iter()
                .chain(Self::dispatch_now(g, &id, "GUILD_CREATE", guild()))
                .collect()
            }
            Some(6) => {
                let d = &p["d"];
                let id = d["session_id"].as_str().unwrap_or_default().to_owned();
                let seq = d["seq"].as_u64();
                g.resumes.push((id.clone(), seq));
                let Some(s) = g.sessions.get(&id).filter(|_| d["token"] == BOT_TOKEN) else {
                    return vec![frame(json!({"op": 9, "d": false}))];
                };
                let shard = s.shard;
                let mut out: Vec<Out> = s
                    .sent
                    .iter()
                    .filter(|f| f["s"].as_u64() > seq && f["t"] != "RESUMED")
                    .map(|f| Out::Frame(f.to_string()))
                    .collect();
                let next = s.sent.len() as u64 + 2;
                out.push(frame(json!({"op": 0, "t": "RESUMED", "s": next, "d": {}})));
                if let Some(s) = g.sessions.get_mut(&id) {
                    s.sent
                        .push(json!({"op": 0, "t": "RESUMED", "s": next, "d": {}}));
                }
                g.current.insert(shard, id.clone());
                g.live.insert(id.clone(), tx.clone());
                *session = Some(id);
                out
            }
            _ => vec![Out::Close(4001)],
        }
    }

    /// Record a dispatch in session `id` and return it to send now.
    fn dispatch_now(g: &mut Gateway, id: &str, t: &str, d: Value) -> Option<Out> {
        let session = g.sessions.get_mut(id)?;
        let s = session.sent.len() as u64 + 2;
        let mut f = json!({"op": 0, "t": t, "s": s});
        f["d"] = d;
        session.sent.push(f.clone());
        Some(Out::Frame(f.to_string()))
    }
}
