//! SqliteStore's task queue: enqueues (multi-row inserts for a whole group), claims with
//! concurrency keys, acknowledgements (these on the writer thread's connection, see
//! `writes`), failures, releases and lease recovery.

use super::*;

/// Insert a task, or find the queued or running task with its dedupe key.
const INSERT_TASK: &str = "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, dedupe_key, concurrency_key, created_at) \
     VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (dedupe_key) WHERE state IN ('queued', 'running') DO NOTHING RETURNING id";

/// The queued or running task with a dedupe key.
const DUPLICATE_TASK: &str =
    "SELECT id FROM flowbot_tasks WHERE dedupe_key = ? AND state IN ('queued', 'running')";

/// Enqueue `task` in `tx` (for the writes that go through the sqlx pool: admin re-queues,
/// schedules, workflow steps).
pub(super) async fn insert_task(
    tx: &mut Transaction<'static, Sqlite>,
    task: &NewTask,
    now: i64,
) -> Result<Enqueued, StoreError> {
    let retry = common::retry_json(task.retry.as_ref())?;
    let id: Option<i64> = sqlx::query_scalar(INSERT_TASK)
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
    let existing: i64 = sqlx::query_scalar(DUPLICATE_TASK)
        .bind(&task.dedupe_key)
        .fetch_one(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(Enqueued::Duplicate(TaskId(existing)))
}

/// [`insert_task`] on the writer thread's connection.
pub(super) fn insert_one(
    db: &Connection,
    task: &NewTask,
    now: i64,
) -> Result<Enqueued, StoreError> {
    let retry = common::retry_json(task.retry.as_ref())?;
    let id: Option<i64> = db
        .prepare_cached(INSERT_TASK)
        .and_then(|mut s| {
            s.query_row(
                rusqlite::params![
                    task.queue,
                    task.kind,
                    task.payload,
                    i64::from(task.priority),
                    task.run_at.map(ms).unwrap_or(now),
                    task.retry.map(|r| i64::from(r.max_attempts)),
                    retry,
                    task.dedupe_key,
                    task.concurrency_key,
                    now
                ],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(map_lite)?;
    if let Some(id) = id {
        return Ok(Enqueued::New(TaskId(id)));
    }
    let existing: i64 = db
        .prepare_cached(DUPLICATE_TASK)
        .and_then(|mut s| s.query_row([&task.dedupe_key], |r| r.get(0)))
        .map_err(map_lite)?;
    Ok(Enqueued::Duplicate(TaskId(existing)))
}

/// Insert `tasks` in order: those without a dedupe key in multi-row inserts, the others one
/// by one (they need their own conflict handling). Results are in input order.
pub(super) fn insert_tasks(
    db: &Connection,
    tasks: &[NewTask],
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    let plain: Vec<&NewTask> = tasks.iter().filter(|t| t.dedupe_key.is_none()).collect();
    let mut plain = insert_plain(db, &plain, now)?.into_iter();
    tasks
        .iter()
        .map(|t| match t.dedupe_key {
            None => plain
                .next()
                .ok_or_else(|| StoreError::Corrupt("missing enqueue result".into())),
            Some(_) => insert_one(db, t, now),
        })
        .collect()
}

/// Most rows in one multi-row `VALUES` insert.
const VALUES_MAX: usize = 64;

/// Insert tasks without dedupe keys (the callers pass only those), [`VALUES_MAX`] rows a
/// statement. Each statement's rows get consecutive ids ending at its last insert rowid:
/// `flowbot_tasks.id` is `AUTOINCREMENT` and this connection holds the write lock for the
/// whole statement.
pub(super) fn insert_plain(
    db: &Connection,
    tasks: &[&NewTask],
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(VALUES_MAX) {
        let mut s = db
            .prepare_cached(TASK_VALUES.rows(chunk.len()))
            .map_err(map_lite)?;
        let mut i = 0;
        let mut bind = |v: &dyn rusqlite::ToSql| {
            i += 1;
            s.raw_bind_parameter(i, v)
        };
        for t in chunk {
            let retry = common::retry_json(t.retry.as_ref())?;
            bind(&t.queue)
                .and_then(|()| bind(&t.kind))
                .and_then(|()| bind(&t.payload))
                .and_then(|()| bind(&i64::from(t.priority)))
                .and_then(|()| bind(&t.run_at.map(ms).unwrap_or(now)))
                .and_then(|()| bind(&t.retry.map(|r| i64::from(r.max_attempts))))
                .and_then(|()| bind(&retry))
                .and_then(|()| bind(&t.concurrency_key))
                .and_then(|()| bind(&now))
                .map_err(map_lite)?;
        }
        let inserted = s.raw_execute().map_err(map_lite)?;
        if inserted != chunk.len() {
            return Err(StoreError::Corrupt(format!(
                "inserted {inserted} of {} tasks",
                chunk.len()
            )));
        }
        let last = db.last_insert_rowid();
        let first = last - i64::try_from(chunk.len()).unwrap_or(i64::MAX) + 1;
        out.extend((first..=last).map(|id| Enqueued::New(TaskId(id))));
    }
    Ok(out)
}

/// A multi-row `INSERT … VALUES (…), (…) …` statement for 1 to [`VALUES_MAX`] rows, each size
/// built once, so that prepared statements are cached, one per size.
struct ValuesSql {
    head: &'static str,
    row: &'static str,
    built: std::sync::OnceLock<Vec<String>>,
}

impl ValuesSql {
    /// `head VALUES row, row, …`.
    const fn new(head: &'static str, row: &'static str) -> Self {
        ValuesSql {
            head,
            row,
            built: std::sync::OnceLock::new(),
        }
    }

    /// The statement for `n` rows (clamped to 1..=[`VALUES_MAX`]).
    fn rows(&'static self, n: usize) -> &'static str {
        let all = self.built.get_or_init(|| {
            (1..=VALUES_MAX)
                .map(|n| format!("{} VALUES {}", self.head, vec![self.row; n].join(", ")))
                .collect()
        });
        &all[n.clamp(1, VALUES_MAX) - 1]
    }
}

static TASK_VALUES: ValuesSql = ValuesSql::new(
    "INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, concurrency_key, created_at)",
    "(?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
);

/// Mark tasks done; returns how many, and whether concurrency keys were released. A key is
/// released only if its task is now `done`, which leaves alone the key of a task this worker
/// lost and another worker claimed again.
pub(super) fn complete_in(
    db: &Connection,
    worker: &str,
    ids: &[TaskId],
    now: i64,
) -> Result<(u64, bool), StoreError> {
    let ids_json = task_id_json(ids);
    let n = db
        .prepare_cached(
            "UPDATE flowbot_tasks SET state = 'done', finished_at = ?, lease_owner = NULL, lease_until = NULL \
             WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?))",
        )
        .and_then(|mut s| s.execute(rusqlite::params![now, worker, ids_json]))
        .map_err(map_lite)?;
    if n == 0 {
        return Ok((0, false));
    }
    let released = db
        .prepare_cached(
            "DELETE FROM flowbot_task_keys WHERE task_id IN (SELECT value FROM json_each(?)) \
             AND (SELECT state FROM flowbot_tasks t WHERE t.id = task_id) = 'done'",
        )
        .and_then(|mut s| s.execute([&ids_json]))
        .map_err(map_lite)?;
    Ok((n as u64, released > 0))
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

/// Claim up to `order.limit` due tasks: the first queued task of each free concurrency key
/// and any task without one, in priority, due time and id order.
pub(super) fn claim_in(
    db: &Connection,
    order: &ClaimOrder,
    now: i64,
) -> Result<Vec<ClaimedTask>, StoreError> {
    let candidates: Vec<(i64, Option<String>)> = db
        .prepare_cached(
            "SELECT id, concurrency_key FROM flowbot_tasks t \
             WHERE state = 'queued' AND queue = ? AND run_at <= ? AND kind IN (SELECT value FROM json_each(?)) \
               AND (concurrency_key IS NULL OR ( \
                 NOT EXISTS (SELECT 1 FROM flowbot_task_keys k WHERE k.key = t.concurrency_key) \
                 AND NOT EXISTS (SELECT 1 FROM flowbot_tasks o WHERE o.concurrency_key = t.concurrency_key \
                                 AND o.state IN ('queued', 'running') AND o.id < t.id))) \
             ORDER BY priority, run_at, id LIMIT ?",
        )
        .and_then(|mut s| {
            s.query_map(
                rusqlite::params![order.queue, now, order.kinds, i64::from(order.limit)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect()
        })
        .map_err(map_lite)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut key = db
        .prepare_cached("INSERT INTO flowbot_task_keys (key, task_id) VALUES (?, ?)")
        .map_err(map_lite)?;
    let mut claim = db
        .prepare_cached(
            "UPDATE flowbot_tasks SET state = 'running', attempts = attempts + 1, lease_owner = ?, lease_until = ? \
             WHERE id = ? AND state = 'queued' \
             RETURNING id, queue, kind, payload, attempts, retry, dedupe_key, concurrency_key, created_at, run_at",
        )
        .map_err(map_lite)?;
    let until = common::lease_deadline(order.lease);
    let mut keys = std::collections::HashSet::new();
    let mut claimed = Vec::with_capacity(candidates.len());
    for (id, k) in candidates {
        if let Some(k) = k {
            // Only the first task of a key in this batch may run; the rest wait their turn.
            if keys.contains(&k) {
                continue;
            }
            key.execute(rusqlite::params![k, id]).map_err(map_lite)?;
            keys.insert(k);
        }
        let row = claim
            .query_row(rusqlite::params![order.worker, until, id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                ))
            })
            .map_err(map_lite)?;
        let (id, queue, kind, payload, attempts, retry, dedupe_key, concurrency_key, created, run) =
            row;
        claimed.push(ClaimedTask {
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
        });
    }
    Ok(claimed)
}

/// The statement returning running tasks that match `$cond` to the queue (or to the dead
/// letters when out of attempts): `?1` the default most attempts, `?2` now, `?3` the error,
/// and whatever `$cond` binds after them.
macro_rules! recover_sql {
    ($cond:literal) => {
        concat!(
            "UPDATE flowbot_tasks SET \
               state = CASE WHEN attempts >= COALESCE(max_attempts, ?1) THEN 'dead' ELSE 'queued' END, \
               finished_at = CASE WHEN attempts >= COALESCE(max_attempts, ?1) THEN ?2 END, \
               run_at = ?2, lease_owner = NULL, lease_until = NULL, last_error = ?3 \
             WHERE state = 'running' AND ",
            $cond,
            " RETURNING id, attempts, state"
        )
    };
}

/// `<database file>.workers`, absolute, where worker pools of this database keep their
/// liveness locks; none for an in-memory database.
pub(super) fn liveness_dir(path: &Path) -> Option<PathBuf> {
    let shown = path.to_str().unwrap_or_default();
    if path.as_os_str().is_empty() || shown.starts_with(':') || shown.starts_with("file:") {
        return None;
    }
    let mut dir = std::path::absolute(path).ok()?.into_os_string();
    dir.push(".workers");
    Some(PathBuf::from(dir))
}

impl SqliteStore {
    /// Run a [`recover_sql!`] statement and record what it recovered: an error history entry
    /// each, dead letters, and the concurrency keys released.
    async fn recover(
        &self,
        sql: &'static str,
        now: i64,
        default_max_attempts: u32,
        error: &'static str,
        owners: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut query = sqlx::query_as(sql)
            .bind(i64::from(default_max_attempts))
            .bind(now)
            .bind(error);
        if let Some(owners) = owners {
            query = query.bind(owners);
        }
        let rows: Vec<(i64, i64, String)> = query.fetch_all(&mut **tx).await.map_err(map_err)?;
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
            .bind(error)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            if state == "dead" {
                sqlx::query(
                    "INSERT INTO flowbot_dead_letters (task_id, reason, died_at) VALUES (?, ?, ?) \
                     ON CONFLICT (task_id) DO UPDATE SET reason = excluded.reason, died_at = excluded.died_at",
                )
                .bind(id)
                .bind(error)
                .bind(now)
                .execute(&mut **tx)
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
}

/// A writer-thread error as a [`StoreError`]: busy or locked is transient, a unique key taken
/// is a conflict, a value of the wrong type is a corrupt record.
pub(super) fn map_lite(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, message) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                StoreError::Unavailable(Box::new(e))
            }
            ErrorCode::ConstraintViolation
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                StoreError::Conflict(message.clone().unwrap_or_else(|| e.to_string()))
            }
            _ => StoreError::Backend(Box::new(e)),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Backend(Box::new(e)),
    }
}

#[async_trait]
impl TaskQueue for SqliteStore {
    async fn queued_after(&self, concurrency_key: &str, after: TaskId) -> Result<bool, StoreError> {
        let row: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM flowbot_tasks WHERE concurrency_key = ?1 AND id > ?2 AND state = 'queued' LIMIT 1",
        )
        .bind(concurrency_key)
        .bind(after.0)
        .fetch_optional(self.r())
        .await
        .map_err(map_err)?;
        Ok(row.is_some())
    }

    async fn enqueue(&self, task: &NewTask) -> Result<Enqueued, StoreError> {
        self.write(|done| Write::Enqueue(task.clone(), Origin::of_caller(), done))
            .await
    }

    async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|done| Write::Batch(tasks.to_vec(), Origin::of_caller(), done))
            .await
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedTask>, StoreError> {
        let order = ClaimOrder::of(req)?;
        self.write(|done| Write::Claim(order, done)).await
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
        .fetch_all(&mut *self.w().await?)
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
        .fetch_optional(&mut **tx)
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
        .execute(&mut **tx)
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
            .execute(&mut **tx)
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
        let released: Vec<i64> = sqlx::query_scalar(
            "UPDATE flowbot_tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), lease_owner = NULL, lease_until = NULL \
             WHERE state = 'running' AND lease_owner = ? AND id IN (SELECT value FROM json_each(?)) RETURNING id",
        )
        .bind(worker)
        .bind(&ids_json)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
        // Only the keys of the tasks released: a task whose lease this worker lost may run
        // under another worker now, which holds its key.
        let released: Vec<TaskId> = released.into_iter().map(TaskId).collect();
        release_keys(&mut tx, &task_id_json(&released)).await?;
        tx.commit().await.map_err(map_err)?;
        self.wake();
        Ok(released.len() as u64)
    }

    async fn recover_expired(
        &self,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let now = ms(now);
        // Every pool looks every second or so; a look that finds nothing takes no write lock.
        let expired: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM flowbot_tasks WHERE state = 'running' AND lease_until < ?)",
        )
        .bind(now)
        .fetch_one(self.r())
        .await
        .map_err(map_err)?;
        if !expired {
            return Ok(0);
        }
        self.recover(
            recover_sql!("lease_until < ?2"),
            now,
            default_max_attempts,
            common::lease_expired_error(),
            None,
        )
        .await
    }

    async fn recover_dead_workers(
        &self,
        workers: &[String],
        default_max_attempts: u32,
    ) -> Result<u64, StoreError> {
        if workers.is_empty() {
            return Ok(0);
        }
        let owners =
            serde_json::to_string(workers).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.recover(
            recover_sql!("lease_owner IN (SELECT value FROM json_each(?4))"),
            now_ms(),
            default_max_attempts,
            common::worker_ended_error(),
            Some(&owners),
        )
        .await
    }

    fn liveness_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.liveness_dir.clone()
    }

    fn wake_signal(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}
