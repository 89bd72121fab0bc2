//! Web chat: a page at `/chat` and a WebSocket at `/ws/chat`.
//!
//! Frames are JSON text. Client → server: `{"type":"message","text":"…"}` and
//! `{"type":"button","value":"…"}`. Server → client: `welcome` (conversation, user, and for
//! an anonymous visitor the token that resumes them; see [identity]),
//! `history` (the conversation so far), `typing`, `partial`
//! (`{"type":"partial","draft":"…","text":"…","conversation":"…","format":…}`: the text so
//! far of an answer still being written), `message`
//! (`{"type":"message","text":"…","conversation":"…","format":…,"buttons":[…],"draft":"…"}`,
//! `draft` naming the partial answer it completes, if any) and `error`
//! (`{"type":"error","detail":"…"}`).
//!
//! An answer shown while it is written ([`Draft`](flowbot_core::Draft)) reaches the browser as
//! `partial` frames, each with the whole text so far (a socket that falls behind gets only the
//! newest), then as the final `message` naming the same draft; only the final text is stored.
//!
//! Who is connecting ([identity]): an anonymous visitor presents the token of an earlier
//! `welcome` (`/ws/chat?token=…`) to resume their conversation, and gets new ids without
//! one; a site embedding the chat can pass its own signed identity instead
//! (`/ws/chat?identity=<JWT>`) when [`WebChat::with_identity`] was given a verifier for it.
//! `user` and `conversation` in the query never choose ids on their own: without a token for
//! exactly that pair they get a new identity (the `welcome` frame's `refused` says why).
//!
//! Replies reach the browser through the store's [`Bus`](flowbot_core::Bus): whichever process sends a message
//! to a web conversation (a server's pipeline, an agent delivering a reminder) publishes it,
//! and every server forwards it to its own sockets of that conversation. Without a store the
//! channel delivers to this process's sockets directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use flowbot_core::store::Direction;
use flowbot_core::{
    Button, Capabilities, Channel, ChannelListener, ChannelName, ChannelSender, ChannelStore,
    ConversationId, Error, Event, Format, Inbox, Interaction, Message, MessageId, Outbound, Result,
    Role, Sender, SentId, Streaming, Target, UserId,
};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::problem::Problem;

pub mod identity;
mod settings;
pub use identity::{ChatIdentity, sign_token};
pub use settings::{HostIdentitySettings, WebSettings};

/// The chat page.
pub const CHAT_PAGE: &str = include_str!("web/chat.html");

/// Longest message text accepted from a browser, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;

/// Largest WebSocket frame accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// How many earlier messages a new connection is shown.
pub const HISTORY_LIMIT: usize = 50;

/// The shortest time between two `partial` frames of one answer: smooth to read, and a few
/// bus messages a second rather than one per generated token.
pub const PARTIAL_INTERVAL: Duration = Duration::from_millis(50);

/// The web chat channel; see the [module docs](self).
#[derive(Clone)]
pub struct WebChat {
    state: Arc<WebState>,
}

impl std::fmt::Debug for WebChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebChat")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

/// Open sockets by conversation.
type Sockets = HashMap<ConversationId, Vec<SocketTx>>;

/// The way to one open socket: its frames in order, and the newest partial answer, which
/// replaces one the socket has not sent yet.
#[derive(Clone)]
struct SocketTx {
    id: u64,
    frames: mpsc::Sender<ServerFrame>,
    partial: Arc<PartialSlot>,
}

#[derive(Default)]
struct PartialSlot {
    newest: Mutex<Option<ServerFrame>>,
    ready: tokio::sync::Notify,
}

impl PartialSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ServerFrame>> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct WebState {
    name: ChannelName,
    topic: String,
    /// The bus topic of partial answers.
    partial_topic: String,
    store: Option<Arc<dyn ChannelStore>>,
    inbox: RwLock<Option<Inbox>>,
    sockets: Mutex<Sockets>,
    next_socket: AtomicU64,
    closing: CancellationToken,
    open: AtomicU64,
    listening: tokio::sync::watch::Sender<bool>,
    identity: RwLock<Arc<ChatIdentity>>,
    /// Most open sockets per client address (0: no limit), and the open ones by address.
    per_address: AtomicU64,
    by_address: Mutex<HashMap<std::net::IpAddr, u64>>,
}

