//! Counting tokens: exactly for OpenAI models (tiktoken's encodings, with the framing OpenAI
//! documents), by estimate for every other model.

use std::fmt;
use std::sync::Arc;

use flowbot_core::llm::{ChatMessage, ToolSpec};
use serde_json::{Map, Value};

/// Counts the tokens a prompt costs a model.
///
/// Object safe: the context manager holds an `Arc<dyn TokenCounter>`, and [`counter_for`]
/// picks one by model name.
pub trait TokenCounter: Send + Sync + fmt::Debug {
    /// The encoding's name: `o200k_base`, `cl100k_base`, or `estimate`.
    fn encoding(&self) -> &str;

    /// True when the counts come from the model's own tokenizer; false for an estimate,
    /// which may be off either way (it leans high).
    fn is_exact(&self) -> bool;

    /// Tokens of a piece of text.
    fn count_text(&self, text: &str) -> usize;

    /// Tokens one message costs in a prompt, its framing (role, separators) included.
    fn count_message(&self, message: &ChatMessage) -> usize;

    /// Tokens every prompt costs once besides its messages: the priming of the reply
    /// (`<|start|>assistant<|message|>`, 3 tokens for OpenAI's chat models).
    fn reply_priming(&self) -> usize;

    /// Tokens the definitions of these tools cost (0 for none).
    fn count_tools(&self, tools: &[ToolSpec]) -> usize;

    /// Tokens of a prompt made of these messages: each message, plus the reply's priming.
    fn count_messages(&self, messages: &[ChatMessage]) -> usize {
        messages.iter().fold(self.reply_priming(), |n, m| {
            n.saturating_add(self.count_message(m))
        })
    }
}

/// The constants of a chat model's prompt format, as OpenAI's cookbook ("How to count tokens
/// with tiktoken", sections 6 and 7) gives them and checks them against the API.
#[derive(Debug, Clone, Copy)]
struct Framing {
    /// Every message: `<|start|>{role}\n{content}<|end|>\n` less the role and content.
    per_message: usize,
    /// Once per prompt: the reply's priming.
    reply_priming: usize,
    /// Each tool call in an assistant message, besides its name and arguments. OpenAI
    /// documents no figure; this errs high.
    per_tool_call: usize,
    /// Each tool result, besides the role, the tool's name and the content. Undocumented
    /// too; errs high.
    per_tool_result: usize,
    /// Tool definitions: the start of each function.
    func_init: i64,
    /// Tool definitions: the start of a function's properties.
    prop_init: i64,
    /// Tool definitions: each property.
    prop_key: i64,
    /// Tool definitions: a property with an `enum`.
    enum_init: i64,
    /// Tool definitions: each `enum` item.
    enum_item: i64,
    /// Tool definitions: once after all functions.
    func_end: i64,
}

/// gpt-4o and later (o200k_base).
const O200K_FRAMING: Framing = Framing {
    per_message: 3,
    reply_priming: 3,
    per_tool_call: 7,
    per_tool_result: 4,
    func_init: 7,
    prop_init: 3,
    prop_key: 3,
    enum_init: -3,
    enum_item: 3,
    func_end: 12,
};

/// gpt-4 and gpt-3.5-turbo (cl100k_base); also the estimate's (the larger constants).
const CL100K_FRAMING: Framing = Framing {
    func_init: 10,
    ..O200K_FRAMING
};

fn role(message: &ChatMessage) -> &'static str {
    match message {
        ChatMessage::System { .. } => "system",
        ChatMessage::User { .. } => "user",
        ChatMessage::Assistant { .. } => "assistant",
        ChatMessage::Tool(_) => "tool",
        #[allow(unreachable_patterns)]
        _ => "user",
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One message: OpenAI's documented formula (3 + role + content), with tool calls and
/// results counted by the undocumented parts of [`Framing`].
fn message_tokens(count: &dyn Fn(&str) -> usize, f: &Framing, message: &ChatMessage) -> usize {
    let mut n = f
        .per_message
        .saturating_add(count(role(message)))
        .saturating_add(count(message.text()));
    match message {
        ChatMessage::Assistant { tool_calls, .. } => {
            for call in tool_calls {
                n = n
                    .saturating_add(f.per_tool_call)
                    .saturating_add(count(&call.name))
                    .saturating_add(count(&call.arguments));
            }
        }
        ChatMessage::Tool(result) => {
            n = n
                .saturating_add(f.per_tool_result)
                .saturating_add(count(&result.name));
        }
        _ => {}
    }
    n
}

/// The fields of `object` other than `known`, as JSON text (empty when there are none).
fn rest_json(object: &Map<String, Value>, known: &[&str]) -> Option<String> {
    let rest: Map<String, Value> = object
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!rest.is_empty()).then(|| Value::Object(rest).to_string())
}

