//! The worker pool and cron loop running over each store.

use super::*;

/// The worker pool over the store: retries with backoff, permanent failures, panics, and
/// every task completed exactly once.
pub async fn worker_pool_runs_everything_once(store: Arc<dyn Store>) {
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let successes: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut registry = TaskRegistry::new();
    let (r, s) = (runs.clone(), successes.clone());
    let policy = RetryPolicy::new(3)
        .and_then(|p| p.fixed(Duration::from_millis(50)))
        .expect("policy");
    registry
        .register_with(
            "job",
            KindOptions {
                retry: policy,
                timeout: None,
            },
            handler_fn(move |cx| {
                let (r, s) = (r.clone(), s.clone());
                async move {
                    let n: u64 = cx.task().payload::<serde_json::Value>()?["n"]
                        .as_u64()
                        .unwrap_or(0);
                    *r.lock().expect("lock").entry(n).or_default() += 1;
                    match n % 10 {
                        // Fails once, then succeeds on the retry.
                        1 if cx.attempt() == 1 => return Err(TaskError::retryable("flaky")),
                        // Never succeeds: dead after 3 attempts.
                        2 => return Err(TaskError::retryable("always broken")),
                        // Permanent: dead at once.
                        3 => return Err(TaskError::permanent("bad payload")),
                        4 if cx.attempt() == 1 => panic!("handler bug"),
                        _ => {}
                    }
                    *s.lock().expect("lock").entry(n).or_default() += 1;
                    Ok(())
                }
            }),
        )
        .expect("register");
    let registry = Arc::new(registry);
    let client = TaskClient::new(store.clone()).only_kinds_of(&registry);
    let tasks: Vec<NewTask> = (0..100).map(|n| task("job", n)).collect();
    client.enqueue_batch(&tasks).await.expect("enqueue");

    let pool = WorkerPool::new(store.clone(), registry, fast_workers("pool-1", 8)).expect("pool");
    let stats = pool.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    let dead_expected = 20;
    let s2 = store.clone();
    eventually("all tasks settled", Duration::from_secs(30), || {
        let s2 = s2.clone();
        async move {
            let done = s2
                .list_tasks(&TaskFilter {
                    state: Some(TaskState::Done),
                    limit: 1000,
                    ..TaskFilter::default()
                })
                .await
                .expect("list");
            let dead = s2
                .list_tasks(&TaskFilter {
                    state: Some(TaskState::Dead),
                    limit: 1000,
                    ..TaskFilter::default()
                })
                .await
                .expect("list");
            done.items.len() == 80 && dead.items.len() == dead_expected
        }
    })
    .await;
    stop.cancel();
    running.await.expect("pool stopped");

    let successes = successes.lock().expect("lock").clone();
    assert_eq!(successes.len(), 80);
    assert!(
        successes.values().all(|&c| c == 1),
        "no task completed twice"
    );
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs[&1], 2, "flaky task retried once");
    assert_eq!(runs[&2], 3, "broken task tried max_attempts times");
    assert_eq!(runs[&3], 1, "permanent failure not retried");
    assert_eq!(runs[&4], 2, "panicking attempt retried");
    assert_eq!(stats.completed.load(Ordering::Relaxed), 80);
    assert_eq!(stats.dead.load(Ordering::Relaxed), 20);
    let dead = store.dead_letters(None, 100).await.expect("dead letters");
    let broken = dead
        .items
        .iter()
        .find(|d| d.task.payload["n"] == 2)
        .expect("task 2 dead");
    assert_eq!(broken.errors.len(), 3);
    let panicked = store
        .list_tasks(&TaskFilter {
            state: Some(TaskState::Done),
            limit: 1000,
            ..TaskFilter::default()
        })
        .await
        .expect("list")
        .items
        .into_iter()
        .find(|t| t.payload["n"] == 4)
        .expect("task 4 done");
    assert!(
        panicked
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("handler panicked: handler bug"))
    );

    // Unknown kinds and oversized payloads are refused before they reach the queue.
    let e = client
        .enqueue(task("nobody-handles-this", 1))
        .await
        .expect_err("unknown kind");
    assert!(
        matches!(&e, Error::UnknownTaskKind(k) if k == "nobody-handles-this"),
        "{e}"
    );
    let big = NewTask::new("job", &"x".repeat(2 << 20)).expect("payload");
    let e = client.enqueue(big).await.expect_err("too large");
    assert!(
        e.to_string().contains("over the limit of 1048576 bytes"),
        "{e}"
    );
    let e = register_schedule(
        store.as_ref(),
        &ScheduleDef::new("bad", "61 * * * *", "job", &()).expect("def"),
    )
    .await
    .expect_err("bad cron");
    assert!(
        e.to_string()
            .starts_with("invalid cron schedule '61 * * * *'"),
        "{e}"
    );
}

