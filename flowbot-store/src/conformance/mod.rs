//! The conformance suite of FlowBot's store traits (feature `test-util`): every behaviour a
//! backend must keep — the task queue's leases, retries and keys, schedules that fire once
//! among many workers, workflow runs and their exactly-once node steps, sessions, messages,
//! key-value data, the bus, leases and the audit log — checked against a real store. The
//! SQLite, PostgreSQL and in-memory backends of this crate pass it; a backend of your own
//! proves itself the same way:
//!
//! ```ignore
//! use std::sync::Arc;
//! use flowbot_core::Store;
//! use flowbot_store::conformance::Backend;
//!
//! /// A fresh database per test.
//! struct Mine(MyStore);
//!
//! impl Backend for Mine {
//!     async fn open() -> Option<Self> {
//!         Some(Mine(MyStore::connect_to_a_fresh_database().await))
//!     }
//!     fn store(&self) -> Arc<dyn Store> {
//!         Arc::new(self.0.clone())
//!     }
//!     async fn second_store(&self) -> Arc<dyn Store> {
//!         // Another connection to the same database: another server or agent.
//!         Arc::new(self.0.reconnect().await)
//!     }
//! }
//!
//! // In a test file: one #[tokio::test] per behaviour.
//! flowbot_store::conformance_tests!(Mine);
//! ```
//!
//! The generated tests use `#[tokio::test]` (the multi-threaded runtime): the crate that runs
//! them needs tokio with its `macros` and `rt-multi-thread` features. `examples/src/store.rs`
//! in FlowBot's repository is a complete third-party backend that passes the suite.

mod audit;
mod data;
mod leases;
mod liveness;
mod queue;
pub mod vectors;
mod workers;
mod workflows;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flowbot_core::store::Direction;
use flowbot_core::task::{
    ClaimRequest, CronConfig, Enqueued, FailOutcome, Failure, KindOptions, MisfirePolicy, NewTask,
    QueueConfig, RetryPolicy, ScheduleDef, TaskClient, TaskFilter, TaskId, TaskRegistry, TaskState,
    WorkerConfig, WorkerPool, fire_due, handler_fn, register_schedule,
};
use flowbot_core::{
    CancellationToken, Error, Message, MessageId, Outbound, Sender, Session, SessionKey, Store,
    StoreError, Target, TaskError,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

fn kinds(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| (*s).to_owned()).collect()
}

async fn claim(
    store: &dyn Store,
    worker: &str,
    kinds: &[String],
    limit: u32,
    lease: Duration,
) -> Vec<flowbot_core::task::ClaimedTask> {
    store
        .claim(&ClaimRequest {
            worker,
            queue: "default",
            kinds,
            limit,
            lease,
        })
        .await
        .expect("claim")
}

fn task(kind: &str, n: u64) -> NewTask {
    NewTask::new(kind, &json!({ "n": n })).expect("payload")
}