/// The client's address, as the server in front of the channel determined it (behind a
/// trusted proxy, the address it forwarded for): put in the request's extensions, it is what
/// [`WebChat::max_sockets_per_address`] counts. Without it, the connection's peer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub std::net::IpAddr);

/// One open socket of a client address; dropping it frees the place.
struct AddressSlot {
    state: Arc<WebState>,
    address: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .state
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl WebState {
    /// A place for one more socket of `address`, unless it holds its most already (loopback
    /// clients are not counted).
    fn take_slot(
        self: &Arc<Self>,
        address: Option<std::net::IpAddr>,
    ) -> std::result::Result<Option<AddressSlot>, u64> {
        let most = self.per_address.load(Ordering::Relaxed);
        let Some(address) = address.filter(|a| most > 0 && !a.is_loopback()) else {
            return Ok(None);
        };
        let mut open = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(address).or_insert(0);
        if *n >= most {
            return Err(most);
        }
        *n += 1;
        Ok(Some(AddressSlot {
            state: self.clone(),
            address,
        }))
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Sent once after connecting.
    Welcome {
        /// Conversation id.
        conversation: String,
        /// User id.
        user: String,
        /// `visitor` (an anonymous visitor) or `host` (an identity signed by the host site).
        identity: &'static str,
        /// A visitor's token for this user and conversation, newly issued: present it as
        /// `token` when connecting again.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Why the identity asked for was not given (these are new ids).
        #[serde(skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// The conversation so far, oldest first.
    History {
        /// Messages.
        messages: Vec<HistoryEntry>,
    },
    /// The bot is working on an answer.
    Typing,
    /// The text so far of an answer still being written.
    Partial {
        /// The draft's id; the final [`ServerFrame::Message`] names it.
        draft: String,
        /// The whole text so far.
        text: String,
        /// Conversation id.
        conversation: String,
        /// Text format.
        format: Format,
    },
    /// A bot message.
    Message {
        /// Text.
        text: String,
        /// Conversation id.
        conversation: String,
        /// Text format.
        format: Format,
        /// Buttons.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        buttons: Vec<Button>,
        /// The draft (shown with `partial` frames) this message completes.
        #[serde(skip_serializing_if = "Option::is_none")]
        draft: Option<String>,
    },
    /// Something the client sent was refused.
    Error {
        /// What was wrong.
        detail: String,
    },
}

/// One message of a [`ServerFrame::History`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// `user` or `bot`.
    pub from: &'static str,
    /// Text.
    pub text: String,
    /// When it was stored (RFC 3339).
    pub at: String,
    /// Buttons of a bot message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
}

/// Frames the client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Message { text: String },
    Button { value: String },
}

#[derive(Debug, Deserialize)]
struct ConnectParams {
    user: Option<String>,
    conversation: Option<String>,
    token: Option<String>,
    identity: Option<String>,
}

/// Who a socket speaks for.
struct Who {
    user: UserId,
    conversation: ConversationId,
    name: Option<String>,
    kind: &'static str,
    token: Option<String>,
    refused: Option<String>,
}

impl WebChat {
    /// A web chat channel named `name`. With a store, history is shown on connect and replies
    /// travel over the store's bus (so any server or agent can reach any browser).
    ///
    /// Visitor tokens are signed with a random secret of this process
    /// ([`ChatIdentity::random`]) until [`with_identity`](Self::with_identity) says otherwise.
    pub fn new(name: &str, store: Option<Arc<dyn ChannelStore>>) -> Self {
        WebChat {
            state: Arc::new(WebState {
                name: ChannelName::from(name),
                topic: format!("web:{name}"),
                partial_topic: format!("web:{name}:partial"),
                store,
                inbox: RwLock::new(None),
                sockets: Mutex::new(HashMap::new()),
                next_socket: AtomicU64::new(1),
                closing: CancellationToken::new(),
                open: AtomicU64::new(0),
                listening: tokio::sync::watch::channel(false).0,
                identity: RwLock::new(Arc::new(ChatIdentity::random())),
                per_address: AtomicU64::new(0),
                by_address: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Identify visitors with `identity` (a shared secret for visitor tokens, and a verifier
    /// of host-signed identities, if any); checked with [`ChatIdentity::validate`].
    pub fn with_identity(self, identity: ChatIdentity) -> std::result::Result<Self, crate::Error> {
        identity
            .validate()
            .map_err(|detail| crate::Error::settings(self.state.name.to_string(), detail))?;
        *self
            .state
            .identity
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(identity);
        Ok(self)
    }

    /// Accept at most `most` open sockets per client address (0, the default: no limit);
    /// one more is refused with 429. Loopback clients are not counted.
    pub fn max_sockets_per_address(self, most: u64) -> Self {
        self.state.per_address.store(most, Ordering::Relaxed);
        self
    }

    /// The channel to register with the bot (sender and listener).
    pub fn channel(&self) -> Channel {
        Channel::from_parts(
            self.state.name.clone(),
            Arc::new(WebSender(self.state.clone())),
            Some(Arc::new(WebListener(self.state.clone()))),
        )
    }

    /// Send-only channel for processes without sockets (agents): replies go over the bus.
    pub fn sender_only(&self) -> Channel {
        Channel::from_parts(
            self.state.name.clone(),
            Arc::new(WebSender(self.state.clone())),
            None,
        )
    }

    /// Routes: `GET /chat` and `GET /ws/chat`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/chat", get(page))
            .route("/ws/chat", get(connect))
            .with_state(self.state.clone())
    }

    /// Resolves once the bot runs this channel's listener, so browsers can connect (serve
    /// HTTP after this, or early connections get 503).
    pub async fn listening(&self) {
        let mut rx = self.state.listening.subscribe();
        // The sender lives in our own state, so the channel cannot close while we wait.
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Open WebSocket connections in this process.
    pub fn open_sockets(&self) -> u64 {
        self.state.open.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl crate::ChannelSpec for WebChat {
    /// The channel and its routes, served once its listener runs; with
    /// [`Setup::send_only`](crate::Setup::send_only), [`sender_only`](WebChat::sender_only).
    /// The chat keeps the store it was made with.
    async fn build(&self, setup: &crate::Setup) -> std::result::Result<crate::Built, crate::Error> {
        if !setup.receives() {
            return Ok(crate::Built::new(self.sender_only()));
        }
        let web = self.clone();
        Ok(crate::Built::new(self.channel())
            .routes(self.router())
            .ready_when(async move { web.listening().await }))
    }
}

impl WebState {
    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Push an outbound message to this process's sockets of its conversation.
    fn deliver_local(&self, out: &Outbound) -> usize {
        let Some(target) = &out.target else { return 0 };
        let draft = out.draft.as_ref().map(|d| d.id.clone());
        let frame = ServerFrame::Message {
            text: out.text.clone(),
            conversation: target.conversation.to_string(),
            format: out.format,
            buttons: out.buttons.clone(),
            draft: draft.clone(),
        };
        let sockets = self.lock_sockets();
        let mut n = 0;
        for tx in sockets.get(&target.conversation).into_iter().flatten() {
            if let Some(id) = &draft {
                // The final text replaces the draft: a partial not sent yet is stale.
                let mut newest = tx.partial.lock();
                if matches!(&*newest, Some(ServerFrame::Partial { draft, .. }) if draft == id) {
                    *newest = None;
                }
            }
            match tx.frames.try_send(frame.clone()) {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(conversation = %target.conversation, error = %e, "web chat socket is not keeping up; message dropped for it")
                }
            }
        }
        n
    }

    /// Show a partial answer on this process's sockets of its conversation, replacing one
    /// they have not sent yet.
    fn deliver_partial_local(&self, partial: &Outbound) {
        let (Some(target), Some(draft)) = (&partial.target, &partial.draft) else {
            return;
        };
        let frame = ServerFrame::Partial {
            draft: draft.id.clone(),
            text: partial.text.clone(),
            conversation: target.conversation.to_string(),
            format: partial.format,
        };
        let sockets = self.lock_sockets();
        for tx in sockets.get(&target.conversation).into_iter().flatten() {
            *tx.partial.lock() = Some(frame.clone());
            tx.partial.ready.notify_one();
        }
    }
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        Html(CHAT_PAGE),
    )
        .into_response()
}

async fn connect(
    State(state): State<Arc<WebState>>,
    client: Option<axum::Extension<ClientAddress>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    params: std::result::Result<Query<ConnectParams>, axum::extract::rejection::QueryRejection>,
    ws: std::result::Result<
        WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return Problem::bad_request(format!("not a WebSocket upgrade request: {e}"))
                .into_response();
        }
    };
    let Ok(Query(params)) = params else {
        return Problem::bad_request("malformed query string").into_response();
    };
    for (what, v) in [
        ("user", &params.user),
        ("conversation", &params.conversation),
    ] {
        if v.as_deref().is_some_and(|v| !crate::valid_id(v, 64)) {
            return Problem::bad_request(format!(
                "{what} must be 1-64 characters of A-Z a-z 0-9 _ - . : @"
            ))
            .into_response();
        }
    }
    if state
        .inbox
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_none()
    {
        return Problem::unavailable("the web chat channel is not running").into_response();
    }
    let address = client.map(|c| c.0.0).or(peer.map(|p| p.0.0.ip()));
    let slot = match state.take_slot(address) {
        Ok(slot) => slot,
        Err(most) => {
            return Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("at most {most} chat connections from one address"),
            )
            .into_response();
        }
    };
    let who = identify(&state, params).await;
    // Small buffers: an idle chat costs a few KiB instead of tungstenite's 128 KiB default
    // read buffer, and frames are written at once (chat frames are small and latency-bound).
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            match who {
                Ok(who) => session(state, socket, who).await,
                Err(detail) => refuse(socket, detail).await,
            }
        })
}

/// Who the connection speaks for: the host-signed identity (or why it was refused), the
/// visitor of a valid token for the ids asked for, or else a new visitor.
async fn identify(state: &WebState, params: ConnectParams) -> std::result::Result<Who, String> {
    let identity = state
        .identity
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(jwt) = params.identity {
        let host = identity.host_user(&jwt).await.map_err(|e| e.to_string())?;
        return Ok(Who {
            conversation: ConversationId(host.user.clone()),
            user: UserId(host.user),
            name: host.name,
            kind: "host",
            token: None,
            refused: None,
        });
    }
    let channel = state.name.as_str();
    let refused = match params.token.as_deref().map(|t| identity.check(channel, t)) {
        Some(Ok((user, conversation)))
            if params.user.as_ref().is_none_or(|u| *u == user)
                && params
                    .conversation
                    .as_ref()
                    .is_none_or(|c| *c == conversation) =>
        {
            return Ok(Who {
                token: Some(identity.issue(channel, &user, &conversation)),
                user: UserId(user),
                conversation: ConversationId(conversation),
                name: None,
                kind: "visitor",
                refused: None,
            });
        }
        Some(Ok(_)) => Some("the chat token is for another user or conversation".to_owned()),
        Some(Err(e)) => Some(e.to_string()),
        None if params.user.is_some() || params.conversation.is_some() => {
            Some("no chat token for that user and conversation".to_owned())
        }
        None => None,
    };
    let user = uuid::Uuid::new_v4().simple().to_string();
    Ok(Who {
        token: Some(identity.issue(channel, &user, &user)),
        conversation: ConversationId(user.clone()),
        user: UserId(user),
        name: None,
        kind: "visitor",
        refused: refused.map(|r| format!("{r}; this is a new conversation")),
    })
}

/// Tell the browser why its identity was refused, and close (1008, policy violation).
async fn refuse(mut socket: WebSocket, detail: String) {
    let frame = ServerFrame::Error { detail };
    if socket.send(frame_text(&frame)).await.is_ok() {
        let _ = socket
            .send(WsMessage::Close(Some(CloseFrame {
                code: 1008,
                reason: Utf8Bytes::from_static("identity refused"),
            })))
            .await;
    }
}

async fn history(state: &WebState, conversation: &ConversationId) -> Vec<HistoryEntry> {
    let Some(store) = &state.store else {
        return Vec::new();
    };
    let mut all = Vec::new();
    let mut cursor = None;
    // Walk at most 10 pages of 100; keep the newest HISTORY_LIMIT.
    for _ in 0..10 {
        match store
            .list_messages(&state.name, conversation, cursor.as_deref(), 100)
            .await
        {
            Ok(page) => {
                all.extend(page.items);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading chat history failed");
                break;
            }
        }
    }
    let skip = all.len().saturating_sub(HISTORY_LIMIT);
    all.into_iter()
        .skip(skip)
        .map(|m| HistoryEntry {
            from: if m.direction == Direction::Inbound {
                "user"
            } else {
                "bot"
            },
            buttons: serde_json::from_value::<Outbound>(m.body.clone())
                .map(|o| o.buttons)
                .unwrap_or_default(),
            text: m.text,
            at: m.at.to_rfc3339(),
        })
        .collect()
}

fn frame_text(frame: &ServerFrame) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(
        serde_json::to_string(frame).unwrap_or_default(),
    ))
}

