//! Fallback chains: [`ModelChain`], its retry and breaker policies, and their config.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flowbot_core::llm::{
    ChatModel, ChatRequest, ChatStream, ModelError, ModelErrorKind, StreamEvent,
};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::ProviderConfig;
use crate::observe::{LlmMetrics, Observed};

/// How often and how patiently one model of a chain is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls to this model at most, the first included (0 counts as 1).
    pub max_attempts: u32,
    /// The backoff ceiling before the second attempt; it doubles with each attempt.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
    /// The longest `Retry-After` that is waited; a longer one moves on to the next model.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The most a backoff after failed attempt `attempt` (from 1) may wait:
    /// `initial_backoff × 2^(attempt-1)`, at most `max_backoff`. Never overflows.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff)
    }

    /// The wait after failed attempt `attempt`: full jitter, a uniformly random duration
    /// between zero and [`ceiling`](Self::ceiling), inclusive.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_with(attempt, &mut fastrand::Rng::new())
    }

    /// [`backoff`](Self::backoff) with this random generator.
    pub fn backoff_with(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}

/// When one model's circuit breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive transient failures that open the breaker; 0: it never opens.
    pub failures: u32,
    /// How long it stays open before a trial call (at most a day is used).
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// The longest cool-down a breaker uses.
const MAX_COOLDOWN: Duration = Duration::from_secs(86_400);

/// A breaker's state, for observability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; `failures` consecutive transient failures so far.
    Closed {
        /// The count.
        failures: u32,
    },
    /// Calls skip the model for `remaining`.
    Open {
        /// Time left in the cool-down.
        remaining: Duration,
    },
    /// The cool-down is over: the next call is a trial (`in_flight` while it runs; other
    /// calls skip the model meanwhile).
    HalfOpen {
        /// Whether the trial call runs now.
        in_flight: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: bool },
}

/// What one call told the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The provider answered (successfully or with an error about the request).
    Answered,
    /// A transient failure.
    Failed,
    /// Nothing about the provider's health (cancelled, a local error).
    Neutral,
}

impl Outcome {
    fn of(e: &ModelError) -> Outcome {
        if e.is_transient() {
            return Outcome::Failed;
        }
        match e.kind {
            ModelErrorKind::Auth
            | ModelErrorKind::BadRequest
            | ModelErrorKind::ContextTooLong
            | ModelErrorKind::ContentFilter => Outcome::Answered,
            _ => Outcome::Neutral,
        }
    }
}

#[derive(Debug)]
struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
}

impl Breaker {
    fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let a call through (a permit, a trial when half open), or say how long the breaker
    /// stays open (`None` when a trial runs now).
    fn admit(self: &Arc<Self>, now: Instant) -> Result<Permit, Option<Duration>> {
        let mut state = self.lock();
        let trial = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return Err(Some(until - now)),
            State::Open { .. } | State::HalfOpen { in_flight: false } => {
                *state = State::HalfOpen { in_flight: true };
                true
            }
            State::HalfOpen { in_flight: true } => return Err(None),
        };
        Ok(Permit {
            breaker: self.clone(),
            trial,
            done: false,
        })
    }

    fn record(&self, outcome: Outcome, trial: bool, now: Instant) {
        let mut state = self.lock();
        let open = |now: Instant| State::Open {
            until: now
                .checked_add(self.policy.cooldown.min(MAX_COOLDOWN))
                .unwrap_or(now),
        };
        *state = match (outcome, *state) {
            (Outcome::Answered, _) => State::Closed { failures: 0 },
            (Outcome::Failed, State::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                if self.policy.failures > 0 && failures >= self.policy.failures {
                    open(now)
                } else {
                    State::Closed { failures }
                }
            }
            (Outcome::Failed, State::HalfOpen { .. }) if trial => open(now),
            // A call let through before the breaker opened fails late: already counted.
            (Outcome::Failed, s) => s,
            (Outcome::Neutral, State::HalfOpen { .. }) if trial => {
                State::HalfOpen { in_flight: false }
            }
            (Outcome::Neutral, s) => s,
        };
    }

    fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { failures } => BreakerState::Closed { failures },
            State::Open { until } if now < until => BreakerState::Open {
                remaining: until - now,
            },
            State::Open { .. } => BreakerState::HalfOpen { in_flight: false },
            State::HalfOpen { in_flight } => BreakerState::HalfOpen { in_flight },
        }
    }
}