/// Tool definitions: the cookbook's `num_tokens_for_tools` for flat parameter lists (each
/// property's name, type, description and enum), plus the JSON text of whatever that formula
/// does not cover (nested objects, `items`, `$defs`, …), which errs high.
fn tools_tokens(count: &dyn Fn(&str) -> usize, f: &Framing, tools: &[ToolSpec]) -> usize {
    if tools.is_empty() {
        return 0;
    }
    let c = |s: &str| to_i64(count(s));
    let mut n: i64 = 0;
    for tool in tools {
        n = n.saturating_add(f.func_init);
        let desc = tool
            .description
            .strip_suffix('.')
            .unwrap_or(&tool.description);
        n = n.saturating_add(c(&format!("{}:{desc}", tool.name)));
        let Some(params) = tool.parameters.as_object() else {
            if !tool.parameters.is_null() {
                n = n.saturating_add(c(&tool.parameters.to_string()));
            }
            continue;
        };
        if let Some(props) = params.get("properties").and_then(Value::as_object)
            && !props.is_empty()
        {
            n = n.saturating_add(f.prop_init);
            for (key, schema) in props {
                n = n.saturating_add(f.prop_key);
                let ty = match schema.get("type") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let desc = schema
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let desc = desc.strip_suffix('.').unwrap_or(desc);
                if let Some(items) = schema.get("enum").and_then(Value::as_array) {
                    n = n.saturating_add(f.enum_init);
                    for item in items {
                        n = n.saturating_add(f.enum_item);
                        n = n.saturating_add(match item {
                            Value::String(s) => c(s),
                            other => c(&other.to_string()),
                        });
                    }
                }
                n = n.saturating_add(c(&format!("{key}:{ty}:{desc}")));
                match schema.as_object() {
                    Some(o) => {
                        if let Some(rest) = rest_json(o, &["type", "description", "enum"]) {
                            n = n.saturating_add(c(&rest));
                        }
                    }
                    None => n = n.saturating_add(c(&schema.to_string())),
                }
            }
        }
        if let Some(rest) = rest_json(params, &["type", "properties", "required"]) {
            n = n.saturating_add(c(&rest));
        }
    }
    n = n.saturating_add(f.func_end);
    usize::try_from(n.max(0)).unwrap_or(usize::MAX)
}

/// What one character costs, in quarter tokens, for [`EstimateCounter`].
fn quarter_tokens(ch: char) -> u64 {
    match ch {
        // Words run at about four characters a token.
        c if c.is_ascii_alphabetic() || c.is_ascii_whitespace() => 1,
        // Tokenizers group digits by up to three.
        c if c.is_ascii_digit() => 2,
        // Punctuation and symbols often stand alone, above all in code.
        c if c.is_ascii() => 3,
        // Emoji and other characters beyond the BMP take several tokens.
        c if c.len_utf8() == 4 => 12,
        // Accented letters, Cyrillic, CJK: about a token each.
        _ => 4,
    }
}

/// An estimate of tokens for models whose tokenizer FlowBot does not ship (Anthropic,
/// Gemini, local models), with OpenAI's framing constants. It says so:
/// [`is_exact`](TokenCounter::is_exact) is false. Per character: a quarter token for ASCII
/// letters and whitespace, half for digits, three quarters for ASCII punctuation, one for
/// other characters (accents, Cyrillic, CJK), three for emoji; then a safety margin (15 %
/// unless told otherwise), rounded up.
///
/// For natural language and code this leans high (the tests check it against tiktoken on
/// English, German, French, Russian, Japanese, Rust, JSON and emoji); random strings
/// (hashes, base64) may cost more than it says.
/// Leave room accordingly, and shrink the budget when the provider still says the prompt is
/// too long ([`ContextManager::shrink_after`](super::ContextManager::shrink_after)).
#[derive(Debug, Clone)]
pub struct EstimateCounter {
    margin_percent: u32,
}

impl Default for EstimateCounter {
    fn default() -> Self {
        EstimateCounter { margin_percent: 15 }
    }
}

impl EstimateCounter {
    /// An estimate with `margin_percent` added (the default is 15).
    pub fn with_margin(margin_percent: u32) -> Self {
        EstimateCounter { margin_percent }
    }

    fn estimate(&self, text: &str) -> usize {
        let quarters = text
            .chars()
            .fold(0u64, |q, ch| q.saturating_add(quarter_tokens(ch)));
        let scaled = quarters.saturating_mul(100 + u64::from(self.margin_percent));
        let tokens = scaled.div_ceil(400);
        usize::try_from(tokens).unwrap_or(usize::MAX)
    }
}

impl TokenCounter for EstimateCounter {
    fn encoding(&self) -> &str {
        "estimate"
    }

    fn is_exact(&self) -> bool {
        false
    }

    fn count_text(&self, text: &str) -> usize {
        self.estimate(text)
    }

    fn count_message(&self, message: &ChatMessage) -> usize {
        message_tokens(&|s| self.estimate(s), &CL100K_FRAMING, message)
    }

