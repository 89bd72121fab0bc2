//! The executor side of the task scheduler: handlers, the worker pool, leases, retries and
//! graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{Liveness, WorkerConfig};
use super::liveness::{DeadWorker, LivenessLock, dead_workers};
use super::queue::TaskQueue;
use super::types::{ClaimRequest, ClaimedTask, FailOutcome, Failure, RetryPolicy, TaskId};
use crate::error::{Error, Result, StoreError, TaskError};

/// What a task handler gets: the task, its attempt number, and tokens that tell it to stop.
#[derive(Debug, Clone)]
pub struct TaskContext {
    task: Arc<ClaimedTask>,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
    worker: Arc<str>,
    lease: Duration,
}

impl TaskContext {
    /// The claimed task.
    pub fn task(&self) -> &ClaimedTask {
        &self.task
    }

    /// This attempt's number, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.task.attempt
    }

    /// Same for every attempt of the task; use it to make side effects idempotent.
    pub fn idempotency_key(&self) -> String {
        self.task.idempotency_key()
    }

    /// Cancelled when the worker lost the task's lease (another worker may run it now) or
    /// when the pool is shutting down and its deadline passed. Long handlers should stop.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.lease_lost
    }

    /// Cancelled when the pool starts shutting down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The id of the worker pool running the task (the owner of its lease).
    pub fn worker_id(&self) -> &str {
        &self.worker
    }

    /// How long a lease of this pool lasts without a heartbeat.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

/// Runs tasks of one kind.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot task handler",
    note = "implement `TaskHandler`, or wrap an async closure with `handler_fn` or `typed_handler`"
)]
pub trait TaskHandler: Send + Sync + 'static {
    /// Run one attempt of the task.
    async fn run(&self, cx: TaskContext) -> Result<(), TaskError>;
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> TaskHandler for FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
{
    async fn run(&self, cx: TaskContext) -> Result<(), TaskError> {
        (self.0)(cx).await
    }
}

/// A handler from an async closure taking the [`TaskContext`].
pub fn handler_fn<F, Fut>(f: F) -> impl TaskHandler
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
{
    FnHandler(f)
}

struct TypedHandler<T, F>(F, std::marker::PhantomData<fn() -> T>);

#[async_trait]
impl<T, F, Fut> TaskHandler for TypedHandler<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
{
    async fn run(&self, cx: TaskContext) -> Result<(), TaskError> {
        // A payload that does not fit the type will never fit: dead-letter at once.
        let payload: T = cx.task().payload().map_err(TaskError::permanent)?;
        (self.0)(payload, cx).await
    }
}

/// A handler from an async closure taking the deserialised payload; a payload that does not
/// deserialise into `T` dead-letters the task with the serde error.
pub fn typed_handler<T, F, Fut>(f: F) -> impl TaskHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
{
    TypedHandler(f, std::marker::PhantomData)
}

struct Registered {
    handler: Arc<dyn TaskHandler>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
}

/// Task kinds and their handlers, retry policies and timeouts.
#[derive(Default)]
pub struct TaskRegistry {
    kinds: HashMap<String, Registered>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Options for one registered task kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct KindOptions {
    /// Retry policy for tasks of this kind without their own.
    pub retry: RetryPolicy,
    /// Per-attempt time limit; an attempt running longer fails (and may be retried).
    pub timeout: Option<Duration>,
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `handler` for `kind` with the default retry policy and no timeout.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl TaskHandler) -> Result<()> {
        self.register_with(kind, KindOptions::default(), handler)
    }

