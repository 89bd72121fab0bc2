//! DAG workflows on the durable task queue: definitions (YAML or JSON), validation, the
//! engine that runs each node as a task, triggers, and run records with analytics. See
//! `docs/workflows.md`.

mod actions;
mod compile;
mod engine;
mod script;
mod spec;
mod store;
mod template;

pub(crate) use actions::{PublishEvent, RunWorkflow};
pub use compile::{CheckContext, DEFAULT_NODE_TIMEOUT, InputsError, Problem, Workflow};
pub use engine::{
    Analytics, Applied, RunDetail, SecretSource, Secrets, SourceSecrets, Stats, WORKFLOW_CRON_TASK,
    WORKFLOW_EVENT_TASK, WORKFLOW_WAIT_TIMEOUT_TASK, WorkflowError, Workflows,
};
pub use script::{SCRIPT_VARIABLES, ScriptEngine};
pub use spec::{
    BackoffKind, ConditionSpec, EdgeSpec, Format, InputSpec, InputType, Join, NodeSpec, RetrySpec,
    SpecError, TriggerSpec, WorkflowSpec,
};
pub use store::{
    BeginOutcome, Claim, FinishOutcome, NewRun, NodeRecord, NodeResult, NodeStatus, NodeTiming,
    ParentRef, Plan, RunEnd, RunFilter, RunRecord, RunStatus, RunTiming, StartNode,
    WORKFLOW_NODE_TASK, WORKFLOW_RESUME_TASK, WORKFLOW_START_TASK, WorkflowRecord, WorkflowStore,
};
