//! Workflow engine benchmark, on SQLite and PostgreSQL in one run:
//!
//! - per-node overhead of a 10-node linear workflow of no-op actions (p50 and p95 per node,
//!   over sequential runs), next to the baseline of the same store: a chain of 10 plain
//!   tasks where each handler enqueues the next (one queue hop per step, no engine);
//! - throughput of 1,000 concurrent runs of a 5-node workflow with a fan-out and a join,
//!   checking that every node executed exactly once and every run completed.
//!
//! ```text
//! FLOWBOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p flowbot-bench --bin flowbot-workflow-bench -- [--runs 200] [--concurrent 1000]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports on the terminal

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowbot_core::task::{NewTask, WorkerConfig, handler_fn};
use flowbot_core::workflow::{Format, RunStatus, WorkflowSpec, Workflows};
use flowbot_core::{
    Action, ActionContext, Bot, BoxError, CancellationToken, Handlers, InProcess, Reply, Store,
    TaskError, async_trait,
};
use flowbot_store::{PostgresOptions, PostgresStore, SqliteStore};
use serde_json::{Value, json};

/// `noop`: counts its calls per `key` and answers `{}`.
#[derive(Default)]
struct Noop(Mutex<HashMap<String, u32>>);

struct NoopAction(Arc<Noop>);

#[async_trait]
impl Action for NoopAction {
    fn name(&self) -> &str {
        "noop"
    }
    fn description(&self) -> &str {
        "does nothing; counts calls"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"key": {"type": "string"}}})
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object"})
    }
    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        if let Some(k) = input["key"].as_str() {
            *self
                .0
                .0
                .lock()
                .map_err(|_| "poisoned")?
                .entry(k.to_owned())
                .or_default() += 1;
        }
        Ok(json!({}))
    }
}

fn linear() -> String {
    let mut s = String::from("name: linear\nnodes:\n");
    for i in 0..10 {
        s.push_str(&format!("  - {{ id: n{i}, action: noop }}\n"));
    }
    s.push_str("edges:\n");
    for i in 0..9 {
        s.push_str(&format!("  - {{ from: n{i}, to: n{} }}\n", i + 1));
    }
    s
}

const FAN: &str = r#"
name: fan
nodes:
  - { id: a, action: noop, with: { key: "{{ run.id }}/a" } }
  - { id: b, action: noop, with: { key: "{{ run.id }}/b" } }
  - { id: c, action: noop, with: { key: "{{ run.id }}/c" } }
  - { id: d, action: noop, with: { key: "{{ run.id }}/d" } }
  - { id: e, action: noop, with: { key: "{{ run.id }}/e" }, join: all }
edges: [ { from: a, to: b }, { from: a, to: c }, { from: a, to: d }, { from: b, to: e }, { from: c, to: e }, { from: d, to: e } ]
"#;