async fn session(state: Arc<WebState>, socket: WebSocket, who: Who) {
    let Who {
        user,
        conversation,
        name,
        kind,
        token,
        refused,
    } = who;
    let id = state.next_socket.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(256);
    let partial = Arc::new(PartialSlot::default());
    state
        .lock_sockets()
        .entry(conversation.clone())
        .or_default()
        .push(SocketTx {
            id,
            frames: tx.clone(),
            partial: partial.clone(),
        });
    state.open.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();

    let welcome = ServerFrame::Welcome {
        conversation: conversation.to_string(),
        user: user.to_string(),
        identity: kind,
        token,
        refused,
    };
    let messages = history(&state, &conversation).await;
    let mut ok = sink.send(frame_text(&welcome)).await.is_ok()
        && sink
            .send(frame_text(&ServerFrame::History { messages }))
            .await
            .is_ok();
    while ok {
        tokio::select! {
            () = state.closing.cancelled() => {
                let _ = sink.send(WsMessage::Close(Some(CloseFrame { code: 1001, reason: Utf8Bytes::from_static("server shutting down") }))).await;
                break;
            }
            frame = rx.recv() => match frame {
                Some(frame) => ok = sink.send(frame_text(&frame)).await.is_ok(),
                None => break,
            },
            () = partial.ready.notified() => {
                let newest = partial.lock().take();
                if let Some(frame) = newest {
                    ok = sink.send(frame_text(&frame)).await.is_ok();
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    if let Some(reply) = on_client_frame(&state, &user, name.as_deref(), &conversation, text.as_str()).await {
                        ok = sink.send(frame_text(&reply)).await.is_ok();
                    }
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    let e = ServerFrame::Error { detail: "binary frames are not supported; send JSON text frames".into() };
                    ok = sink.send(frame_text(&e)).await.is_ok();
                }
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "web chat socket error");
                    break;
                }
            },
        }
    }
    let mut sockets = state.lock_sockets();
    if let Some(list) = sockets.get_mut(&conversation) {
        list.retain(|tx| tx.id != id);
        if list.is_empty() {
            sockets.remove(&conversation);
        }
    }
    state.open.fetch_sub(1, Ordering::Relaxed);
}

