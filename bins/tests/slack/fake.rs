//! Slack on 127.0.0.1, written from Slack's API documentation: the Web API methods the adapter
//! calls (`POST /api/<method>` with `Authorization: Bearer <bot token>`, answered
//! `{"ok": true, …}` or `{"ok": false, "error": …}`, 429 with `Retry-After` when rate
//! limited), the external file upload flow, and signed requests to the app (`X-Slack-Signature:
//! v0=<hex HMAC-SHA256 of "v0:<timestamp>:<body>">`, `X-Slack-Request-Timestamp`).
//! `chat.update` of a message it does not know answers `message_not_found`; every call is
//! recorded with the time it arrived.
#![allow(dead_code, unreachable_pub)] // a helper module; each test file uses some of it

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub const BOT_TOKEN: &str = "xoxb-1-fake-bot-token";
pub const SIGNING_SECRET: &str = "slack-signing-secret-0123456789";
pub const APP_TOKEN: &str = "xapp-1-fake-app-token";

#[derive(Default)]
struct Inner {
    calls: Vec<(String, Value)>,
    /// When each of `calls` arrived.
    arrived_at: Vec<Instant>,
    /// Messages posted: (channel, ts).
    messages: HashSet<(String, String)>,
    uploads: Vec<(String, Vec<u8>)>,
    ts: u64,
    limited: VecDeque<u64>,
}

#[derive(Clone)]
pub struct FakeSlack {
    inner: Arc<Mutex<Inner>>,
    pub base: String,
    /// Socket Mode envelopes to send to every connected app.
    envelopes: tokio::sync::broadcast::Sender<String>,
    /// Envelope ids the app acknowledged, and how many sockets it opened.
    acks: Arc<Mutex<Vec<String>>>,
    opened: Arc<std::sync::atomic::AtomicU32>,
    /// Woken whenever the app acknowledges an envelope or opens a socket.
    pub changed: Arc<tokio::sync::Notify>,
}

