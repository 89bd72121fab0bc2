//! Language models, as the rest of FlowBot sees them: chat messages, tool specs, a
//! [`ChatModel`] that streams typed [`StreamEvent`]s, and an [`Embedder`].
//!
//! `flowbot-llm` implements [`ChatModel`] for each provider's wire dialect; rules, workflows
//! and channels only name these traits, so they never depend on a provider.
//!
//! The types are plain data with serde, so a conversation and a run can be checkpointed in
//! the store and read back on another agent. Decoding tolerates fields it does not know.

mod collect;
mod error;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use collect::{Completion, CompletionBuilder};
pub use error::{ModelError, ModelErrorKind, TimeoutKind};

/// One message of a conversation with a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChatMessage {
    /// Instructions for the model.
    System {
        /// The instructions.
        content: String,
    },
    /// What the user said.
    User {
        /// The user's words.
        content: String,
    },
    /// What the model answered: text, tool calls, or both.
    Assistant {
        /// Visible text (may be empty when the turn only calls tools).
        #[serde(default)]
        content: String,
        /// Tools the model asked to call, in the order it asked.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, sent back to the model.
    Tool(ToolResult),
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::System {
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::User {
            content: content.into(),
        }
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::Assistant {
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }

    /// The text of the message (a tool result's content for [`ChatMessage::Tool`]).
    pub fn text(&self) -> &str {
        match self {
            ChatMessage::System { content }
            | ChatMessage::User { content }
            | ChatMessage::Assistant { content, .. } => content,
            ChatMessage::Tool(r) => &r.content,
        }
    }
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; a tool result names it. FlowBot also uses it as the
    /// idempotency key of the call, so a checkpointed call never runs twice.
    pub id: String,
    /// The tool's (action's) name.
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not yet validated.
    pub arguments: String,
}

impl ToolCall {
    /// The arguments parsed as JSON; an empty string is `{}` (what Anthropic sends for a
    /// call without arguments).
    pub fn parsed_arguments(&self) -> Result<Value, serde_json::Error> {
        if self.arguments.trim().is_empty() {
            Ok(Value::Object(Default::default()))
        } else {
            serde_json::from_str(&self.arguments)
        }
    }
}

/// The result of a tool call, for the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The id of the call this answers.
    pub call_id: String,
    /// The tool's name (Gemini matches results by name).
    pub name: String,
    /// The output (JSON text), or the error's words when `is_error`.
    pub content: String,
    /// Whether the call failed; the model sees the error and may try again.
    #[serde(default)]
    pub is_error: bool,
}

/// A tool offered to the model: an action's name, description and input schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

/// Whether and which tools the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides (the default).
    #[default]
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Tool(String),
}

/// Structured output: the answer must be JSON matching this schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSchema {
    /// A name for the schema (OpenAI requires one).
    pub name: String,
    /// The JSON Schema.
    pub schema: Value,
}

/// One call to a chat model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The conversation so far, system message first.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Whether it must call them.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Structured output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<OutputSchema>,
    /// Emit [`StreamEvent::Raw`] for every provider event (for debugging).
    #[serde(default)]
    pub keep_raw: bool,
}

impl ChatRequest {
    /// A request with these messages and nothing else.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            messages,
            ..ChatRequest::default()
        }
    }

    /// Offer these tools.
    pub fn with_tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = tools;
        self
    }

    /// Ask for JSON matching `schema`.
    pub fn with_output_schema(mut self, name: impl Into<String>, schema: Value) -> Self {
        self.output_schema = Some(OutputSchema {
            name: name.into(),
            schema,
        });
        self
    }

    /// Limit the answer's length.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }
}

/// Token counts of one call, as the provider reported them. Providers do not mean the same
/// by every field; each is documented with what FlowBot puts there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens. Anthropic's count excludes cache reads and writes; the others include
    /// cached tokens.
    pub input_tokens: u64,
    /// Generated tokens, reasoning included (Gemini's excludes its thoughts).
    pub output_tokens: u64,
    /// The provider's total, when it reports one.
    #[serde(default)]
    pub total_tokens: Option<u64>,
    /// Prompt tokens read from the provider's cache.
    #[serde(default)]
    pub cached_input_tokens: Option<u64>,
    /// Prompt tokens written to the cache (Anthropic).
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Reasoning (thinking) tokens.
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// A natural end.
    Stop,
    /// The token limit was reached.
    Length,
    /// The model wants tool calls run.
    ToolCalls,
    /// A content filter stopped it, or the model refused.
    ContentFilter,
    /// Anything else the provider said.
    Other,
}

