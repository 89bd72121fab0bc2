//! MemoryStore's task queue: the task table (with its indexes, see `index`), the concurrency
//! keys held by running tasks, the error histories and dead letters, and the `TaskQueue`
//! operations over them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowbot_core::StoreError;
use flowbot_core::task::{
    AttemptError, ClaimRequest, ClaimedTask, Enqueued, FailOutcome, Failure, NewTask, RetryPolicy,
    TaskId, TaskQueue, TaskRecord, TaskState,
};
use tokio::sync::watch;

use super::MemoryStore;
use super::index::Indexes;
use crate::common::{self, from_ms, ms, now_ms};

/// One task, as a row of the other backends' `flowbot_tasks` holds it.
#[derive(Debug, Clone)]
pub(super) struct TaskRow {
    pub(super) id: i64,
    pub(super) queue: String,
    pub(super) kind: String,
    /// The payload's JSON text, as given.
    pub(super) payload: String,
    pub(super) state: TaskState,
    pub(super) priority: i16,
    pub(super) run_at: i64,
    pub(super) attempts: u32,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry: Option<RetryPolicy>,
    pub(super) dedupe_key: Option<String>,
    pub(super) concurrency_key: Option<String>,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_until: Option<i64>,
    pub(super) created_at: i64,
    pub(super) finished_at: Option<i64>,
    pub(super) last_error: Option<String>,
}

impl TaskRow {
    /// The task as the admin API shows it; a payload that is not JSON is a corrupt record.
    pub(super) fn record(&self) -> Result<TaskRecord, StoreError> {
        Ok(TaskRecord {
            id: TaskId(self.id),
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            state: self.state,
            payload: common::parse_json(&self.payload, "task payload")?,
            attempts: self.attempts,
            priority: self.priority,
            run_at: from_ms(self.run_at),
            created_at: from_ms(self.created_at),
            finished_at: self.finished_at.map(from_ms),
            last_error: self.last_error.clone(),
            dedupe_key: self.dedupe_key.clone(),
            concurrency_key: self.concurrency_key.clone(),
            lease_owner: self.lease_owner.clone(),
        })
    }

    fn claimed(&self) -> ClaimedTask {
        ClaimedTask {
            id: TaskId(self.id),
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            attempt: self.attempts,
            retry: self.retry,
            dedupe_key: self.dedupe_key.clone(),
            concurrency_key: self.concurrency_key.clone(),
            created_at: from_ms(self.created_at),
            run_at: from_ms(self.run_at),
        }
    }

    fn is_running_for(&self, worker: &str) -> bool {
        self.state == TaskState::Running && self.lease_owner.as_deref() == Some(worker)
    }
}

/// The task table, its error histories and dead letters, and the concurrency keys held.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    rows: BTreeMap<i64, TaskRow>,
    last_id: i64,
    ix: Indexes,
    /// Each concurrency key held by the running task that claimed it.
    held: HashMap<String, i64>,
    /// Every failed attempt of a task, oldest first.
    errors: HashMap<i64, Vec<AttemptError>>,
    /// Dead letters by task: reason and time.
    dead: BTreeMap<i64, (String, i64)>,
}

/// Why tasks are recovered, and which.
enum Recover<'a> {
    /// Their leases expired before this time.
    ExpiredBefore(i64),
    /// Their workers are gone.
    Owners(&'a [String]),
}

impl Tasks {
    pub(super) fn get(&self, id: i64) -> Option<&TaskRow> {
        self.rows.get(&id)
    }

    /// Every task, in id order.
    pub(super) fn rows(&self) -> &BTreeMap<i64, TaskRow> {
        &self.rows
    }

    pub(super) fn dead_letters(&self) -> &BTreeMap<i64, (String, i64)> {
        &self.dead
    }

    /// Every failed attempt of task `id`, oldest first.
    pub(super) fn errors_of(&self, id: i64) -> Vec<AttemptError> {
        self.errors.get(&id).cloned().unwrap_or_default()
    }