/// A worker that dies mid-task (never heartbeats again) loses the task to a live worker.
pub async fn crashed_worker_tasks_finish_elsewhere(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let id = store.enqueue(&task("job", 1)).await.expect("enqueue").id();
    let claimed = claim(
        store.as_ref(),
        "dead-agent",
        &kinds(&["job"]),
        10,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(claimed.len(), 1);

    let done = Arc::new(AtomicU32::new(0));
    let mut registry = TaskRegistry::new();
    let d = done.clone();
    registry
        .register(
            "job",
            handler_fn(move |cx| {
                let d = d.clone();
                async move {
                    assert_eq!(cx.attempt(), 2);
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .expect("register");
    let pool = WorkerPool::new(
        other.clone(),
        Arc::new(registry),
        fast_workers("live-agent", 4),
    )
    .expect("pool");
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    let s = store.clone();
    eventually("task finished by the live agent", Duration::from_secs(15), || {
        let s = s.clone();
        async move { s.get_task(id).await.expect("get").expect("exists").state == TaskState::Done }
    })
    .await;
    stop.cancel();
    running.await.expect("pool stopped");
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

/// Shutdown waits for running tasks up to its deadline, then releases them to the queue.
pub async fn graceful_shutdown_releases_unfinished_tasks(store: Arc<dyn Store>) {
    let quick = store
        .enqueue(&task("quick", 1))
        .await
        .expect("enqueue")
        .id();
    let slow = store.enqueue(&task("slow", 1)).await.expect("enqueue").id();
    let mut registry = TaskRegistry::new();
    registry
        .register(
            "quick",
            handler_fn(|_cx| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            }),
        )
        .expect("register");
    registry
        .register(
            "slow",
            handler_fn(|cx| async move {
                // Ignores shutdown until its lease token is cancelled at the deadline.
                cx.cancelled().cancelled().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }),
        )
        .expect("register");
    // The quick task needs 300 ms: the deadline leaves it ample room on a loaded machine.
    let config = WorkerConfig {
        shutdown_timeout: Duration::from_millis(2000),
        ..fast_workers("shutdown-test", 4)
    };
    let pool = WorkerPool::new(store.clone(), Arc::new(registry), config).expect("pool");
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    let s = store.clone();
    eventually("both tasks running", Duration::from_secs(10), || {
        let s = s.clone();
        async move {
            s.list_tasks(&TaskFilter {
                state: Some(TaskState::Running),
                limit: 10,
                ..TaskFilter::default()
            })
            .await
            .expect("list")
            .items
            .len()
                == 2
        }
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("shutdown within deadline")
        .expect("pool");
    assert_eq!(
        state_of(store.as_ref(), quick).await,
        TaskState::Done,
        "in-flight task finished"
    );
    let rec = store.get_task(slow).await.expect("get").expect("exists");
    assert_eq!(rec.state, TaskState::Queued, "unfinished task released");
    assert_eq!(rec.attempts, 0, "release does not count the attempt");
}

/// Cron schedules through the Bot-level loop: a 6-field (seconds) schedule fires repeatedly.
pub async fn cron_loop_enqueues_and_workers_run(store: Arc<dyn Store>) {
    let def = ScheduleDef::new("every-second", "* * * * * *", "tick", &json!({})).expect("def");
    register_schedule(store.as_ref(), &def)
        .await
        .expect("register");
    let ticks = Arc::new(AtomicU32::new(0));
    let mut registry = TaskRegistry::new();
    let t = ticks.clone();
    registry
        .register(
            "tick",
            handler_fn(move |_cx| {
                let t = t.clone();
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .expect("register");
    let stop = CancellationToken::new();
    let pool = WorkerPool::new(
        store.clone(),
        Arc::new(registry),
        fast_workers("cron-test", 2),
    )
    .expect("pool");
    let cron = CronConfig {
        tick: Duration::from_millis(100),
        ..CronConfig::default()
    };
    let a = tokio::spawn(pool.run(stop.clone()));
    let b = tokio::spawn(flowbot_core::task::run_cron(
        store.clone(),
        cron.clone(),
        stop.clone(),
    ));
    let c = tokio::spawn(flowbot_core::task::run_cron(
        store.clone(),
        cron,
        stop.clone(),
    ));
    let t = ticks.clone();
    eventually("three ticks", Duration::from_secs(10), || {
        let t = t.clone();
        async move { t.load(Ordering::SeqCst) >= 3 }
    })
    .await;
    stop.cancel();
    for j in [a, b, c] {
        j.await.expect("stopped");
    }
    let fired = store
        .list_tasks(&TaskFilter {
            kind: Some("tick".into()),
            limit: 1000,
            ..TaskFilter::default()
        })
        .await
        .expect("list")
        .items;
    let mut times: Vec<i64> = fired.iter().map(|t| t.run_at.timestamp_millis()).collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n, "two cron loops, each fire time once");
}

/// Per-queue limits: a queue limited to 1 never runs two of its tasks at once.
pub async fn queue_limits_hold(store: Arc<dyn Store>) {
    let tasks: Vec<NewTask> = (0..12).map(|n| task("job", n).queue("serial")).collect();
    store.enqueue_batch(&tasks).await.expect("batch");
    let current = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let mut registry = TaskRegistry::new();
    let (c, m) = (current.clone(), max_seen.clone());
    registry
        .register(
            "job",
            handler_fn(move |_cx| {
                let (c, m) = (c.clone(), m.clone());
                async move {
                    let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    c.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .expect("register");
    let config = WorkerConfig {
        queues: vec![QueueConfig {
            name: "serial".into(),
            limit: Some(1),
        }],
        ..fast_workers("limits", 8)
    };
    let pool = WorkerPool::new(store.clone(), Arc::new(registry), config).expect("pool");
    let stats = pool.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    eventually("all done", Duration::from_secs(20), || {
        let stats = stats.clone();
        async move { stats.completed.load(Ordering::Relaxed) == 12 }
    })
    .await;
    stop.cancel();
    running.await.expect("stopped");
    assert_eq!(max_seen.load(Ordering::SeqCst), 1);
}
