//! The PostgreSQL backend, for many servers and agents sharing one database.
//!
//! Claims take a batch of due tasks in one statement with `FOR UPDATE SKIP LOCKED`, taking
//! concurrency keys in the same statement. Inserting tasks notifies the schema's channel (a
//! statement-level trigger), and a `LISTEN` connection wakes idle workers; workers still poll
//! in case a notification is lost.

mod admin;
mod audit;
mod data;
#[cfg(feature = "vectors")]
mod vectors;
mod workflow;

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
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::common::{
    self, CLAIM_COLUMNS, Migration, SCHEDULE_COLUMNS, TASK_COLUMNS, claimed_task, from_ms, map_err,
    ms, now_ms, page_limit, paginate, schedule_row, task_record,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "workflows",
        sql: include_str!("../../migrations/postgres/0002_workflows.sql"),
    },
    Migration {
        version: 3,
        name: "leases",
        sql: include_str!("../../migrations/postgres/0003_leases.sql"),
    },
    Migration {
        version: 4,
        name: "audit",
        sql: include_str!("../../migrations/postgres/0004_audit.sql"),
    },
    Migration {
        version: 5,
        name: "vectors",
        sql: include_str!("../../migrations/postgres/0005_vectors.sql"),
    },
];

/// Advisory lock key held while migrating, so servers starting together migrate once.
const MIGRATION_LOCK: i64 = 0x666c_6f77_626f_7401;

/// Options for [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connection URL.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Schema for FlowBot's tables (created if missing); `None` uses the server's default
    /// search path (usually `public`).
    pub schema: Option<String>,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// `application_name` of the connections (shown in `pg_stat_activity`).
    pub application_name: String,
}

impl PostgresOptions {
    /// Defaults for `url`: 10 connections, default schema.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            max_connections: 10,
            schema: None,
            acquire_timeout: Duration::from_secs(10),
            application_name: "flowbot".into(),
        }
    }

    /// Use (and create) `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Name the connections in `pg_stat_activity`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    channel: String,
    bus_channel: String,
    bus: tokio::sync::broadcast::Sender<BusMessage>,
    wake: Arc<watch::Sender<u64>>,
    stop_listener: CancellationToken,
    /// Where worker pools keep their liveness locks (see [`liveness_dir`]).
    liveness_dir: std::path::PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_listener.cancel();
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl PostgresStore {
    /// Connect to `url` with default options and apply migrations.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(PostgresOptions::new(url)).await
    }

    /// Connect with explicit options and apply migrations.
    pub async fn connect_with(options: PostgresOptions) -> Result<Self, Error> {
        let mut connect: PgConnectOptions = options.url.parse().map_err(|e| {
            Error::InvalidUrl(format!("'{}': {e}", crate::redact_url(&options.url)))
        })?;
        connect = connect.application_name(&options.application_name);
        let database = format!(
            "{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(Error::InvalidUrl(format!(
                    "schema '{schema}' must be 1-48 characters of a-z, 0-9 and _, not starting with a digit"
                )));
            }
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| Error::Open(format!("{}: {e}", crate::redact_url(&options.url))))?;
        if let Some(schema) = &options.schema {
            let sql = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .map_err(|e| Error::Open(format!("creating schema '{schema}': {e}")))?;
        }
        migrate(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(|e| Error::Open(e.to_string()))?;
        let liveness_dir = liveness_dir(&database, &schema);
        let channel = format!("flowbot_tasks_{schema}");
        let bus_channel = format!("flowbot_bus_{schema}");
        let (wake, _) = watch::channel(0);
        let wake = Arc::new(wake);
        let (bus, _) = tokio::sync::broadcast::channel(1024);
        let stop_listener = CancellationToken::new();
        let channels = Channels {
            tasks: channel.clone(),
            bus: bus_channel.clone(),
        };
        tokio::spawn(listen(
            pool.clone(),
            channels,
            wake.clone(),
            bus.clone(),
            stop_listener.clone(),
        ));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                channel,
                bus_channel,
                bus,
                wake,
                stop_listener,
                liveness_dir,
            }),
        })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    fn p(&self) -> &PgPool {
        &self.inner.pool
    }

    fn wake_local(&self) {
        self.inner.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wake workers here and on every other server.
    async fn notify(&self) -> Result<(), StoreError> {
        self.wake_local();
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.inner.channel)
            .execute(self.p())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.p().begin().await.map_err(map_err)
    }
}

