//! The checks of each node against the environment: actions and their schemas, templates
//! and the variables they use, references to other nodes' outputs, scripts.

use super::*;

/// Where a template may look: which nodes' outputs (`None`: any node).
pub(super) struct Scope<'a> {
    wf: &'a Workflow,
    nodes: Option<BTreeSet<usize>>,
    secrets: &'a BTreeSet<String>,
    /// The output fields each node is known to have (by node index; absent: any).
    outputs: &'a HashMap<usize, (String, BTreeSet<String>)>,
}

impl Scope<'_> {
    /// Check the variables a template or expression uses.
    fn check_vars(&self, vars: impl IntoIterator<Item = String>) -> Result<(), String> {
        for var in vars {
            let mut parts = var.split('.');
            let root = parts.next().unwrap_or_default();
            let second = parts.next();
            match root {
                "inputs" => {
                    if let Some(name) = second
                        && !self.wf.spec.inputs.contains_key(name)
                    {
                        return Err(format!(
                            "`inputs.{name}`: the workflow has no input `{name}`"
                        ));
                    }
                }
                "nodes" => {
                    if let Some(id) = second {
                        let Some(&i) = self.wf.index.get(id) else {
                            return Err(format!("`nodes.{id}`: there is no node `{id}`"));
                        };
                        if let Some(allowed) = &self.nodes
                            && !allowed.contains(&i)
                        {
                            return Err(format!(
                                "`nodes.{id}`: node `{id}` does not always run before this one (no path of edges leads from it here)"
                            ));
                        }
                        let mut rest = parts.clone();
                        if let (Some("output"), Some(field)) = (rest.next(), rest.next())
                            && let Some((what, fields)) = self.outputs.get(&i)
                            && !fields.contains(field)
                        {
                            let known: Vec<&str> = fields.iter().map(String::as_str).collect();
                            return Err(format!(
                                "`nodes.{id}.output.{field}`: {what} has no output field `{field}` (it has: {})",
                                known.join(", ")
                            ));
                        }
                    }
                }
                "secrets" => {
                    if let Some(name) = second
                        && !self.secrets.contains(name)
                    {
                        return Err(format!(
                            "`secrets.{name}`: no secret named `{name}` is configured"
                        ));
                    }
                }
                "run" => {}
                r if template::GLOBALS.contains(&r) => {}
                other => {
                    return Err(format!(
                        "unknown variable `{other}`: templates see inputs, nodes, run and secrets"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Check every template in `value` (strings with `{{` or `{%`), reporting under `field`.
    fn check_value(&self, node: &str, field: &str, value: &Value, p: &mut Problems) {
        match value {
            Value::String(s) => {
                if let Err(e) = template::variables(s).and_then(|vars| self.check_vars(vars)) {
                    p.node(node, field, e);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.check_value(node, &format!("{field}[{i}]"), v, p);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    self.check_value(node, &format!("{field}.{k}"), v, p);
                }
            }
            _ => {}
        }
    }
}

/// The output fields of the nodes whose output has a fixed shape: actions whose output
/// schema lists its properties (and does not allow others), and the built-in node kinds.
pub(super) fn output_fields(
    wf: &Workflow,
    actions: &ActionRegistry,
) -> HashMap<usize, (String, BTreeSet<String>)> {
    let infos: HashMap<String, Value> = actions
        .list()
        .into_iter()
        .map(|a| (a.name, a.output_schema))
        .collect();
    let set = |fields: &[&str]| {
        fields
            .iter()
            .map(|f| (*f).to_owned())
            .collect::<BTreeSet<_>>()
    };
    let mut out = HashMap::new();
    for (i, n) in wf.nodes.iter().enumerate() {
        let known = match &n.kind {
            Kind::Action { name, .. } => infos.get(name).and_then(|schema| {
                let props = schema.get("properties")?.as_object()?;
                let open = schema
                    .get("additionalProperties")
                    .is_some_and(|a| a != &Value::Bool(false));
                (!open).then(|| (format!("action `{name}`"), props.keys().cloned().collect()))
            }),
            Kind::Condition { .. } => Some(("a condition".to_owned(), set(&["result"]))),
            Kind::Delay(_) => Some(("a delay".to_owned(), set(&["waited_ms"]))),
            Kind::Until(_) => Some(("a delay".to_owned(), set(&["until"]))),
            Kind::Wait { .. } => Some((
                "a wait".to_owned(),
                set(&["event", "key", "payload", "timed_out"]),
            )),
            Kind::Script(_) | Kind::Workflow { .. } | Kind::Join => None,
        };
        if let Some(k) = known {
            out.insert(i, k);
        }
    }
    out
}

pub(super) fn check_nodes(wf: &Workflow, cx: CheckContext<'_>, p: &mut Problems) {
    let outputs = output_fields(wf, cx.actions);
    for (i, n) in wf.nodes.iter().enumerate() {
        let scope = Scope {
            wf,
            nodes: Some(wf.ancestors(i)),
            secrets: cx.secrets,
            outputs: &outputs,
        };
        match &n.kind {
            Kind::Action { name, with } => {
                if name == super::LLM_ACTION && !cx.actions.contains(name) {
                    p.node(
                        &n.id,
                        "llm",
                        "an `llm` node needs a language model: configure one ([llm] in the server's config, or register an `llm` action)",
                    );
                } else if !cx.actions.contains(name) {
                    let mut known: Vec<String> =
                        cx.actions.list().into_iter().map(|a| a.name).collect();
                    known.sort();
                    p.node(
                        &n.id,
                        "action",
                        format!("unknown action `{name}` (registered: {})", known.join(", ")),
                    );
                } else {
                    check_action_input(wf, &n.id, name, with, cx.actions, p);
                }
                scope.check_value(&n.id, "with", with, p);
            }
            Kind::Workflow { with, .. } => scope.check_value(&n.id, "with", with, p),
            Kind::Condition {
                source,
                script: false,
            } => {
                if let Err(e) =
                    template::expression_variables(source).and_then(|v| scope.check_vars(v))
                {
                    p.node(&n.id, "condition.expr", e);
                }
            }
            Kind::Condition {
                source: s,
                script: true,
            }
            | Kind::Script(s) => {
                let (field, expression) = match &n.kind {
                    Kind::Script(_) => ("script", false),
                    _ => ("condition.script", true),
                };
                match cx.scripts {
                    Some(engine) => {
                        if let Err(e) = engine.check(s, expression, &SCRIPT_VARIABLES) {
                            p.node(&n.id, field, e);
                        }
                    }
                    None => p.node(
                        &n.id,
                        field,
                        "scripts are not available: this engine was built without a script engine",
                    ),
                }
            }
            Kind::Until(u) => scope.check_value(&n.id, "until", &Value::String(u.clone()), p),
            Kind::Wait { key, .. } => {
                scope.check_value(&n.id, "wait.key", &Value::String(key.clone()), p);
            }
            Kind::Delay(_) | Kind::Join => {}
        }
    }
    if let Some(out) = &wf.spec.output {
        let scope = Scope {
            wf,
            nodes: None,
            secrets: cx.secrets,
            outputs: &outputs,
        };
        let mut q = Problems::default();
        scope.check_value("", "output", out, &mut q);
        for mut problem in q.0 {
            problem.node = None;
            p.0.push(problem);
        }
    }
}

/// Check an action node's `with` against the action's input schema as far as can be known
/// before the run: required fields, unknown fields, literal values, and templates that are
/// exactly one typed input.
pub(super) fn check_action_input(
    wf: &Workflow,
    node: &str,
    action: &str,
    with: &Value,
    actions: &ActionRegistry,
    p: &mut Problems,
) {
    let Some(info) = actions.list().into_iter().find(|a| a.name == action) else {
        return;
    };
    let schema = &info.input_schema;
    let Value::Object(given) = with else {
        if !template::is_template(with) {
            p.node(
                node,
                "with",
                format!(
                    "the input of `{action}` is a JSON object, not {}",
                    json_type(with)
                ),
            );
        }
        return;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !given.contains_key(r) {
                p.node(node, format!("with.{r}"), format!("`{action}` needs `{r}`"));
            }
        }
    }
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (key, value) in given {
        let field = format!("with.{key}");
        let Some(prop) = props.and_then(|ps| ps.get(key)) else {
            if closed {
                let mut known: Vec<&str> = props
                    .map(|ps| ps.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                known.sort_unstable();
                p.node(
                    node,
                    field,
                    format!(
                        "`{action}` has no input `{key}` (it takes: {})",
                        known.join(", ")
                    ),
                );
            }
            continue;
        };
        if template::contains_template(value) {
            // `{{ inputs.x }}` alone: the input's declared type must suit the field.
            if let (Some(name), Some(want)) = (
                template::sole_input(value),
                prop.get("type").and_then(Value::as_str),
            ) && let Some(input) = wf.spec.inputs.get(name)
                && let Some(have) = input.ty.schema_type()
                && !(have == want || (have == "integer" && want == "number"))
            {
                p.node(
                    node,
                    field,
                    format!("input `{name}` is {have}, but `{action}` wants {want} for `{key}`"),
                );
            }
            continue;
        }
        match jsonschema::validator_for(prop) {
            Ok(v) => {
                if let Some(e) = v.iter_errors(value).next() {
                    p.node(node, field, format!("`{action}` rejects it: {e}"));
                }
            }
            Err(e) => {
                tracing::debug!(action, key, error = %e, "input property schema did not compile; not checked")
            }
        }
    }
}
