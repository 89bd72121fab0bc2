//! The embedded SQLite backend: one file under a data directory, WAL journal, one writer
//! connection (SQLite serialises writers anyway; one connection avoids busy retries) and a
//! pool of readers. Batches (claims, acknowledgements, enqueue batches) are one transaction.

mod admin;
mod data;
mod workflow;
mod writes;

use writes::{GROUP_COMMIT_MAX, Write, checkpoints};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowbot_core::store::{
    Bus, BusMessage, Conversation, ConversationStore, KvStore, Page, SessionStore, StoredMessage,
};
use flowbot_core::task::{
    ClaimRequest, ClaimedTask, DeadLetter, Enqueued, FailOutcome, Failure, FireOutcome, NewTask,
    ScheduleDef, ScheduleState, ScheduleStore, TaskAdmin, TaskFilter, TaskId, TaskQueue,
    TaskRecord, TaskState,
};
use flowbot_core::{
    ChannelName, ConversationId, Message, Outbound, Session, SessionKey, Store, StoreError,
};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::common::{
    self, Migration, SCHEDULE_COLUMNS, TASK_COLUMNS, from_ms, map_err, ms, now_ms, page_limit,
    paginate, schedule_row, task_id_json, task_record,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "workflows",
        sql: include_str!("../../migrations/sqlite/0002_workflows.sql"),
    },
    Migration {
        version: 3,
        name: "leases",
        sql: include_str!("../../migrations/sqlite/0003_leases.sql"),
    },
];

/// Options for [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Database file.
    pub path: PathBuf,
    /// Reader connections (writes always use one connection).
    pub readers: u32,
    /// How long a statement waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// `synchronous` pragma: `NORMAL` (default; durable across process crashes, and WAL keeps
    /// the database consistent across power loss) or `FULL` (each commit survives power loss).
    pub synchronous_full: bool,
}

impl SqliteOptions {
    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            readers: 4,
            busy_timeout: Duration::from_secs(10),
            synchronous_full: false,
        }
    }
}

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    stop_checkpoints: CancellationToken,
    writer: SqlitePool,
    reader: SqlitePool,
    wake: watch::Sender<u64>,
    bus: tokio::sync::broadcast::Sender<BusMessage>,
    writes: mpsc::Sender<Write>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_checkpoints.cancel();
    }
}

impl SqliteStore {
    /// Open (creating if needed) `flowbot.db` in `data_dir`, creating the directory too, and
    /// apply migrations.
    pub async fn open_in_dir(data_dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Open(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        Self::open_with(SqliteOptions::new(dir.join("flowbot.db"))).await
    }

    /// Open a database from a `sqlite://path` URL.
    pub async fn open_url(url: &str) -> Result<Self, Error> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::InvalidUrl(format!("'{url}' is not a sqlite:// URL with a file path"))
            })?;
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Open(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        Self::open_with(SqliteOptions::new(path)).await
    }

    /// Open with explicit options and apply migrations.
    pub async fn open_with(options: SqliteOptions) -> Result<Self, Error> {
        let sync = if options.synchronous_full {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(options.busy_timeout)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-8000")
            // A WAL that grew under a burst is cut back to this size when it restarts.
            .pragma("journal_size_limit", "134217728");
        let open_err = |e: sqlx::Error| Error::Open(format!("{}: {e}", options.path.display()));
        // The writer never checkpoints inside a commit (that fsyncs, and would land on one
        // unlucky request's latency); a background connection checkpoints instead.
        // No ping before each acquire: the pools never leave this process, and a ping is one
        // more round trip to SQLite's worker thread on every write.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(open_err)?;
        migrate(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await
            .map_err(open_err)?;
        let stop_checkpoints = CancellationToken::new();
        tokio::spawn(checkpoints(checkpointer, stop_checkpoints.clone()));
        let reader = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.read_only(true))
            .await
            .map_err(open_err)?;
        let (wake, _) = watch::channel(0);
        let (bus, _) = tokio::sync::broadcast::channel(1024);
        let (writes, write_rx) = mpsc::channel(4 * GROUP_COMMIT_MAX);
        writes::spawn_group_commit(writer.clone(), wake.clone(), write_rx)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                stop_checkpoints,
                writer,
                reader,
                wake,
                bus,
                writes,
            }),
        })
    }

    /// Close both pools.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }

    fn w(&self) -> &SqlitePool {
        &self.inner.writer
    }

    fn r(&self) -> &SqlitePool {
        &self.inner.reader
    }

    fn wake(&self) {
        self.inner.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Hand a write to the group commit and wait for its committed result.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (done, answer) = oneshot::channel();
        let closed = || StoreError::Unavailable("the store is closing".into());
        self.inner
            .writes
            .send(make(done))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.w()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let err = |version: i64, e: sqlx::Error| Error::Migration {
        version,
        detail: e.to_string(),
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flowbot_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(|e| err(0, e))?;
    for m in MIGRATIONS {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| err(m.version, e))?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM flowbot_migrations WHERE version = ?")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| err(m.version, e))?;
        if done.is_none() {
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| err(m.version, e))?;
            sqlx::query(
                "INSERT INTO flowbot_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| err(m.version, e))?;
        }
        tx.commit().await.map_err(|e| err(m.version, e))?;
    }
    Ok(())
}

