//! Multi-turn dialogs: steps that ask, check the answer, store it in a slot and branch;
//! global interrupts (cancel, help); a timeout. The state lives in the session
//! ([`DialogState`]), so a dialog survives a restart and continues on any server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flowbot_core::{Button, DialogState, Outbound, Turn};
use regex::Regex;
#[cfg(feature = "scripts")]
use rhai::{Dynamic, Scope};
use serde_json::{Map, Value, json};

use crate::compile::{Act, Compiler, RuleSet};
use crate::script::Ast;
use crate::spec::{DialogSpec, ExpectSpec};

/// Default for `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What a step accepts.
pub(crate) enum Expect {
    Text,
    Int(Option<f64>, Option<f64>),
    Float(Option<f64>, Option<f64>),
    Bool,
    Confirm,
    Duration,
    Choices(Vec<String>),
    Regex(Regex),
    Script(Arc<Ast>),
}

pub(crate) struct Step {
    pub(crate) name: String,
    ask: String,
    retry: Option<String>,
    expect: Expect,
    slot: String,
    branches: Vec<(Arc<Ast>, Option<usize>)>,
    /// `None`: the dialog ends after this step.
    next: Option<usize>,
}

/// A compiled dialog.
pub(crate) struct Dialog {
    pub(crate) name: String,
    timeout: Duration,
    cancel: Vec<String>,
    on_cancel: String,
    help: Vec<String>,
    pub(crate) steps: Vec<Step>,
    pub(crate) then: Vec<Act>,
}

/// Resolve a step name (or `end`) to its index.
fn target(names: &HashMap<&str, usize>, name: &str) -> Result<Option<usize>, String> {
    if name == "end" {
        return Ok(None);
    }
    names
        .get(name)
        .map(|i| Some(*i))
        .ok_or_else(|| format!("no step named '{name}' (use a step's name or 'end')"))
}

