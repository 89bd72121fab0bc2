//! apalis 1.0 baseline for the task-queue throughput benchmark.
//!
//! Each run starts from a clean apalis state, pushes `tasks` no-op jobs one by
//! one through apalis' normal push API ([`TaskSink::push`], sequentially: one
//! job per call, each its own `INSERT` transaction), then starts one apalis
//! worker and measures how long it takes until every job has been processed
//! and the worker has shut down gracefully.
//!
//! # What "workers" means here
//!
//! `workers` is apalis' worker concurrency: a single worker built the way the
//! apalis README documents it,
//! `WorkerBuilder::new(..).backend(storage).concurrency(workers).parallelize(tokio::spawn)`,
//! so up to `workers` jobs are in flight at once, each on its own tokio task.
//!
//! # Settings (things that can affect fairness)
//!
//! * **Storage config**: apalis' defaults (`Config::default()` of
//!   apalis-postgres / apalis-sqlite): `batch_size = 10` jobs per fetch,
//!   `lock_tasks = true` (a `Lock` event per job), `persist_results = true`
//!   (a `Complete` event per job; without it jobs are never marked `Done`),
//!   heartbeat every 30 s. Lock/complete events are buffered in a channel and
//!   written in batches (one transaction per drained batch), between fetches;
//!   so completions are not written one job at a time.
//! * **Polling**: no poll strategy and no pubsub/callback listener is
//!   attached. apalis 1.0 workers do not busy-poll: the worker fetches a batch
//!   whenever it has free capacity and is woken by its own in-flight jobs
//!   completing. That is enough because all jobs are pushed before the worker
//!   starts; it would not pick up jobs pushed later while it sits idle.
//! * **Completion point**: the handler counts processed jobs in an
//!   [`AtomicU64`] and calls [`WorkerContext::stop`] when the count reaches
//!   `tasks`; apalis' graceful stop then waits for in-flight jobs and flushes
//!   the remaining lock/complete events to the database. The processing time
//!   runs from just before the worker is started (including its registration)
//!   until its `run()` future returns, i.e. until every completion is durably
//!   recorded. After timing, the run checks in the database that exactly
//!   `tasks` jobs have status `Done` and fails otherwise.
//! * **PostgreSQL**: clean state by `DROP SCHEMA IF EXISTS apalis CASCADE`
//!   (apalis 1.0 keeps its tables, functions and `_sqlx_migrations` in the
//!   `apalis` schema) followed by `PostgresStorage::setup`. apalis' migrations
//!   install an `AFTER INSERT ... FOR EACH ROW` trigger that calls
//!   `pg_notify` for every pushed job, which is part of its enqueue cost.
//!   Pool: sqlx defaults (`PgPool::connect`, 10 connections), as in apalis'
//!   examples.
//! * **SQLite**: the file (and its `-wal`/`-shm` files) is deleted first.
//!   `SqliteStorage::setup` sets `journal_mode = WAL`, `synchronous = OFF`,
//!   `temp_store = MEMORY` and `cache_size = 64000`, but with plain
//!   `PRAGMA` statements on the pool, so only on whichever pooled connection
//!   runs each statement (`synchronous`, `temp_store` and `cache_size` are
//!   per-connection). Here every pooled connection is opened with the same
//!   `temp_store` and `cache_size`, and with `synchronous = NORMAL` (see
//!   [`SQLITE_SYNCHRONOUS`]), the level FlowBot's SQLite store runs at, so
//!   both are measured at the same durability. Pool: sqlx defaults (10
//!   connections, 5 s busy timeout).
//! * **SQLite processing rate depends on `tasks`**: apalis-sqlite's ack query
//!   finds the rows to complete through its `lock_by` index, which also
//!   covers every job this worker has already finished, so each ack batch
//!   costs time proportional to the jobs done so far. Processing throughput
//!   therefore drops as `tasks` grows (measured: about 1150 jobs/s at 2000
//!   jobs, about 500 jobs/s at 5000); compare runs with the same `tasks`.
//! * **Concurrency barely matters** for no-op jobs: the worker's fetch
//!   (10 jobs per query) and event-flush steps run one after another in the
//!   worker loop, and they, not the handlers, are the bottleneck.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::{
    BoxDynError, Data, ParallelizeExt, TaskSink, WorkerBuilder, WorkerBuilderExt, WorkerContext,
};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

