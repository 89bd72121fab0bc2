//! Faults: the database goes away for a while. Operations fail with a typed error, the worker
//! pool backs off and recovers, and no accepted task is lost or completed twice.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::task::{
    NewTask, TaskFilter, TaskRegistry, TaskState, WorkerConfig, WorkerPool, handler_fn,
};
use flowbot_core::{CancellationToken, Store, StoreError};

fn config(id: &str) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        concurrency: 8,
        poll_interval: Duration::from_millis(50),
        recover_interval: Duration::from_millis(200),
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

/// Runs 300 tasks through a pool while `fault` breaks the database, then checks every task
/// is done and was recorded done exactly once.
async fn survive<F, Fut>(store: Arc<dyn Store>, fault: F, must_see_errors: bool)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let successes: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut registry = TaskRegistry::new();
    let s = successes.clone();
    registry
        .register(
            "job",
            handler_fn(move |cx| {
                let s = s.clone();
                async move {
                    let n = cx.task().payload::<u64>()?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    *s.lock().expect("lock").entry(n).or_default() += 1;
                    Ok(())
                }
            }),
        )
        .expect("register");
    let tasks: Vec<NewTask> = (0..300u64)
        .map(|n| NewTask::new("job", &n).expect("payload"))
        .collect();
    store.enqueue_batch(&tasks).await.expect("enqueue");
    let pool = WorkerPool::new(store.clone(), Arc::new(registry), config("faulty")).expect("pool");
    let stats = pool.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    fault().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = store
            .list_tasks(&TaskFilter {
                state: Some(TaskState::Done),
                limit: 1000,
                ..TaskFilter::default()
            })
            .await;
        if matches!(&done, Ok(page) if page.items.len() == 300) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks did not all finish after the fault: {:?}",
            done.map(|p| p.items.len())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    running.await.expect("pool stopped");
    if must_see_errors {
        assert!(
            stats.store_errors.load(Ordering::Relaxed) > 0,
            "the fault was noticed by the pool"
        );
    }
    assert_eq!(
        stats.completed.load(Ordering::Relaxed),
        300,
        "each task recorded done exactly once"
    );
    let successes = successes.lock().expect("lock").clone();
    assert_eq!(successes.len(), 300, "no task lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_repeatedly() {
    let Some(h) = support::postgres().await else {
        return;
    };
    let h = Arc::new(h);
    let h2 = h.clone();
    survive(
        h.store(),
        || async move {
            // Kill every connection, over and over, for a while: statements in flight fail,
            // idle connections are replaced by the pool, LISTEN reconnects.
            let mut killed = 0;
            for _ in 0..40 {
                killed += h2.kill_connections().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(killed > 0, "the store's connections were found and killed");
        },
        false,
    )
    .await;
    // Enqueue works again after the storm.
    h.store()
        .enqueue(&NewTask::new("job", &1u64).expect("payload"))
        .await
        .expect("enqueue after recovery");
    if let Ok(h) = Arc::try_unwrap(h) {
        h.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_a_typed_error() {
    if support::postgres_url().is_none() {
        return;
    }
    // Nothing listens on port 1: connecting fails with a clear error, no panic.
    let e = flowbot_store::PostgresStore::connect_with(flowbot_store::PostgresOptions {
        acquire_timeout: Duration::from_secs(2),
        ..flowbot_store::PostgresOptions::new("postgres://postgres@127.0.0.1:1/test")
    })
    .await
    .expect_err("nothing listens there");
    assert!(
        e.to_string()
            .starts_with("cannot open database: postgres://"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process() {
    let h = support::sqlite_with(|o| flowbot_store::SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..o
    })
    .await;
    let path = h.sqlite_file().expect("a SQLite harness");
    let store = h.store();
    let s2 = store.clone();
    survive(
        store,
        || async move {
            // Another process takes an exclusive lock on the file for 1.5 s.
            let lock = support::SqliteLock::take(&path).await;
            let e = s2
                .enqueue(&NewTask::new("job", &0u64).expect("payload"))
                .await
                .expect_err("locked");
            assert!(
                matches!(e, StoreError::Unavailable(_)),
                "a locked database is 'unavailable': {e}"
            );
            tokio::time::sleep(Duration::from_millis(1500)).await;
            lock.release().await;
        },
        true,
    )
    .await;
}
