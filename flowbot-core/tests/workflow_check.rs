//! Workflow definitions: parsing and validation, with every problem naming its node and field.
#![cfg(feature = "workflows")]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use std::collections::BTreeSet;

use flowbot_core::ActionRegistry;
use flowbot_core::workflow::{CheckContext, Format, Problem, Workflow, WorkflowSpec};
use serde_json::json;

fn check(yaml: &str) -> Result<Workflow, Vec<Problem>> {
    let spec = WorkflowSpec::parse(yaml, Format::Yaml).expect("the test definition parses");
    let actions = ActionRegistry::with_builtins();
    let secrets: BTreeSet<String> = ["API_TOKEN".to_owned()].into();
    Workflow::check(
        spec,
        CheckContext {
            actions: &actions,
            scripts: None,
            secrets: &secrets,
        },
    )
}

/// The problems, as text, for assertions.
fn problems(yaml: &str) -> Vec<String> {
    match check(yaml) {
        Ok(_) => Vec::new(),
        Err(p) => p.iter().map(ToString::to_string).collect(),
    }
}

fn assert_problem(yaml: &str, expected: &str) {
    let found = problems(yaml);
    assert!(
        found.iter().any(|p| p.contains(expected)),
        "expected a problem containing {expected:?}, got {found:#?}"
    );
}

const VALID: &str = r#"
name: greet
description: Say hello, wait, decide, say more.
inputs:
  who: { type: string, required: true }
  times: { type: integer, default: 1 }
max_concurrency: 3
retry: { max_attempts: 2, delay: 10ms }
nodes:
  - id: hello
    action: log
    with: { message: "hello {{ inputs.who }}" }
  - id: pause
    delay: 5ms
  - id: many
    condition: { expr: "inputs.times > 1" }
  - id: loud
    action: kv_set
    with: { key: "greeted/{{ inputs.who }}", value: "{{ inputs.times }}" }
  - id: quiet
    action: log
    with: { message: "once", level: debug }
  - id: done
    join: all
edges:
  - { from: hello, to: pause }
  - { from: pause, to: many }
  - { from: many, to: loud, when: true }
  - { from: many, to: quiet, when: false }
  - { from: loud, to: done }
  - { from: quiet, to: done }
triggers:
  - cron: "0 9 * * 1-5"
    timezone: Europe/Paris
    input: { who: team }
  - hook: greet
    token_secret: API_TOKEN
  - event: user.joined
output: { greeted: "{{ inputs.who }}", loud: "{{ nodes.loud.status }}" }
"#;

#[test]
fn a_valid_definition_checks_and_keeps_its_parts() {
    let wf = check(VALID).unwrap_or_else(|p| panic!("valid definition rejected: {p:#?}"));
    assert_eq!(wf.name(), "greet");
    assert_eq!(wf.spec().nodes.len(), 6);
    // The same definition as JSON parses to the same spec.
    let json = serde_json::to_string(&wf.spec().to_value()).unwrap();
    let again = WorkflowSpec::parse(&json, Format::Json).unwrap();
    assert_eq!(&again, wf.spec());
}

#[test]
fn inputs_get_defaults_and_are_type_checked() {
    let wf = check(VALID).unwrap();
    assert_eq!(
        wf.prepare_inputs(json!({"who": "ada"})).unwrap(),
        json!({"who": "ada", "times": 1})
    );
    let missing = wf.prepare_inputs(json!({})).unwrap_err().0;
    assert!(missing.contains("who"), "{missing}");
    let wrong = wf.prepare_inputs(json!({"who": 5})).unwrap_err().0;
    assert!(wrong.contains("inputs.who"), "{wrong}");
    let unknown = wf
        .prepare_inputs(json!({"who": "a", "extra": 1}))
        .unwrap_err()
        .0;
    assert!(unknown.contains("extra"), "{unknown}");
    let not_object = wf.prepare_inputs(json!([1])).unwrap_err().0;
    assert!(not_object.contains("JSON object"), "{not_object}");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = WorkflowSpec::parse("name: x\nnodes:\n  - id: a\n    acton: log\n", Format::Yaml)
        .unwrap_err();
    assert_eq!(e.line, Some(4));
    assert!(
        e.message.contains("acton") && e.message.contains("line 4"),
        "{e}"
    );
    let e = WorkflowSpec::parse("{\"name\": \"x\", \"nodes\": [}", Format::Json).unwrap_err();
    assert_eq!((e.line, e.column.is_some()), (Some(1), true));
    assert!(e.message.contains("line 1"), "{e}");
}

