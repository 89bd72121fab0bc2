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
    /// A channel is not registered, or could not deliver an outbound message. Whether
    /// another attempt can help is in the source: a [`Permanent`] (the platform refused the
    /// message for good: blocked by the user, chat not found) or a [`Transient`] (rate
    /// limited, with the platform's `Retry-After`); see [`Error::channel`].
    #[error("channel '{channel}': {source}")]
    Channel {
        /// The channel's name.
        channel: String,
        /// What went wrong.
        #[source]
        source: BoxError,
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
    /// A channel's error: `source` says what went wrong, as words or as an error (wrap it in
    /// [`Permanent`] or [`Transient`] to say whether another attempt can help).
    pub fn channel(channel: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Channel {
            channel: channel.into(),
            source: source.into(),
        }
    }

    /// A handler's error (see [`HandlerError`]).
    pub fn handler(source: impl Into<BoxError>) -> Self {
        Error::Handler(source.into())
    }

    pub(crate) fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// The error and its sources, outermost first. A transparent [`Error::Store`] or
    /// [`Error::Model`] forwards its `source()` past the inner error, so that one is yielded
    /// by hand.
    fn chain(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let store: Option<&(dyn std::error::Error + 'static)> = match self {
            Error::Store(e) => Some(e),
            Error::Model(e) => Some(e),
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
    /// chain is a [`Transient`] error, a transient [`StoreError`] (the database unavailable, a
    /// concurrent writer), a transient [`ModelError`](crate::llm::ModelError) (rate limited,
    /// overloaded) or an I/O error of a dropped or refused connection; and no [`Permanent`]
    /// one. The pipeline fails a queued event's task on such an error, so the queue retries
    /// it.
    pub fn is_transient(&self) -> bool {
        !self.is_permanent() && self.chain().any(is_transient_link)
    }

    /// Whether retrying cannot help: a [`Permanent`] error is somewhere in the chain, or the
    /// error is about input that will not change (a task or action input, a cron expression,
    /// a retry policy, the bot's configuration). The task queue dead-letters a task that
    /// failed with it at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Build(_)
                | Error::InvalidCron { .. }
                | Error::InvalidRetry(_)
                | Error::InvalidTask { .. }
                | Error::PayloadTooLarge { .. }
                | Error::UnknownTaskKind(_)
                | Error::UnknownAction(_)
                | Error::ActionInput { .. }
                | Error::Json { .. }
        ) || matches!(self, Error::Model(m) if !m.is_transient())
            // Past the error itself, which the kinds above cover.
            || self.chain().skip(1).any(is_permanent_link)
    }

    /// How long the service that failed asked us to wait before the next attempt (an HTTP
    /// `Retry-After`, Telegram's `retry_after`), when the error carries it: from a
    /// [`Transient`] or a [`ModelError`](crate::llm::ModelError) in the chain.
    pub fn retry_after(&self) -> Option<Duration> {
        self.chain().find_map(|e| {
            e.downcast_ref::<Transient>()
                .and_then(Transient::requested_delay)
                .or_else(|| {
                    e.downcast_ref::<crate::llm::ModelError>()
                        .and_then(|m| m.retry_after)
                })
                .or_else(|| match e.downcast_ref::<Error>() {
                    Some(Error::Model(m)) => m.retry_after,
                    _ => None,
                })
        })
    }

    /// The words meant for the person whose input caused this error, if it carries a
    /// [`Refusal`] anywhere in its chain.
    pub fn refusal(&self) -> Option<&str> {
        self.chain()
            .find_map(|e| e.downcast_ref::<Refusal>())
            .map(|r| r.0.as_str())
    }
}

/// Whether `e` alone (not its sources) says another attempt can help.
fn is_transient_link(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<Transient>() {
        return true;
    }
    if let Some(s) = e.downcast_ref::<StoreError>() {
        return s.is_transient();
    }
    match e.downcast_ref::<Error>() {
        Some(Error::Store(s)) => return s.is_transient(),
        Some(Error::Model(m)) => return m.is_transient(),
        _ => {}
    }
    if let Some(m) = e.downcast_ref::<crate::llm::ModelError>() {
        return m.is_transient();
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        return matches!(
            io.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::TimedOut
                | K::Interrupted
                | K::WouldBlock
        );
    }
    false
}