struct Channels {
    tasks: String,
    bus: String,
}

async fn listen(
    pool: PgPool,
    channels: Channels,
    wake: Arc<watch::Sender<u64>>,
    bus: tokio::sync::broadcast::Sender<BusMessage>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let session = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([channels.tasks.as_str(), channels.bus.as_str()])
                .await?;
            // Anything enqueued while we were not listening: wake the workers once.
            wake.send_modify(|v| *v = v.wrapping_add(1));
            loop {
                let n = listener.recv().await?;
                failures = 0;
                if n.channel() != channels.bus {
                    wake.send_modify(|v| *v = v.wrapping_add(1));
                    continue;
                }
                match serde_json::from_str::<Value>(n.payload()) {
                    Ok(v) => {
                        let topic = v["t"].as_str().unwrap_or_default();
                        let payload = v["p"].as_str().unwrap_or_default();
                        // No subscriber in this process is not an error.
                        let _ = bus.send(BusMessage {
                            topic: topic.into(),
                            payload: payload.into(),
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed bus notification"),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            res = session => if let Err(e) = res {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "LISTEN connection failed; workers poll until it is back");
            },
        }
        let delay = Duration::from_millis((250u64 << failures.min(5)).min(5_000));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn migrate(pool: &PgPool) -> Result<(), Error> {
    let err = |version: i64, e: sqlx::Error| Error::Migration {
        version,
        detail: e.to_string(),
    };
    let mut tx = pool.begin().await.map_err(|e| err(0, e))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(|e| err(0, e))?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flowbot_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| err(0, e))?;
    for m in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM flowbot_migrations WHERE version = $1")
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
                "INSERT INTO flowbot_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| err(m.version, e))?;
        }
    }
    tx.commit().await.map_err(|e| err(0, e))?;
    Ok(())
}

const INSERT_TASK: &str = "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, dedupe_key, concurrency_key, created_at) \
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (dedupe_key) WHERE state IN ('queued', 'running') DO NOTHING RETURNING id";

/// `sql` with a task's columns bound as `$1`–`$10` in [`INSERT_TASK`]'s order (statements
/// that insert a task and more bind the rest after).
fn task_query<'q>(
    sql: &'static str,
    task: &'q NewTask,
    now: i64,
) -> Result<sqlx::query::QueryScalar<'q, Postgres, i64, sqlx::postgres::PgArguments>, StoreError> {
    Ok(sqlx::query_scalar(sql)
        .bind(&task.queue)
        .bind(&task.kind)
        .bind(&task.payload)
        .bind(i64::from(task.priority))
        .bind(task.run_at.map(ms).unwrap_or(now))
        .bind(task.retry.map(|r| i64::from(r.max_attempts)))
        .bind(common::retry_json(task.retry.as_ref())?)
        .bind(&task.dedupe_key)
        .bind(&task.concurrency_key)
        .bind(now))
}

async fn insert_task<'e, E>(ex: E, task: &NewTask, now: i64) -> Result<Option<i64>, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    task_query(INSERT_TASK, task, now)?
        .fetch_optional(ex)
        .await
        .map_err(map_err)
}

async fn existing_dedupe<'e, E>(ex: E, key: Option<&str>) -> Result<Enqueued, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let id: i64 = sqlx::query_scalar(
        "SELECT id FROM flowbot_tasks WHERE dedupe_key = $1 AND state IN ('queued', 'running')",
    )
    .bind(key)
    .fetch_one(ex)
    .await
    .map_err(map_err)?;
    Ok(Enqueued::Duplicate(TaskId(id)))
}

