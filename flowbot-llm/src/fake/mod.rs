//! A fake provider on 127.0.0.1 that speaks all four wire dialects (OpenAI Chat Completions,
//! OpenAI Responses, Anthropic Messages, Gemini), answering from scripted [`Turn`]s. It is
//! written from each provider's published API reference, checks the requests it gets the way
//! the provider would, and can misbehave the ways real streams do: arguments split at any
//! byte, dropped connections, stalls, 429 with `Retry-After`, overload, oversized answers.
//!
//! Enabled by the `test-util` feature, so applications can test their own bots with it.
//!
//! ```no_run
//! # async fn demo() {
//! use flowbot_llm::fake::{FakeProvider, Reply, Turn};
//! use flowbot_llm::Dialect;
//! let fake = FakeProvider::start().await.unwrap();
//! fake.push(Turn::Reply(Reply::text("Hello!")));
//! let config = fake.config(Dialect::Anthropic, "claude-test");
//! let model = flowbot_llm::connect(&config).unwrap();
//! # }
//! ```

#[cfg(feature = "anthropic")]
mod anthropic;
#[cfg(feature = "gemini")]
mod gemini;
#[cfg(feature = "openai")]
mod openai;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use flowbot_core::llm::{FinishReason, Usage};
use serde_json::Value;

use crate::config::{Dialect, ProviderConfig};

/// The key the fake expects unless told otherwise.
pub const FAKE_KEY: &str = "fake-key";

/// A tool call the fake model makes.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCall {
    /// The call's id.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as JSON text (sent as is, even when it is not valid JSON).
    pub arguments: String,
}

/// What the fake model answers in one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Visible text.
    pub text: String,
    /// Reasoning text, sent in the dialect's reasoning events.
    pub reasoning: Option<String>,
    /// Tool calls, sent as parallel calls.
    pub calls: Vec<FakeCall>,
    /// Token counts to report.
    pub usage: Usage,
    /// Why it stops; `None` sends no finish reason at all (a stream that ends at `[DONE]`).
    pub finish: Option<FinishReason>,
    /// Characters per text delta and per argument fragment (at least 1).
    pub delta_chars: usize,
    /// An in-band error event after the content (Anthropic's `error` event, an OpenAI
    /// `error` chunk): its type (`overloaded_error`, …) and message.
    pub error_event: Option<(String, String)>,
    /// Send a keep-alive before the content (Anthropic `ping`, SSE comments elsewhere).
    pub ping: bool,
}

impl Reply {
    /// A text answer that ends normally.
    pub fn text(text: impl Into<String>) -> Self {
        let text = text.into();
        Reply {
            usage: Usage {
                input_tokens: 10,
                output_tokens: text.split_whitespace().count() as u64 + 1,
                ..Usage::default()
            },
            text,
            reasoning: None,
            calls: Vec::new(),
            finish: Some(FinishReason::Stop),
            delta_chars: 4,
            error_event: None,
            ping: false,
        }
    }

    /// An answer that calls tools: `(name, arguments JSON)` each, with ids `call_1`, ….
    pub fn calls<'a>(calls: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        let calls: Vec<FakeCall> = calls
            .into_iter()
            .enumerate()
            .map(|(i, (name, args))| FakeCall {
                id: format!("call_{}", i + 1),
                name: name.to_owned(),
                arguments: args.to_string(),
            })
            .collect();
        Reply {
            finish: Some(FinishReason::ToolCalls),
            calls,
            ..Reply::text("")
        }
    }
}

/// One scripted answer to one request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Turn {
    /// Stream this reply.
    Reply(Reply),
    /// Answer with an error status and the dialect's error body.
    Status {
        /// The HTTP status (429, 503, 529, 401, 400, …).
        status: u16,
        /// The error message in the body.
        message: String,
        /// A `Retry-After` header value.
        retry_after: Option<String>,
    },
    /// Stream the reply but close the connection after this many bytes of body.
    Drop {
        /// The reply that is cut.
        reply: Reply,
        /// Bytes sent before the connection drops.
        after_bytes: usize,
    },
    /// Stream the reply but fall silent for `pause` after this many bytes.
    Stall {
        /// The reply.
        reply: Reply,
        /// Bytes sent before the pause.
        after_bytes: usize,
        /// How long nothing is sent.
        pause: Duration,
    },
    /// Send this body as it is (`text/event-stream`), e.g. malformed SSE.
    Raw(String),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    /// The dialect, from the route.
    pub dialect: Dialect,
    /// The route's path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The model named in the body or path.
    pub model: String,
    /// The request body.
    pub body: Value,
    /// The query parameters, decoded, in order (Azure's `api-version`, Gemini's `alt`).
    pub query: Vec<(String, String)>,
    /// The headers, names in lower case; the key headers (`authorization`, `api-key`,
    /// `x-api-key`, `x-goog-api-key`) are present with the value `[redacted]`.
    pub headers: std::collections::BTreeMap<String, String>,
}