#[test]
fn cycles_are_named() {
    assert_problem(
        r#"
name: loop
nodes:
  - { id: a, action: log, with: { message: a } }
  - { id: b, action: log, with: { message: b } }
  - { id: c, action: log, with: { message: c } }
edges: [ { from: a, to: b }, { from: b, to: c }, { from: c, to: b } ]
"#,
        "the edges make a cycle: b -> c -> b",
    );
}

#[test]
fn unreachable_nodes_are_named() {
    assert_problem(
        r#"
name: island
nodes:
  - { id: a, action: log, with: { message: a } }
  - { id: lonely, action: log, with: { message: b } }
"#,
        "node `lonely`, field `id`: the node is unreachable",
    );
}

#[test]
fn unknown_actions_list_the_registered_ones() {
    assert_problem(
        r#"
name: x
nodes: [ { id: a, action: no_such_thing } ]
"#,
        "node `a`, field `action`: unknown action `no_such_thing` (registered:",
    );
}

#[test]
fn action_inputs_are_checked_against_the_action_schema() {
    let yaml = r#"
name: x
inputs:
  count: { type: integer }
nodes:
  - id: missing
    action: log
    with: { level: info }
  - id: unknown
    action: log
    with: { message: hi, colour: red }
  - id: literal
    action: log
    with: { message: hi, level: loud }
  - id: typed
    action: log
    with: { message: "{{ inputs.count }}" }
edges: [ { from: missing, to: unknown }, { from: unknown, to: literal }, { from: literal, to: typed } ]
"#;
    assert_problem(
        yaml,
        "node `missing`, field `with.message`: `log` needs `message`",
    );
    assert_problem(
        yaml,
        "node `unknown`, field `with.colour`: `log` has no input `colour`",
    );
    assert_problem(yaml, "node `literal`, field `with.level`: `log` rejects it");
    assert_problem(
        yaml,
        "node `typed`, field `with.message`: input `count` is integer, but `log` wants string",
    );
}

#[test]
fn templates_are_checked() {
    let yaml = r#"
name: x
nodes:
  - id: a
    action: log
    with: { message: "{{ inputs.who " }
  - id: b
    action: log
    with: { message: "{{ nodes.c.output }}" }
  - id: c
    action: log
    with: { message: "{{ secrets.NOPE }}" }
  - id: d
    action: log
    with: { message: "{{ inputs.ghost }}" }
edges: [ { from: a, to: b }, { from: b, to: c }, { from: c, to: d } ]
"#;
    assert_problem(yaml, "node `a`, field `with.message`: syntax error");
    assert_problem(
        yaml,
        "node `b`, field `with.message`: `nodes.c`: node `c` does not always run before this one",
    );
    assert_problem(
        yaml,
        "node `c`, field `with.message`: `secrets.NOPE`: no secret named `NOPE` is configured",
    );
    assert_problem(
        yaml,
        "node `d`, field `with.message`: `inputs.ghost`: the workflow has no input `ghost`",
    );
    assert_problem(
        r#"
name: x
nodes:
  - { id: a, action: log, with: { message: "{{ whatever }}" } }
"#,
        "unknown variable `whatever`",
    );
}

#[test]
fn edges_and_branches_are_checked() {
    let yaml = r#"
name: x
nodes:
  - { id: a, condition: { expr: "true" } }
  - { id: b, action: log, with: { message: b } }
  - { id: c, action: log, with: { message: c } }
edges:
  - { from: a, to: b }
  - { from: b, to: c, when: true }
  - { from: a, to: ghost }
  - { from: b, to: b }
"#;
    assert_problem(yaml, "field `edges[0].when`: `a` is a condition node");
    assert_problem(
        yaml,
        "field `edges[1].when`: only edges out of a condition node",
    );
    assert_problem(yaml, "field `edges[2].to`: there is no node `ghost`");
    assert_problem(yaml, "field `edges[3]`: node `b` cannot lead to itself");
}

