//! The in-memory backend: every table of the other backends as plain collections in this
//! process, for tests, examples and single-process applications that need no durability.
//!
//! The state is split in three, each under one `std::sync::Mutex` taken for the whole of an
//! operation and never held across an `.await`: conversations, sessions, key-value data and
//! leases (`data`); tasks, schedules and workflows (`tasks`, `admin`, `workflow`, `runs`),
//! together because a workflow step or a schedule's fire enqueues tasks in the same step; and
//! the audit log (`audit`). Every operation is therefore atomic, as one transaction of the
//! SQLite backend is, and operations are serialised as SQLite's single writer serialises them.
//! Times are kept to the millisecond, as the other backends keep them.

mod admin;
mod audit;
mod data;
mod index;
mod runs;
mod tasks;
mod workflow;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use flowbot_core::store::{Bus, BusMessage};
use flowbot_core::{Store, StoreError};
use tokio::sync::{broadcast, watch};

/// The in-memory store: every storage trait of `flowbot-core` (conversations, sessions,
/// key-value data, the task queue and schedules, workflows, leases, the audit log, the bus)
/// kept in this process's memory.
///
/// It is meant for tests, examples and single-process applications that need no
/// durability: nothing is written to disk, and everything is lost when the last clone is
/// dropped. It behaves as the SQLite and PostgreSQL backends do (it passes the same
/// conformance suite): each operation is atomic, leases and dedupe keys are enforced, and
/// workflow steps are exactly-once.
///
/// Cloning is cheap and shares the state: a clone is another connection to the same
/// database, not a copy. [`MemoryStore::new`] (or [`Default`]) starts an empty one; so does
/// [`connect`](crate::connect) with the URL `memory:`.
///
/// Worker pools with [`Liveness::Auto`](flowbot_core::task::Liveness::Auto) keep their
/// liveness locks in a directory of the system's temporary directory named for this store
/// (created only by such a pool, and removed when the last pool using it finishes or this
/// store is dropped), so a pool that is dropped without finishing has its tasks returned to
/// the queue at once by the other pools of this process.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use flowbot_core::task::{ClaimRequest, NewTask, TaskQueue};
/// use flowbot_core::store::SessionStore;
/// use flowbot_core::{Session, SessionKey};
/// use flowbot_store::MemoryStore;
///
/// let store = MemoryStore::new();
///
/// // A task, enqueued and claimed (by a clone: the same database).
/// let id = store.enqueue(&NewTask::new("greet", &"ada")?).await?.id();
/// let worker = store.clone();
/// let kinds = ["greet".to_owned()];
/// let claimed = worker
///     .claim(&ClaimRequest {
///         worker: "w1",
///         queue: "default",
///         kinds: &kinds,
///         limit: 10,
///         lease: Duration::from_secs(30),
///     })
///     .await?;
/// assert_eq!(claimed[0].id, id);
/// assert_eq!(claimed[0].payload::<String>()?, "ada");
/// assert_eq!(worker.complete("w1", &[id]).await?, 1);
///
/// // A session, saved and loaded.
/// let key = SessionKey {
///     channel: "web".into(),
///     conversation: "c1".into(),
///     user: "u1".into(),
/// };
/// let mut session = Session::new(key.clone());
/// session.vars.insert("name".into(), "Ada".into());
/// assert_eq!(store.save_session(&session).await?, 1);
/// let loaded = store.load_session(&key).await?.expect("saved");
/// assert_eq!((loaded.vars["name"].as_str(), loaded.version), (Some("Ada"), 1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    /// The store's identity, not its contents (which may be large).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("liveness_dir", &self.inner.liveness_dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    data: Mutex<data::Data>,
    queue: Mutex<Queue>,
    audit: Mutex<audit::AuditLog>,
    wake: watch::Sender<u64>,
    bus: broadcast::Sender<BusMessage>,
    /// Where worker pools of this store keep their liveness locks: a name of its own under
    /// the system's temporary directory.
    liveness_dir: PathBuf,
}

impl Default for Inner {
    fn default() -> Self {
        let (wake, _) = watch::channel(0);
        let (bus, _) = broadcast::channel(1024);
        Inner {
            data: Mutex::default(),
            queue: Mutex::default(),
            audit: Mutex::default(),
            wake,
            bus,
            liveness_dir: std::env::temp_dir().join(format!(
                "flowbot-memory-{}.workers",
                uuid::Uuid::new_v4().simple()
            )),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No pool can use the store any more: what a pool dropped without finishing left
        // behind goes too. (Nothing there when no pool ever used it.)
        let _ = std::fs::remove_dir_all(&self.liveness_dir);
    }
}

/// The tables a task-queue step may touch together: tasks, schedules and workflows (a
/// schedule's fire and a workflow step enqueue tasks in the same step).
#[derive(Debug, Default)]
struct Queue {
    tasks: tasks::Tasks,
    schedules: admin::Schedules,
    workflows: workflow::Workflows,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn data(&self) -> MutexGuard<'_, data::Data> {
        lock(&self.inner.data)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        lock(&self.inner.queue)
    }