type Responder = Arc<dyn Fn(&FakeRequest) -> Turn + Send + Sync>;

#[derive(Default)]
struct Shared {
    turns: VecDeque<Turn>,
    requests: Vec<FakeRequest>,
    responder: Option<Responder>,
    key: Option<String>,
    /// Largest write, in bytes; 0 writes each body in one piece.
    chunk_bytes: usize,
}

/// The fake provider. Dropping it stops the server.
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    _server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self._server.abort();
    }
}

impl FakeProvider {
    /// Start on a free port of 127.0.0.1, expecting the key [`FAKE_KEY`].
    pub async fn start() -> std::io::Result<FakeProvider> {
        let shared = Arc::new(Mutex::new(Shared {
            key: Some(FAKE_KEY.to_owned()),
            ..Shared::default()
        }));
        let app = axum::Router::new()
            .route("/v1/models", axum::routing::get(models))
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/responses", post(openai_responses))
            .route("/v1/embeddings", post(openai_embeddings))
            .route("/v1/messages", post(anthropic_messages))
            .route("/v1beta/models/{call}", post(gemini_call))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "fake provider stopped");
            }
        });
        Ok(FakeProvider {
            addr,
            shared,
            _server: server,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A provider config for `dialect` and `model` pointing here, with the right key.
    pub fn config(&self, dialect: Dialect, model: &str) -> ProviderConfig {
        let version = match dialect {
            Dialect::Gemini => "v1beta",
            _ => "v1",
        };
        let mut c =
            ProviderConfig::new(dialect, model).base_url(format!("http://{}/{version}", self.addr));
        c.api_key = self.lock().key.clone();
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a turn: requests are answered in order.
    pub fn push(&self, turn: Turn) {
        self.lock().turns.push_back(turn);
    }

    /// Answer every request (once the queue is empty) with `f`.
    pub fn respond_with(&self, f: impl Fn(&FakeRequest) -> Turn + Send + Sync + 'static) {
        self.lock().responder = Some(Arc::new(f));
    }

    /// Expect this key (`None`: any or none).
    pub fn expect_key(&self, key: Option<&str>) {
        self.lock().key = key.map(str::to_owned);
    }

    /// Write bodies in random pieces of 1 to `max` bytes (0: whole), so that events,
    /// JSON and UTF-8 sequences are cut at arbitrary places.
    pub fn chunked(&self, max: usize) {
        self.lock().chunk_bytes = max;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.lock().requests.clone()
    }

    /// Scripted turns not yet used.
    pub fn pending(&self) -> usize {
        self.lock().turns.len()
    }
}

/// What one dialect's wire looks like, for the fake.
pub(crate) trait Wire: Sync {
    /// Check a request body as the provider would; `Err` is the 400's message.
    fn check(&self, body: &Value) -> Result<(), String>;
    /// The SSE body that streams `reply` for `model`.
    fn stream(&self, reply: &Reply, model: &str) -> String;
    /// The JSON error body for `status` with `message`.
    fn error(&self, status: u16, message: &str) -> Value;
}

type Sh = State<Arc<Mutex<Shared>>>;

/// The models this fake serves (`GET /v1/models`, OpenAI's list shape): `fake-model` only.
async fn models() -> Response {
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "flowbot"}]
    }))
    .into_response()
}

async fn openai_chat(
    State(s): Sh,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[cfg(feature = "openai")]
    {
        serve(
            &s,
            &headers,
            q.as_deref(),
            body,
            Dialect::Openai,
            "/v1/chat/completions",
            None,
            &openai::Chat,
        )
        .await
    }
    #[cfg(not(feature = "openai"))]
    not_built(&s, &headers, q.as_deref(), body, "openai")
}

