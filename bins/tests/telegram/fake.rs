//! A Telegram Bot API server on 127.0.0.1, written from the Bot API documentation
//! (https://core.telegram.org/bots/api): `POST /bot<token>/<method>` with a JSON body, answered
//! with `{"ok": true, "result": …}` or `{"ok": false, "error_code": …, "description": …}`.
//! `getUpdates` holds the request up to `timeout` seconds and forgets updates below `offset`.
//! Faults can be queued per method: a 429 with `retry_after`, or a 502 from a proxy in front.
//! Sent messages are kept, so `editMessageText` answers as Telegram does for a message it
//! does not know ("message to edit not found") and for an edit that changes nothing ("message
//! is not modified"). Every call is recorded with the time it arrived.
#![allow(dead_code, unreachable_pub)] // a helper module; each test file uses some of it

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const TOKEN: &str = "123456:TEST-token_abcdefghijklmnop";
pub const USERNAME: &str = "flowbot_test_bot";

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    TooMany(u64),
    BadGateway,
    /// 403 "Forbidden: bot was blocked by the user".
    Blocked,
}

#[derive(Default)]
struct Inner {
    /// Updates not yet confirmed by an offset.
    updates: VecDeque<Value>,
    next_update: i64,
    calls: Vec<(String, Value)>,
    /// When each of `calls` arrived.
    arrived_at: Vec<Instant>,
    next_message: i64,
    /// Text messages by (chat, message id): their text and reply markup.
    messages: HashMap<(String, i64), (Value, Value)>,
    faults: HashMap<String, VecDeque<Fault>>,
}

#[derive(Clone, Default)]
pub struct FakeTelegram {
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    pub base: String,
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let mut fake = FakeTelegram::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        fake.base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/{bot}/{method}", axum::routing::post(handle))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake telegram") });
        fake
    }

    /// Queue an update (its `update_id` is assigned); returns the id.
    pub fn push(&self, mut update: Value) -> i64 {
        let mut i = self.inner.lock().expect("lock");
        i.next_update += 1;
        let id = 1000 + i.next_update;
        update["update_id"] = id.into();
        i.updates.push_back(update);
        drop(i);
        self.arrived.notify_waiters();
        id
    }

    pub fn fault(&self, method: &str, fault: Fault) {
        self.inner
            .lock()
            .expect("lock")
            .faults
            .entry(method.into())
            .or_default()
            .push_back(fault);
    }

    /// Every call so far to `method`, with its body.
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

    /// Every sent or edited text message to `chat`, in order: when it arrived, the method,
    /// its body (failed calls included).
    pub fn texts_to(&self, chat: i64) -> Vec<(Instant, String, Value)> {
        let i = self.inner.lock().expect("lock");
        i.calls
            .iter()
            .zip(&i.arrived_at)
            .filter(|((m, b), _)| {
                (m == "sendMessage" || m == "editMessageText") && b["chat_id"] == chat
            })
            .map(|((m, b), at)| (*at, m.clone(), b.clone()))
            .collect()
    }

    /// The texts sent to `chat`.
    pub fn sent_to(&self, chat: i64) -> Vec<Value> {
        self.calls("sendMessage")
            .into_iter()
            .filter(|b| b["chat_id"] == chat)
            .collect()
    }

    /// Wait for a message to `chat` whose text is `text`.
    pub async fn wait_for_text(&self, chat: i64, text: &str) -> Value {
        crate::common::found(
            &format!("no message {text:?} to chat {chat}"),
            || self.sent_to(chat).into_iter().find(|b| b["text"] == text),
            || self.sent_to(chat),
        )
        .await
    }
}

fn refuse(status: StatusCode, description: &str, extra: &Value) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(p) = extra.as_object() {
        body["parameters"] = Value::Object(p.clone());
    }
    (status, Json(body)).into_response()
}

