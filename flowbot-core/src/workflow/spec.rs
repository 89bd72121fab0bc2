//! The workflow definition format (YAML or JSON), as written by users. See
//! `docs/workflow.schema.json` for its JSON Schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Name: letters, digits, `_`, `-` and `.`.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Typed inputs, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputSpec>,
    /// The nodes; the first one is where a run starts.
    pub nodes: Vec<NodeSpec>,
    /// Edges between nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<EdgeSpec>,
    /// What starts runs besides the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
    /// At most this many runs at a time; more wait in `queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Default retry of every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Default timeout of every node (e.g. `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The run's output, rendered over `inputs` and `nodes` when the run completes; by
    /// default the output of the node that finished last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// One typed input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Its JSON type.
    #[serde(rename = "type")]
    pub ty: InputType,
    /// A run without it is rejected (unless it has a default).
    #[serde(default)]
    pub required: bool,
    /// Used when the run does not give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What it means.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// JSON types an input can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    /// A string.
    String,
    /// Any number.
    Number,
    /// A whole number.
    Integer,
    /// true or false.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Anything.
    Any,
}

impl InputType {
    /// The JSON Schema `type`, if it constrains one.
    pub(crate) fn schema_type(self) -> Option<&'static str> {
        Some(match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
            InputType::Any => return None,
        })
    }
}

/// One node. Exactly one of `action`, `condition`, `script`, `delay`, `until`, `workflow`,
/// `wait` says what it does; a node with only `join` is a join point that does nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique id within the workflow.
    pub id: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Call this registered action with `with` as its input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Input of an action or a sub-workflow: JSON whose strings are templates.
    #[serde(default, rename = "with", skip_serializing_if = "Option::is_none")]
    pub with: Option<Value>,
    /// Branch: outgoing edges carry `when: true` or `when: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionSpec>,
    /// Run this rhai script; its value is the node's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// Ask the language model (the `llm` action): `{text, prompt, model, schema}`, whose
    /// strings are templates. The output is `{text, data, usage}`; with a JSON Schema,
    /// `data` is the answer parsed and checked against it, for the nodes after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<Value>,
    /// Wait this long (e.g. `10m`) before the next nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Wait until this time (a template giving an RFC 3339 time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Run this workflow as a sub-workflow with `with` as its inputs; its output is the
    /// node's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Wait for an event published with a key (e.g. a button click turned into an event by a
    /// rule); the event's payload is the node's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitSpec>,
    /// How incoming edges combine: `all` (the default) waits for every one, `first` runs on
    /// the first that arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
    /// Retry of this node (default: the workflow's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Timeout of one attempt (default: the workflow's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// What a wait node waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    /// The event's name.
    pub event: String,
    /// The key that singles out this run's event (a template, e.g. `{{ run.id }}`).
    pub key: String,
    /// Give up after this long (e.g. `1h`): the node completes with `timed_out: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// What a condition node tests: exactly one of `expr` and `script`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// A minijinja expression (no braces), e.g. `nodes.fetch.output.status == 200`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// A rhai expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// How incoming edges of a node combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Join {
    /// Wait until every predecessor finished; run when at least one edge is taken.
    #[default]
    All,
    /// Run as soon as one edge is taken.
    First,
}

/// An edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// From this node…
    pub from: String,
    /// …to this one.
    pub to: String,
    /// For an edge out of a condition node: the branch it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<bool>,
}

/// A trigger: exactly one of `hook`, `cron` and `event`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// `POST /hooks/trigger/{hook}` starts a run with the JSON body as inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// For a hook: the named secret a caller sends as `Authorization: Bearer <secret>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// For a hook: the named secret that signs the body (HMAC-SHA256, as the webhook channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<String>,
    /// A cron expression (5 or 6 fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Time zone of `cron` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// An event name; `publish_event` with this name starts a run with the event's payload
    /// as inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Inputs of a cron run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// Retry settings, in the units people write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// `fixed`, `linear` or `exponential` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffKind>,
    /// The first delay (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Growth factor of exponential backoff (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Upper bound of a delay (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<String>,
    /// Random share taken off each delay, 0 to 1 (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// Backoff shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// Same delay every time.
    Fixed,
    /// Delay × attempt.
    Linear,
    /// Delay × factor^(attempt − 1).
    Exponential,
}

/// The format of a definition document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// A workflow definition that could not be read: what is wrong, and where when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// What is wrong (with the line and column, when known).
    pub message: String,
    /// The line (from 1), when known.
    pub line: Option<usize>,
    /// The column (from 1), when known.
    pub column: Option<usize>,
}

impl SpecError {
    fn json(e: &serde_json::Error) -> Self {
        SpecError {
            message: e.to_string(),
            line: (e.line() > 0).then_some(e.line()),
            column: (e.column() > 0).then_some(e.column()),
        }
    }
}

impl WorkflowSpec {
    /// Parse a definition; errors give the line and column.
    pub fn parse(text: &str, format: Format) -> Result<WorkflowSpec, SpecError> {
        match format {
            Format::Json => serde_json::from_str(text).map_err(|e| SpecError::json(&e)),
            Format::Yaml => serde_norway::from_str(text).map_err(|e| {
                let at = e.location();
                SpecError {
                    message: e.to_string(),
                    line: at.as_ref().map(serde_norway::Location::line),
                    column: at.as_ref().map(serde_norway::Location::column),
                }
            }),
        }
    }

    /// Parse a definition from a JSON value (as stored).
    pub fn from_value(value: Value) -> Result<WorkflowSpec, SpecError> {
        serde_json::from_value(value).map_err(|e| SpecError::json(&e))
    }

    /// The definition as JSON (as stored).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
