//! Workflow records shared by the backends: the columns they select, row decoding, cursors
//! and the tasks a run's end enqueues.

use flowbot_core::StoreError;
use flowbot_core::task::NewTask;
use flowbot_core::workflow::{
    NodeRecord, NodeStatus, NodeTiming, ParentRef, RunRecord, RunStatus, RunTiming,
    WORKFLOW_RESUME_TASK, WORKFLOW_START_TASK, WorkflowRecord,
};
use serde_json::Value;

use crate::common::{self, from_ms, parse_json, u32_of};

/// Columns of a run, in the order [`RunRow`] holds them.
macro_rules! run_columns {
    () => {
        "id, workflow, version, status, inputs, trigger, output, error, parent_run, parent_node, \
         max_concurrency, created_at, started_at, finished_at"
    };
}
pub(crate) use run_columns;

/// Columns of a node row, in the order [`NodeRow`] holds them.
macro_rules! node_columns {
    () => {
        "run_id, node, status, attempt, input, output, error, queued_at, started_at, finished_at"
    };
}
pub(crate) use node_columns;

/// A run as selected with [`run_columns!`].
pub(crate) type RunRow = (
    String,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// A node row as selected with [`node_columns!`].
pub(crate) type NodeRow = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

/// A workflow version: name, version, definition, created_at.
pub(crate) type WorkflowRow = (String, i64, String, i64);

/// A run's timing: status, created_at, started_at, finished_at.
pub(crate) type RunTimingRow = (String, i64, Option<i64>, Option<i64>);

/// A node's timing: node, status, attempt, started_at, finished_at.
pub(crate) type NodeTimingRow = (String, String, i64, Option<i64>, Option<i64>);

pub(crate) fn run_status(s: &str) -> Result<RunStatus, StoreError> {
    RunStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown run status '{s}'")))
}

pub(crate) fn node_status(s: &str) -> Result<NodeStatus, StoreError> {
    NodeStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown node status '{s}'")))
}

fn opt_json(s: Option<String>, what: &str) -> Result<Option<Value>, StoreError> {
    s.map(|s| parse_json(&s, what)).transpose()
}

/// A JSON value as stored.
pub(crate) fn json_text(v: &Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("JSON value: {e}")))
}

pub(crate) fn opt_json_text(v: Option<&Value>) -> Result<Option<String>, StoreError> {
    v.map(json_text).transpose()
}

pub(crate) fn version_of(v: i64) -> u32 {
    u32_of(v)
}

pub(crate) fn workflow_of(row: WorkflowRow) -> Result<WorkflowRecord, StoreError> {
    let (name, version, definition, created_at) = row;
    Ok(WorkflowRecord {
        definition: parse_json(&definition, "workflow definition")?,
        name,
        version: version_of(version),
        created_at: from_ms(created_at),
    })
}

pub(crate) fn run_of(row: RunRow) -> Result<RunRecord, StoreError> {
    let (
        id,
        workflow,
        version,
        status,
        inputs,
        trigger,
        output,
        error,
        parent_run,
        parent_node,
        max_concurrency,
        created_at,
        started_at,
        finished_at,
    ) = row;
    let parent = match (parent_run, parent_node) {
        (Some(run), Some(node)) => Some(ParentRef { run, node }),
        (None, None) => None,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "run {id} has half a parent reference"
            )));
        }
    };
    Ok(RunRecord {
        workflow,
        version: version_of(version),
        status: run_status(&status)?,
        inputs: parse_json(&inputs, "run inputs")?,
        trigger: parse_json(&trigger, "run trigger")?,
        output: opt_json(output, "run output")?,
        error,
        parent,
        max_concurrency: max_concurrency.map(u32_of),
        created_at: from_ms(created_at),
        started_at: started_at.map(from_ms),
        finished_at: finished_at.map(from_ms),
        id,
    })
}

pub(crate) fn node_of(row: NodeRow) -> Result<NodeRecord, StoreError> {
    let (run_id, node, status, attempt, input, output, error, queued_at, started_at, finished_at) =
        row;
    Ok(NodeRecord {
        status: node_status(&status)?,
        attempt: u32_of(attempt),
        input: opt_json(input, "node input")?,
        output: opt_json(output, "node output")?,
        error,
        queued_at: from_ms(queued_at),
        started_at: started_at.map(from_ms),
        finished_at: finished_at.map(from_ms),
        run_id,
        node,
    })
}