/// Whether `e` alone (not its sources) says another attempt cannot help.
fn is_permanent_link(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<Permanent>()
        || e.downcast_ref::<Error>().is_some_and(Error::is_permanent)
        || e.downcast_ref::<StoreError>()
            .is_some_and(|s| matches!(s, StoreError::Invalid(_) | StoreError::Corrupt(_)))
}

/// What a [`Handlers`](crate::Handlers) function returns when it fails: any error that
/// converts into a [`BoxError`] (`std::io::Error`, reqwest's, sqlx's, the application's own,
/// a `String`), so `?` works on all of them. Wrap it in [`Refusal`] to answer the user with
/// its words, in [`Transient`] to have a queued event tried again later, or in [`Permanent`]
/// to say it never will succeed; FlowBot's own [`Error`] keeps its kind.
///
/// Like `anyhow::Error`, it is not itself a `std::error::Error` (that is what lets `?`
/// convert every error into it); [`HandlerError::into_inner`] gives the error.
pub struct HandlerError(BoxError);

impl HandlerError {
    /// The error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }

    /// The error, borrowed.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError(e.into())
    }
}

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// FlowBot's own error comes back as it was; any other becomes [`Error::Handler`].
impl From<HandlerError> for Error {
    fn from(e: HandlerError) -> Self {
        match e.0.downcast::<Error>() {
            Ok(own) => *own,
            Err(other) => Error::Handler(other),
        }
    }
}

/// What a [`Handlers`](crate::Handlers) function returns: a [`Reply`](crate::Reply) (or
/// `T`), or any error (see [`HandlerError`]).
pub type HandlerResult<T = crate::Reply> = std::result::Result<T, HandlerError>;

/// Settings that cannot work: the message names the setting (`models[0].retry.max_attempts`,
/// `token`). The settings checks of the channels and the language models return it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl From<String> for SettingsError {
    fn from(message: String) -> Self {
        SettingsError(message)
    }
}

impl From<&str> for SettingsError {
    fn from(message: &str) -> Self {
        SettingsError(message.to_owned())
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

/// An error that another attempt may fix (a rate limit, a service briefly down), with the
/// delay the service asked for, if it did. Channels return it (wrapping their own error) so
/// that the queue retries the delivery no earlier than the platform's `Retry-After`; a
/// handler or action returns it to have a queued event or workflow node tried again.
///
/// ```
/// use std::time::Duration;
/// use flowbot_core::{Error, Transient};
///
/// let e = Error::channel("tg", Transient::new("Too Many Requests").retry_after(Duration::from_secs(30)));
/// assert!(e.is_transient());
/// assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Transient {
    #[source]
    source: BoxError,
    retry_after: Option<Duration>,
}

impl Transient {
    /// Wrap `error`.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Transient {
            source: error.into(),
            retry_after: None,
        }
    }

    /// Ask for the next attempt no earlier than `delay` from now (at most
    /// [`MAX_DELAY`](crate::task::MAX_DELAY)).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay.min(crate::task::MAX_DELAY));
        self
    }

    /// [`Transient::retry_after`] when `delay` is given.
    pub fn retry_after_opt(self, delay: Option<Duration>) -> Self {
        match delay {
            Some(d) => self.retry_after(d),
            None => self,
        }
    }

    /// The delay asked for, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
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
    source: Option<BoxError>,
}

