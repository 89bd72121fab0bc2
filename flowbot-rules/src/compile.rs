//! Compiling rule files into a [`RuleSet`]: every regex, template and script is compiled and
//! every action name checked before the set can route a single message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::script::Ast;
use chrono::{NaiveTime, Weekday};
use flowbot_core::Role;
use regex::{Regex, RegexSet};
use serde_json::Value;

use crate::command::CommandPattern;
use crate::dialog::Dialog;
use crate::script::Scripting;
use crate::spec::{ActionSpec, DialogSpec, RuleFile, RuleSpec, When};
use crate::{CustomCondition, Error, Plugins};

/// Where a rule came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, or `None` for rules from the database or the API.
    pub file: Option<PathBuf>,
    /// Line of the rule's `[[rule]]` header, when known.
    pub line: Option<usize>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}", file.display()),
            (Some(file), None) => write!(f, "{}", file.display()),
            (None, _) => f.write_str("(api)"),
        }
    }
}

/// Event kinds a rule can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Message,
    MessageEdited,
    Button,
    MemberJoined,
    Reaction,
    Custom,
}

#[derive(Debug, Clone)]
pub(crate) struct TimeWindow {
    pub(crate) from: Option<NaiveTime>,
    pub(crate) to: Option<NaiveTime>,
    pub(crate) days: Vec<Weekday>,
    pub(crate) tz: chrono_tz::Tz,
}

/// A compiled condition.
#[derive(Clone)]
pub(crate) enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Command(Arc<CommandPattern>),
    Text(String),
    Contains(String),
    /// Each keyword as its lower-case words.
    Keywords(Vec<Vec<String>>),
    /// Index into the set's regexes.
    Regex(usize),
    Channel(Vec<String>),
    Conversation(Vec<String>),
    User(Vec<String>),
    Role(Vec<Role>),
    Event(Vec<EventKind>),
    Time(Box<TimeWindow>),
    Intent(String, f32),
    /// The script, and which of [`SCRIPT_VARIABLES`] it
    /// names (a bit each), so only those are handed to it, and its native form when it has
    /// one (see [`crate::fast`]).
    #[cfg_attr(not(feature = "scripts"), allow(dead_code))]
    Script(Arc<Ast>, u16, Option<Arc<FastCond>>),
    Custom(Arc<dyn CustomCondition>),
}

/// Variables a script sees (in conditions, `args` and `captures` hold what the rule's
/// command and regex conditions bound).
pub(crate) const SCRIPT_VARIABLES: [&str; 10] = [
    "text", "user", "channel", "message", "session", "vars", "args", "captures", "slots", "answer",
];

/// A script condition's native form (see [`crate::fast`]); none without scripts.
#[cfg(feature = "scripts")]
pub(crate) type FastCond = crate::fast::Fast;
#[cfg(not(feature = "scripts"))]
pub(crate) type FastCond = std::convert::Infallible;

/// Which of the script variables `source` mentions, one bit each.
fn variables_used(source: &str) -> u16 {
    let mut used = 0;
    for word in source.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        if let Some(i) = SCRIPT_VARIABLES.iter().position(|v| *v == word) {
            used |= 1 << i;
        }
    }
    used
}

impl Cond {
    /// Rough cost, so cheap conditions are tried first inside `all`.
    fn cost(&self) -> u8 {
        match self {
            Cond::Command(_) | Cond::Channel(_) | Cond::Conversation(_) | Cond::User(_) => 0,
            Cond::Role(_) | Cond::Event(_) | Cond::Text(_) | Cond::Regex(_) => 1,
            Cond::Contains(_) | Cond::Keywords(_) | Cond::Time(_) => 2,
            Cond::All(_) | Cond::Any(_) | Cond::Not(_) | Cond::Intent(..) => 3,
            Cond::Custom(_) => 4,
            Cond::Script(_, _, Some(_)) => 2,
            Cond::Script(..) => 5,
        }
    }

    fn uses_intent(&self) -> bool {
        match self {
            Cond::Intent(..) => true,
            Cond::All(v) | Cond::Any(v) => v.iter().any(Cond::uses_intent),
            Cond::Not(c) => c.uses_intent(),
            _ => false,
        }
    }
}