/// Handle one client frame; returns a frame to send back (typing or an error).
async fn on_client_frame(
    state: &WebState,
    user: &UserId,
    name: Option<&str>,
    conversation: &ConversationId,
    text: &str,
) -> Option<ServerFrame> {
    let err = |detail: String| Some(ServerFrame::Error { detail });
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return err(format!(
                "malformed frame: {e}; expected {{\"type\":\"message\",\"text\":\"…\"}}"
            ));
        }
    };
    let sender = Sender {
        id: user.clone(),
        name: name.map(str::to_owned),
        roles: vec![Role::User],
    };
    let event = match frame {
        ClientFrame::Message { text } => {
            let text = text.trim();
            if text.is_empty() {
                return err("empty message".into());
            }
            let chars = text.chars().count();
            if chars > MAX_TEXT_CHARS {
                return err(format!(
                    "message is {chars} characters, over the limit of {MAX_TEXT_CHARS}"
                ));
            }
            Event::Message(Message::text(
                state.name.clone(),
                conversation.clone(),
                sender,
                text,
            ))
        }
        ClientFrame::Button { value } => {
            if value.is_empty() || value.len() > 1000 {
                return err("button value must be 1-1000 bytes".into());
            }
            Event::Interaction(Interaction {
                channel: state.name.clone(),
                conversation: conversation.clone(),
                sender,
                value,
                id: MessageId(uuid::Uuid::now_v7().to_string()),
                raw: None,
            })
        }
    };
    let inbox = state
        .inbox
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match inbox {
        Some(inbox) => match inbox.send(event).await {
            Ok(()) => Some(ServerFrame::Typing),
            Err(e) => err(format!("not accepted: {e}")),
        },
        None => err("the web chat channel is not running".into()),
    }
}

