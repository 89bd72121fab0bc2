//! Checking a definition and turning it into a [`Workflow`] the engine can run: the graph,
//! parsed durations and retry policies, and every template, script, action and trigger
//! checked, with each problem naming the node and the field.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use super::script::{SCRIPT_VARIABLES, ScriptEngine};
use super::spec::{BackoffKind, InputType, Join, RetrySpec, WorkflowSpec};
use super::template;

mod nodes;
mod triggers;

use crate::action::ActionRegistry;
use crate::task::{CronSpec, MAX_DELAY, RetryPolicy, days};
use nodes::check_nodes;
use triggers::check_triggers;

/// One thing wrong with a definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The node it is in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The field, as a path (`with.text`, `edges[2].to`, `triggers[0].cron`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(n) => write!(f, "node `{n}`, field `{}`: {}", self.field, self.message),
            None => write!(f, "field `{}`: {}", self.field, self.message),
        }
    }
}

/// What a node does, parsed.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Action {
        name: String,
        with: Value,
    },
    /// A minijinja expression, or (`true`) a rhai expression.
    Condition {
        source: String,
        script: bool,
    },
    Script(String),
    Delay(Duration),
    Until(String),
    Workflow {
        name: String,
        with: Value,
    },
    Wait {
        event: String,
        key: String,
        timeout: Option<Duration>,
    },
    Join,
}

/// A node, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Duration,
    pub(crate) join: Join,
}

#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) when: Option<bool>,
}

/// A checked workflow definition, ready to run.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub(crate) spec: WorkflowSpec,
    pub(crate) nodes: Vec<Node>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) edges: Vec<Edge>,
    pub(crate) incoming: Vec<Vec<usize>>,
    pub(crate) input_schema: Value,
}

/// Default timeout of a node attempt.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a definition is checked against.
#[derive(Clone, Copy)]
pub struct CheckContext<'a> {
    /// Registered actions.
    pub actions: &'a ActionRegistry,
    /// The script engine, when scripts are available.
    pub scripts: Option<&'a dyn ScriptEngine>,
    /// Names of the configured secrets.
    pub secrets: &'a BTreeSet<String>,
}

/// Inputs that do not fit a workflow's input schema: what is wrong with which input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputsError(pub String);

impl Workflow {
    /// The definition.
    pub fn spec(&self) -> &WorkflowSpec {
        &self.spec
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The JSON Schema its inputs are checked against.
    pub fn input_schema(&self) -> &Value {
        &self.input_schema
    }

    /// Check `spec` fully (actions, templates, scripts, triggers, inputs): every problem found.
    pub fn check(spec: WorkflowSpec, cx: CheckContext<'_>) -> Result<Workflow, Vec<Problem>> {
        let mut p = Problems::default();
        let wf = build(spec, &mut p);
        if let Some(wf) = &wf {
            check_nodes(wf, cx, &mut p);
            check_triggers(wf, cx, &mut p);
        }
        match (wf, p.0.is_empty()) {
            (Some(wf), true) => Ok(wf),
            _ => Err(p.0),
        }
    }

    /// Rebuild a stored definition (already checked when it was applied) without the checks
    /// that depend on the environment: the graph, durations and policies only.
    pub fn load(spec: WorkflowSpec) -> Result<Workflow, Vec<Problem>> {
        let mut p = Problems::default();
        match build(spec, &mut p) {
            Some(wf) if p.0.is_empty() => Ok(wf),
            _ => Err(p.0),
        }
    }

    /// Apply defaults to `inputs` and check them against the input schema; the error says
    /// what is wrong with which input.
    pub fn prepare_inputs(&self, inputs: Value) -> Result<Value, InputsError> {
        self.checked_inputs(inputs).map_err(InputsError)
    }

    /// [`Workflow::prepare_inputs`], in words.
    fn checked_inputs(&self, inputs: Value) -> Result<Value, String> {
        let mut inputs = match inputs {
            Value::Null => serde_json::Map::new(),
            Value::Object(m) => m,
            other => {
                return Err(format!(
                    "inputs must be a JSON object, got {}",
                    json_type(&other)
                ));
            }
        };
        for (name, input) in &self.spec.inputs {
            if !inputs.contains_key(name)
                && let Some(d) = &input.default
            {
                inputs.insert(name.clone(), d.clone());
            }
        }
        let inputs = Value::Object(inputs);
        let validator = jsonschema::validator_for(&self.input_schema)
            .map_err(|e| format!("input schema: {e}"))?;
        if let Some(e) = validator.iter_errors(&inputs).next() {
            let path = e.instance_path().to_string();
            return Err(if path.is_empty() {
                e.to_string()
            } else {
                format!("inputs{}: {e}", path.replace('/', "."))
            });
        }
        Ok(inputs)
    }

    /// Indices of the nodes a node depends on, transitively.
    pub(crate) fn ancestors(&self, node: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = self.incoming[node]
            .iter()
            .map(|&e| self.edges[e].from)
            .collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(self.incoming[n].iter().map(|&e| self.edges[e].from));
            }
        }
        seen
    }

    /// Names of the workflows its sub-workflow nodes run.
    pub fn sub_workflows(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nodes.iter().filter_map(|n| match &n.kind {
            Kind::Workflow { name, .. } => Some((n.id.as_str(), name.as_str())),
            _ => None,
        })
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn node(&mut self, node: &str, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            node: Some(node.to_owned()),
            field: field.into(),
            message: message.into(),
        });
    }

    fn top(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            node: None,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The action an `llm` node calls.
pub(crate) const LLM_ACTION: &str = "llm";

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A duration of a definition: humantime text of at most [`MAX_DELAY`] (about 10 years), so
/// that adding it to the present always gives a time.
fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!(
            "'{s}' is out of range ({e}): at most {} (about 10 years)",
            days(MAX_DELAY)
        ),
        e => format!("'{s}' is not a duration ({e}); write e.g. 30s, 5m or 1h"),
    })?;
    if d > MAX_DELAY {
        return Err(format!(
            "'{s}' is too long: at most {} (about 10 years)",
            days(MAX_DELAY)
        ));
    }
    Ok(d)
}

