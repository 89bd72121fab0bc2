//! MemoryStore's workflow tables: definitions (versioned), runs with their node rows, and the
//! steps that move a run forward together with the tasks they enqueue.
//!
//! A step runs under the lock of the task queue's tables, so steps of a run (and of every
//! other run) are serialised and the tasks a step enqueues appear with it. Whatever can fail
//! (a plan that makes no sense, a task that cannot be built) is checked before anything
//! changes, so a step that fails leaves everything as it was, as a rolled-back transaction
//! does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use flowbot_core::StoreError;
use flowbot_core::task::{NewTask, TaskId, TaskState};
use flowbot_core::workflow::{
    Claim, NodeRecord, NodeStatus, Plan, RunRecord, RunStatus, StartNode, WorkflowRecord,
};

use super::{Queue, fetch};
use crate::common::{self, from_ms, page_limit, paginate};
use crate::workflow::{self as wf, json_text};

/// One stored version of a definition.
#[derive(Debug)]
struct Version {
    version: i64,
    /// The definition's JSON text (an unchanged definition is the same text).
    definition: String,
    created_at: i64,
    deleted: bool,
}

/// A run and its node rows, in the order they were queued.
#[derive(Debug)]
pub(super) struct RunEntry {
    pub(super) record: RunRecord,
    pub(super) nodes: Vec<NodeRecord>,
}

/// (created_at in milliseconds, run id): the order runs are listed in.
type RunKey = (i64, String);

/// Definitions and runs.
#[derive(Debug, Default)]
pub(super) struct Workflows {
    /// Each name's versions, oldest first.
    definitions: BTreeMap<String, Vec<Version>>,
    pub(super) runs: HashMap<String, RunEntry>,
    /// Every run, oldest first.
    pub(super) order: BTreeSet<RunKey>,
    /// Each workflow's runs, oldest first.
    pub(super) by_workflow: HashMap<String, BTreeSet<RunKey>>,
}

fn record_of(name: &str, v: &Version) -> Result<WorkflowRecord, StoreError> {
    wf::workflow_of((
        name.to_owned(),
        v.version,
        v.definition.clone(),
        v.created_at,
    ))
}

/// A node row, queued now.
pub(super) fn new_node(run: &str, node: &str, status: NodeStatus, now: i64) -> NodeRecord {
    NodeRecord {
        run_id: run.to_owned(),
        node: node.to_owned(),
        status,
        attempt: 0,
        input: None,
        output: None,
        error: None,
        queued_at: from_ms(now),
        started_at: None,
        finished_at: None,
    }
}

impl Workflows {
    /// Store `definition` under `name`: see `WorkflowStore::put_workflow`.
    pub(super) fn put(
        &mut self,
        name: &str,
        definition: &serde_json::Value,
        now: i64,
    ) -> Result<(u32, bool), StoreError> {
        let text = json_text(definition)?;
        let versions = self.definitions.entry(name.to_owned()).or_default();
        let latest = versions
            .last()
            .map(|v| (v.version, v.definition.clone(), v.deleted));
        if let Some(version) = wf::unchanged_version(latest.as_ref(), &text) {
            return Ok((version, false));
        }
        let version = wf::next_version(latest.as_ref())?;
        versions.push(Version {
            version,
            definition: text,
            created_at: now,
            deleted: false,
        });
        Ok((wf::version_of(version), true))
    }

    /// A version of a workflow, or its latest version not deleted.
    pub(super) fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        let versions = self.definitions.get(name).map(Vec::as_slice);
        let found = match version {
            None => versions.and_then(|vs| vs.iter().rev().find(|v| !v.deleted)),
            Some(n) => versions.and_then(|vs| vs.iter().find(|v| v.version == i64::from(n))),
        };
        found.map(|v| record_of(name, v)).transpose()
    }

    /// The latest version of every workflow not deleted, by name, after the cursor's name.
    pub(super) fn list(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<flowbot_core::store::Page<WorkflowRecord>, StoreError> {
        let limit = page_limit(limit);
        let after = common::str_cursor(cursor)?;
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let items = self
            .definitions
            .range::<str, _>((start, Bound::Unbounded))
            .filter_map(|(name, vs)| {
                vs.iter()
                    .rev()
                    .find(|v| !v.deleted)
                    .map(|v| record_of(name, v))
            })
            .take(fetch(limit))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, wf::workflow_cursor_of))
    }

    /// Delete every version of `name` (explicit versions stay readable); false when none
    /// was live.
    pub(super) fn delete(&mut self, name: &str) -> bool {
        let Some(versions) = self.definitions.get_mut(name) else {
            return false;
        };
        let mut any = false;
        for v in versions.iter_mut().filter(|v| !v.deleted) {
            v.deleted = true;
            any = true;
        }
        any
    }

    /// True when a run of `workflow` limited to `max` concurrent runs must wait.
    pub(super) fn no_slot(&self, workflow: &str, max: Option<u32>) -> bool {
        let Some(max) = max else {
            return false;
        };
        let running = self.by_workflow.get(workflow).map_or(0, |runs| {
            runs.iter()
                .filter(|(_, id)| {
                    self.runs
                        .get(id)
                        .is_some_and(|r| r.record.status == RunStatus::Running)
                })
                .count()
        });
        running >= usize::try_from(max).unwrap_or(usize::MAX)
    }

    /// The oldest queued run of `workflow` other than `except`.
    fn oldest_queued(&self, workflow: &str, except: &str) -> Option<String> {
        self.by_workflow
            .get(workflow)?
            .iter()
            .map(|(_, id)| id)
            .find(|id| {
                id.as_str() != except
                    && self
                        .runs
                        .get(id.as_str())
                        .is_some_and(|r| r.record.status == RunStatus::Queued)
            })
            .cloned()
    }

    /// Add a run (a new id: the caller checked).
    pub(super) fn insert_run(&mut self, record: RunRecord) {
        let key = (record.created_at.timestamp_millis(), record.id.clone());
        self.order.insert(key.clone());
        self.by_workflow
            .entry(record.workflow.clone())
            .or_default()
            .insert(key);
        self.runs.insert(
            record.id.clone(),
            RunEntry {
                record,
                nodes: Vec::new(),
            },
        );
    }
}

