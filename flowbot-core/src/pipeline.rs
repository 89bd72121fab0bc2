//! The message pipeline: middleware, persistence, session, router, delivery.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::message::{Event, Outbound, Target, UserId};
use crate::middleware::{Flow, Middleware};
use crate::router::{Reply, Router, Services, Turn};
use crate::session::{Session, SessionHandle, SessionKey};
use crate::task::NewTask;

/// The task kind that (re)delivers an outbound message through the queue.
pub const DELIVER_TASK: &str = "flowbot.deliver";

/// The task kind that takes an inbound event (stored durably before it was acknowledged, e.g.
/// by a webhook) through the pipeline. Its payload is the [`Event`] as JSON.
pub const INBOUND_TASK: &str = "flowbot.inbound";

/// Where in the pipeline an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Middleware.
    Middleware,
    /// Storing the inbound message.
    Persist,
    /// Loading the session.
    Session,
    /// The router or a handler.
    Route,
    /// Delivering a reply.
    Deliver,
    /// Saving the session.
    SaveSession,
}

/// What the `on_error` hook is told.
#[derive(Debug)]
pub struct PipelineError<'a> {
    /// The event being handled.
    pub event: &'a Event,
    /// Where it failed.
    pub stage: Stage,
    /// The error.
    pub error: &'a Error,
}

/// The `on_error` hook.
pub type ErrorHook = Arc<dyn Fn(&PipelineError<'_>) + Send + Sync>;

impl Stage {
    /// The stage's name in logs and metrics (`persist`, `route`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Middleware => "middleware",
            Stage::Persist => "persist",
            Stage::Session => "session",
            Stage::Route => "route",
            Stage::Deliver => "deliver",
            Stage::SaveSession => "save_session",
        }
    }
}

/// Why handling an event failed: the stage and its error. A queued event's task fails with
/// it, so the queue retries it when [`HandleFailure::is_transient`], and dead-letters it
/// otherwise.
#[derive(Debug, thiserror::Error)]
#[error("{} failed: {error}", stage.as_str())]
pub struct HandleFailure {
    /// Where it failed.
    pub stage: Stage,
    /// The error.
    #[source]
    pub error: Error,
}

impl HandleFailure {
    /// True when handling the event again later may succeed (see [`Error::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.error.is_transient()
    }
}

/// What a person hears when handling their message fails, so a failure is never silence
/// (set with [`BotBuilder::failure_reply`](crate::BotBuilder::failure_reply)).
///
/// The answer is the error's own words when it carries a [`Refusal`](crate::Refusal) (input
/// the bot refused, such as a delay out of range) and `show_refusals` is on; otherwise
/// `text`. A queued message that failed for a transient reason (the database away) is retried
/// by the queue first, and answered only when its last attempt fails.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureReply {
    /// The answer when the error is not one to show (an outage, a bug); `None` says nothing.
    pub text: Option<String>,
    /// Answer with a [`Refusal`](crate::Refusal)'s own words.
    pub show_refusals: bool,
}

impl Default for FailureReply {
    fn default() -> Self {
        FailureReply {
            text: Some("Sorry, something went wrong while handling your message. Please try again in a moment.".into()),
            show_refusals: true,
        }
    }
}

impl FailureReply {
    /// Answer with `text` (and with refusals' own words).
    pub fn text(text: impl Into<String>) -> Self {
        FailureReply {
            text: Some(text.into()),
            show_refusals: true,
        }
    }

    /// Never answer a failure (it is still reported to `on_error` and counted).
    pub fn silent() -> Self {
        FailureReply {
            text: None,
            show_refusals: false,
        }
    }

    /// The same, showing refusals' own words or not.
    pub fn show_refusals(mut self, show: bool) -> Self {
        self.show_refusals = show;
        self
    }

    /// The answer to a failure with `error`, if any.
    pub fn answer(&self, error: &Error) -> Option<String> {
        match error.refusal() {
            Some(words) if self.show_refusals => Some(words.to_owned()),
            _ => self.text.clone(),
        }
    }
}