/// A literal `until` (no template in it) must be an RFC 3339 time at most [`MAX_DELAY`] from
/// now; one with a template is checked when it is rendered.
fn literal_until(s: &str) -> Result<(), String> {
    if template::has_syntax(s) {
        return Ok(());
    }
    let at = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("'{s}' is not an RFC 3339 time ({e})"))?;
    let latest = crate::task::after(crate::clock::now(), MAX_DELAY);
    if at > latest {
        return Err(format!(
            "'{s}' is too far ahead: at most {} (about 10 years) from now",
            days(MAX_DELAY)
        ));
    }
    Ok(())
}

/// The retry policy of `r`; an error names the field of `retry` that is wrong.
pub(crate) fn retry_policy(r: &RetrySpec) -> Result<RetryPolicy, (&'static str, String)> {
    let delay = duration(r.delay.as_deref().unwrap_or("1s")).map_err(|e| ("retry.delay", e))?;
    let policy =
        RetryPolicy::new(r.max_attempts).map_err(|e| ("retry.max_attempts", e.to_string()))?;
    if delay < Duration::from_millis(1) {
        return Err((
            "retry.delay",
            format!(
                "must be at least 1ms, got {}",
                humantime::format_duration(delay)
            ),
        ));
    }
    // With the delay in range, the backoff can only be refused for its factor.
    let field = "retry.factor";
    let policy = match r.backoff.unwrap_or(BackoffKind::Exponential) {
        BackoffKind::Fixed => policy.fixed(delay),
        BackoffKind::Linear => policy.linear(delay),
        BackoffKind::Exponential => policy.exponential(delay, r.factor.unwrap_or(2.0)),
    }
    .map_err(|e| (field, e.to_string()))?;
    let policy = match &r.max_delay {
        Some(m) => policy
            .max_delay(duration(m).map_err(|e| ("retry.max_delay", e))?)
            .map_err(|e| ("retry.max_delay", e.to_string()))?,
        None => policy,
    };
    match r.jitter {
        Some(j) => policy
            .jitter(j)
            .map_err(|e| ("retry.jitter", e.to_string())),
        None => Ok(policy),
    }
}

/// The default retry of a node: 3 attempts, exponential from 1 s.
fn default_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    }
}

