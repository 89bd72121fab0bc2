//! SqliteStore: workflow definitions, runs and node executions.
//!
//! Every step that changes a run is one `BEGIN IMMEDIATE` transaction on the single writer
//! connection, so steps of a run (and of every other run) are serialised; the tasks a step
//! enqueues are inserted in the same transaction.

use flowbot_core::workflow::{
    BeginOutcome, Claim, FinishOutcome, NewRun, NodeRecord, NodeResult, Plan, RunFilter, RunRecord,
    RunStatus, StartNode, WorkflowRecord, WorkflowStore,
};
use flowbot_core::workflow::{NodeTiming, RunTiming};

use super::*;
use crate::workflow::{
    self as wf, NodeRow, NodeTimingRow, RunRow, RunTimingRow, WorkflowRow, json_text, node_columns,
    opt_json_text, run_columns,
};

type Tx = Transaction<'static, Sqlite>;

async fn run_in(tx: &mut Tx, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let row: Option<RunRow> = sqlx::query_as(concat!(
        "SELECT ",
        run_columns!(),
        " FROM flowbot_workflow_runs WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    row.map(wf::run_of).transpose()
}

async fn nodes_in(tx: &mut Tx, id: &str) -> Result<Vec<NodeRecord>, StoreError> {
    let rows: Vec<NodeRow> = sqlx::query_as(concat!(
        "SELECT ",
        node_columns!(),
        " FROM flowbot_workflow_nodes WHERE run_id = ? ORDER BY seq"
    ))
    .bind(id)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_err)?;
    wf::nodes_of(rows)
}

async fn running_count(tx: &mut Tx, workflow: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM flowbot_workflow_runs WHERE workflow = ? AND status = 'running'",
    )
    .bind(workflow)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)
}

/// True when a run limited to `max` concurrent runs must wait.
async fn no_slot(tx: &mut Tx, workflow: &str, max: Option<u32>) -> Result<bool, StoreError> {
    match max {
        None => Ok(false),
        Some(max) => Ok(running_count(tx, workflow).await? >= i64::from(max)),
    }
}

/// Give each node a pending row and enqueue its task; a node that already has a row is left
/// alone (and its task is not enqueued again). Returns whether anything was enqueued.
async fn start_nodes(
    tx: &mut Tx,
    run: &str,
    start: &[StartNode],
    claim: Option<&Claim>,
    now: i64,
) -> Result<(bool, Option<TaskId>), StoreError> {
    let mut enqueued = false;
    let mut claimed = None;
    for s in start {
        let taken = claim.filter(|c| c.node == s.node);
        // A claimed node starts running at attempt 1, its task leased to the claiming worker.
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at, started_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run_id, node) DO NOTHING RETURNING seq",
        )
        .bind(run)
        .bind(&s.node)
        .bind(if taken.is_some() { "running" } else { "pending" })
        .bind(i64::from(taken.is_some()))
        .bind(now)
        .bind(taken.map(|_| now))
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        if inserted.is_none() {
            continue;
        }
        let id = insert_task(tx, &s.task, now).await?.id();
        match taken {
            Some(c) => {
                sqlx::query(
                    "UPDATE flowbot_tasks SET state = 'running', attempts = 1, lease_owner = ?, lease_until = ? \
                     WHERE id = ? AND state = 'queued'",
                )
                .bind(&c.worker)
                .bind(common::lease_deadline(c.lease))
                .bind(id.0)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
                claimed = Some(id);
            }
            None => enqueued = true,
        }
    }
    Ok((enqueued, claimed))
}