/// Result of one baseline run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApalisRun {
    /// tasks pushed per second (pushing `tasks` no-op jobs one by one through apalis' normal push API, sequentially)
    pub(crate) enqueue_per_sec: f64,
    /// tasks processed per second: time from starting the worker(s) until all `tasks` pre-pushed jobs are done
    pub(crate) process_per_sec: f64,
}

/// `synchronous` pragma applied to every pooled SQLite connection.
///
/// `NORMAL`, the level FlowBot's SQLite store uses, so both queues are measured at the
/// same durability. (`SqliteStorage::setup` itself sets `OFF`, on one connection only;
/// see the module docs.)
pub(crate) const SQLITE_SYNCHRONOUS: SqliteSynchronous = SqliteSynchronous::Normal;

/// How long the run may go without any job completing before it is aborted.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Name of the single apalis worker (apalis requires unique live names).
const WORKER_NAME: &str = "flowbot-bench-apalis";

/// The no-op job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NoopJob {
    /// Sequence number; unused by the handler.
    n: u64,
}

/// Shared completion counter handed to the handler via apalis `Data`.
#[derive(Debug)]
struct Progress {
    /// Jobs processed so far.
    done: AtomicU64,
    /// Jobs to process before the worker is stopped.
    target: u64,
}

/// The job handler: counts the job and stops the worker after the last one.
async fn handle(
    job: NoopJob,
    progress: Data<Arc<Progress>>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let _ = job.n;
    let done = progress.done.fetch_add(1, Ordering::AcqRel) + 1;
    if done == progress.target {
        worker.stop()?;
    }
    Ok(())
}

/// PostgreSQL at `url` (e.g. postgres://postgres@127.0.0.1:5432/test). Must start from a clean apalis state each call (e.g. drop/recreate apalis's schema or tables, then run apalis' migrations via its setup function).
///
/// Clean state: `DROP SCHEMA IF EXISTS apalis CASCADE`, then
/// `PostgresStorage::setup`. `workers` is the apalis worker concurrency
/// (`.concurrency(workers)` + `.parallelize(tokio::spawn)` on one worker).
pub(crate) async fn run_postgres(
    url: &str,
    workers: usize,
    tasks: u64,
) -> Result<ApalisRun, String> {
    check_args(workers, tasks)?;
    let pool = PgPool::connect(url).await.map_err(|e| e.to_string())?;
    let result = run_postgres_on(&pool, workers, tasks).await;
    pool.close().await;
    result
}

/// Body of [`run_postgres`], so that the pool is closed on every path.
async fn run_postgres_on(pool: &PgPool, workers: usize, tasks: u64) -> Result<ApalisRun, String> {
    sqlx::query("DROP SCHEMA IF EXISTS apalis CASCADE")
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    PostgresStorage::setup(pool)
        .await
        .map_err(|e| e.to_string())?;

    let mut storage = PostgresStorage::<NoopJob>::new(pool);
    let enqueue_per_sec = push_all(&mut storage, tasks).await?;

    let progress = new_progress(tasks);
    let worker = WorkerBuilder::new(WORKER_NAME)
        .backend(storage)
        .concurrency(workers)
        .parallelize(tokio::spawn)
        .data(Arc::clone(&progress))
        .build(handle);
    let started = Instant::now();
    let handle = tokio::spawn(worker.run());
    wait_for_worker(handle, &progress).await?;
    let process_per_sec = per_sec(tasks, started.elapsed());

    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Done' AND job_type = $1",
    )
    .bind(std::any::type_name::<NoopJob>())
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    check_done(done, tasks)?;

    Ok(ApalisRun {
        enqueue_per_sec,
        process_per_sec,
    })
}

/// SQLite file at `path` (delete it first if present; use WAL as apalis recommends).
///
/// Every pooled connection is opened with the pragmas `SqliteStorage::setup`
/// runs (WAL, `synchronous` = [`SQLITE_SYNCHRONOUS`], in-memory temp store,
/// 64000-page cache); see the module docs. `workers` is the apalis worker
/// concurrency (`.concurrency(workers)` + `.parallelize(tokio::spawn)`).
pub(crate) async fn run_sqlite(
    path: &Path,
    workers: usize,
    tasks: u64,
) -> Result<ApalisRun, String> {
    check_args(workers, tasks)?;
    remove_sqlite_files(path)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SQLITE_SYNCHRONOUS)
        .pragma("temp_store", "MEMORY")
        .pragma("cache_size", "64000");
    let pool = SqlitePool::connect_with(options)
        .await
        .map_err(|e| e.to_string())?;
    let result = run_sqlite_on(&pool, workers, tasks).await;
    pool.close().await;
    result
}