/// A compiled action.
#[derive(Debug, Clone)]
pub(crate) enum Act {
    /// Template name.
    Reply(String),
    Call {
        action: String,
        input: TemplatedValue,
        save_as: Option<String>,
    },
    Set(String, TemplatedValue),
    Clear(Vec<String>),
    Script(Arc<Ast>),
    /// Start the dialog of this name.
    Dialog(String),
    /// Ask the assistant.
    Llm {
        /// Run key: the rule and the action's position.
        key: String,
        prompt: Option<String>,
        text: Option<String>,
        model: Option<String>,
        tools: Option<Vec<String>>,
        save_as: Option<String>,
        otherwise: Option<String>,
        knowledge: Option<String>,
    },
}

/// A JSON value whose strings are templates (by name in the set's environment).
#[derive(Debug, Clone)]
pub(crate) enum TemplatedValue {
    Plain(Value),
    Template(String),
    /// A string that is exactly `{{ expression }}`: the expression's value, with its JSON
    /// type (as in workflows).
    Expr(String),
    Array(Vec<TemplatedValue>),
    Object(Vec<(String, TemplatedValue)>),
}

/// What makes a rule worth evaluating at all, checked before its conditions.
#[derive(Debug, Clone)]
pub(crate) enum Gate {
    None,
    Command(String),
    Regex(usize),
    /// The first word of each keyword.
    Words(Vec<String>),
}

/// One compiled rule.
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) priority: i32,
    pub(crate) keep_going: bool,
    pub(crate) enabled: bool,
    pub(crate) gate: Gate,
    /// Whether the rule names `event = "message_edited"`: edits reach only such rules.
    pub(crate) takes_edits: bool,
    pub(crate) cond: Option<Cond>,
    pub(crate) actions: Vec<Act>,
    pub(crate) origin: Origin,
    pub(crate) spec: RuleSpec,
}

/// A compiled, immutable set of rules, ready to route. Build one with [`RuleSet::compile`] or
/// [`RuleSet::load_dir`]; swap sets with [`crate::RulesRouter::replace`].
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) regexes: Vec<Regex>,
    pub(crate) regex_set: RegexSet,
    pub(crate) templates: minijinja::Environment<'static>,
    pub(crate) vars: Value,
    pub(crate) uses_intents: bool,
    /// Example texts of `intent` conditions, by label (each text once).
    pub(crate) intent_examples: BTreeMap<String, Vec<String>>,
    /// Whether any rule takes edits (`event = "message_edited"`).
    pub(crate) takes_edits: bool,
    #[cfg(feature = "scripts")]
    pub(crate) scripting: Arc<Scripting>,
    /// Rules without a gate: always candidates.
    pub(crate) always: Vec<usize>,
    /// Rules gated by a command, by its lower-case name.
    pub(crate) by_command: HashMap<String, Vec<usize>>,
    /// Rules gated by each regex.
    pub(crate) by_regex: Vec<Vec<usize>>,
    /// Rules gated by keywords, by each keyword's first word.
    pub(crate) by_word: HashMap<String, Vec<usize>>,
    /// Dialogs by name.
    pub(crate) dialogs: HashMap<String, Dialog>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A rule file's text with the file it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file, for error messages.
    pub file: Option<PathBuf>,
    /// Its TOML text.
    pub text: String,
}