struct WebSender(Arc<WebState>);

/// `message` as bus payloads of at most [`MAX_BUS_PAYLOAD`](flowbot_core::store::MAX_BUS_PAYLOAD)
/// bytes: itself, or its text cut at character boundaries into several messages (the first
/// completes the draft, the last has the buttons and attachments), so a long answer reaches
/// every server's browsers instead of failing its delivery.
fn bus_payloads(message: &Outbound) -> std::result::Result<Vec<String>, String> {
    let max = flowbot_core::store::MAX_BUS_PAYLOAD;
    let whole = serde_json::to_string(message).map_err(|e| e.to_string())?;
    if whole.len() <= max {
        return Ok(vec![whole]);
    }
    // The text's share of the budget; JSON escapes can make a piece longer than its text,
    // so a piece that still does not fit is cut again, smaller.
    let mut budget = max.saturating_sub(whole.len().saturating_sub(message.text.len())) / 2;
    while budget >= 16 {
        let mut pieces = Vec::new();
        let mut rest = message.text.as_str();
        while !rest.is_empty() {
            let mut end = budget.min(rest.len());
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            pieces.push(&rest[..end]);
            rest = &rest[end..];
        }
        let last = pieces.len().saturating_sub(1);
        let payloads: Vec<String> = pieces
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut part = message.clone();
                part.text = (*text).to_owned();
                if i > 0 {
                    part.draft = None;
                }
                if i < last {
                    part.buttons.clear();
                    part.attachments.clear();
                }
                serde_json::to_string(&part).map_err(|e| e.to_string())
            })
            .collect::<std::result::Result<_, _>>()?;
        if payloads.iter().all(|p| p.len() <= max) {
            return Ok(payloads);
        }
        budget /= 2;
    }
    Err(format!(
        "the message cannot be cut to fit the bus ({} bytes of JSON besides its text)",
        whole.len().saturating_sub(message.text.len())
    ))
}

