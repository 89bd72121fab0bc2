//! Routing an event through a [`RuleSet`]: the [`RulesRouter`].

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::Datelike;
use flowbot_core::{Classifier, Error as CoreError, Event, Label, Outbound, Reply, Router, Turn};
#[cfg(feature = "scripts")]
use rhai::{Dynamic, Scope};
use serde_json::{Map, Value, json};

use crate::compile::{Act, Cond, EventKind, Rule, RuleSet, TemplatedValue, words};
#[cfg(feature = "scripts")]
use crate::script::ScriptHost;

/// What conditions look at: the event and what has been worked out about it (computed once,
/// when first needed).
pub struct Facts<'a> {
    /// The event.
    pub event: &'a Event,
    /// Its text (empty for events without one).
    pub text: &'a str,
    /// The sender's session variables.
    pub session: &'a Map<String, Value>,
    lower: OnceCell<String>,
    words: OnceCell<HashSet<String>>,
    regex_hits: OnceCell<Vec<bool>>,
    intents: Option<Vec<Label>>,
    /// Script variables, each built once per event when a script first needs it.
    #[cfg(feature = "scripts")]
    script_vars: [OnceCell<Dynamic>; 6],
    set: &'a RuleSet,
}

impl Facts<'_> {
    fn lower(&self) -> &str {
        self.lower.get_or_init(|| self.text.to_lowercase())
    }

    fn has_words(&self, phrase: &[String]) -> bool {
        let words = self.words();
        match phrase {
            [one] => words.contains(one),
            many => {
                // A phrase: its words in order, whole words.
                let tokens: Vec<&str> = crate::compile::words(self.lower()).collect();
                tokens
                    .windows(many.len())
                    .any(|w| w.iter().zip(many).all(|(a, b)| *a == b))
            }
        }
    }

    fn regex_hits(&self) -> &[bool] {
        self.regex_hits.get_or_init(|| {
            let mut hits = vec![false; self.set.regexes.len()];
            for m in self.set.regex_set.matches(self.text).iter() {
                hits[m] = true;
            }
            hits
        })
    }

    fn regex_hit(&self, i: usize) -> bool {
        self.regex_hits().get(i).copied().unwrap_or(false)
    }

    fn words(&self) -> &HashSet<String> {
        self.words
            .get_or_init(|| words(self.lower()).map(str::to_owned).collect())
    }

    fn kind(&self) -> Option<EventKind> {
        Some(match self.event {
            Event::Message(_) => EventKind::Message,
            Event::MessageEdited(_) => EventKind::MessageEdited,
            Event::Interaction(_) => EventKind::Button,
            Event::MemberJoined { .. } => EventKind::MemberJoined,
            Event::Reaction { .. } => EventKind::Reaction,
            Event::Custom { .. } => EventKind::Custom,
            _ => return None,
        })
    }

    /// What a condition on the fast path reads.
    #[cfg(feature = "scripts")]
    fn fast_env<'b>(&'b self, b: &'b Bindings) -> crate::fast::Env<'b> {
        crate::fast::Env {
            text: self.text,
            user: self
                .event
                .sender()
                .map(|s| s.id.as_str())
                .unwrap_or_default(),
            channel: self.event.channel().as_str(),
            session: self.session,
            vars: &self.set.vars,
            args: &b.args,
            captures: &b.captures,
        }
    }

    /// The script variables `used` names (bits in the order of `SCRIPT_VARIABLES`), with
    /// `args` and `captures` from `b`. Each variable is built once per event.
    #[cfg(feature = "scripts")]
    fn script_scope(&self, used: u16, b: &Bindings) -> Result<Scope<'static>, String> {
        let to = |v: &Value| rhai::serde::to_dynamic(v).map_err(|e| e.to_string());
        let mut scope = Scope::new();
        for (i, name) in crate::script::SCRIPT_VARIABLES.iter().enumerate() {
            if used & (1 << i) == 0 {
                continue;
            }
            let value = match i {
                6 => bound(&b.args)?,
                7 => bound(&b.captures)?,
                8 => Dynamic::from_map(rhai::Map::new()),
                9 => Dynamic::UNIT,
                _ => {
                    let cell = &self.script_vars[i];
                    if let Some(v) = cell.get() {
                        v.clone()
                    } else {
                        let v = match i {
                            0 => Dynamic::from(rhai::ImmutableString::from(self.text)),
                            1 => Dynamic::from(rhai::ImmutableString::from(
                                self.event
                                    .sender()
                                    .map(|s| s.id.as_str())
                                    .unwrap_or_default(),
                            )),
                            2 => Dynamic::from(rhai::ImmutableString::from(
                                self.event.channel().as_str(),
                            )),
                            3 => to(&message_json(self.event, self.text))?,
                            4 => to(&Value::Object(self.session.clone()))?,
                            _ => to(&self.set.vars)?,
                        };
                        cell.get_or_init(|| v).clone()
                    }
                }
            };
            scope.push_constant_dynamic(*name, value);
        }
        Ok(scope)
    }
}