/// A call let through a breaker; its outcome is reported once. Dropped unreported (the call
/// was abandoned), it is neutral: a trial slot is freed for the next call.
#[derive(Debug)]
struct Permit {
    breaker: Arc<Breaker>,
    trial: bool,
    done: bool,
}

impl Permit {
    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.record(outcome, self.trial, Instant::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker
                .record(Outcome::Neutral, self.trial, Instant::now());
        }
    }
}

/// One model of a chain, with its policies.
#[derive(Clone)]
pub struct ChainEntry {
    /// The model.
    pub model: Arc<dyn ChatModel>,
    /// How it is retried.
    pub retry: RetryPolicy,
    /// When its breaker opens.
    pub breaker: BreakerPolicy,
}

impl ChainEntry {
    /// `model` with the default policies.
    pub fn new(model: Arc<dyn ChatModel>) -> Self {
        ChainEntry {
            model,
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
        }
    }

    /// With this retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// With this breaker policy.
    pub fn breaker(mut self, breaker: BreakerPolicy) -> Self {
        self.breaker = breaker;
        self
    }
}

impl std::fmt::Debug for ChainEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainEntry")
            .field("model", &self.model.name())
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .finish()
    }
}

struct Link {
    model: Arc<dyn ChatModel>,
    retry: RetryPolicy,
    breaker: Arc<Breaker>,
}

struct Inner {
    name: String,
    links: Vec<Link>,
}

