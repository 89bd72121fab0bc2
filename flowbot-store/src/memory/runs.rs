//! MemoryStore: the `WorkflowStore` operations (definitions, runs, node steps, listings),
//! each one step under the task queue's lock (see `workflow`).

use std::collections::BTreeSet;
use std::ops::Bound;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowbot_core::StoreError;
use flowbot_core::store::Page;
use flowbot_core::workflow::{
    BeginOutcome, FinishOutcome, NewRun, NodeRecord, NodeResult, NodeStatus, NodeTiming, Plan,
    RunFilter, RunRecord, RunStatus, RunTiming, StartNode, WorkflowRecord, WorkflowStore,
};
use serde_json::Value;

use super::workflow::{cancel_unfinished, new_node};
use super::{MemoryStore, Queue, fetch};
use crate::common::{from_ms, ms, now_ms, page_limit, paginate};
use crate::workflow as wf;

impl Queue {
    /// See `WorkflowStore::finish_node`; also returns whether anything was enqueued.
    fn finish_node(
        &mut self,
        run: &str,
        node: &str,
        attempt: u32,
        result: &NodeResult,
        plan: &(dyn for<'r> Fn(&'r RunRecord, &'r [NodeRecord]) -> Plan + Send + Sync),
        now: i64,
    ) -> Result<(FinishOutcome, bool), StoreError> {
        let stale = Ok((FinishOutcome::Stale, false));
        let Some(entry) = self.workflows.runs.get(run) else {
            return stale;
        };
        if entry.record.status != RunStatus::Running {
            return stale;
        }
        let Some(pos) = entry.nodes.iter().position(|n| n.node == node) else {
            return stale;
        };
        let mut row = entry.nodes[pos].clone();
        if row.status != NodeStatus::Running || row.attempt != attempt {
            return stale;
        }
        let finished = match result {
            NodeResult::Completed { input, output } => {
                row.status = NodeStatus::Completed;
                row.input = Some(input.clone());
                row.output = Some(output.clone());
                row.finished_at = Some(from_ms(now));
                true
            }
            NodeResult::Failed { input, error, last } => {
                if *last {
                    row.status = NodeStatus::Failed;
                    row.finished_at = Some(from_ms(now));
                }
                row.input.clone_from(input);
                row.error = Some(error.clone());
                *last
            }
            NodeResult::Waiting { input } => {
                row.input = Some(input.clone());
                false
            }
        };
        let record = entry.record.clone();
        if !finished {
            if let Some(entry) = self.workflows.runs.get_mut(run) {
                entry.nodes[pos] = row;
            }
            return Ok((
                FinishOutcome::Recorded {
                    run_status: record.status,
                    claimed: None,
                },
                false,
            ));
        }
        // The plan sees the node finished; nothing changes until it is known to be sound.
        let mut nodes = entry.nodes.clone();
        nodes[pos] = row.clone();
        let plan = plan(&record, &nodes);
        let end_tasks = match &plan.end {
            Some(end) => {
                wf::check_end(end)?;
                self.end_tasks(&record)?
            }
            None => Vec::new(),
        };
        if let Some(entry) = self.workflows.runs.get_mut(run) {
            entry.nodes[pos] = row;
        }
        let (run_status, woke, claimed) = self.apply_plan(&record, &plan, &end_tasks, now);
        Ok((
            FinishOutcome::Recorded {
                run_status,
                claimed,
            },
            woke,
        ))
    }
}

#[async_trait]
impl WorkflowStore for MemoryStore {
    async fn put_workflow(
        &self,
        name: &str,
        definition: &Value,
    ) -> Result<(u32, bool), StoreError> {
        self.queue().workflows.put(name, definition, now_ms())
    }

    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        self.queue().workflows.get(name, version)
    }

    async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowRecord>, StoreError> {
        self.queue().workflows.list(cursor, limit)
    }

