//! What the workflow engine keeps in a store: definitions (versioned), runs and node
//! executions, and the transactional steps that move a run forward.
//!
//! Every step that changes a run's state and enqueues the next tasks happens in one store
//! transaction, serialised per run (a row lock on the run, or SQLite's single writer). That is
//! what makes node completion exactly-once: a node row moves from `running` to a final state
//! once, and only the transaction that moved it starts the node's successors.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;
use crate::store::Page;
use crate::task::NewTask;

/// Task kind that starts a run that waited for a free slot (per-workflow max concurrency).
/// Payload: `{"run": "<run id>"}`.
pub const WORKFLOW_START_TASK: &str = "flowbot.workflow.start";
/// Task kind that executes one node of a run. Payload: `{"run": "<run id>", "node": "<id>"}`.
pub const WORKFLOW_NODE_TASK: &str = "flowbot.workflow.node";
/// Task kind that tells a parent run that its sub-workflow run ended. Payload:
/// `{"run": "<parent run id>", "node": "<parent node>", "child": "<child run id>"}`.
pub const WORKFLOW_RESUME_TASK: &str = "flowbot.workflow.resume";

/// One stored version of a workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// The workflow's name.
    pub name: String,
    /// Version, from 1, one more for every changed definition applied under the name.
    pub version: u32,
    /// The definition as JSON (the parsed YAML or JSON document).
    pub definition: Value,
    /// When this version was applied.
    pub created_at: DateTime<Utc>,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a free slot under the workflow's max concurrency.
    Queued,
    /// Nodes are being executed.
    Running,
    /// Every reachable node finished; the run has an output.
    Completed,
    /// A node failed after its last attempt; the run has an error.
    Failed,
    /// Cancelled through the API (or its parent was cancelled).
    Cancelled,
}

impl RunStatus {
    /// The lower-case name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Parse the name `as_str` gives.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }

    /// True for completed, failed and cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// Where a node execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Its task is on the queue.
    Pending,
    /// An agent is executing it (or it waits for a sub-workflow run).
    Running,
    /// It finished with an output.
    Completed,
    /// It failed after its last attempt.
    Failed,
    /// No active edge led to it (a branch not taken).
    Skipped,
    /// The run was cancelled before the node finished.
    Cancelled,
}

impl NodeStatus {
    /// The lower-case name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "pending",
            NodeStatus::Running => "running",
            NodeStatus::Completed => "completed",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
        }
    }

    /// Parse the name `as_str` gives.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => NodeStatus::Pending,
            "running" => NodeStatus::Running,
            "completed" => NodeStatus::Completed,
            "failed" => NodeStatus::Failed,
            "skipped" => NodeStatus::Skipped,
            "cancelled" => NodeStatus::Cancelled,
            _ => return None,
        })
    }

    /// True once the node will not change again (completed, failed, skipped, cancelled).
    pub fn is_final(self) -> bool {
        !matches!(self, NodeStatus::Pending | NodeStatus::Running)
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id (a UUID v7, so ids sort by creation time).
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The definition version the run executes, fixed when it was created.
    pub version: u32,
    /// Status.
    pub status: RunStatus,
    /// The inputs after defaults were applied.
    pub inputs: Value,
    /// What started it: `{"kind": "manual" | "hook" | "cron" | "event" | "rule" | "workflow", ...}`.
    pub trigger: Value,
    /// The output of a completed run.
    pub output: Option<Value>,
    /// The error of a failed run, naming the node.
    pub error: Option<String>,
    /// The parent run and node, for a sub-workflow run.
    pub parent: Option<ParentRef>,
    /// The workflow's max concurrency when the run was created.
    pub max_concurrency: Option<u32>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When it left the queue (for a run that waited for a slot, later than `created_at`).
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The node of a parent run that waits for a sub-workflow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent run.
    pub run: String,
    /// The sub-workflow node in the parent run.
    pub node: String,
}