    /// Change row `id` with `f`, keeping the indexes in step; `None` when there is none.
    pub(super) fn update<R>(&mut self, id: i64, f: impl FnOnce(&mut TaskRow) -> R) -> Option<R> {
        let row = self.rows.get_mut(&id)?;
        self.ix.remove(row);
        let out = f(row);
        self.ix.add(row);
        Some(out)
    }

    /// Store `task`, or find the live task with its dedupe key.
    pub(super) fn insert(&mut self, task: &NewTask, now: i64) -> Enqueued {
        if let Some(key) = &task.dedupe_key
            && let Some(&id) = self.ix.dedupe.get(key)
        {
            return Enqueued::Duplicate(TaskId(id));
        }
        self.last_id += 1;
        let row = TaskRow {
            id: self.last_id,
            queue: task.queue.clone(),
            kind: task.kind.clone(),
            payload: task.payload.clone(),
            state: TaskState::Queued,
            priority: task.priority,
            run_at: task.run_at.map_or(now, ms),
            attempts: 0,
            max_attempts: task.retry.map(|r| r.max_attempts),
            retry: task.retry,
            dedupe_key: task.dedupe_key.clone(),
            concurrency_key: task.concurrency_key.clone(),
            lease_owner: None,
            lease_until: None,
            created_at: now,
            finished_at: None,
            last_error: None,
        };
        self.ix.add(&row);
        self.rows.insert(row.id, row);
        Enqueued::New(TaskId(self.last_id))
    }

    /// Remove task `id` (a purge) with its error history.
    pub(super) fn delete(&mut self, id: i64) {
        self.release_key_of(id);
        if let Some(row) = self.rows.remove(&id) {
            self.ix.remove(&row);
        }
        self.errors.remove(&id);
    }

    /// Lease a queued task to `worker` until `until`, its attempt counted (the concurrency
    /// key is the caller's).
    fn lease(&mut self, id: i64, worker: &str, until: i64) -> Option<ClaimedTask> {
        if self.rows.get(&id)?.state != TaskState::Queued {
            return None;
        }
        self.update(id, |r| {
            r.state = TaskState::Running;
            r.attempts = r.attempts.saturating_add(1);
            r.lease_owner = Some(worker.to_owned());
            r.lease_until = Some(until);
            r.claimed()
        })
    }

    /// Claim up to `limit` due tasks: the first live task of each free concurrency key and any
    /// task without one, in priority, due time and id order.
    fn claim(&mut self, req: &ClaimRequest<'_>, now: i64) -> Vec<ClaimedTask> {
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let Some(queued) = self.ix.queued.get(req.queue) else {
            return Vec::new();
        };
        let mut candidates = Vec::new();
        for &(_, run_at, id) in queued {
            if candidates.len() >= limit {
                break;
            }
            let Some(row) = self.rows.get(&id) else {
                continue;
            };
            if run_at > now || !req.kinds.contains(&row.kind) {
                continue;
            }
            if let Some(k) = &row.concurrency_key
                && (self.held.contains_key(k)
                    || self.ix.keyed.get(k).and_then(|ids| ids.first()) != Some(&id))
            {
                continue;
            }
            candidates.push((id, row.concurrency_key.clone()));
        }
        let until = common::lease_deadline(req.lease);
        let mut claimed = Vec::with_capacity(candidates.len());
        for (id, key) in candidates {
            if let Some(k) = key {
                // Only the first task of a key in this batch may run; the rest wait their turn.
                if self.held.contains_key(&k) {
                    continue;
                }
                self.held.insert(k, id);
            }
            claimed.extend(self.lease(id, req.worker, until));
        }
        claimed
    }

    /// Let go of the concurrency key task `id` holds, if it holds one. Returns whether it did.
    fn release_key_of(&mut self, id: i64) -> bool {
        match self.rows.get(&id).and_then(|r| r.concurrency_key.as_ref()) {
            Some(k) if self.held.get(k) == Some(&id) => self.held.remove(k).is_some(),
            _ => false,
        }
    }