/// Models tried in order, with retries and circuit breakers; a [`ChatModel`] itself.
///
/// A call goes to the first model whose breaker lets it through. A failure is then handled
/// by its kind:
///
/// - transient errors ([`ModelError::is_transient`]: rate limited, overloaded, 5xx,
///   timeouts, dropped connections): the same model again with backoff, then the next model;
/// - `Auth`, `Config`: the next model at once. This provider's key or setup is wrong,
///   another's may be right, and retrying changes nothing;
/// - `Protocol`, `TooLarge`: the next model at once. A provider that sent a malformed or
///   oversized answer tends to do it again; another may not;
/// - `ContextTooLong`: returned as it is. The caller must trim the conversation; moving on
///   would silently answer from a model with another window (and price) for a prompt that
///   will only grow;
/// - `ContentFilter`: returned as it is. Trying providers until one's filter lets a prompt
///   through would circumvent the filter;
/// - `BadRequest`: returned as it is. The request is wrong for every model alike; trying them
///   all costs money and hides the bug;
/// - `Cancelled`: returned as it is. The caller asked to stop.
///
/// **Retries.** Each model has a [`RetryPolicy`]: at most `max_attempts` calls, waiting
/// between them an exponential backoff with full jitter (a random wait between zero and
/// `initial_backoff × 2^(attempt-1)`, at most `max_backoff`). When the provider says how
/// long to wait (`Retry-After`), that wait is honoured instead, unless it is longer than
/// `max_retry_after`: then the chain moves to the next model rather than wait.
///
/// **Circuit breakers.** Each model has a breaker ([`BreakerPolicy`]): after `failures`
/// consecutive transient failures it opens, and for `cooldown` every call skips the model at
/// once. Then it lets one trial call through: success closes it, a transient failure opens
/// it for another cool-down. A provider that answered at all (even with `Auth`, `BadRequest`,
/// `ContextTooLong` or `ContentFilter`) is reachable, which resets the count; `Cancelled`,
/// `Config`, `Protocol` and `TooLarge` say nothing about reachability and leave it as it is.
///
/// **Streams.** Falling back is only possible before the caller has seen anything of an
/// answer. A failure while the stream runs is retried (or falls back) only when nothing but
/// [`StreamEvent::Started`], [`StreamEvent::Usage`] and [`StreamEvent::Raw`] was yielded yet
/// (so a caller may see `Started` more than once: the last one names the model that answers);
/// once text, reasoning, a refusal, a tool call or the finish reached the caller, a failure
/// is the caller's error — a silent retry would repeat or contradict what it already showed.
///
/// **When every model fails** the error returned is the most informative one of the last
/// errors of the models tried: a provider's real answer before a model skipped by its open
/// breaker; among those a transient error before a permanent one (the call as a whole may
/// still succeed later, and a task queue retries transient errors), preferring one with a
/// `Retry-After`; among equals the one of the model earliest in the chain. Its message ends
/// with the list of the models tried, their attempts and their last errors' kinds.
///
/// Every wait uses tokio's clock, so tests run with paused time.
#[derive(Clone)]
pub struct ModelChain {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModelChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelChain")
            .field("name", &self.inner.name)
            .field(
                "models",
                &self
                    .inner
                    .links
                    .iter()
                    .map(|l| l.model.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ModelChain {
    /// A chain of these models, tried in order, named `chain(a,b,…)`. At least one.
    pub fn new(entries: Vec<ChainEntry>) -> Result<ModelChain, ModelError> {
        let name = format!(
            "chain({})",
            entries
                .iter()
                .map(|e| e.model.name())
                .collect::<Vec<_>>()
                .join(",")
        );
        if entries.is_empty() {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                name,
                "a model chain needs at least one model",
            ));
        }
        let links = entries
            .into_iter()
            .map(|e| Link {
                model: e.model,
                retry: e.retry,
                breaker: Arc::new(Breaker::new(e.breaker)),
            })
            .collect();
        Ok(ModelChain {
            inner: Arc::new(Inner { name, links }),
        })
    }

    /// The same chain under another name (for logs and metrics).
    pub fn with_name(self, name: impl Into<String>) -> ModelChain {
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.name = name.into();
                inner
            }
            Err(shared) => Inner {
                name: name.into(),
                links: shared
                    .links
                    .iter()
                    .map(|l| Link {
                        model: l.model.clone(),
                        retry: l.retry,
                        breaker: l.breaker.clone(),
                    })
                    .collect(),
            },
        };
        ModelChain {
            inner: Arc::new(inner),
        }
    }

    /// The chain `config` describes: each provider connected (and wrapped in [`Observed`]
    /// with `metrics`, when given, so that each model's calls and failures are counted).
    pub fn from_config(
        config: &ChainConfig,
        metrics: Option<&Arc<LlmMetrics>>,
    ) -> Result<ModelChain, ModelError> {
        let chain_name = config.name.as_deref().unwrap_or("chain");
        let bad =
            |e: crate::SettingsError| ModelError::new(ModelErrorKind::Config, chain_name, e.0);
        config.check().map_err(bad)?;
        let mut entries = Vec::with_capacity(config.models.len());
        for (i, m) in config.models.iter().enumerate() {
            let retry = m
                .retry
                .or(&config.retry)
                .policy(&format!("models[{i}].retry"))
                .map_err(bad)?;
            let breaker = m
                .breaker
                .or(&config.breaker)
                .policy(&format!("models[{i}].breaker"))
                .map_err(bad)?;
            let model = crate::connect(&m.provider)?;
            let model: Arc<dyn ChatModel> = match metrics {
                Some(metrics) => Arc::new(Observed::new(model, metrics.clone())),
                None => model,
            };
            entries.push(ChainEntry {
                model,
                retry,
                breaker,
            });
        }
        let chain = ModelChain::new(entries)?;
        Ok(match &config.name {
            Some(name) => chain.with_name(name.clone()),
            None => chain,
        })
    }

    /// Each model's name and breaker state, in order.
    pub fn breakers(&self) -> Vec<(String, BreakerState)> {
        let now = Instant::now();
        self.inner
            .links
            .iter()
            .map(|l| (l.model.name().to_owned(), l.breaker.state(now)))
            .collect()
    }
}

#[async_trait]
impl ChatModel for ModelChain {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let mut run = Run {
            chain: self.inner.clone(),
            request: request.clone(),
            index: 0,
            attempts: 0,
            tried: Vec::new(),
        };
        let (stream, permit) = run.open().await?;
        let live = Live {
            breaker: permit.breaker.clone(),
            permit: Some(permit),
            stream,
            run,
            committed: false,
        };
        Ok(futures_util::stream::unfold(Some(live), Live::next).boxed())
    }
}

/// What happens after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Retry the same model (while its policy allows), then the next.
    Retry,
    /// The next model at once.
    NextModel,
    /// The caller's error, as it is.
    Return,
}