fn expect(c: &mut Compiler<'_>, e: &ExpectSpec) -> Result<Expect, String> {
    let given = [
        e.kind.is_some(),
        !e.choices.is_empty(),
        e.regex.is_some(),
        e.script.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return Err("expect: give one of type, choices, regex or script".into());
    }
    if (e.min.is_some() || e.max.is_some()) && !matches!(e.kind.as_deref(), Some("int" | "float")) {
        return Err("expect: min and max apply to type int or float".into());
    }
    if let Some(r) = &e.regex {
        let re = regex::RegexBuilder::new(&format!("^(?:{r})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|err| format!("expect regex: {err}"))?;
        return Ok(Expect::Regex(re));
    }
    if let Some(s) = &e.script {
        return Ok(Expect::Script(
            c.scripting
                .compile(s, true)
                .map_err(|err| format!("expect script: {err}"))?,
        ));
    }
    if !e.choices.is_empty() {
        return Ok(Expect::Choices(e.choices.clone()));
    }
    Ok(match e.kind.as_deref().unwrap_or("text") {
        "text" => Expect::Text,
        "int" => Expect::Int(e.min, e.max),
        "float" => Expect::Float(e.min, e.max),
        "bool" => Expect::Bool,
        "confirm" => Expect::Confirm,
        "duration" => Expect::Duration,
        other => {
            return Err(format!(
                "expect: unknown type '{other}'; use text, int, float, bool, confirm or duration"
            ));
        }
    })
}

pub(crate) fn compile(c: &mut Compiler<'_>, d: &DialogSpec) -> Result<Dialog, String> {
    if d.steps.is_empty() {
        return Err("a dialog needs at least one [[dialog.step]]".into());
    }
    let timeout = match &d.timeout {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| format!("timeout '{t}' is not a duration ({e})"))?,
        None => DEFAULT_TIMEOUT,
    };
    let mut names = HashMap::new();
    for (i, s) in d.steps.iter().enumerate() {
        if s.name == "end" {
            return Err("'end' is reserved; name the step otherwise".into());
        }
        if names.insert(s.name.as_str(), i).is_some() {
            return Err(format!("step '{}' appears twice", s.name));
        }
    }
    let base = format!("dialog:{}", d.name);
    let mut steps = Vec::with_capacity(d.steps.len());
    for (i, s) in d.steps.iter().enumerate() {
        let err = |e: String| format!("step '{}': {e}", s.name);
        let ask = c
            .template(format!("{base}:{}:ask", s.name), &s.ask)
            .map_err(err)?;
        let retry = match &s.retry {
            Some(r) => Some(
                c.template(format!("{base}:{}:retry", s.name), r)
                    .map_err(err)?,
            ),
            None => None,
        };
        let mut branches = Vec::new();
        for b in &s.branch {
            let ast = c
                .scripting
                .compile(&b.when, true)
                .map_err(|e| err(format!("branch: {e}")))?;
            branches.push((ast, target(&names, &b.goto).map_err(err)?));
        }
        let next = match &s.next {
            Some(n) => target(&names, n).map_err(err)?,
            None => (i + 1 < d.steps.len()).then_some(i + 1),
        };
        steps.push(Step {
            name: s.name.clone(),
            ask,
            retry,
            expect: expect(c, &s.expect).map_err(err)?,
            slot: s.slot.clone().unwrap_or_else(|| s.name.clone()),
            branches,
            next,
        });
    }
    let mut then = Vec::with_capacity(d.then.len());
    for (i, a) in d.then.iter().enumerate() {
        then.push(
            c.action(&base, i, a)
                .map_err(|m| format!("action {}: {m}", i + 1))?,
        );
    }
    Ok(Dialog {
        name: d.name.clone(),
        timeout,
        cancel: d.cancel.iter().map(|w| w.trim().to_lowercase()).collect(),
        on_cancel: c.template(format!("{base}:on_cancel"), &d.on_cancel)?,
        help: d.help.iter().map(|w| w.trim().to_lowercase()).collect(),
        steps,
        then,
    })
}

/// Check `answer` against `e`; the value to store, or why it does not fit.
fn accept(
    set: &crate::RuleSet,
    e: &Expect,
    answer: &str,
    slots: &Map<String, Value>,
) -> Result<Value, String> {
    let a = answer.trim();
    let lower = a.to_lowercase();
    let yes_no = || match lower.as_str() {
        "yes" | "y" | "true" | "ok" | "sure" => Some(true),
        "no" | "n" | "false" | "nope" => Some(false),
        _ => None,
    };
    let in_range = |v: f64, min: &Option<f64>, max: &Option<f64>| {
        min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m)
    };
    match e {
        Expect::Text if !a.is_empty() => Ok(Value::String(a.to_owned())),
        Expect::Text => Err("an answer".into()),
        Expect::Int(min, max) => a
            .parse::<i64>()
            .ok()
            .filter(|v| in_range(*v as f64, min, max))
            .map(Value::from)
            .ok_or_else(|| range_hint("a whole number", min, max)),
        Expect::Float(min, max) => a
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && in_range(*v, min, max))
            .map(Value::from)
            .ok_or_else(|| range_hint("a number", min, max)),
        Expect::Bool | Expect::Confirm => {
            yes_no().map(Value::Bool).ok_or_else(|| "yes or no".into())
        }
        Expect::Duration => humantime::parse_duration(a)
            .map(|d| json!({ "text": a, "secs": d.as_secs_f64() }))
            .map_err(|_| "a duration, like 10m or 1h 30m".into()),
        Expect::Choices(choices) => choices
            .iter()
            .find(|c| c.to_lowercase() == lower)
            .map(|c| Value::String(c.clone()))
            .ok_or_else(|| format!("one of: {}", choices.join(", "))),
        Expect::Regex(re) if re.is_match(a) => Ok(Value::String(a.to_owned())),
        Expect::Regex(_) => Err("an answer in the expected form".into()),
        Expect::Script(ast) => match script_says(set, ast, a, slots)? {
            Ok(true) => Ok(Value::String(a.to_owned())),
            Ok(false) => Err("a different answer".into()),
            Err(kind) => Err(format!("(the check returned {kind}, not true or false)")),
        },
    }
}

