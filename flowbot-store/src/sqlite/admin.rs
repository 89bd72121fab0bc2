//! SqliteStore: task administration (listing, cancel, dead letters) and schedules.

use super::*;

fn record_rows(rows: &[SqliteRow]) -> Result<Vec<TaskRecord>, StoreError> {
    rows.iter().map(|r| task_record!(r)).collect()
}

#[async_trait]
impl TaskAdmin for SqliteStore {
    async fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM flowbot_tasks WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(self.r())
            .await
            .map_err(map_err)?;
        row.map(|r| task_record!(&r)).transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Page<TaskRecord>, StoreError> {
        let limit = page_limit(f.limit);
        let after = common::int_cursor(f.cursor.as_deref())?;
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM flowbot_tasks \
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR queue = ?3) AND (?4 IS NULL OR id < ?4) \
             ORDER BY id DESC LIMIT ?5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.state.map(|s| s.as_str()))
            .bind(f.kind.as_deref())
            .bind(f.queue.as_deref())
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.r())
            .await
            .map_err(map_err)?;
        Ok(paginate(record_rows(&rows)?, limit, common::record_of))
    }

    async fn cancel_task(&self, id: TaskId) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE flowbot_tasks SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'")
            .bind(now_ms())
            .bind(id.0)
            .execute(&mut *self.w().await?)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeadLetter>, StoreError> {
        let limit = page_limit(limit);
        let after = common::int_cursor(cursor)?;
        let cols = TASK_COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {cols}, d.reason, d.died_at FROM flowbot_dead_letters d JOIN flowbot_tasks t ON t.id = d.task_id \
             WHERE (?1 IS NULL OR d.task_id < ?1) ORDER BY d.task_id DESC LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.r())
            .await
            .map_err(map_err)?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in &rows {
            let task = task_record!(row)?;
            let errors: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT attempt, error, at FROM flowbot_task_errors WHERE task_id = ? ORDER BY seq",
            )
            .bind(task.id.0)
            .fetch_all(self.r())
            .await
            .map_err(map_err)?;
            letters.push(DeadLetter {
                reason: row.try_get(14).map_err(common::decode_err)?,
                died_at: from_ms(row.try_get(15).map_err(common::decode_err)?),
                errors: errors
                    .into_iter()
                    .map(|(a, e, at)| common::attempt_error(a, e, at))
                    .collect(),
                task,
            });
        }
        Ok(paginate(letters, limit, |d| Value::from(d.task.id.0)))
    }

    async fn requeue_dead(&self, id: TaskId) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM flowbot_dead_letters WHERE task_id = ?")
            .bind(id.0)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if n == 0 {
            tx.commit().await.map_err(map_err)?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE flowbot_tasks SET state = 'queued', attempts = 0, run_at = ?, finished_at = NULL WHERE id = ? AND state = 'dead'",
        )
        .bind(now_ms())
        .bind(id.0)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        self.wake();
        Ok(true)
    }

    async fn count_tasks(&self) -> Result<Vec<(TaskState, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM flowbot_tasks GROUP BY state")
                .fetch_all(self.r())
                .await
                .map_err(map_err)?;
        rows.into_iter()
            .map(|(s, n)| Ok((common::parse_state(&s)?, n)))
            .collect()
    }

    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM flowbot_task_errors WHERE task_id IN \
             (SELECT id FROM flowbot_tasks WHERE state IN ('done', 'cancelled') AND finished_at < ?)",
        )
        .bind(ms(before))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        let n = sqlx::query(
            "DELETE FROM flowbot_tasks WHERE state IN ('done', 'cancelled') AND finished_at < ?",
        )
        .bind(ms(before))
        .execute(&mut **tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn upsert_schedule(
        &self,
        d: &ScheduleDef,
        next_fire_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO flowbot_schedules (name, cron, timezone, queue, kind, payload, retry, misfire, next_fire_at, paused, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET \
               next_fire_at = CASE WHEN cron = excluded.cron AND timezone = excluded.timezone THEN next_fire_at ELSE excluded.next_fire_at END, \
               cron = excluded.cron, timezone = excluded.timezone, queue = excluded.queue, kind = excluded.kind, \
               payload = excluded.payload, retry = excluded.retry, misfire = excluded.misfire, updated_at = excluded.updated_at",
        )
        .bind(&d.name)
        .bind(&d.cron)
        .bind(&d.timezone)
        .bind(&d.queue)
        .bind(&d.kind)
        .bind(&d.payload)
        .bind(common::retry_json(d.retry.as_ref())?)
        .bind(d.misfire.as_str())
        .bind(ms(next_fire_at))
        .bind(now)
        .bind(now)
        .execute(&mut *self.w().await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM flowbot_schedules WHERE name = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(self.r())
            .await
            .map_err(map_err)?;
        row.map(|r| schedule_row!(&r)?.into_state()).transpose()
    }

    async fn list_schedules(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<ScheduleState>, StoreError> {
        let limit = page_limit(limit);
        let after = common::str_cursor(cursor)?;
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM flowbot_schedules WHERE (?1 IS NULL OR name > ?1) ORDER BY name LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit + 1)
            .fetch_all(self.r())
            .await
            .map_err(map_err)?;
        let states = rows
            .iter()
            .map(|r| schedule_row!(r)?.into_state())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(states, limit, |s| Value::from(s.def.name.clone())))
    }

    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE flowbot_schedules SET paused = ?, next_fire_at = CASE WHEN ? THEN next_fire_at ELSE ? END, updated_at = ? WHERE name = ?",
        )
        .bind(paused)
        .bind(paused)
        .bind(ms(next_fire_at))
        .bind(now_ms())
        .bind(name)
        .execute(&mut *self.w().await?)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM flowbot_schedules WHERE name = ?")
            .bind(name)
            .execute(&mut *self.w().await?)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduleState>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM flowbot_schedules WHERE paused = 0 AND next_fire_at <= ? ORDER BY next_fire_at LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ms(now))
            .bind(page_limit(limit))
            .fetch_all(&mut *self.w().await?)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| schedule_row!(r)?.into_state())
            .collect()
    }

    async fn fire_schedule(
        &self,
        name: &str,
        fire_at: DateTime<Utc>,
        next_fire_at: DateTime<Utc>,
        task: Option<&NewTask>,
    ) -> Result<FireOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut outcome = FireOutcome::Advanced;
        if let Some(task) = task {
            let inserted = sqlx::query(
                "INSERT INTO flowbot_schedule_fires (schedule, fire_at, fired_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(ms(fire_at))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            outcome = FireOutcome::AlreadyFired;
            if inserted == 1 {
                let id = insert_task(&mut tx, task, now).await?.id();
                sqlx::query("UPDATE flowbot_schedule_fires SET task_id = ? WHERE schedule = ? AND fire_at = ?")
                    .bind(id.0)
                    .bind(name)
                    .bind(ms(fire_at))
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?;
                outcome = FireOutcome::Fired;
            }
        }
        sqlx::query(
            "UPDATE flowbot_schedules SET next_fire_at = MAX(next_fire_at, ?), \
             last_fire_at = CASE WHEN ? THEN MAX(COALESCE(last_fire_at, 0), ?) ELSE last_fire_at END WHERE name = ?",
        )
        .bind(ms(next_fire_at))
        .bind(outcome == FireOutcome::Fired)
        .bind(ms(fire_at))
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        if outcome == FireOutcome::Fired {
            self.wake();
        }
        Ok(outcome)
    }
}
