//! A store of a third party's own: [`Timed`], a wrapper that times every call of any
//! backend, per method, and otherwise leaves the work to it. It is written, as a third
//! party's store would be, against flowbot-core's public traits only, and proves it keeps
//! their contract with the published conformance suite (`flowbot_store::conformance`,
//! feature `test-util`): `examples/tests/store.rs` runs every behaviour against it, over the
//! in-memory store. A wrapper that broke the contract — a cache that served stale sessions,
//! a retry that enqueued a task twice — would fail there.
//!
//! ```
//! use std::sync::Arc;
//!
//! use flowbot_core::Store;
//! use flowbot_examples::store::Timed;
//! use flowbot_store::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = Timed::new(MemoryStore::new());
//! let stats = store.stats();
//! let shared: Arc<dyn Store> = Arc::new(store);
//! shared.kv_set("app", "greeting", &serde_json::json!("hello")).await?;
//! assert_eq!(stats.calls("kv_set"), 1);
//! # Ok::<(), flowbot_core::StoreError>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowbot_core::lease::Lease;
use flowbot_core::store::{AuditEntry, AuditEvent, AuditFilter, Conversation, Page, StoredMessage};
use flowbot_core::task::{
    ClaimRequest, ClaimedTask, DeadLetter, Enqueued, FailOutcome, Failure, FireOutcome, NewTask,
    ScheduleDef, ScheduleState, TaskFilter, TaskId, TaskRecord, TaskState,
};
use flowbot_core::workflow::{
    BeginOutcome, FinishOutcome, NewRun, NodeRecord, NodeResult, NodeTiming, Plan, RunFilter,
    RunRecord, RunStatus, RunTiming, StartNode, WorkflowRecord,
};
use flowbot_core::{
    BusMessage, ChannelName, ConversationId, Message, Outbound, Session, SessionKey, Store,
    StoreError, async_trait,
};
use serde_json::Value;
use tokio::sync::watch;

