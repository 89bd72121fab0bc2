//! DAG workflows on the durable task queue: definitions (YAML or JSON), validation, the
//! engine that runs each node as a task, triggers, and run records with analytics. See
//! `docs/workflows.md`.

//!
//! Everything but the store trait and its records is behind the `workflows` feature (on by
//! default).

#[cfg(feature = "workflows")]
mod actions;
#[cfg(feature = "workflows")]
mod compile;
#[cfg(feature = "workflows")]
mod engine;
#[cfg(feature = "workflows")]
mod script;
#[cfg(feature = "workflows")]
mod spec;
mod store;
#[cfg(feature = "workflows")]
mod template;

#[cfg(feature = "workflows")]
pub(crate) use actions::{PublishEvent, RunWorkflow};
#[cfg(feature = "workflows")]
pub use compile::{CheckContext, DEFAULT_NODE_TIMEOUT, InputsError, Problem, Workflow};
#[cfg(feature = "workflows")]
pub use engine::{
    Analytics, Applied, RunDetail, SecretSource, Secrets, SourceSecrets, Stats, WORKFLOW_CRON_TASK,
    WORKFLOW_EVENT_TASK, WORKFLOW_WAIT_TIMEOUT_TASK, WorkflowError, Workflows,
};
#[cfg(feature = "workflows")]
pub use script::{SCRIPT_VARIABLES, ScriptEngine};
#[cfg(feature = "workflows")]
pub use spec::{
    BackoffKind, ConditionSpec, EdgeSpec, Format, InputSpec, InputType, Join, NodeSpec, RetrySpec,
    SpecError, TriggerSpec, WorkflowSpec,
};
pub use store::{
    BeginOutcome, Claim, FinishOutcome, NewRun, NodeRecord, NodeResult, NodeStatus, NodeTiming,
    ParentRef, Plan, RunEnd, RunFilter, RunRecord, RunStatus, RunTiming, StartNode,
    WORKFLOW_NODE_TASK, WORKFLOW_RESUME_TASK, WORKFLOW_START_TASK, WorkflowRecord, WorkflowStore,
};
