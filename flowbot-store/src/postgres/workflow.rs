//! PostgresStore: workflow definitions, runs and node executions.
//!
//! Every step that changes a run is one transaction that first locks the run's row
//! (`SELECT … FOR UPDATE`), so steps of one run are serialised while runs proceed in
//! parallel; the tasks a step enqueues are inserted in the same transaction (the tasks
//! table's trigger notifies other processes at commit). Steps that count a workflow's
//! running runs (max concurrency) also take a transaction-scoped advisory lock on the
//! workflow's name, always after the run's row, so a run that ends and a run that is created
//! at the same time cannot miss each other.

use flowbot_core::workflow::{
    BeginOutcome, Claim, FinishOutcome, NewRun, NodeRecord, NodeResult, Plan, RunFilter, RunRecord,
    RunStatus, StartNode, WorkflowRecord, WorkflowStore,
};
use flowbot_core::workflow::{NodeStatus, NodeTiming, RunTiming};

use super::*;
use crate::workflow::{
    self as wf, NodeRow, NodeTimingRow, RunRow, RunTimingRow, WorkflowRow, json_text, node_columns,
    opt_json_text, run_columns,
};

type Tx = Transaction<'static, Postgres>;

/// Advisory lock class (first key) of the per-workflow lock taken while counting or freeing
/// slots; the second key is the workflow name's hash.
const SLOT_LOCK: i32 = 0x666c_6f77;
/// Advisory lock class of the per-name lock taken while storing a definition.
const DEFINITION_LOCK: i32 = 0x666c_6f78;