/// What earlier conditions of a rule bound (command arguments, regex captures), for scripts.
#[cfg(feature = "scripts")]
fn bound(m: &Map<String, Value>) -> Result<Dynamic, String> {
    if m.is_empty() {
        Ok(Dynamic::from_map(rhai::Map::new()))
    } else {
        rhai::serde::to_dynamic(m).map_err(|e| e.to_string())
    }
}

/// The message as templates and scripts see it.
fn message_json(event: &Event, text: &str) -> Value {
    let sender = event.sender();
    let kind = match event {
        Event::Message(_) => "message",
        Event::MessageEdited(_) => "message_edited",
        Event::Interaction(_) => "button",
        Event::MemberJoined { .. } => "member_joined",
        Event::Reaction { .. } => "reaction",
        Event::Custom { .. } => "custom",
        _ => "other",
    };
    let mut m = json!({
        "kind": kind,
        "text": text,
        "channel": event.channel().as_str(),
        "conversation": event.conversation().map(|c| c.as_str()),
        "user": sender.map(|s| s.id.as_str()),
        "user_name": sender.and_then(|s| s.name.as_deref()),
    });
    match event {
        Event::Interaction(i) => m["value"] = json!(i.value),
        Event::Reaction { emoji, message, .. } => {
            m["emoji"] = json!(emoji);
            m["message_id"] = json!(message.as_str());
        }
        Event::Custom { name, payload, .. } => {
            m["name"] = json!(name);
            m["payload"] = payload.clone();
        }
        Event::Message(msg) | Event::MessageEdited(msg) => m["id"] = json!(msg.id.as_str()),
        _ => {}
    }
    m
}

/// The outcome of a condition.
#[derive(Debug, PartialEq)]
enum Outcome {
    No,
    Yes,
    /// The command name matched but its arguments did not parse: reply with this.
    Usage(String),
}

/// What a matching rule learned: command arguments and regex captures.
#[derive(Default)]
struct Bindings {
    args: Map<String, Value>,
    captures: Map<String, Value>,
}