    fn reply_priming(&self) -> usize {
        CL100K_FRAMING.reply_priming
    }

    fn count_tools(&self, tools: &[ToolSpec]) -> usize {
        tools_tokens(&|s| self.estimate(s), &CL100K_FRAMING, tools)
    }
}

/// Which of tiktoken's encodings.
#[cfg(feature = "tiktoken")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-5, o1, o3, o4-mini.
    O200kBase,
    /// gpt-4, gpt-3.5-turbo, text-embedding-3-*, text-embedding-ada-002.
    Cl100kBase,
}

#[cfg(feature = "tiktoken")]
impl Encoding {
    /// The encoding's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// The encoding of an OpenAI model (`gpt-4o-mini`, `openai/gpt-4.1`,
    /// `ft:gpt-4o-mini:org::id`; a provider prefix before the last `/` is ignored), or
    /// `None` for a model tiktoken does not know or one that is not a chat or embedding
    /// model with these encodings.
    pub fn for_model(model: &str) -> Option<Encoding> {
        use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
        let bare = model.rsplit('/').next().unwrap_or(model);
        match get_tokenizer(bare)? {
            Tokenizer::O200kBase => Some(Encoding::O200kBase),
            Tokenizer::Cl100kBase => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }

    fn framing(self) -> &'static Framing {
        match self {
            Encoding::O200kBase => &O200K_FRAMING,
            Encoding::Cl100kBase => &CL100K_FRAMING,
        }
    }
}

/// Exact token counts for OpenAI models, with tiktoken's tables (feature `tiktoken`).
///
/// Text is encoded as ordinary text (a `<|endoftext|>` typed by a user counts as the
/// characters it is, as the API treats it). A message costs what OpenAI's cookbook documents
/// and checks against the API: 3 tokens of framing, its role and its content, and every
/// prompt 3 more for the reply's priming. Tool definitions follow the cookbook's
/// `num_tokens_for_tools` (also checked against the API for flat parameter lists); tool calls
/// and tool results, for which OpenAI documents no formula, are counted from their names,
/// arguments and content with a few tokens of framing that err high.
#[cfg(feature = "tiktoken")]
pub struct TiktokenCounter {
    encoding: Encoding,
    bpe: &'static tiktoken_rs::CoreBPE,
}

#[cfg(feature = "tiktoken")]
impl fmt::Debug for TiktokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TiktokenCounter")
            .field("encoding", &self.encoding.as_str())
            .finish()
    }
}

#[cfg(feature = "tiktoken")]
impl TiktokenCounter {
    /// A counter for `encoding`. The tables are parsed once per process, on first use (tens
    /// of milliseconds); `None` only if the tables shipped in tiktoken-rs do not parse.
    pub fn new(encoding: Encoding) -> Option<TiktokenCounter> {
        use std::sync::OnceLock;
        static O200K: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
        static CL100K: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
        let bpe = match encoding {
            Encoding::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()),
            Encoding::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()),
        };
        match bpe {
            Some(bpe) => Some(TiktokenCounter { encoding, bpe }),
            None => {
                tracing::warn!(
                    encoding = encoding.as_str(),
                    "tiktoken's tables did not load; token counts are estimated"
                );
                None
            }
        }
    }

    /// A counter for an OpenAI model, or `None` for a model tiktoken does not know.
    pub fn for_model(model: &str) -> Option<TiktokenCounter> {
        TiktokenCounter::new(Encoding::for_model(model)?)
    }

    fn tokens(&self, text: &str) -> usize {
        self.bpe.encode_ordinary(text).len()
    }
}

#[cfg(feature = "tiktoken")]
impl TokenCounter for TiktokenCounter {
    fn encoding(&self) -> &str {
        self.encoding.as_str()
    }

    fn is_exact(&self) -> bool {
        true
    }

    fn count_text(&self, text: &str) -> usize {
        self.tokens(text)
    }

    fn count_message(&self, message: &ChatMessage) -> usize {
        message_tokens(&|s| self.tokens(s), self.encoding.framing(), message)
    }

    fn reply_priming(&self) -> usize {
        self.encoding.framing().reply_priming
    }

    fn count_tools(&self, tools: &[ToolSpec]) -> usize {
        tools_tokens(&|s| self.tokens(s), self.encoding.framing(), tools)
    }
}

/// The best counter for a model: tiktoken's exact counts for OpenAI models (by the name after
/// any `provider/` prefix, so `openai/gpt-4o` and `openrouter/openai/gpt-4o` both count with
/// o200k_base), an [`EstimateCounter`] for every other model and whenever flowbot-llm is
/// built without its `tiktoken` feature.
pub fn counter_for(model: &str) -> Arc<dyn TokenCounter> {
    #[cfg(feature = "tiktoken")]
    if let Some(exact) = TiktokenCounter::for_model(model) {
        return Arc::new(exact);
    }
    let _ = model;
    Arc::new(EstimateCounter::default())
}