fn disposition(e: &ModelError) -> Disposition {
    if e.is_transient() {
        return Disposition::Retry;
    }
    match e.kind {
        ModelErrorKind::Auth
        | ModelErrorKind::Config
        | ModelErrorKind::Protocol
        | ModelErrorKind::TooLarge => Disposition::NextModel,
        _ => Disposition::Return,
    }
}

/// One model the call tried: how often, and its last error.
#[derive(Debug)]
struct Tried {
    index: usize,
    attempts: u32,
    error: ModelError,
    /// Skipped (or left) because its breaker was open.
    skipped: bool,
}

/// One call's way through the chain.
struct Run {
    chain: Arc<Inner>,
    request: ChatRequest,
    /// The model now tried.
    index: usize,
    /// Calls made to it so far.
    attempts: u32,
    tried: Vec<Tried>,
}

impl Run {
    /// Start the call on the current model, retrying and falling back until one accepts it
    /// (a stream and its breaker permit) or the call fails.
    async fn open(&mut self) -> Result<(ChatStream, Permit), ModelError> {
        loop {
            let chain = self.chain.clone();
            let Some(link) = chain.links.get(self.index) else {
                return Err(self.exhausted());
            };
            let permit = match link.breaker.admit(Instant::now()) {
                Ok(p) => p,
                Err(open_for) => {
                    self.skip(link, open_for);
                    continue;
                }
            };
            self.attempts = self.attempts.saturating_add(1);
            match link.model.stream(&self.request).await {
                Ok(stream) => return Ok((stream, permit)),
                Err(e) => {
                    permit.finish(Outcome::of(&e));
                    if let Some(wait) = self.failed(e)? {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    /// The current model failed with `e` before the caller saw any of its answer: retry it
    /// after `Ok(Some(wait))`, try the next model (`Ok(None)`), or fail the call.
    fn failed(&mut self, e: ModelError) -> Result<Option<Duration>, ModelError> {
        let chain = self.chain.clone();
        let Some(link) = chain.links.get(self.index) else {
            return Err(e);
        };
        let wait = match disposition(&e) {
            Disposition::Return => return Err(e),
            Disposition::NextModel => None,
            Disposition::Retry if self.attempts >= link.retry.max_attempts.max(1) => None,
            Disposition::Retry => match e.retry_after {
                Some(after) if after > link.retry.max_retry_after => {
                    tracing::info!(
                        model = link.model.name(),
                        retry_after_secs = after.as_secs_f64(),
                        "the provider asks for a longer wait than max_retry_after: next model"
                    );
                    None
                }
                Some(after) => Some(after),
                None => Some(link.retry.backoff(self.attempts)),
            },
        };
        match wait {
            Some(wait) => tracing::info!(
                model = link.model.name(),
                attempt = self.attempts,
                error = %e,
                wait_secs = wait.as_secs_f64(),
                "model call failed: retrying"
            ),
            None => tracing::warn!(
                model = link.model.name(),
                attempts = self.attempts,
                error = %e,
                "model call failed: next model"
            ),
        }
        self.record(e, false);
        if wait.is_none() {
            self.advance();
        }
        Ok(wait)
    }

    fn record(&mut self, error: ModelError, skipped: bool) {
        match self.tried.last_mut() {
            Some(t) if t.index == self.index => {
                t.attempts = self.attempts;
                t.error = error;
                t.skipped = skipped;
            }
            _ => self.tried.push(Tried {
                index: self.index,
                attempts: self.attempts,
                error,
                skipped,
            }),
        }
    }

    fn advance(&mut self) {
        self.index = self.index.saturating_add(1);
        self.attempts = 0;
    }

    /// The current model's breaker is open: note it and move on.
    fn skip(&mut self, link: &Link, open_for: Option<Duration>) {
        let message = match open_for {
            Some(d) => format!(
                "circuit breaker open after {} consecutive failures; next trial in {:.1} s",
                link.breaker.policy.failures,
                d.as_secs_f64()
            ),
            None => "circuit breaker half open: a trial call is running".to_owned(),
        };
        tracing::debug!(model = link.model.name(), "{message}: next model");
        // When its breaker opened between our own attempts, the real error stays.
        if self.attempts == 0 {
            let error = ModelError::new(ModelErrorKind::Overloaded, link.model.name(), message)
                .with_retry_after(open_for);
            self.record(error, true);
        }
        self.advance();
    }

    /// Every model failed: the most informative error (see the module docs), with the list
    /// of the models tried.
    fn exhausted(&mut self) -> ModelError {
        let best = self
            .tried
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| {
                (
                    t.skipped,
                    !t.error.is_transient(),
                    t.error.retry_after.is_none(),
                    t.index,
                )
            })
            .map(|(i, _)| i);
        let Some(best) = best else {
            return ModelError::new(
                ModelErrorKind::Config,
                &self.chain.name,
                "a model chain needs at least one model",
            );
        };
        let mut list = String::new();
        for (i, t) in self.tried.iter().enumerate() {
            if i > 0 {
                list.push_str("; ");
            }
            let _ = write!(list, "{}: ", t.error.model);
            if t.skipped {
                list.push_str("skipped, circuit breaker open");
            } else {
                let _ = write!(
                    list,
                    "{} attempt{}, last {}",
                    t.attempts,
                    if t.attempts == 1 { "" } else { "s" },
                    t.error.kind.as_str()
                );
                if let Some(s) = t.error.status {
                    let _ = write!(list, " (HTTP {s})");
                }
            }
        }
        let mut error = self.tried.swap_remove(best).error;
        error.message = format!(
            "{} [every model of {} failed: {list}]",
            error.message, self.chain.name
        );
        error
    }
}

/// A running call's stream: the current model's events, and what is needed to go on after a
/// failure before the caller saw any of the answer.
struct Live {
    stream: ChatStream,
    permit: Option<Permit>,
    breaker: Arc<Breaker>,
    run: Run,
    /// Whether an event that is part of the answer reached the caller.
    committed: bool,
}

/// Whether an event is part of the answer (a failure after it cannot be retried): anything
/// but `Started`, `Usage` and `Raw`.
pub(crate) fn is_answer(event: &StreamEvent) -> bool {
    !matches!(
        event,
        StreamEvent::Started { .. } | StreamEvent::Usage { .. } | StreamEvent::Raw { .. }
    )
}

impl Live {
    async fn next(state: Option<Live>) -> Option<(Result<StreamEvent, ModelError>, Option<Live>)> {
        let mut live = state?;
        loop {
            match live.stream.next().await {
                Some(Ok(event)) => {
                    if !live.committed && is_answer(&event) {
                        live.committed = true;
                        if let Some(p) = live.permit.take() {
                            p.finish(Outcome::Answered);
                        }
                    }
                    return Some((Ok(event), Some(live)));
                }
                None => {
                    if let Some(p) = live.permit.take() {
                        p.finish(Outcome::Answered);
                    }
                    return None;
                }
                Some(Err(e)) if live.committed => {
                    live.breaker.record(Outcome::of(&e), false, Instant::now());
                    tracing::warn!(
                        model = e.model.as_str(),
                        error = %e,
                        "the answer failed after it started: not retried"
                    );
                    return Some((Err(e), None));
                }
                Some(Err(e)) => {
                    if let Some(p) = live.permit.take() {
                        p.finish(Outcome::of(&e));
                    }
                    match live.run.failed(e) {
                        Err(e) => return Some((Err(e), None)),
                        Ok(wait) => {
                            if let Some(wait) = wait {
                                tokio::time::sleep(wait).await;
                            }
                        }
                    }
                    match live.run.open().await {
                        Ok((stream, permit)) => {
                            live.breaker = permit.breaker.clone();
                            live.permit = Some(permit);
                            live.stream = stream;
                        }
                        Err(e) => return Some((Err(e), None)),
                    }
                }
            }
        }
    }
}

/// A retry policy in config; unset fields take the chain's, then the defaults.
///
/// | key | range | default |
/// |---|---|---|
/// | `max_attempts` | 1..=10 | 3 |
/// | `initial_backoff_ms` | 1..=60000 | 500 |
/// | `max_backoff_ms` | `initial_backoff_ms`..=600000 | 10000 |
/// | `max_retry_after_secs` | 0..=3600 | 30 |
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Calls to a model at most, the first included.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The first backoff ceiling, in milliseconds.
    #[serde(default)]
    pub initial_backoff_ms: Option<u64>,
    /// The largest backoff ceiling, in milliseconds.
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
    /// The longest `Retry-After` waited, in seconds.
    #[serde(default)]
    pub max_retry_after_secs: Option<u64>,
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, String> {
    if value < min || value > max {
        Err(format!("{key} = {value}: must be {min}..={max}"))
    } else {
        Ok(value)
    }
}

impl RetryConfig {
    /// Each unset field taken from `fallback`.
    pub fn or(&self, fallback: &RetryConfig) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            initial_backoff_ms: self.initial_backoff_ms.or(fallback.initial_backoff_ms),
            max_backoff_ms: self.max_backoff_ms.or(fallback.max_backoff_ms),
            max_retry_after_secs: self.max_retry_after_secs.or(fallback.max_retry_after_secs),
        }
    }

    /// The policy, its ranges checked; errors name the key under `prefix`.
    pub fn policy(&self, prefix: &str) -> Result<RetryPolicy, crate::SettingsError> {
        let d = RetryPolicy::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let max_attempts = in_range(
            &format!("{prefix}.max_attempts"),
            self.max_attempts.unwrap_or(d.max_attempts),
            1,
            10,
        )?;
        let initial = in_range(
            &format!("{prefix}.initial_backoff_ms"),
            self.initial_backoff_ms.unwrap_or(ms(d.initial_backoff)),
            1,
            60_000,
        )?;
        let max = in_range(
            &format!("{prefix}.max_backoff_ms"),
            // Unset, the default maximum rises to a larger initial backoff.
            self.max_backoff_ms
                .unwrap_or_else(|| ms(d.max_backoff).max(initial)),
            initial,
            600_000,
        )?;
        let retry_after = in_range(
            &format!("{prefix}.max_retry_after_secs"),
            self.max_retry_after_secs
                .unwrap_or(d.max_retry_after.as_secs()),
            0,
            3600,
        )?;
        Ok(RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(initial),
            max_backoff: Duration::from_millis(max),
            max_retry_after: Duration::from_secs(retry_after),
        })
    }
}

/// A breaker policy in config; unset fields take the chain's, then the defaults.
///
/// | key | range | default |
/// |---|---|---|
/// | `failures` | 0..=1000 (0: never opens) | 5 |
/// | `cooldown_secs` | 1..=86400 | 30 |
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    #[serde(default)]
    pub failures: Option<u32>,
    /// Seconds it stays open before a trial call.
    #[serde(default)]
    pub cooldown_secs: Option<u64>,
}

