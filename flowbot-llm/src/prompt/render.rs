//! Rendering a prompt's templates with minijinja, strictly.

use chrono::{DateTime, Utc};
use flowbot_core::Message;
use flowbot_core::llm::ChatMessage;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{PromptContent, PromptError, Variant};

/// Instructions one render may execute (minijinja's fuel): a bound on loops, so that a
/// prompt edited through the API cannot hold a worker.
const FUEL: u64 = 1_000_000;

/// The message a prompt answers, as templates see it (`message.text`, `message.user`,
/// `message.channel`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MessageVars {
    /// What the user wrote.
    pub text: String,
    /// The user's id.
    pub user: Option<String>,
    /// The channel's name.
    pub channel: Option<String>,
}

/// A retrieved piece of knowledge, as templates see it (`context[i].title`, `.url`,
/// `.text`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContextChunk {
    /// The source's title.
    pub title: String,
    /// Where it comes from (for citations).
    pub url: Option<String>,
    /// The passage.
    pub text: String,
}

/// What a prompt's templates can use: `message`, `session`, `slots`, `vars`, `context` and
/// `now` (RFC 3339, UTC). Every name a template uses must exist: a typo is an error, not an
/// empty string. Test for optional values with `{% if session.name is defined %}` or
/// `{{ session.name | default("there") }}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptContext {
    /// The message being answered.
    pub message: MessageVars,
    /// The session's variables.
    pub session: Map<String, Value>,
    /// Slots a dialog or a classifier filled.
    pub slots: Map<String, Value>,
    /// Anything else the caller provides (the bot's name, settings).
    pub vars: Map<String, Value>,
    /// Retrieved knowledge, best first.
    pub context: Vec<ContextChunk>,
    /// The time of the render.
    pub now: DateTime<Utc>,
}

impl Default for PromptContext {
    fn default() -> Self {
        PromptContext::new()
    }
}

impl PromptContext {
    /// An empty context at the current time.
    pub fn new() -> Self {
        PromptContext {
            message: MessageVars::default(),
            session: Map::new(),
            slots: Map::new(),
            vars: Map::new(),
            context: Vec::new(),
            now: flowbot_core::clock::now(),
        }
    }

    /// A context for answering `message`: its text, sender and channel.
    pub fn for_message(message: &Message) -> Self {
        PromptContext {
            message: MessageVars {
                text: message.text.clone(),
                user: Some(message.sender.id.to_string()),
                channel: Some(message.channel.to_string()),
            },
            ..PromptContext::new()
        }
    }

    /// With the session's variables.
    pub fn with_session(mut self, vars: Map<String, Value>) -> Self {
        self.session = vars;
        self
    }

    /// With slots.
    pub fn with_slots(mut self, slots: Map<String, Value>) -> Self {
        self.slots = slots;
        self
    }

    /// With one more variable under `vars`.
    pub fn with_var(mut self, name: impl Into<String>, value: Value) -> Self {
        self.vars.insert(name.into(), value);
        self
    }

    /// With retrieved knowledge.
    pub fn with_context(mut self, chunks: Vec<ContextChunk>) -> Self {
        self.context = chunks;
        self
    }
}

/// A rendered prompt: which version and variant, and the texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt's name.
    pub name: String,
    /// The version rendered (record outcomes against it).
    pub version: u32,
    /// The variant used (its pattern), if one matched the model.
    pub variant: Option<String>,
    /// The system message.
    pub system: String,
    /// The user message, when the prompt has a user template.
    pub user: Option<String>,
}

impl Rendered {
    /// The messages: the system message, then the user message if any.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut out = vec![ChatMessage::system(self.system.clone())];
        if let Some(user) = &self.user {
            out.push(ChatMessage::user(user.clone()));
        }
        out
    }
}

pub(super) fn environment<'a>() -> Environment<'a> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_debug(true);
    env.set_fuel(Some(FUEL));
    env
}

