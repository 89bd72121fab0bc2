//! Tasks of workers known to be gone go back to the queue at once: the store's
//! `recover_dead_workers`, and worker pools finding a pool that ended by its free liveness
//! lock.

use super::*;

use flowbot_core::task::Liveness;

/// Whether `store` has no liveness locks (its tasks wait for their leases): said on stderr.
#[allow(clippy::print_stderr)] // the skip notice is meant for the test's output
fn no_liveness(store: &dyn Store) -> bool {
    let none = store.liveness_dir().is_none();
    if none {
        eprintln!(
            "SKIPPED: the {} backend has no liveness directory (tasks of dead workers wait for their leases)",
            store.backend()
        );
    }
    none
}

/// `recover_dead_workers` returns exactly the running tasks of the named workers to the
/// queue, counting the lost attempt, dead-lettering a task out of attempts, releasing
/// concurrency keys, and fencing the gone worker out.
///
/// A backend without liveness locks (`liveness_dir()` is `None`, the trait's default, so its
/// tasks wait for their leases) skips this behaviour.
pub async fn dead_workers_tasks_return_at_once(store: Arc<dyn Store>) {
    if no_liveness(store.as_ref()) {
        return;
    }
    let k = kinds(&["job"]);
    let plain = store.enqueue(&task("job", 1)).await.expect("enqueue").id();
    let keyed = store
        .enqueue(&task("job", 2).concurrency_key("conv-1"))
        .await
        .expect("enqueue")
        .id();
    let last_try = store
        .enqueue(&task("job", 3).retry(RetryPolicy::new(1).expect("policy")))
        .await
        .expect("enqueue")
        .id();
    let gone = claim(store.as_ref(), "gone@1", &k, 3, LEASE).await;
    assert_eq!(gone.len(), 3);
    let other = store.enqueue(&task("job", 4)).await.expect("enqueue").id();
    let behind = store
        .enqueue(&task("job", 5).concurrency_key("conv-1"))
        .await
        .expect("enqueue")
        .id();
    let alive = claim(store.as_ref(), "alive@2", &k, 10, LEASE).await;
    assert_eq!(
        alive.iter().map(|t| t.id).collect::<Vec<_>>(),
        [other],
        "the keyed task behind a running one waits"
    );

    assert_eq!(
        store
            .recover_dead_workers(&[], 5)
            .await
            .expect("recover none"),
        0
    );
    let workers = ["never-seen@3".to_owned(), "gone@1".to_owned()];
    assert_eq!(
        store
            .recover_dead_workers(&workers, 5)
            .await
            .expect("recover"),
        3,
        "the gone worker's three tasks, whatever their leases say"
    );
    assert_eq!(
        store
            .recover_dead_workers(&workers, 5)
            .await
            .expect("recover again"),
        0
    );
    // The live worker's task is untouched; the gone worker is fenced out.
    assert_eq!(state_of(store.as_ref(), other).await, TaskState::Running);
    assert_eq!(store.complete("gone@1", &[plain]).await.expect("late"), 0);
    let late = Failure {
        id: keyed,
        attempt: 1,
        error: "late".into(),
        retry_at: None,
    };
    assert_eq!(
        store.fail("gone@1", &late).await.expect("late fail"),
        FailOutcome::LeaseLost
    );
    assert!(
        store
            .heartbeat("gone@1", &[plain, keyed], LEASE)
            .await
            .expect("heartbeat")
            .is_empty()
    );

    // Out of attempts: dead-lettered, saying why.
    assert_eq!(state_of(store.as_ref(), last_try).await, TaskState::Dead);
    let letters = store.dead_letters(None, 10).await.expect("dead letters");
    let letter = letters
        .items
        .iter()
        .find(|d| d.task.id == last_try)
        .expect("dead letter");
    assert!(letter.reason.contains("worker ended"), "{}", letter.reason);

    // The others run again at attempt 2, the keyed one before the task behind it.
    let again = claim(store.as_ref(), "new@4", &k, 10, LEASE).await;
    let mut ids: Vec<TaskId> = again.iter().map(|t| t.id).collect();
    ids.sort();
    assert_eq!(ids, [plain, keyed]);
    assert!(
        again.iter().all(|t| t.attempt == 2),
        "the lost attempt counts"
    );
    let record = store.get_task(plain).await.expect("get").expect("task");
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("worker ended")),
        "{record:?}"
    );
    assert_eq!(store.complete("new@4", &[keyed]).await.expect("done"), 1);
    let next = claim(store.as_ref(), "new@4", &k, 10, LEASE).await;
    assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), [behind]);
}

/// A handler that holds its task until the pool lets it go, counting starts.
fn holding(started: Arc<AtomicU32>) -> impl flowbot_core::task::TaskHandler {
    handler_fn(move |cx| {
        let started = started.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            cx.cancelled().cancelled().await;
            Ok(())
        }
    })
}