fn eval(c: &Cond, f: &Facts<'_>, b: &mut Bindings) -> Result<Outcome, String> {
    use Outcome::{No, Usage, Yes};
    let yes = |x: bool| if x { Yes } else { No };
    Ok(match c {
        Cond::All(parts) => {
            let mut usage = None;
            for p in parts {
                if usage.is_some() && matches!(p, Cond::Script(..) | Cond::Custom(_)) {
                    // Scripts may read the arguments that failed to parse: the usage answer
                    // wins over them.
                    continue;
                }
                match eval(p, f, b)? {
                    No => return Ok(No),
                    Usage(u) => usage = Some(u),
                    Yes => {}
                }
            }
            usage.map_or(Yes, Usage)
        }
        Cond::Any(parts) => {
            let mut usage = None;
            for p in parts {
                match eval(p, f, b)? {
                    Yes => return Ok(Yes),
                    Usage(u) => usage = usage.or(Some(u)),
                    No => {}
                }
            }
            usage.map_or(No, Usage)
        }
        Cond::Not(inner) => yes(eval(inner, f, &mut Bindings::default())? == No),
        // An edit's command counts too, for the rules that take edits (the others never see
        // one).
        Cond::Command(pattern) => match said(f.event).and_then(|m| m.command()) {
            Some((name, args)) if name.eq_ignore_ascii_case(&pattern.name) => {
                match pattern.parse_args(args) {
                    Ok(parsed) => {
                        b.args = parsed;
                        Yes
                    }
                    Err(e) => Usage(format!("{e}. Usage: {}", pattern.usage())),
                }
            }
            _ => No,
        },
        Cond::Text(t) => yes(f.lower().trim() == t),
        Cond::Contains(t) => yes(f.lower().contains(t.as_str())),
        Cond::Keywords(kws) => yes(kws.iter().any(|k| f.has_words(k))),
        Cond::Regex(i) => {
            if !f.regex_hit(*i) {
                return Ok(No);
            }
            let re = &f.set.regexes[*i];
            if let Some(caps) = re.captures(f.text) {
                for (n, name) in re.capture_names().enumerate() {
                    let value = caps
                        .get(n)
                        .map_or(Value::Null, |m| Value::String(m.as_str().to_owned()));
                    b.captures.insert(n.to_string(), value.clone());
                    if let Some(name) = name {
                        b.captures.insert(name.to_owned(), value);
                    }
                }
            }
            Yes
        }
        Cond::Channel(v) => yes(v.iter().any(|c| c == f.event.channel().as_str())),
        Cond::Conversation(v) => yes(f
            .event
            .conversation()
            .is_some_and(|c| v.iter().any(|x| x == c.as_str()))),
        Cond::User(v) => yes(f
            .event
            .sender()
            .is_some_and(|s| v.iter().any(|x| x == s.id.as_str()))),
        Cond::Role(v) => yes(f
            .event
            .sender()
            .is_some_and(|s| v.iter().any(|r| s.has_role(r)))),
        Cond::Event(kinds) => yes(f.kind().is_some_and(|k| kinds.contains(&k))),
        Cond::Time(w) => {
            let now = flowbot_core::clock::now().with_timezone(&w.tz);
            let t = now.time();
            let day_ok = w.days.is_empty() || w.days.contains(&now.weekday());
            let time_ok = match (w.from, w.to) {
                (Some(a), Some(b)) if a <= b => a <= t && t < b,
                (Some(a), Some(b)) => t >= a || t < b, // past midnight
                (Some(a), None) => t >= a,
                (None, Some(b)) => t < b,
                (None, None) => true,
            };
            yes(day_ok && time_ok)
        }
        Cond::Intent(label, min) => yes(f
            .intents
            .as_ref()
            .is_some_and(|ls| ls.iter().any(|l| &l.label == label && l.confidence >= *min))),
        #[cfg(not(feature = "scripts"))]
        Cond::Script(ast, ..) => crate::script::never(ast),
        #[cfg(feature = "scripts")]
        Cond::Script(ast, used, fast) => {
            if let Some(answer) = fast.as_ref().and_then(|fast| fast.decide(&f.fast_env(b))) {
                return Ok(yes(answer));
            }
            let mut scope = f.script_scope(*used, b)?;
            let value = f.set.scripting.eval_condition(&mut scope, ast)?;
            match value.as_bool() {
                Ok(v) => yes(v),
                Err(kind) => {
                    return Err(format!(
                        "condition script returned {value:?} ({kind}), not true or false"
                    ));
                }
            }
        }
        Cond::Custom(c) => yes(c.matches(f)),
    })
}

/// A [`Router`] that routes with a [`RuleSet`], which can be replaced while the bot runs: a
/// message is routed wholly by the set that was current when it arrived.
pub struct RulesRouter {
    set: RwLock<Arc<RuleSet>>,
    classifier: RwLock<Option<Arc<dyn Classifier>>>,
    unmatched_to_assistant: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RulesRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesRouter")
            .field("rules", &self.current().len())
            .field("classifier", &self.classifier().is_some())
            .finish()
    }
}