    /// Mark the tasks of `ids` that `worker` still holds done. Returns how many, and whether
    /// concurrency keys were released (which may make other tasks claimable).
    fn complete(&mut self, worker: &str, ids: &[TaskId], now: i64) -> (u64, bool) {
        let mut n = 0;
        let mut released = false;
        for id in ids {
            if !self
                .rows
                .get(&id.0)
                .is_some_and(|r| r.is_running_for(worker))
            {
                continue;
            }
            self.update(id.0, |r| {
                r.state = TaskState::Done;
                r.finished_at = Some(now);
                r.lease_owner = None;
                r.lease_until = None;
            });
            released |= self.release_key_of(id.0);
            n += 1;
        }
        (n, released)
    }

    fn record_error(&mut self, id: i64, attempt: u32, error: &str, now: i64) {
        self.errors
            .entry(id)
            .or_default()
            .push(common::attempt_error(
                i64::from(attempt),
                error.to_owned(),
                now,
            ));
    }

    fn fail(&mut self, worker: &str, f: &Failure, now: i64) -> FailOutcome {
        if !self
            .rows
            .get(&f.id.0)
            .is_some_and(|r| r.is_running_for(worker))
        {
            return FailOutcome::LeaseLost;
        }
        self.update(f.id.0, |r| {
            r.state = if f.retry_at.is_some() {
                TaskState::Queued
            } else {
                TaskState::Dead
            };
            if let Some(at) = f.retry_at {
                r.run_at = ms(at);
            }
            r.lease_owner = None;
            r.lease_until = None;
            r.last_error = Some(f.error.clone());
            r.finished_at = f.retry_at.is_none().then_some(now);
        });
        self.record_error(f.id.0, f.attempt, &f.error, now);
        self.release_key_of(f.id.0);
        match f.retry_at {
            Some(at) => FailOutcome::Retrying(at),
            None => {
                self.dead.insert(f.id.0, (f.error.clone(), now));
                FailOutcome::DeadLettered
            }
        }
    }

    fn release(&mut self, worker: &str, ids: &[TaskId]) -> u64 {
        let mut n = 0;
        for id in ids {
            if !self
                .rows
                .get(&id.0)
                .is_some_and(|r| r.is_running_for(worker))
            {
                continue;
            }
            self.update(id.0, |r| {
                r.state = TaskState::Queued;
                r.attempts = r.attempts.saturating_sub(1);
                r.lease_owner = None;
                r.lease_until = None;
            });
            self.release_key_of(id.0);
            n += 1;
        }
        n
    }

    /// Return the running tasks `which` names to the queue, or to the dead letters when out
    /// of attempts, recording `error` as their attempt's failure. Returns how many.
    fn recover(&mut self, which: &Recover<'_>, default_max: u32, error: &str, now: i64) -> u64 {
        let ids: Vec<i64> = self
            .ix
            .running
            .iter()
            .filter(|id| {
                self.rows.get(id).is_some_and(|r| match which {
                    Recover::ExpiredBefore(t) => r.lease_until.is_some_and(|u| u < *t),
                    Recover::Owners(owners) => {
                        r.lease_owner.as_ref().is_some_and(|o| owners.contains(o))
                    }
                })
            })
            .copied()
            .collect();
        for &id in &ids {
            let attempts = self.update(id, |r| {
                let dead = r.attempts >= r.max_attempts.unwrap_or(default_max);
                r.state = if dead {
                    TaskState::Dead
                } else {
                    TaskState::Queued
                };
                r.finished_at = dead.then_some(now);
                r.run_at = now;
                r.lease_owner = None;
                r.lease_until = None;
                r.last_error = Some(error.to_owned());
                (r.attempts, dead)
            });
            let Some((attempts, dead)) = attempts else {
                continue;
            };
            self.record_error(id, attempts, error, now);
            if dead {
                self.dead.insert(id, (error.to_owned(), now));
            }
            self.release_key_of(id);
        }
        ids.len() as u64
    }