/// Body of [`run_sqlite`], so that the pool is closed on every path.
async fn run_sqlite_on(pool: &SqlitePool, workers: usize, tasks: u64) -> Result<ApalisRun, String> {
    SqliteStorage::setup(pool)
        .await
        .map_err(|e| e.to_string())?;

    let mut storage = SqliteStorage::<NoopJob>::new(pool);
    let enqueue_per_sec = push_all(&mut storage, tasks).await?;

    let progress = new_progress(tasks);
    let worker = WorkerBuilder::new(WORKER_NAME)
        .backend(storage)
        .concurrency(workers)
        .parallelize(tokio::spawn)
        .data(Arc::clone(&progress))
        .build(handle);
    let started = Instant::now();
    let handle = tokio::spawn(worker.run());
    wait_for_worker(handle, &progress).await?;
    let process_per_sec = per_sec(tasks, started.elapsed());

    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM Jobs WHERE status = 'Done' AND job_type = ?1")
            .bind(std::any::type_name::<NoopJob>())
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
    check_done(done, tasks)?;

    Ok(ApalisRun {
        enqueue_per_sec,
        process_per_sec,
    })
}

/// Rejects arguments that would make the run meaningless or hang.
fn check_args(workers: usize, tasks: u64) -> Result<(), String> {
    if workers == 0 {
        return Err("apalis baseline: workers must be at least 1".to_owned());
    }
    if tasks == 0 {
        return Err("apalis baseline: tasks must be at least 1".to_owned());
    }
    Ok(())
}

/// Pushes `tasks` jobs one by one with [`TaskSink::push`]; returns jobs/s.
async fn push_all<S, K>(storage: &mut S, tasks: u64) -> Result<f64, String>
where
    S: TaskSink<NoopJob, K>,
    S::Error: std::fmt::Display,
{
    let started = Instant::now();
    for n in 0..tasks {
        storage
            .push(NoopJob { n })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(per_sec(tasks, started.elapsed()))
}

/// A fresh completion counter for `tasks` jobs.
fn new_progress(tasks: u64) -> Arc<Progress> {
    Arc::new(Progress {
        done: AtomicU64::new(0),
        target: tasks,
    })
}

/// Waits for the spawned worker to return, aborting it (and failing) if no
/// job completes for [`STALL_TIMEOUT`], including a stalled shutdown.
async fn wait_for_worker<E: std::fmt::Display>(
    mut handle: tokio::task::JoinHandle<Result<(), E>>,
    progress: &Progress,
) -> Result<(), String> {
    let mut last_done = progress.done.load(Ordering::Acquire);
    let mut last_change = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            joined = &mut handle => {
                joined
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("apalis worker failed: {e}"))?;
                break;
            }
            _ = ticker.tick() => {
                let done = progress.done.load(Ordering::Acquire);
                if done != last_done {
                    last_done = done;
                    last_change = Instant::now();
                } else if last_change.elapsed() >= STALL_TIMEOUT {
                    handle.abort();
                    return Err(format!(
                        "apalis worker stalled: {done}/{} jobs processed, nothing for {:?}",
                        progress.target, STALL_TIMEOUT
                    ));
                }
            }
        }
    }
    let done = progress.done.load(Ordering::Acquire);
    if done != progress.target {
        return Err(format!(
            "apalis worker exited after {done}/{} jobs",
            progress.target
        ));
    }
    Ok(())
}

/// Fails unless the database shows exactly `tasks` jobs as `Done`.
fn check_done(done: i64, tasks: u64) -> Result<(), String> {
    if u64::try_from(done).ok() == Some(tasks) {
        Ok(())
    } else {
        Err(format!(
            "apalis recorded {done} jobs as Done, expected {tasks}"
        ))
    }
}

/// Deletes the SQLite database file and its WAL/shared-memory companions.
fn remove_sqlite_files(path: &Path) -> Result<(), String> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    for file in [path.as_os_str().to_owned(), wal, shm] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", Path::new(&file).display())),
        }
    }
    Ok(())
}

/// Jobs per second for `count` jobs in `elapsed`.
fn per_sec(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}
