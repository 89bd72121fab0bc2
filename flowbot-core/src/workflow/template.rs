//! Templates in node parameters (minijinja). A string that is exactly one `{{ expression }}`
//! gives the expression's value with its JSON type (a number stays a number, an object an
//! object); any other string with `{{` or `{%` renders to a string.

use std::collections::HashSet;
use std::sync::LazyLock;

use minijinja::Environment;
use serde_json::Value;

/// Names minijinja provides itself, allowed in templates besides the workflow's variables.
pub(crate) const GLOBALS: [&str; 5] = ["range", "dict", "namespace", "debug", "loop"];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    env
});

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(d) = e.detail()
        && !s.contains(d)
    {
        s = format!("{s}: {d}");
    }
    s
}

/// True when the string holds template syntax.
pub(crate) fn has_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The expression inside a string that is exactly `{{ expression }}`.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

/// True when `v` is a string with template syntax.
pub(crate) fn is_template(v: &Value) -> bool {
    v.as_str().is_some_and(has_syntax)
}

/// True when `v` holds template syntax anywhere.
pub(crate) fn contains_template(v: &Value) -> bool {
    match v {
        Value::String(s) => has_syntax(s),
        Value::Array(a) => a.iter().any(contains_template),
        Value::Object(m) => m.values().any(contains_template),
        _ => false,
    }
}

/// `Some("x")` when `v` is exactly `{{ inputs.x }}`.
pub(crate) fn sole_input(v: &Value) -> Option<&str> {
    let e = sole_expression(v.as_str()?)?;
    let name = e.strip_prefix("inputs.")?;
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(name)
}

/// The variables a string uses (nothing for a plain string); a syntax error as a message.
pub(crate) fn variables(s: &str) -> Result<HashSet<String>, String> {
    if !has_syntax(s) {
        return Ok(HashSet::new());
    }
    if let Some(e) = sole_expression(s) {
        return expression_variables(e);
    }
    crate::templates::check(s).map_err(|e| e.to_string())?;
    let t = ENV.template_from_str(s).map_err(|e| describe(&e))?;
    Ok(t.undeclared_variables(true))
}

/// The variables an expression uses; a syntax error as a message.
pub(crate) fn expression_variables(e: &str) -> Result<HashSet<String>, String> {
    crate::templates::check_expression(e).map_err(|e| e.to_string())?;
    let expr = ENV.compile_expression(e).map_err(|e| describe(&e))?;
    Ok(expr.undeclared_variables(true))
}

/// Evaluate an expression to JSON.
pub(crate) fn eval(expr: &str, cx: &minijinja::Value) -> Result<Value, String> {
    crate::templates::check_expression(expr).map_err(|e| e.to_string())?;
    let e = ENV.compile_expression(expr).map_err(|e| describe(&e))?;
    let v = e.eval(cx).map_err(|e| describe(&e))?;
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// Evaluate an expression for its truth (minijinja's rules: empty and zero are false).
pub(crate) fn truth(expr: &str, cx: &minijinja::Value) -> Result<bool, String> {
    crate::templates::check_expression(expr).map_err(|e| e.to_string())?;
    let e = ENV.compile_expression(expr).map_err(|e| describe(&e))?;
    e.eval(cx).map(|v| v.is_true()).map_err(|e| describe(&e))
}

/// Render every template in `v`.
pub(crate) fn render(v: &Value, cx: &minijinja::Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if has_syntax(s) => match sole_expression(s) {
            Some(e) => eval(e, cx)?,
            None => {
                crate::templates::check(s).map_err(|e| e.to_string())?;
                Value::String(ENV.render_str(s, cx).map_err(|e| describe(&e))?)
            }
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render(i, cx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, cx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Replace every occurrence of a secret's value in the strings of `v` with `[secret:NAME]`.
pub(crate) fn redact<'a>(
    v: &mut Value,
    secrets: &(impl Iterator<Item = (&'a String, &'a String)> + Clone),
) {
    match v {
        Value::String(s) => {
            for (name, value) in secrets.clone() {
                if value.len() >= 4 && s.contains(value.as_str()) {
                    *s = s.replace(value.as_str(), &format!("[secret:{name}]"));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secrets)),
        Value::Object(m) => m.values_mut().for_each(|i| redact(i, secrets)),
        _ => {}
    }
}