impl FakeSlack {
    pub async fn start() -> FakeSlack {
        let mut fake = FakeSlack {
            inner: Arc::default(),
            base: String::new(),
            envelopes: tokio::sync::broadcast::channel(64).0,
            acks: Arc::default(),
            opened: Arc::default(),
            changed: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        fake.base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::post(method))
            .route("/upload/{id}", axum::routing::post(upload))
            .route(
                "/api/apps.connections.open",
                axum::routing::post(open_connection),
            )
            .route("/socket", axum::routing::get(socket))
            .route(
                "/files/{name}",
                axum::routing::get(|Path(name): Path<String>| async move {
                    format!("contents of {name}")
                }),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake slack") });
        fake
    }

    /// Send a Socket Mode envelope of `kind` with `payload` to the connected app; its id.
    pub fn envelope(&self, kind: &str, payload: &Value) -> String {
        let id = format!("env-{}", uuid::Uuid::new_v4().simple());
        let frame = json!({"envelope_id": id, "type": kind, "payload": payload,
                           "accepts_response_payload": false});
        let _ = self.envelopes.send(frame.to_string());
        id
    }

    /// Send `frame` as it is to the connected app; false when no socket listens.
    pub fn send_raw(&self, frame: String) -> bool {
        self.envelopes.send(frame).is_ok()
    }

    /// Ask the connected app to reconnect.
    pub fn disconnect(&self) {
        let _ = self.envelopes.send(
            json!({"type": "disconnect", "reason": "refresh_requested",
                   "debug_info": {"host": "fake"}})
            .to_string(),
        );
    }

    pub fn acks(&self) -> Vec<String> {
        self.acks.lock().expect("lock").clone()
    }

    pub fn sockets_opened(&self) -> u32 {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The Web API base URL (`…/api`).
    pub fn api(&self) -> String {
        format!("{}/api", self.base)
    }

    /// The next `chat.postMessage` answers 429 with `Retry-After: secs`.
    pub fn rate_limit_once(&self, secs: u64) {
        self.inner.lock().expect("lock").limited.push_back(secs);
    }

    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.inner
            .lock()
            .expect("lock")
            .calls
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub fn uploads(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.lock().expect("lock").uploads.clone()
    }

    /// Every `chat.postMessage` and `chat.update` in `channel`, in order: when it arrived,
    /// the method, its body.
    pub fn messages_in(&self, channel: &str) -> Vec<(Instant, String, Value)> {
        let i = self.inner.lock().expect("lock");
        i.calls
            .iter()
            .zip(&i.arrived_at)
            .filter(|((m, b), _)| {
                (m == "chat.postMessage" || m == "chat.update") && b["channel"] == channel
            })
            .map(|((m, b), at)| (*at, m.clone(), b.clone()))
            .collect()
    }

    /// Messages posted to `channel`.
    pub fn posted(&self, channel: &str) -> Vec<Value> {
        self.calls("chat.postMessage")
            .into_iter()
            .filter(|b| b["channel"] == channel)
            .collect()
    }

    /// Wait for a message to `channel` whose text is `text`.
    pub async fn wait_for(&self, channel: &str, text: &str) -> Value {
        crate::common::found(
            &format!("no message {text:?} in {channel}"),
            || self.posted(channel).into_iter().find(|b| b["text"] == text),
            || self.posted(channel),
        )
        .await
    }
}

async fn method(
    State(fake): State<FakeSlack>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {BOT_TOKEN}"));
    if !authorized {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let body: Value = if is_form {
        let fields: Vec<(String, String)> = serde_urlencoded_from(&String::from_utf8_lossy(&body));
        Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return Json(json!({"ok": false, "error": "invalid_json"})).into_response(),
        }
    };
    let mut i = fake.inner.lock().expect("lock");
    i.calls.push((method.clone(), body.clone()));
    i.arrived_at.push(Instant::now());
    if method == "chat.postMessage"
        && let Some(secs) = i.limited.pop_front()
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    i.ts += 1;
    let ts = format!("1700000000.{:06}", i.ts);
    let channel = body["channel"].clone();
    let answer = match method.as_str() {
        "chat.postMessage" | "chat.update" => {
            let key = (
                channel.as_str().unwrap_or_default().to_owned(),
                body["ts"].as_str().unwrap_or_default().to_owned(),
            );
            if !channel.is_string() {
                json!({"ok": false, "error": "channel_not_found"})
            } else if method == "chat.update" && !i.messages.contains(&key) {
                json!({"ok": false, "error": "message_not_found"})
            } else {
                if method == "chat.postMessage" {
                    i.messages.insert((key.0, ts.clone()));
                }
                json!({"ok": true, "channel": channel, "ts": body.get("ts").cloned().unwrap_or(json!(ts)),
                       "message": {"ts": ts, "text": body["text"]}})
            }
        }
        "chat.postEphemeral" => json!({"ok": true, "message_ts": ts}),
        "files.getUploadURLExternal" => {
            json!({"ok": true, "upload_url": format!("{}/upload/F{}", fake.base, i.ts), "file_id": format!("F{}", i.ts)})
        }
        "files.completeUploadExternal" => json!({"ok": true, "files": body["files"]}),
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    Json(answer).into_response()
}

fn serde_urlencoded_from(s: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn upload(State(fake): State<FakeSlack>, Path(id): Path<String>, body: Bytes) -> Response {
    fake.inner
        .lock()
        .expect("lock")
        .uploads
        .push((id, body.to_vec()));
    (StatusCode::OK, "OK - uploaded").into_response()
}

/// The signature headers for `body` sent at `ts` (unix seconds).
pub fn sign(body: &str, ts: i64) -> [(String, String); 2] {
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).expect("key");
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    [
        (
            "x-slack-signature".into(),
            format!("v0={}", hex::encode(mac.finalize().into_bytes())),
        ),
        ("x-slack-request-timestamp".into(), ts.to_string()),
    ]
}

/// An `event_callback` with a user's message.
pub fn message_event(event_id: &str, channel: &str, ts: &str, text: &str) -> Value {
    json!({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": event_id, "event_time": 1_700_000_000,
        "event": {"type": "message", "channel": channel, "channel_type": "channel", "user": "U42",
                  "text": text, "ts": ts, "event_ts": ts}})
}

/// A `block_actions` interaction: user U42 clicks the button with `value` in `channel`.
pub fn block_action(channel: &str, trigger: &str, value: &str) -> String {
    let payload = json!({"type": "block_actions", "team": {"id": "T1", "domain": "acme"},
        "user": {"id": "U42", "username": "ada", "team_id": "T1"}, "api_app_id": "A1",
        "trigger_id": trigger, "container": {"type": "message", "message_ts": "1700000000.000001", "channel_id": channel, "is_ephemeral": false},
        "channel": {"id": channel, "name": "general"},
        "actions": [{"type": "button", "action_id": "flowbot-0", "block_id": "b1", "value": value,
                     "text": {"type": "plain_text", "text": value}, "action_ts": "1700000001.000001"}]});
    format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    )
}

async fn open_connection(State(fake): State<FakeSlack>, headers: HeaderMap) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {APP_TOKEN}"))
    {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let url = format!("{}/socket", fake.base.replacen("http://", "ws://", 1));
    Json(json!({"ok": true, "url": url})).into_response()
}

async fn socket(
    State(fake): State<FakeSlack>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    use axum::extract::ws::Message;
    use futures_util::{SinkExt, StreamExt};
    ws.on_upgrade(move |socket| async move {
        let (mut tx, mut rx) = socket.split();
        // Subscribed before it counts as open, so an envelope sent once a test sees the
        // socket open reaches it.
        let mut envelopes = fake.envelopes.subscribe();
        fake.opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        fake.changed.notify_waiters();
        let hello = json!({"type": "hello", "num_connections": 1,
            "connection_info": {"app_id": "A1"}, "debug_info": {"host": "fake"}});
        if tx.send(Message::text(hello.to_string())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                out = envelopes.recv() => {
                    let Ok(frame) = out else { return };
                    let disconnect = frame.contains("\"disconnect\"");
                    if tx.send(Message::text(frame)).await.is_err() || disconnect {
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                }
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                            && let Some(id) = v["envelope_id"].as_str()
                        {
                            fake.acks.lock().expect("lock").push(id.to_owned());
                            fake.changed.notify_waiters();
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
    })
}
