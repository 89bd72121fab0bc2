//! What every provider shares: the HTTP endpoint (base URL, headers, query, timeouts), error
//! classification by status and body, and the driver that turns a response body into typed
//! events through a dialect's [`Decoder`], with the size limit and the first-token, idle and
//! total deadlines.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use flowbot_core::llm::{ChatStream, ModelError, ModelErrorKind, StreamEvent, TimeoutKind};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::time::Instant;

/// Deadlines of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting and receiving the response headers.
    pub connect: Duration,
    /// From the request to the first event of the answer.
    pub first_token: Duration,
    /// Silence between two events.
    pub idle: Duration,
    /// The whole call.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_token: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

/// The most bytes one answer may have, by default (8 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 << 20;

/// How long an error body may be before it is cut (they are read whole).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Where and how a provider is reached. Every provider has one; its fields are set through
/// the provider's builder.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) client: reqwest::Client,
    pub(crate) base_url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_response_bytes: usize,
    /// Strings that must never leave in an error (the key).
    pub(crate) secrets: Vec<String>,
    /// The model's name for errors, logs and metrics (`provider/model`).
    pub(crate) name: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint at `base_url` (no trailing slash needed) named `name`.
    pub(crate) fn new(name: String, base_url: &str) -> Self {
        Endpoint {
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            headers: HeaderMap::new(),
            query: Vec::new(),
            timeouts: Timeouts::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            secrets: Vec::new(),
            name,
        }
    }

    /// Add a header; a secret one (a key) is marked sensitive and redacted from errors.
    pub(crate) fn header(
        &mut self,
        name: &str,
        value: &str,
        secret: bool,
    ) -> Result<(), ModelError> {
        let bad = |what: &str| {
            ModelError::new(
                ModelErrorKind::Config,
                &self.name,
                format!("header '{name}': invalid {what}"),
            )
        };
        let key = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("name"))?;
        let mut v = HeaderValue::from_str(value).map_err(|_| bad("value"))?;
        if secret {
            v.set_sensitive(true);
            if !value.is_empty() {
                self.secrets.push(value.to_owned());
            }
        }
        self.headers.insert(key, v);
        Ok(())
    }

    /// Build the shared client once the timeouts are known.
    pub(crate) fn finish(&mut self) -> Result<(), ModelError> {
        self.client = reqwest::Client::builder()
            .connect_timeout(self.timeouts.connect)
            .build()
            .map_err(|e| ModelError::new(ModelErrorKind::Config, &self.name, e.to_string()))?;
        Ok(())
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }

    fn error(&self, kind: ModelErrorKind, message: impl Into<String>) -> ModelError {
        ModelError::new(kind, &self.name, self.redact(&message.into()))
    }

    /// POST `body` as JSON to `path` and return the response once its status is a success;
    /// a failure status is classified with `classify`.
    pub(crate) async fn post(
        &self,
        path: &str,
        extra_query: &[(&str, &str)],
        body: &Value,
        classify: fn(u16, &Value, &str) -> Option<ModelErrorKind>,
    ) -> Result<reqwest::Response, ModelError> {
        let url = format!("{}{}", self.base_url, path);
        let mut request = self.client.post(&url).headers(self.headers.clone());
        // Each `.query` rewrites the URL: only when there is a query.
        if !self.query.is_empty() {
            request = request.query(&self.query);
        }
        if !extra_query.is_empty() {
            request = request.query(extra_query);
        }
        let request = request.json(body);
        let response = match tokio::time::timeout(self.timeouts.connect, request.send()).await {
            Err(_) => {
                return Err(self.error(
                    ModelErrorKind::Timeout(TimeoutKind::Connect),
                    format!("no response headers within {:?}", self.timeouts.connect),
                ));
            }
            Ok(Err(e)) => {
                let kind = if e.is_timeout() {
                    ModelErrorKind::Timeout(TimeoutKind::Connect)
                } else if e.is_builder() {
                    ModelErrorKind::Config
                } else {
                    ModelErrorKind::Connection
                };
                // reqwest's message names the URL, never headers.
                return Err(self.error(kind, e.without_url().to_string()));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = read_capped(response, MAX_ERROR_BODY).await;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = error_message(&json).unwrap_or_else(|| text.trim().to_owned());
        let kind = classify(status.as_u16(), &json, &message)
            .unwrap_or_else(|| classify_status(status.as_u16(), &message));
        Err(self
            .error(kind, message)
            .with_status(status.as_u16())
            .with_retry_after(retry_after))
    }

    /// GET `path` and read the JSON answer (model lists).
    pub(crate) async fn get_json(&self, path: &str) -> Result<Value, ModelError> {
        let url = format!("{}{}", self.base_url, path);
        let request = self
            .client
            .get(&url)
            .headers(self.headers.clone())
            .query(&self.query)
            .timeout(self.timeouts.total);
        let response = request.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                ModelErrorKind::Timeout(TimeoutKind::Total)
            } else {
                ModelErrorKind::Connection
            };
            self.error(kind, e.without_url().to_string())
        })?;
        let status = response.status();
        let text = read_capped(response, self.max_response_bytes).await;
        if !status.is_success() {
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = error_message(&json).unwrap_or_else(|| text.trim().to_owned());
            return Err(self
                .error(classify_status(status.as_u16(), &message), message)
                .with_status(status.as_u16()));
        }
        serde_json::from_str(&text).map_err(|e| {
            self.error(
                ModelErrorKind::Protocol,
                format!("the answer is not JSON: {e}"),
            )
        })
    }

    /// POST and read the whole JSON answer (embeddings, non-streaming calls).
    #[cfg_attr(not(any(feature = "openai", feature = "gemini")), allow(dead_code))]
    pub(crate) async fn post_json(
        &self,
        path: &str,
        extra_query: &[(&str, &str)],
        body: &Value,
        classify: fn(u16, &Value, &str) -> Option<ModelErrorKind>,
    ) -> Result<Value, ModelError> {
        let response = self.post(path, extra_query, body, classify).await?;
        let deadline = Instant::now() + self.timeouts.total;
        let mut body = Vec::new();
        let mut bytes = response.bytes_stream();
        loop {
            let next = tokio::time::timeout_at(deadline, bytes.next())
                .await
                .map_err(|_| {
                    self.error(
                        ModelErrorKind::Timeout(TimeoutKind::Total),
                        "the answer did not arrive in time",
                    )
                })?;
            match next {
                None => break,
                Some(Err(e)) => {
                    return Err(self.error(ModelErrorKind::Connection, e.without_url().to_string()));
                }
                Some(Ok(chunk)) => {
                    if body.len().saturating_add(chunk.len()) > self.max_response_bytes {
                        return Err(self.error(
                            ModelErrorKind::TooLarge,
                            format!("the answer is over {} bytes", self.max_response_bytes),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
        serde_json::from_slice(&body).map_err(|e| {
            self.error(
                ModelErrorKind::Protocol,
                format!("the answer is not JSON: {e}"),
            )
        })
    }

    /// POST `body` to `path` (a failure status classified with `classify`) and stream the
    /// answer's events through `decoder`.
    pub(crate) async fn stream(
        &self,
        path: &str,
        extra_query: &[(&str, &str)],
        body: &Value,
        classify: fn(u16, &Value, &str) -> Option<ModelErrorKind>,
        decoder: impl Decoder,
        keep_raw: bool,
    ) -> Result<ChatStream, ModelError> {
        let response = self.post(path, extra_query, body, classify).await?;
        let bytes = response
            .bytes_stream()
            .map(|r| r.map_err(|e| e.without_url().to_string()));
        Ok(decode(
            self.clone(),
            bytes,
            decoder,
            keep_raw,
            Instant::now(),
        ))
    }
}

/// A failed event or stream, in a dialect's words; the driver adds the model's name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodeError {
    pub(crate) kind: ModelErrorKind,
    pub(crate) message: String,
}

impl DecodeError {
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        DecodeError {
            kind: ModelErrorKind::Protocol,
            message: message.into(),
        }
    }

    /// The body ended before the dialect's terminal event, `terminal`: the answer is
    /// incomplete.
    #[cfg_attr(not(any(feature = "openai", feature = "anthropic")), allow(dead_code))]
    pub(crate) fn ended_before(terminal: &str) -> Self {
        DecodeError {
            kind: ModelErrorKind::Connection,
            message: format!("the answer ended before {terminal}"),
        }
    }
}

/// One provider dialect's stream parser: SSE events in, typed events out.
pub(crate) trait Decoder: Send + 'static {
    /// One SSE event: its `event:` name, if any, and its data.
    fn event(
        &mut self,
        name: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError>;

    /// True once the dialect's terminal event was seen: the driver stops reading.
    fn done(&self) -> bool;

    /// The body ended. Emit what is still pending (a last `Finished`), or fail when the
    /// dialect says the answer is incomplete.
    fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError>;
}

type Bytestream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Drive `decoder` over a byte stream. Public to the crate so the tests feed recorded bodies
/// through exactly the path a live response takes.
pub(crate) fn decode(
    endpoint: Endpoint,
    bytes: impl Stream<Item = Result<Bytes, String>> + Send + 'static,
    decoder: impl Decoder,
    keep_raw: bool,
    started: Instant,
) -> ChatStream {
    let limit = endpoint.max_response_bytes;
    let mut seen = 0usize;
    let capped: Bytestream = Box::pin(bytes.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            return Err(format!("{TOO_LARGE}{limit} bytes"));
        }
        Ok(chunk)
    }));
    let sse = sse_stream::SseStream::from_bytes_stream(capped.map(|r| r.map_err(BodyError)));
    let state = State {
        endpoint,
        sse: Box::pin(sse),
        decoder,
        keep_raw,
        pending: std::collections::VecDeque::new(),
        first: true,
        ended: false,
        deadline: started + Duration::ZERO,
        started,
    };
    Box::pin(futures_util::stream::unfold(state, State::next))
}

