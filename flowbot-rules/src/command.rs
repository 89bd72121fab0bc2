//! Slash commands with typed arguments: `remind <delay:duration> <text...>`.

use std::time::Duration;

use serde_json::{Map, Value};

/// An argument's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArgType {
    Word,
    Int,
    Float,
    Bool,
    Duration,
}

impl ArgType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "word" | "string" | "str" => ArgType::Word,
            "int" | "integer" => ArgType::Int,
            "float" | "number" => ArgType::Float,
            "bool" => ArgType::Bool,
            "duration" => ArgType::Duration,
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            ArgType::Word => "a word",
            ArgType::Int => "a whole number",
            ArgType::Float => "a number",
            ArgType::Bool => "yes or no",
            ArgType::Duration => "a duration (like 10m or 1h 30m)",
        }
    }
}

#[derive(Debug, Clone)]
struct Param {
    name: String,
    ty: ArgType,
    /// Takes the rest of the text.
    rest: bool,
    optional: bool,
}

/// A compiled command pattern.
pub use flowbot_core::{CommandInfo, CommandParam};

impl ArgType {
    fn name(self) -> &'static str {
        match self {
            ArgType::Word => "word",
            ArgType::Int => "int",
            ArgType::Float => "float",
            ArgType::Bool => "bool",
            ArgType::Duration => "duration",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CommandPattern {
    pub(crate) name: String,
    params: Vec<Param>,
    usage: String,
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl CommandPattern {
    /// Parse `name <arg> <arg:type> [optional] <rest...>`.
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        let mut parts = pattern.split_whitespace();
        let name = parts
            .next()
            .ok_or("command pattern is empty")?
            .trim_start_matches('/');
        if !valid_ident(name) {
            return Err(format!(
                "command name '{name}' may only hold letters, digits, '_' and '-'"
            ));
        }
        let mut params: Vec<Param> = Vec::new();
        for part in parts {
            let (inner, optional) = if let Some(p) = part.strip_prefix('<') {
                (p.strip_suffix('>'), false)
            } else if let Some(p) = part.strip_prefix('[') {
                (p.strip_suffix(']'), true)
            } else {
                (None, false)
            };
            let inner = inner.ok_or_else(|| {
                format!(
                    "argument '{part}' must be written <name>, <name:type>, [name] or <name...>"
                )
            })?;
            if params.last().is_some_and(|p| p.rest) {
                return Err(format!(
                    "argument '{part}' follows a rest argument, which must come last"
                ));
            }
            if !optional && params.last().is_some_and(|p| p.optional) {
                return Err(format!(
                    "required argument '{part}' follows an optional one"
                ));
            }
            let (inner, rest) = match inner.strip_suffix("...") {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let (pname, ty) = match inner.split_once(':') {
                Some((n, t)) => (
                    n,
                    ArgType::parse(t).ok_or_else(|| {
                        format!(
                            "argument '{n}' has unknown type '{t}'; use word, int, float, bool or duration"
                        )
                    })?,
                ),
                None => (inner, ArgType::Word),
            };
            if !valid_ident(pname) {
                return Err(format!("argument name '{pname}' is not a valid name"));
            }
            if params.iter().any(|p| p.name == pname) {
                return Err(format!("argument '{pname}' appears twice"));
            }
            if rest && ty != ArgType::Word {
                return Err(format!(
                    "rest argument '{pname}' takes text; it cannot have type {ty:?}"
                ));
            }
            params.push(Param {
                name: pname.to_owned(),
                ty,
                rest,
                optional,
            });
        }
        let usage = std::iter::once(format!("/{name}"))
            .chain(pattern.split_whitespace().skip(1).map(str::to_owned))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(CommandPattern {
            name: name.to_owned(),
            params,
            usage,
        })
    }

    /// How the command is written, for error replies.
    /// What a platform needs to declare this command.
    pub(crate) fn info(&self, description: Option<String>) -> CommandInfo {
        CommandInfo {
            name: self.name.clone(),
            description,
            usage: self.usage.clone(),
            params: self
                .params
                .iter()
                .map(|p| CommandParam {
                    name: p.name.clone(),
                    kind: p.ty.name(),
                    optional: p.optional,
                    rest: p.rest,
                })
                .collect(),
        }
    }

    pub(crate) fn usage(&self) -> &str {
        &self.usage
    }

    /// Parse the text after the command name into named values.
    pub(crate) fn parse_args(&self, args: &str) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        let mut rest = args.trim();
        for p in &self.params {
            if rest.is_empty() {
                if p.optional {
                    out.insert(p.name.clone(), Value::Null);
                    continue;
                }
                return Err(format!("missing <{}>", p.name));
            }
            let (word, tail) = if p.rest {
                (rest.to_owned(), "")
            } else if p.ty == ArgType::Duration {
                // "1h 30m" is one duration: take words while they still parse as one.
                let words: Vec<&str> = rest.split_whitespace().collect();
                let mut best = None;
                for n in 1..=words.len() {
                    if humantime::parse_duration(&words[..n].join(" ")).is_ok() {
                        best = Some(n);
                    } else if best.is_some() {
                        break;
                    }
                }
                let n = best.unwrap_or(1);
                let taken = words[..n].join(" ");
                let mut tail = rest;
                for _ in 0..n {
                    tail = tail
                        .trim_start()
                        .split_once(char::is_whitespace)
                        .map_or("", |(_, t)| t);
                }
                (taken, tail)
            } else {
                rest.split_once(char::is_whitespace)
                    .map_or((rest.to_owned(), ""), |(w, t)| (w.to_owned(), t))
            };
            let value = convert(&word, p.ty)
                .ok_or_else(|| format!("'{word}' is not {} (for <{}>)", p.ty.describe(), p.name))?;
            out.insert(p.name.clone(), value);
            rest = tail.trim_start();
        }
        if !rest.is_empty() {
            return Err(format!("unexpected '{rest}'"));
        }
        Ok(out)
    }
}

fn convert(word: &str, ty: ArgType) -> Option<Value> {
    Some(match ty {
        ArgType::Word => Value::String(word.to_owned()),
        ArgType::Int => Value::from(word.parse::<i64>().ok()?),
        ArgType::Float => {
            let f = word.parse::<f64>().ok().filter(|f| f.is_finite())?;
            Value::from(f)
        }
        ArgType::Bool => Value::Bool(match word.to_ascii_lowercase().as_str() {
            "yes" | "y" | "true" | "on" | "1" => true,
            "no" | "n" | "false" | "off" | "0" => false,
            _ => return None,
        }),
        ArgType::Duration => {
            let d: Duration = humantime::parse_duration(word).ok()?;
            // Templates see the text as written; scripts and actions get seconds too.
            let mut m = Map::new();
            m.insert("text".into(), Value::String(word.to_owned()));
            m.insert("secs".into(), Value::from(d.as_secs_f64()));
            Value::Object(m)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_reject_nonsense() {
        let p = CommandPattern::parse("/remind <delay:duration> <text...>").expect("valid");
        assert_eq!(p.name, "remind");
        assert_eq!(p.usage(), "/remind <delay:duration> <text...>");
        for (bad, want) in [
            ("", "empty"),
            ("re mind!", "argument 'mind!'"),
            ("x <a...> <b>", "must come last"),
            ("x <a:date>", "unknown type 'date'"),
            ("x <a> <a>", "appears twice"),
            ("x [a] <b>", "follows an optional"),
            ("x <a:int...>", "cannot have type"),
        ] {
            let e = CommandPattern::parse(bad).expect_err(bad);
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn arguments_are_typed() {
        let p = CommandPattern::parse("remind <delay:duration> <text...>").expect("valid");
        let a = p.parse_args("1h 30m stand up now").expect("parses");
        assert_eq!(a["delay"]["secs"], 5400.0);
        assert_eq!(a["delay"]["text"], "1h 30m");
        assert_eq!(a["text"], "stand up now");
        let e = p.parse_args("soon stand up").expect_err("not a duration");
        assert!(e.contains("'soon' is not a duration"), "{e}");
        assert_eq!(p.parse_args("").expect_err("missing"), "missing <delay>");

        let p = CommandPattern::parse("roll <n:int> [sides:int]").expect("valid");
        let a = p.parse_args("3").expect("optional absent");
        assert_eq!(
            (a["n"].clone(), a["sides"].clone()),
            (Value::from(3), Value::Null)
        );
        assert_eq!(p.parse_args("3 6").expect("both")["sides"], 6);
        assert!(
            p.parse_args("3 6 9")
                .expect_err("extra")
                .contains("unexpected '9'")
        );
        assert!(p.parse_args("x").expect_err("int").contains("whole number"));
    }
}

#[cfg(test)]
mod listing {
    #![allow(clippy::unwrap_used)]

    use crate::{CommandParam, Plugins, RuleSet, Source};

    #[test]
    fn the_rules_commands_are_listed_once_with_their_arguments() {
        let rules = r#"
[[rule]]
name = "remind"
description = "Remind me later."
priority = 5
when = { command = "remind <delay:duration> <text...>" }
then = [{ reply = "ok" }]

[[rule]]
name = "remind-too-far"
when = { command = "remind <delay:duration> <text...>", user = ["nobody"] }
then = [{ reply = "too far" }]

[[rule]]
name = "off"
enabled = false
when = { command = "secret" }
then = [{ reply = "x" }]

[[rule]]
name = "help"
when = { command = "help [topic]" }
then = [{ reply = "help" }]

[[rule]]
name = "hi"
when = { text = "hi" }
then = [{ reply = "hello" }]
"#;
        let set = RuleSet::compile(&[Source::inline(rules)], &Plugins::default()).unwrap();
        let commands = set.commands();
        let names: Vec<&str> = commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["remind", "help"]);
        assert_eq!(commands[0].description.as_deref(), Some("Remind me later."));
        assert_eq!(commands[0].usage, "/remind <delay:duration> <text...>");
        assert_eq!(
            commands[0].params[1],
            CommandParam {
                name: "text".into(),
                kind: "word",
                optional: false,
                rest: true
            }
        );
        assert_eq!(commands[0].params[0].kind, "duration");
        assert!(commands[1].params[0].optional);
    }
}
