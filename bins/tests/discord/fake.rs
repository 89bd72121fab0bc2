//! Discord's HTTP API on 127.0.0.1, written from Discord's developer documentation (API v10):
//! bot-authenticated routes (`Authorization: Bot <token>`) to register global application
//! commands and to post and edit channel messages, the interaction webhook routes (editing the
//! original response, follow-ups), and 429 answers with `retry_after` in the JSON body. Its
//! signing key stands in for Discord's: interactions sent to the app are signed with it
//! (Ed25519 over timestamp + body).
#![allow(dead_code, unreachable_pub)] // a helper module; each test file uses some of it

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

pub const BOT_TOKEN: &str = "discord-bot-token-0123456789abcdef";
pub const APP_ID: &str = "4242";

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
    tokens: HashMap<String, String>,
    next: u64,
    limited: u32,
    down: u32,
    /// Channel messages answer `X-RateLimit-Remaining: 0` with this reset (seconds).
    bucket_reset: Option<f64>,
}

#[derive(Clone, Default)]
pub struct FakeDiscord {
    inner: Arc<Mutex<Inner>>,
    pub base: String,
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
        i.sent.push(Sent { channel, via, body });
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
    fake.inner
        .lock()
        .expect("lock")
        .edits
        .push((format!("{channel}:{id}"), body.clone()));
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

/// A slash command interaction by user 42 in `channel` (a server), with string options.
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
    json!({"id": id, "application_id": APP_ID, "type": 2, "token": token, "version": 1,
        "guild_id": "777", "channel_id": channel, "channel": {"id": channel, "type": 0},
        "member": {"user": {"id": "42", "username": "ada", "global_name": "Ada"}, "roles": [], "permissions": "2147483647"},
        "data": {"id": "cmd-1", "name": name, "type": 1, "options": options}})
}

/// A click on the button whose `custom_id` is `value`.
pub fn click(id: &str, token: &str, channel: &str, value: &str) -> Value {
    json!({"id": id, "application_id": APP_ID, "type": 3, "token": token, "version": 1,
        "guild_id": "777", "channel_id": channel,
        "member": {"user": {"id": "42", "username": "ada"}, "roles": [], "permissions": "0"},
        "message": {"id": "555", "channel_id": channel, "content": "…"},
        "data": {"custom_id": value, "component_type": 2}})
}