/// Counters of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events received.
    pub events_in: AtomicU64,
    /// Messages delivered.
    pub messages_out: AtomicU64,
    /// Events stopped by middleware or found to be duplicates.
    pub dropped: AtomicU64,
    /// Errors reported to `on_error`.
    pub errors: AtomicU64,
    /// Events whose handling failed, per stage (`persist`, `route`, …).
    pub failures: crate::metrics::LabeledCounter,
    /// Failures answered with a [`FailureReply`].
    pub failures_answered: AtomicU64,
    /// Total handling time in microseconds (divide by `events_in` for the mean).
    pub busy_micros: AtomicU64,
    /// Events received, per channel.
    pub in_by_channel: crate::metrics::LabeledCounter,
    /// Messages delivered, per channel.
    pub out_by_channel: crate::metrics::LabeledCounter,
    /// Time to handle one event, from receipt to the last reply sent.
    pub latency: crate::metrics::Histogram,
}

/// Handles events one at a time (see [`Pipeline::handle`]); [`Pipeline::run`] feeds it from
/// an inbox, in order per conversation and concurrently across conversations.
pub struct Pipeline {
    pub(crate) router: Arc<dyn Router>,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) services: Services,
    pub(crate) on_error: ErrorHook,
    pub(crate) failure_reply: FailureReply,
    pub(crate) stats: Arc<PipelineStats>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("middleware", &self.middleware.len())
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

fn session_key(event: &Event) -> Option<SessionKey> {
    let conversation = event.conversation()?.clone();
    let user = event
        .sender()
        .map(|s| s.id.clone())
        .unwrap_or_else(|| UserId::from(""));
    Some(SessionKey {
        channel: event.channel().clone(),
        conversation,
        user,
    })
}

impl Pipeline {
    /// Counters.
    pub fn stats(&self) -> &Arc<PipelineStats> {
        &self.stats
    }

    /// The services handlers get.
    pub fn services(&self) -> &Services {
        &self.services
    }

    fn report(&self, event: &Event, stage: Stage, error: &Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        (self.on_error)(&PipelineError {
            event,
            stage,
            error,
        });
    }

    /// Take one event through middleware, inbound persistence, session, router and delivery.
    /// Errors go to the `on_error` hook, and the sender hears the bot's [`FailureReply`]; the
    /// returned replies are those delivered or queued for delivery.
    pub async fn handle(&self, event: Event) -> Vec<Outbound> {
        let event = Arc::new(event);
        match self.handle_with(&event, false).await {
            Ok(delivered) => delivered,
            Err(failure) => {
                self.answer_failure(&event, &failure).await;
                Vec::new()
            }
        }
    }

    /// Like [`Pipeline::handle`], for an event taken from the durable queue
    /// ([`INBOUND_TASK`]): a message already in the history is a retry after a crash, not a
    /// redelivery, so it is handled again instead of dropped.
    ///
    /// A failure is reported to `on_error` and returned; the bot's [`INBOUND_TASK`] handler
    /// fails the task with it, so the queue retries a [transient](HandleFailure::is_transient)
    /// one and dead-letters any other, except a [`Refusal`](crate::Refusal), whose answer is
    /// the message's handling. The sender hears the [`FailureReply`] when the failure is not
    /// transient, or when `last_attempt` says the queue will not try again.
    pub async fn handle_queued(
        &self,
        event: Event,
        last_attempt: bool,
    ) -> Result<Vec<Outbound>, HandleFailure> {
        let event = Arc::new(event);
        let result = self.handle_with(&event, true).await;
        if let Err(failure) = &result
            && (last_attempt || !failure.is_transient())
        {
            self.answer_failure(&event, failure).await;
        }
        result
    }

    async fn handle_with(
        &self,
        event: &Arc<Event>,
        from_queue: bool,
    ) -> Result<Vec<Outbound>, HandleFailure> {
        use tracing::Instrument as _;
        let started = Instant::now();
        self.stats.events_in.fetch_add(1, Ordering::Relaxed);
        self.stats.in_by_channel.inc(event.channel().as_str());
        let span = tracing::info_span!(
            "message",
            channel = %event.channel(),
            conversation = event.conversation().map(|c| c.as_str()).unwrap_or(""),
        );
        let result = self.handle_inner(event, from_queue).instrument(span).await;
        if let Err(failure) = &result {
            self.report(event, failure.stage, &failure.error);
            self.stats.failures.inc(failure.stage.as_str());
            // The middleware let it through; let the next attempt through as well.
            for m in &self.middleware {
                m.failed(event).await;
            }
        }
        let elapsed = started.elapsed();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.stats.busy_micros.fetch_add(micros, Ordering::Relaxed);
        self.stats.latency.observe(elapsed);
        result
    }

