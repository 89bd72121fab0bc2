//! The database fails in the middle of a stream of queued messages (a webhook's, a platform
//! adapter's): every message the queue accepted is still answered. A failed stage fails its
//! task, so the queue retries it; nothing is completed unanswered, nothing is dead-lettered.
//! Duplicated answers are allowed, as at-least-once delivery allows them.
//!
//! On SQLite another connection locks the file for a moment, again and again; on PostgreSQL
//! the test terminates the store's own backends (found by its application name, so other
//! tests sharing the server are not disturbed).

#[path = "../flowbot-store/tests/support/mod.rs"]
#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use flowbot_core::task::{NewTask, TaskFilter, TaskState, WorkerConfig};
use flowbot_core::{
    Bot, CancellationToken, Event, Handlers, INBOUND_TASK, InProcess, Message, Reply, Sender, Store,
};

/// Messages in the stream: at least `MESSAGES`, more until the fault has struck, never more
/// than `MAX_MESSAGES`; sent this many at a time.
const MESSAGES: usize = 400;
const MAX_MESSAGES: usize = 20_000;
const SENDERS: usize = 16;

fn workers() -> WorkerConfig {
    WorkerConfig {
        concurrency: 16,
        poll_interval: Duration::from_millis(20),
        recover_interval: Duration::from_millis(200),
        lease: Duration::from_secs(2),
        heartbeat: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

/// Stream queued messages through a bot on `store` while `fault` strikes (once per call, until
/// the pipeline has seen a failure); then check that each accepted message was answered.
async fn no_message_lost<F, Fut>(store: Arc<dyn Store>, fault: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (channel, mut handle) = InProcess::channel("local", 1024);
    let router =
        Handlers::new(()).fallback(|cx| async move { Ok(Reply::text(format!("re {}", cx.args))) });
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router(router)
        .workers(workers())
        .build()
        .expect("bot");
    let stats = bot.pipeline().stats().clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));

    // The senders stream messages until the fault has struck the pipeline and at least
    // `MESSAGES` are in (at most `MAX_MESSAGES`). Each message is enqueued until the store
    // accepts it (a webhook client retrying its 503), so every one of them is accepted.
    let next = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (store, next, enough) = (store.clone(), next.clone(), enough.clone());
        senders.spawn(async move {
            let mut accepted = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= MAX_MESSAGES || (n >= MESSAGES && enough.load(Ordering::SeqCst)) {
                    return accepted;
                }
                let message = Message::text(
                    "local",
                    format!("c{}", n % 40),
                    Sender::user(format!("u{n}")),
                    format!("m{n}"),
                );
                let task = NewTask::new(INBOUND_TASK, &Event::Message(message)).expect("task");
                while store.enqueue(&task).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                accepted.push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let faults = {
        let (stats, enough) = (stats.clone(), enough.clone());
        tokio::spawn(async move {
            while !enough.load(Ordering::SeqCst) {
                fault().await;
                let failed: u64 = stats.failures.snapshot().iter().map(|(_, n)| n).sum();
                if failed > 0 {
                    enough.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let mut accepted = std::collections::HashSet::new();
    while let Some(done) = senders.join_next().await {
        accepted.extend(done.expect("sender"));
    }
    enough.store(true, Ordering::SeqCst);
    faults.await.expect("faults");

    let mut answered: HashMap<usize, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered.len() < accepted.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(reply)) = tokio::time::timeout(left, handle.next_reply()).await else {
            let mut missing: Vec<usize> = accepted
                .iter()
                .copied()
                .filter(|n| !answered.contains_key(n))
                .collect();
            missing.truncate(20);
            panic!(
                "{} of {} accepted messages never answered, e.g. {missing:?}",
                accepted.len() - answered.len(),
                accepted.len()
            );
        };
        let n = reply
            .text
            .strip_prefix("re m")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected answer: {}", reply.text));
        *answered.entry(n).or_default() += 1;
    }
    let failures = stats.failures.snapshot();
    assert!(
        failures.iter().map(|(_, n)| n).sum::<u64>() > 0,
        "the fault struck in the middle of handling: {failures:?}"
    );
    let dead = store
        .list_tasks(&TaskFilter {
            state: Some(TaskState::Dead),
            ..TaskFilter::default()
        })
        .await
        .expect("dead letters");
    assert!(dead.items.is_empty(), "dead letters: {:?}", dead.items);
    stop.cancel();
    running.await.expect("join").expect("bot stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_mid_stream_loses_no_message() {
    let h = support::sqlite_with(|o| flowbot_store::SqliteOptions {
        busy_timeout: Duration::from_millis(50),
        ..o
    })
    .await;
    let path = h.sqlite_file().expect("a SQLite harness");
    no_message_lost(h.store(), move || {
        let path = path.clone();
        async move {
            // Another process holds the write lock past the store's busy timeout.
            let lock = support::SqliteLock::take(&path).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            lock.release().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backends_terminated_mid_stream_lose_no_message() {
    let Some(h) = support::postgres().await else {
        return;
    };
    let h = Arc::new(h);
    let killer = h.clone();
    no_message_lost(h.store(), move || {
        let h = killer.clone();
        async move {
            h.kill_connections().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.cleanup().await;
    }
}