/// One typed event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamEvent {
    /// The provider's response id and the model that answers.
    Started {
        /// Response id.
        id: String,
        /// Model name as the provider reports it.
        model: String,
    },
    /// Visible text.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// Reasoning (thinking) text, not part of the answer.
    ReasoningDelta {
        /// The new text.
        text: String,
    },
    /// A refusal's text (OpenAI), not part of the answer.
    RefusalDelta {
        /// The new text.
        text: String,
    },
    /// A tool call begins.
    ToolCallStarted {
        /// Position among this answer's tool calls, from 0.
        index: usize,
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// More of a tool call's arguments.
    ToolCallDelta {
        /// Which call.
        index: usize,
        /// The next piece of the JSON text.
        arguments: String,
    },
    /// A tool call is complete.
    ToolCallFinished {
        /// Which call.
        index: usize,
        /// The complete call.
        call: ToolCall,
    },
    /// Token counts so far (cumulative: the last one is the call's).
    Usage {
        /// The counts.
        usage: Usage,
    },
    /// The model stopped.
    Finished {
        /// Why, mapped.
        reason: FinishReason,
        /// The provider's own word for it.
        raw: String,
    },
    /// A provider event as received (only when [`ChatRequest::keep_raw`] is set).
    Raw {
        /// The SSE event name, if any.
        #[serde(default)]
        event: Option<String>,
        /// The event's data.
        data: String,
    },
}

/// A stream of events from one call. It ends after [`StreamEvent::Finished`] (or with an
/// error); dropping it cancels the call.
pub type ChatStream = BoxStream<'static, Result<StreamEvent, ModelError>>;

/// A chat model: something that answers a [`ChatRequest`] with a stream of events.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot chat model",
    note = "implement `ChatModel::stream`, returning typed stream events"
)]
pub trait ChatModel: Send + Sync + 'static {
    /// A name for logs, metrics and price lookups, e.g. `openai/gpt-4o-mini`.
    fn name(&self) -> &str;

    /// Start the call. Errors before the first event (authentication, rate limits) come
    /// back here; errors later come as the stream's items.
    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError>;

    /// The whole answer at once: [`stream`](ChatModel::stream) collected.
    async fn complete(&self, request: &ChatRequest) -> Result<Completion, ModelError> {
        let stream = self.stream(request).await?;
        Completion::collect(stream).await
    }
}

/// Turns texts into vectors (sentence embeddings), for search and classification.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot embedder",
    note = "implement `Embedder::embed`, one vector per text"
)]
pub trait Embedder: Send + Sync + 'static {
    /// A name for logs and metrics, e.g. `openai/text-embedding-3-small`.
    fn name(&self) -> &str;

    /// The length of every vector, when known before the first call.
    fn dimension(&self) -> Option<usize>;

    /// One vector per text, in the same order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// What the `llm` rule action, a bot's fallback and applications ask an [`Assistant`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Ask {
    /// A prompt: the name of a prompt template, or the system text itself. `None`: the
    /// assistant's default prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The model (a name from the assistant's configuration). `None`: its default chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The actions the model may call. `None`: the assistant's default tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// The user's words. `None`: the text of the turn's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A knowledge base collection: passages found in it for the user's words go into the
    /// prompt, and the answer cites them. `None`: the assistant's default, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<String>,
    /// Identifies this run across retries of the same event (e.g. the rule and the action's
    /// position): a run interrupted by a crash resumes under the same key instead of
    /// starting again. The event's id is added by the assistant.
    #[serde(default)]
    pub key: String,
}

impl Ask {
    /// An ask with the defaults and this run key.
    pub fn new(key: impl Into<String>) -> Self {
        Ask {
            key: key.into(),
            ..Ask::default()
        }
    }
}

/// An [`Assistant`]'s answer to a turn.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Answer {
    /// The final text ("" while the run waits for an approval).
    pub text: String,
    /// What to send: the answer (completing any draft shown while it was written), or the
    /// question asking a person to approve a tool call.
    pub reply: Vec<crate::Outbound>,
    /// The run's id (its checkpoints, turns and tool calls are stored under it).
    pub run: String,
    /// Tokens used by the run so far.
    pub usage: Usage,
}

/// Answers a turn with a language model, calling actions as tools: the agent loop of
/// `flowbot-llm`, reached by the rules engine and the pipeline through this trait. Set one
/// with [`BotBuilder::assistant`](crate::BotBuilder::assistant).
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot assistant",
    note = "flowbot-llm's `Agent` implements `Assistant`"
)]
pub trait Assistant: Send + Sync + 'static {
    /// Answer `turn` as `ask` says.
    async fn answer(&self, turn: &crate::Turn, ask: &Ask) -> crate::Result<Answer>;
}