/// Lock the run's row for the rest of the transaction and read it.
async fn run_in(tx: &mut Tx, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let row: Option<RunRow> = sqlx::query_as(concat!(
        "SELECT ",
        run_columns!(),
        " FROM flowbot_workflow_runs WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    row.map(wf::run_of).transpose()
}

/// Hold a transaction-scoped advisory lock of `class` on `name`.
async fn lock_name(tx: &mut Tx, class: i32, name: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(class)
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn running_count(tx: &mut Tx, workflow: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM flowbot_workflow_runs WHERE workflow = $1 AND status = 'running'",
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
        Some(max) => {
            lock_name(tx, SLOT_LOCK, workflow).await?;
            Ok(running_count(tx, workflow).await? >= i64::from(max))
        }
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
        let task = &s.task;
        let taken = claim.filter(|c| c.node == s.node);
        // The pending row and its task in one statement; the task only when the row is new,
        // so a node is never started twice. A claimed node is inserted running, its task
        // leased to the claiming worker.
        let sql = if taken.is_some() {
            START_CLAIMED
        } else {
            START_NODE
        };
        let mut q = task_query(sql, task, now)?.bind(run).bind(&s.node);
        if let Some(c) = taken {
            q = q.bind(&c.worker).bind(common::lease_deadline(c.lease));
        }
        let id = q.fetch_optional(&mut **tx).await.map_err(map_err)?;
        match (id, taken) {
            (Some(id), Some(_)) => claimed = Some(TaskId(id)),
            (Some(_), None) => enqueued = true,
            (None, _) => {}
        }
    }
    Ok((enqueued, claimed))
}

/// [`START_NODE`] for a claimed node: the row running at attempt 1, the task running with
/// `$13` as its lease owner until `$14`.
const START_CLAIMED: &str = "WITH n AS ( \
       INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at, started_at) \
       VALUES ($11, $12, 'running', 1, $10, $10) ON CONFLICT (run_id, node) DO NOTHING RETURNING 1) \
     INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, dedupe_key, concurrency_key, created_at, attempts, lease_owner, lease_until) \
     SELECT $1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, $10, 1, $13, $14 FROM n \
     ON CONFLICT (dedupe_key) WHERE state IN ('queued', 'running') DO NOTHING RETURNING id";

/// [`INSERT_TASK`] behind the insert of the node's pending row: `$11` run, `$12` node.
const START_NODE: &str = "WITH n AS ( \
       INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at) \
       VALUES ($11, $12, 'pending', 0, $10) ON CONFLICT (run_id, node) DO NOTHING RETURNING 1) \
     INSERT INTO flowbot_tasks (queue, kind, payload, state, priority, run_at, max_attempts, retry, dedupe_key, concurrency_key, created_at) \
     SELECT $1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10 FROM n \
     ON CONFLICT (dedupe_key) WHERE state IN ('queued', 'running') DO NOTHING RETURNING id";

/// What every end of a run does: free its slot for the oldest queued run of the workflow and
/// wake its parent. Returns whether anything was enqueued.
async fn end_effects(tx: &mut Tx, run: &RunRecord, now: i64) -> Result<bool, StoreError> {
    let mut enqueued = false;
    if run.max_concurrency.is_some() {
        lock_name(tx, SLOT_LOCK, &run.workflow).await?;
        let next: Option<String> = sqlx::query_scalar(
            "SELECT id FROM flowbot_workflow_runs WHERE workflow = $1 AND status = 'queued' \
             ORDER BY created_at, id LIMIT 1",
        )
        .bind(&run.workflow)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
        if let Some(next) = next {
            insert_task(&mut **tx, &wf::start_task(&next)?, now).await?;
            enqueued = true;
        }
    }
    if let Some(parent) = &run.parent {
        insert_task(&mut **tx, &wf::resume_task(parent, &run.id)?, now).await?;
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
             VALUES ($1, $2, 'skipped', 0, $3, $3) ON CONFLICT (run_id, node) DO NOTHING",
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
        "UPDATE flowbot_workflow_runs SET status = $1, output = $2, error = $3, finished_at = $4 WHERE id = $5",
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
        sqlx::query("UPDATE flowbot_workflow_nodes SET status = 'cancelled', finished_at = $1 WHERE run_id = $2 AND status IN ('pending', 'running')")
            .bind(now)
            .bind(&run.id)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    enqueued |= end_effects(tx, run, now).await?;
    Ok((end.status, enqueued, claimed))
}

impl PostgresStore {
    /// Commit `tx` and wake idle workers when it enqueued tasks.
    async fn commit_waking(&self, tx: Tx, enqueued: bool) -> Result<(), StoreError> {
        tx.commit().await.map_err(map_err)?;
        if enqueued {
            self.wake_local();
        }
        Ok(())
    }
}

// Node steps (`begin_node`, `finish_node`) commit without waiting for the WAL flush
// (`synchronous_commit = off` for that transaction only). This loses nothing the queue
// promised: the node's task stays `running` until the worker completes it in a synchronous
// commit afterwards, and a synchronous commit flushes the WAL up to itself, earlier
// asynchronous commits included. If the database crashes before that, the node's step and
// the task's completion are lost together and the node runs again (at least once, as after
// any crash); its completion is still recorded once. It saves a disk flush per step.
#[async_trait]
impl WorkflowStore for PostgresStore {
    async fn put_workflow(
        &self,
        name: &str,
        definition: &Value,
    ) -> Result<(u32, bool), StoreError> {
        let text = json_text(definition)?;
        let mut tx = self.begin().await?;
        lock_name(&mut tx, DEFINITION_LOCK, name).await?;
        let latest: Option<(i64, String, bool)> = sqlx::query_as(
            "SELECT version, definition, deleted FROM flowbot_workflows WHERE name = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if let Some(version) = wf::unchanged_version(latest.as_ref(), &text) {
            tx.commit().await.map_err(map_err)?;
            return Ok((version, false));
        }
        let version = wf::next_version(latest.as_ref())?;
        sqlx::query(
            "INSERT INTO flowbot_workflows (name, version, definition, created_at, deleted) VALUES ($1, $2, $3, $4, FALSE)",
        )
        .bind(name)
        .bind(version)
        .bind(text)
        .bind(now_ms())
        .execute(&mut *tx)
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
                     WHERE name = $1 AND deleted = FALSE ORDER BY version DESC LIMIT 1",
                )
                .bind(name)
                .fetch_optional(self.p())
                .await
            }
            Some(v) => {
                sqlx::query_as(
                    "SELECT name, version, definition, created_at FROM flowbot_workflows \
                     WHERE name = $1 AND version = $2",
                )
                .bind(name)
                .bind(i64::from(v))
                .fetch_optional(self.p())
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
             WHERE deleted = FALSE AND ($1::text IS NULL OR name > $1) \
               AND version = (SELECT MAX(version) FROM flowbot_workflows l WHERE l.name = w.name AND l.deleted = FALSE) \
             ORDER BY name LIMIT $2",
        )
        .bind(after)
        .bind(limit + 1)
        .fetch_all(self.p())
        .await
        .map_err(map_err)?;
        let items = rows
            .into_iter()
            .map(wf::workflow_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, wf::workflow_cursor_of))
    }

    async fn delete_workflow(&self, name: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE flowbot_workflows SET deleted = TRUE WHERE name = $1 AND deleted = FALSE",
        )
        .bind(name)
        .execute(self.p())
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
             max_concurrency, created_at, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        .execute(&mut *tx)
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
                "UPDATE flowbot_workflow_runs SET status = 'running', started_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
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
        // One statement marks the node running when its run is running and the node has not
        // finished (a row updated under ON CONFLICT is re-checked against its latest version,
        // so a concurrent cancel or finish wins).
        // Its commit does not wait for the WAL flush: see `finish_node`.
        let begin = sqlx::query_scalar::<_, i64>(
            "WITH r AS (SELECT id FROM flowbot_workflow_runs WHERE id = $1 AND status = 'running'), \
             c AS (SELECT set_config('synchronous_commit', 'off', true)) \
             INSERT INTO flowbot_workflow_nodes AS n (run_id, node, status, attempt, queued_at, started_at) \
             SELECT $1, $2, 'running', $3, $4, $4 FROM r, c \
             ON CONFLICT (run_id, node) DO UPDATE SET status = 'running', attempt = EXCLUDED.attempt, \
             started_at = COALESCE(n.started_at, EXCLUDED.started_at) \
             WHERE n.status IN ('pending', 'running') RETURNING n.seq",
        )
        .bind(run)
        .bind(node)
        .bind(i64::from(attempt))
        .bind(now_ms())
        .fetch_optional(self.p());
        // The reads go in parallel with the update: they need none of its effects (the run's
        // status and the other nodes' outputs).
        let (began, record, nodes) = tokio::try_join!(
            async { begin.await.map_err(map_err) },
            self.get_run(run),
            self.run_nodes(run)
        )?;
        let record = match record {
            Some(r) if began.is_some() => r,
            Some(r) if r.status != RunStatus::Running => {
                return Ok(BeginOutcome::RunNotActive(Some(r.status)));
            }
            None => return Ok(BeginOutcome::RunNotActive(None)),
            Some(r) => {
                // Not begun while the run runs: the node has finished.
                return Ok(match nodes.iter().find(|n| n.node == node) {
                    Some(n) => BeginOutcome::AlreadyFinished(n.status),
                    None => BeginOutcome::RunNotActive(Some(r.status)),
                });
            }
        };
        // The reads ran beside the update: show this node as the update left it.
        let mut nodes = nodes;
        let now = flowbot_core::clock::now();
        match nodes.iter_mut().find(|n| n.node == node) {
            Some(n) => {
                n.status = NodeStatus::Running;
                n.attempt = attempt;
                n.started_at.get_or_insert(now);
            }
            None => nodes.push(NodeRecord {
                run_id: run.to_owned(),
                node: node.to_owned(),
                status: NodeStatus::Running,
                attempt,
                input: None,
                output: None,
                error: None,
                queued_at: now,
                started_at: Some(now),
                finished_at: None,
            }),
        }
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
        // Lock the run (steps of one run are serialised) and commit without waiting for the
        // WAL flush (see `ASYNC_COMMIT`), in one round trip.
        let row: Option<wf::RunRow> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM flowbot_workflow_runs, (SELECT set_config('synchronous_commit', 'off', true)) c \
             WHERE id = $1 FOR UPDATE OF flowbot_workflow_runs"
        ))
        .bind(run)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let record = match row.map(wf::run_of).transpose()? {
            Some(r) if r.status == RunStatus::Running => r,
            _ => {
                tx.commit().await.map_err(map_err)?;
                return Ok(FinishOutcome::Stale);
            }
        };
        // Each update applies only to the running attempt: anything else is stale.
        let (set, input, output, error, last) = match result {
            NodeResult::Completed { input, output } => (
                "status = 'completed', input = $1, output = $2, finished_at = $3",
                Some(json_text(input)?),
                Some(json_text(output)?),
                None,
                true,
            ),
            NodeResult::Failed { input, error, last } => (
                if *last {
                    "status = 'failed', input = $1, error = $4, finished_at = $3"
                } else {
                    "input = $1, error = $4"
                },
                opt_json_text(input.as_ref())?,
                None,
                Some(error.as_str()),
                *last,
            ),
            NodeResult::Waiting { input } => {
                ("input = $1", Some(json_text(input)?), None, None, false)
            }
        };
        // A finished node comes back with every other node of the run, for the plan.
        let sql = format!(
            "WITH u AS (UPDATE flowbot_workflow_nodes SET {set} \
             WHERE run_id = $5 AND node = $6 AND status = 'running' AND attempt = $7 \
             RETURNING {cols}) \
             SELECT {cols} FROM u UNION ALL \
             SELECT {cols} FROM flowbot_workflow_nodes WHERE $8 AND run_id = $5 AND node <> $6 \
             AND EXISTS (SELECT 1 FROM u)",
            cols = node_columns!(),
        );
        let rows: Vec<wf::NodeRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(input)
            .bind(output)
            .bind(now)
            .bind(error)
            .bind(run)
            .bind(node)
            .bind(i64::from(attempt))
            .bind(last)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        if rows.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(FinishOutcome::Stale);
        }
        if !last {
            tx.commit().await.map_err(map_err)?;
            return Ok(FinishOutcome::Recorded {
                run_status: record.status,
                claimed: None,
            });
        }
        let nodes = wf::nodes_of(rows)?;
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
            "UPDATE flowbot_workflow_runs SET status = 'cancelled', finished_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "UPDATE flowbot_workflow_nodes SET status = 'cancelled', finished_at = $1 \
             WHERE run_id = $2 AND status IN ('pending', 'running')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
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
            "UPDATE flowbot_workflow_runs SET status = 'running', error = NULL, finished_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for s in restart {
            sqlx::query(
                "INSERT INTO flowbot_workflow_nodes (run_id, node, status, attempt, queued_at) VALUES ($1, $2, 'pending', 0, $3) \
                 ON CONFLICT (run_id, node) DO UPDATE SET status = 'pending', error = NULL, finished_at = NULL",
            )
            .bind(id)
            .bind(&s.node)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            insert_task(&mut *tx, &s.task, now).await?;
        }
        self.commit_waking(tx, !restart.is_empty()).await?;
        Ok(true)
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row: Option<RunRow> = sqlx::query_as(concat!(
            "SELECT ",
            run_columns!(),
            " FROM flowbot_workflow_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.p())
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
             WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR status = $2) \
               AND ($3::bigint IS NULL OR (created_at, id) < ($3, $4::text)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        ))
        .bind(f.workflow.as_deref())
        .bind(f.status.map(RunStatus::as_str))
        .bind(before_at)
        .bind(before_id)
        .bind(limit + 1)
        .fetch_all(self.p())
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
            " FROM flowbot_workflow_nodes WHERE run_id = $1 ORDER BY seq"
        ))
        .bind(id)
        .fetch_all(self.p())
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
        let mut conn = self
            .p()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(map_err)?;
        let runs: Vec<RunTimingRow> = sqlx::query_as(
            "SELECT status, created_at, started_at, finished_at FROM flowbot_workflow_runs \
             WHERE workflow = $1 AND created_at >= $2 AND created_at < $3 ORDER BY created_at, id",
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
             WHERE r.workflow = $1 AND r.created_at >= $2 AND r.created_at < $3 ORDER BY r.created_at, r.id, n.seq",
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