    /// Tell the sender that handling their message failed (best effort: a failure to answer
    /// is reported, not retried).
    async fn answer_failure(&self, event: &Event, failure: &HandleFailure) {
        let Some(text) = self.failure_reply.answer(&failure.error) else {
            return;
        };
        let Some(source) = event.reply_target() else {
            return;
        };
        match self.deliver(event, Some(source), Reply::text(text)).await {
            Ok(sent) if !sent.is_empty() => {
                self.stats.failures_answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => self.report(event, e.stage, &e.error),
        }
    }

    async fn handle_inner(
        &self,
        event: &Arc<Event>,
        from_queue: bool,
    ) -> Result<Vec<Outbound>, HandleFailure> {
        let fail = |stage: Stage| move |error: Error| HandleFailure { stage, error };
        let mut early_reply = None;
        for m in &self.middleware {
            match m.before(event).await.map_err(fail(Stage::Middleware))? {
                Flow::Continue => {}
                Flow::Stop(reply) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    early_reply = Some(reply);
                    break;
                }
            }
        }
        let key = session_key(event);
        if let Some(reply) = early_reply {
            let source = event.reply_target();
            return self
                .deliver(event, source, Reply(reply.into_iter().collect()))
                .await;
        }

        let store = self.services.store.clone();
        if let (Some(store), Event::Message(message)) = (&store, event.as_ref()) {
            let fresh = store
                .save_inbound(message)
                .await
                .map_err(|e| fail(Stage::Persist)(e.into()))?;
            if !fresh && !from_queue {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(Vec::new());
            }
        }

        let loaded = match (&store, &key) {
            (Some(store), Some(key)) => store
                .load_session(key)
                .await
                .map_err(|e| fail(Stage::Session)(e.into()))?
                .unwrap_or_else(|| Session::new(key.clone())),
            (_, Some(key)) => Session::new(key.clone()),
            (_, None) => Session::new(SessionKey {
                channel: event.channel().clone(),
                conversation: "".into(),
                user: "".into(),
            }),
        };
        let session = SessionHandle::new(loaded.clone());
        let turn = Turn {
            event: event.clone(),
            session: session.clone(),
            services: self.services.clone(),
        };
        let reply = self.router.route(&turn).await.map_err(fail(Stage::Route))?;
        let delivered = self.deliver(event, turn.source(), reply).await?;

        if let (Some(store), Some(_)) = (&store, &key) {
            let after = session.snapshot();
            if after.vars != loaded.vars || after.dialog != loaded.dialog {
                store
                    .save_session(&after)
                    .await
                    .map_err(|e| fail(Stage::SaveSession)(e.into()))?;
            }
        }
        Ok(delivered)
    }