/// The graph and the parts that need nothing but the definition.
fn build(spec: WorkflowSpec, p: &mut Problems) -> Option<Workflow> {
    if !valid_name(&spec.name) {
        p.top(
            "name",
            format!(
                "'{}' is not a valid workflow name: use 1 to 100 letters, digits, '_', '-' or '.'",
                spec.name
            ),
        );
    }
    if spec.nodes.is_empty() {
        p.top("nodes", "a workflow needs at least one node");
        return None;
    }
    if spec.max_concurrency == Some(0) {
        p.top(
            "max_concurrency",
            "must be at least 1 (leave it out for no limit)",
        );
    }
    let wf_retry = match spec.retry.as_ref().map(retry_policy) {
        Some(Ok(r)) => r,
        Some(Err((field, e))) => {
            p.top(field, e);
            default_retry()
        }
        None => default_retry(),
    };
    let wf_timeout = match spec.timeout.as_deref().map(duration) {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.top("timeout", e);
            DEFAULT_NODE_TIMEOUT
        }
        None => DEFAULT_NODE_TIMEOUT,
    };
    let mut input_props = serde_json::Map::new();
    let mut required = Vec::new();
    for (name, input) in &spec.inputs {
        if !valid_name(name) {
            p.top(
                format!("inputs.{name}"),
                "input names use letters, digits, '_', '-' or '.'",
            );
        }
        let mut schema = serde_json::Map::new();
        if let Some(t) = input.ty.schema_type() {
            schema.insert("type".into(), json!(t));
        }
        if !input.description.is_empty() {
            schema.insert("description".into(), json!(input.description));
        }
        if let Some(d) = &input.default {
            if !type_fits(input.ty, d) {
                p.top(
                    format!("inputs.{name}.default"),
                    format!(
                        "the default is {}, not {}",
                        json_type(d),
                        type_label(input.ty)
                    ),
                );
            }
        } else if input.required {
            required.push(json!(name));
        }
        input_props.insert(name.clone(), Value::Object(schema));
    }
    let input_schema = json!({
        "type": "object",
        "properties": input_props,
        "required": required,
        "additionalProperties": false,
    });

    let mut nodes = Vec::with_capacity(spec.nodes.len());
    let mut index = HashMap::new();
    for n in &spec.nodes {
        if !valid_name(&n.id) {
            p.node(
                &n.id,
                "id",
                "node ids use 1 to 100 letters, digits, '_', '-' or '.'",
            );
        }
        if index.insert(n.id.clone(), nodes.len()).is_some() {
            p.node(&n.id, "id", "two nodes have this id");
        }
        let mut kinds = Vec::new();
        if n.action.is_some() {
            kinds.push("action");
        }
        if n.condition.is_some() {
            kinds.push("condition");
        }
        if n.script.is_some() {
            kinds.push("script");
        }
        if n.llm.is_some() {
            kinds.push("llm");
        }
        if n.delay.is_some() {
            kinds.push("delay");
        }
        if n.until.is_some() {
            kinds.push("until");
        }
        if n.workflow.is_some() {
            kinds.push("workflow");
        }
        if n.wait.is_some() {
            kinds.push("wait");
        }
        if kinds.len() > 1 {
            p.node(
                &n.id,
                kinds[1],
                format!(
                    "a node does one thing, and this one has both `{}` and `{}`",
                    kinds[0], kinds[1]
                ),
            );
        }
        if n.with.is_some() && n.action.is_none() && n.workflow.is_none() {
            p.node(
                &n.id,
                "with",
                "`with` is the input of an `action` or a `workflow` node",
            );
        }
        let kind = if let Some(a) = &n.action {
            Kind::Action {
                name: a.clone(),
                with: n.with.clone().unwrap_or_else(|| json!({})),
            }
        } else if let Some(c) = &n.condition {
            match (&c.expr, &c.script) {
                (Some(e), None) => Kind::Condition {
                    source: e.clone(),
                    script: false,
                },
                (None, Some(s)) => Kind::Condition {
                    source: s.clone(),
                    script: true,
                },
                _ => {
                    p.node(
                        &n.id,
                        "condition",
                        "give exactly one of `expr` (a template expression) and `script` (rhai)",
                    );
                    Kind::Join
                }
            }
        } else if let Some(ask) = &n.llm {
            // The `llm` action does the asking (registered when a model is configured).
            Kind::Action {
                name: LLM_ACTION.to_owned(),
                with: ask.clone(),
            }
        } else if let Some(s) = &n.script {
            Kind::Script(s.clone())
        } else if let Some(d) = &n.delay {
            match duration(d) {
                Ok(d) => Kind::Delay(d),
                Err(e) => {
                    p.node(&n.id, "delay", e);
                    Kind::Join
                }
            }
        } else if let Some(u) = &n.until {
            if let Err(e) = literal_until(u) {
                p.node(&n.id, "until", e);
            }
            Kind::Until(u.clone())
        } else if let Some(w) = &n.workflow {
            if !valid_name(w) {
                p.node(
                    &n.id,
                    "workflow",
                    format!("'{w}' is not a valid workflow name"),
                );
            }
            Kind::Workflow {
                name: w.clone(),
                with: n.with.clone().unwrap_or_else(|| json!({})),
            }
        } else if let Some(w) = &n.wait {
            if !valid_name(&w.event) {
                p.node(
                    &n.id,
                    "wait.event",
                    format!(
                        "'{}' is not a valid event name: use letters, digits, '_', '-' or '.'",
                        w.event
                    ),
                );
            }
            let timeout = match w.timeout.as_deref().map(duration) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    p.node(&n.id, "wait.timeout", e);
                    None
                }
                None => None,
            };
            Kind::Wait {
                event: w.event.clone(),
                key: w.key.clone(),
                timeout,
            }
        } else if n.join.is_some() {
            Kind::Join
        } else {
            p.node(
                &n.id,
                "action",
                "the node does nothing: give one of action, llm, condition, script, delay, until, workflow, wait or join",
            );
            Kind::Join
        };
        let retry = match n.retry.as_ref().map(retry_policy) {
            Some(Ok(r)) => r,
            Some(Err((field, e))) => {
                p.node(&n.id, field, e);
                wf_retry
            }
            None => wf_retry,
        };
        let timeout = match n.timeout.as_deref().map(duration) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                p.node(&n.id, "timeout", e);
                wf_timeout
            }
            None => wf_timeout,
        };
        nodes.push(Node {
            id: n.id.clone(),
            kind,
            retry,
            timeout,
            join: n.join.unwrap_or_default(),
        });
    }

    let mut edges = Vec::new();
    let mut incoming = vec![Vec::new(); nodes.len()];
    let mut outgoing = vec![Vec::new(); nodes.len()];
    let mut seen = BTreeSet::new();
    for (i, e) in spec.edges.iter().enumerate() {
        let (Some(&from), Some(&to)) = (index.get(&e.from), index.get(&e.to)) else {
            for (end, id) in [("from", &e.from), ("to", &e.to)] {
                if !index.contains_key(id) {
                    p.top(
                        format!("edges[{i}].{end}"),
                        format!("there is no node `{id}`"),
                    );
                }
            }
            continue;
        };
        if from == to {
            p.top(
                format!("edges[{i}]"),
                format!("node `{}` cannot lead to itself", e.from),
            );
            continue;
        }
        if !seen.insert((from, to, e.when)) {
            p.top(
                format!("edges[{i}]"),
                format!("the edge {} -> {} is given twice", e.from, e.to),
            );
            continue;
        }
        let is_condition = matches!(nodes[from].kind, Kind::Condition { .. });
        match (is_condition, e.when) {
            (true, None) => p.top(
                format!("edges[{i}].when"),
                format!("`{}` is a condition node: say which branch the edge is, `when: true` or `when: false`", e.from),
            ),
            (false, Some(_)) => p.top(
                format!("edges[{i}].when"),
                format!("only edges out of a condition node have `when`, and `{}` is not one", e.from),
            ),
            _ => {}
        }
        incoming[to].push(edges.len());
        outgoing[from].push(edges.len());
        edges.push(Edge {
            from,
            to,
            when: e.when,
        });
    }
    for (i, n) in nodes.iter().enumerate().skip(1) {
        if incoming[i].is_empty() {
            p.node(
                &n.id,
                "id",
                format!(
                    "the node is unreachable: runs start at the first node (`{}`) and no edge leads here",
                    nodes[0].id
                ),
            );
        }
    }
    if let Some(cycle) = find_cycle(&nodes, &edges, &outgoing) {
        p.top(
            "edges",
            format!("the edges make a cycle: {}", cycle.join(" -> ")),
        );
        return None;
    }
    Some(Workflow {
        spec,
        nodes,
        index,
        edges,
        incoming,
        input_schema,
    })
}

