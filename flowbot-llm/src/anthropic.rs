//! Anthropic Messages (`POST /v1/messages`, streamed).
//!
//! The request: `system` from the system messages, `messages` whose content is blocks (text;
//! the assistant's `tool_use` blocks; the user's `tool_result` blocks, consecutive results
//! merged into one user turn as the API requires), `tools` with their `input_schema`,
//! `tool_choice`, `max_tokens` (required by the API: 4096 when the request names none) and
//! `stream: true`. The key goes in `x-api-key`, with `anthropic-version: 2023-06-01` (a
//! configured `anthropic-version` header wins; `anthropic-beta` can be added the same way).
//!
//! The answer is decoded from `message_start`, `content_block_start`/`_delta`/`_stop` per
//! block index, `message_delta` (stop reason and cumulative usage) and `message_stop`; `ping`
//! is a keep-alive and an in-band `error` event fails the stream with its classified kind. A
//! body that ends before `message_stop` is a dropped connection.
//!
//! # Structured output
//!
//! [`ChatRequest::output_schema`] is sent as a forced tool, `final_answer`, whose
//! `input_schema` is the schema, and the decoder turns that tool's input back into the answer's
//! text (its `finish` is then [`FinishReason::Stop`], `finish_raw` still says `tool_use`). We
//! chose this over Anthropic's native structured outputs (`output_config.format`) because a
//! forced tool works with every Claude model that has tool use and with the proxies that
//! speak this dialect, and because `input_schema` takes any JSON Schema, where the native
//! feature is limited to the newest models and to a subset of JSON Schema. The cost: the
//! answer is not produced under constrained decoding, so a caller that needs a guarantee
//! validates it (FlowBot validates tool arguments the same way).
//!
//! A tool's input must be an object, so a schema whose root is not `type: object` is wrapped
//! as `{"value": <schema>}` and unwrapped again (that answer arrives whole, at the end of its
//! block, instead of streaming). Without other tools, or with [`ToolChoice::None`], the
//! answer tool is forced; with tools and [`ToolChoice::Auto`] or [`ToolChoice::Required`] the
//! model must call some tool (`any`): one of the caller's, or the answer.

use std::collections::HashMap;

use async_trait::async_trait;
use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, ChatStream, FinishReason, ModelError, ModelErrorKind,
    StreamEvent, ToolCall, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

use crate::config::ProviderConfig;
use crate::transport::{DecodeError, Decoder, Endpoint, classify_status, is_context_message};

/// The API version this dialect speaks.
const VERSION: &str = "2023-06-01";

/// `max_tokens` when the request names none (the API requires one).
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The tool that carries a structured answer.
pub(crate) const ANSWER_TOOL: &str = "final_answer";

/// A model behind the Anthropic Messages API.
#[derive(Debug)]
pub struct Anthropic {
    endpoint: Endpoint,
    model: String,
    name: String,
}

impl Anthropic {
    /// The model `config` names; its key (if any) is sent as `x-api-key`.
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        let mut endpoint = config.endpoint()?;
        if let Some(key) = config.key()? {
            endpoint.header("x-api-key", &key, true)?;
        }
        if !config
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("anthropic-version"))
        {
            endpoint.header("anthropic-version", VERSION, false)?;
        }
        if config.model.trim().is_empty() {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                config.name(),
                "model must not be empty",
            ));
        }
        Ok(Anthropic {
            endpoint,
            model: config.model.clone(),
            name: config.name(),
        })
    }
}

#[async_trait]
impl ChatModel for Anthropic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let (body, answer) = request_body(&self.model, request)
            .map_err(|m| ModelError::new(ModelErrorKind::BadRequest, &self.name, m))?;
        self.endpoint
            .stream(
                "/messages",
                &[],
                &body,
                classify,
                MessagesDecoder::new(answer),
                request.keep_raw,
            )
            .await
    }
}

/// How the structured answer's tool input becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The input is the answer (an object schema): streamed as it comes.
    Direct,
    /// The input is `{"value": answer}`: unwrapped at the end of the block.
    Wrapped,
}