pub(crate) fn nodes_of(rows: Vec<NodeRow>) -> Result<Vec<NodeRecord>, StoreError> {
    rows.into_iter().map(node_of).collect()
}

pub(crate) fn run_timing_of(row: RunTimingRow) -> Result<RunTiming, StoreError> {
    let (status, created_at, started_at, finished_at) = row;
    Ok(RunTiming {
        status: run_status(&status)?,
        created_at: from_ms(created_at),
        started_at: started_at.map(from_ms),
        finished_at: finished_at.map(from_ms),
    })
}

pub(crate) fn node_timing_of(row: NodeTimingRow) -> Result<NodeTiming, StoreError> {
    let (node, status, attempt, started_at, finished_at) = row;
    Ok(NodeTiming {
        node,
        status: node_status(&status)?,
        attempt: u32_of(attempt),
        started_at: started_at.map(from_ms),
        finished_at: finished_at.map(from_ms),
    })
}

/// The cursor of a run listing: created_at and id of the last run of the page.
pub(crate) fn run_cursor(
    cursor: Option<&str>,
) -> Result<(Option<i64>, Option<String>), StoreError> {
    let Some(c) = cursor else {
        return Ok((None, None));
    };
    let v = common::decode_cursor(c)?;
    match (
        v.get(0).and_then(Value::as_i64),
        v.get(1).and_then(Value::as_str),
    ) {
        (Some(at), Some(id)) => Ok((Some(at), Some(id.to_owned()))),
        _ => Err(StoreError::Invalid(format!("malformed cursor '{c}'"))),
    }
}

pub(crate) fn run_cursor_of(r: &RunRecord) -> Value {
    serde_json::json!([r.created_at.timestamp_millis(), r.id])
}

pub(crate) fn workflow_cursor_of(w: &WorkflowRecord) -> Value {
    Value::from(w.name.as_str())
}

/// The task that asks for a queued run to be started once a slot is free.
pub(crate) fn start_task(run: &str) -> Result<NewTask, StoreError> {
    NewTask::new(WORKFLOW_START_TASK, &serde_json::json!({ "run": run }))
        .map(|t| t.dedupe_key(format!("wf-start:{run}")))
        .map_err(|e| StoreError::Invalid(e.to_string()))
}

/// The task that tells a parent run that its sub-workflow run `child` ended.
pub(crate) fn resume_task(parent: &ParentRef, child: &str) -> Result<NewTask, StoreError> {
    NewTask::new(
        WORKFLOW_RESUME_TASK,
        &serde_json::json!({ "run": parent.run, "node": parent.node, "child": child }),
    )
    .map(|t| t.dedupe_key(format!("wf-resume:{child}")))
    .map_err(|e| StoreError::Invalid(e.to_string()))
}

/// True when a node row (status, attempt) is not running at `attempt`: a result for it is a
/// duplicate or late delivery.
#[cfg(feature = "sqlite")]
pub(crate) fn stale_attempt(status: &str, stored: i64, attempt: u32) -> Result<bool, StoreError> {
    Ok(node_status(status)? != NodeStatus::Running || stored != i64::from(attempt))
}

/// What `put_workflow` does given the latest stored version of the name (version,
/// definition, deleted): `Some(version)` when that version is kept, `None` to insert
/// [`next_version`].
pub(crate) fn unchanged_version(
    latest: Option<&(i64, String, bool)>,
    definition: &str,
) -> Option<u32> {
    match latest {
        Some((version, stored, false)) if stored == definition => Some(version_of(*version)),
        _ => None,
    }
}

/// The version after the latest stored one (deleted versions count: numbers are never
/// reused).
pub(crate) fn next_version(latest: Option<&(i64, String, bool)>) -> Result<i64, StoreError> {
    let next = latest.map_or(1, |(v, _, _)| v.saturating_add(1));
    if next > i64::from(u32::MAX) {
        return Err(StoreError::Invalid("workflow version overflow".into()));
    }
    Ok(next)
}

/// Check a plan's end is a final status.
pub(crate) fn check_end(end: &flowbot_core::workflow::RunEnd) -> Result<(), StoreError> {
    if end.status.is_final() {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "a run cannot end as '{}'",
            end.status.as_str()
        )))
    }
}