    /// Take a dead letter back: the task is queued again with a fresh attempt count. `false`
    /// when it was not dead-lettered; a conflict when a live task has taken its dedupe key.
    pub(super) fn requeue_dead(&mut self, id: i64, now: i64) -> Result<bool, StoreError> {
        if !self.dead.contains_key(&id) {
            return Ok(false);
        }
        if let Some(key) = self.rows.get(&id).and_then(|r| r.dedupe_key.as_ref())
            && let Some(other) = self.ix.dedupe.get(key)
        {
            return Err(StoreError::Conflict(format!(
                "task {other} holds the dedupe key '{key}' of dead task {id}"
            )));
        }
        self.dead.remove(&id);
        if self
            .rows
            .get(&id)
            .is_some_and(|r| r.state == TaskState::Dead)
        {
            self.update(id, |r| {
                r.state = TaskState::Queued;
                r.attempts = 0;
                r.run_at = now;
                r.finished_at = None;
            });
        }
        Ok(true)
    }

    /// Whether a queued task with concurrency key `key` was enqueued after task `after`.
    fn queued_after(&self, key: &str, after: i64) -> bool {
        self.ix.keyed.get(key).is_some_and(|ids| {
            ids.range(after.saturating_add(1)..).any(|id| {
                self.rows
                    .get(id)
                    .is_some_and(|r| r.state == TaskState::Queued)
            })
        })
    }
}

#[async_trait]
impl TaskQueue for MemoryStore {
    async fn enqueue(&self, task: &NewTask) -> Result<Enqueued, StoreError> {
        let out = self.queue().tasks.insert(task, now_ms());
        self.wake();
        Ok(out)
    }

    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let out = {
            let mut q = self.queue();
            tasks.iter().map(|t| q.tasks.insert(t, now)).collect()
        };
        self.wake();
        Ok(out)
    }

    async fn queued_after(&self, concurrency_key: &str, after: TaskId) -> Result<bool, StoreError> {
        Ok(self.queue().tasks.queued_after(concurrency_key, after.0))
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedTask>, StoreError> {
        Ok(self.queue().tasks.claim(req, now_ms()))
    }

    async fn heartbeat(
        &self,
        worker: &str,
        ids: &[TaskId],
        lease: Duration,
    ) -> Result<Vec<TaskId>, StoreError> {
        let until = common::lease_deadline(lease);
        let mut q = self.queue();
        let mut extended = Vec::new();
        for id in ids {
            if extended.contains(id) || !q.tasks.get(id.0).is_some_and(|r| r.is_running_for(worker))
            {
                continue;
            }
            q.tasks.update(id.0, |r| r.lease_until = Some(until));
            extended.push(*id);
        }
        Ok(extended)
    }

    async fn complete(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        let (n, released) = self.queue().tasks.complete(worker, ids, now_ms());
        self.wake_if(released);
        Ok(n)
    }

    async fn fail(&self, worker: &str, f: &Failure) -> Result<FailOutcome, StoreError> {
        let outcome = self.queue().tasks.fail(worker, f, now_ms());
        self.wake_if(outcome != FailOutcome::LeaseLost);
        Ok(outcome)
    }

    async fn release(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let n = self.queue().tasks.release(worker, ids);
        self.wake();
        Ok(n)
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let now = ms(now);
        let n = self.queue().tasks.recover(
            &Recover::ExpiredBefore(now),
            default_max_attempts,
            common::lease_expired_error(),
            now,
        );
        self.wake_if(n > 0);
        Ok(n)
    }

    async fn recover_dead_workers(
        &self,
        workers: &[String],
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        if workers.is_empty() {
            return Ok(0);
        }
        let n = self.queue().tasks.recover(
            &Recover::Owners(workers),
            default_max_attempts,
            common::worker_ended_error(),
            now_ms(),
        );
        self.wake_if(n > 0);
        Ok(n)
    }

    fn liveness_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.inner.liveness_dir.clone())
    }

    fn wake_signal(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}