enum Backend {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

async fn fresh(backend: &Backend, tag: &str) -> Arc<dyn Store> {
    match backend {
        Backend::Sqlite(dir) => {
            let d = dir.join(tag);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("bench dir");
            Arc::new(SqliteStore::open_in_dir(&d).await.expect("sqlite"))
        }
        Backend::Postgres(url) => {
            let schema = format!("bench_wf_{tag}");
            let admin = PostgresStore::connect(url).await.expect("postgres");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(admin.pool())
            .await
            .expect("drop schema");
            Arc::new(
                PostgresStore::connect_with(
                    PostgresOptions::new(url.clone())
                        .schema(schema)
                        .max_connections(16),
                )
                .await
                .expect("postgres"),
            )
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Running {
    engine: Arc<Workflows>,
    noop: Arc<Noop>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    hops: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// A bot with workers, the engine, the `noop` action and the baseline's `hop` task kind.
fn bot(store: Arc<dyn Store>) -> Running {
    let engine = Arc::new(Workflows::new(store.clone()));
    let noop: Arc<Noop> = Arc::default();
    let hops: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let (channel, _h) = InProcess::channel("bench", 16);
    let hop_store = store.clone();
    let done = hops.clone();
    let bot = Bot::builder()
        .store(store)
        .channel(channel)
        .router(Handlers::new(()).fallback(|_cx| async { Ok(Reply::none()) }))
        .action(NoopAction(noop.clone()))
        .workflows(engine.clone())
        // Baseline: a task whose handler enqueues the next step of its chain.
        .task(
            "hop",
            handler_fn(move |cx| {
                let (store, done) = (hop_store.clone(), done.clone());
                async move {
                    let (chain, step): (u64, u32) =
                        cx.task().payload().map_err(TaskError::permanent)?;
                    if step < 9 {
                        let next = NewTask::new("hop", &(chain, step + 1))
                            .map_err(TaskError::permanent)?;
                        store.enqueue(&next).await.map_err(TaskError::from)?;
                    } else if let Ok(mut d) = done.lock() {
                        d.insert(chain, Instant::now());
                    }
                    Ok(())
                }
            }),
        )
        .workers(WorkerConfig {
            concurrency: 32,
            poll_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        })
        .build()
        .expect("bot");
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        bot.run(token).await.expect("bot run");
    });
    Running {
        engine,
        noop,
        stop,
        task,
        hops,
    }
}

async fn wait_run(engine: &Workflows, id: &str) -> RunStatus {
    loop {
        let r = engine
            .store()
            .get_run(id)
            .await
            .expect("get run")
            .expect("run");
        if r.status.is_final() {
            return r.status;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

struct Report {
    backend: &'static str,
    hop_p50: f64,
    hop_p95: f64,
    node_p50: f64,
    node_p95: f64,
    concurrent: usize,
    concurrent_secs: f64,
    lost: usize,
    duplicated: usize,
}

async fn measure(backend: &Backend, name: &'static str, runs: usize, concurrent: usize) -> Report {
    let store = fresh(backend, "main").await;
    let r = bot(store.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Baseline: chains of 10 queue hops, one chain at a time.
    let mut hop = Vec::new();
    for chain in 0..runs as u64 {
        let t = Instant::now();
        store
            .enqueue(&NewTask::new("hop", &(chain, 0u32)).expect("task"))
            .await
            .expect("enqueue");
        let end = loop {
            if let Some(end) = r.hops.lock().expect("lock").get(&chain).copied() {
                break end;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        hop.push((end - t).as_secs_f64() * 1000.0 / 10.0);
    }
    hop.sort_by(f64::total_cmp);

    // Workflow: a 10-node linear run at a time; per node = run duration / 10.
    let spec = WorkflowSpec::parse(&linear(), Format::Yaml).expect("linear");
    r.engine.apply(spec).await.expect("apply linear");
    let mut per_node = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let run = r
            .engine
            .start("linear", Value::Null, json!({"kind": "bench"}))
            .await
            .expect("start");
        assert_eq!(wait_run(&r.engine, &run.id).await, RunStatus::Completed);
        per_node.push(t.elapsed().as_secs_f64() * 1000.0 / 10.0);
    }
    per_node.sort_by(f64::total_cmp);

    // 1,000 concurrent runs of the fan-out workflow.
    let spec = WorkflowSpec::parse(FAN, Format::Yaml).expect("fan");
    r.engine.apply(spec).await.expect("apply fan");
    let t = Instant::now();
    let mut ids = Vec::with_capacity(concurrent);
    for _ in 0..concurrent {
        ids.push(
            r.engine
                .start("fan", Value::Null, json!({"kind": "bench"}))
                .await
                .expect("start")
                .id,
        );
    }
    let mut lost = 0;
    for id in &ids {
        if wait_run(&r.engine, id).await != RunStatus::Completed {
            lost += 1;
        }
    }
    let concurrent_secs = t.elapsed().as_secs_f64();
    let calls = r.noop.0.lock().expect("lock").clone();
    let mut duplicated = 0;
    for id in &ids {
        for n in ["a", "b", "c", "d", "e"] {
            match calls.get(&format!("{id}/{n}")) {
                None => lost += 1,
                Some(1) => {}
                Some(_) => duplicated += 1,
            }
        }
    }
    r.stop.cancel();
    let _ = r.task.await;
    Report {
        backend: name,
        hop_p50: percentile(&hop, 0.5),
        hop_p95: percentile(&hop, 0.95),
        node_p50: percentile(&per_node, 0.5),
        node_p95: percentile(&per_node, 0.95),
        concurrent,
        concurrent_secs,
        lost,
        duplicated,
    }
}

#[tokio::main]
async fn main() {
    let mut runs = 200usize;
    let mut concurrent = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--concurrent" => {
                concurrent = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(concurrent);
            }
            other => eprintln!("ignoring unknown argument '{other}'"),
        }
    }
    let dir = std::env::temp_dir().join(format!("flowbot-wf-bench-{}", std::process::id()));
    let mut reports = Vec::new();
    eprintln!("SQLite…");
    reports.push(measure(&Backend::Sqlite(dir.clone()), "SQLite", runs, concurrent).await);
    match std::env::var("FLOWBOT_BENCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            eprintln!("PostgreSQL…");
            reports.push(measure(&Backend::Postgres(url), "PostgreSQL", runs, concurrent).await);
        }
        _ => eprintln!("PostgreSQL: SKIPPED (set FLOWBOT_BENCH_POSTGRES_URL)"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("### Workflow engine ({runs} sequential runs; {concurrent} concurrent runs)\n");
    println!(
        "| Store | queue hop p50 / p95 (baseline) | workflow node p50 / p95 | node p50 ÷ hop p50 | {concurrent} concurrent 5-node runs | runs/s | nodes/s | lost | duplicated |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2}× | {:.2} s | {:.0} | {:.0} | {} | {} |",
            r.backend,
            r.hop_p50,
            r.hop_p95,
            r.node_p50,
            r.node_p95,
            r.node_p50 / r.hop_p50,
            r.concurrent_secs,
            r.concurrent as f64 / r.concurrent_secs,
            (r.concurrent * 5) as f64 / r.concurrent_secs,
            r.lost,
            r.duplicated
        );
    }
    if reports.iter().any(|r| r.lost > 0 || r.duplicated > 0) {
        eprintln!("FAILED: lost or duplicated node executions");
        std::process::exit(1);
    }
}