/// The statement returning running tasks that match `$cond` to the queue (or to the dead
/// letters when out of attempts), recording an error each and releasing their concurrency
/// keys; returns how many. `$1` the default most attempts, `$2` now, `$3` the error, and
/// whatever `$cond` binds after them.
macro_rules! recover_sql {
    ($cond:literal) => {
        concat!(
            "WITH r AS ( \
               UPDATE flowbot_tasks SET \
                 state = CASE WHEN attempts >= COALESCE(max_attempts, $1) THEN 'dead' ELSE 'queued' END, \
                 finished_at = CASE WHEN attempts >= COALESCE(max_attempts, $1) THEN $2 END, \
                 run_at = $2, lease_owner = NULL, lease_until = NULL, last_error = $3 \
               WHERE state = 'running' AND ",
            $cond,
            " RETURNING id, attempts, state \
             ), e AS ( \
               INSERT INTO flowbot_task_errors (task_id, attempt, error, at) SELECT id, attempts, $3, $2 FROM r \
             ), d AS ( \
               INSERT INTO flowbot_dead_letters (task_id, reason, died_at) SELECT id, $3, $2 FROM r WHERE state = 'dead' \
               ON CONFLICT (task_id) DO UPDATE SET reason = EXCLUDED.reason, died_at = EXCLUDED.died_at \
             ), k AS (DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        )
    };
}

/// Where worker pools of `database` (`host:port/name`), in `schema`, on this host keep their
/// liveness locks: a directory under the system's temporary directory named by a hash of the
/// server, database and schema (the same for every process and build).
fn liveness_dir(database: &str, schema: &str) -> std::path::PathBuf {
    let scope = format!("{database}/{schema}");
    // FNV-1a: stable across Rust versions, unlike the standard library's hasher.
    let hash = scope.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    std::env::temp_dir().join(format!("flowbot-workers-{hash:016x}"))
}

fn ids_of(ids: &[TaskId]) -> Vec<i64> {
    ids.iter().map(|i| i.0).collect()
}

#[async_trait]
impl TaskQueue for PostgresStore {
    async fn queued_after(&self, concurrency_key: &str, after: TaskId) -> Result<bool, StoreError> {
        let row: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM flowbot_tasks WHERE concurrency_key = $1 AND id > $2 AND state = 'queued' LIMIT 1",
        )
        .bind(concurrency_key)
        .bind(after.0)
        .fetch_optional(self.p())
        .await
        .map_err(map_err)?;
        Ok(row.is_some())
    }

    async fn enqueue(&self, task: &NewTask) -> Result<Enqueued, StoreError> {
        let inserted = insert_task(self.p(), task, now_ms()).await?;
        self.wake_local();
        match inserted {
            Some(id) => Ok(Enqueued::New(TaskId(id))),
            // The live task may finish between the two statements; then enqueue again.
            None => match existing_dedupe(self.p(), task.dedupe_key.as_deref()).await {
                Ok(dup) => Ok(dup),
                Err(_) => match insert_task(self.p(), task, now_ms()).await? {
                    Some(id) => Ok(Enqueued::New(TaskId(id))),
                    None => existing_dedupe(self.p(), task.dedupe_key.as_deref()).await,
                },
            },
        }
    }

    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let out = if tasks.iter().all(|t| t.dedupe_key.is_none()) {
            // One statement for the whole batch; identity values follow the input order.
            let mut retry = Vec::with_capacity(tasks.len());
            for t in tasks {
                retry.push(common::retry_json(t.retry.as_ref())?);
            }
            let mut ids: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, concurrency_key, created_at) \
                 SELECT q, k, p, 'queued', pr, ra, ma, r, ck, $10 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bigint[]) \
                   AS u(q, k, p, pr, ra, ma, r, ck, ord) ORDER BY ord RETURNING id",
            )
            .bind(tasks.iter().map(|t| t.queue.clone()).collect::<Vec<_>>())
            .bind(tasks.iter().map(|t| t.kind.clone()).collect::<Vec<_>>())
            .bind(tasks.iter().map(|t| t.payload.clone()).collect::<Vec<_>>())
            .bind(tasks.iter().map(|t| i64::from(t.priority)).collect::<Vec<_>>())
            .bind(tasks.iter().map(|t| t.run_at.map(ms).unwrap_or(now)).collect::<Vec<_>>())
            .bind(tasks.iter().map(|t| t.retry.map(|r| i64::from(r.max_attempts))).collect::<Vec<_>>())
            .bind(retry)
            .bind(tasks.iter().map(|t| t.concurrency_key.clone()).collect::<Vec<_>>())
            .bind((0..tasks.len() as i64).collect::<Vec<_>>())
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            ids.sort_unstable();
            ids.into_iter()
                .map(|id| Enqueued::New(TaskId(id)))
                .collect()
        } else {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(match insert_task(&mut *tx, t, now).await? {
                    Some(id) => Enqueued::New(TaskId(id)),
                    None => existing_dedupe(&mut *tx, t.dedupe_key.as_deref()).await?,
                });
            }
            out
        };
        tx.commit().await.map_err(map_err)?;
        self.wake_local();
        Ok(out)
    }

    /// A claim commits without waiting for the WAL flush: a claim lost to a database crash
    /// only puts the task back to `queued` (it runs again, as after any crash), and the
    /// task's completion, a synchronous commit, flushes the claim with it.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedTask>, StoreError> {
        let cols = CLAIM_COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH cand AS ( \
               SELECT id, concurrency_key, priority, run_at FROM flowbot_tasks c \
               WHERE state = 'queued' AND queue = $1 AND run_at <= $2 AND kind = ANY($3) \
                 AND (concurrency_key IS NULL OR ( \
                   NOT EXISTS (SELECT 1 FROM flowbot_task_keys k WHERE k.key = c.concurrency_key) \
                   AND NOT EXISTS (SELECT 1 FROM flowbot_tasks o WHERE o.concurrency_key = c.concurrency_key \
                                   AND o.state IN ('queued', 'running') AND o.id < c.id))) \
               ORDER BY priority, run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED \
             ), keyed AS ( \
               INSERT INTO flowbot_task_keys (key, task_id) \
               SELECT DISTINCT ON (concurrency_key) concurrency_key, id FROM cand WHERE concurrency_key IS NOT NULL \
               ORDER BY concurrency_key, id \
               ON CONFLICT (key) DO NOTHING RETURNING task_id \
             ), quick AS (SELECT set_config('synchronous_commit', 'off', true)) \
             UPDATE flowbot_tasks t SET state = 'running', attempts = t.attempts + 1, lease_owner = $5, lease_until = $6 \
             FROM (SELECT id FROM cand WHERE concurrency_key IS NULL UNION ALL SELECT task_id FROM keyed) c, quick \
             WHERE t.id = c.id RETURNING {cols}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(req.queue)
            .bind(now_ms())
            .bind(req.kinds)
            .bind(i64::from(req.limit))
            .bind(req.worker)
            .bind(common::lease_deadline(req.lease))
            .fetch_all(self.p())
            .await
            .map_err(map_err)?;
        let mut tasks = rows
            .iter()
            .map(|r| claimed_task!(r))
            .collect::<Result<Vec<_>, _>>()?;
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        ids: &[TaskId],
        lease: Duration,
    ) -> Result<Vec<TaskId>, StoreError> {
        let rows: Vec<i64> = sqlx::query_scalar(
            "UPDATE flowbot_tasks SET lease_until = $1 WHERE id = ANY($2) AND state = 'running' AND lease_owner = $3 RETURNING id",
        )
        .bind(common::lease_deadline(lease))
        .bind(ids_of(ids))
        .bind(worker)
        .fetch_all(self.p())
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(TaskId).collect())
    }

    async fn complete(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (done, released): (i64, i64) = sqlx::query_as(
            "WITH u AS ( \
               UPDATE flowbot_tasks SET state = 'done', finished_at = $1, lease_owner = NULL, lease_until = NULL \
               WHERE id = ANY($2) AND state = 'running' AND lease_owner = $3 RETURNING id, concurrency_key \
             ), k AS ( \
               DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT id FROM u WHERE concurrency_key IS NOT NULL) RETURNING 1 \
             ) SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM k)",
        )
        .bind(now_ms())
        .bind(ids_of(ids))
        .bind(worker)
        .fetch_one(self.p())
        .await
        .map_err(map_err)?;
        if released > 0 {
            self.notify().await?;
        }
        Ok(u64::try_from(done).unwrap_or(0))
    }

    async fn fail(&self, worker: &str, f: &Failure) -> Result<FailOutcome, StoreError> {
        let state = if f.retry_at.is_some() {
            "queued"
        } else {
            "dead"
        };
        let n: i64 = sqlx::query_scalar(
            "WITH u AS ( \
               UPDATE flowbot_tasks SET state = $1::text, run_at = COALESCE($2::bigint, run_at), lease_owner = NULL, lease_until = NULL, \
                 last_error = $3::text, finished_at = CASE WHEN $1::text = 'dead' THEN $4::bigint END \
               WHERE id = $5 AND state = 'running' AND lease_owner = $6 RETURNING id \
             ), e AS ( \
               INSERT INTO flowbot_task_errors (task_id, attempt, error, at) SELECT id, $7, $3::text, $4::bigint FROM u \
             ), k AS ( \
               DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT id FROM u) \
             ), d AS ( \
               INSERT INTO flowbot_dead_letters (task_id, reason, died_at) SELECT id, $3::text, $4::bigint FROM u WHERE $1::text = 'dead' \
               ON CONFLICT (task_id) DO UPDATE SET reason = EXCLUDED.reason, died_at = EXCLUDED.died_at \
             ) SELECT count(*) FROM u",
        )
        .bind(state)
        .bind(f.retry_at.map(ms))
        .bind(&f.error)
        .bind(now_ms())
        .bind(f.id.0)
        .bind(worker)
        .bind(i64::from(f.attempt))
        .fetch_one(self.p())
        .await
        .map_err(map_err)?;
        if n == 0 {
            return Ok(FailOutcome::LeaseLost);
        }
        self.notify().await?;
        Ok(match f.retry_at {
            Some(at) => FailOutcome::Retrying(at),
            None => FailOutcome::DeadLettered,
        })
    }

    async fn release(&self, worker: &str, ids: &[TaskId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let n: i64 = sqlx::query_scalar(
            "WITH u AS ( \
               UPDATE flowbot_tasks SET state = 'queued', attempts = GREATEST(attempts - 1, 0), lease_owner = NULL, lease_until = NULL \
               WHERE id = ANY($1) AND state = 'running' AND lease_owner = $2 RETURNING id \
             ), k AS (DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT id FROM u)) \
             SELECT count(*) FROM u",
        )
        .bind(ids_of(ids))
        .bind(worker)
        .fetch_one(self.p())
        .await
        .map_err(map_err)?;
        self.notify().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(recover_sql!("lease_until < $2"))
            .bind(i64::from(default_max_attempts))
            .bind(ms(now))
            .bind(common::lease_expired_error())
            .fetch_one(self.p())
            .await
            .map_err(map_err)?;
        if n > 0 {
            self.notify().await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn recover_dead_workers(
        &self,
        workers: &[String],
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        if workers.is_empty() {
            return Ok(0);
        }
        let n: i64 = sqlx::query_scalar(recover_sql!("lease_owner = ANY($4)"))
            .bind(i64::from(default_max_attempts))
            .bind(now_ms())
            .bind(common::worker_ended_error())
            .bind(workers)
            .fetch_one(self.p())
            .await
            .map_err(map_err)?;
        if n > 0 {
            self.notify().await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn liveness_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.inner.liveness_dir.clone())
    }

    fn wake_signal(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}

#[async_trait]
impl Bus for PostgresStore {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        crate::check_bus_payload(payload)?;
        let envelope = serde_json::json!({ "t": topic, "p": payload }).to_string();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.inner.bus_channel)
            .bind(envelope)
            .execute(self.p())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusMessage> {
        self.inner.bus.subscribe()
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.p())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