/// How often, and for how long in all, each method of a store was called.
#[derive(Debug, Default)]
pub struct CallStats(Mutex<BTreeMap<&'static str, (u64, Duration)>>);

impl CallStats {
    /// How many calls `method` had.
    pub fn calls(&self, method: &str) -> u64 {
        self.lock().get(method).map_or(0, |(n, _)| *n)
    }

    /// Every method called so far: its calls and their total time, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, Duration)> {
        self.lock()
            .iter()
            .map(|(name, (n, total))| (*name, *n, *total))
            .collect()
    }

    fn record(&self, method: &'static str, took: Duration) {
        let mut all = self.lock();
        let (n, total) = all.entry(method).or_default();
        *n += 1;
        *total = total.saturating_add(took);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, (u64, Duration)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `inner` (any FlowBot store), with every call timed in [`CallStats`].
#[derive(Debug, Clone)]
pub struct Timed<S> {
    inner: S,
    stats: Arc<CallStats>,
}

impl<S: Store> Timed<S> {
    /// Time the calls of `inner`.
    pub fn new(inner: S) -> Self {
        Timed {
            inner,
            stats: Arc::default(),
        }
    }

    /// The calls so far (shared: it keeps counting).
    pub fn stats(&self) -> Arc<CallStats> {
        self.stats.clone()
    }

    async fn timed<T>(&self, method: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        self.stats.record(method, started.elapsed());
        out
    }
}

#[async_trait]
impl<S: Store> flowbot_core::store::ConversationStore for Timed<S> {
    async fn save_inbound(&self, message: &Message) -> Result<bool, StoreError> {
        self.timed("save_inbound", self.inner.save_inbound(message))
            .await
    }
    async fn save_outbound(&self, outbound: &Outbound) -> Result<(), StoreError> {
        self.timed("save_outbound", self.inner.save_outbound(outbound))
            .await
    }
    async fn list_messages(
        &self,
        channel: &ChannelName,
        conversation: &ConversationId,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<StoredMessage>, StoreError> {
        self.timed(
            "list_messages",
            self.inner
                .list_messages(channel, conversation, cursor, limit),
        )
        .await
    }
    async fn list_conversations(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Conversation>, StoreError> {
        self.timed(
            "list_conversations",
            self.inner.list_conversations(cursor, limit),
        )
        .await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::store::SessionStore for Timed<S> {
    async fn load_session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        self.timed("load_session", self.inner.load_session(key))
            .await
    }
    async fn save_session(&self, session: &Session) -> Result<i64, StoreError> {
        self.timed("save_session", self.inner.save_session(session))
            .await
    }
    async fn delete_session(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.timed("delete_session", self.inner.delete_session(key))
            .await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::store::KvStore for Timed<S> {
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        self.timed("kv_get", self.inner.kv_get(namespace, key))
            .await
    }
    async fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<(), StoreError> {
        self.timed("kv_set", self.inner.kv_set(namespace, key, value))
            .await
    }
    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        self.timed("kv_delete", self.inner.kv_delete(namespace, key))
            .await
    }
    async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, Value)>, StoreError> {
        self.timed("kv_list", self.inner.kv_list(namespace)).await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::task::TaskQueue for Timed<S> {
    async fn enqueue(&self, task: &NewTask) -> Result<Enqueued, StoreError> {
        self.timed("enqueue", self.inner.enqueue(task)).await
    }
    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>, StoreError> {
        self.timed("enqueue_batch", self.inner.enqueue_batch(tasks))
            .await
    }
    async fn queued_after(&self, concurrency_key: &str, after: TaskId) -> Result<bool, StoreError> {
        self.timed(
            "queued_after",
            self.inner.queued_after(concurrency_key, after),
        )
        .await
    }
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedTask>, StoreError> {
        self.timed("claim", self.inner.claim(req)).await
    }
    async fn heartbeat(
        &self,
        worker: &str,
        ids: &[TaskId],
        lease: Duration,
    ) -> Result<Vec<TaskId>, StoreError> {
        self.timed("heartbeat", self.inner.heartbeat(worker, ids, lease))
            .await
    }
    async fn complete(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        self.timed("complete", self.inner.complete(worker, ids))
            .await
    }
    async fn fail(&self, worker: &str, failure: &Failure) -> Result<FailOutcome, StoreError> {
        self.timed("fail", self.inner.fail(worker, failure)).await
    }
    async fn release(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        self.timed("release", self.inner.release(worker, ids)).await
    }
    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        self.timed(
            "recover_expired",
            self.inner.recover_expired(now, default_max_attempts),
        )
        .await
    }
    async fn recover_dead_workers(
        &self,
        workers: &[String],
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        self.timed(
            "recover_dead_workers",
            self.inner
                .recover_dead_workers(workers, default_max_attempts),
        )
        .await
    }
    fn liveness_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.liveness_dir()
    }
    fn wake_signal(&self) -> watch::Receiver<u64> {
        self.inner.wake_signal()
    }
}

#[async_trait]
impl<S: Store> flowbot_core::task::TaskAdmin for Timed<S> {
    async fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.timed("get_task", self.inner.get_task(id)).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, StoreError> {
        self.timed("list_tasks", self.inner.list_tasks(filter))
            .await
    }
    async fn cancel_task(&self, id: TaskId) -> Result<bool, StoreError> {
        self.timed("cancel_task", self.inner.cancel_task(id)).await
    }
    async fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeadLetter>, StoreError> {
        self.timed("dead_letters", self.inner.dead_letters(cursor, limit))
            .await
    }
    async fn requeue_dead(&self, id: TaskId) -> Result<bool, StoreError> {
        self.timed("requeue_dead", self.inner.requeue_dead(id))
            .await
    }
    async fn count_tasks(&self) -> Result<Vec<(TaskState, i64)>, StoreError> {
        self.timed("count_tasks", self.inner.count_tasks()).await
    }
    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.timed("purge_finished", self.inner.purge_finished(before))
            .await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::task::ScheduleStore for Timed<S> {
    async fn upsert_schedule(
        &self,
        def: &ScheduleDef,
        next_fire_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed(
            "upsert_schedule",
            self.inner.upsert_schedule(def, next_fire_at),
        )
        .await
    }
    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError> {
        self.timed("get_schedule", self.inner.get_schedule(name))
            .await
    }
    async fn list_schedules(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<ScheduleState>, StoreError> {
        self.timed("list_schedules", self.inner.list_schedules(cursor, limit))
            .await
    }
    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.timed(
            "set_schedule_paused",
            self.inner.set_schedule_paused(name, paused, next_fire_at),
        )
        .await
    }
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.timed("delete_schedule", self.inner.delete_schedule(name))
            .await
    }
    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduleState>, StoreError> {
        self.timed("due_schedules", self.inner.due_schedules(now, limit))
            .await
    }
    async fn fire_schedule(
        &self,
        name: &str,
        fire_at: DateTime<Utc>,
        next_fire_at: DateTime<Utc>,
        task: Option<&NewTask>,
    ) -> Result<FireOutcome, StoreError> {
        self.timed(
            "fire_schedule",
            self.inner.fire_schedule(name, fire_at, next_fire_at, task),
        )
        .await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::store::Bus for Timed<S> {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        self.timed("publish", self.inner.publish(topic, payload))
            .await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusMessage> {
        self.inner.subscribe()
    }
}

#[async_trait]
impl<S: Store> flowbot_core::workflow::WorkflowStore for Timed<S> {
    async fn put_workflow(
        &self,
        name: &str,
        definition: &Value,
    ) -> Result<(u32, bool), StoreError> {
        self.timed("put_workflow", self.inner.put_workflow(name, definition))
            .await
    }
    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        self.timed("get_workflow", self.inner.get_workflow(name, version))
            .await
    }
    async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowRecord>, StoreError> {
        self.timed("list_workflows", self.inner.list_workflows(cursor, limit))
            .await
    }
    async fn delete_workflow(&self, name: &str) -> Result<bool, StoreError> {
        self.timed("delete_workflow", self.inner.delete_workflow(name))
            .await
    }
    async fn create_run(&self, run: &NewRun, start: &[StartNode]) -> Result<RunRecord, StoreError> {
        self.timed("create_run", self.inner.create_run(run, start))
            .await
    }
    async fn start_queued_run(
        &self,
        id: &str,
        start: &[StartNode],
    ) -> Result<Option<RunRecord>, StoreError> {
        self.timed("start_queued_run", self.inner.start_queued_run(id, start))
            .await
    }
    async fn begin_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
    ) -> Result<BeginOutcome, StoreError> {
        self.timed("begin_node", self.inner.begin_node(run, node, attempt))
            .await
    }
    async fn finish_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        result: &NodeResult,
        plan: &(dyn for<'r> Fn(&'r RunRecord, &'r [NodeRecord]) -> Plan + Send + Sync),
    ) -> Result<FinishOutcome, StoreError> {
        self.timed(
            "finish_node",
            self.inner.finish_node(run, node, attempt, result, plan),
        )
        .await
    }
    async fn cancel_run(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        self.timed("cancel_run", self.inner.cancel_run(id)).await
    }
    async fn retry_run(&self, id: &str, restart: &[StartNode]) -> Result<bool, StoreError> {
        self.timed("retry_run", self.inner.retry_run(id, restart))
            .await
    }
    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.timed("get_run", self.inner.get_run(id)).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Page<RunRecord>, StoreError> {
        self.timed("list_runs", self.inner.list_runs(filter)).await
    }
    async fn run_nodes(&self, id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        self.timed("run_nodes", self.inner.run_nodes(id)).await
    }
    async fn run_timings(
        &self,
        workflow: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<(Vec<RunTiming>, Vec<NodeTiming>), StoreError> {
        self.timed(
            "run_timings",
            self.inner.run_timings(workflow, since, until),
        )
        .await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::lease::LeaseStore for Timed<S> {
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.timed("acquire_lease", self.inner.acquire_lease(name, owner, ttl))
            .await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        self.timed("renew_lease", self.inner.renew_lease(lease, ttl))
            .await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.timed("release_lease", self.inner.release_lease(lease))
            .await
    }
}

#[async_trait]
impl<S: Store> flowbot_core::store::AuditStore for Timed<S> {
    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.timed("record_audit", self.inner.record_audit(events))
            .await
    }
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        self.timed("list_audit", self.inner.list_audit(filter, cursor, limit))
            .await
    }
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.timed("prune_audit", self.inner.prune_audit(before))
            .await
    }
}

#[async_trait]
impl<S: Store> Store for Timed<S> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
}