fn range_hint(what: &str, min: &Option<f64>, max: &Option<f64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{what} from {a} to {b}"),
        (Some(a), None) => format!("{what} of at least {a}"),
        (None, Some(b)) => format!("{what} of at most {b}"),
        (None, None) => what.to_owned(),
    }
}

/// What a dialog script (a check or a branch's condition) says of `answer` with `slots`:
/// true or false, or the kind of value it gave instead.
#[cfg(feature = "scripts")]
fn script_says(
    set: &RuleSet,
    ast: &Ast,
    answer: &str,
    slots: &Map<String, Value>,
) -> Result<Result<bool, String>, String> {
    let mut scope = dialog_scope(answer, slots)?;
    Ok(set
        .scripting
        .eval(&mut scope, ast)?
        .as_bool()
        .map_err(str::to_owned))
}

#[cfg(not(feature = "scripts"))]
fn script_says(
    _: &RuleSet,
    ast: &Ast,
    _: &str,
    _: &Map<String, Value>,
) -> Result<Result<bool, String>, String> {
    crate::script::never(ast)
}

/// `answer` and `slots` for dialog scripts; the other script variables are empty.
#[cfg(feature = "scripts")]
fn dialog_scope(answer: &str, slots: &Map<String, Value>) -> Result<Scope<'static>, String> {
    let mut scope = Scope::new();
    for name in crate::script::SCRIPT_VARIABLES {
        let v = match name {
            "answer" | "text" => Dynamic::from(rhai::ImmutableString::from(answer)),
            "slots" => rhai::serde::to_dynamic(slots).map_err(|e| e.to_string())?,
            _ => Dynamic::UNIT,
        };
        scope.push_constant_dynamic(name, v);
    }
    Ok(scope)
}

/// The question of `step`, with buttons for its choices.
pub(crate) fn question(
    set: &crate::RuleSet,
    dialog: &Dialog,
    step: usize,
    ctx: &minijinja::Value,
    prefix: Option<String>,
) -> Result<Outbound, String> {
    let s = &dialog.steps[step];
    let mut text = crate::route::render(set, &s.ask, ctx)?;
    if let Some(p) = prefix {
        text = format!("{p}\n{text}");
    }
    let mut out = Outbound::text(text);
    let labels: Vec<String> = match &s.expect {
        Expect::Choices(c) => c.clone(),
        Expect::Bool | Expect::Confirm => vec!["yes".into(), "no".into()],
        _ => Vec::new(),
    };
    out.buttons = labels
        .into_iter()
        .map(|l| Button {
            label: l.clone(),
            value: l,
        })
        .collect();
    Ok(out)
}

/// What a dialog turn decided.
pub(crate) enum Turned {
    /// The dialog took the message: these replies; run `finish` actions if set.
    Handled(Vec<Outbound>, Option<Map<String, Value>>),
    /// No dialog (or it timed out, or no longer exists): route the message by the rules.
    NotMine,
}

