//! What can go wrong in a model call, classified so that callers know whether to retry, trim
//! the context, move to the next model, or tell the user.

use std::time::Duration;

/// What kind of failure a [`ModelError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelErrorKind {
    /// The key is missing, wrong or lacks permission (401/403). Permanent.
    Auth,
    /// Too many requests (429); see [`ModelError::retry_after`]. Transient.
    RateLimited,
    /// The provider is overloaded (503, Anthropic's 529). Transient.
    Overloaded,
    /// The provider failed (other 5xx). Transient.
    Server,
    /// The prompt is longer than the model's context window; trim and retry.
    ContextTooLong,
    /// A content filter refused the prompt or the answer.
    ContentFilter,
    /// The request was refused as invalid (other 4xx). Permanent.
    BadRequest,
    /// A deadline passed.
    Timeout(TimeoutKind),
    /// The connection failed or was dropped mid-answer. Transient.
    Connection,
    /// The answer was not what the dialect says (malformed events, invalid JSON).
    Protocol,
    /// The answer was over the size limit.
    TooLarge,
    /// The call was cancelled (a newer message, a budget, shutdown).
    Cancelled,
    /// The model is not configured or usable (no key, unknown model name).
    Config,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// Connecting and receiving response headers.
    Connect,
    /// The first event of the answer.
    FirstToken,
    /// Silence between two events.
    Idle,
    /// The whole call.
    Total,
}

impl ModelErrorKind {
    /// A short name for metrics and logs (`rate_limited`, `timeout_idle`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelErrorKind::Auth => "auth",
            ModelErrorKind::RateLimited => "rate_limited",
            ModelErrorKind::Overloaded => "overloaded",
            ModelErrorKind::Server => "server",
            ModelErrorKind::ContextTooLong => "context_too_long",
            ModelErrorKind::ContentFilter => "content_filter",
            ModelErrorKind::BadRequest => "bad_request",
            ModelErrorKind::Timeout(TimeoutKind::Connect) => "timeout_connect",
            ModelErrorKind::Timeout(TimeoutKind::FirstToken) => "timeout_first_token",
            ModelErrorKind::Timeout(TimeoutKind::Idle) => "timeout_idle",
            ModelErrorKind::Timeout(TimeoutKind::Total) => "timeout_total",
            ModelErrorKind::Connection => "connection",
            ModelErrorKind::Protocol => "protocol",
            ModelErrorKind::TooLarge => "too_large",
            ModelErrorKind::Cancelled => "cancelled",
            ModelErrorKind::Config => "config",
        }
    }
}

/// A failed model call: its kind, the model, the HTTP status if any, and the provider's
/// message with secrets removed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("model '{model}': {}{message}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
pub struct ModelError {
    /// What kind of failure.
    pub kind: ModelErrorKind,
    /// The model's name ([`ChatModel::name`](super::ChatModel::name)).
    pub model: String,
    /// The HTTP status, when the provider answered with one.
    pub status: Option<u16>,
    /// What went wrong, in the provider's words where it gave some.
    pub message: String,
    /// How long the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ModelError {
    /// An error of `kind` for `model`.
    pub fn new(kind: ModelErrorKind, model: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError {
            kind,
            model: model.into(),
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// With the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// With the provider's `Retry-After`.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// True when the same call may succeed later (rate limits, overload, 5xx, timeouts,
    /// dropped connections): retry, or move on to the next model in a fallback chain.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ModelErrorKind::RateLimited
                | ModelErrorKind::Overloaded
                | ModelErrorKind::Server
                | ModelErrorKind::Timeout(_)
                | ModelErrorKind::Connection
        )
    }
}