#[async_trait]
impl ChannelSender for WebSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        let state = &self.0;
        let id = SentId(uuid::Uuid::now_v7().to_string());
        match &state.store {
            Some(store) => {
                // A message too long for one bus payload goes as several, in order.
                for payload in bus_payloads(message)
                    .map_err(|detail| Error::channel(state.name.to_string(), detail))?
                {
                    store
                        .publish(&state.topic, &payload)
                        .await
                        .map_err(Error::from)?;
                }
            }
            None => {
                state.deliver_local(message);
            }
        }
        Ok(id)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            markdown: true,
            buttons: true,
            edit: false,
            threads: false,
            ephemeral: false,
        }
    }

    fn streaming(&self, _target: &Target) -> Streaming {
        Streaming::Partial {
            interval: PARTIAL_INTERVAL,
        }
    }

    async fn send_partial(&self, partial: &Outbound) -> Result<()> {
        let state = &self.0;
        if partial.draft.is_none() || partial.target.is_none() {
            return Err(Error::channel(
                state.name.to_string(),
                flowbot_core::Permanent::new("a partial answer needs a target and a draft"),
            ));
        }
        let Some(store) = &state.store else {
            state.deliver_partial_local(partial);
            return Ok(());
        };
        let payload = serde_json::to_string(partial)
            .map_err(|e| Error::channel(state.name.to_string(), e.to_string()))?;
        if payload.len() > flowbot_core::store::MAX_BUS_PAYLOAD {
            // Too long for the bus: this process's browsers still see it grow, the others
            // see the final message.
            state.deliver_partial_local(partial);
            return Ok(());
        }
        store
            .publish(&state.partial_topic, &payload)
            .await
            .map_err(Error::from)
    }
}

struct WebListener(Arc<WebState>);