async fn openai_responses(
    State(s): Sh,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[cfg(feature = "openai")]
    {
        serve(
            &s,
            &headers,
            q.as_deref(),
            body,
            Dialect::OpenaiResponses,
            "/v1/responses",
            None,
            &openai::Responses,
        )
        .await
    }
    #[cfg(not(feature = "openai"))]
    not_built(&s, &headers, q.as_deref(), body, "openai")
}

async fn openai_embeddings(
    State(s): Sh,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[cfg(feature = "openai")]
    {
        let body = match start(
            &s,
            &headers,
            q.as_deref(),
            &body,
            Dialect::Openai,
            "/v1/embeddings",
            None,
            &openai::Chat,
        ) {
            Ok((_, body)) => body,
            Err(r) => return r,
        };
        match openai::embeddings(&body) {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => error(&openai::Chat, 400, &e, None),
        }
    }
    #[cfg(not(feature = "openai"))]
    not_built(&s, &headers, q.as_deref(), body, "openai")
}

async fn anthropic_messages(
    State(s): Sh,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[cfg(feature = "anthropic")]
    {
        serve(
            &s,
            &headers,
            q.as_deref(),
            body,
            Dialect::Anthropic,
            "/v1/messages",
            None,
            &anthropic::Messages,
        )
        .await
    }
    #[cfg(not(feature = "anthropic"))]
    not_built(&s, &headers, q.as_deref(), body, "anthropic")
}

async fn gemini_call(
    State(s): Sh,
    Path(call): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    #[cfg(feature = "gemini")]
    {
        let path = format!("/v1beta/models/{call}");
        let Some((model, method)) = call.split_once(':') else {
            return error(
                &gemini::Gemini,
                404,
                &format!("no method in '{call}'"),
                None,
            );
        };
        match method {
            "streamGenerateContent" => {
                serve(
                    &s,
                    &headers,
                    q.as_deref(),
                    body,
                    Dialect::Gemini,
                    &path,
                    Some(model),
                    &gemini::Gemini,
                )
                .await
            }
            "batchEmbedContents" => {
                let body = match start(
                    &s,
                    &headers,
                    q.as_deref(),
                    &body,
                    Dialect::Gemini,
                    &path,
                    Some(model),
                    &gemini::Gemini,
                ) {
                    Ok((_, body)) => body,
                    Err(r) => return r,
                };
                match gemini::embeddings(&body) {
                    Ok(v) => axum::Json(v).into_response(),
                    Err(e) => error(&gemini::Gemini, 400, &e, None),
                }
            }
            other => error(
                &gemini::Gemini,
                404,
                &format!("unknown method '{other}'"),
                None,
            ),
        }
    }
    #[cfg(not(feature = "gemini"))]
    {
        let _ = call;
        not_built(&s, &headers, q.as_deref(), body, "gemini")
    }
}

#[allow(dead_code)]
fn not_built(
    _: &Arc<Mutex<Shared>>,
    _: &HeaderMap,
    _: Option<&str>,
    _: Bytes,
    feature: &str,
) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("the fake provider was built without the '{feature}' feature"),
    )
        .into_response()
}

fn error(wire: &dyn Wire, status: u16, message: &str, retry_after: Option<&str>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, axum::Json(wire.error(status, message))).into_response();
    if let Some(v) = retry_after.and_then(|v| v.parse().ok()) {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    r
}