impl BreakerConfig {
    /// Each unset field taken from `fallback`.
    pub fn or(&self, fallback: &BreakerConfig) -> BreakerConfig {
        BreakerConfig {
            failures: self.failures.or(fallback.failures),
            cooldown_secs: self.cooldown_secs.or(fallback.cooldown_secs),
        }
    }

    /// The policy, its ranges checked; errors name the key under `prefix`.
    pub fn policy(&self, prefix: &str) -> Result<BreakerPolicy, crate::SettingsError> {
        let d = BreakerPolicy::default();
        let failures = in_range(
            &format!("{prefix}.failures"),
            self.failures.unwrap_or(d.failures),
            0,
            1000,
        )?;
        let cooldown = in_range(
            &format!("{prefix}.cooldown_secs"),
            self.cooldown_secs.unwrap_or(d.cooldown.as_secs()),
            1,
            MAX_COOLDOWN.as_secs(),
        )?;
        Ok(BreakerPolicy {
            failures,
            cooldown: Duration::from_secs(cooldown),
        })
    }
}

/// One model of a chain in config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainModelConfig {
    /// The provider and model.
    pub provider: ProviderConfig,
    /// This model's retry policy (over the chain's).
    #[serde(default)]
    pub retry: RetryConfig,
    /// This model's breaker (over the chain's).
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// A fallback chain in config.
///
/// ```
/// # use flowbot_llm::ChainConfig;
/// let config: ChainConfig = toml::from_str(r#"
///     name = "assistant"
///     retry = { max_attempts = 3, max_retry_after_secs = 20 }
///     breaker = { failures = 5, cooldown_secs = 30 }
///
///     [[models]]
///     provider = { dialect = "openai", model = "gpt-4o-mini", api_key_env = "OPENAI_API_KEY" }
///
///     [[models]]
///     provider = { dialect = "anthropic", model = "claude-haiku-4-5", api_key_env = "ANTHROPIC_API_KEY" }
///     retry = { max_attempts = 2 }
/// "#).unwrap();
/// assert_eq!(config.models.len(), 2);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The chain's name for logs and metrics (default `chain`).
    #[serde(default)]
    pub name: Option<String>,
    /// Every model's retry policy, unless the model sets its own.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Every model's breaker, unless the model sets its own.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The models, in the order they are tried.
    pub models: Vec<ChainModelConfig>,
}

