//! SqliteStore's task queue: enqueues (one statement for a whole group), claims with
//! concurrency keys, acknowledgements, failures, releases and lease recovery.

use super::*;

pub(super) async fn insert_task(
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
pub(super) async fn insert_tasks<'a>(
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
pub(super) async fn complete_in(
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