const TOO_LARGE: &str = "the answer is over ";

#[derive(Debug)]
struct BodyError(String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

type SseItems = Pin<Box<dyn Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

struct State<D> {
    endpoint: Endpoint,
    sse: SseItems,
    decoder: D,
    keep_raw: bool,
    pending: std::collections::VecDeque<StreamEvent>,
    first: bool,
    ended: bool,
    deadline: Instant,
    started: Instant,
}

impl<D: Decoder> State<D> {
    async fn next(mut self) -> Option<(Result<StreamEvent, ModelError>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended {
                return None;
            }
            match self.pull().await {
                Ok(()) => {}
                Err(e) => {
                    self.ended = true;
                    self.pending.clear();
                    return Some((Err(e), self));
                }
            }
        }
    }

    /// Read one SSE event (or the end) into `pending`.
    async fn pull(&mut self) -> Result<(), ModelError> {
        let t = self.endpoint.timeouts;
        let total = self.started + t.total;
        let (wait, kind) = if self.first {
            (t.first_token, TimeoutKind::FirstToken)
        } else {
            (t.idle, TimeoutKind::Idle)
        };
        self.deadline = Instant::now() + wait;
        let (deadline, kind) = if total < self.deadline {
            (total, TimeoutKind::Total)
        } else {
            (self.deadline, kind)
        };
        let mut out = Vec::new();
        let item = tokio::time::timeout_at(deadline, self.sse.next())
            .await
            .map_err(|_| {
                let what = match kind {
                    TimeoutKind::FirstToken => format!("no answer within {:?}", t.first_token),
                    TimeoutKind::Idle => format!("the answer stalled for {:?}", t.idle),
                    _ => format!("the answer took longer than {:?}", t.total),
                };
                self.endpoint.error(ModelErrorKind::Timeout(kind), what)
            })?;
        match item {
            None => {
                self.ended = true;
                self.decoder
                    .end(&mut out)
                    .map_err(|e| self.endpoint.error(e.kind, e.message))?;
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let kind = match e {
                    // The body itself failed: the size cap, or the connection.
                    sse_stream::Error::Body(_) if text.contains(TOO_LARGE) => {
                        ModelErrorKind::TooLarge
                    }
                    sse_stream::Error::Body(_) => ModelErrorKind::Connection,
                    // The body is not server-sent events (an HTML page, a JSON answer):
                    // asking again gets the same.
                    _ => ModelErrorKind::Protocol,
                };
                return Err(self
                    .endpoint
                    .error(kind, format!("reading the answer: {text}")));
            }
            Some(Ok(sse)) => {
                // Comments and retry hints carry no data.
                let Some(data) = sse.data.as_deref() else {
                    return Ok(());
                };
                self.first = false;
                if self.keep_raw {
                    out.push(StreamEvent::Raw {
                        event: sse.event.clone(),
                        data: data.to_owned(),
                    });
                }
                self.decoder
                    .event(sse.event.as_deref(), data, &mut out)
                    .map_err(|e| self.endpoint.error(e.kind, e.message))?;
                if self.decoder.done() {
                    self.ended = true;
                }
            }
        }
        self.pending.extend(out);
        Ok(())
    }
}

