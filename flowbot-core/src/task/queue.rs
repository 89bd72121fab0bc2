//! The storage side of the task scheduler: small capability traits each backend implements.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::schedule::{FireOutcome, ScheduleDef, ScheduleState};
use super::types::{
    ClaimRequest, ClaimedTask, DeadLetter, Enqueued, FailOutcome, Failure, NewTask, TaskFilter,
    TaskId, TaskRecord, TaskState,
};
use crate::error::StoreError;
use crate::store::Page;

/// Enqueue, claim, heartbeat and finish tasks: what workers need.
///
/// Semantics every backend keeps (checked by the conformance suite in `flowbot-store`):
/// - `enqueue` with a dedupe key is a no-op while a queued or running task has that key;
/// - `claim` hands each due task to one worker only, with `attempt` incremented, and never
///   hands out a task whose concurrency key another running task holds;
/// - `heartbeat`, `complete`, `fail` and `release` only act on tasks whose lease the worker
///   still owns (a worker whose lease expired cannot complete a task another worker now runs);
/// - `recover_expired` returns tasks with expired leases to the queue, and
///   `recover_dead_workers` the tasks of workers known to be gone, whatever their leases.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot task queue",
    note = "use a backend from `flowbot-store`, or implement `TaskQueue` for your own"
)]
pub trait TaskQueue: Send + Sync + 'static {
    /// Store one task.
    async fn enqueue(&self, task: &NewTask) -> Result<Enqueued, StoreError>;

    /// Store many tasks in one transaction, in order.
    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>, StoreError>;

    /// Whether a task with this concurrency key, enqueued after task `after`, is waiting
    /// (queued): the work of `after` has been overtaken, e.g. a newer message in the same
    /// conversation (see [`superseded`](crate::task::superseded)).
    async fn queued_after(&self, concurrency_key: &str, after: TaskId) -> Result<bool, StoreError>;

    /// Claim up to `req.limit` due tasks of `req.queue` whose kind is in `req.kinds`, oldest
    /// (by priority, then due time) first, leasing them to `req.worker` for `req.lease`.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedTask>, StoreError>;

    /// Extend the leases of `ids` held by `worker`; returns the ids whose lease was extended
    /// (a missing id means the lease was lost).
    async fn heartbeat(
        &self,
        worker: &str,
        ids: &[TaskId],
        lease: Duration,
    ) -> Result<Vec<TaskId>, StoreError>;

    /// Mark tasks done; returns how many were still leased to `worker`.
    async fn complete(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError>;

    /// Record a failed attempt: back to the queue at `retry_at`, or dead-lettered.
    async fn fail(&self, worker: &str, failure: &Failure) -> Result<FailOutcome, StoreError>;

    /// Return leased tasks to the queue without counting the attempt (graceful shutdown).
    async fn release(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError>;

    /// Return tasks whose lease expired before `now` to the queue, counting the lost attempt
    /// as a failure; a task that has used `max_attempts` attempts (its own policy's, else this
    /// default) is dead-lettered instead. Returns how many tasks were recovered.
    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> Result<u64, StoreError>;

    /// Return the running tasks leased to `workers` to the queue at once, whatever their
    /// leases say: the caller knows those workers are gone (their liveness locks were free, see
    /// [`WorkerConfig::liveness`](super::WorkerConfig::liveness)). Each lost attempt counts
    /// as a failure recorded in the task's error history, and a task that has used
    /// `max_attempts` attempts (its own policy's, else this default) is dead-lettered, as in
    /// `recover_expired`; concurrency keys are released. Returns how many tasks were recovered.
    ///
    /// The default recovers nothing: the tasks wait for their leases to expire.
    async fn recover_dead_workers(
        &self,
        workers: &[String],
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let _ = (workers, default_max_attempts);
        Ok(0)
    }

    /// The directory where worker pools of this database on this host keep their liveness
    /// locks, when a pool's [`Liveness`](super::Liveness) is `Auto`: one directory per
    /// database, so that pools of one database find each other and pools of another never
    /// meet them. `None` (the default): no liveness locks, leases only.
    fn liveness_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// A signal that changes when new work may be available (enqueue in this process, or a
    /// notification from the database). Idle workers wait on it, with polling as fallback.
    fn wake_signal(&self) -> watch::Receiver<u64>;
}

/// Inspect and manage tasks: what the admin API needs.
#[async_trait]
pub trait TaskAdmin: Send + Sync + 'static {
    /// One task.
    async fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError>;
    /// Tasks matching a filter, newest first.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, StoreError>;
    /// Cancel a queued task; returns whether it was queued.
    async fn cancel_task(&self, id: TaskId) -> Result<bool, StoreError>;
    /// Dead-lettered tasks with their error history, newest first.
    async fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeadLetter>, StoreError>;
    /// Put a dead-lettered task back in the queue with a fresh attempt count; returns whether
    /// it was dead.
    async fn requeue_dead(&self, id: TaskId) -> Result<bool, StoreError>;
    /// How many tasks are in each state (states with none are left out).
    async fn count_tasks(&self) -> Result<Vec<(TaskState, i64)>, StoreError>;
    /// Delete done and cancelled tasks that finished before `before`; returns how many.
    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Cron schedules and their fires.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Create or replace a schedule (by name), with its first fire time.
    async fn upsert_schedule(
        &self,
        def: &ScheduleDef,
        next_fire_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// One schedule.
    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError>;
    /// All schedules, by name.
    async fn list_schedules(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<ScheduleState>, StoreError>;
    /// Pause or resume; when resuming, `next_fire_at` is the next fire time from now.
    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Delete a schedule; returns whether it existed.
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError>;
    /// Unpaused schedules due at `now`.
    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduleState>, StoreError>;
    /// Atomically: record the fire of `name` at `fire_at` unless it was already recorded,
    /// enqueue `task` if it was not, and move the schedule's next fire time forward to
    /// `next_fire_at` (never backward). However many agents call this for the same fire time,
    /// exactly one gets [`FireOutcome::Fired`].
    async fn fire_schedule(
        &self,
        name: &str,
        fire_at: DateTime<Utc>,
        next_fire_at: DateTime<Utc>,
        task: Option<&NewTask>,
    ) -> Result<FireOutcome, StoreError>;
}