impl TaskError {
    /// A failure worth retrying (network error, busy service).
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            permanent: false,
            retry_after: None,
            source: None,
        }
    }

    /// A failure that will not go away by retrying (bad payload): the task is dead-lettered.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            permanent: true,
            retry_after: None,
            source: None,
        }
    }

    /// A failure with `error` as its source, retried unless `permanent`.
    pub(crate) fn with_source(error: BoxError, permanent: bool) -> Self {
        TaskError {
            message: error.to_string(),
            permanent,
            retry_after: None,
            source: Some(error),
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

impl std::error::Error for TaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// A failed task is retried (no earlier than the error's [`Error::retry_after`]) unless the
/// error [is permanent](Error::is_permanent); the error is kept as the source.
impl From<Error> for TaskError {
    fn from(err: Error) -> Self {
        let permanent = err.is_permanent();
        let retry_after = err.retry_after();
        let task = TaskError::with_source(Box::new(err), permanent);
        match retry_after {
            Some(d) if !permanent => task.retry_after(d),
            _ => task,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(e: Error) -> TaskError {
        TaskError::from(e)
    }

    #[test]
    fn channel_errors_say_whether_another_attempt_can_help() {
        let blocked = Error::channel("tg", Permanent::new("403: bot was blocked by the user"));
        assert!(blocked.is_permanent() && !blocked.is_transient());
        assert_eq!(
            blocked.to_string(),
            "channel 'tg': 403: bot was blocked by the user"
        );
        let t = task(blocked);
        assert!(t.is_permanent());
        // The source is kept, not flattened.
        let source = std::error::Error::source(&t).expect("source");
        assert!(source.downcast_ref::<Error>().is_some());

        let limited = Error::channel(
            "tg",
            Transient::new("429: Too Many Requests").retry_after(Duration::from_secs(120)),
        );
        assert!(limited.is_transient() && !limited.is_permanent());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(120)));
        let t = task(limited);
        assert!(!t.is_permanent());
        assert_eq!(t.requested_delay(), Some(Duration::from_secs(120)));

        // A wait longer than the queue's longest delay is cut to it.
        let huge = Transient::new("x").retry_after(Duration::from_secs(u64::MAX));
        assert_eq!(huge.requested_delay(), Some(crate::task::MAX_DELAY));

        // Unclassified delivery trouble is retried, without a requested delay.
        let t = task(Error::channel("tg", "connection reset"));
        assert!(!t.is_permanent() && t.requested_delay().is_none());
    }

    #[test]
    fn errors_deep_in_the_chain_are_classified() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::from(HandlerError::from(io));
        assert!(matches!(e, Error::Handler(_)));
        assert!(e.is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        assert!(!Error::handler(io).is_transient());

        let store = Error::handler(StoreError::Unavailable("down".into()));
        assert!(store.is_transient());
        let corrupt = Error::handler(StoreError::Corrupt("bad row".into()));
        assert!(corrupt.is_permanent());

        // Permanent wins over transient anywhere in the chain.
        let both = Error::handler(Permanent::new(Transient::new("x")));
        assert!(both.is_permanent() && !both.is_transient());

        // A rate-limited model call, as the assistant returns it, and boxed in a handler's.
        let limited = || {
            crate::llm::ModelError::new(crate::llm::ModelErrorKind::RateLimited, "m", "429")
                .with_retry_after(Some(Duration::from_secs(7)))
        };
        let model = Error::from(limited());
        assert!(model.is_transient() && !model.is_permanent());
        assert_eq!(model.retry_after(), Some(Duration::from_secs(7)));
        let boxed = Error::handler(Error::from(limited()));
        assert!(boxed.is_transient());
        assert_eq!(boxed.retry_after(), Some(Duration::from_secs(7)));
        let refused = Error::from(crate::llm::ModelError::new(
            crate::llm::ModelErrorKind::Auth,
            "m",
            "401",
        ));
        assert!(refused.is_permanent() && !refused.is_transient());

        // Input errors are permanent by kind.
        assert!(Error::UnknownAction("x".into()).is_permanent());
        assert!(task(Error::UnknownTaskKind("x".into())).is_permanent());
    }

    #[test]
    fn a_handler_error_keeps_flowbots_own_error() {
        let own = Error::UnknownAction("nope".into());
        let back = Error::from(HandlerError::from(own));
        assert!(
            matches!(back, Error::UnknownAction(ref a) if a == "nope"),
            "{back:?}"
        );
        let refusal = Error::from(HandlerError::from(Refusal::new("not like that")));
        assert_eq!(refusal.refusal(), Some("not like that"));
        let words = Error::from(HandlerError::from("plain words"));
        assert_eq!(words.to_string(), "handler failed: plain words");
    }
}