/// Check the key and the body, and record the request. The error is the answer to send.
#[allow(clippy::too_many_arguments, clippy::result_large_err)]
fn start(
    shared: &Arc<Mutex<Shared>>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &Bytes,
    dialect: Dialect,
    path: &str,
    path_model: Option<&str>,
    wire: &dyn Wire,
) -> Result<(FakeRequest, Value), Response> {
    let expected = shared.lock().unwrap_or_else(|p| p.into_inner()).key.clone();
    if let Some(key) = expected {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let given = match dialect {
            Dialect::Openai | Dialect::OpenaiResponses => header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .or_else(|| header("api-key")),
            Dialect::Anthropic => header("x-api-key"),
            Dialect::Gemini => header("x-goog-api-key"),
        };
        if given != Some(key.as_str()) {
            return Err(error(wire, 401, "invalid API key", None));
        }
    }
    if dialect == Dialect::Anthropic && headers.get("anthropic-version").is_none() {
        return Err(error(
            wire,
            400,
            "anthropic-version: header is required",
            None,
        ));
    }
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| error(wire, 400, &format!("the body is not JSON: {e}"), None))?;
    let model = match path_model {
        Some(m) => m.to_owned(),
        None => match json.get("model").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None => return Err(error(wire, 400, "model: field required", None)),
        },
    };
    let request = FakeRequest {
        dialect,
        path: path.to_owned(),
        model,
        body: json.clone(),
        query: query
            .map(|q| {
                reqwest::Url::parse(&format!("http://fake/?{q}"))
                    .map(|u| u.query_pairs().into_owned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                let name = name.as_str().to_ascii_lowercase();
                let value = match name.as_str() {
                    "authorization" | "api-key" | "x-api-key" | "x-goog-api-key" => {
                        "[redacted]".to_owned()
                    }
                    _ => String::from_utf8_lossy(value.as_bytes()).into_owned(),
                };
                (name, value)
            })
            .collect(),
    };
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .push(request.clone());
    Ok((request, json))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Mutex<Shared>>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Bytes,
    dialect: Dialect,
    path: &str,
    path_model: Option<&str>,
    wire: &dyn Wire,
) -> Response {
    let (request, json) = match start(
        shared, headers, query, &body, dialect, path, path_model, wire,
    ) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(e) = wire.check(&json) {
        return error(wire, 400, &e, None);
    }
    let (turn, chunk) = {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        let turn = s
            .turns
            .pop_front()
            .or_else(|| s.responder.as_ref().map(|f| f(&request)));
        (turn, s.chunk_bytes)
    };
    let Some(turn) = turn else {
        return error(
            wire,
            500,
            "the fake provider has no scripted turn left",
            None,
        );
    };
    let (body, cut, stall) = match turn {
        Turn::Reply(r) => (wire.stream(&r, &request.model), None, None),
        Turn::Raw(body) => (body, None, None),
        Turn::Status {
            status,
            message,
            retry_after,
        } => return error(wire, status, &message, retry_after.as_deref()),
        Turn::Drop { reply, after_bytes } => {
            (wire.stream(&reply, &request.model), Some(after_bytes), None)
        }
        Turn::Stall {
            reply,
            after_bytes,
            pause,
        } => (
            wire.stream(&reply, &request.model),
            None,
            Some((after_bytes, pause)),
        ),
    };
    sse_response(body.as_bytes(), chunk, cut, stall)
}

/// Stream `body` in pieces: random sizes up to `chunk` (0: whole), cut off after `cut`
/// bytes (the connection drops), or paused after `stall.0` bytes.
fn sse_response(
    body: &[u8],
    chunk: usize,
    cut: Option<usize>,
    stall: Option<(usize, Duration)>,
) -> Response {
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let end = cut.map_or(body.len(), |c| c.min(body.len()));
    let mut at = 0;
    let stall_at = stall.map(|(b, _)| b.min(end));
    while at < end {
        let mut n = if chunk == 0 {
            end - at
        } else {
            fastrand::usize(1..=chunk)
        };
        if let Some(s) = stall_at.filter(|s| *s > at) {
            n = n.min(s - at);
        }
        let n = n.min(end - at);
        pieces.push(body[at..at + n].to_vec());
        at += n;
    }
    let dropped = cut.is_some();
    let stream = async_stream_of(pieces, stall, dropped);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn async_stream_of(
    pieces: Vec<Vec<u8>>,
    stall: Option<(usize, Duration)>,
    dropped: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = (pieces.into_iter(), 0usize, stall, dropped, false);
    futures_util::stream::unfold(state, |(mut it, sent, stall, dropped, over)| async move {
        if over {
            return None;
        }
        match it.next() {
            Some(piece) => {
                if let Some((at, pause)) = stall
                    && sent >= at
                {
                    tokio::time::sleep(pause).await;
                    let n = sent + piece.len();
                    return Some((Ok(Bytes::from(piece)), (it, n, None, dropped, false)));
                }
                let n = sent + piece.len();
                Some((Ok(Bytes::from(piece)), (it, n, stall, dropped, false)))
            }
            // An error ends the body without its terminating chunk: the client sees the
            // connection drop.
            None if dropped => Some((
                Err(std::io::Error::other("connection dropped by the fake")),
                (it, sent, None, dropped, true),
            )),
            None => None,
        }
    })
}