    async fn delete_workflow(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.queue().workflows.delete(name))
    }

    async fn create_run(&self, run: &NewRun, start: &[StartNode]) -> Result<RunRecord, StoreError> {
        let now = now_ms();
        let (record, woke) = {
            let mut q = self.queue();
            if q.workflows.runs.contains_key(&run.id) {
                return Err(StoreError::Conflict(format!(
                    "a run with id '{}' already exists",
                    run.id
                )));
            }
            let queued = q.workflows.no_slot(&run.workflow, run.max_concurrency);
            let record = RunRecord {
                id: run.id.clone(),
                workflow: run.workflow.clone(),
                version: run.version,
                status: if queued {
                    RunStatus::Queued
                } else {
                    RunStatus::Running
                },
                inputs: run.inputs.clone(),
                trigger: run.trigger.clone(),
                output: None,
                error: None,
                parent: run.parent.clone(),
                max_concurrency: run.max_concurrency,
                created_at: from_ms(now),
                started_at: (!queued).then(|| from_ms(now)),
                finished_at: None,
            };
            q.workflows.insert_run(record.clone());
            let woke = !queued && q.start_nodes(&run.id, start, None, now).0;
            (record, woke)
        };
        self.wake_if(woke);
        Ok(record)
    }

    async fn start_queued_run(
        &self,
        id: &str,
        start: &[StartNode],
    ) -> Result<Option<RunRecord>, StoreError> {
        let now = now_ms();
        let (record, woke) = {
            let mut q = self.queue();
            let Some(entry) = q.workflows.runs.get(id) else {
                return Ok(None);
            };
            let r = &entry.record;
            let promote = r.status == RunStatus::Queued
                && !q.workflows.no_slot(&r.workflow, r.max_concurrency);
            let mut woke = false;
            if promote {
                if let Some(entry) = q.workflows.runs.get_mut(id) {
                    entry.record.status = RunStatus::Running;
                    entry.record.started_at = Some(from_ms(now));
                }
                woke = q.start_nodes(id, start, None, now).0;
            }
            (q.workflows.runs.get(id).map(|e| e.record.clone()), woke)
        };
        self.wake_if(woke);
        Ok(record)
    }

    async fn begin_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
    ) -> Result<BeginOutcome, StoreError> {
        let now = from_ms(now_ms());
        let mut q = self.queue();
        let entry = match q.workflows.runs.get_mut(run) {
            Some(e) if e.record.status == RunStatus::Running => e,
            other => return Ok(BeginOutcome::RunNotActive(other.map(|e| e.record.status))),
        };
        match entry.nodes.iter_mut().find(|n| n.node == node) {
            Some(n) if n.status.is_final() => return Ok(BeginOutcome::AlreadyFinished(n.status)),
            Some(n) => {
                n.status = NodeStatus::Running;
                n.attempt = attempt;
                n.started_at = n.started_at.or(Some(now));
            }
            None => {
                let mut row = new_node(run, node, NodeStatus::Running, ms(now));
                row.attempt = attempt;
                row.started_at = Some(now);
                entry.nodes.push(row);
            }
        }
        Ok(BeginOutcome::Proceed {
            run: entry.record.clone(),
            nodes: entry.nodes.clone(),
        })
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
        let (outcome, woke) = self
            .queue()
            .finish_node(run, node, attempt, result, plan, now)?;
        self.wake_if(woke);
        Ok(outcome)
    }

    async fn cancel_run(&self, id: &str) -> Result<Option<RunStatus>, StoreError> {
        let now = now_ms();
        let woke = {
            let mut q = self.queue();
            let record = match q.workflows.runs.get(id) {
                Some(e) if !e.record.status.is_final() => e.record.clone(),
                other => return Ok(other.map(|e| e.record.status)),
            };
            let end_tasks = q.end_tasks(&record)?;
            if let Some(entry) = q.workflows.runs.get_mut(id) {
                entry.record.status = RunStatus::Cancelled;
                entry.record.finished_at = Some(from_ms(now));
                cancel_unfinished(&mut entry.nodes, now);
            }
            for t in &end_tasks {
                q.tasks.insert(t, now);
            }
            !end_tasks.is_empty()
        };
        self.wake_if(woke);
        Ok(Some(RunStatus::Cancelled))
    }

    async fn retry_run(&self, id: &str, restart: &[StartNode]) -> Result<bool, StoreError> {
        let now = now_ms();
        {
            let mut q = self.queue();
            let Some(entry) = q.workflows.runs.get_mut(id) else {
                return Ok(false);
            };
            if entry.record.status != RunStatus::Failed {
                return Ok(false);
            }
            entry.record.status = RunStatus::Running;
            entry.record.error = None;
            entry.record.finished_at = None;
            for s in restart {
                match entry.nodes.iter_mut().find(|n| n.node == s.node) {
                    // The attempt count, input and first start are kept.
                    Some(n) => {
                        n.status = NodeStatus::Pending;
                        n.error = None;
                        n.finished_at = None;
                    }
                    None => entry
                        .nodes
                        .push(new_node(id, &s.node, NodeStatus::Pending, now)),
                }
            }
            for s in restart {
                q.tasks.insert(&s.task, now);
            }
        }
        self.wake_if(!restart.is_empty());
        Ok(true)
    }

    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self
            .queue()
            .workflows
            .runs
            .get(id)
            .map(|e| e.record.clone()))
    }

    async fn list_runs(&self, f: &RunFilter) -> Result<Page<RunRecord>, StoreError> {
        let limit = page_limit(f.limit);
        let before = match wf::run_cursor(f.cursor.as_deref())? {
            (Some(at), Some(id)) => Bound::Excluded((at, id)),
            _ => Bound::Unbounded,
        };
        let q = self.queue();
        let w = &q.workflows;
        let empty = BTreeSet::new();
        let runs = match &f.workflow {
            Some(name) => w.by_workflow.get(name).unwrap_or(&empty),
            None => &w.order,
        };
        let items = runs
            .range((Bound::Unbounded, before))
            .rev()
            .filter_map(|(_, id)| w.runs.get(id))
            .filter(|e| f.status.is_none_or(|s| e.record.status == s))
            .take(fetch(limit))
            .map(|e| e.record.clone())
            .collect();
        Ok(paginate(items, limit, wf::run_cursor_of))
    }

    async fn run_nodes(&self, id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self
            .queue()
            .workflows
            .runs
            .get(id)
            .map(|e| e.nodes.clone())
            .unwrap_or_default())
    }

    async fn run_timings(
        &self,
        workflow: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<(Vec<RunTiming>, Vec<NodeTiming>), StoreError> {
        let (since, until) = (ms(since), ms(until));
        let q = self.queue();
        let w = &q.workflows;
        let mut runs = Vec::new();
        let mut nodes = Vec::new();
        if since >= until {
            return Ok((runs, nodes));
        }
        let Some(keys) = w.by_workflow.get(workflow) else {
            return Ok((runs, nodes));
        };
        for (_, id) in keys.range((since, String::new())..(until, String::new())) {
            let Some(e) = w.runs.get(id) else { continue };
            runs.push(RunTiming {
                status: e.record.status,
                created_at: e.record.created_at,
                started_at: e.record.started_at,
                finished_at: e.record.finished_at,
            });
            nodes.extend(e.nodes.iter().map(|n| NodeTiming {
                node: n.node.clone(),
                status: n.status,
                attempt: n.attempt,
                started_at: n.started_at,
                finished_at: n.finished_at,
            }));
        }
        Ok((runs, nodes))
    }
}
