//! Simple rhai conditions, decided without the interpreter.
//!
//! Most conditions operators write are small boolean expressions over the message:
//! `text.len() > 10 && user != "blocked"`, `session.step == 2`, `text.starts_with("!")`.
//! Such an expression is translated, once when the rule is compiled, into a tree that is
//! evaluated directly against the message, without building a rhai scope or running the
//! interpreter. The translation covers a small subset of rhai whose meaning is fixed by rhai
//! itself (the script engine has no functions of the application's: see
//! `Scripting::is_extended`):
//!
//! - the variables `text`, `user`, `channel` and map properties under `session`, `vars`,
//!   `args` and `captures` (`session.a.b`);
//! - string, integer, float and boolean literals;
//! - `==`, `!=`, `<`, `<=`, `>`, `>=`, `!`, `&&`, `||`;
//! - the string methods `len()`, `is_empty()`, `contains(s)`, `starts_with(s)`,
//!   `ends_with(s)`, and `contains` as a function (what `s in text` becomes).
//!
//! Evaluation only answers when the operands have exactly the types rhai's built-in
//! operators and those string functions take (two strings, two integers, two floats, two
//! booleans for `==`/`!=`). Anything else — a property that holds an array, a comparison of
//! an integer with a float, `&&` over a non-boolean — gives no answer, and the rule runs the
//! compiled rhai script instead, which then decides (or reports the error) exactly as it
//! always does. So the fast path never changes what a condition means.

use rhai::{AST, Expr, FnCallExpr, Stmt};
use serde_json::{Map, Value};