async fn insert_task(
    tx: &mut Transaction<'static, Sqlite>,
    task: &NewTask,
    now: i64,
) -> Result<Enqueued, StoreError> {
    let retry = common::retry_json(task.retry.as_ref())?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, dedupe_key, concurrency_key, created_at) \
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (dedupe_key) WHERE state IN ('queued', 'running') DO NOTHING RETURNING id",
    )
    .bind(&task.queue)
    .bind(&task.kind)
    .bind(&task.payload)
    .bind(i64::from(task.priority))
    .bind(task.run_at.map(ms).unwrap_or(now))
    .bind(task.retry.map(|r| i64::from(r.max_attempts)))
    .bind(retry)
    .bind(&task.dedupe_key)
    .bind(&task.concurrency_key)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    if let Some(id) = id {
        return Ok(Enqueued::New(TaskId(id)));
    }
    let existing: i64 = sqlx::query_scalar(
        "SELECT id FROM flowbot_tasks WHERE dedupe_key = ? AND state IN ('queued', 'running')",
    )
    .bind(&task.dedupe_key)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(Enqueued::Duplicate(TaskId(existing)))
}

/// Insert many tasks in one statement (the batch travels as one JSON array), or one by one
/// when some have dedupe keys (those need their own conflict handling). Results are in input
/// order.
async fn insert_tasks<'a>(
    tx: &mut Transaction<'static, Sqlite>,
    tasks: impl ExactSizeIterator<Item = &'a NewTask> + Clone,
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    if tasks.clone().any(|t| t.dedupe_key.is_some()) {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(insert_task(tx, t, now).await?);
        }
        return Ok(out);
    }
    insert_bulk(tx, tasks, now).await
}

/// One task row as `insert_bulk` hands it to SQLite's `json_each`.
#[derive(serde::Serialize)]
struct BulkRow<'a> {
    q: &'a str,
    k: &'a str,
    p: &'a str,
    pr: i16,
    r: i64,
    m: Option<u32>,
    rt: Option<String>,
    c: Option<&'a str>,
}

/// Insert tasks without dedupe keys in one statement. One statement is atomic on its own, so
/// this needs no transaction; group commit calls it directly for a batch of plain enqueues.
pub(super) async fn insert_bulk<'a>(
    conn: &mut SqliteConnection,
    tasks: impl ExactSizeIterator<Item = &'a NewTask> + Clone,
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    let n = tasks.len();
    if tasks.clone().any(|t| t.dedupe_key.is_some()) {
        return Err(StoreError::Invalid(
            "a task with a dedupe key cannot be bulk-inserted".into(),
        ));
    }
    if n <= VALUES_MAX {
        return insert_values(conn, tasks, now).await;
    }
    let mut rows = Vec::with_capacity(n);
    for t in tasks {
        rows.push(BulkRow {
            q: &t.queue,
            k: &t.kind,
            p: &t.payload,
            pr: t.priority,
            r: t.run_at.map(ms).unwrap_or(now),
            m: t.retry.map(|r| r.max_attempts),
            rt: common::retry_json(t.retry.as_ref())?,
            c: t.concurrency_key.as_deref(),
        });
    }
    let rows =
        serde_json::to_string(&rows).map_err(|e| StoreError::Invalid(format!("tasks: {e}")))?;
    let done = sqlx::query(
        "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, concurrency_key, created_at) \
         SELECT value ->> '$.q', value ->> '$.k', value ->> '$.p', 'queued', value ->> '$.pr', value ->> '$.r', \
                value ->> '$.m', value ->> '$.rt', value ->> '$.c', ?2 \
         FROM json_each(?1) ORDER BY key",
    )
    .bind(rows)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    new_ids(&done, n)
}