/// One node execution as stored (the latest attempt; earlier errors are in the task's
/// history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The run.
    pub run_id: String,
    /// The node's id in the definition.
    pub node: String,
    /// Status.
    pub status: NodeStatus,
    /// Attempts started so far.
    pub attempt: u32,
    /// The rendered input of the latest attempt, with secrets redacted.
    pub input: Option<Value>,
    /// The output, once completed (secrets redacted).
    pub output: Option<Value>,
    /// The error of the latest failed attempt.
    pub error: Option<String>,
    /// When the node's task was enqueued.
    pub queued_at: DateTime<Utc>,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Its id (see [`RunRecord::id`]).
    pub id: String,
    /// The workflow.
    pub workflow: String,
    /// The version to execute.
    pub version: u32,
    /// Inputs, after defaults.
    pub inputs: Value,
    /// What started it.
    pub trigger: Value,
    /// Parent node, for a sub-workflow run.
    pub parent: Option<ParentRef>,
    /// Max concurrent runs of this workflow; `None` for no limit.
    pub max_concurrency: Option<u32>,
}

/// A node to start: its id and the task that executes it.
#[derive(Debug, Clone)]
pub struct StartNode {
    /// The node's id.
    pub node: String,
    /// The task to enqueue (kind [`WORKFLOW_NODE_TASK`]).
    pub task: NewTask,
}

/// What [`WorkflowStore::begin_node`] found.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // made once per node execution and matched at once
pub enum BeginOutcome {
    /// The node is now running (attempt counted); here are the run and its nodes so far.
    Proceed {
        /// The run.
        run: RunRecord,
        /// Every node row of the run (the node itself included, now `running`).
        nodes: Vec<NodeRecord>,
    },
    /// The run is not running (cancelled, finished, unknown): do nothing.
    RunNotActive(Option<RunStatus>),
    /// The node already reached a final status (a duplicate delivery): do nothing.
    AlreadyFinished(NodeStatus),
}

/// How a node attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeResult {
    /// Finished with an output.
    Completed {
        /// Rendered input (redacted).
        input: Value,
        /// Output (redacted).
        output: Value,
    },
    /// Failed. `last` is true when no attempt is left: the node becomes `failed`.
    Failed {
        /// Rendered input, when rendering got that far (redacted).
        input: Option<Value>,
        /// The error.
        error: String,
        /// No attempt is left.
        last: bool,
    },
    /// Started a sub-workflow run and waits for it (the node stays `running`).
    Waiting {
        /// Rendered input (redacted).
        input: Value,
    },
}

/// What the engine decided after a node reached a final status: nodes to start or skip, and
/// whether the run ended.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Nodes that became ready.
    pub start: Vec<StartNode>,
    /// Nodes no active edge leads to any more.
    pub skip: Vec<String>,
    /// The run's end, when nothing is left to do.
    pub end: Option<RunEnd>,
    /// Insert the task of this started node already claimed by this worker (`running`, its
    /// lease held), and the node's row as `running` at attempt 1: the finishing worker runs
    /// it next without a round through the queue. The task is an ordinary leased task: if
    /// the worker dies, the lease expires and any agent runs it.
    pub claim: Option<Claim>,
}

/// See [`Plan::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The started node.
    pub node: String,
    /// The worker that takes it.
    pub worker: String,
    /// Its lease.
    pub lease: std::time::Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// Completed or failed.
    pub status: RunStatus,
    /// Output of a completed run.
    pub output: Option<Value>,
    /// Error of a failed run.
    pub error: Option<String>,
}

/// What [`WorkflowStore::finish_node`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishOutcome {
    /// The result was recorded (and the plan applied when the node reached a final status).
    Recorded {
        /// The run's status after the step.
        run_status: RunStatus,
        /// The task of [`Plan::claim`]'s node, when it was inserted claimed.
        claimed: Option<crate::task::TaskId>,
    },
    /// The node was not `running` at that attempt (a duplicate or late delivery): nothing
    /// changed.
    Stale,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size (the store caps it).
    pub limit: u32,
}