/// A rule (or a finished dialog, `rule` naming it) failed while running its actions.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", failure.message)]
struct RuleFailed {
    /// `rule 'name' (file:line)` or `dialog 'name'`.
    what: String,
    #[source]
    failure: ActFailure,
}

/// Why an action of a rule failed: the words, and the action's own error when an action
/// failed, kept as the source so the pipeline still sees what it was (a refusal to show the
/// sender, a database away for a moment).
#[derive(Debug)]
struct ActFailure {
    message: String,
    source: Option<CoreError>,
}

impl std::fmt::Display for ActFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ActFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<String> for ActFailure {
    fn from(message: String) -> Self {
        ActFailure {
            message,
            source: None,
        }
    }
}

impl RulesRouter {
    /// A router using `set`.
    pub fn new(set: RuleSet) -> Self {
        RulesRouter {
            set: RwLock::new(Arc::new(set)),
            classifier: RwLock::new(None),
            unmatched_to_assistant: Default::default(),
        }
    }

    /// Use `classifier` for `intent` conditions.
    pub fn with_classifier(self, classifier: Arc<dyn Classifier>) -> Self {
        self.set_classifier(Some(classifier));
        self
    }

    /// Use `classifier` for `intent` conditions from now on (`None`: no classifier, and
    /// every `intent` condition is false). It is not trained here: a
    /// [`RuleLibrary`](crate::RuleLibrary) trains it with the rules' examples.
    pub fn set_classifier(&self, classifier: Option<Arc<dyn Classifier>>) {
        *self
            .classifier
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = classifier;
    }

