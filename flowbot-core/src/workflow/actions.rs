//! Actions the workflow engine adds to the registry: `workflow.run` (start a run, e.g. from a
//! rule) and `publish_event` (start the runs of workflows that subscribe to an event).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::engine::{WORKFLOW_EVENT_TASK, Workflows};
use crate::action::{Action, ActionContext};
use crate::error::BoxError;
use crate::task::NewTask;

/// `workflow.run`: start a run of a workflow.
pub(crate) struct RunWorkflow(pub(crate) Arc<Workflows>);

#[async_trait]
impl Action for RunWorkflow {
    fn name(&self) -> &str {
        "workflow.run"
    }
    fn description(&self) -> &str {
        "Start a run of a workflow with inputs; answers the run id at once"
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "workflow": {"type": "string", "minLength": 1},
                "input": {"type": "object"}
            },
            "required": ["workflow"],
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"run_id": {"type": "string"}, "status": {"type": "string"}},
            "required": ["run_id", "status"]
        })
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let name = input["workflow"].as_str().unwrap_or_default();
        let mut trigger = json!({"kind": "action"});
        if let Some(t) = &cx.source {
            trigger["channel"] = json!(t.channel.as_str());
            trigger["conversation"] = json!(t.conversation.as_str());
        }
        let run = self
            .0
            .start(
                name,
                input.get("input").cloned().unwrap_or(Value::Null),
                trigger,
            )
            .await?;
        Ok(json!({"run_id": run.id, "status": run.status.as_str()}))
    }
}

/// `publish_event`: queue an event; every workflow with an `event` trigger of that name gets
/// a run with the payload as inputs, and with a `key` the wait node waiting for that name and
/// key continues with the payload.
pub(crate) struct PublishEvent;

#[async_trait]
impl Action for PublishEvent {
    fn name(&self) -> &str {
        "publish_event"
    }
    fn description(&self) -> &str {
        "Publish a named event; workflows subscribed to the name start with the payload as inputs"
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
                "key": {"type": "string", "minLength": 1, "description": "wakes the wait node waiting for this name and key"},
                "payload": {"type": "object"}
            },
            "required": ["name"],
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"task": {"type": "integer"}}, "required": ["task"]})
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let store = cx
            .store
            .as_ref()
            .ok_or("publish_event needs a store: events travel on the task queue")?;
        let task = NewTask::new(
            WORKFLOW_EVENT_TASK,
            &json!({
                "name": input["name"],
                "key": input.get("key"),
                "payload": input.get("payload").cloned().unwrap_or(json!({})),
            }),
        )?;
        let id = store.enqueue(&task).await?.id();
        Ok(json!({"task": id.0}))
    }
}