/// The request body for `model`, and how a structured answer comes back (if one was asked
/// for). `Err` names what in the request the API could not take.
fn request_body(model: &str, request: &ChatRequest) -> Result<(Value, Option<Answer>), String> {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        match message {
            ChatMessage::System { content } => {
                if !content.is_empty() {
                    system.push(content);
                }
            }
            ChatMessage::User { content } => {
                if !content.is_empty() {
                    push_block(&mut turns, "user", json!({"type": "text", "text": content}));
                }
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                if !content.is_empty() {
                    push_block(
                        &mut turns,
                        "assistant",
                        json!({"type": "text", "text": content}),
                    );
                }
                for call in tool_calls {
                    let input = match call.parsed_arguments() {
                        Ok(v @ Value::Object(_)) => v,
                        Ok(_) => {
                            return Err(format!(
                                "messages[{i}]: the arguments of tool call '{}' ({}) are not a \
                                 JSON object",
                                call.id, call.name
                            ));
                        }
                        Err(e) => {
                            return Err(format!(
                                "messages[{i}]: the arguments of tool call '{}' ({}) are not \
                                 JSON: {e}",
                                call.id, call.name
                            ));
                        }
                    };
                    push_block(
                        &mut turns,
                        "assistant",
                        json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
                    );
                }
            }
            ChatMessage::Tool(result) => push_block(
                &mut turns,
                "user",
                json!({
                    "type": "tool_result",
                    "tool_use_id": result.call_id,
                    "content": result.content,
                    "is_error": result.is_error,
                }),
            ),
            _ => {
                return Err(format!(
                    "messages[{i}]: a kind of message this dialect cannot send"
                ));
            }
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    let mut tools: Vec<Value> = Vec::new();
    for tool in &request.tools {
        if request.output_schema.is_some() && tool.name == ANSWER_TOOL {
            return Err(format!(
                "tool '{ANSWER_TOOL}': the name is reserved for structured output"
            ));
        }
        let schema = if tool.parameters.is_null() {
            json!({"type": "object", "properties": {}})
        } else {
            tool.parameters.clone()
        };
        tools.push(json!({
            "name": tool.name,
            "description": tool.description,
            "input_schema": schema,
        }));
    }
    let mut tool_choice = match &request.tool_choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        _ => json!({"type": "auto"}),
    };
    let mut answer = None;
    if let Some(out) = &request.output_schema {
        let is_object = out.schema.get("type").and_then(Value::as_str) == Some("object");
        let input_schema = if is_object {
            answer = Some(Answer::Direct);
            out.schema.clone()
        } else {
            answer = Some(Answer::Wrapped);
            json!({"type": "object", "properties": {"value": out.schema}, "required": ["value"]})
        };
        tool_choice = match &request.tool_choice {
            ToolChoice::Auto | ToolChoice::Required if !tools.is_empty() => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
            _ => json!({"type": "tool", "name": ANSWER_TOOL}),
        };
        tools.push(json!({
            "name": ANSWER_TOOL,
            "description": format!(
                "Give your final answer ('{}') by calling this tool: its input is the answer.",
                out.name
            ),
            "input_schema": input_schema,
        }));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        body.insert("tool_choice".into(), tool_choice);
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    body.insert("stream".into(), json!(true));
    Ok((Value::Object(body), answer))
}

/// Add a block to the last turn when it has the same role (the API wants user and assistant
/// turns to alternate), else start a turn. Tool results go before any text of their turn.
fn push_block(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, block: Value) {
    match turns.last_mut() {
        Some((r, blocks)) if *r == role => {
            if block["type"] == "tool_result" {
                let at = blocks
                    .iter()
                    .position(|b| b["type"] != "tool_result")
                    .unwrap_or(blocks.len());
                blocks.insert(at, block);
            } else {
                blocks.push(block);
            }
        }
        _ => turns.push((role, vec![block])),
    }
}

/// The kind of an Anthropic error type (`error.type` of an error body or event).
fn kind_of(error_type: &str, message: &str) -> Option<ModelErrorKind> {
    let lower = message.to_ascii_lowercase();
    Some(match error_type {
        "overloaded_error" => ModelErrorKind::Overloaded,
        "rate_limit_error" => ModelErrorKind::RateLimited,
        "api_error" | "timeout_error" => ModelErrorKind::Server,
        "authentication_error" | "permission_error" | "billing_error" => ModelErrorKind::Auth,
        "request_too_large" => ModelErrorKind::ContextTooLong,
        "not_found_error" => ModelErrorKind::Config,
        "invalid_request_error" => {
            if is_context_message(&lower) || lower.contains("exceed context limit") {
                ModelErrorKind::ContextTooLong
            } else {
                ModelErrorKind::BadRequest
            }
        }
        _ => return None,
    })
}

/// Classify a failed HTTP answer: 529 is overload, 413 a request over the size limit, else
/// the body's `error.type`.
fn classify(status: u16, body: &Value, message: &str) -> Option<ModelErrorKind> {
    match status {
        529 => return Some(ModelErrorKind::Overloaded),
        413 => return Some(ModelErrorKind::ContextTooLong),
        _ => {}
    }
    body.pointer("/error/type")
        .and_then(Value::as_str)
        .and_then(|t| kind_of(t, message))
        .or_else(|| Some(classify_status(status, message)))
}

/// The stream parser of this dialect, for the recorded-stream tests.
#[cfg(test)]
pub(crate) fn decoder() -> Box<dyn Decoder> {
    Box::new(MessagesDecoder::new(None))
}

/// One content block being received.
enum Block {
    Text,
    Thinking,
    Tool {
        index: usize,
        id: String,
        name: String,
        arguments: String,
        fragments: usize,
        start_input: Value,
    },
    Answer {
        buffer: String,
        sent: bool,
        start_input: Value,
    },
    /// Redacted thinking, server tools, anything else: nothing of it is shown.
    Other,
}

/// Turns Messages stream events into typed events.
struct MessagesDecoder {
    answer: Option<Answer>,
    blocks: HashMap<u64, Block>,
    calls: usize,
    answered: bool,
    start_usage: Map<String, Value>,
    delta_usage: Map<String, Value>,
    stop_reason: Option<String>,
    done: bool,
}

impl MessagesDecoder {
    fn new(answer: Option<Answer>) -> Self {
        MessagesDecoder {
            answer,
            blocks: HashMap::new(),
            calls: 0,
            answered: false,
            start_usage: Map::new(),
            delta_usage: Map::new(),
            stop_reason: None,
            done: false,
        }
    }

    /// The usage so far: `message_delta`'s counts win over `message_start`'s.
    fn usage(&self) -> Usage {
        let pick = |key: &str| {
            self.delta_usage
                .get(key)
                .and_then(Value::as_u64)
                .or_else(|| self.start_usage.get(key).and_then(Value::as_u64))
        };
        let thinking = |u: &Map<String, Value>| {
            u.get("output_tokens_details")
                .and_then(|d| d.get("thinking_tokens"))
                .and_then(Value::as_u64)
        };
        Usage {
            input_tokens: pick("input_tokens").unwrap_or(0),
            output_tokens: pick("output_tokens").unwrap_or(0),
            total_tokens: None,
            cached_input_tokens: pick("cache_read_input_tokens"),
            cache_creation_input_tokens: pick("cache_creation_input_tokens"),
            reasoning_tokens: thinking(&self.delta_usage).or_else(|| thinking(&self.start_usage)),
        }
    }

    fn finish_block(
        &mut self,
        block: Block,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError> {
        match block {
            Block::Tool {
                index,
                id,
                name,
                arguments,
                fragments,
                start_input,
            } => {
                let arguments = if fragments == 0 {
                    // No input_json_delta at all: the input came whole in the start.
                    start_input.to_string()
                } else if arguments.trim().is_empty() {
                    "{}".to_owned()
                } else {
                    arguments
                };
                out.push(StreamEvent::ToolCallFinished {
                    index,
                    call: ToolCall {
                        id,
                        name,
                        arguments,
                    },
                });
            }
            Block::Answer {
                buffer,
                sent,
                start_input,
            } => {
                self.answered = true;
                match self.answer {
                    Some(Answer::Wrapped) => {
                        let input: Value = if buffer.trim().is_empty() {
                            start_input
                        } else {
                            serde_json::from_str(&buffer).map_err(|e| {
                                DecodeError::protocol(format!(
                                    "the structured answer is not JSON: {e}"
                                ))
                            })?
                        };
                        let value = input.get("value").ok_or_else(|| {
                            DecodeError::protocol("the structured answer has no 'value'")
                        })?;
                        out.push(StreamEvent::TextDelta {
                            text: value.to_string(),
                        });
                    }
                    _ => {
                        if !sent {
                            out.push(StreamEvent::TextDelta {
                                text: start_input.to_string(),
                            });
                        }
                    }
                }
            }
            Block::Text | Block::Thinking | Block::Other => {}
        }
        Ok(())
    }

    fn finish_reason(&self, raw: &str) -> FinishReason {
        match raw {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "tool_use" if self.calls == 0 && self.answered => FinishReason::Stop,
            "tool_use" => FinishReason::ToolCalls,
            "refusal" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }
}

fn block_index(event: &Value, what: &str) -> Result<u64, DecodeError> {
    event
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| DecodeError::protocol(format!("{what} without an index")))
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl Decoder for MessagesDecoder {
    fn event(
        &mut self,
        name: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError> {
        let event: Value = serde_json::from_str(data).map_err(|e| {
            DecodeError::protocol(format!(
                "event '{}' is not JSON: {e}",
                name.unwrap_or("message")
            ))
        })?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .or(name)
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let message = event.get("message").unwrap_or(&Value::Null);
                out.push(StreamEvent::Started {
                    id: str_field(message, "id").to_owned(),
                    model: str_field(message, "model").to_owned(),
                });
                if let Some(Value::Object(u)) = message.get("usage") {
                    self.start_usage = u.clone();
                    out.push(StreamEvent::Usage {
                        usage: self.usage(),
                    });
                }
            }
            "content_block_start" => {
                let index = block_index(&event, "content_block_start")?;
                let block = event.get("content_block").unwrap_or(&Value::Null);
                let new = match str_field(block, "type") {
                    "text" => {
                        let text = str_field(block, "text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta { text: text.into() });
                        }
                        Block::Text
                    }
                    "thinking" => {
                        let text = str_field(block, "thinking");
                        if !text.is_empty() {
                            out.push(StreamEvent::ReasoningDelta { text: text.into() });
                        }
                        Block::Thinking
                    }
                    "tool_use" => {
                        let id = str_field(block, "id");
                        let name = str_field(block, "name");
                        if id.is_empty() || name.is_empty() {
                            return Err(DecodeError::protocol(format!(
                                "tool_use block {index} without an id or a name"
                            )));
                        }
                        let start_input = block.get("input").cloned().unwrap_or(json!({}));
                        if self.answer.is_some() && name == ANSWER_TOOL {
                            Block::Answer {
                                buffer: String::new(),
                                sent: false,
                                start_input,
                            }
                        } else {
                            let call = self.calls;
                            self.calls = self.calls.saturating_add(1);
                            out.push(StreamEvent::ToolCallStarted {
                                index: call,
                                id: id.to_owned(),
                                name: name.to_owned(),
                            });
                            Block::Tool {
                                index: call,
                                id: id.to_owned(),
                                name: name.to_owned(),
                                arguments: String::new(),
                                fragments: 0,
                                start_input,
                            }
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, new);
            }
            "content_block_delta" => {
                let index = block_index(&event, "content_block_delta")?;
                let delta = event.get("delta").unwrap_or(&Value::Null);
                match str_field(delta, "type") {
                    "text_delta" => {
                        let text = str_field(delta, "text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta { text: text.into() });
                        }
                    }
                    "thinking_delta" => {
                        let text = str_field(delta, "thinking");
                        if !text.is_empty() {
                            out.push(StreamEvent::ReasoningDelta { text: text.into() });
                        }
                    }
                    "input_json_delta" => {
                        let part = str_field(delta, "partial_json");
                        match self.blocks.get_mut(&index) {
                            Some(Block::Tool {
                                index,
                                arguments,
                                fragments,
                                ..
                            }) => {
                                *fragments = fragments.saturating_add(1);
                                if !part.is_empty() {
                                    arguments.push_str(part);
                                    out.push(StreamEvent::ToolCallDelta {
                                        index: *index,
                                        arguments: part.to_owned(),
                                    });
                                }
                            }
                            Some(Block::Answer { buffer, sent, .. }) => {
                                if self.answer == Some(Answer::Wrapped) {
                                    buffer.push_str(part);
                                } else if !part.is_empty() {
                                    *sent = true;
                                    out.push(StreamEvent::TextDelta { text: part.into() });
                                }
                            }
                            Some(_) => {}
                            None => {
                                return Err(DecodeError::protocol(format!(
                                    "input_json_delta for block {index}, which never started"
                                )));
                            }
                        }
                    }
                    // signature_delta, citations_delta and whatever comes next.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = block_index(&event, "content_block_stop")?;
                if let Some(block) = self.blocks.remove(&index) {
                    self.finish_block(block, out)?;
                }
            }
            "message_delta" => {
                if let Some(reason) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(Value::Object(u)) = event.get("usage") {
                    self.delta_usage = u.clone();
                    out.push(StreamEvent::Usage {
                        usage: self.usage(),
                    });
                }
            }
            "message_stop" => {
                // Blocks left open are closed with what they received.
                let mut open: Vec<(u64, Block)> = self.blocks.drain().collect();
                open.sort_by_key(|(i, _)| *i);
                for (_, block) in open {
                    self.finish_block(block, out)?;
                }
                if let Some(raw) = self.stop_reason.clone() {
                    out.push(StreamEvent::Finished {
                        reason: self.finish_reason(&raw),
                        raw,
                    });
                }
                self.done = true;
            }
            "error" => {
                let error = event.get("error").unwrap_or(&Value::Null);
                let error_type = str_field(error, "type");
                let message = str_field(error, "message");
                let kind = kind_of(error_type, message).unwrap_or(ModelErrorKind::Server);
                return Err(DecodeError {
                    kind,
                    message: format!("error event: {error_type}: {message}"),
                });
            }
            // ping, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.done
    }

    fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if self.done {
            Ok(())
        } else {
            Err(DecodeError::ended_before("message_stop"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use flowbot_core::llm::{ChatMessage, ToolCall, ToolResult, ToolSpec};

    use super::*;

    fn events(
        decoder: &mut MessagesDecoder,
        lines: &[&str],
    ) -> Result<Vec<StreamEvent>, DecodeError> {
        let mut out = Vec::new();
        for l in lines {
            decoder.event(None, l, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn errors_are_classified_by_type_and_status() {
        let body = |t: &str| json!({"type": "error", "error": {"type": t, "message": "m"}});
        assert_eq!(
            classify(529, &body("api_error"), "m"),
            Some(ModelErrorKind::Overloaded)
        );
        assert_eq!(
            classify(413, &Value::Null, ""),
            Some(ModelErrorKind::ContextTooLong)
        );
        assert_eq!(
            classify(500, &body("overloaded_error"), "m"),
            Some(ModelErrorKind::Overloaded)
        );
        assert_eq!(
            classify(429, &body("rate_limit_error"), "m"),
            Some(ModelErrorKind::RateLimited)
        );
        assert_eq!(
            classify(500, &body("api_error"), "m"),
            Some(ModelErrorKind::Server)
        );
        assert_eq!(
            classify(401, &body("authentication_error"), "m"),
            Some(ModelErrorKind::Auth)
        );
        assert_eq!(
            classify(403, &body("permission_error"), "m"),
            Some(ModelErrorKind::Auth)
        );
        assert_eq!(
            classify(400, &body("invalid_request_error"), "bad"),
            Some(ModelErrorKind::BadRequest)
        );
        assert_eq!(
            classify(
                400,
                &body("invalid_request_error"),
                "prompt is too long: 210000 tokens > 200000 maximum"
            ),
            Some(ModelErrorKind::ContextTooLong)
        );
        assert_eq!(
            classify(
                400,
                &body("invalid_request_error"),
                "input length and `max_tokens` exceed context limit: 1 + 2 > 3"
            ),
            Some(ModelErrorKind::ContextTooLong)
        );
        assert_eq!(
            classify(404, &body("not_found_error"), "model: x"),
            Some(ModelErrorKind::Config)
        );
        assert_eq!(
            classify(502, &Value::Null, "gateway"),
            Some(ModelErrorKind::Server)
        );
    }

    #[test]
    fn a_conversation_becomes_alternating_turns_with_merged_tool_results() {
        let request = ChatRequest::new(vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Weather?"),
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![
                    ToolCall {
                        id: "t1".into(),
                        name: "a".into(),
                        arguments: "".into(),
                    },
                    ToolCall {
                        id: "t2".into(),
                        name: "b".into(),
                        arguments: r#"{"x":1}"#.into(),
                    },
                ],
            },
            ChatMessage::Tool(ToolResult {
                call_id: "t1".into(),
                name: "a".into(),
                content: "1".into(),
                is_error: false,
            }),
            ChatMessage::Tool(ToolResult {
                call_id: "t2".into(),
                name: "b".into(),
                content: "no".into(),
                is_error: true,
            }),
            ChatMessage::user("And?"),
        ]);
        let (body, answer) = request_body("m", &request).unwrap();
        assert_eq!(answer, None);
        assert_eq!(body["max_tokens"], 4096);
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
                    {"type": "tool_use", "id": "t2", "name": "b", "input": {"x": 1}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "1", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "no", "is_error": true},
                    {"type": "text", "text": "And?"},
                ]},
            ])
        );
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn arguments_that_are_not_an_object_are_refused_with_the_call_named() {
        let request = ChatRequest::new(vec![
            ChatMessage::user("x"),
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![ToolCall {
                    id: "t9".into(),
                    name: "a".into(),
                    arguments: "[1".into(),
                }],
            },
        ]);
        let e = request_body("m", &request).unwrap_err();
        assert!(e.contains("'t9' (a)") && e.contains("not JSON"), "{e}");
    }

    #[test]
    fn structured_output_is_a_forced_tool_or_any_with_other_tools() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let request = ChatRequest::new(vec![ChatMessage::user("x")])
            .with_output_schema("num", schema.clone());
        let (body, answer) = request_body("m", &request).unwrap();
        assert_eq!(answer, Some(Answer::Direct));
        assert_eq!(body["tools"][0]["name"], ANSWER_TOOL);
        assert_eq!(body["tools"][0]["input_schema"], schema);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": ANSWER_TOOL})
        );

        let tool = ToolSpec {
            name: "t".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        };
        let request = request.with_tools(vec![tool.clone()]);
        let (body, _) = request_body("m", &request).unwrap();
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        assert_eq!(body["tools"].as_array().unwrap().len(), 2);

        let list = ChatRequest::new(vec![ChatMessage::user("x")])
            .with_output_schema("l", json!({"type": "array"}));
        let (body, answer) = request_body("m", &list).unwrap();
        assert_eq!(answer, Some(Answer::Wrapped));
        assert_eq!(
            body["tools"][0]["input_schema"]["properties"]["value"],
            json!({"type": "array"})
        );

        let clash = ChatRequest::new(vec![ChatMessage::user("x")])
            .with_output_schema("l", json!({"type": "array"}))
            .with_tools(vec![ToolSpec {
                name: ANSWER_TOOL.into(),
                ..tool
            }]);
        assert!(request_body("m", &clash).unwrap_err().contains("reserved"));
    }

    #[test]
    fn a_wrapped_answer_is_unwrapped_into_text() {
        let mut d = MessagesDecoder::new(Some(Answer::Wrapped));
        let out = events(&mut d, &[
            r#"{"type":"message_start","message":{"id":"msg_1","model":"c","usage":{"input_tokens":3,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"final_answer","input":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"value\": [1,"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":" 2]}"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
            r#"{"type":"message_stop"}"#,
        ]).unwrap();
        let texts: Vec<&StreamEvent> = out
            .iter()
            .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
            .collect();
        assert_eq!(
            texts,
            [&StreamEvent::TextDelta {
                text: "[1,2]".into()
            }]
        );
        assert_eq!(
            out.last(),
            Some(&StreamEvent::Finished {
                reason: FinishReason::Stop,
                raw: "tool_use".into()
            })
        );
        assert!(d.done());
    }

    #[test]
    fn bad_events_are_protocol_errors_and_a_short_body_a_dropped_connection() {
        let mut d = MessagesDecoder::new(None);
        let e = events(&mut d, &["{nope"]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::Protocol);
        let e = events(&mut d, &[r#"{"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":"{"}}"#]).unwrap_err();
        assert!(e.message.contains("block 4"), "{}", e.message);
        let e = events(
            &mut d,
            &[r#"{"type":"content_block_start","content_block":{"type":"text"}}"#],
        )
        .unwrap_err();
        assert!(e.message.contains("without an index"));
        let mut out = Vec::new();
        assert_eq!(
            d.end(&mut out).unwrap_err().kind,
            ModelErrorKind::Connection
        );
        let e = events(&mut d, &[r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#]).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::ContextTooLong);
    }
}