/// Give the message to the session's active dialog, if there is one.
pub(crate) fn take(
    set: &crate::RuleSet,
    turn: &Turn,
    answer: Option<&str>,
    base_ctx: &Value,
) -> Result<Turned, String> {
    let (state, updated) = {
        let s = turn.session.lock();
        (s.dialog.clone(), s.updated_at)
    };
    let Some(state) = state else {
        return Ok(Turned::NotMine);
    };
    let clear = || turn.session.lock().dialog = None;
    let Some(dialog) = set.dialogs.get(&state.name) else {
        // The dialog was removed by a reload.
        clear();
        return Ok(Turned::NotMine);
    };
    let idle = flowbot_core::clock::now()
        .signed_duration_since(updated)
        .to_std()
        .unwrap_or_default();
    if idle > dialog.timeout {
        clear();
        return Ok(Turned::NotMine);
    }
    let Some(step) = dialog.steps.iter().position(|s| s.name == state.step) else {
        clear();
        return Ok(Turned::NotMine);
    };
    let Some(answer) = answer else {
        return Ok(Turned::NotMine);
    };
    let mut slots = state.data.clone();
    let ctx = |slots: &Map<String, Value>| {
        let mut v = base_ctx.clone();
        v["slots"] = Value::Object(slots.clone());
        minijinja::Value::from_serialize(&v)
    };
    let lower = answer.trim().to_lowercase();
    if dialog.cancel.contains(&lower) {
        clear();
        let text = crate::route::render(set, &dialog.on_cancel, &ctx(&slots))?;
        return Ok(Turned::Handled(vec![Outbound::text(text)], None));
    }
    let s = &dialog.steps[step];
    if dialog.help.contains(&lower) {
        let hint = format!(
            "(Answer the question, or say {} to stop.)",
            dialog.cancel.first().map_or("cancel", String::as_str)
        );
        let q = question(set, dialog, step, &ctx(&slots), Some(hint))?;
        return Ok(Turned::Handled(vec![q], None));
    }
    let value = match accept(set, &s.expect, answer, &slots) {
        Ok(v) => v,
        Err(wanted) => {
            let prefix = match &s.retry {
                Some(r) => crate::route::render(set, r, &ctx(&slots))?,
                None => format!("Please answer with {wanted}."),
            };
            let q = question(set, dialog, step, &ctx(&slots), Some(prefix))?;
            return Ok(Turned::Handled(vec![q], None));
        }
    };
    if matches!(s.expect, Expect::Confirm) && value == Value::Bool(false) {
        clear();
        let text = crate::route::render(set, &dialog.on_cancel, &ctx(&slots))?;
        return Ok(Turned::Handled(vec![Outbound::text(text)], None));
    }
    slots.insert(s.slot.clone(), value);
    let mut next = s.next;
    for (cond, goto) in &s.branches {
        if script_says(set, cond, answer.trim(), &slots)?
            .map_err(|k| format!("branch returned {k}, not true or false"))?
        {
            next = *goto;
            break;
        }
    }
    match next {
        Some(n) => {
            turn.session.lock().dialog = Some(DialogState {
                name: dialog.name.clone(),
                step: dialog.steps[n].name.clone(),
                data: slots.clone(),
            });
            Ok(Turned::Handled(
                vec![question(set, dialog, n, &ctx(&slots), None)?],
                None,
            ))
        }
        None => {
            clear();
            Ok(Turned::Handled(Vec::new(), Some(slots)))
        }
    }
}

/// Start `dialog`: the session enters its first step, whose question is returned.
pub(crate) fn start(
    set: &crate::RuleSet,
    turn: &Turn,
    name: &str,
    base_ctx: &Value,
) -> Result<Outbound, String> {
    let dialog = set
        .dialogs
        .get(name)
        .ok_or_else(|| format!("no dialog named '{name}'"))?;
    turn.session.lock().dialog = Some(DialogState {
        name: dialog.name.clone(),
        step: dialog.steps[0].name.clone(),
        data: Map::new(),
    });
    let mut v = base_ctx.clone();
    v["slots"] = json!({});
    question(set, dialog, 0, &minijinja::Value::from_serialize(&v), None)
}

/// The dialogs each dialog's actions start, to find cycles.
pub(crate) fn check_cycles(dialogs: &HashMap<String, Dialog>) -> Result<(), String> {
    fn starts(acts: &[Act]) -> Vec<&str> {
        acts.iter()
            .filter_map(|a| match a {
                Act::Dialog(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }
    fn visit<'a>(
        name: &'a str,
        dialogs: &'a HashMap<String, Dialog>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|p| *p == name) {
            let mut cycle: Vec<&str> = path[at..].to_vec();
            cycle.push(name);
            return Err(format!(
                "dialogs start each other in a cycle: {}",
                cycle.join(" → ")
            ));
        }
        if done.contains(&name) {
            return Ok(());
        }
        path.push(name);
        if let Some(d) = dialogs.get(name) {
            for next in starts(&d.then) {
                visit(next, dialogs, path, done)?;
            }
        }
        path.pop();
        done.push(name);
        Ok(())
    }
    let mut names: Vec<&String> = dialogs.keys().collect();
    names.sort();
    let mut done = Vec::new();
    for n in names {
        visit(n, dialogs, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}
