//! FlowBot load benchmark: the durable task queue on SQLite and PostgreSQL next to apalis
//! 1.0 on the same databases, enqueue-to-start latency on PostgreSQL's NOTIFY path, and
//! pipeline throughput. Prints a Markdown report.
//!
//! ```text
//! FLOWBOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p flowbot-bench -- [--tasks 20000] [--skip-apalis]
//! ```
//!
//! `flowbot-bench llm` measures the LLM streaming path and durable runs instead (see
//! `llm.rs`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports on the terminal

mod apalis_baseline;
mod llm;

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use flowbot_core::task::{NewTask, TaskRegistry, WorkerConfig, WorkerPool, handler_fn};
use flowbot_core::{Bot, CancellationToken, Handlers, InProcess, Reply, Store, TaskError};
use flowbot_store::{PostgresOptions, PostgresStore, SqliteStore};

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

fn since_base_nanos() -> u64 {
    u64::try_from(BASE.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct Args {
    tasks: u64,
    skip_apalis: bool,
    pipeline_messages: u64,
}

fn args() -> Args {
    let mut a = Args {
        tasks: 20_000,
        skip_apalis: false,
        pipeline_messages: 200_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--tasks" => a.tasks = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.tasks),
            "--messages" => {
                a.pipeline_messages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(a.pipeline_messages);
            }
            "--skip-apalis" => a.skip_apalis = true,
            other => eprintln!("ignoring unknown argument '{other}'"),
        }
    }
    a
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowbot-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Backend {
    Sqlite,
    Postgres(String),
}

/// A fresh, empty store; the guard cleans it up.
async fn fresh(backend: &Backend, tag: &str) -> (Arc<dyn Store>, Box<dyn std::any::Any>) {
    match backend {
        Backend::Sqlite => {
            let dir = TempDir::new(tag);
            let store = SqliteStore::open_in_dir(&dir.0).await.expect("sqlite");
            (Arc::new(store), Box::new(dir))
        }
        Backend::Postgres(url) => {
            let schema = format!("bench_{tag}");
            let admin = PostgresStore::connect(url).await.expect("postgres");
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(admin.pool())
                .await
                .expect("drop schema");
            let store = PostgresStore::connect_with(
                PostgresOptions::new(url.clone())
                    .schema(schema)
                    .max_connections(16),
            )
            .await
            .expect("postgres");
            (Arc::new(store), Box::new(admin))
        }
    }
}

struct QueueRun {
    enqueue_batched: f64,
    enqueue_single: f64,
    process: f64,
}

fn noop_registry() -> Arc<TaskRegistry> {
    let mut r = TaskRegistry::new();
    r.register("noop", handler_fn(|_cx| async { Ok::<(), TaskError>(()) }))
        .expect("register");
    Arc::new(r)
}

async fn flowbot_queue(backend: &Backend, tag: &str, workers: usize, n: u64) -> QueueRun {
    let (store, _guard) = fresh(backend, tag).await;
    let single_n = (n / 10).max(100);
    let t = Instant::now();
    for i in 0..single_n {
        store
            .enqueue(&NewTask::new("noop", &i).expect("task"))
            .await
            .expect("enqueue");
    }
    let enqueue_single = single_n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut i = single_n;
    while i < n {
        let chunk: Vec<NewTask> = (i..(i + 1000).min(n))
            .map(|k| NewTask::new("noop", &k).expect("task"))
            .collect();
        store.enqueue_batch(&chunk).await.expect("enqueue batch");
        i += chunk.len() as u64;
    }
    let enqueue_batched = (n - single_n) as f64 / t.elapsed().as_secs_f64();

    let config = WorkerConfig {
        id: format!("bench-{tag}"),
        concurrency: workers,
        ..WorkerConfig::default()
    };
    let pool = WorkerPool::new(store.clone(), noop_registry(), config).expect("pool");
    let stats = pool.stats();
    let stop = CancellationToken::new();
    let t = Instant::now();
    let running = tokio::spawn(pool.run(stop.clone()));
    while stats.completed.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let process = n as f64 / t.elapsed().as_secs_f64();
    stop.cancel();
    running.await.expect("pool");
    QueueRun {
        enqueue_batched,
        enqueue_single,
        process,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1e6
}

/// Enqueue-to-start latency on PostgreSQL with idle workers (the NOTIFY path), and with the
/// pool busy on a steady stream of other tasks.
async fn latency(url: &str, under_load: bool) -> (f64, f64, usize) {
    let backend = Backend::Postgres(url.to_owned());
    let (store, _guard) = fresh(&backend, if under_load { "lat_load" } else { "lat_idle" }).await;
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut r = TaskRegistry::new();
    let s = samples.clone();
    r.register(
        "probe",
        handler_fn(move |cx| {
            let s = s.clone();
            async move {
                let sent: u64 = cx.task().payload()?;
                s.lock()
                    .expect("lock")
                    .push(since_base_nanos().saturating_sub(sent));
                Ok(())
            }
        }),
    )
    .expect("register");
    r.register("noop", handler_fn(|_cx| async { Ok::<(), TaskError>(()) }))
        .expect("register");
    let config = WorkerConfig {
        id: "latency".into(),
        concurrency: 4,
        ..WorkerConfig::default()
    };
    let pool = WorkerPool::new(store.clone(), Arc::new(r), config).expect("pool");
    let stats = pool.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(pool.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let load = under_load.then(|| {
        let store = store.clone();
        let stop = stop.clone();
        // About 5,000 tasks/s of background work, in batches of 50 every 10 ms.
        tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.is_cancelled() {
                let batch: Vec<NewTask> = (0..50)
                    .map(|i| NewTask::new("noop", &(k + i)).expect("task"))
                    .collect();
                k += 50;
                let _ = store.enqueue_batch(&batch).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            k
        })
    });
    let probes = 1000;
    for _ in 0..probes {
        let sent = since_base_nanos();
        store
            .enqueue(&NewTask::new("probe", &sent).expect("task"))
            .await
            .expect("enqueue probe");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    while samples.lock().expect("lock").len() < probes {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    if let Some(load) = load {
        let _ = load.await;
    }
    running.await.expect("pool");
    let mut v = samples.lock().expect("lock").clone();
    v.sort_unstable();
    let background = usize::try_from(stats.completed.load(Ordering::Relaxed))
        .unwrap_or(0)
        .saturating_sub(probes);
    (percentile(&v, 0.50), percentile(&v, 0.99), background)
}

async fn pipeline(messages: u64, persist: bool) -> f64 {
    let dir = TempDir::new("pipeline");
    let (channel, handle) = InProcess::channel("bench", 4096);
    let mut builder = Bot::builder()
        .channel(channel)
        .router(Handlers::new(()).fallback(|_cx| async { Ok(Reply::text("ok")) }));
    if persist {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_dir(&dir.0).await.expect("sqlite"));
        builder = builder.store(store).without_workers();
    }
    let bot = builder.build().expect("bot");
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));
    let t = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..messages {
            let user = format!("u{}", i % 1000);
            let conv = format!("c{}", i % 1000);
            handle.say(&user, &conv, "hi").await.expect("say");
        }
        handle
    });
    // Replies go to the handle, which the producer owns until it is done; then drain.
    let mut handle = producer.await.expect("producer");
    let mut got = 0;
    while got < messages {
        handle.next_reply().await.expect("reply");
        got += 1;
    }
    let rate = messages as f64 / t.elapsed().as_secs_f64();
    stop.cancel();
    running.await.expect("join").expect("bot");
    rate
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("llm") {
        let code = llm::main(std::env::args().skip(2).collect()).await;
        std::process::exit(code);
    }
    let a = args();
    LazyLock::force(&BASE);
    let pg = std::env::var("FLOWBOT_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("FLOWBOT_TEST_POSTGRES_URL"))
        .ok()
        .filter(|u| !u.is_empty());
    if pg.is_none() {
        eprintln!("FLOWBOT_BENCH_POSTGRES_URL not set: PostgreSQL rows are skipped");
    }
    println!("# FlowBot benchmark\n");
    println!(
        "{} no-op tasks per run; `workers` = concurrent tasks in one pool (FlowBot) or worker concurrency (apalis).\n",
        a.tasks
    );
    println!(
        "| backend | workers | FlowBot enqueue (batched) /s | FlowBot enqueue (one at a time) /s | FlowBot process /s | apalis enqueue /s | apalis process /s | process ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut backends = vec![("sqlite", Backend::Sqlite)];
    if let Some(url) = &pg {
        backends.push(("postgres", Backend::Postgres(url.clone())));
    }
    for (name, backend) in &backends {
        for workers in [1usize, 4, 16] {
            let f = flowbot_queue(backend, &format!("{name}_{workers}"), workers, a.tasks).await;
            let apalis = if a.skip_apalis {
                None
            } else {
                let r = match backend {
                    Backend::Sqlite => {
                        let dir = TempDir::new("apalis");
                        apalis_baseline::run_sqlite(&dir.0.join("apalis.db"), workers, a.tasks)
                            .await
                    }
                    Backend::Postgres(url) => {
                        apalis_baseline::run_postgres(url, workers, a.tasks).await
                    }
                };
                match r {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("apalis {name} {workers}: {e}");
                        None
                    }
                }
            };
            let (ae, ap, ratio) = match &apalis {
                Some(r) => (
                    format!("{:.0}", r.enqueue_per_sec),
                    format!("{:.0}", r.process_per_sec),
                    format!("{:.1}×", f.process / r.process_per_sec),
                ),
                None => ("–".into(), "–".into(), "–".into()),
            };
            println!(
                "| {name} | {workers} | {:.0} | {:.0} | {:.0} | {ae} | {ap} | {ratio} |",
                f.enqueue_batched, f.enqueue_single, f.process
            );
        }
    }
    if let Some(url) = &pg {
        println!(
            "\n## Enqueue-to-start latency, PostgreSQL (4 workers, LISTEN/NOTIFY, 1 s poll fallback)\n"
        );
        println!("| situation | p50 ms | p99 ms | background tasks run meanwhile |");
        println!("|---|---|---|---|");
        let (p50, p99, _) = latency(url, false).await;
        println!("| idle workers | {p50:.2} | {p99:.2} | 0 |");
        let (p50, p99, bg) = latency(url, true).await;
        println!("| under load (~5,000 tasks/s) | {p50:.2} | {p99:.2} | {bg} |");
    }
    println!("\n## Pipeline (in-process channel, trivial router, in-memory dedupe on)\n");
    println!("| persistence | messages | messages/s |");
    println!("|---|---|---|");
    let n = a.pipeline_messages;
    println!("| none | {n} | {:.0} |", pipeline(n, false).await);
    let n = (a.pipeline_messages / 20).max(1000);
    println!(
        "| SQLite (inbound + outbound stored) | {n} | {:.0} |",
        pipeline(n, true).await
    );
}