async fn handle(
    State(fake): State<FakeTelegram>,
    Path((bot, method)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Response {
    if bot != format!("bot{TOKEN}") {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized", &Value::Null);
    }
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let fault = {
        let mut i = fake.inner.lock().expect("lock");
        i.calls.push((method.clone(), body.clone()));
        i.arrived_at.push(Instant::now());
        i.faults.get_mut(&method).and_then(VecDeque::pop_front)
    };
    match fault {
        Some(Fault::TooMany(secs)) => {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too Many Requests: retry after {secs}"),
                &json!({"retry_after": secs}),
            );
        }
        Some(Fault::Blocked) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "Forbidden: bot was blocked by the user",
                &Value::Null,
            );
        }
        Some(Fault::BadGateway) => {
            return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
        }
        None => {}
    }
    let ok = |result: Value| Json(json!({"ok": true, "result": result})).into_response();
    match method.as_str() {
        "getMe" => {
            ok(json!({"id": 123456, "is_bot": true, "first_name": "FlowBot", "username": USERNAME}))
        }
        "deleteWebhook" | "setWebhook" | "answerCallbackQuery" | "setMyCommands" => ok(json!(true)),
        "getUpdates" => {
            let offset = body["offset"].as_i64().unwrap_or(0);
            let timeout = body["timeout"].as_u64().unwrap_or(0);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                let notified = fake.arrived.notified();
                {
                    let mut i = fake.inner.lock().expect("lock");
                    i.updates
                        .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
                    if !i.updates.is_empty() {
                        return ok(Value::Array(i.updates.iter().cloned().collect()));
                    }
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return ok(json!([]));
                }
            }
        }
        "editMessageText" => {
            let chat = body["chat_id"].to_string();
            let id = body["message_id"].as_i64().unwrap_or(0);
            let new = (body["text"].clone(), body["reply_markup"].clone());
            let mut i = fake.inner.lock().expect("lock");
            match i.messages.get_mut(&(chat, id)) {
                None => refuse(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: message to edit not found",
                    &Value::Null,
                ),
                Some(old) if *old == new => refuse(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
                    &Value::Null,
                ),
                Some(old) => {
                    *old = new;
                    ok(
                        json!({"message_id": id, "date": 0, "edit_date": 1, "chat": {"id": body["chat_id"], "type": "private"},
                              "text": body["text"]}),
                    )
                }
            }
        }
        "sendMessage" | "sendPhoto" | "sendDocument" => {
            if body["chat_id"].is_null() {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: chat_id is empty",
                    &Value::Null,
                );
            }
            let id = {
                let mut i = fake.inner.lock().expect("lock");
                i.next_message += 1;
                let id = i.next_message;
                if method == "sendMessage" {
                    let key = (body["chat_id"].to_string(), id);
                    i.messages
                        .insert(key, (body["text"].clone(), body["reply_markup"].clone()));
                }
                id
            };
            ok(
                json!({"message_id": id, "date": 0, "chat": {"id": body["chat_id"], "type": "private"},
                      "text": body["text"]}),
            )
        }
        _ => refuse(
            StatusCode::NOT_FOUND,
            "Not Found: method not found",
            &Value::Null,
        ),
    }
}

static MESSAGE_IDS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

/// A text message from user 42 in `chat` (message ids are unique, as Telegram's are per chat).
pub fn text(chat: i64, text: &str) -> Value {
    let id = MESSAGE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({"message": {"message_id": id, "date": 0,
        "chat": {"id": chat, "type": "private"},
        "from": {"id": 42, "is_bot": false, "first_name": "Ada", "username": "ada"},
        "text": text}})
}

/// A click on the button whose `callback_data` is `data`, under a message in `chat`.
pub fn click(chat: i64, id: &str, data: &str) -> Value {
    json!({"callback_query": {"id": id, "chat_instance": "ci",
        "from": {"id": 42, "is_bot": false, "first_name": "Ada"},
        "message": {"message_id": 2, "date": 0, "chat": {"id": chat, "type": "private"}},
        "data": data}})
}