/// The words of a minijinja error, with the failing expression when known.
fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let (Some(src), Some(range)) = (e.template_source(), e.range())
        && let Some(expr) = src.get(range)
        && !expr.is_empty()
    {
        s.push_str(&format!(" (at `{expr}`)"));
    }
    s
}

/// `source` within the operators one expression may hold (minijinja would overflow the
/// stack on a long chain).
fn within_limits(name: &str, source: &str) -> Result<(), PromptError> {
    flowbot_core::templates::check(source).map_err(|e| PromptError::Syntax {
        template: name.to_owned(),
        line: None,
        message: e.to_string(),
    })
}

/// Check that `source` parses, as template `name`.
pub(super) fn compile(name: &str, source: &str) -> Result<(), PromptError> {
    within_limits(name, source)?;
    let env = environment();
    env.template_from_named_str(name, source)
        .map(|_| ())
        .map_err(|e| PromptError::Syntax {
            template: name.to_owned(),
            line: e.line(),
            message: describe(&e),
        })
}

fn render_one(name: &str, source: &str, cx: &minijinja::Value) -> Result<String, PromptError> {
    within_limits(name, source)?;
    let env = environment();
    let template = env
        .template_from_named_str(name, source)
        .map_err(|e| PromptError::Syntax {
            template: name.to_owned(),
            line: e.line(),
            message: describe(&e),
        })?;
    template.render(cx).map_err(|e| PromptError::Render {
        template: name.to_owned(),
        line: e.line(),
        message: describe(&e),
    })
}

/// The variant for `model`: the one keyed by exactly `model` (or by its name after the last
/// `/`), else the longest pattern ending in `*` whose prefix `model` starts with.
pub(super) fn variant_for<'a>(
    content: &'a PromptContent,
    model: &str,
) -> Option<(&'a str, &'a Variant)> {
    let bare = model.rsplit('/').next().unwrap_or(model);
    if let Some((k, v)) = content
        .variants
        .get_key_value(model)
        .or_else(|| content.variants.get_key_value(bare))
    {
        return Some((k.as_str(), v));
    }
    content
        .variants
        .iter()
        .filter_map(|(k, v)| {
            let prefix = k.strip_suffix('*')?;
            model
                .starts_with(prefix)
                .then_some((k.as_str(), v, prefix.len()))
        })
        .max_by_key(|(_, _, len)| *len)
        .map(|(k, v, _)| (k, v))
}

/// The template names of one version's parts: `name@vN/system`, `name@vN/user`, with
/// `[pattern]` for a variant's.
pub(super) fn template_name(name: &str, version: u32, part: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{name}@v{version}/{part}[{v}]"),
        None => format!("{name}@v{version}/{part}"),
    }
}

/// Render version `version` of prompt `name` (its `content`) for `model`.
pub(super) fn render(
    name: &str,
    version: u32,
    content: &PromptContent,
    model: &str,
    cx: &PromptContext,
) -> Result<Rendered, PromptError> {
    let value = minijinja::Value::from_serialize(cx);
    let variant = variant_for(content, model);
    let (system_src, system_variant) = match variant {
        Some((
            k,
            Variant {
                system: Some(s), ..
            },
        )) => (s.as_str(), Some(k)),
        _ => (content.system.as_str(), None),
    };
    let (user_src, user_variant) = match variant {
        Some((k, Variant { user: Some(u), .. })) => (Some(u.as_str()), Some(k)),
        _ => (content.user.as_deref(), None),
    };
    let system = render_one(
        &template_name(name, version, "system", system_variant),
        system_src,
        &value,
    )?;
    let user = match user_src {
        Some(src) => Some(render_one(
            &template_name(name, version, "user", user_variant),
            src,
            &value,
        )?),
        None => None,
    };
    Ok(Rendered {
        name: name.to_owned(),
        version,
        variant: variant.map(|(k, _)| k.to_owned()),
        system,
        user,
    })
}