/// The ids of the `n` tasks one statement inserted, in input order. `flowbot_tasks.id` is
/// `AUTOINCREMENT` and the one writer connection holds the write lock for the whole statement,
/// so the statement's rows got consecutive ids ending at its last insert rowid. Reading them
/// from the statement's result, rather than `RETURNING` every id, saves one message per row
/// from SQLite's worker thread (and a wake-up of the group commit each).
fn new_ids(done: &sqlx::sqlite::SqliteQueryResult, n: usize) -> Result<Vec<Enqueued>, StoreError> {
    let inserted = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
    if inserted != n {
        return Err(StoreError::Corrupt(format!(
            "inserted {inserted} of {n} tasks"
        )));
    }
    let last = done.last_insert_rowid();
    let first = last - i64::try_from(n).unwrap_or(i64::MAX) + 1;
    Ok((first..=last).map(|id| Enqueued::New(TaskId(id))).collect())
}

/// Most rows in one multi-row `VALUES` insert; larger groups of tasks travel as one JSON
/// array, and larger groups of messages take one statement per this many rows.
pub(super) const VALUES_MAX: usize = 64;

/// A multi-row `INSERT … VALUES (…), (…) …` statement for 1 to [`VALUES_MAX`] rows, each size
/// built once, so SQLite's prepared statements are cached, one per size.
pub(super) struct ValuesSql {
    head: &'static str,
    row: &'static str,
    tail: &'static str,
    built: std::sync::OnceLock<Vec<String>>,
}

impl ValuesSql {
    /// `head VALUES row, row, … tail`.
    pub(super) const fn new(head: &'static str, row: &'static str, tail: &'static str) -> Self {
        ValuesSql {
            head,
            row,
            tail,
            built: std::sync::OnceLock::new(),
        }
    }

    /// The statement for `n` rows (clamped to 1..=[`VALUES_MAX`]).
    pub(super) fn rows(&'static self, n: usize) -> &'static str {
        let all = self.built.get_or_init(|| {
            (1..=VALUES_MAX)
                .map(|n| {
                    format!(
                        "{} VALUES {} {}",
                        self.head,
                        vec![self.row; n].join(", "),
                        self.tail
                    )
                })
                .collect()
        });
        &all[n.clamp(1, VALUES_MAX) - 1]
    }
}

static TASK_VALUES: ValuesSql = ValuesSql::new(
    "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, concurrency_key, created_at)",
    "(?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
    "",
);

/// Insert up to [`VALUES_MAX`] tasks with bound values: no JSON to build and take apart.
async fn insert_values<'a>(
    conn: &mut SqliteConnection,
    tasks: impl ExactSizeIterator<Item = &'a NewTask>,
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    let n = tasks.len();
    let mut q = sqlx::query(TASK_VALUES.rows(n));
    for t in tasks {
        q = q
            .bind(&t.queue)
            .bind(&t.kind)
            .bind(&t.payload)
            .bind(i64::from(t.priority))
            .bind(t.run_at.map(ms).unwrap_or(now))
            .bind(t.retry.map(|r| i64::from(r.max_attempts)))
            .bind(common::retry_json(t.retry.as_ref())?)
            .bind(&t.concurrency_key)
            .bind(now);
    }
    let done = q.execute(&mut *conn).await.map_err(map_err)?;
    new_ids(&done, n)
}

/// Mark tasks done; returns how many, and whether concurrency keys were released. Neither
/// statement returns rows (each returned row is one more message from SQLite's thread): the
/// count is the update's, and a key whose task is now `done` is released, which leaves alone
/// the key of a task this worker lost and another worker claimed again.
async fn complete_in(
    tx: &mut Transaction<'static, Sqlite>,
    worker: &str,
    ids: &[TaskId],
) -> Result<(u64, bool), StoreError> {
    let ids_json = task_id_json(ids);
    let n = sqlx::query(
        "UPDATE flowbot_tasks SET state = 'done', finished_at = ?, lease_owner = NULL, lease_until = NULL \
         WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))",
    )
    .bind(now_ms())
    .bind(worker)
    .bind(&ids_json)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    if n == 0 {
        return Ok((0, false));
    }
    let released = sqlx::query(
        "DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT value FROM json_each(?)) \
         AND (SELECT state FROM flowbot_tasks t WHERE t.id = task_id) = 'done'",
    )
    .bind(&ids_json)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    Ok((n, released > 0))
}

/// Release the concurrency keys held by `ids` (JSON array).
async fn release_keys(
    tx: &mut Transaction<'static, Sqlite>,
    ids_json: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT value FROM json_each(?))")
        .bind(ids_json)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Claim up to `req.limit` due tasks in `tx`: the first queued task of each free concurrency