/// One run's timing, for analytics.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTiming {
    /// Status.
    pub status: RunStatus,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One node execution's timing, for analytics.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTiming {
    /// Node id.
    pub node: String,
    /// Status.
    pub status: NodeStatus,
    /// Attempts.
    pub attempt: u32,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Storage for workflow definitions, runs and node executions.
///
/// The `plan` callbacks run inside the store's transaction, with the run row locked; they
/// must be quick and must not block.
#[async_trait]
pub trait WorkflowStore: Send + Sync + 'static {
    /// Store `definition` under `name`: a new version when it differs from the latest one
    /// (or the name was deleted), else the latest version. Returns the version and whether it
    /// is new.
    async fn put_workflow(&self, name: &str, definition: &Value)
    -> Result<(u32, bool), StoreError>;

    /// A version of a workflow; `None` for the latest version of a workflow not deleted.
    /// An explicit version is found even after the workflow was deleted (runs keep theirs).
    async fn get_workflow(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowRecord>, StoreError>;

    /// The latest version of every workflow not deleted, by name.
    async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowRecord>, StoreError>;

    /// Delete a workflow: `get_workflow(name, None)` and listings no longer see it. Returns
    /// false when there was none.
    async fn delete_workflow(&self, name: &str) -> Result<bool, StoreError>;

    /// Create a run. When the workflow already has `max_concurrency` runs running, the run
    /// is `queued` and nothing is enqueued; otherwise it is `running`, and the `start` nodes
    /// get pending rows and their tasks, all in one transaction.
    async fn create_run(&self, run: &NewRun, start: &[StartNode]) -> Result<RunRecord, StoreError>;

    /// Promote a queued run: when it is still queued and a slot is free, mark it running and
    /// create the `start` nodes (rows and tasks). Returns the run as it is after the step.
    async fn start_queued_run(
        &self,
        id: &str,
        start: &[StartNode],
    ) -> Result<Option<RunRecord>, StoreError>;

    /// Mark a node `running` for a new attempt, when its run is running and the node has not
    /// finished (the row is created if it does not exist).
    async fn begin_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
    ) -> Result<BeginOutcome, StoreError>;

    /// Record how an attempt ended. When the node reaches a final status, `plan` is called
    /// with every node row of the run (this one updated) and its result is applied in the
    /// same transaction: new nodes get pending rows (a node that already has a row is left
    /// alone, so it is never started twice) and their tasks, skipped nodes get skipped rows,
    /// and an end finishes the run. A run that ends frees its slot (the oldest queued run of
    /// the workflow gets a [`WORKFLOW_START_TASK`]) and, when it is a sub-workflow run, wakes
    /// its parent with a [`WORKFLOW_RESUME_TASK`].
    async fn finish_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        result: &NodeResult,
        plan: &(dyn for<'r> Fn(&'r RunRecord, &'r [NodeRecord]) -> Plan + Send + Sync),
    ) -> Result<FinishOutcome, StoreError>;

    /// Cancel a queued or running run: unfinished nodes become `cancelled`, the slot is freed
    /// and a parent is woken as for any other end. Returns the status after the call (`None`
    /// for an unknown run); a run already finished is left as it is.
    async fn cancel_run(&self, id: &str) -> Result<Option<RunStatus>, StoreError>;

    /// Retry a failed run from its failed nodes: the run becomes running again, and each of
    /// `restart` (failed nodes) goes back to pending with its task. Returns false when the
    /// run is not failed.
    async fn retry_run(&self, id: &str, restart: &[StartNode]) -> Result<bool, StoreError>;

    /// One run.
    async fn get_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Runs, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Page<RunRecord>, StoreError>;

    /// The node rows of a run, in the order they were queued.
    async fn run_nodes(&self, id: &str) -> Result<Vec<NodeRecord>, StoreError>;

    /// Timings of a workflow's runs created in `[since, until)`, and of their nodes.
    async fn run_timings(
        &self,
        workflow: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<(Vec<RunTiming>, Vec<NodeTiming>), StoreError>;
}