    fn audit(&self) -> MutexGuard<'_, audit::AuditLog> {
        lock(&self.inner.audit)
    }

    /// Tell idle workers that new work may be available.
    fn wake(&self) {
        self.inner.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wake idle workers when `woke`.
    fn wake_if(&self, woke: bool) {
        if woke {
            self.wake();
        }
    }
}

/// Rows to take for a page of `limit` (a [`page_limit`](crate::common::page_limit)): one
/// more, for [`paginate`](crate::common::paginate) to tell whether another page follows.
fn fetch(limit: i64) -> usize {
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

/// Lock `m`. A panic while it was held (only a workflow plan can panic under a lock, and it
/// runs before its step changes anything) leaves the state as it was: go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Bus for MemoryStore {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        crate::check_bus_payload(payload)?;
        // No subscriber is not an error: nobody is listening.
        let _ = self.inner.bus.send(BusMessage {
            topic: topic.into(),
            payload: payload.into(),
        });
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.inner.bus.subscribe()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowbot_core::task::{NewTask, TaskAdmin, TaskQueue};
    use flowbot_core::workflow::{
        BeginOutcome, FinishOutcome, NewRun, NodeResult, NodeStatus, Plan, WorkflowStore,
    };
    use serde_json::json;

    #[tokio::test]
    async fn connect_opens_a_fresh_store_for_a_memory_url() {
        let (Ok(a), Ok(b)) = (
            crate::connect("memory:").await,
            crate::connect("memory://").await,
        ) else {
            panic!("memory: and memory:// open a store");
        };
        assert_eq!(a.backend(), "memory");
        a.ping().await.expect("ping");
        a.kv_set("ns", "k", &json!(1)).await.expect("set");
        assert_eq!(
            b.kv_get("ns", "k").await.expect("get"),
            None,
            "each URL opens a store of its own"
        );
        for bad in ["memory:x", "memory:///tmp/db"] {
            let Err(e) = crate::connect(bad).await else {
                panic!("{bad} is refused");
            };
            assert!(matches!(e, crate::Error::InvalidUrl(_)), "{e}");
        }
        let Err(e) = crate::connect("nowhere").await else {
            panic!("a URL without a scheme is refused");
        };
        assert!(e.to_string().contains("memory:"), "{e}");
    }

    #[tokio::test]
    async fn clones_share_one_state_and_enqueues_wake_workers() {
        let store = MemoryStore::default();
        let other = store.clone();
        let mut wake = other.wake_signal();
        let id = store
            .enqueue(&NewTask::new("k", &1).expect("payload"))
            .await
            .expect("enqueue")
            .id();
        assert!(wake.has_changed().expect("the sender lives"), "woken");
        wake.borrow_and_update();
        assert!(other.get_task(id).await.expect("get").is_some());
        let fresh = MemoryStore::new();
        let unmoved = fresh.wake_signal();
        assert!(
            !unmoved.has_changed().expect("the sender lives"),
            "another store is not woken"
        );
    }

    #[test]
    fn the_liveness_directory_is_the_store_s_own_and_goes_with_it() {
        let a = MemoryStore::new();
        let dir = a.liveness_dir().expect("a directory");
        assert_ne!(MemoryStore::new().liveness_dir(), Some(dir.clone()));
        let twin = a.clone();
        assert_eq!(twin.liveness_dir(), Some(dir.clone()), "a clone's too");
        drop(twin);
        assert!(!dir.exists(), "created only by a pool that uses it");
        std::fs::create_dir_all(dir.join("left-by-a-pool")).expect("create");
        drop(a);
        assert!(!dir.exists(), "removed with the store");
    }

    #[tokio::test]
    async fn a_plan_that_panics_changes_nothing() {
        let store = MemoryStore::new();
        let run = NewRun {
            id: "r1".into(),
            workflow: "wf".into(),
            version: 1,
            inputs: json!({}),
            trigger: json!({ "kind": "manual" }),
            parent: None,
            max_concurrency: None,
        };
        store.create_run(&run, &[]).await.expect("create");
        let begun = store.begin_node("r1", "a", 1).await.expect("begin");
        assert!(matches!(begun, BeginOutcome::Proceed { .. }));
        let done = NodeResult::Completed {
            input: json!({}),
            output: json!(1),
        };
        let (s, d) = (store.clone(), done.clone());
        let step = tokio::spawn(async move {
            s.finish_node("r1", "a", 1, &d, &|_, _| panic!("a bug in the plan"))
                .await
        })
        .await;
        assert!(step.is_err_and(|e| e.is_panic()));
        let nodes = store.run_nodes("r1").await.expect("nodes");
        assert_eq!(
            nodes[0].status,
            NodeStatus::Running,
            "the node is unchanged"
        );
        let again = store
            .finish_node("r1", "a", 1, &done, &|_, _| Plan::default())
            .await
            .expect("the store goes on");
        assert!(matches!(again, FinishOutcome::Recorded { .. }));
    }
}