/// A condition expression in the subset above.
#[derive(Debug, Clone)]
pub(crate) enum Fast {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `text`, `user` or `channel`.
    Var(Root),
    /// A map variable: `session`, `vars`, `args` or `captures`.
    Map(MapRoot),
    /// `<map>.<name>`: the entry, or `()` when the map has none.
    Prop(Box<Fast>, String),
    /// A string method or function.
    Call(StrFn, Vec<Fast>),
    Not(Box<Fast>),
    And(Vec<Fast>),
    Or(Vec<Fast>),
    Cmp(Op, Box<Fast>, Box<Fast>),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Root {
    Text,
    User,
    Channel,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum MapRoot {
    Session,
    Vars,
    Args,
    Captures,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum StrFn {
    Len,
    IsEmpty,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What a fast condition reads.
pub(crate) struct Env<'a> {
    pub(crate) text: &'a str,
    pub(crate) user: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) session: &'a Map<String, Value>,
    pub(crate) vars: &'a Value,
    pub(crate) args: &'a Map<String, Value>,
    pub(crate) captures: &'a Map<String, Value>,
}

/// A value during evaluation.
#[derive(Debug, Clone, Copy)]
enum V<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Map(&'a Map<String, Value>),
    Unit,
}

impl Fast {
    /// Translate a compiled condition, when it lies wholly in the subset.
    pub(crate) fn compile(ast: &AST) -> Option<Fast> {
        if ast.iter_functions().next().is_some() {
            return None;
        }
        match ast.statements() {
            [Stmt::Expr(e)] => expr(e),
            [Stmt::FnCall(f, _)] => fn_call(f),
            _ => None,
        }
    }

    /// The condition's answer, or `None` when rhai must decide.
    pub(crate) fn decide(&self, env: &Env<'_>) -> Option<bool> {
        match self.eval(env)? {
            V::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn eval<'a>(&'a self, env: &Env<'a>) -> Option<V<'a>> {
        Some(match self {
            Fast::Bool(b) => V::Bool(*b),
            Fast::Int(i) => V::Int(*i),
            Fast::Float(x) => V::Float(*x),
            Fast::Str(s) => V::Str(s),
            Fast::Var(Root::Text) => V::Str(env.text),
            Fast::Var(Root::User) => V::Str(env.user),
            Fast::Var(Root::Channel) => V::Str(env.channel),
            Fast::Map(root) => match root {
                MapRoot::Session => V::Map(env.session),
                MapRoot::Args => V::Map(env.args),
                MapRoot::Captures => V::Map(env.captures),
                MapRoot::Vars => match env.vars {
                    Value::Object(m) => V::Map(m),
                    _ => return None,
                },
            },
            Fast::Prop(of, name) => match of.eval(env)? {
                V::Map(m) => match m.get(name) {
                    None => V::Unit,
                    Some(v) => json(v)?,
                },
                _ => return None,
            },
            Fast::Call(f, args) => {
                let mut vs = [V::Unit, V::Unit];
                if args.len() > vs.len() {
                    return None;
                }
                for (slot, a) in vs.iter_mut().zip(args) {
                    *slot = a.eval(env)?;
                }
                match (f, args.len(), vs) {
                    (StrFn::Len, 1, [V::Str(s), _]) => {
                        V::Int(i64::try_from(s.chars().count()).unwrap_or(i64::MAX))
                    }
                    (StrFn::IsEmpty, 1, [V::Str(s), _]) => V::Bool(s.is_empty()),
                    (StrFn::Contains, 2, [V::Str(s), V::Str(p)]) => V::Bool(s.contains(p)),
                    (StrFn::StartsWith, 2, [V::Str(s), V::Str(p)]) => V::Bool(s.starts_with(p)),
                    (StrFn::EndsWith, 2, [V::Str(s), V::Str(p)]) => V::Bool(s.ends_with(p)),
                    _ => return None,
                }
            }
            Fast::Not(inner) => match inner.eval(env)? {
                V::Bool(b) => V::Bool(!b),
                _ => return None,
            },
            Fast::And(parts) => {
                for p in parts {
                    match p.eval(env)? {
                        V::Bool(true) => {}
                        V::Bool(false) => return Some(V::Bool(false)),
                        _ => return None,
                    }
                }
                V::Bool(true)
            }
            Fast::Or(parts) => {
                for p in parts {
                    match p.eval(env)? {
                        V::Bool(false) => {}
                        V::Bool(true) => return Some(V::Bool(true)),
                        _ => return None,
                    }
                }
                V::Bool(false)
            }
            Fast::Cmp(op, a, b) => {
                use std::cmp::Ordering;
                let ord = match (a.eval(env)?, b.eval(env)?) {
                    (V::Int(x), V::Int(y)) => Some(x.cmp(&y)),
                    (V::Float(x), V::Float(y)) => x.partial_cmp(&y),
                    (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
                    (V::Bool(x), V::Bool(y)) if matches!(op, Op::Eq | Op::Ne) => Some(x.cmp(&y)),
                    _ => return None,
                };
                V::Bool(match (op, ord) {
                    (Op::Eq, o) => o == Some(Ordering::Equal),
                    (Op::Ne, o) => o != Some(Ordering::Equal),
                    (Op::Lt, o) => o == Some(Ordering::Less),
                    (Op::Le, o) => matches!(o, Some(Ordering::Less | Ordering::Equal)),
                    (Op::Gt, o) => o == Some(Ordering::Greater),
                    (Op::Ge, o) => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
                })
            }
        })
    }
}

/// A JSON value as rhai's serde conversion makes it, for the kinds the subset compares.
fn json(v: &Value) -> Option<V<'_>> {
    Some(match v {
        Value::Null => V::Unit,
        Value::Bool(b) => V::Bool(*b),
        Value::String(s) => V::Str(s),
        Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => V::Int(i),
            (None, true) => V::Float(n.as_f64()?),
            (None, false) => return None,
        },
        Value::Object(m) => V::Map(m),
        Value::Array(_) => return None,
    })
}

fn expr(e: &Expr) -> Option<Fast> {
    Some(match e {
        Expr::BoolConstant(b, _) => Fast::Bool(*b),
        Expr::IntegerConstant(i, _) => Fast::Int(*i),
        Expr::FloatConstant(x, _) => Fast::Float(**x),
        Expr::StringConstant(s, _) => Fast::Str(s.to_string()),
        Expr::Variable(v, ..) => match v.1.as_str() {
            "text" => Fast::Var(Root::Text),
            "user" => Fast::Var(Root::User),
            "channel" => Fast::Var(Root::Channel),
            "session" => Fast::Map(MapRoot::Session),
            "vars" => Fast::Map(MapRoot::Vars),
            "args" => Fast::Map(MapRoot::Args),
            "captures" => Fast::Map(MapRoot::Captures),
            _ => return None,
        },
        Expr::And(parts, _) => Fast::And(parts.iter().map(expr).collect::<Option<_>>()?),
        Expr::Or(parts, _) => Fast::Or(parts.iter().map(expr).collect::<Option<_>>()?),
        Expr::FnCall(f, _) => fn_call(f)?,
        Expr::Dot(chain, flags, _) => {
            // `a.b.c()` is Dot(a, Dot(b, c())): each link applies to what the previous gave.
            if flags.contains(rhai::ASTFlags::NEGATED) {
                return None; // `?.`
            }
            let mut value = expr(&chain.lhs)?;
            let mut rest = &chain.rhs;
            loop {
                match rest {
                    Expr::Dot(next, flags, _) => {
                        if flags.contains(rhai::ASTFlags::NEGATED) {
                            return None;
                        }
                        value = link(value, &next.lhs)?;
                        rest = &next.rhs;
                    }
                    last => break link(value, last)?,
                }
            }
        }
        _ => return None,
    })
}

/// One link of a chain applied to `value`: a property or a method call.
fn link(value: Fast, e: &Expr) -> Option<Fast> {
    match e {
        // String getters of the same names exist; only map entries are read this way.
        Expr::Property(p, _) if !matches!(p.2.as_str(), "len" | "is_empty") => {
            Some(Fast::Prop(Box::new(value), p.2.to_string()))
        }
        Expr::MethodCall(f, _) => {
            let mut args = vec![value];
            for a in f.args.iter() {
                args.push(expr(a)?);
            }
            Some(Fast::Call(str_fn(&f.name, args.len())?, args))
        }
        _ => None,
    }
}

fn str_fn(name: &str, arity: usize) -> Option<StrFn> {
    Some(match (name, arity) {
        ("len", 1) => StrFn::Len,
        ("is_empty", 1) => StrFn::IsEmpty,
        ("contains", 2) => StrFn::Contains,
        ("starts_with", 2) => StrFn::StartsWith,
        ("ends_with", 2) => StrFn::EndsWith,
        _ => return None,
    })
}

fn fn_call(f: &FnCallExpr) -> Option<Fast> {
    if f.capture_parent_scope {
        return None;
    }
    let args: Vec<Fast> = f.args.iter().map(expr).collect::<Option<_>>()?;
    let op = match f.name.as_str() {
        "==" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "!" => {
            let [a]: [Fast; 1] = args.try_into().ok()?;
            return Some(Fast::Not(Box::new(a)));
        }
        name => return Some(Fast::Call(str_fn(name, args.len())?, args)),
    };
    let [a, b]: [Fast; 2] = args.try_into().ok()?;
    Some(Fast::Cmp(op, Box::new(a), Box::new(b)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Scripting;
    use rhai::{Dynamic, Scope};
    use serde_json::json;

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Expect {
        /// Translated, and answers natively for every test message whose maps hold the
        /// entries it reads.
        Decides,
        /// Translated, but the operands' types leave the answer to rhai.
        Defers,
        /// Outside the subset: always rhai.
        NotTranslated,
    }
    use Expect::*;

    const CASES: &[(&str, Expect)] = &[
        ("text.len() > 10 && user == \"ada\"", Decides),
        ("text.len() > 10 && user != \"blocked\"", Decides),
        (
            "text.contains(\"help\") || text.starts_with(\"!\")",
            Decides,
        ),
        ("!text.is_empty() && channel == \"web\"", Decides),
        ("\"hel\" in text", Decides),
        ("text.ends_with(\"?\") || text < \"m\"", Decides),
        ("text >= \"m\" && text <= \"zz\"", Decides),
        ("session.step == 2 || session.step > 3", Decides),
        (
            "session.step != 1 && session.step <= 4 && session.step >= 0",
            Decides,
        ),
        ("session.name == \"Grace\"", Decides),
        ("session.name.len() == 5", Decides),
        ("session.flag", Decides),
        ("!session.flag || text.len() < 5", Decides),
        ("session.nested.level > 1", Decides),
        ("session.count > 1.5", Decides),
        ("session.flag == true", Decides),
        ("vars.admin == user", Decides),
        ("args.n > 3 && captures.n == \"991\"", Decides),
        ("true && !false", Decides),
        // Types the built-in operators mix, or that the subset does not read: rhai decides.
        ("session.step >= 2.5", Defers),
        ("session.count > 1", Defers),
        ("text == 5", Defers),
        ("session.missing == \"x\"", Defers),
        ("session.list.len() > 0", Defers),
        ("session.name.contains(session.step)", Defers),
        ("text.len() && true", Defers),
        ("text.len() > 1 || text.len()", Defers),
        ("session.step == 2.0", Defers),
        // Outside the subset.
        ("text.to_upper() == \"HELLO\"", NotTranslated),
        ("text.len() + 1 > 10", NotTranslated),
        ("session.missing == ()", NotTranslated),
        ("session?.step == 2", NotTranslated),
        ("session[\"step\"] == 2", NotTranslated),
        ("message.text == text", NotTranslated),
        ("'h' in text", NotTranslated),
        ("if text.len() > 3 { true } else { false }", NotTranslated),
    ];

    struct Case {
        text: &'static str,
        user: &'static str,
        channel: &'static str,
        session: Value,
        vars: Value,
        args: Value,
        captures: Value,
    }

    fn cases() -> Vec<Case> {
        let session = |step: i64, name: &str, flag: bool, level: i64, count: f64| {
            json!({"step": step, "name": name, "flag": flag, "nested": {"level": level},
                   "count": count, "list": [1, 2]})
        };
        vec![
            Case {
                text: "hello there, help me",
                user: "ada",
                channel: "web",
                session: session(2, "Grace", true, 2, 2.5),
                vars: json!({"admin": "ada"}),
                args: json!({"n": 5}),
                captures: json!({"n": "991"}),
            },
            Case {
                text: "!stop",
                user: "blocked",
                channel: "slack",
                session: session(0, "Alan", false, 0, 0.5),
                vars: json!({"admin": "root"}),
                args: json!({"n": 1}),
                captures: json!({"n": "12"}),
            },
            Case {
                text: "",
                user: "grace",
                channel: "web",
                session: session(4, "", true, 7, -3.0),
                vars: json!({"admin": "grace"}),
                args: json!({"n": -2}),
                captures: json!({"n": ""}),
            },
            // Empty maps: a missing entry is `()`, which the subset leaves to rhai.
            Case {
                text: "zébra ünïcödé texte très long?",
                user: "ada",
                channel: "web",
                session: session(-1, "Grace", false, 1, 1.5),
                vars: json!({}),
                args: json!({}),
                captures: json!({}),
            },
        ]
    }

    fn map(v: &Value) -> &Map<String, Value> {
        v.as_object().unwrap()
    }

    #[test]
    fn the_native_answer_is_rhais_answer() {
        let scripting = Scripting::default();
        for (src, expect) in CASES {
            let ast = scripting.compile(src, true).unwrap();
            let fast = Fast::compile(&ast);
            assert_eq!(fast.is_some(), *expect != NotTranslated, "{src}: {fast:?}");
            let Some(fast) = fast else { continue };
            let mut deferred = 0;
            for (n, c) in cases().into_iter().enumerate() {
                let sparse = n == 3;
                let env = Env {
                    text: c.text,
                    user: c.user,
                    channel: c.channel,
                    session: map(&c.session),
                    vars: &c.vars,
                    args: map(&c.args),
                    captures: map(&c.captures),
                };
                let mut scope = Scope::new();
                let to = |v: &Value| rhai::serde::to_dynamic(v).unwrap();
                scope.push_constant_dynamic("text", Dynamic::from(c.text.to_owned()));
                scope.push_constant_dynamic("user", Dynamic::from(c.user.to_owned()));
                scope.push_constant_dynamic("channel", Dynamic::from(c.channel.to_owned()));
                scope.push_constant_dynamic("session", to(&c.session));
                scope.push_constant_dynamic("vars", to(&c.vars));
                scope.push_constant_dynamic("args", to(&c.args));
                scope.push_constant_dynamic("captures", to(&c.captures));
                let rhai = scripting
                    .eval_condition(&mut scope, &ast)
                    .map(|d| d.as_bool().ok());
                match fast.decide(&env) {
                    Some(answer) => {
                        assert_eq!(rhai, Ok(Some(answer)), "{src} on {:?}", c.text)
                    }
                    None if *expect == Decides && !sparse => {
                        panic!("{src} on {:?}: no native answer, rhai {rhai:?}", c.text)
                    }
                    None => deferred += 1,
                }
            }
            if *expect == Defers {
                assert!(deferred > 0, "{src}: always answered natively");
            }
        }
    }

    #[test]
    fn an_engine_the_application_extended_keeps_conditions_in_rhai() {
        let mut scripting = Scripting::default();
        assert!(!scripting.is_extended());
        scripting
            .engine_mut()
            .register_fn("len", |_: &str| -> i64 { 42 });
        assert!(scripting.is_extended());
        // With `len` replaced, `text.len() > 10` no longer means what the subset says.
        let rules = "[[rule]]\nname = \"r\"\nwhen = { script = 'text.len() > 10' }\nthen = [{ reply = \"long\" }]\n";
        let set = crate::RuleSet::compile(
            &[crate::Source::inline(rules)],
            &crate::Plugins::default().scripting(scripting),
        )
        .unwrap();
        let router = crate::RulesRouter::new(set);
        let session = Map::new();
        let event = flowbot_core::Event::Message(flowbot_core::Message::text(
            "web",
            "room",
            flowbot_core::Sender::user("ada"),
            "hi",
        ));
        assert_eq!(
            router.matching(&event, &session, None).unwrap(),
            ["r"],
            "the application's len() decides"
        );
    }
}
