//! A Tailchat server's bot-facing HTTP API on 127.0.0.1, written from Tailchat's open
//! platform (msgbyte/tailchat: `server/services/openapi/bot.service.ts`, the gateway's
//! envelope): `POST /api/openapi/bot/login` with `{appId, token: md5(appId + appSecret)}`
//! answers `{"code": 200, "data": {"jwt", "userId", …}}`; `POST /api/chat/message/sendMessage`
//! with the JWT in `X-Token` answers `{"code": 200, "data": {"_id", …}}`, or 401 with
//! `{"name", "message", "code": 401, "type": "INVALID_TOKEN"}` for a token it does not know.
#![allow(dead_code, unreachable_pub)] // a helper module; each test file uses some of it

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde_json::{Value, json};

pub const APP_ID: &str = "tc-app-1";
pub const APP_SECRET: &str = "tc-secret-0123456789";
pub const CALLBACK_TOKEN: &str = "callback-token-0123456789";
pub const BOT_USER: &str = "bot-user-1";

#[derive(Default)]
struct Inner {
    valid: HashSet<String>,
    logins: u32,
    sent: Vec<Value>,
}

#[derive(Clone, Default)]
pub struct FakeTailchat {
    inner: Arc<Mutex<Inner>>,
    pub base: String,
}

impl FakeTailchat {
    pub async fn start() -> FakeTailchat {
        let mut fake = FakeTailchat::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        fake.base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/api/openapi/bot/login", axum::routing::post(login))
            .route(
                "/api/chat/message/sendMessage",
                axum::routing::post(send_message),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake tailchat") });
        fake
    }

    /// Every JWT issued so far stops working (they expired, or were revoked).
    pub fn revoke_tokens(&self) {
        self.inner.lock().expect("lock").valid.clear();
    }

    pub fn logins(&self) -> u32 {
        self.inner.lock().expect("lock").logins
    }

    /// The messages sent to `converse`.
    pub fn sent_to(&self, converse: &str) -> Vec<Value> {
        self.inner
            .lock()
            .expect("lock")
            .sent
            .iter()
            .filter(|m| m["converseId"] == converse)
            .cloned()
            .collect()
    }

    /// Wait for a message to `converse` whose `plain` text is `text`.
    pub async fn wait_for(&self, converse: &str, text: &str) -> Value {
        crate::common::found(
            &format!("no message {text:?} to {converse}"),
            || {
                self.sent_to(converse)
                    .into_iter()
                    .find(|m| m["plain"] == text)
            },
            || self.sent_to(converse),
        )
        .await
    }
}

fn error(status: StatusCode, name: &str, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"name": name, "message": message, "code": status.as_u16(), "type": kind, "data": {}})),
    )
        .into_response()
}

async fn login(State(fake): State<FakeTailchat>, Json(body): Json<Value>) -> Response {
    let expected = hex::encode(Md5::digest(format!("{APP_ID}{APP_SECRET}")));
    if body["appId"] != APP_ID || body["token"] != expected.as_str() {
        // Tailchat throws a plain Error here: a 500.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            "Auth failed.",
            "",
        );
    }
    let mut i = fake.inner.lock().expect("lock");
    i.logins += 1;
    let jwt = format!("jwt-{}", i.logins);
    i.valid.insert(jwt.clone());
    Json(json!({"code": 200, "data": {"jwt": jwt, "userId": BOT_USER, "email": "bot@tailchat", "nickname": "FlowBot", "avatar": null}}))
        .into_response()
}

async fn send_message(
    State(fake): State<FakeTailchat>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut i = fake.inner.lock().expect("lock");
    match headers.get("x-token").and_then(|v| v.to_str().ok()) {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "UnAuthorizedError",
                "Unauthorized",
                "NO_TOKEN",
            );
        }
        Some(t) if !i.valid.contains(t) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "UnAuthorizedError",
                "Unauthorized",
                "INVALID_TOKEN",
            );
        }
        Some(_) => {}
    }
    if !body["converseId"].is_string() || !body["content"].is_string() {
        return error(
            StatusCode::from_u16(422).expect("status"),
            "ValidationError",
            "Parameters validation error!",
            "VALIDATION_ERROR",
        );
    }
    i.sent.push(body.clone());
    let id = format!("msg-{}", i.sent.len());
    Json(
        json!({"code": 200, "data": {"_id": id, "content": body["content"], "author": BOT_USER,
        "converseId": body["converseId"], "groupId": body["groupId"]}}),
    )
    .into_response()
}

/// The inbox item Tailchat posts to the bot's callback URL when `author` mentions it.
pub fn mention(group: Option<&str>, converse: &str, message_id: &str, text: &str) -> Value {
    let snippet = format!("[at={BOT_USER}]FlowBot[/at] {text}");
    let mut payload = json!({"converseId": converse, "messageId": message_id,
        "messageAuthor": "user-ada", "messageSnippet": snippet, "messagePlainContent": format!("@FlowBot {text}")});
    if let Some(g) = group {
        payload["groupId"] = g.into();
    }
    json!({"_id": format!("inbox-{message_id}"), "userId": BOT_USER, "type": "message", "readed": false,
        "payload": payload, "createdAt": "2026-11-22T10:00:00.000Z", "updatedAt": "2026-11-22T10:00:00.000Z"})
}