#[async_trait]
impl ChannelListener for WebListener {
    async fn listen(&self, inbox: Inbox, shutdown: CancellationToken) -> Result<()> {
        let state = &self.0;
        let mut bus = state.store.as_ref().map(|s| s.subscribe());
        *state.inbox.write().unwrap_or_else(|p| p.into_inner()) = Some(inbox);
        state.listening.send_replace(true);
        loop {
            let msg = async {
                match bus.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                m = msg => match m {
                    Ok(m) if *m.topic == state.topic => match serde_json::from_str::<Outbound>(&m.payload) {
                        Ok(out) => { state.deliver_local(&out); }
                        Err(e) => tracing::warn!(error = %e, "malformed web chat delivery on the bus"),
                    },
                    Ok(m) if *m.topic == state.partial_topic => match serde_json::from_str::<Outbound>(&m.payload) {
                        Ok(partial) => state.deliver_partial_local(&partial),
                        Err(e) => tracing::warn!(error = %e, "malformed web chat partial answer on the bus"),
                    },
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "web chat fell behind the bus"),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        // Stop taking messages, then tell every browser we are going away.
        *state.inbox.write().unwrap_or_else(|p| p.into_inner()) = None;
        state.listening.send_replace(false);
        state.closing.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while state.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowbot_core::{DraftRef, Target};

    use super::*;

    #[test]
    fn a_long_message_is_cut_into_bus_payloads_that_fit_and_keep_its_text() {
        let max = flowbot_core::store::MAX_BUS_PAYLOAD;
        // Multi-byte characters and characters JSON escapes six-fold.
        let text: String = "héllo \u{1}\"wörld\" 🦀 ".repeat(900);
        let message = partial("d1", &text).button("OK", "ok");
        let payloads = bus_payloads(&message).expect("cut");
        assert!(payloads.len() > 1, "{}", payloads.len());
        let parts: Vec<Outbound> = payloads
            .iter()
            .map(|p| {
                assert!(p.len() <= max, "{} > {max}", p.len());
                serde_json::from_str(p).expect("an outbound")
            })
            .collect();
        let joined: String = parts.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(joined, text);
        assert!(parts[0].draft.is_some() && parts[1..].iter().all(|p| p.draft.is_none()));
        let last = parts.len() - 1;
        assert!(parts[..last].iter().all(|p| p.buttons.is_empty()));
        assert_eq!(parts[last].buttons.len(), 1);
        // A short message is one payload, as it is.
        assert_eq!(
            bus_payloads(&Outbound::text("hi")).expect("one"),
            [serde_json::to_string(&Outbound::text("hi")).expect("json")]
        );
    }

    fn partial(draft: &str, text: &str) -> Outbound {
        Outbound {
            draft: Some(DraftRef {
                id: draft.into(),
                shown: None,
            }),
            ..Outbound::text(text).to(Target {
                channel: "web".into(),
                conversation: "c1".into(),
                thread: None,
            })
        }
    }

    /// A socket that has not sent the partial answers yet gets only the newest; the final
    /// message of that draft drops a partial still waiting, and keeps another draft's.
    #[test]
    fn a_slow_socket_gets_the_newest_partial_and_never_one_after_the_message() {
        let chat = WebChat::new("web", None);
        let state = &chat.state;
        let (frames, mut queued) = mpsc::channel(8);
        let slot = Arc::new(PartialSlot::default());
        state.lock_sockets().insert(
            ConversationId::from("c1"),
            vec![SocketTx {
                id: 1,
                frames,
                partial: slot.clone(),
            }],
        );
        for text in ["Once", "Once upon", "Once upon a time"] {
            state.deliver_partial_local(&partial("d1", text));
        }
        let newest = slot.lock().take();
        assert_eq!(
            newest,
            Some(ServerFrame::Partial {
                draft: "d1".into(),
                text: "Once upon a time".into(),
                conversation: "c1".into(),
                format: Format::Plain,
            })
        );

        state.deliver_partial_local(&partial("d1", "Once upon a time,"));
        assert_eq!(state.deliver_local(&partial("d1", "The end.")), 1);
        assert!(slot.lock().is_none(), "the stale partial is dropped");
        match queued.try_recv() {
            Ok(ServerFrame::Message { text, draft, .. }) => {
                assert_eq!((text.as_str(), draft.as_deref()), ("The end.", Some("d1")));
            }
            other => panic!("expected the message, got {other:?}"),
        }

        state.deliver_partial_local(&partial("d2", "Another"));
        state.deliver_local(&partial("d1", "The end."));
        assert!(slot.lock().is_some(), "another draft's partial stays");
    }
}