    /// Send each reply, or hand it to the durable queue when sending fails for a reason that
    /// may pass (due no earlier than the platform's `Retry-After`). A reply that can be
    /// neither sent nor queued fails the event (the queue tries the whole event again); a
    /// reply the platform refused for good ([`Error::is_permanent`]: the user blocked the
    /// bot, the chat is gone), a reply with no target, or a failure to record a sent reply in
    /// the history, is reported and the rest go on.
    async fn deliver(
        &self,
        event: &Event,
        source: Option<Target>,
        reply: Reply,
    ) -> Result<Vec<Outbound>, HandleFailure> {
        let mut delivered = Vec::with_capacity(reply.0.len());
        for mut out in reply.0 {
            if out.target.is_none() {
                out.target = source.clone();
                if out.reply_to.is_none() {
                    out.reply_to = event.dedupe_id().cloned();
                }
                if out.recipient.is_none() {
                    out.recipient = event.sender().map(|s| s.id.clone());
                }
            }
            if out.target.is_none() {
                let e = Error::channel(
                    event.channel().to_string(),
                    crate::Permanent::new("reply has no target and the event has no conversation"),
                );
                self.report(event, Stage::Deliver, &e);
                continue;
            }
            match self.services.senders.send(&out).await {
                Ok(_) => {
                    self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = &out.target {
                        self.stats.out_by_channel.inc(t.channel.as_str());
                    }
                    if let Some(store) = &self.services.store
                        && let Err(e) = store.save_outbound(&out).await
                    {
                        self.report(event, Stage::Persist, &e.into());
                    }
                    delivered.push(out);
                }
                Err(send_err) if send_err.is_permanent() => {
                    // Another attempt would be refused the same way.
                    self.report(event, Stage::Deliver, &send_err);
                }
                Err(send_err) => {
                    // Hand the message to the durable queue, which retries with backoff, or
                    // first after the wait the platform asked for.
                    let wait = send_err.retry_after();
                    let queued = match &self.services.tasks {
                        Some(tasks) => match NewTask::new(DELIVER_TASK, &out) {
                            Ok(task) => {
                                let task = match wait {
                                    Some(wait) => task.delay(wait),
                                    None => task,
                                };
                                tasks.enqueue(task).await.map(|_| ())
                            }
                            Err(e) => Err(e),
                        },
                        None => Err(send_err),
                    };
                    match queued {
                        Ok(()) => delivered.push(out),
                        Err(error) => {
                            return Err(HandleFailure {
                                stage: Stage::Deliver,
                                error,
                            });
                        }
                    }
                }
            }
        }
        Ok(delivered)
    }

    /// Handle events from `inbox` until it closes and every accepted event is handled. Events
    /// of one conversation are handled in order; up to `shards` conversations at once.
    pub async fn run(self: Arc<Self>, mut inbox: mpsc::Receiver<Event>, shards: usize) {
        let shards = shards.max(1);
        let mut lanes = Vec::with_capacity(shards);
        let mut workers = JoinSet::new();
        let newest = Newest::default();
        for _ in 0..shards {
            let (tx, mut rx) = mpsc::channel::<(InFlight, Event)>(256);
            lanes.push(tx);
            let pipeline = self.clone();
            workers.spawn(async move {
                while let Some((current, event)) = rx.recv().await {
                    let done = current.clone();
                    IN_PIPELINE.scope(current, pipeline.handle(event)).await;
                    done.finished();
                }
            });
        }
        let hasher = std::collections::hash_map::RandomState::new();
        let mut seq = 0u64;
        while let Some(event) = inbox.recv().await {
            let mut h = hasher.build_hasher();
            event.channel().hash(&mut h);
            event.conversation().hash(&mut h);
            let key = h.finish();
            let lane = (key % shards as u64) as usize;
            seq = seq.wrapping_add(1);
            let current = InFlight {
                newest: newest.clone(),
                key,
                seq,
            };
            current.accepted();
            if lanes[lane].send((current, event)).await.is_err() {
                tracing::error!("pipeline lane stopped unexpectedly");
            }
        }
        drop(lanes);
        while workers.join_next().await.is_some() {}
    }
}

/// Per conversation (by its lane hash), the number of the newest event accepted from the
/// inbox and not yet handled.
type Newest = Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>>;

/// The inbox event a lane is handling: its conversation and its number.
#[derive(Clone)]
struct InFlight {
    newest: Newest,
    key: u64,
    seq: u64,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, u64>> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This event is the conversation's newest.
    fn accepted(&self) {
        self.lock().insert(self.key, self.seq);
    }

    /// Handled: forget the conversation unless a newer event is waiting.
    fn finished(&self) {
        let mut newest = self.lock();
        if newest.get(&self.key) == Some(&self.seq) {
            newest.remove(&self.key);
        }
    }

    fn overtaken(&self) -> bool {
        self.lock().get(&self.key).is_some_and(|n| *n != self.seq)
    }
}

tokio::task_local! {
    static IN_PIPELINE: InFlight;
}

/// Whether the inbox event being handled by this future has a newer event of the same
/// conversation waiting behind it (false outside [`Pipeline::run`]'s lanes).
pub(crate) fn overtaken_in_process() -> bool {
    IN_PIPELINE.try_with(InFlight::overtaken).unwrap_or(false)
}