async fn state_of(store: &dyn Store, id: TaskId) -> TaskState {
    store
        .get_task(id)
        .await
        .expect("get")
        .expect("exists")
        .state
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn fast_workers(id: &str, concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        id: id.to_owned(),
        concurrency,
        poll_interval: Duration::from_millis(50),
        recover_interval: Duration::from_millis(100),
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// A store backend under test: how to open a fresh, empty database, and a second connection
/// to it.
pub trait Backend: Sized + Send + 'static {
    /// A store on a fresh, empty database; `None` skips the test (say why on stderr, and fail
    /// instead where the backend must be tested, as this crate's tests do with `CI=true`).
    fn open() -> impl std::future::Future<Output = Option<Self>> + Send;
    /// The store.
    fn store(&self) -> Arc<dyn Store>;
    /// A second, independent connection to the same database (another server or agent).
    fn second_store(&self) -> impl std::future::Future<Output = Arc<dyn Store>> + Send;
    /// Remove what the test created (a schema, files); after the behaviour passed.
    fn cleanup(self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

/// The behaviours that take one store.
pub const SINGLE: &[&str] = &[
    "enqueue_claim_complete",
    "batch_enqueue_keeps_order",
    "dedupe_keys",
    "lease_expiry_and_recovery",
    "a_stale_release_changes_nothing",
    "dead_workers_tasks_return_at_once",
    "retries_and_backoff",
    "dead_letter_and_requeue",
    "per_key_serialisation",
    "newer_keyed_tasks_are_seen",
    "misfire_policies",
    "sessions_round_trip",
    "messages_round_trip",
    "messages_saved_concurrently",
    "kv_round_trip",
    "admin_listing_cancel_and_purge",
    "worker_pool_runs_everything_once",
    "graceful_shutdown_releases_unfinished_tasks",
    "cron_loop_enqueues_and_workers_run",
    "queue_limits_hold",
    "task_counts",
    "workflow_versions",
    "runs_and_max_concurrency",
    "node_steps_are_exactly_once",
    "a_plan_can_claim_the_next_node",
    "run_ends_free_slots_and_wake_parents",
    "run_listing_and_timings",
    "leases_hold_fence_and_expire",
    "audit_batches_list_newest_first_in_pages",
    "audit_filters",
    "audit_prune_removes_the_older_ones",
    "audit_bad_cursors_are_errors",
];

/// The behaviours that take two connections to one database.
pub const PAIR: &[&str] = &[
    "concurrent_claims_hand_out_each_task_once",
    "schedules_fire_once_with_concurrent_workers",
    "crashed_worker_tasks_finish_elsewhere",
    "a_pool_that_ends_has_its_tasks_recovered_at_once",
    "bus_reaches_every_subscriber",
    "concurrent_finishes_start_a_join_once",
    "a_lease_moves_when_its_holder_dies",
    "concurrent_audit_prunes_count_each_entry_once",
];

/// Run a one-store behaviour (the suite's, or a test of your own) against a fresh `B`, and
/// clean up after it.
pub async fn run_single<B, F, Fut>(behaviour: F)
where
    B: Backend,
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(backend) = B::open().await else {
        return;
    };
    behaviour(backend.store()).await;
    backend.cleanup().await;
}

/// Run a two-connection behaviour against a fresh `B` and a second connection to it, and
/// clean up after it.
pub async fn run_pair<B, F, Fut>(behaviour: F)
where
    B: Backend,
    F: FnOnce(Arc<dyn Store>, Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(backend) = B::open().await else {
        return;
    };
    let second = backend.second_store().await;
    behaviour(backend.store(), second).await;
    backend.cleanup().await;
}

/// The behaviours, by name (what [`conformance_tests!`](crate::conformance_tests) calls).
#[doc(hidden)]
pub mod behaviours {
    pub use super::audit::*;
    pub use super::data::*;
    pub use super::leases::*;
    pub use super::liveness::*;
    pub use super::queue::*;
    pub use super::workers::*;
    pub use super::workflows::*;
}

/// One `#[tokio::test]` per behaviour of the conformance suite, run against the
/// [`Backend`](crate::conformance::Backend) given (feature `test-util`). Call it in a test
/// file or a module of its own: the tests are named after the behaviours.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ty) => {
        $crate::__conformance_tests!(
            $backend,
            single: [
                enqueue_claim_complete,
                batch_enqueue_keeps_order,
                dedupe_keys,
                lease_expiry_and_recovery,
                a_stale_release_changes_nothing,
                dead_workers_tasks_return_at_once,
                retries_and_backoff,
                dead_letter_and_requeue,
                per_key_serialisation,
                newer_keyed_tasks_are_seen,
                misfire_policies,
                sessions_round_trip,
                messages_round_trip,
                messages_saved_concurrently,
                kv_round_trip,
                admin_listing_cancel_and_purge,
                worker_pool_runs_everything_once,
                graceful_shutdown_releases_unfinished_tasks,
                cron_loop_enqueues_and_workers_run,
                queue_limits_hold,
                task_counts,
                workflow_versions,
                runs_and_max_concurrency,
                node_steps_are_exactly_once,
                a_plan_can_claim_the_next_node,
                run_ends_free_slots_and_wake_parents,
                run_listing_and_timings,
                leases_hold_fence_and_expire,
                audit_batches_list_newest_first_in_pages,
                audit_filters,
                audit_prune_removes_the_older_ones,
                audit_bad_cursors_are_errors,
            ],
            pair: [
                concurrent_claims_hand_out_each_task_once,
                schedules_fire_once_with_concurrent_workers,
                crashed_worker_tasks_finish_elsewhere,
                a_pool_that_ends_has_its_tasks_recovered_at_once,
                bus_reaches_every_subscriber,
                concurrent_finishes_start_a_join_once,
                a_lease_moves_when_its_holder_dies,
                concurrent_audit_prunes_count_each_entry_once,
            ]
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($backend:ty, single: [$($one:ident),* $(,)?], pair: [$($two:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $one() {
                $crate::conformance::run_single::<$backend, _, _>(
                    $crate::conformance::behaviours::$one,
                )
                .await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $two() {
                $crate::conformance::run_pair::<$backend, _, _>(
                    $crate::conformance::behaviours::$two,
                )
                .await;
            }
        )*
    };
}