/// key and any task without one, in priority, due time and id order.
///
/// Each statement returns at most one row: the candidates and the claimed tasks come back as
/// one JSON array each. sqlx-sqlite hands every row over from its worker thread as a message of
/// its own, and a claim of a hundred tasks returning rows cost two hundred of them.
async fn claim_in(
    tx: &mut Transaction<'static, Sqlite>,
    req: &ClaimRequest<'_>,
    now: i64,
) -> Result<Vec<ClaimedTask>, StoreError> {
    let kinds = serde_json::to_string(req.kinds).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("{what}: {e}"));
    let candidates: Option<String> = sqlx::query_scalar(
        "SELECT json_group_array(json_array(id, concurrency_key)) FROM ( \
           SELECT id, concurrency_key FROM flowbot_tasks t \
           WHERE state = 'queued' AND queue = ? AND run_at <= ? AND kind IN (SELECT value FROM json_each(?)) \
             AND (concurrency_key IS NULL OR ( \
               NOT EXISTS (SELECT 1 FROM flowbot_task_keys k WHERE k.key = t.concurrency_key) \
               AND NOT EXISTS (SELECT 1 FROM flowbot_tasks o WHERE o.concurrency_key = t.concurrency_key \
                               AND o.state IN ('queued', 'running') AND o.id < t.id))) \
           ORDER BY priority, run_at, id LIMIT ?)",
    )
    .bind(req.queue)
    .bind(now)
    .bind(&kinds)
    .bind(i64::from(req.limit))
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    let candidates: Vec<(i64, Option<String>)> =
        serde_json::from_str(candidates.as_deref().unwrap_or("[]"))
            .map_err(|e| corrupt("claim candidates", e))?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(candidates.len());
    let mut keys = std::collections::HashMap::new();
    for (id, key) in candidates {
        if let Some(key) = key {
            // Only the first task of a key in this batch may run; the rest wait their turn.
            if keys.contains_key(&key) {
                continue;
            }
            keys.insert(key, id);
        }
        ids.push(TaskId(id));
    }
    if !keys.is_empty() {
        // All the keys in one statement: one trip to SQLite's thread while the write lock
        // is held, not one per task.
        let keys = serde_json::to_string(&keys).map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO flowbot_task_keys (key, task_id) SELECT key, value FROM json_each(?)",
        )
        .bind(keys)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    let ids_json = task_id_json(&ids);
    let n = sqlx::query(
        "UPDATE flowbot_tasks SET state = 'running', attempts = attempts + 1, lease_owner = ?, lease_until = ? \
         WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(req.worker)
    .bind(common::lease_deadline(req.lease))
    .bind(&ids_json)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?
    .rows_affected();
    if n != ids.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "claimed {n} of {} candidate tasks",
            ids.len()
        )));
    }
    let claimed: Option<String> = sqlx::query_scalar(
        "SELECT json_group_array(json_array(id, queue, kind, payload, attempts, retry, dedupe_key, \
                concurrency_key, created_at, run_at)) \
         FROM (SELECT * FROM flowbot_tasks WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id)",
    )
    .bind(&ids_json)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    type Claimed = (
        i64,
        String,
        String,
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        i64,
    );
    let claimed: Vec<Claimed> = serde_json::from_str(claimed.as_deref().unwrap_or("[]"))
        .map_err(|e| corrupt("claimed tasks", e))?;
    claimed
        .into_iter()
        .map(
            |(
                id,
                queue,
                kind,
                payload,
                attempts,
                retry,
                dedupe_key,
                concurrency_key,
                created,
                run,
            )| {
                Ok(ClaimedTask {
                    id: TaskId(id),
                    queue,
                    kind,
                    payload,
                    attempt: common::u32_of(attempts),
                    retry: common::parse_retry(retry)?,
                    dedupe_key,
                    concurrency_key,
                    created_at: from_ms(created),
                    run_at: from_ms(run),
                })
            },
        )
        .collect()
}