#[test]
fn nodes_are_checked() {
    let yaml = r#"
name: "bad name!"
max_concurrency: 0
nodes:
  - { id: a, action: log, with: { message: a }, delay: 5s }
  - { id: a, action: log, with: { message: dup } }
  - { id: nothing }
  - { id: slow, delay: soon }
  - { id: retrying, action: log, with: { message: r }, retry: { max_attempts: 0 } }
  - { id: script, script: "1 + 1" }
  - { id: timed, action: log, with: { message: t }, timeout: forever }
edges: [ { from: a, to: nothing }, { from: a, to: slow }, { from: a, to: retrying }, { from: a, to: script }, { from: a, to: timed } ]
"#;
    assert_problem(
        yaml,
        "field `name`: 'bad name!' is not a valid workflow name",
    );
    assert_problem(yaml, "field `max_concurrency`: must be at least 1");
    assert_problem(yaml, "node `a`, field `delay`: a node does one thing");
    assert_problem(yaml, "node `a`, field `id`: two nodes have this id");
    assert_problem(
        yaml,
        "node `nothing`, field `action`: the node does nothing",
    );
    assert_problem(yaml, "node `slow`, field `delay`: 'soon' is not a duration");
    assert_problem(yaml, "node `retrying`, field `retry.max_attempts`");
    assert_problem(
        yaml,
        "node `script`, field `script`: scripts are not available",
    );
    assert_problem(
        yaml,
        "node `timed`, field `timeout`: 'forever' is not a duration",
    );
}

#[test]
fn triggers_are_checked() {
    let yaml = r#"
name: x
inputs:
  who: { type: string, required: true }
nodes: [ { id: a, action: log, with: { message: a } } ]
triggers:
  - cron: "61 * * * *"
    input: { who: x }
  - cron: "0 * * * *"
    timezone: Mars/Olympus
    input: { who: x }
  - cron: "0 * * * *"
  - hook: open
  - hook: wrong
    token_secret: MISSING
  - event: e
    cron: "0 * * * *"
"#;
    assert_problem(yaml, "field `triggers[0].cron`");
    assert_problem(yaml, "field `triggers[1].cron`");
    assert_problem(yaml, "field `triggers[2].input`");
    assert_problem(
        yaml,
        "field `triggers[3].hook`: a hook needs `token_secret`",
    );
    assert_problem(
        yaml,
        "field `triggers[4].token_secret`: no secret named `MISSING`",
    );
    assert_problem(yaml, "field `triggers[5]`: a trigger has exactly one of");
}

#[test]
fn input_defaults_must_fit_their_type() {
    assert_problem(
        r#"
name: x
inputs:
  n: { type: integer, default: "three" }
nodes: [ { id: a, action: log, with: { message: a } } ]
"#,
        "field `inputs.n.default`: the default is string, not integer",
    );
}

#[test]
fn references_to_outputs_are_checked_against_their_shape() {
    let yaml = r#"
name: x
nodes:
  - { id: read, action: kv_get, with: { key: k } }
  - { id: big, condition: { expr: "nodes.read.output.value > 3" } }
  - { id: typo, action: log, with: { message: "{{ nodes.read.output.valeu }}" } }
  - { id: branch, action: log, with: { message: "{{ nodes.big.output.reslt }}" } }
edges: [ { from: read, to: big }, { from: big, to: typo, when: true }, { from: big, to: branch, when: false } ]
"#;
    assert_problem(
        yaml,
        "node `typo`, field `with.message`: `nodes.read.output.valeu`: action `kv_get` has no output field `valeu` (it has: value)",
    );
    assert_problem(
        yaml,
        "node `branch`, field `with.message`: `nodes.big.output.reslt`: a condition has no output field `reslt` (it has: result)",
    );
    let found = problems(yaml);
    assert_eq!(found.len(), 2, "the right references pass: {found:#?}");
}