impl ChainConfig {
    /// Check every range without connecting anything; the error names the key.
    pub fn check(&self) -> Result<(), crate::SettingsError> {
        self.retry.policy("retry")?;
        self.breaker.policy("breaker")?;
        if self.models.is_empty() {
            return Err(crate::SettingsError(
                "models: a chain needs at least one model".to_owned(),
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            m.retry
                .or(&self.retry)
                .policy(&format!("models[{i}].retry"))?;
            m.breaker
                .or(&self.breaker)
                .policy(&format!("models[{i}].breaker"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            max_retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_maximum() {
        let p = policy(500, 10_000);
        let ceilings: Vec<u64> = (1..=7).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        // Attempt 0 is treated as 1; huge attempts and durations never overflow.
        assert_eq!(p.ceiling(0), Duration::from_millis(500));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
        let huge = RetryPolicy {
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            ..p
        };
        assert_eq!(huge.ceiling(40), Duration::MAX);
        let d = huge.backoff_with(40, &mut fastrand::Rng::with_seed(1));
        assert!(d <= Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling_and_spreads() {
        let p = policy(500, 10_000);
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..=6 {
            let ceiling = p.ceiling(attempt);
            let waits: Vec<Duration> = (0..2000)
                .map(|_| p.backoff_with(attempt, &mut rng))
                .collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "attempt {attempt}");
            // Full jitter: waits fall in both the lower and the upper quarter.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "attempt {attempt}");
            assert!(
                waits.iter().any(|w| *w > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
        let zero = policy(0, 0);
        assert_eq!(zero.backoff_with(3, &mut rng), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_n_failures_then_lets_one_trial_through() {
        let b = Arc::new(Breaker::new(BreakerPolicy {
            failures: 3,
            cooldown: Duration::from_secs(30),
        }));
        for i in 1..=2 {
            b.admit(Instant::now()).unwrap().finish(Outcome::Failed);
            assert_eq!(
                b.state(Instant::now()),
                BreakerState::Closed { failures: i }
            );
        }
        // An answer resets the count.
        b.admit(Instant::now()).unwrap().finish(Outcome::Answered);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed { failures: 0 }
        );
        for _ in 0..3 {
            b.admit(Instant::now()).unwrap().finish(Outcome::Failed);
        }
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open {
                remaining: Duration::from_secs(30)
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            b.admit(Instant::now()).unwrap_err(),
            Some(Duration::from_secs(20))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::HalfOpen { in_flight: false }
        );
        // One trial; others skip while it runs.
        let trial = b.admit(Instant::now()).unwrap();
        assert!(trial.trial);
        assert_eq!(b.admit(Instant::now()).unwrap_err(), None);
        // A failed trial opens it for another cool-down.
        trial.finish(Outcome::Failed);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open {
                remaining: Duration::from_secs(30)
            }
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        // An abandoned trial frees the slot for the next call.
        drop(b.admit(Instant::now()).unwrap());
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::HalfOpen { in_flight: false }
        );
        // A successful trial closes it.
        b.admit(Instant::now()).unwrap().finish(Outcome::Answered);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed { failures: 0 }
        );
        assert!(!b.admit(Instant::now()).unwrap().trial);
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_with_zero_failures_never_opens_and_neutral_outcomes_count_nothing() {
        let b = Arc::new(Breaker::new(BreakerPolicy {
            failures: 0,
            cooldown: Duration::from_secs(30),
        }));
        for _ in 0..100 {
            b.admit(Instant::now()).unwrap().finish(Outcome::Failed);
        }
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed { failures: 100 }
        );
        b.admit(Instant::now()).unwrap().finish(Outcome::Neutral);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed { failures: 100 }
        );
        // A huge cool-down is cut to a day.
        let b = Arc::new(Breaker::new(BreakerPolicy {
            failures: 1,
            cooldown: Duration::MAX,
        }));
        b.admit(Instant::now()).unwrap().finish(Outcome::Failed);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open {
                remaining: MAX_COOLDOWN
            }
        );
    }

    #[test]
    fn errors_are_retried_passed_on_or_returned_by_kind() {
        use ModelErrorKind as K;
        let d = |k| disposition(&ModelError::new(k, "m", "x"));
        for k in [
            K::RateLimited,
            K::Overloaded,
            K::Server,
            K::Connection,
            K::Timeout(flowbot_core::llm::TimeoutKind::Idle),
        ] {
            assert_eq!(d(k), Disposition::Retry, "{k:?}");
        }
        for k in [K::Auth, K::Config, K::Protocol, K::TooLarge] {
            assert_eq!(d(k), Disposition::NextModel, "{k:?}");
        }
        for k in [
            K::ContextTooLong,
            K::ContentFilter,
            K::BadRequest,
            K::Cancelled,
        ] {
            assert_eq!(d(k), Disposition::Return, "{k:?}");
        }
    }

    #[test]
    fn config_reads_toml_with_defaults_and_checks_ranges() {
        let c: ChainConfig = toml::from_str(
            r#"
            retry = { max_attempts = 4, initial_backoff_ms = 100 }
            [[models]]
            provider = { dialect = "openai", model = "a" }
            [[models]]
            provider = { dialect = "openai", model = "b" }
            retry = { max_attempts = 1 }
            breaker = { failures = 0 }
            "#,
        )
        .unwrap();
        c.check().unwrap();
        let a = c.models[0].retry.or(&c.retry).policy("x").unwrap();
        assert_eq!(
            a,
            RetryPolicy {
                max_attempts: 4,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                max_retry_after: Duration::from_secs(30),
            }
        );
        let b = c.models[1].retry.or(&c.retry).policy("x").unwrap();
        assert_eq!(b.max_attempts, 1);
        assert_eq!(b.initial_backoff, Duration::from_millis(100));
        assert_eq!(
            c.models[1].breaker.or(&c.breaker).policy("x").unwrap(),
            BreakerPolicy {
                failures: 0,
                cooldown: Duration::from_secs(30)
            }
        );

        let err = |toml: &str| {
            let c: ChainConfig = toml::from_str(toml).unwrap();
            c.check().unwrap_err().0
        };
        let model = "\n[[models]]\nprovider = { dialect = \"openai\", model = \"a\" }\n";
        assert_eq!(
            err(&format!("retry = {{ max_attempts = 0 }}{model}")),
            "retry.max_attempts = 0: must be 1..=10"
        );
        assert_eq!(
            err(&format!(
                "retry = {{ initial_backoff_ms = 2000, max_backoff_ms = 1000 }}{model}"
            )),
            "retry.max_backoff_ms = 1000: must be 2000..=600000"
        );
        assert_eq!(
            err(&format!("breaker = {{ cooldown_secs = 0 }}{model}")),
            "breaker.cooldown_secs = 0: must be 1..=86400"
        );
        assert_eq!(
            err(&format!(
                "{model}retry = {{ max_retry_after_secs = 99999 }}"
            )),
            "models[0].retry.max_retry_after_secs = 99999: must be 0..=3600"
        );
        assert_eq!(
            err("models = []"),
            "models: a chain needs at least one model"
        );
        // A large initial backoff raises the default maximum with it.
        let c: ChainConfig =
            toml::from_str(&format!("retry = {{ initial_backoff_ms = 20000 }}{model}")).unwrap();
        assert_eq!(
            c.retry.policy("retry").unwrap().max_backoff,
            Duration::from_secs(20)
        );
        // Unknown keys are refused.
        assert!(
            toml::from_str::<ChainConfig>(&format!("retry = {{ attempts = 3 }}{model}"))
                .unwrap_err()
                .to_string()
                .contains("unknown field `attempts`")
        );
    }

    #[test]
    fn an_empty_chain_is_refused() {
        let e = ModelChain::new(Vec::new()).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::Config);
        assert!(e.message.contains("at least one model"), "{e}");
    }
}