    /// Register `handler` for `kind` with options. A kind can be registered once.
    pub fn register_with(
        &mut self,
        kind: impl Into<String>,
        options: KindOptions,
        handler: impl TaskHandler,
    ) -> Result<()> {
        let kind = kind.into();
        options.retry.validate()?;
        if kind.is_empty() {
            return Err(Error::Build("task kind names must not be empty".into()));
        }
        if options.timeout == Some(Duration::ZERO) {
            return Err(Error::Build(format!(
                "task kind '{kind}': timeout must be greater than zero"
            )));
        }
        if self.kinds.contains_key(&kind) {
            return Err(Error::Build(format!(
                "task kind '{kind}' is registered twice"
            )));
        }
        let registered = Registered {
            handler: Arc::new(handler),
            retry: options.retry,
            timeout: options.timeout,
        };
        self.kinds.insert(kind, registered);
        Ok(())
    }

    /// Registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

/// The task a handler's future runs for.
#[derive(Clone)]
struct Current {
    queue: Arc<dyn TaskQueue>,
    id: TaskId,
    concurrency_key: Option<String>,
}

tokio::task_local! {
    static IN_HANDLER: Current;
}

/// Whether the caller runs inside a task handler of a [`WorkerPool`] (in the handler's own
/// future: tasks it spawns do not count). Stores use it to tell the tasks that processing
/// creates from work arriving from outside, like a webhook waiting for its acknowledgement.
pub fn in_task_handler() -> bool {
    IN_HANDLER.try_with(|_| ()).is_ok()
}

/// Whether the message being handled has been overtaken by a newer one of the same
/// conversation, waiting behind it: in the durable queue (a task with the same concurrency
/// key), or in this process's pipeline (an event from a channel's inbox). Long work that only
/// matters until then (an answer being written) can check it and stop. False outside a
/// handler, for a task without a concurrency key, and when the queue cannot be asked (the
/// error is logged).
pub async fn superseded() -> bool {
    // An event from a channel's inbox, handled in this process.
    if crate::pipeline::overtaken_in_process() {
        return true;
    }
    let Ok(Some(current)) = IN_HANDLER.try_with(|c| c.concurrency_key.is_some().then(|| c.clone()))
    else {
        return false;
    };
    let key = current.concurrency_key.as_deref().unwrap_or_default();
    match current.queue.queued_after(key, current.id).await {
        Ok(newer) => newer,
        Err(e) => {
            tracing::warn!(task = %current.id.0, error = %e, "could not ask the queue whether a newer task is waiting");
            false
        }
    }
}

/// Counters of a running pool.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Tasks claimed.
    pub claimed: AtomicU64,
    /// Tasks completed and acknowledged.
    pub completed: AtomicU64,
    /// Failed attempts sent back for retry.
    pub retried: AtomicU64,
    /// Tasks dead-lettered.
    pub dead: AtomicU64,
    /// Tasks whose lease was lost while running.
    pub lease_lost: AtomicU64,
    /// Tasks this pool returned to the queue for workers that were gone: pools that ended
    /// (their liveness lock was free) and leases that expired.
    pub recovered: AtomicU64,
    /// Store errors seen by the pool (each followed by a backoff).
    pub store_errors: AtomicU64,
    /// Time from a task being due to its handler starting.
    pub start_delay: crate::metrics::Histogram,
    /// Handler run time.
    pub run_time: crate::metrics::Histogram,
}

impl WorkerStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The delay after `failures` consecutive store errors: 100 ms doubling up to 5 s, jittered.
pub(crate) fn error_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    let ms = (100u64 << exp).min(5_000);
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

/// A pool of workers claiming tasks from a [`TaskQueue`] and running their handlers.
pub struct WorkerPool {
    queue: Arc<dyn TaskQueue>,
    registry: Arc<TaskRegistry>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    queue: Arc<dyn TaskQueue>,
    registry: Arc<TaskRegistry>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
    inflight: Mutex<HashMap<TaskId, CancellationToken>>,
    freed: Notify,
    acks: mpsc::UnboundedSender<TaskId>,
    shutdown: CancellationToken,
    /// Where pools of this database on this host keep their liveness locks.
    liveness_dir: Option<PathBuf>,
    /// Set when a task may still be leased to this pool after it stopped (an acknowledgement
    /// or failure given up at shutdown, a release that failed).
    unfinished: AtomicBool,
}

