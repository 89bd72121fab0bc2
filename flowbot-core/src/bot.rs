//! The [`Bot`] builder: channels, router, store, actions, task handlers and schedules, checked
//! for consistency and run together.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::action::{Action, ActionRegistry};
use crate::channel::{Channel, Inbox, Senders};
use crate::error::{Error, Result, TaskError};
use crate::message::{Event, Outbound};
use crate::middleware::{Dedupe, Middleware};
use crate::pipeline::{
    DELIVER_TASK, ErrorHook, FailureReply, INBOUND_TASK, Pipeline, PipelineError,
};
use crate::router::{Router, Services};
use crate::store::Store;
use crate::task::{
    CronConfig, KindOptions, RetryPolicy, ScheduleDef, TaskClient, TaskHandler, TaskRegistry,
    WorkerConfig, WorkerPool, WorkerStats, register_schedule, run_cron, typed_handler,
};
#[cfg(feature = "workflows")]
use crate::workflow::Workflows;

/// Builds a [`Bot`]; see [`Bot::builder`].
pub struct BotBuilder {
    channels: Vec<Channel>,
    router: Option<Arc<dyn Router>>,
    store: Option<Arc<dyn Store>>,
    actions: Vec<Arc<dyn Action>>,
    tasks: TaskRegistry,
    task_errors: Vec<Error>,
    schedules: Vec<ScheduleDef>,
    middleware: Vec<Arc<dyn Middleware>>,
    dedupe: bool,
    on_error: Option<ErrorHook>,
    failure_reply: FailureReply,
    workers: Option<WorkerConfig>,
    run_workers: bool,
    cron: CronConfig,
    shards: usize,
    inbox_capacity: usize,
    #[cfg(feature = "workflows")]
    workflows: Option<Arc<Workflows>>,
    assistant: Option<Arc<dyn crate::llm::Assistant>>,
    notifiers: std::collections::BTreeMap<String, Arc<dyn crate::notify::Notifier>>,
}

impl std::fmt::Debug for BotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotBuilder")
            .field("channels", &self.channels)
            .field("tasks", &self.tasks)
            .field("schedules", &self.schedules.len())
            .finish_non_exhaustive()
    }
}

/// A bot: its pipeline, and optionally workers and the cron loop, ready to [`Bot::run`].
///
/// ```
/// use flowbot_core::{Bot, Handlers, InProcess, Reply};
///
/// let (channel, _handle) = InProcess::channel("local", 64);
/// let bot = Bot::builder()
///     .channel(channel)
///     .router(Handlers::new(()).fallback(|_cx| async { Ok(Reply::text("hi")) }))
///     .build()
///     .expect("a channel and a router are all a bot needs");
/// # let _ = bot;
///
/// // Missing parts are reported, not panicked on:
/// let err = Bot::builder().build().unwrap_err();
/// assert!(err.to_string().contains("no router"));
/// ```
pub struct Bot {
    channels: Vec<Channel>,
    pipeline: Arc<Pipeline>,
    tasks: Option<TaskClient>,
    store: Option<Arc<dyn Store>>,
    registry: Arc<TaskRegistry>,
    schedules: Vec<ScheduleDef>,
    workers: Option<WorkerConfig>,
    worker_stats: Arc<WorkerStats>,
    cron: CronConfig,
    shards: usize,
    inbox_capacity: usize,
    #[cfg(feature = "workflows")]
    workflows: Option<Arc<Workflows>>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("channels", &self.channels)
            .field("tasks", &self.registry)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Default for BotBuilder {
    fn default() -> Self {
        BotBuilder {
            channels: Vec::new(),
            router: None,
            store: None,
            actions: Vec::new(),
            tasks: TaskRegistry::new(),
            task_errors: Vec::new(),
            schedules: Vec::new(),
            middleware: Vec::new(),
            dedupe: true,
            on_error: None,
            failure_reply: FailureReply::default(),
            workers: None,
            run_workers: true,
            cron: CronConfig::default(),
            shards: 64,
            inbox_capacity: 1024,
            #[cfg(feature = "workflows")]
            workflows: None,
            assistant: None,
            notifiers: std::collections::BTreeMap::new(),
        }
    }
}

impl BotBuilder {
    /// Add a channel. Names must be unique.
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channels.push(channel);
        self
    }