/// A cycle as node ids (first repeated at the end), if the edges have one.
fn find_cycle(nodes: &[Node], edges: &[Edge], outgoing: &[Vec<usize>]) -> Option<Vec<String>> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; nodes.len()];
    let mut path = Vec::new();
    fn visit(
        n: usize,
        edges: &[Edge],
        outgoing: &[Vec<usize>],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[n] = 1;
        path.push(n);
        for &e in &outgoing[n] {
            let next = edges[e].to;
            if mark[next] == 1 {
                let start = path.iter().position(|&x| x == next).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(next);
                return Some(cycle);
            }
            if mark[next] == 0
                && let Some(c) = visit(next, edges, outgoing, mark, path)
            {
                return Some(c);
            }
        }
        path.pop();
        mark[n] = 2;
        None
    }
    for start in 0..nodes.len() {
        if mark[start] == 0
            && let Some(c) = visit(start, edges, outgoing, &mut mark, &mut path)
        {
            return Some(c.into_iter().map(|i| nodes[i].id.clone()).collect());
        }
    }
    None
}

fn type_label(t: InputType) -> &'static str {
    t.schema_type().unwrap_or("any value")
}

fn type_fits(t: InputType, v: &Value) -> bool {
    match t {
        InputType::Any => true,
        InputType::Number => v.is_number(),
        InputType::Integer => v.is_i64() || v.is_u64(),
        InputType::String => v.is_string(),
        InputType::Boolean => v.is_boolean(),
        InputType::Object => v.is_object(),
        InputType::Array => v.is_array(),
    }
}