/// Pools with a lease far too long to expire in this test, so only liveness can move a task.
fn long_lease(id: &str) -> WorkerConfig {
    WorkerConfig {
        lease: Duration::from_secs(600),
        heartbeat: Duration::from_secs(1),
        liveness: Liveness::Auto,
        shutdown_timeout: Duration::from_millis(200),
        ..fast_workers(id, 4)
    }
}

async fn lease_owner(store: &dyn Store, id: TaskId) -> Option<String> {
    store
        .get_task(id)
        .await
        .expect("get")
        .and_then(|t| (t.state == TaskState::Running).then_some(t.lease_owner?))
}

/// Three pools of one database on one host: one is dropped in the middle of a task (as a
/// killed process's pool is), and another pool returns that task to the queue and runs it at
/// once, long before its lease would expire; the task of the pool still alive stays with it.
///
/// Skipped, as the one above, by a backend without liveness locks.
pub async fn a_pool_that_ends_has_its_tasks_recovered_at_once(
    store: Arc<dyn Store>,
    other: Arc<dyn Store>,
) {
    if no_liveness(store.as_ref()) {
        return;
    }
    let kept = store.enqueue(&task("kept", 1)).await.expect("enqueue").id();
    let mut registry = TaskRegistry::new();
    let kept_started = Arc::new(AtomicU32::new(0));
    registry
        .register("kept", holding(kept_started.clone()))
        .expect("register");
    let alive =
        WorkerPool::new(store.clone(), Arc::new(registry), long_lease("alive")).expect("pool");
    let stop_alive = CancellationToken::new();
    let alive = tokio::spawn(alive.run(stop_alive.clone()));
    let s = store.clone();
    eventually(
        "the live pool runs its task",
        Duration::from_secs(10),
        || {
            let s = s.clone();
            async move { lease_owner(s.as_ref(), kept).await.is_some() }
        },
    )
    .await;
    let kept_owner = lease_owner(store.as_ref(), kept).await.expect("owner");
    assert!(kept_owner.starts_with("alive@"), "{kept_owner}");

    let lost = store.enqueue(&task("lost", 1)).await.expect("enqueue").id();
    let mut registry = TaskRegistry::new();
    registry
        .register("lost", holding(Arc::default()))
        .expect("register");
    let doomed =
        WorkerPool::new(store.clone(), Arc::new(registry), long_lease("doomed")).expect("pool");
    let doomed = tokio::spawn(doomed.run(CancellationToken::new()));
    let s = store.clone();
    eventually(
        "the doomed pool runs its task",
        Duration::from_secs(10),
        || {
            let s = s.clone();
            async move { lease_owner(s.as_ref(), lost).await.is_some() }
        },
    )
    .await;

    // The rescuer, on another connection, handles both kinds; the tasks are taken already.
    let rescued = Arc::new(Mutex::new(Vec::new()));
    let mut registry = TaskRegistry::new();
    for kind in ["kept", "lost"] {
        let rescued = rescued.clone();
        registry
            .register(
                kind,
                handler_fn(move |cx| {
                    let rescued = rescued.clone();
                    async move {
                        rescued
                            .lock()
                            .expect("lock")
                            .push((cx.task().id, cx.attempt()));
                        Ok(())
                    }
                }),
            )
            .expect("register");
    }
    let rescuer =
        WorkerPool::new(other.clone(), Arc::new(registry), long_lease("rescuer")).expect("pool");
    let stop_rescuer = CancellationToken::new();
    let rescuer = tokio::spawn(rescuer.run(stop_rescuer.clone()));

    // The doomed pool goes away without finishing, its handler with it.
    doomed.abort();
    let _ = doomed.await;
    let s = store.clone();
    eventually(
        "the lost task runs again elsewhere",
        Duration::from_secs(20),
        || {
            let s = s.clone();
            async move { state_of(s.as_ref(), lost).await == TaskState::Done }
        },
    )
    .await;
    assert_eq!(*rescued.lock().expect("lock"), [(lost, 2)]);
    let record = store.get_task(lost).await.expect("get").expect("task");
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("worker ended")),
        "{record:?}"
    );
    // The pools looked at the live pool's lock too, and left its task alone.
    assert_eq!(
        lease_owner(store.as_ref(), kept).await.as_deref(),
        Some(kept_owner.as_str())
    );
    assert_eq!(kept_started.load(Ordering::SeqCst), 1);

    // Stopped gracefully, the live pool releases its task, and the rescuer runs it.
    stop_alive.cancel();
    alive.await.expect("live pool stopped");
    let s = store.clone();
    eventually("the released task runs", Duration::from_secs(20), || {
        let s = s.clone();
        async move { state_of(s.as_ref(), kept).await == TaskState::Done }
    })
    .await;
    stop_rescuer.cancel();
    rescuer.await.expect("rescuer stopped");
    assert_eq!(
        *rescued.lock().expect("lock"),
        [(lost, 2), (kept, 1)],
        "a released attempt does not count"
    );
    let dir = store.liveness_dir().expect("liveness dir");
    assert!(
        !dir.exists(),
        "the pools that finished removed their locks, and the rescuer the lost pool's: {:?}",
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}