    /// Set the router (required).
    pub fn router(mut self, router: impl Router) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// Set a shared router.
    pub fn router_arc(mut self, router: Arc<dyn Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Persist messages and sessions, and run tasks, in `store`.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Register an action besides the built-ins.
    pub fn action(mut self, action: impl Action) -> Self {
        self.actions.push(Arc::new(action));
        self
    }

    /// Register a task handler with the default retry policy.
    pub fn task(self, kind: &str, handler: impl TaskHandler) -> Self {
        self.task_with(kind, KindOptions::default(), handler)
    }

    /// Register a task handler with options.
    pub fn task_with(
        mut self,
        kind: &str,
        options: KindOptions,
        handler: impl TaskHandler,
    ) -> Self {
        if let Err(e) = self.tasks.register_with(kind, options, handler) {
            self.task_errors.push(e);
        }
        self
    }

    /// Fire `schedule` (registered in the store when the bot starts).
    pub fn schedule(mut self, schedule: ScheduleDef) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Add a notifier under `name`; the `notify` action (registered once there is one)
    /// sends through it.
    pub fn notifier(
        mut self,
        name: impl Into<String>,
        notifier: impl crate::notify::Notifier,
    ) -> Self {
        self.notifiers.insert(name.into(), Arc::new(notifier));
        self
    }

    /// [`notifier`](Self::notifier) for a notifier already shared.
    pub fn notifier_arc(
        mut self,
        name: impl Into<String>,
        notifier: Arc<dyn crate::notify::Notifier>,
    ) -> Self {
        self.notifiers.insert(name.into(), notifier);
        self
    }

    /// Run workflows with `engine`: its task handlers join the workers, and the actions
    /// `workflow.run` and `publish_event` join the registry. Needs a store.
    #[cfg(feature = "workflows")]
    #[cfg_attr(docsrs, doc(cfg(feature = "workflows")))]
    pub fn workflows(mut self, engine: Arc<Workflows>) -> Self {
        self.workflows = Some(engine);
        self
    }

    /// Answer with a language model: the `llm` rule action and routers reach `assistant`
    /// through [`Services::assistant`](crate::Services::assistant). `flowbot-llm`'s `Agent`
    /// is one.
    pub fn assistant(mut self, assistant: Arc<dyn crate::llm::Assistant>) -> Self {
        self.assistant = Some(assistant);
        self
    }

    /// Add middleware; it runs in the order added, after deduplication.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Turn off the built-in in-memory deduplication of redelivered events.
    pub fn without_dedupe(mut self) -> Self {
        self.dedupe = false;
        self
    }

    /// Called for every error in the pipeline (the default logs it).
    pub fn on_error(mut self, hook: impl Fn(&PipelineError<'_>) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(hook));
        self
    }

    /// What a person hears when handling their message fails (default:
    /// [`FailureReply::default`], a short apology, or the words of a
    /// [`Refusal`](crate::Refusal) such as "the delay must be more than zero").
    pub fn failure_reply(mut self, reply: FailureReply) -> Self {
        self.failure_reply = reply;
        self
    }

    /// Worker pool settings (defaults: [`WorkerConfig::default`]).
    pub fn workers(mut self, config: WorkerConfig) -> Self {
        self.workers = Some(config);
        self
    }

    /// Run no workers or cron loop in this process (a server in distributed mode); tasks are
    /// still enqueued for agents elsewhere.
    pub fn without_workers(mut self) -> Self {
        self.run_workers = false;
        self
    }

    /// Cron loop settings.
    pub fn cron(mut self, config: CronConfig) -> Self {
        self.cron = config;
        self
    }

    /// How many conversations are handled at once (events of one conversation stay in order).
    pub fn concurrency(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Check everything and build the bot.
    pub fn build(mut self) -> Result<Bot> {
        if let Some(e) = self.task_errors.into_iter().next() {
            return Err(e);
        }
        let router = self.router.ok_or_else(|| {
            Error::Build("no router: call .router(..) with Handlers or a rules engine".into())
        })?;
        if self.channels.is_empty() {
            return Err(Error::Build(
                "no channels: add at least one with .channel(..)".into(),
            ));
        }
        if self.shards == 0 {
            return Err(Error::Build("concurrency must be at least 1".into()));
        }
        let mut senders = Senders::default();
        for c in &self.channels {
            senders.insert(c.name().clone(), c.sender().clone())?;
        }
        let senders = Arc::new(senders);
        let mut actions = ActionRegistry::with_builtins();
        for a in self.actions {
            actions.register_arc(a)?;
        }
        if !self.notifiers.is_empty() {
            actions.register(crate::notify::Notify(std::mem::take(&mut self.notifiers)))?;
        }
        #[cfg(feature = "workflows")]
        if let Some(engine) = &self.workflows {
            if self.store.is_none() {
                return Err(Error::Build(
                    "workflows need a store: runs and their nodes live in it; add .store(..)"
                        .into(),
                ));
            }
            actions.register(crate::workflow::RunWorkflow(engine.clone()))?;
            actions.register(crate::workflow::PublishEvent)?;
            engine.register_tasks(&mut self.tasks)?;
        }

        if self.store.is_none() {
            if !self.tasks.is_empty() {
                return Err(Error::Build(
                    "task handlers are registered but there is no store: the task queue lives in the store; add .store(..)".into(),
                ));
            }
            if !self.schedules.is_empty() {
                return Err(Error::Build(
                    "schedules need a store: add .store(..)".into(),
                ));
            }
        }
        let pipeline_cell: Arc<std::sync::OnceLock<Arc<Pipeline>>> = Arc::default();
        if let Some(store) = &self.store {
            let (deliver_senders, deliver_store) = (senders.clone(), store.clone());
            let deliver = typed_handler(move |out: Outbound, _cx| {
                let (senders, store) = (deliver_senders.clone(), deliver_store.clone());
                async move {
                    senders.send(&out).await.map_err(TaskError::from)?;
                    // Sent: a failure to record it must not send it again.
                    if let Err(e) = store.save_outbound(&out).await {
                        tracing::warn!(error = %e, "delivered message could not be stored in the history");
                    }
                    Ok(())
                }
            });
            let options = KindOptions {
                retry: RetryPolicy::default(),
                timeout: Some(Duration::from_secs(30)),
            };
            self.tasks.register_with(DELIVER_TASK, options, deliver)?;
            let cell = pipeline_cell.clone();
            let inbound_retry = RetryPolicy::default();
            let max_attempts = inbound_retry.max_attempts;
            let max_delay_ms = inbound_retry.max_delay_ms;
            let inbound = typed_handler(move |event: Event, cx| {
                let cell = cell.clone();
                async move {
                    let pipeline = cell
                        .get()
                        .cloned()
                        .ok_or_else(|| TaskError::retryable("the pipeline is not running yet"))?;
                    let allowed = cx
                        .task()
                        .retry
                        .as_ref()
                        .map_or(max_attempts, |r| r.max_attempts);
                    // A failed stage fails the task: the queue retries a transient failure
                    // and dead-letters any other with its error, so no message is lost
                    // silently. Input the bot refused was answered: that is its handling.
                    match pipeline.handle_queued(event, cx.attempt() >= allowed).await {
                        Ok(_) => Ok(()),
                        Err(failure) if failure.is_transient() => {
                            // The service's wait, but no longer than the inbound policy's
                            // longest backoff: a person is waiting for this answer.
                            let wait = failure
                                .error
                                .retry_after()
                                .map(|w| w.min(Duration::from_millis(max_delay_ms)));
                            // The failure stays the task error's source.
                            let retry = TaskError::with_source(Box::new(failure), false);
                            Err(match wait {
                                Some(wait) => retry.retry_after(wait),
                                None => retry,
                            })
                        }
                        Err(failure) if failure.error.refusal().is_some() => Ok(()),
                        Err(failure) => Err(TaskError::with_source(Box::new(failure), true)),
                    }
                }
            });
            let options = KindOptions {
                retry: inbound_retry,
                timeout: None,
            };
            self.tasks.register_with(INBOUND_TASK, options, inbound)?;
        }
        for s in &self.schedules {
            s.spec()?;
            if self.run_workers && !self.tasks.contains(&s.kind) {
                return Err(Error::Build(format!(
                    "schedule '{}' enqueues task kind '{}', which has no handler",
                    s.name, s.kind
                )));
            }
        }
        let workers = match (self.run_workers, &self.store) {
            (true, Some(_)) => {
                let config = self.workers.unwrap_or_default();
                config.validate()?;
                Some(config)
            }
            _ => None,
        };

        let registry = Arc::new(self.tasks);
        let tasks = self.store.as_ref().map(|s| {
            let client = TaskClient::new(s.clone());
            if workers.is_some() {
                client.only_kinds_of(&registry)
            } else {
                client
            }
        });
        let mut middleware: Vec<Arc<dyn Middleware>> = Vec::new();
        if self.dedupe {
            middleware.push(Arc::new(Dedupe::default()));
        }
        middleware.extend(self.middleware);
        let on_error = self.on_error.unwrap_or_else(|| {
            Arc::new(|e: &PipelineError<'_>| {
                tracing::error!(channel = %e.event.channel(), stage = ?e.stage, error = %e.error, "pipeline error");
            })
        });
        let actions = Arc::new(actions);
        #[cfg(feature = "workflows")]
        if let Some(engine) = &self.workflows {
            engine.attach(actions.clone(), senders.clone());
        }
        let pipeline = Pipeline {
            router,
            middleware,
            services: Services {
                store: self.store.clone(),
                tasks: tasks.clone(),
                actions,
                senders,
                assistant: self.assistant.clone(),
            },
            on_error,
            failure_reply: self.failure_reply,
            stats: Arc::default(),
        };
        let pipeline = Arc::new(pipeline);
        // The inbound task handler reaches the pipeline through this cell, set exactly once here.
        let _ = pipeline_cell.set(pipeline.clone());
        Ok(Bot {
            channels: self.channels,
            pipeline,
            tasks,
            store: self.store,
            registry,
            schedules: self.schedules,
            workers,
            worker_stats: Arc::default(),
            cron: self.cron,
            shards: self.shards,
            inbox_capacity: self.inbox_capacity,
            #[cfg(feature = "workflows")]
            workflows: self.workflows,
        })
    }
}

impl Bot {
    /// Start building a bot.
    pub fn builder() -> BotBuilder {
        BotBuilder::default()
    }

    /// The workflow engine, when the bot has one.
    #[cfg(feature = "workflows")]
    #[cfg_attr(docsrs, doc(cfg(feature = "workflows")))]
    pub fn workflows(&self) -> Option<&Arc<Workflows>> {
        self.workflows.as_ref()
    }

    /// The pipeline (to handle events directly, or read its counters).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Counters of this bot's worker pool (zero when it runs no workers).
    pub fn worker_stats(&self) -> &Arc<WorkerStats> {
        &self.worker_stats
    }

    /// Whether this bot runs workers and the cron loop.
    pub fn runs_workers(&self) -> bool {
        self.workers.is_some()
    }

    /// The task client, when the bot has a store.
    pub fn tasks(&self) -> Option<&TaskClient> {
        self.tasks.as_ref()
    }

    /// Handle one event now, without a listener; returns the replies sent.
    pub async fn handle(&self, event: Event) -> Vec<Outbound> {
        self.pipeline.handle(event).await
    }

    /// Run listeners, pipeline, workers and cron until `shutdown` is cancelled, then stop in
    /// order: listeners first, then the pipeline drains accepted events, then workers finish
    /// or release their tasks.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        if let Some(store) = &self.store {
            for s in &self.schedules {
                register_schedule(store.as_ref(), s).await?;
            }
        }
        let (inbox, rx) = Inbox::new(self.inbox_capacity);
        let listeners_stop = shutdown.child_token();
        let mut listeners = tokio::task::JoinSet::new();
        for c in &self.channels {
            if let Some(listener) = c.listener().cloned() {
                let (inbox, stop, name) = (inbox.clone(), listeners_stop.clone(), c.name().clone());
                listeners.spawn(async move {
                    if let Err(e) = listener.listen(inbox, stop).await {
                        tracing::error!(channel = %name, error = %e, "channel listener stopped");
                    }
                });
            }
        }
        drop(inbox);
        let pipeline = tokio::spawn(self.pipeline.clone().run(rx, self.shards));

        let workers_stop = CancellationToken::new();
        let mut background = tokio::task::JoinSet::new();
        if let (Some(config), Some(store)) = (self.workers.clone(), self.store.clone()) {
            let pool = WorkerPool::new(store.clone(), self.registry.clone(), config)?
                .with_stats(self.worker_stats.clone());
            background.spawn(pool.run(workers_stop.clone()));
            background.spawn(run_cron(store, self.cron.clone(), workers_stop.clone()));
        }

        shutdown.cancelled().await;
        listeners_stop.cancel();
        while listeners.join_next().await.is_some() {}
        if let Err(e) = pipeline.await {
            tracing::error!(error = %e, "pipeline task failed");
        }
        workers_stop.cancel();
        while background.join_next().await.is_some() {}
        Ok(())
    }
}