#[async_trait]
impl TaskQueue for SqliteStore {
    async fn enqueue(&self, task: &NewTask) -> Result<Enqueued, StoreError> {
        self.write(|done| Write::Enqueue(task.clone(), done)).await
    }

    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let out = insert_tasks(&mut tx, tasks.iter(), now).await?;
        tx.commit().await.map_err(map_err)?;
        self.wake();
        Ok(out)
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedTask>, StoreError> {
        let mut tx = self.begin().await?;
        let tasks = claim_in(&mut tx, req, now_ms()).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(tasks)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        ids: &[TaskId],
        lease: Duration,
    ) -> Result<Vec<TaskId>, StoreError> {
        let rows: Vec<i64> = sqlx::query_scalar(
            "UPDATE flowbot_tasks SET lease_until = ? \
             WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?)) RETURNING id",
        )
        .bind(common::lease_deadline(lease))
        .bind(worker)
        .bind(task_id_json(ids))
        .fetch_all(self.w())
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(TaskId).collect())
    }

    async fn complete(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write(|done| Write::Complete(worker.to_owned(), ids.to_vec(), done))
            .await
    }

    async fn fail(&self, worker: &str, f: &Failure) -> Result<FailOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let state = if f.retry_at.is_some() {
            "queued"
        } else {
            "dead"
        };
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE flowbot_tasks SET state = ?, run_at = COALESCE(?, run_at), lease_owner = NULL, lease_until = NULL, \
             last_error = ?, finished_at = CASE WHEN ? = 'dead' THEN ? END \
             WHERE id = ? AND state = 'running' AND lease_owner = ? RETURNING id",
        )
        .bind(state)
        .bind(f.retry_at.map(ms))
        .bind(&f.error)
        .bind(state)
        .bind(now)
        .bind(f.id.0)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if updated.is_none() {
            tx.commit().await.map_err(map_err)?;
            return Ok(FailOutcome::LeaseLost);
        }
        sqlx::query(
            "INSERT INTO flowbot_task_errors (task_id, attempt, error, at) VALUES (?, ?, ?, ?)",
        )
        .bind(f.id.0)
        .bind(i64::from(f.attempt))
        .bind(&f.error)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        release_keys(&mut tx, &task_id_json(&[f.id])).await?;
        if f.retry_at.is_none() {
            sqlx::query(
                "INSERT INTO flowbot_dead_letters (task_id, reason, died_at) VALUES (?, ?, ?) \
                 ON CONFLICT (task_id) DO UPDATE SET reason = excluded.reason, died_at = excluded.died_at",
            )
            .bind(f.id.0)
            .bind(&f.error)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        self.wake();
        Ok(match f.retry_at {
            Some(at) => FailOutcome::Retrying(at),
            None => FailOutcome::DeadLettered,
        })
    }

    async fn release(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids_json = task_id_json(ids);
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE flowbot_tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), lease_owner = NULL, lease_until = NULL \
             WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))",
        )
        .bind(worker)
        .bind(&ids_json)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        release_keys(&mut tx, &ids_json).await?;
        tx.commit().await.map_err(map_err)?;
        self.wake();
        Ok(n)
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let now = ms(now);
        let mut tx = self.begin().await?;
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "UPDATE flowbot_tasks SET \
               state = CASE WHEN attempts >= COALESCE(max_attempts, ?1) THEN 'dead' ELSE 'queued' END, \
               finished_at = CASE WHEN attempts >= COALESCE(max_attempts, ?1) THEN ?2 END, \
               run_at = ?2, lease_owner = NULL, lease_until = NULL, last_error = ?3 \
             WHERE state = 'running' AND lease_until < ?2 RETURNING id, attempts, state",
        )
        .bind(i64::from(default_max_attempts))
        .bind(now)
        .bind(common::lease_expired_error())
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        if rows.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(0);
        }
        for (id, attempts, state) in &rows {
            sqlx::query(
                "INSERT INTO flowbot_task_errors (task_id, attempt, error, at) VALUES (?, ?, ?, ?)",
            )
            .bind(id)
            .bind(attempts)
            .bind(common::lease_expired_error())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if state == "dead" {
                sqlx::query(
                    "INSERT INTO flowbot_dead_letters (task_id, reason, died_at) VALUES (?, ?, ?) \
                     ON CONFLICT (task_id) DO UPDATE SET reason = excluded.reason, died_at = excluded.died_at",
                )
                .bind(id)
                .bind(common::lease_expired_error())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
        }
        let ids: Vec<TaskId> = rows.iter().map(|r| TaskId(r.0)).collect();
        release_keys(&mut tx, &task_id_json(&ids)).await?;
        tx.commit().await.map_err(map_err)?;
        self.wake();
        Ok(rows.len() as u64)
    }

    fn wake_signal(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}

#[async_trait]
impl Bus for SqliteStore {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        crate::check_bus_payload(payload)?;
        // No subscriber is not an error: nobody is listening in this process.
        let _ = self.inner.bus.send(BusMessage {
            topic: topic.into(),
            payload: payload.into(),
        });
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusMessage> {
        self.inner.bus.subscribe()
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.r())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

impl FromStr for SqliteOptions {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::InvalidUrl("empty SQLite path".into()));
        }
        Ok(SqliteOptions::new(s))
    }
}