impl Queue {
    /// Give each node a pending row and enqueue its task; a node that already has a row is
    /// left alone (and its task is not enqueued again). The node `claim` names starts running
    /// at attempt 1, its task leased to the claiming worker. Returns whether anything was
    /// enqueued, and the claimed task.
    pub(super) fn start_nodes(
        &mut self,
        run: &str,
        start: &[StartNode],
        claim: Option<&Claim>,
        now: i64,
    ) -> (bool, Option<TaskId>) {
        let mut enqueued = false;
        let mut claimed = None;
        let Some(entry) = self.workflows.runs.get_mut(run) else {
            return (false, None);
        };
        for s in start {
            if entry.nodes.iter().any(|n| n.node == s.node) {
                continue;
            }
            let taken = claim.filter(|c| c.node == s.node);
            let mut row = new_node(run, &s.node, NodeStatus::Pending, now);
            if taken.is_some() {
                row.status = NodeStatus::Running;
                row.attempt = 1;
                row.started_at = Some(from_ms(now));
            }
            entry.nodes.push(row);
            let id = self.tasks.insert(&s.task, now).id();
            match taken {
                Some(c) => {
                    if self
                        .tasks
                        .get(id.0)
                        .is_some_and(|t| t.state == TaskState::Queued)
                    {
                        let until = common::lease_deadline(c.lease);
                        self.tasks.update(id.0, |t| {
                            t.state = TaskState::Running;
                            t.attempts = 1;
                            t.lease_owner = Some(c.worker.clone());
                            t.lease_until = Some(until);
                        });
                    }
                    claimed = Some(id);
                }
                None => enqueued = true,
            }
        }
        (enqueued, claimed)
    }

    /// The tasks every end of `run` enqueues: a start for the oldest queued run of its
    /// workflow when it held a slot, and a resume for its parent. Built before the step
    /// changes anything (building one may fail).
    pub(super) fn end_tasks(&self, run: &RunRecord) -> Result<Vec<NewTask>, StoreError> {
        let mut tasks = Vec::new();
        if run.max_concurrency.is_some()
            && let Some(next) = self.workflows.oldest_queued(&run.workflow, &run.id)
        {
            tasks.push(wf::start_task(&next)?);
        }
        if let Some(parent) = &run.parent {
            tasks.push(wf::resume_task(parent, &run.id)?);
        }
        Ok(tasks)
    }

    /// Apply what the engine planned after a node of `run` reached a final status (the plan
    /// checked and `end_tasks` built by the caller). Returns the run's status after the step,
    /// whether anything was enqueued, and the claimed task.
    pub(super) fn apply_plan(
        &mut self,
        run: &RunRecord,
        plan: &Plan,
        end_tasks: &[NewTask],
        now: i64,
    ) -> (RunStatus, bool, Option<TaskId>) {
        let (mut enqueued, claimed) =
            self.start_nodes(&run.id, &plan.start, plan.claim.as_ref(), now);
        let Some(entry) = self.workflows.runs.get_mut(&run.id) else {
            return (run.status, enqueued, claimed);
        };
        for node in &plan.skip {
            if entry.nodes.iter().any(|n| &n.node == node) {
                continue;
            }
            let mut row = new_node(&run.id, node, NodeStatus::Skipped, now);
            row.finished_at = Some(from_ms(now));
            entry.nodes.push(row);
        }
        let Some(end) = &plan.end else {
            return (run.status, enqueued, claimed);
        };
        entry.record.status = end.status;
        entry.record.output.clone_from(&end.output);
        entry.record.error.clone_from(&end.error);
        entry.record.finished_at = Some(from_ms(now));
        // A failed run leaves nothing in flight: branches still pending or running are
        // cancelled (their late results are stale).
        if end.status == RunStatus::Failed {
            cancel_unfinished(&mut entry.nodes, now);
        }
        for t in end_tasks {
            self.tasks.insert(t, now);
            enqueued = true;
        }
        (end.status, enqueued, claimed)
    }
}

/// Cancel the nodes still pending or running.
pub(super) fn cancel_unfinished(nodes: &mut [NodeRecord], now: i64) {
    for n in nodes.iter_mut().filter(|n| !n.status.is_final()) {
        n.status = NodeStatus::Cancelled;
        n.finished_at = Some(from_ms(now));
    }
}