/// What every end of a run does: free its slot for the oldest queued run of the workflow and
/// wake its parent. Returns whether anything was enqueued.
async fn end_effects(tx: &mut Tx, run: &RunRecord, now: i64) -> Result<bool, StoreError> {
    let mut enqueued = false;
    if run.max_concurrency.is_some() {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT id FROM flowbot_workflow_runs WHERE workflow = ? AND status = 'queued' \
             ORDER BY created_at, id LIMIT 1",
        )
        .bind(&run.workflow)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        if let Some(next) = next {
            insert_task(tx, &wf::start_task(&next)?, now).await?;
            enqueued = true;
        }
    }
    if let Some(parent) = &run.parent {
        insert_task(tx, &wf::resume_task(parent, &run.id)?, now).await?;
        enqueued = true;
    }
    Ok(enqueued)
}

/// Apply what the engine planned after a node reached a final status. Returns the run's
/// status after the step and whether anything was enqueued.
async fn apply_plan(
    tx: &mut Tx,
    run: &RunRecord,
    plan: &Plan,
    now: i64,
) -> Result<(RunStatus, bool, Option<TaskId>), StoreError> {
    if let Some(end) = &plan.end {
        wf::check_end(end)?;
    }
    let (mut enqueued, claimed) =
        start_nodes(tx, &run.id, &plan.start, plan.claim.as_ref(), now).await?;
    for node in &plan.skip {
        sqlx::query(
            "INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at, finished_at) \
             VALUES (?1, ?2, 'skipped', 0, ?3, ?3) ON CONFLICT (run_id, node) DO NOTHING",
        )
        .bind(&run.id)
        .bind(node)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    let Some(end) = &plan.end else {
        return Ok((run.status, enqueued, claimed));
    };
    sqlx::query(
        "UPDATE flowbot_workflow_runs SET status = ?, output = ?, error = ?, finished_at = ? WHERE id = ?",
    )
    .bind(end.status.as_str())
    .bind(opt_json_text(end.output.as_ref())?)
    .bind(&end.error)
    .bind(now)
    .bind(&run.id)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    // A failed run leaves nothing in flight: branches still pending or running are cancelled
    // (their late results are stale).
    if end.status == RunStatus::Failed {
        sqlx::query("UPDATE flowbot_workflow_nodes SET status = 'cancelled', finished_at = ?1 WHERE run_id = ?2 AND status IN ('pending', 'running')")
            .bind(now)
            .bind(&run.id)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    enqueued |= end_effects(tx, run, now).await?;
    Ok((end.status, enqueued, claimed))
}

impl SqliteStore {
    /// Commit `tx` and wake idle workers when it enqueued tasks.
    async fn commit_waking(&self, tx: WriteTx, enqueued: bool) -> Result<(), StoreError> {
        tx.commit().await.map_err(map_err)?;
        if enqueued {
            self.wake();
        }
        Ok(())
    }
}

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn put_workflow(
        &self,
        name: &str,
        definition: &Value,
    ) -> Result<(u32, bool), StoreError> {
        let text = json_text(definition)?;
        let mut tx = self.begin().await?;
        let latest: Option<(i64, String, bool)> = sqlx::query_as(
            "SELECT version, definition, deleted FROM flowbot_workflows WHERE name = ? \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        if let Some(version) = wf::unchanged_version(latest.as_ref(), &text) {
            tx.commit().await.map_err(map_err)?;
            return Ok((version, false));
        }
        let version = wf::next_version(latest.as_ref())?;
        sqlx::query(
            "INSERT INTO flowbot_workflows (name, version, definition, created_at, deleted) VALUES (?, ?, ?, ?, 0)",
        )
        .bind(name)
        .bind(version)
        .bind(text)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok((wf::version_of(version), true))
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        let row: Option<WorkflowRow> = match version {
            None => {
                sqlx::query_as(
                    "SELECT name, version, definition, created_at FROM flowbot_workflows \
                     WHERE name = ? AND deleted = 0 ORDER BY version DESC LIMIT 1",
                )
                .bind(name)
                .fetch_optional(self.r())
                .await
            }
            Some(v) => {
                sqlx::query_as(
                    "SELECT name, version, definition, created_at FROM flowbot_workflows \
                     WHERE name = ? AND version = ?",
                )
                .bind(name)
                .bind(i64::from(v))
                .fetch_optional(self.r())
                .await
            }
        }
        .map_err(map_err)?;
        row.map(wf::workflow_of).transpose()
    }

    async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowRecord>, StoreError> {
        let limit = page_limit(limit);
        let after = common::str_cursor(cursor)?;
        let rows: Vec<WorkflowRow> = sqlx::query_as(
            "SELECT name, version, definition, created_at FROM flowbot_workflows w \
             WHERE deleted = 0 AND (?1 IS NULL OR name > ?1) \
               AND version = (SELECT MAX(version) FROM flowbot_workflows l WHERE l.name = w.name AND l.deleted = 0) \
             ORDER BY name LIMIT ?2",
        )
        .bind(after)
        .bind(limit + 1)
        .fetch_all(self.r())
        .await
        .map_err(map_err)?;
        let items = rows
            .into_iter()
            .map(wf::workflow_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, wf::workflow_cursor_of))
    }

    async fn delete_workflow(&self, name: &str) -> Result<bool, StoreError> {
        let n =
            sqlx::query("UPDATE flowbot_workflows SET deleted = 1 WHERE name = ? AND deleted = 0")
                .bind(name)
                .execute(&mut *self.w().await?)
                .await
                .map_err(map_err)?
                .rows_affected();
        Ok(n > 0)
    }

    async fn create_run(&self, run: &NewRun, start: &[StartNode]) -> Result<RunRecord, StoreError> {
        let inputs = json_text(&run.inputs)?;
        let trigger = json_text(&run.trigger)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let queued = no_slot(&mut tx, &run.workflow, run.max_concurrency).await?;
        let status = if queued {
            RunStatus::Queued
        } else {
            RunStatus::Running
        };
        let started_at = (!queued).then_some(now);
        sqlx::query(
            "INSERT INTO flowbot_workflow_runs (id, workflow, version, status, inputs, trigger, parent_run, parent_node, \
             max_concurrency, created_at, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&run.id)
        .bind(&run.workflow)
        .bind(i64::from(run.version))
        .bind(status.as_str())
        .bind(inputs)
        .bind(trigger)
        .bind(run.parent.as_ref().map(|p| p.run.as_str()))
        .bind(run.parent.as_ref().map(|p| p.node.as_str()))
        .bind(run.max_concurrency.map(i64::from))
        .bind(now)
        .bind(started_at)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        let enqueued = if queued {
            false
        } else {
            start_nodes(&mut tx, &run.id, start, None, now).await?.0
        };
        self.commit_waking(tx, enqueued).await?;
        Ok(RunRecord {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            version: run.version,
            status,
            inputs: run.inputs.clone(),
            trigger: run.trigger.clone(),
            output: None,
            error: None,
            parent: run.parent.clone(),
            max_concurrency: run.max_concurrency,
            created_at: from_ms(now),
            started_at: started_at.map(from_ms),
            finished_at: None,
        })
    }

    async fn start_queued_run(
        &self,
        id: &str,
        start: &[StartNode],
    ) -> Result<Option<RunRecord>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let Some(mut run) = run_in(&mut tx, id).await? else {
            tx.commit().await.map_err(map_err)?;
            return Ok(None);
        };
        let mut enqueued = false;
        if run.status == RunStatus::Queued
            && !no_slot(&mut tx, &run.workflow, run.max_concurrency).await?
        {
            sqlx::query(
                "UPDATE flowbot_workflow_runs SET status = 'running', started_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            enqueued = start_nodes(&mut tx, id, start, None, now).await?.0;
            run.status = RunStatus::Running;
            run.started_at = Some(from_ms(now));
        }
        self.commit_waking(tx, enqueued).await?;
        Ok(Some(run))
    }

    async fn begin_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
    ) -> Result<BeginOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let record = match run_in(&mut tx, run).await? {
            Some(r) if r.status == RunStatus::Running => r,
            other => {
                tx.commit().await.map_err(map_err)?;
                return Ok(BeginOutcome::RunNotActive(other.map(|r| r.status)));
            }
        };
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM flowbot_workflow_nodes WHERE run_id = ? AND node = ?",
        )
        .bind(run)
        .bind(node)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        if let Some(status) = status {
            let status = wf::node_status(&status)?;
            if status.is_final() {
                tx.commit().await.map_err(map_err)?;
                return Ok(BeginOutcome::AlreadyFinished(status));
            }
        }
        sqlx::query(
            "INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at, started_at) \
             VALUES (?1, ?2, 'running', ?3, ?4, ?4) \
             ON CONFLICT (run_id, node) DO UPDATE SET status = 'running', attempt = excluded.attempt, \
             started_at = COALESCE(started_at, excluded.started_at)",
        )
        .bind(run)
        .bind(node)
        .bind(i64::from(attempt))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        let nodes = nodes_in(&mut tx, run).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(BeginOutcome::Proceed { run: record, nodes })
    }

    async fn finish_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        result: &NodeResult,
        plan: &(dyn for<'r> Fn(&'r RunRecord, &'r [NodeRecord]) -> Plan + Send + Sync),
    ) -> Result<FinishOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let record = match run_in(&mut tx, run).await? {
            Some(r) if r.status == RunStatus::Running => r,
            _ => {
                tx.commit().await.map_err(map_err)?;
                return Ok(FinishOutcome::Stale);
            }
        };
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT status, attempt FROM flowbot_workflow_nodes WHERE run_id = ? AND node = ?",
        )
        .bind(run)
        .bind(node)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        let fresh = match &row {
            Some((status, stored)) => !wf::stale_attempt(status, *stored, attempt)?,
            None => false,
        };
        if !fresh {
            tx.commit().await.map_err(map_err)?;
            return Ok(FinishOutcome::Stale);
        }
        let finished = match result {
            NodeResult::Completed { input, output } => {
                sqlx::query(
                    "UPDATE flowbot_workflow_nodes SET status = 'completed', input = ?, output = ?, finished_at = ? \
                     WHERE run_id = ? AND node = ?",
                )
                .bind(json_text(input)?)
                .bind(json_text(output)?)
                .bind(now)
                .bind(run)
                .bind(node)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
                true
            }
            NodeResult::Failed { input, error, last } => {
                sqlx::query(
                    "UPDATE flowbot_workflow_nodes SET status = CASE WHEN ?1 THEN 'failed' ELSE status END, \
                     input = ?2, error = ?3, finished_at = CASE WHEN ?1 THEN ?4 ELSE finished_at END \
                     WHERE run_id = ?5 AND node = ?6",
                )
                .bind(*last)
                .bind(opt_json_text(input.as_ref())?)
                .bind(error)
                .bind(now)
                .bind(run)
                .bind(node)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
                *last
            }
            NodeResult::Waiting { input } => {
                sqlx::query(
                    "UPDATE flowbot_workflow_nodes SET input = ? WHERE run_id = ? AND node = ?",
                )
                .bind(json_text(input)?)
                .bind(run)
                .bind(node)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
                false
            }
        };
        if !finished {
            tx.commit().await.map_err(map_err)?;
            return Ok(FinishOutcome::Recorded {
                run_status: record.status,
                claimed: None,
            });
        }
        let nodes = nodes_in(&mut tx, run).await?;
        let plan = plan(&record, &nodes);
        let (run_status, enqueued, claimed) = apply_plan(&mut tx, &record, &plan, now).await?;
        self.commit_waking(tx, enqueued).await?;
        Ok(FinishOutcome::Recorded {
            run_status,
            claimed,
        })
    }

    async fn cancel_run(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let run = match run_in(&mut tx, id).await? {
            Some(r) if !r.status.is_final() => r,
            other => {
                tx.commit().await.map_err(map_err)?;
                return Ok(other.map(|r| r.status));
            }
        };
        sqlx::query(
            "UPDATE flowbot_workflow_runs SET status = 'cancelled', finished_at = ? WHERE id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "UPDATE flowbot_workflow_nodes SET status = 'cancelled', finished_at = ? \
             WHERE run_id = ? AND status IN ('pending', 'running')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        let enqueued = end_effects(&mut tx, &run, now).await?;
        self.commit_waking(tx, enqueued).await?;
        Ok(Some(RunStatus::Cancelled))
    }

    async fn retry_run(&self, id: &str, restart: &[StartNode]) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        match run_in(&mut tx, id).await? {
            Some(r) if r.status == RunStatus::Failed => {}
            _ => {
                tx.commit().await.map_err(map_err)?;
                return Ok(false);
            }
        }
        sqlx::query(
            "UPDATE flowbot_workflow_runs SET status = 'running', error = NULL, finished_at = NULL WHERE id = ?",
        )
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        for s in restart {
            sqlx::query(
                "INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at) VALUES (?, ?, 'pending', 0, ?) \
                 ON CONFLICT (run_id, node) DO UPDATE SET status = 'pending', error = NULL, finished_at = NULL",
            )
            .bind(id)
            .bind(&s.node)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            insert_task(&mut tx, &s.task, now).await?;
        }
        self.commit_waking(tx, !restart.is_empty()).await?;
        Ok(true)
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row: Option<RunRow> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM flowbot_workflow_runs WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.r())
        .await
        .map_err(map_err)?;
        row.map(wf::run_of).transpose()
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Page<RunRecord>, StoreError> {
        let limit = page_limit(f.limit);
        let (before_at, before_id) = wf::run_cursor(f.cursor.as_deref())?;
        let rows: Vec<RunRow> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM flowbot_workflow_runs \
             WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR status = ?2) \
               AND (?3 IS NULL OR (created_at, id) < (?3, ?4)) \
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        ))
        .bind(f.workflow.as_deref())
        .bind(f.status.map(RunStatus::as_str))
        .bind(before_at)
        .bind(before_id)
        .bind(limit + 1)
        .fetch_all(self.r())
        .await
        .map_err(map_err)?;
        let items = rows
            .into_iter()
            .map(wf::run_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, wf::run_cursor_of))
    }

    async fn run_nodes(&self, id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let rows: Vec<NodeRow> = sqlx::query_as(concat!(
            "SELECT ",
            node_columns!(),
            " FROM flowbot_workflow_nodes WHERE run_id = ? ORDER BY seq"
        ))
        .bind(id)
        .fetch_all(self.r())
        .await
        .map_err(map_err)?;
        wf::nodes_of(rows)
    }

    async fn run_timings(
        &self,
        workflow: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<(Vec<RunTiming>, Vec<NodeTiming>), StoreError> {
        // One read transaction, so the nodes belong to the runs read.
        let mut conn = self.r().begin().await.map_err(map_err)?;
        let runs: Vec<RunTimingRow> = sqlx::query_as(
            "SELECT status, created_at, started_at, finished_at FROM flowbot_workflow_runs \
             WHERE workflow = ? AND created_at >= ? AND created_at < ? ORDER BY created_at, id",
        )
        .bind(workflow)
        .bind(ms(since))
        .bind(ms(until))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        let nodes: Vec<NodeTimingRow> = sqlx::query_as(
            "SELECT n.node, n.status, n.attempt, n.started_at, n.finished_at \
             FROM flowbot_workflow_runs r JOIN flowbot_workflow_nodes n ON n.run_id = r.id \
             WHERE r.workflow = ? AND r.created_at >= ? AND r.created_at < ? ORDER BY r.created_at, r.id, n.seq",
        )
        .bind(workflow)
        .bind(ms(since))
        .bind(ms(until))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        conn.commit().await.map_err(map_err)?;
        Ok((
            runs.into_iter()
                .map(wf::run_timing_of)
                .collect::<Result<_, _>>()?,
            nodes
                .into_iter()
                .map(wf::node_timing_of)
                .collect::<Result<_, _>>()?,
        ))
    }
}