impl Shared {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, CancellationToken>> {
        // The map holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WorkerPool {
    /// A pool running `registry`'s handlers on tasks from `queue`.
    pub fn new(
        queue: Arc<dyn TaskQueue>,
        registry: Arc<TaskRegistry>,
        config: WorkerConfig,
    ) -> Result<Self> {
        config.validate()?;
        if registry.is_empty() {
            return Err(Error::Build(
                "worker pool: no task handlers are registered".into(),
            ));
        }
        Ok(WorkerPool {
            queue,
            registry,
            config,
            stats: Arc::new(WorkerStats::default()),
        })
    }

    /// Use `stats` (shared with the caller) for this pool's counters.
    pub fn with_stats(mut self, stats: Arc<WorkerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Counters, shared with the running pool.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` is cancelled; then stop claiming, let running tasks finish within
    /// the shutdown timeout, release the rest to the queue, and flush acknowledgements.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut config = self.config;
        let liveness_dir = match &config.liveness {
            Liveness::Auto => self.queue.liveness_dir(),
            Liveness::Dir(dir) => Some(dir.clone()),
            Liveness::Off => None,
        };
        // The lock comes first: every task this pool claims is leased to its owner.
        let lock = match &liveness_dir {
            Some(dir) => register(dir.clone(), config.id.clone()).await,
            None => None,
        };
        if let Some(lock) = &lock {
            config.id = lock.owner().to_owned();
        }
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: self.queue,
            registry: self.registry,
            config,
            stats: self.stats,
            inflight: Mutex::new(HashMap::new()),
            freed: Notify::new(),
            acks: ack_tx,
            shutdown: shutdown.clone(),
            liveness_dir,
            unfinished: AtomicBool::new(false),
        });
        let background = CancellationToken::new();
        // Dropped unfinished (its future dropped), the pool stops its heartbeats too, so the
        // leases of the handlers it dropped expire.
        let _stop_background = background.clone().drop_guard();
        let acker = tokio::spawn(ack_loop(shared.clone(), ack_rx));
        let heartbeats = tokio::spawn(heartbeat_loop(shared.clone(), background.clone()));
        let recovery = tokio::spawn(recovery_loop(shared.clone(), background.clone()));

        let mut running = JoinSet::new();
        fetch_loop(&shared, &mut running).await;

        // Shutdown: wait for running tasks up to the deadline, then release whatever is left
        // (tasks cut off at the deadline, and prefetched tasks that never started).
        let deadline = tokio::time::sleep(shared.config.shutdown_timeout);
        tokio::pin!(deadline);
        let timed_out = loop {
            tokio::select! {
                next = running.join_next() => if next.is_none() { break false },
                () = &mut deadline => break true,
            }
        };
        if timed_out {
            for token in shared.inflight().values() {
                token.cancel();
            }
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
        let left: Vec<TaskId> = shared.inflight().keys().copied().collect();
        if !left.is_empty() {
            match shared.queue.release(&shared.config.id, &left).await {
                Ok(n) => tracing::info!(
                    released = n,
                    "shutdown: released unfinished tasks to the queue"
                ),
                Err(e) => {
                    shared.unfinished.store(true, Ordering::Relaxed);
                    tracing::warn!(error = %e, "shutdown: releasing tasks failed; their leases will expire")
                }
            }
        }
        background.cancel();
        let _ = heartbeats.await;
        let _ = recovery.await;
        // Every handler has stopped: nothing sets the flag any more.
        let unfinished = shared.unfinished.load(Ordering::Relaxed);
        drop(shared);
        let acked = acker.await.unwrap_or(false);
        let clean = acked && !unfinished;
        if let Some(lock) = lock {
            if clean {
                // Nothing is leased to this pool any more: no one needs to look for it.
                let _ = tokio::task::spawn_blocking(move || lock.close()).await;
            } else {
                // Let the lock go and leave the file: the next pool to look returns what is
                // still leased to this one to the queue at once.
                drop(lock);
            }
        }
    }
}

/// Take a liveness lock in `dir` for `id`; on failure the pool runs on leases alone.
async fn register(dir: PathBuf, id: String) -> Option<LivenessLock> {
    let shown = dir.clone();
    match tokio::task::spawn_blocking(move || LivenessLock::acquire(&dir, &id)).await {
        Ok(Ok(lock)) => {
            tracing::debug!(lock = %lock.path().display(), owner = %lock.owner(), "liveness lock taken");
            Some(lock)
        }
        Ok(Err(e)) => {
            tracing::warn!(dir = %shown.display(), error = %e, "cannot take a liveness lock; tasks of this process will wait for their leases after a crash");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "taking a liveness lock failed");
            None
        }
    }
}

async fn fetch_loop(shared: &Arc<Shared>, running: &mut JoinSet<()>) {
    let global = Arc::new(Semaphore::new(shared.config.concurrency));
    let queues: Vec<(String, Option<Arc<Semaphore>>)> = shared
        .config
        .queues
        .iter()
        .map(|q| (q.name.clone(), q.limit.map(|l| Arc::new(Semaphore::new(l)))))
        .collect();
    let kinds: Vec<String> = shared.registry.kinds().map(str::to_owned).collect();
    let capacity = shared
        .config
        .concurrency
        .saturating_add(shared.config.prefetch);
    let mut wake = shared.queue.wake_signal();
    let mut failures = 0u32;
    while !shared.shutdown.is_cancelled() {
        while running.try_join_next().is_some() {}
        let mut more_work = false;
        let mut full = false;
        let mut errored = false;
        for (name, limit) in &queues {
            // Room for running tasks plus prefetched ones; a limited queue prefetches nothing.
            let mut room = capacity.saturating_sub(shared.inflight().len());
            if let Some(sem) = limit {
                room = room.min(sem.available_permits());
            }
            let room = u32::try_from(room)
                .unwrap_or(u32::MAX)
                .min(shared.config.batch_size);
            if room == 0 {
                full = true;
                continue;
            }
            let req = ClaimRequest {
                worker: &shared.config.id,
                queue: name,
                kinds: &kinds,
                limit: room,
                lease: shared.config.lease,
            };
            let tasks = match shared.queue.claim(&req).await {
                Ok(tasks) => tasks,
                Err(e) => {
                    failures += 1;
                    errored = true;
                    WorkerStats::bump(&shared.stats.store_errors);
                    tracing::warn!(queue = %name, error = %e, "claiming tasks failed; backing off");
                    break;
                }
            };
            failures = 0;
            more_work |= tasks.len() as u32 == room;
            // Leased tasks are heartbeated (and released at shutdown) from here on, also
            // while they wait for a free worker.
            let tokens: Vec<CancellationToken> = {
                let mut inflight = shared.inflight();
                tasks
                    .iter()
                    .map(|t| {
                        let token = CancellationToken::new();
                        inflight.insert(t.id, token.clone());
                        token
                    })
                    .collect()
            };
            for (task, token) in tasks.into_iter().zip(tokens) {
                let permits = tokio::select! {
                    permits = acquire(&global, limit.as_ref()) => permits,
                    () = shared.shutdown.cancelled() => return,
                };
                WorkerStats::bump(&shared.stats.claimed);
                running.spawn(run_task(shared.clone(), task, token, permits));
            }
        }
        if errored {
            tokio::select! {
                () = shared.shutdown.cancelled() => {}
                () = tokio::time::sleep(error_backoff(failures)) => {}
            }
            continue;
        }
        if more_work {
            continue;
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => {}
            changed = wake.changed() => if changed.is_err() {
                // The store dropped its signal; fall back to polling.
                tokio::time::sleep(shared.config.poll_interval).await;
            },
            () = shared.freed.notified(), if full => {}
            () = tokio::time::sleep(shared.config.poll_interval) => {}
        }
    }
}

async fn acquire(
    global: &Arc<Semaphore>,
    queue: Option<&Arc<Semaphore>>,
) -> Vec<OwnedSemaphorePermit> {
    // The semaphores are never closed, so acquiring only waits, never fails.
    let mut permits = Vec::with_capacity(2);
    if let Some(sem) = queue {
        permits.extend(sem.clone().acquire_owned().await.ok());
    }
    permits.extend(global.clone().acquire_owned().await.ok());
    permits
}

async fn run_task(
    shared: Arc<Shared>,
    task: ClaimedTask,
    lease_lost: CancellationToken,
    permits: Vec<OwnedSemaphorePermit>,
) {
    let id = task.id;
    let waited = (crate::clock::now() - task.run_at)
        .to_std()
        .unwrap_or_default();
    shared.stats.start_delay.observe(waited);
    let started = std::time::Instant::now();
    let task = Arc::new(task);
    let registered = shared.registry.kinds.get(&task.kind);
    let result = match registered {
        None => Err(TaskError::permanent(Error::UnknownTaskKind(
            task.kind.clone(),
        ))),
        Some(reg) => {
            let cx = TaskContext {
                task: task.clone(),
                lease_lost: lease_lost.clone(),
                shutdown: shared.shutdown.clone(),
                worker: Arc::from(shared.config.id.as_str()),
                lease: shared.config.lease,
            };
            let current = Current {
                queue: shared.queue.clone(),
                id: task.id,
                concurrency_key: task.concurrency_key.clone(),
            };
            let fut =
                AssertUnwindSafe(IN_HANDLER.scope(current, reg.handler.run(cx))).catch_unwind();
            let outcome = match reg.timeout {
                Some(limit) => match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(Err(TaskError::retryable(format!(
                        "timed out after {limit:?}"
                    )))),
                },
                None => fut.await,
            };
            outcome.unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(TaskError::retryable(format!("handler panicked: {msg}")))
            })
        }
    };
    shared.stats.run_time.observe(started.elapsed());
    shared.inflight().remove(&id);
    if lease_lost.is_cancelled() {
        WorkerStats::bump(&shared.stats.lease_lost);
        tracing::warn!(task = %id, kind = %task.kind, "lease lost while running; result discarded");
    } else {
        match result {
            Ok(()) => {
                // The acknowledgement loop owns the receiver until every sender is gone.
                let _ = shared.acks.send(id);
            }
            Err(err) => record_failure(&shared, &task, registered.map(|r| r.retry), err).await,
        }
    }
    drop(permits);
    shared.freed.notify_one();
}

async fn record_failure(
    shared: &Shared,
    task: &ClaimedTask,
    kind_policy: Option<RetryPolicy>,
    err: TaskError,
) {
    let policy = task.retry.or(kind_policy).unwrap_or_default();
    let retry_at = (!err.is_permanent() && task.attempt < policy.max_attempts).then(|| {
        let delay = err
            .requested_delay()
            .unwrap_or_else(|| policy.delay(task.attempt));
        // Cut down to MAX_DELAY and saturating: no delay a handler asks for can panic here.
        super::after(crate::clock::now(), delay)
    });
    let failure = Failure {
        id: task.id,
        attempt: task.attempt,
        error: err.message().to_owned(),
        retry_at,
    };
    let mut failures = 0;
    loop {
        match shared.queue.fail(&shared.config.id, &failure).await {
            Ok(FailOutcome::Retrying(at)) => {
                WorkerStats::bump(&shared.stats.retried);
                tracing::info!(task = %task.id, kind = %task.kind, attempt = task.attempt, retry_at = %at, error = %failure.error, "task failed; will retry");
                return;
            }
            Ok(FailOutcome::DeadLettered) => {
                WorkerStats::bump(&shared.stats.dead);
                tracing::warn!(task = %task.id, kind = %task.kind, attempt = task.attempt, error = %failure.error, "task dead-lettered");
                return;
            }
            Ok(FailOutcome::LeaseLost) => {
                WorkerStats::bump(&shared.stats.lease_lost);
                return;
            }
            Err(e) => {
                failures += 1;
                WorkerStats::bump(&shared.stats.store_errors);
                tracing::warn!(task = %task.id, error = %e, "recording a task failure failed; retrying");
                if shared.shutdown.is_cancelled() && failures > 3 {
                    // The lease will expire (or the liveness lock will be found free) and
                    // recovery will count the attempt.
                    shared.unfinished.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(error_backoff(failures)).await;
            }
        }
    }
}

/// Acknowledge completed tasks in batches until every sender is gone; returns whether every
/// completion was acknowledged (false when it gave up at shutdown).
async fn ack_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<TaskId>) -> bool {
    let worker = shared.config.id.clone();
    let queue = shared.queue.clone();
    let stats = shared.stats.clone();
    let shutdown = shared.shutdown.clone();
    // Holding `shared` would keep our own sender alive and the loop would never end.
    drop(shared);
    let mut batch = Vec::with_capacity(512);
    let mut failures = 0u32;
    loop {
        if batch.is_empty() && rx.recv_many(&mut batch, 512).await == 0 {
            return true;
        }
        while batch.len() < 4096 && !rx.is_empty() {
            let room = 4096 - batch.len();
            rx.recv_many(&mut batch, room).await;
        }
        match queue.complete(&worker, &batch).await {
            Ok(n) => {
                failures = 0;
                stats.completed.fetch_add(n, Ordering::Relaxed);
                batch.clear();
            }
            Err(e) => {
                failures += 1;
                WorkerStats::bump(&stats.store_errors);
                tracing::warn!(tasks = batch.len(), error = %e, "acknowledging completed tasks failed; retrying");
                if shutdown.is_cancelled() && failures > 5 {
                    tracing::warn!(
                        tasks = batch.len(),
                        "giving up acknowledgements at shutdown; the tasks will run again"
                    );
                    return false;
                }
                tokio::time::sleep(error_backoff(failures)).await;
            }
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.heartbeat) => {}
        }
        let ids: Vec<TaskId> = shared.inflight().keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        match shared
            .queue
            .heartbeat(&shared.config.id, &ids, shared.config.lease)
            .await
        {
            Ok(kept) => {
                let kept: HashSet<TaskId> = kept.into_iter().collect();
                let inflight = shared.inflight();
                for id in ids.iter().filter(|id| !kept.contains(id)) {
                    if let Some(token) = inflight.get(id) {
                        token.cancel();
                    }
                }
            }
            Err(e) => {
                WorkerStats::bump(&shared.stats.store_errors);
                tracing::warn!(tasks = ids.len(), error = %e, "heartbeat failed");
            }
        }
    }
}

async fn recovery_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        if let Some(dir) = &shared.liveness_dir {
            recover_dead_workers(&shared, dir.clone()).await;
        }
        match shared
            .queue
            .recover_expired(crate::clock::now(), shared.config.default_max_attempts)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                shared.stats.recovered.fetch_add(n, Ordering::Relaxed);
                tracing::info!(
                    recovered = n,
                    "returned tasks with expired leases to the queue"
                );
            }
            Err(e) => {
                WorkerStats::bump(&shared.stats.store_errors);
                tracing::warn!(error = %e, "recovering expired leases failed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.recover_interval) => {}
        }
    }
}

/// Return to the queue what pools that ended (their liveness locks in `dir` are free) held,
/// and remove their lock files; on a store error they are left for the next round.
async fn recover_dead_workers(shared: &Shared, dir: PathBuf) {
    let shown = dir.clone();
    let dead: Vec<DeadWorker> = match tokio::task::spawn_blocking(move || dead_workers(&dir)).await
    {
        Ok(Ok(dead)) => dead,
        Ok(Err(e)) => {
            tracing::warn!(dir = %shown.display(), error = %e, "cannot look for pools that ended");
            return;
        }
        Err(_) => return,
    };
    if dead.is_empty() {
        return;
    }
    let owners: Vec<String> = dead.iter().map(|d| d.owner.clone()).collect();
    match shared
        .queue
        .recover_dead_workers(&owners, shared.config.default_max_attempts)
        .await
    {
        Ok(n) => {
            shared.stats.recovered.fetch_add(n, Ordering::Relaxed);
            if n > 0 {
                tracing::info!(recovered = n, workers = ?owners, "returned the tasks of pools that ended to the queue");
            }
            let _ =
                tokio::task::spawn_blocking(move || dead.into_iter().for_each(DeadWorker::forget))
                    .await;
        }
        Err(e) => {
            WorkerStats::bump(&shared.stats.store_errors);
            tracing::warn!(workers = ?owners, error = %e, "recovering the tasks of pools that ended failed");
        }
    }
}

/// Retried, unless the store refused the input or found its data corrupt (as
/// [`Error::is_permanent`](crate::Error::is_permanent) says of them).
impl From<StoreError> for TaskError {
    fn from(e: StoreError) -> Self {
        TaskError::from(crate::Error::Store(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{MAX_LEASE, QueueConfig};
    use chrono::DateTime;

    fn refused(config: &WorkerConfig) -> String {
        config.validate().expect_err("refused").to_string()
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        WorkerConfig::default().validate().expect("the defaults");
        let d = WorkerConfig::default;
        let e = refused(&WorkerConfig {
            lease: MAX_LEASE + Duration::from_secs(1),
            ..d()
        });
        assert!(e.contains("lease must be at most"), "{e}");
        let e = refused(&WorkerConfig {
            lease: Duration::MAX,
            heartbeat: Duration::from_secs(1),
            ..d()
        });
        assert!(e.contains("lease must be at most"), "{e}");
        let e = refused(&WorkerConfig {
            heartbeat: Duration::from_secs(10),
            ..d()
        });
        assert!(
            e.contains("heartbeat") && e.contains("shorter than the lease"),
            "{e}"
        );
        let e = refused(&WorkerConfig {
            concurrency: usize::MAX,
            ..d()
        });
        assert!(e.contains("concurrency must be at most 100000"), "{e}");
        let e = refused(&WorkerConfig {
            prefetch: usize::MAX,
            ..d()
        });
        assert!(e.contains("prefetch must be at most"), "{e}");
        let e = refused(&WorkerConfig {
            queues: vec![QueueConfig {
                name: "q".into(),
                limit: Some(usize::MAX),
            }],
            ..d()
        });
        assert!(e.contains("queue 'q': limit must be at most"), "{e}");
        let e = refused(&WorkerConfig {
            liveness: Liveness::Dir(PathBuf::new()),
            ..d()
        });
        assert!(e.contains("liveness directory"), "{e}");
        // The longest lease, and durations tokio clamps (timeouts, polling), are fine.
        WorkerConfig {
            lease: MAX_LEASE,
            poll_interval: Duration::MAX,
            recover_interval: Duration::MAX,
            shutdown_timeout: Duration::MAX,
            ..d()
        }
        .validate()
        .expect("in range");
    }

    /// The retry time of a failed attempt, whatever delay it asks for: at most
    /// `MAX_DELAY` ahead, never a panic (the old `now + TimeDelta::MAX` overflowed).
    #[test]
    fn retry_times_never_overflow() {
        let now = crate::clock::now();
        let most = now + chrono::Duration::from_std(super::super::MAX_DELAY).expect("fits");
        for delay in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            super::super::MAX_DELAY,
        ] {
            assert_eq!(super::super::after(now, delay), most);
        }
        let late = DateTime::<chrono::Utc>::MAX_UTC - chrono::Duration::seconds(1);
        assert_eq!(
            super::super::after(late, Duration::from_secs(3600)),
            DateTime::<chrono::Utc>::MAX_UTC
        );
    }
}
