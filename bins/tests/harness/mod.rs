//! The server in-process on 127.0.0.1 with SQLite, for the integration tests.
#![allow(dead_code, unreachable_pub)] // each test file uses some of these

use std::time::Duration;

use flowbot_core::CancellationToken;
use flowbot_server::config::{Config, WebhookSettings};
use flowbot_server::run::Running;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{Received, TempDir, callback_receiver};

pub const SECRET: &str = "test-secret-0123456789";

/// The web chat's token secret: tests sign visitor tokens for the ids they choose.
pub const WEB_SECRET: &str = "web-chat-test-secret-0123456789abcdef";

pub struct Server {
    pub base: String,
    pub ws: String,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub callbacks: Received,
    /// The configuration it runs with.
    pub config: Config,
    /// The admin API's own address (`server.admin_listen`), as `http://…`.
    pub admin: Option<String>,
    _dir: TempDir,
}

impl Server {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("graceful shutdown in time")
            .expect("server task");
    }
}

pub async fn start() -> Server {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Server {
    start_on(None, tweak).await
}

/// [`start_with`], serving on `listener` (bound beforehand, when a test must know the port
/// before the server starts) when given.
pub async fn start_on(
    listener: Option<tokio::net::TcpListener>,
    tweak: impl FnOnce(&mut Config),
) -> Server {
    let dir = TempDir::new("flowbot-server-test");
    let (callback_url, callbacks, _) = callback_receiver(Some(SECRET)).await;
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.body_limit_bytes = 4096;
    config.server.shutdown_timeout_secs = 5;
    config.database.url = format!("sqlite://{}/flowbot.db", dir.0.display());
    config.workers.poll_interval_ms = 100;
    config.web.secret = Some(WEB_SECRET.into());
    config.webhooks.insert(
        "crm".into(),
        WebhookSettings {
            callback_url: Some(callback_url),
            secret: Some(SECRET.into()),
            replay_window_secs: Some(60),
        },
    );
    config
        .webhooks
        .insert("open".into(), WebhookSettings::default());
    tweak(&mut config);
    let kept = config.clone();
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<Running>();
    let s = stop.clone();
    let mut server = flowbot_server::run::Server::new(config);
    if let Some(listener) = listener {
        server = server.listener(listener).expect("the listener's address");
    }
    let task = tokio::spawn(async move { server.run(s, Some(tx)).await.expect("server ran") });
    let running = rx.await.expect("server started");
    Server {
        base: format!("http://{}", running.addr),
        admin: running.admin.map(|a| format!("http://{a}")),
        ws: format!("ws://{}", running.addr),
        stop,
        task,
        callbacks,
        config: kept,
        _dir: dir,
    }
}

pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let v: Value = res.json().await.expect("problem JSON");
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string() && v["type"].is_string());
    v
}

pub async fn next_frame(
    ws: &mut (impl StreamExt<Item = Result<Ws, tokio_tungstenite::tungstenite::Error>> + Unpin),
    kind: &str,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        if let Ws::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// A web chat socket.
pub type Chat =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A visitor token for `user` in `conversation` of the `web` channel, as the server would
/// have issued it.
pub fn visitor_token(user: &str, conversation: &str) -> String {
    flowbot_channels::web::sign_token(
        WEB_SECRET.as_bytes(),
        "web",
        user,
        conversation,
        chrono::Utc::now().timestamp(),
    )
}

/// The web chat URL of `s` for `user` in `conversation`, with their visitor token.
pub fn chat_url(s: &Server, user: &str, conversation: &str) -> String {
    format!(
        "{}/ws/chat?token={}",
        s.ws,
        visitor_token(user, conversation)
    )
}

/// Open web chat on `s` as `user` in `conversation`, past the welcome and history frames.
pub async fn chat(s: &Server, user: &str, conversation: &str) -> Chat {
    chat_at(&s.ws, user, conversation).await
}

/// [`chat`] on the server at `ws` (`ws://host:port`).
pub async fn chat_at(ws: &str, user: &str, conversation: &str) -> Chat {
    let url = format!("{ws}/ws/chat?token={}", visitor_token(user, conversation));
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    next_frame(&mut socket, "history").await;
    socket
}

/// Say `text` on `ws`; the next message frame.
pub async fn say(ws: &mut Chat, text: &str) -> Value {
    ws.send(Ws::text(
        json!({"type": "message", "text": text}).to_string(),
    ))
    .await
    .expect("send");
    next_frame(ws, "message").await
}