/// Read at most `cap` bytes of a body as text (error bodies).
async fn read_capped(response: reqwest::Response, cap: usize) -> String {
    let mut body = Vec::new();
    let mut bytes = response.bytes_stream();
    while let Some(Ok(chunk)) = bytes.next().await {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The provider's own message from an error body: `error.message` (OpenAI, Anthropic,
/// Gemini) or `message`.
fn error_message(json: &Value) -> Option<String> {
    let m = json
        .pointer("/error/message")
        .or_else(|| json.get("message"))
        .or_else(|| json.get("error").filter(|e| e.is_string()))?;
    m.as_str().map(str::to_owned)
}

/// Status codes every dialect reads the same way.
pub(crate) fn classify_status(status: u16, message: &str) -> ModelErrorKind {
    let lower = message.to_ascii_lowercase();
    match status {
        401 | 403 => ModelErrorKind::Auth,
        429 => ModelErrorKind::RateLimited,
        503 | 529 => ModelErrorKind::Overloaded,
        413 => ModelErrorKind::ContextTooLong,
        500..=599 => ModelErrorKind::Server,
        _ if is_context_message(&lower) => ModelErrorKind::ContextTooLong,
        _ if lower.contains("content filter") || lower.contains("content_filter") => {
            ModelErrorKind::ContentFilter
        }
        _ => ModelErrorKind::BadRequest,
    }
}

/// Words providers use when a prompt is over the context window.
pub(crate) fn is_context_message(lower: &str) -> bool {
    [
        "context_length_exceeded",
        "maximum context length",
        "context window",
        "prompt is too long",
        "too many tokens",
        "input token count",
        "exceeds the maximum number of tokens",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// `Retry-After` as seconds or an HTTP date; at most one hour is honoured.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(3600);
    let value = value.trim();
    let after = if let Ok(secs) = value.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX.as_secs_f64()))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        let secs = (at.timestamp() - flowbot_core::clock::now().timestamp()).max(0);
        Duration::from_secs(u64::try_from(secs).ok()?)
    };
    Some(after.min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_caps_them() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(401, ""), ModelErrorKind::Auth);
        assert_eq!(classify_status(429, ""), ModelErrorKind::RateLimited);
        assert_eq!(classify_status(529, ""), ModelErrorKind::Overloaded);
        assert_eq!(classify_status(502, ""), ModelErrorKind::Server);
        assert_eq!(
            classify_status(400, "This model's maximum context length is 8192 tokens"),
            ModelErrorKind::ContextTooLong
        );
        assert_eq!(classify_status(400, "bad"), ModelErrorKind::BadRequest);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut e = Endpoint::new("m".into(), "http://x");
        e.header("authorization", "Bearer sk-secret-123", true)
            .unwrap_or_default();
        assert_eq!(
            e.redact("key Bearer sk-secret-123 wrong"),
            "key [redacted] wrong"
        );
    }
}