    /// The classifier of `intent` conditions.
    pub fn classifier(&self) -> Option<Arc<dyn Classifier>> {
        self.classifier
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Send messages that no rule matched to the bot's assistant (its language model), when
    /// it has one. Button clicks answering an assistant's approval question always go to it.
    pub fn set_unmatched_to_assistant(&self, on: bool) {
        self.unmatched_to_assistant
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The rule set in force.
    pub fn current(&self) -> Arc<RuleSet> {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Swap in a new rule set at once; messages being routed finish with the old one.
    pub fn replace(&self, set: RuleSet) {
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
    }

    /// The names of the rules that match `event` with `session` variables, in the order they
    /// would run (for tests, the API's dry runs and benchmarks). Command usage errors count as
    /// a match.
    pub fn matching(
        &self,
        event: &Event,
        session: &Map<String, Value>,
        intents: Option<Vec<Label>>,
    ) -> Result<Vec<String>, crate::Error> {
        let set = self.current();
        let facts = facts(&set, event, session, intents);
        let mut out = Vec::new();
        for i in candidates(&set, &facts) {
            let rule = &set.rules[i];
            if let Some((o, _)) = check(rule, &facts).map_err(crate::Error::Invalid)? {
                out.push(rule.name.clone());
                if matches!(o, Outcome::Usage(_)) || !rule.keep_going {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The message of a message event, or an edit's message as it now reads.
fn said(event: &Event) -> Option<&flowbot_core::Message> {
    event.as_message().or(event.as_edit())
}

fn event_text(event: &Event) -> &str {
    match event {
        Event::Message(m) | Event::MessageEdited(m) => &m.text,
        Event::Interaction(i) => &i.value,
        _ => "",
    }
}

fn facts<'a>(
    set: &'a RuleSet,
    event: &'a Event,
    session: &'a Map<String, Value>,
    intents: Option<Vec<Label>>,
) -> Facts<'a> {
    Facts {
        event,
        text: event_text(event),
        session,
        lower: OnceCell::new(),
        words: OnceCell::new(),
        regex_hits: OnceCell::new(),
        intents,
        #[cfg(feature = "scripts")]
        script_vars: Default::default(),
        set,
    }
}

/// Whether `rule` matches, with what it bound.
/// The rules whose gate passes, in the order they are tried: rules without a gate, and
/// those the command, the regexes that match and the words of the text point to.
fn candidates(set: &RuleSet, facts: &Facts<'_>) -> Vec<usize> {
    let mut out = set.always.clone();
    if !set.by_command.is_empty()
        && let Some((name, _)) = said(facts.event).and_then(|m| m.command())
        && let Some(rules) = set.by_command.get(&name.to_ascii_lowercase())
    {
        out.extend_from_slice(rules);
    }
    if !set.regexes.is_empty() && !facts.text.is_empty() {
        for (i, hit) in facts.regex_hits().iter().enumerate() {
            if *hit {
                out.extend_from_slice(&set.by_regex[i]);
            }
        }
    }
    if !set.by_word.is_empty() {
        for w in facts.words() {
            if let Some(rules) = set.by_word.get(w) {
                out.extend_from_slice(rules);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `rule` (whose gate passed) matches, with what it bound.
fn check(rule: &Rule, facts: &Facts<'_>) -> Result<Option<(Outcome, Bindings)>, String> {
    if !rule.takes_edits && matches!(facts.event, Event::MessageEdited(_)) {
        return Ok(None);
    }
    let mut b = Bindings::default();
    let outcome = match &rule.cond {
        None => Outcome::Yes,
        Some(c) => eval(c, facts, &mut b)
            .map_err(|e| format!("rule '{}' ({}): {e}", rule.name, rule.origin))?,
    };
    Ok((outcome != Outcome::No).then_some((outcome, b)))
}

pub(crate) fn render(set: &RuleSet, name: &str, ctx: &minijinja::Value) -> Result<String, String> {
    set.templates
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| format!("template: {e}"))
}

fn render_value(
    set: &RuleSet,
    v: &TemplatedValue,
    ctx: &minijinja::Value,
) -> Result<Value, String> {
    Ok(match v {
        TemplatedValue::Plain(v) => v.clone(),
        TemplatedValue::Template(name) => Value::String(render(set, name, ctx)?),
        TemplatedValue::Expr(src) => {
            let v = set
                .templates
                .compile_expression(src)
                .and_then(|e| e.eval(ctx))
                .map_err(|e| format!("template: {e}"))?;
            if v.is_undefined() {
                Value::Null
            } else {
                serde_json::to_value(&v).map_err(|e| format!("template: {e}"))?
            }
        }
        TemplatedValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(set, i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        TemplatedValue::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), render_value(set, v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[async_trait]
impl Router for RulesRouter {
    async fn route(&self, turn: &Turn) -> flowbot_core::Result<Reply> {
        let set = self.current();
        // An edit no rule takes is answered by nothing: no classification for it.
        let edit_taken = set.takes_edits || !matches!(&*turn.event, Event::MessageEdited(_));
        let classifier = if set.uses_intents {
            self.classifier()
        } else {
            None
        };
        let intents = match classifier {
            Some(c) if edit_taken && !event_text(&turn.event).is_empty() => {
                Some(c.classify(event_text(&turn.event)).await?)
            }
            _ => None,
        };
        // A dialog in progress takes the message first.
        let text = event_text(&turn.event);
        let answer = match &*turn.event {
            Event::Message(_) | Event::Interaction(_) => Some(text),
            _ => None,
        };
        let base = json!({
            "message": message_json(&turn.event, text),
            "session": turn.session.lock().vars,
            "vars": set.vars,
        });
        let dialog_failed = |message: String| {
            let name = turn
                .session
                .lock()
                .dialog
                .as_ref()
                .map_or_else(String::new, |d| d.name.clone());
            CoreError::Handler(format!("dialog '{name}': {message}").into())
        };
        let dialog_name = turn.session.lock().dialog.as_ref().map(|d| d.name.clone());
        match crate::dialog::take(&set, turn, answer, &base).map_err(dialog_failed)? {
            crate::dialog::Turned::Handled(mut reply, finished) => {
                if let (Some(slots), Some(name)) = (finished, dialog_name)
                    && let Some(d) = set.dialogs.get(&name)
                {
                    let ctx = Ctx {
                        bindings: Bindings::default(),
                        slots: Value::Object(slots),
                    };
                    run_actions(&set, &d.then, ctx, turn, &mut reply)
                        .await
                        .map_err(|failure| {
                            CoreError::Handler(
                                RuleFailed {
                                    what: format!("dialog '{name}'"),
                                    failure,
                                }
                                .into(),
                            )
                        })?;
                }
                return Ok(Reply(reply));
            }
            crate::dialog::Turned::NotMine => {}
        }
        let session_vars = turn.session.lock().vars.clone();
        // Decide which rules run, with what bindings, before any action runs (conditions are
        // synchronous; actions may await).
        let mut matched = Vec::new();
        {
            let facts = facts(&set, &turn.event, &session_vars, intents);
            for i in candidates(&set, &facts) {
                let rule = &set.rules[i];
                let hit = check(rule, &facts).map_err(|e| CoreError::Handler(e.into()))?;
                if let Some((outcome, b)) = hit {
                    let stop = matches!(outcome, Outcome::Usage(_)) || !rule.keep_going;
                    matched.push((rule, outcome, b));
                    if stop {
                        break;
                    }
                }
            }
        }
        if matched.is_empty()
            && let Some(assistant) = turn.services.assistant()
        {
            let click =
                matches!(&*turn.event, Event::Interaction(i) if i.value.starts_with("llm:"));
            let unmatched = matches!(&*turn.event, Event::Message(m) if !m.text.trim().is_empty())
                && self
                    .unmatched_to_assistant
                    .load(std::sync::atomic::Ordering::Relaxed);
            if click || unmatched {
                let answer = assistant
                    .answer(turn, &flowbot_core::llm::Ask::new("unmatched"))
                    .await?;
                return Ok(Reply(answer.reply));
            }
        }
        let mut reply = Vec::new();
        for (rule, outcome, b) in matched {
            if let Outcome::Usage(text) = outcome {
                reply.push(Outbound::text(text));
                break;
            }
            let ctx = Ctx {
                bindings: b,
                slots: json!({}),
            };
            run_actions(&set, &rule.actions, ctx, turn, &mut reply)
                .await
                .map_err(|failure| {
                    CoreError::Handler(
                        RuleFailed {
                            what: format!("rule '{}' ({})", rule.name, rule.origin),
                            failure,
                        }
                        .into(),
                    )
                })?;
        }
        Ok(Reply(reply))
    }
}

/// What actions see besides the event and the session.
struct Ctx {
    bindings: Bindings,
    /// A finished dialog's slots (empty for rules).
    slots: Value,
}

async fn run_actions(
    set: &Arc<RuleSet>,
    actions: &[Act],
    cx: Ctx,
    turn: &Turn,
    reply: &mut Vec<Outbound>,
) -> Result<(), ActFailure> {
    let message = message_json(&turn.event, event_text(&turn.event));
    let args = Value::Object(cx.bindings.args);
    let captures = Value::Object(cx.bindings.captures);
    let slots = cx.slots;
    for act in actions {
        let json_ctx = json!({
            "message": message,
            "args": args,
            "captures": captures,
            "slots": slots,
            "session": turn.session.lock().vars,
            "vars": set.vars,
        });
        let ctx = minijinja::Value::from_serialize(&json_ctx);
        match act {
            Act::Dialog(name) => reply.push(crate::dialog::start(set, turn, name, &json_ctx)?),
            Act::Reply(t) => reply.push(Outbound::text(render(set, t, &ctx)?)),
            Act::Call {
                action,
                input,
                save_as,
            } => {
                let input = render_value(set, input, &ctx)?;
                let out = turn
                    .call_action(action, input)
                    .await
                    .map_err(|e| ActFailure {
                        message: e.to_string(),
                        source: Some(e),
                    })?;
                if let Some(var) = save_as {
                    turn.session.set_var(var.clone(), out);
                }
            }
            Act::Llm {
                key,
                prompt,
                text,
                model,
                tools,
                save_as,
                otherwise,
                knowledge,
            } => {
                let Some(assistant) = turn.services.assistant() else {
                    match otherwise {
                        Some(t) => {
                            reply.push(Outbound::text(render(set, t, &ctx)?));
                            continue;
                        }
                        None => {
                            return Err(ActFailure {
                                message: "llm: this bot has no language model configured ([llm] in the server's config)".into(),
                                source: None,
                            });
                        }
                    }
                };
                let rendered = |t: &Option<String>| -> Result<Option<String>, ActFailure> {
                    t.as_ref()
                        .map(|t| render(set, t, &ctx))
                        .transpose()
                        .map_err(Into::into)
                };
                let mut ask = flowbot_core::llm::Ask::new(key.clone());
                ask.prompt = rendered(prompt)?;
                ask.text = rendered(text)?;
                ask.model = model.clone();
                ask.tools = tools.clone();
                ask.knowledge = knowledge.clone();
                let answer = assistant.answer(turn, &ask).await.map_err(|e| ActFailure {
                    message: e.to_string(),
                    source: Some(e),
                })?;
                match save_as {
                    Some(var) if !answer.text.is_empty() => turn
                        .session
                        .set_var(var.clone(), json!({"text": answer.text, "run": answer.run})),
                    _ => reply.extend(answer.reply),
                }
            }
            Act::Set(var, value) => {
                let v = render_value(set, value, &ctx)?;
                turn.session.set_var(var.clone(), v);
            }
            Act::Clear(vars) => {
                let mut s = turn.session.lock();
                for v in vars {
                    s.vars.remove(v);
                }
            }
            #[cfg(not(feature = "scripts"))]
            Act::Script(ast) => crate::script::never(ast),
            #[cfg(feature = "scripts")]
            Act::Script(ast) => {
                let texts =
                    run_script(set, ast.clone(), &message, &args, &captures, &slots, turn).await?;
                reply.extend(texts.into_iter().map(Outbound::text));
            }
        }
    }
    Ok(())
}

/// Run an action script on a blocking thread (scripts are synchronous and may call actions,
/// which are async), then apply its session changes; its replies are returned.
#[cfg(feature = "scripts")]
async fn run_script(
    set: &Arc<RuleSet>,
    ast: Arc<rhai::AST>,
    message: &Value,
    args: &Value,
    captures: &Value,
    slots: &Value,
    turn: &Turn,
) -> Result<Vec<String>, String> {
    let set = set.clone();
    let session = turn.session.lock().vars.clone();
    let inputs = json!({ "message": message, "args": args, "captures": captures, "slots": slots });
    let turn2 = turn.clone();
    let handle = tokio::runtime::Handle::current();
    let joined = tokio::task::spawn_blocking(move || {
        let to = |v: &Value| rhai::serde::to_dynamic(v).map_err(|e| e.to_string());
        let mut scope = Scope::new();
        scope.push_constant_dynamic("message", to(&inputs["message"])?);
        scope.push_constant_dynamic("args", to(&inputs["args"])?);
        scope.push_constant_dynamic("captures", to(&inputs["captures"])?);
        scope.push_constant_dynamic("slots", to(&inputs["slots"])?);
        scope.push_constant_dynamic("answer", Dynamic::UNIT);
        scope.push_constant_dynamic("vars", to(&set.vars)?);
        let field =
            |k: &str| Dynamic::from(inputs["message"][k].as_str().unwrap_or_default().to_owned());
        scope.push_constant_dynamic("text", field("text"));
        scope.push_constant_dynamic("user", field("user"));
        scope.push_constant_dynamic("channel", field("channel"));
        scope.push_constant_dynamic("session", to(&Value::Object(session.clone()))?);
        let host = ScriptHost {
            replies: Vec::new(),
            session,
            call: Box::new(move |name, input| {
                handle
                    .block_on(turn2.call_action(name, input))
                    .map_err(|e| e.to_string())
            }),
        };
        let (host, result) = set.scripting.run_action(&mut scope, &ast, host);
        Ok::<_, String>((host.replies, host.session, result))
    })
    .await
    .map_err(|e| format!("script thread failed: {e}"))?;
    let (replies, session, result) = joined?;
    // Session changes made before an error are kept, like those of earlier actions.
    turn.session.lock().vars = session;
    result.map(|()| replies)
}
