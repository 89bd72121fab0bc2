//! Error types of `flowbot-core`.

use std::time::Duration;

/// A boxed error from user code or a backend, carried inside [`Error`] and [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias using [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by `flowbot-core`.
///
/// Each message names what failed and with which input, so it can be shown to the person who
/// wrote that input (a config file, a cron expression, a task payload).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`Bot`](crate::Bot) builder was given missing or inconsistent parts.
    #[error("bot configuration: {0}")]
    Build(String),
    /// A cron expression or time zone could not be parsed.
    #[error("invalid cron schedule '{expr}': {reason}")]
    InvalidCron {
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A retry policy setting is out of range.
    #[error("invalid retry policy: {0}")]
    InvalidRetry(String),
    /// A task was rejected before it reached the queue.
    #[error("invalid task '{kind}': {reason}")]
    InvalidTask {
        /// The task kind.
        kind: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A task payload is larger than the configured limit.
    #[error("task '{kind}' payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The task kind.
        kind: String,
        /// Size of the serialised payload.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// No handler is registered for a task kind.
    #[error("unknown task kind '{0}': no handler is registered for it")]
    UnknownTaskKind(String),
    /// No action with this name is registered.
    #[error("unknown action '{0}'")]
    UnknownAction(String),
    /// An action was called with input that does not match its input schema.
    #[error("action '{action}': invalid input: {detail}")]
    ActionInput {
        /// The action's name.
        action: String,
        /// What is wrong, with the JSON path of the offending value.
        detail: String,
    },
    /// An action failed while running.
    #[error("action '{action}' failed: {source}")]
    Action {
        /// The action's name.
        action: String,
        /// The action's own error.
        #[source]
        source: BoxError,
    },
    /// A channel is not registered, or refused an outbound message.
    #[error("channel '{channel}': {detail}")]
    Channel {
        /// The channel's name.
        channel: String,
        /// What went wrong.
        detail: String,
    },
    /// A router or handler failed while handling an event.
    #[error("handler failed: {0}")]
    Handler(#[source] BoxError),
    /// A storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A language model call failed.
    #[error(transparent)]
    Model(#[from] crate::llm::ModelError),
    /// A value could not be serialised or deserialised.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being (de)serialised.
        context: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// The error and its sources, outermost first. A transparent [`Error::Store`] forwards
    /// its `source()` past the [`StoreError`], so that one is yielded by hand.
    fn chain(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let store: Option<&(dyn std::error::Error + 'static)> = match self {
            Error::Store(e) => Some(e),
            _ => None,
        };
        let first: &(dyn std::error::Error + 'static) = self;
        std::iter::once(first)
            .chain(store)
            .chain(std::iter::successors(
                std::error::Error::source(self),
                |e| e.source(),
            ))
    }

    /// True when the same work may succeed if tried again later: somewhere in the error's
    /// chain is a transient [`StoreError`] (the database unavailable, a concurrent writer) or
    /// a transient [`ModelError`](crate::llm::ModelError) (rate limited, overloaded).
    /// The pipeline fails a queued event's task on such an error, so the queue retries it.
    pub fn is_transient(&self) -> bool {
        self.chain().any(|e| {
            e.downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_transient)
                || e.downcast_ref::<crate::llm::ModelError>()
                    .is_some_and(crate::llm::ModelError::is_transient)
                || e.downcast_ref::<Error>()
                    .is_some_and(|inner| matches!(inner, Error::Store(s) if s.is_transient()))
        })
    }

    /// Whether retrying cannot help: a [`Permanent`] error is somewhere in the chain.
    pub fn is_permanent(&self) -> bool {
        self.chain().any(|e| e.is::<Permanent>())
    }

    /// The words meant for the person whose input caused this error, if it carries a
    /// [`Refusal`] anywhere in its chain.
    pub fn refusal(&self) -> Option<&str> {
        self.chain()
            .find_map(|e| e.downcast_ref::<Refusal>())
            .map(|r| r.0.as_str())
    }
}

/// An error meant for the person whose input caused it, in words safe to show them ("the
/// delay must be more than zero and at most 1year"). Actions and handlers return it (boxed)
/// for input they refuse; when the pipeline answers a failed message it shows these words
/// instead of its generic apology (see [`FailureReply`](crate::FailureReply)). Keep secrets,
/// addresses and internal details out of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Refusal {
    /// A refusal with these words.
    pub fn new(words: impl Into<String>) -> Self {
        Refusal(words.into())
    }
}

/// Errors raised by storage backends through the core storage traits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached (connection refused, pool timed out, I/O error).
    /// Workers back off and try again.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// A concurrent writer changed the record first (optimistic version check failed).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input was rejected by the store (a value out of range, a malformed cursor).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Data read from the store could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Any other backend error.
    #[error("database error: {0}")]
    Backend(#[source] BoxError),
}

/// An error that another attempt cannot fix: an action returns it (wrapping its own error)
/// for input it will never accept, such as a URL the network guard refuses. A workflow node
/// failing with it fails at once, whatever its retry policy, and a task dead-letters.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(#[source] pub BoxError);

impl Permanent {
    /// Wrap `error`.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent(error.into())
    }
}

impl StoreError {
    /// True when the error is transient and the operation may succeed if retried later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict(_))
    }
}

/// Error returned by task handlers.
///
/// A retryable error sends the task back to the queue according to its retry policy; a
/// permanent error dead-letters it at once.
#[derive(Debug)]
pub struct TaskError {
    message: String,
    permanent: bool,
    retry_after: Option<Duration>,
}

impl TaskError {
    /// A failure worth retrying (network error, busy service).
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            permanent: false,
            retry_after: None,
        }
    }

    /// A failure that will not go away by retrying (bad payload): the task is dead-lettered.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            permanent: true,
            retry_after: None,
        }
    }

    /// Ask for the next attempt no earlier than `delay` from now (e.g. a `Retry-After` header),
    /// overriding the backoff of the retry policy for this attempt. A delay over
    /// [`MAX_DELAY`](crate::task::MAX_DELAY) counts as that.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay.min(crate::task::MAX_DELAY));
        self
    }

    /// The error message recorded in the task's error history.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the task should be dead-lettered without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay requested by [`TaskError::retry_after`], if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<Error> for TaskError {
    fn from(err: Error) -> Self {
        match &err {
            Error::Store(e) if e.is_transient() => TaskError::retryable(err),
            _ if err.is_permanent() => TaskError::permanent(err),
            Error::Store(_) | Error::Channel { .. } | Error::Action { .. } | Error::Handler(_) => {
                TaskError::retryable(err)
            }
            _ => TaskError::permanent(err),
        }
    }
}