impl Source {
    /// Rule text that did not come from a file (the API, the database, tests).
    pub fn inline(text: impl Into<String>) -> Self {
        Source {
            file: None,
            text: text.into(),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Lines of each `[[<table>]]` header, in order (rules and dialogs are arrays of tables).
fn header_lines(text: &str, table: &str) -> Vec<usize> {
    let (a, b) = (format!("[[{table}]]"), format!("[[ {table} ]]"));
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            t.starts_with(&a) || t.starts_with(&b)
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// Parse one rule file, with errors naming the file and line.
pub fn parse_file(source: &Source) -> Result<RuleFile, Error> {
    toml::from_str::<RuleFile>(&source.text).map_err(|e| {
        let line = e.span().map(|s| line_of(&source.text, s.start));
        Error::Parse {
            origin: Origin {
                file: source.file.clone(),
                line,
            },
            message: if e.message().contains("wanted exactly 1 element") {
                format!(
                    "{}: an action is a table with one key: reply, call, set, clear or script",
                    e.message()
                )
            } else {
                e.message().to_owned()
            },
        }
    })
}

pub(crate) struct Compiler<'a> {
    plugins: &'a Plugins,
    pub(crate) scripting: &'a Scripting,
    regexes: Vec<Regex>,
    templates: minijinja::Environment<'static>,
    /// Example texts of `intent` conditions, by label.
    intent_examples: BTreeMap<String, Vec<String>>,
}

impl RuleSet {
    /// Compile rule files. Rule names must be unique across them; every regex, template and
    /// script must compile; every action called must be known to `plugins` (which lists the
    /// bot's actions).
    pub fn compile(sources: &[Source], plugins: &Plugins) -> Result<RuleSet, Error> {
        Self::compile_with(sources, Vec::new(), plugins)
    }

    /// Compile rule files together with rules given as values (e.g. from the database).
    pub fn compile_with(
        sources: &[Source],
        extra: Vec<(RuleSpec, Origin)>,
        plugins: &Plugins,
    ) -> Result<RuleSet, Error> {
        let mut files = Vec::with_capacity(sources.len());
        for s in sources {
            files.push((s, parse_file(s)?));
        }
        let mut vars = serde_json::Map::new();
        let mut specs = Vec::new();
        let mut dialogs = Vec::new();
        for (source, file) in files {
            for (k, v) in file.vars {
                vars.insert(k, v);
            }
            let lines = header_lines(&source.text, "rule");
            for (i, rule) in file.rules.into_iter().enumerate() {
                let origin = Origin {
                    file: source.file.clone(),
                    line: lines.get(i).copied(),
                };
                specs.push((rule, origin));
            }
            let lines = header_lines(&source.text, "dialog");
            for (i, dialog) in file.dialogs.into_iter().enumerate() {
                let origin = Origin {
                    file: source.file.clone(),
                    line: lines.get(i).copied(),
                };
                dialogs.push((dialog, origin));
            }
        }
        specs.extend(extra);
        Self::compile_all(specs, &dialogs, Value::Object(vars), plugins)
    }

    /// Compile rules given as values (from the database or the API).
    pub fn compile_specs(
        specs: Vec<(RuleSpec, Origin)>,
        vars: Value,
        plugins: &Plugins,
    ) -> Result<RuleSet, Error> {
        Self::compile_all(specs, &[], vars, plugins)
    }

    fn compile_all(
        specs: Vec<(RuleSpec, Origin)>,
        dialog_specs: &[(DialogSpec, Origin)],
        vars: Value,
        plugins: &Plugins,
    ) -> Result<RuleSet, Error> {
        let scripting = plugins.scripting.clone();
        let mut templates = minijinja::Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        let mut c = Compiler {
            plugins,
            scripting: &scripting,
            regexes: Vec::new(),
            templates,
            intent_examples: BTreeMap::new(),
        };
        let mut seen: HashMap<String, Origin> = HashMap::new();
        let mut rules = Vec::with_capacity(specs.len());
        for (spec, origin) in specs {
            let err = |message: String| Error::Rule {
                rule: spec.name.clone(),
                origin: origin.clone(),
                message,
            };
            if spec.name.is_empty()
                || spec.name.len() > 100
                || !spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(err(
                    "rule names are 1 to 100 letters, digits, '_', '-' or '.'".into(),
                ));
            }
            if let Some(first) = seen.get(&spec.name) {
                return Err(err(format!(
                    "duplicate rule name; first defined at {first}"
                )));
            }
            seen.insert(spec.name.clone(), origin.clone());
            let cond = c.when(&spec.when).map_err(&err)?;
            // A gate is a condition every match needs, checked through an index.
            let gate = match &cond {
                Some(Cond::All(parts)) => gate_of(parts),
                Some(single) => gate_of(std::slice::from_ref(single)),
                None => Gate::None,
            };
            let mut actions = Vec::with_capacity(spec.then.len());
            for (i, a) in spec.then.iter().enumerate() {
                actions.push(
                    c.action(&spec.name, i, a)
                        .map_err(|m| err(format!("action {}: {m}", i + 1)))?,
                );
            }
            rules.push(Rule {
                name: spec.name.clone(),
                priority: spec.priority,
                keep_going: spec.keep_going,
                enabled: spec.enabled,
                gate,
                takes_edits: cond.as_ref().is_some_and(names_edits),
                cond,
                actions,
                origin,
                spec,
            });
        }
        let mut dialogs: HashMap<String, Dialog> = HashMap::new();
        let mut dialog_origins: HashMap<String, Origin> = HashMap::new();
        for (d, origin) in dialog_specs {
            let err = |message: String| Error::Dialog {
                dialog: d.name.clone(),
                origin: origin.clone(),
                message,
            };
            if let Some(first) = dialog_origins.get(&d.name) {
                return Err(err(format!(
                    "duplicate dialog name; first defined at {first}"
                )));
            }
            let compiled = crate::dialog::compile(&mut c, d).map_err(err)?;
            dialog_origins.insert(d.name.clone(), origin.clone());
            dialogs.insert(d.name.clone(), compiled);
        }
        let unknown = |acts: &[Act]| {
            acts.iter().find_map(|a| match a {
                Act::Dialog(n) if !dialogs.contains_key(n) => Some(n.clone()),
                _ => None,
            })
        };
        for r in &rules {
            if let Some(n) = unknown(&r.actions) {
                return Err(Error::Rule {
                    rule: r.name.clone(),
                    origin: r.origin.clone(),
                    message: format!("starts dialog '{n}', which is not defined"),
                });
            }
        }
        for (d, origin) in dialog_specs {
            if let Some(n) = dialogs.get(&d.name).and_then(|x| unknown(&x.then)) {
                return Err(Error::Dialog {
                    dialog: d.name.clone(),
                    origin: origin.clone(),
                    message: format!("starts dialog '{n}', which is not defined"),
                });
            }
        }
        crate::dialog::check_cycles(&dialogs).map_err(Error::Invalid)?;
        // Higher priority first; the sort is stable, so equal priorities keep file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let regex_set = RegexSet::new(c.regexes.iter().map(Regex::as_str))
            .map_err(|e| Error::Invalid(format!("regex set: {e}")))?;
        let uses_intents = rules
            .iter()
            .any(|r| r.cond.as_ref().is_some_and(Cond::uses_intent));
        let takes_edits = rules.iter().any(|r| r.takes_edits);
        // Index the gates, so routing looks only at rules that can match.
        let mut always = Vec::new();
        let mut by_command: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_regex = vec![Vec::new(); c.regexes.len()];
        let mut by_word: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            if !r.enabled {
                continue;
            }
            match &r.gate {
                Gate::None => always.push(i),
                Gate::Command(name) => by_command
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(i),
                Gate::Regex(re) => by_regex[*re].push(i),
                Gate::Words(words) => {
                    for w in words {
                        let list = by_word.entry(w.clone()).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        Ok(RuleSet {
            rules,
            regexes: c.regexes,
            regex_set,
            templates: c.templates,
            vars,
            uses_intents,
            intent_examples: c.intent_examples,
            takes_edits,
            #[cfg(feature = "scripts")]
            scripting,
            always,
            by_command,
            by_regex,
            by_word,
            dialogs,
        })
    }

    /// Load every `*.toml` file under `dir` (sorted by path, not recursive).
    pub fn load_dir(dir: &Path, plugins: &Plugins) -> Result<RuleSet, Error> {
        Self::compile(&read_dir(dir)?, plugins)
    }

    /// The example texts the `intent` conditions declare, by label (every label a
    /// condition names, with the texts given anywhere for it). The rules engine trains the
    /// bot's classifier with them ([`Classifier::learn`](flowbot_core::Classifier::learn)).
    pub fn intent_examples(&self) -> &BTreeMap<String, Vec<String>> {
        &self.intent_examples
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the set has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The commands the enabled rules answer (`when.command`), once each, in priority order.
    pub fn commands(&self) -> Vec<crate::command::CommandInfo> {
        let mut specs: Vec<&RuleSpec> = self
            .specs()
            .map(|(s, _)| s)
            .filter(|s| s.enabled && s.when.command.is_some())
            .collect();
        specs.sort_by_key(|s| std::cmp::Reverse(s.priority));
        let mut out: Vec<crate::command::CommandInfo> = Vec::new();
        for spec in specs {
            let Some(Ok(pattern)) = spec
                .when
                .command
                .as_deref()
                .map(crate::command::CommandPattern::parse)
            else {
                continue;
            };
            if !out.iter().any(|c| c.name == pattern.name) {
                out.push(pattern.info(spec.description.clone()));
            }
        }
        out
    }

    /// The rules as written, highest priority first, with where each came from.
    pub fn specs(&self) -> impl Iterator<Item = (&RuleSpec, &Origin)> {
        self.rules.iter().map(|r| (&r.spec, &r.origin))
    }
}

/// Read the `*.toml` files of `dir`, sorted by path.
pub fn read_dir(dir: &Path) -> Result<Vec<Source>, Error> {
    let io = |e: std::io::Error| Error::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::Io {
                path: p.clone(),
                message: e.to_string(),
            })?;
            Ok(Source {
                file: Some(p),
                text,
            })
        })
        .collect()
}

fn gate_of(parts: &[Cond]) -> Gate {
    for p in parts {
        if let Cond::Command(c) = p {
            return Gate::Command(c.name.clone());
        }
    }
    for p in parts {
        if let Cond::Regex(i) = p {
            return Gate::Regex(*i);
        }
    }
    for p in parts {
        if let Cond::Keywords(kws) = p {
            return Gate::Words(kws.iter().filter_map(|k| k.first().cloned()).collect());
        }
    }
    Gate::None
}

fn parse_hhmm(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("time '{s}' is not HH:MM"))
}

fn parse_day(s: &str) -> Result<Weekday, String> {
    s.parse::<Weekday>()
        .map_err(|_| format!("day '{s}' is not one of mon, tue, wed, thu, fri, sat, sun"))
}

fn parse_role(s: &str) -> Role {
    match s {
        "user" => Role::User,
        "moderator" => Role::Moderator,
        "admin" => Role::Admin,
        "bot" => Role::Bot,
        other => Role::Custom(other.to_owned()),
    }
}

/// Whether `cond` names the `message_edited` event kind anywhere.
fn names_edits(cond: &Cond) -> bool {
    match cond {
        Cond::All(parts) | Cond::Any(parts) => parts.iter().any(names_edits),
        Cond::Not(inner) => names_edits(inner),
        Cond::Event(kinds) => kinds.contains(&EventKind::MessageEdited),
        _ => false,
    }
}

fn parse_event(s: &str) -> Result<EventKind, String> {
    Ok(match s {
        "message" => EventKind::Message,
        "message_edited" => EventKind::MessageEdited,
        "button" | "interaction" => EventKind::Button,
        "member_joined" => EventKind::MemberJoined,
        "reaction" => EventKind::Reaction,
        "custom" => EventKind::Custom,
        other => {
            return Err(format!(
                "event kind '{other}' is not one of message, message_edited, button, member_joined, reaction, custom"
            ));
        }
    })
}

impl Compiler<'_> {
    fn when(&mut self, w: &When) -> Result<Option<Cond>, String> {
        let mut parts = Vec::new();
        if let Some(p) = &w.command {
            parts.push(Cond::Command(Arc::new(
                CommandPattern::parse(p).map_err(|e| format!("command: {e}"))?,
            )));
        }
        if let Some(t) = &w.text {
            parts.push(Cond::Text(t.trim().to_lowercase()));
        }
        if let Some(t) = &w.contains {
            if t.is_empty() {
                return Err("contains: must not be empty".into());
            }
            parts.push(Cond::Contains(t.to_lowercase()));
        }
        if let Some(k) = &w.keywords {
            if k.is_empty() {
                return Err("keywords: give at least one".into());
            }
            let kws: Vec<Vec<String>> = k
                .iter()
                .map(|k| {
                    words(&k.to_lowercase())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            if kws.iter().any(Vec::is_empty) {
                return Err("keywords: a keyword has no letters or digits".into());
            }
            parts.push(Cond::Keywords(kws));
        }
        if let Some(r) = &w.regex {
            let re = regex::RegexBuilder::new(r)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("regex: {e}"))?;
            self.regexes.push(re);
            parts.push(Cond::Regex(self.regexes.len() - 1));
        }
        if let Some(v) = &w.channel {
            parts.push(Cond::Channel(v.to_vec()));
        }
        if let Some(v) = &w.conversation {
            parts.push(Cond::Conversation(v.to_vec()));
        }
        if let Some(v) = &w.user {
            parts.push(Cond::User(v.to_vec()));
        }
        if let Some(v) = &w.role {
            parts.push(Cond::Role(
                v.to_vec().iter().map(|s| parse_role(s)).collect(),
            ));
        }
        if let Some(v) = &w.event {
            parts.push(Cond::Event(
                v.to_vec()
                    .iter()
                    .map(|s| parse_event(s))
                    .collect::<Result<_, _>>()?,
            ));
        }
        if let Some(t) = &w.time {
            let tz = match &t.tz {
                Some(z) => z
                    .parse::<chrono_tz::Tz>()
                    .map_err(|_| format!("time: unknown time zone '{z}'"))?,
                None => chrono_tz::UTC,
            };
            parts.push(Cond::Time(Box::new(TimeWindow {
                from: t.from.as_deref().map(parse_hhmm).transpose()?,
                to: t.to.as_deref().map(parse_hhmm).transpose()?,
                days: t
                    .days
                    .iter()
                    .map(|d| parse_day(d))
                    .collect::<Result<_, _>>()?,
                tz,
            })));
        }
        if let Some(i) = &w.intent {
            if !(0.0..=1.0).contains(&i.min) {
                return Err(format!("intent: min {} is not between 0 and 1", i.min));
            }
            if i.label.trim().is_empty() {
                return Err("intent: the label is empty".into());
            }
            let texts = self.intent_examples.entry(i.label.clone()).or_default();
            for e in &i.examples {
                let e = e.trim();
                if e.is_empty() {
                    return Err(format!("intent '{}': an example is empty", i.label));
                }
                if !texts.iter().any(|t| t == e) {
                    texts.push(e.to_owned());
                }
            }
            parts.push(Cond::Intent(i.label.clone(), i.min));
        }
        if let Some(s) = &w.script {
            let ast = self
                .scripting
                .compile(s, true)
                .map_err(|e| format!("script: {e}"))?;
            #[cfg(feature = "scripts")]
            let fast = if self.scripting.is_extended() {
                None
            } else {
                crate::fast::Fast::compile(&ast).map(Arc::new)
            };
            #[cfg(not(feature = "scripts"))]
            let fast = None;
            parts.push(Cond::Script(ast, variables_used(s), fast));
        }
        if let Some(list) = &w.all {
            let mut v = Vec::new();
            for (i, w) in list.iter().enumerate() {
                if let Some(c) = self.when(w).map_err(|e| format!("all[{i}]: {e}"))? {
                    v.push(c);
                }
            }
            parts.push(Cond::All(v));
        }
        if let Some(list) = &w.any {
            let mut v = Vec::new();
            for (i, w) in list.iter().enumerate() {
                match self.when(w).map_err(|e| format!("any[{i}]: {e}"))? {
                    Some(c) => v.push(c),
                    None => return Err(format!("any[{i}]: an empty condition always holds")),
                }
            }
            if v.is_empty() {
                return Err("any: give at least one condition".into());
            }
            parts.push(Cond::Any(v));
        }
        if let Some(n) = &w.not {
            match self.when(n).map_err(|e| format!("not: {e}"))? {
                Some(c) => parts.push(Cond::Not(Box::new(c))),
                None => return Err("not: an empty condition always holds".into()),
            }
        }
        if let Some(custom) = &w.custom {
            let kind = self.plugins.conditions.get(&custom.kind).ok_or_else(|| {
                format!("custom: no condition kind '{}' is registered", custom.kind)
            })?;
            let cond = kind(&Value::Object(custom.args.clone()))
                .map_err(|e| format!("custom '{}': {e}", custom.kind))?;
            parts.push(Cond::Custom(cond));
        }
        Ok(match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => {
                parts.sort_by_key(Cond::cost);
                Some(Cond::All(parts))
            }
        })
    }

    pub(crate) fn template(&mut self, name: String, source: &str) -> Result<String, String> {
        flowbot_core::templates::check(source).map_err(|e| format!("template: {e}"))?;
        self.templates
            .add_template_owned(name.clone(), source.to_owned())
            .map_err(|e| format!("template: {}", e.detail().unwrap_or(&e.to_string())))?;
        Ok(name)
    }

    fn templated(&mut self, base: &str, v: &Value) -> Result<TemplatedValue, String> {
        Ok(match v {
            Value::String(s) if s.contains("{{") || s.contains("{%") => match sole_expression(s) {
                Some(e) => {
                    flowbot_core::templates::check_expression(e)
                        .map_err(|err| format!("template: {err}"))?;
                    self.templates.compile_expression(e).map_err(|err| {
                        format!("template: {}", err.detail().unwrap_or(&err.to_string()))
                    })?;
                    TemplatedValue::Expr(e.to_owned())
                }
                None => TemplatedValue::Template(self.template(base.to_owned(), s)?),
            },
            Value::Array(items) => TemplatedValue::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.templated(&format!("{base}[{i}]"), v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => TemplatedValue::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), self.templated(&format!("{base}.{k}"), v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => TemplatedValue::Plain(other.clone()),
        })
    }

    pub(crate) fn action(&mut self, rule: &str, i: usize, a: &ActionSpec) -> Result<Act, String> {
        let base = format!("{rule}#{i}");
        Ok(match a {
            ActionSpec::Reply(t) => Act::Reply(self.template(base, t)?),
            ActionSpec::Call {
                action,
                input,
                save_as,
            } => {
                if !self.plugins.actions.contains(action.as_str()) {
                    let mut known: Vec<&str> =
                        self.plugins.actions.iter().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(format!(
                        "unknown action '{action}' (known: {})",
                        known.join(", ")
                    ));
                }
                Act::Call {
                    action: action.clone(),
                    input: self.templated(&base, input)?,
                    save_as: save_as.clone(),
                }
            }
            ActionSpec::Set { var, value } => Act::Set(var.clone(), self.templated(&base, value)?),
            ActionSpec::Clear(v) => Act::Clear(v.to_vec()),
            ActionSpec::Script(s) => Act::Script(
                self.scripting
                    .compile(s, false)
                    .map_err(|e| format!("script: {e}"))?,
            ),
            // Checked once every dialog is compiled.
            ActionSpec::Dialog(name) => Act::Dialog(name.clone()),
            ActionSpec::Workflow {
                name,
                input,
                save_as,
            } => {
                if !self.plugins.actions.contains("workflow.run") {
                    return Err(format!(
                        "workflow '{name}': running workflows needs the workflow engine (the action 'workflow.run' is not registered)"
                    ));
                }
                let input = if input.is_null() {
                    serde_json::json!({})
                } else {
                    input.clone()
                };
                Act::Call {
                    action: "workflow.run".into(),
                    input: self.templated(
                        &base,
                        &serde_json::json!({"workflow": name, "input": input}),
                    )?,
                    save_as: save_as.clone(),
                }
            }
            ActionSpec::Llm(spec) => {
                if let Some(tools) = &spec.tools {
                    for t in tools {
                        if !self.plugins.actions.contains(t.as_str()) {
                            return Err(format!("llm: unknown tool '{t}' (no such action)"));
                        }
                    }
                }
                let mut template =
                    |what: &str, t: &Option<String>| -> Result<Option<String>, String> {
                        t.as_ref()
                            .map(|t| self.template(format!("{base}.{what}"), t))
                            .transpose()
                    };
                Act::Llm {
                    key: base.clone(),
                    prompt: template("prompt", &spec.prompt)?,
                    text: template("text", &spec.text)?,
                    otherwise: template("otherwise", &spec.otherwise)?,
                    model: spec.model.clone(),
                    tools: spec.tools.clone(),
                    save_as: spec.save_as.clone(),
                    knowledge: spec.knowledge.clone(),
                }
            }
        })
    }
}

/// The expression inside a string that is exactly `{{ expression }}`.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

/// The lower-case words of `text` (runs of letters and digits).
pub(crate) fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The names of actions a rule set may call.
pub(crate) fn action_names(registry: &flowbot_core::ActionRegistry) -> HashSet<String> {
    registry.list().into_iter().map(|a| a.name).collect()
}
