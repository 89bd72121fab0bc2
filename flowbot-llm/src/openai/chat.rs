//! Chat Completions: `POST {base}/chat/completions` with `stream: true`, answered by
//! `data:` chunks (`chat.completion.chunk`) until `data: [DONE]`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, ChatStream, FinishReason, ModelError, StreamEvent,
    ToolCall, ToolChoice,
};
use serde_json::{Map, Value, json};

use super::{
    bad_request, check_request, classify, endpoint, inband_error, json_object, temperature,
    tool_output, usage_from,
};
use crate::config::ProviderConfig;
use crate::transport::{DecodeError, Decoder, Endpoint};

/// A model behind OpenAI's Chat Completions API, or any server that speaks it.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    endpoint: Endpoint,
    name: String,
    model: String,
    /// `max_completion_tokens` (OpenAI, Azure) or `max_tokens` (everyone else).
    limit_key: &'static str,
}

impl OpenAiChat {
    /// The model `config` describes (its `base_url`, key, Azure settings, timeouts).
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        let endpoint = endpoint(config)?;
        let official = endpoint
            .base_url
            .strip_prefix("https://")
            .is_some_and(|rest| rest == "api.openai.com" || rest.starts_with("api.openai.com/"));
        Ok(OpenAiChat {
            limit_key: if official || config.azure {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            endpoint,
            name: config.name(),
            model: config.model.clone(),
        })
    }

    /// The JSON body for `request`.
    pub(super) fn body(&self, request: &ChatRequest) -> Result<Value, ModelError> {
        check_request(request).map_err(|m| bad_request(&self.name, m))?;
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        let messages = request
            .messages
            .iter()
            .map(message)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| bad_request(&self.name, m))?;
        body.insert("messages".into(), Value::Array(messages));
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.parameters,
                        }
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert("tool_choice".into(), tool_choice(&request.tool_choice));
            body.insert("parallel_tool_calls".into(), json!(true));
        }
        if let Some(t) = request.temperature {
            body.insert("temperature".into(), temperature(t));
        }
        if let Some(n) = request.max_tokens {
            body.insert(self.limit_key.into(), json!(n));
        }
        if let Some(s) = &request.output_schema {
            body.insert(
                "response_format".into(),
                json!({
                    "type": "json_schema",
                    "json_schema": {"name": s.name, "schema": s.schema, "strict": true}
                }),
            );
        }
        Ok(Value::Object(body))
    }
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        _ => json!("auto"),
    }
}

/// One message in Chat Completions' shape.
fn message(m: &ChatMessage) -> Result<Value, String> {
    Ok(match m {
        ChatMessage::System { content } => json!({"role": "system", "content": content}),
        ChatMessage::User { content } => json!({"role": "user", "content": content}),
        ChatMessage::Assistant {
            content,
            tool_calls,
        } => {
            if tool_calls.is_empty() {
                json!({"role": "assistant", "content": content})
            } else {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        })
                    })
                    .collect();
                // A turn that only calls tools has no content (null, not "").
                let content = if content.is_empty() {
                    Value::Null
                } else {
                    json!(content)
                };
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
        }
        ChatMessage::Tool(r) => json!({
            "role": "tool",
            "tool_call_id": r.call_id,
            "content": tool_output(&r.content, r.is_error),
        }),
        other => return Err(format!("a message this dialect cannot send: {other:?}")),
    })
}

#[async_trait]
impl ChatModel for OpenAiChat {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let body = self.body(request)?;
        self.endpoint
            .stream(
                "/chat/completions",
                &[],
                &body,
                classify,
                ChatDecoder::default(),
                request.keep_raw,
            )
            .await
    }
}

/// `finish_reason` as FlowBot reads it.
pub(super) fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "stop" | "end_turn" | "eos" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// One tool call being streamed.
#[derive(Debug, Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
    /// `ToolCallStarted` was emitted (once id and name were known).
    started: bool,
    finished: bool,
}

/// Parses a Chat Completions stream: choice 0 only; tool-call fragments merged by their
/// `index`; text, refusal and reasoning (`reasoning_content` or `reasoning`) apart; usage
/// from the last non-null `usage`; the finish reason from the last non-null
/// `finish_reason`, reported at `[DONE]`.
#[derive(Debug, Default)]
pub(crate) struct ChatDecoder {
    started: bool,
    done: bool,
    /// JSON chunks so far, to name one in errors.
    chunks: usize,
    calls: Vec<Call>,
    /// The provider's tool-call index → position in `calls`.
    by_index: BTreeMap<i64, usize>,
    finish: Option<String>,
}

impl ChatDecoder {
    fn start_call(&mut self, pos: usize, out: &mut Vec<StreamEvent>) {
        let call = &mut self.calls[pos];
        if call.id.is_empty() {
            // Some compatible servers send no id; FlowBot needs one to match the result and
            // as the call's idempotency key, so it must be unique.
            call.id = format!("call_{}", random_id());
        }
        call.started = true;
        out.push(StreamEvent::ToolCallStarted {
            index: pos,
            id: call.id.clone(),
            name: call.name.clone(),
        });
        if !call.arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta {
                index: pos,
                arguments: call.arguments.clone(),
            });
        }
    }

    fn finish_calls(&mut self, out: &mut Vec<StreamEvent>) {
        for pos in 0..self.calls.len() {
            if self.calls[pos].finished {
                continue;
            }
            if !self.calls[pos].started {
                self.start_call(pos, out);
            }
            let call = &mut self.calls[pos];
            call.finished = true;
            out.push(StreamEvent::ToolCallFinished {
                index: pos,
                call: ToolCall {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                },
            });
        }
    }

    fn fragment(&mut self, tc: &Value, out: &mut Vec<StreamEvent>) {
        let id = tc.get("id").and_then(Value::as_str).unwrap_or_default();
        let index = match tc.get("index").and_then(Value::as_i64) {
            Some(i) => i,
            // No index (some compatible servers): a fragment with an id opens a new call,
            // one without continues the last (the reference extractor's rule).
            None if !id.is_empty() => i64::try_from(self.by_index.len()).unwrap_or(i64::MAX),
            None => self.by_index.keys().next_back().copied().unwrap_or(0),
        };
        let pos = match self.by_index.get(&index) {
            Some(&p) => p,
            None => {
                self.calls.push(Call::default());
                let p = self.calls.len() - 1;
                self.by_index.insert(index, p);
                p
            }
        };
        let function = tc.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let args = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let call = &mut self.calls[pos];
        if call.finished {
            return;
        }
        if call.id.is_empty() && !id.is_empty() {
            call.id = id.to_owned();
        }
        if call.name.is_empty() && !name.is_empty() {
            call.name = name.to_owned();
        }
        call.arguments.push_str(args);
        if call.started {
            if !args.is_empty() {
                out.push(StreamEvent::ToolCallDelta {
                    index: pos,
                    arguments: args.to_owned(),
                });
            }
        } else if !call.id.is_empty() && !call.name.is_empty() {
            self.start_call(pos, out);
        }
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<StreamEvent>) {
        if choice.get("index").and_then(Value::as_i64).unwrap_or(0) != 0 {
            return;
        }
        if let Some(delta) = choice.get("delta").filter(|d| d.is_object()) {
            let text = |key: &str| {
                delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            if let Some(t) = text("content") {
                out.push(StreamEvent::TextDelta { text: t });
            }
            if let Some(t) = text("refusal") {
                out.push(StreamEvent::RefusalDelta { text: t });
            }
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = text(key) {
                    out.push(StreamEvent::ReasoningDelta { text: t });
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for tc in calls {
                    self.fragment(tc, out);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
            self.finish_calls(out);
        }
    }
}

/// 24 random letters and digits.
pub(super) fn random_id() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect()
}

impl Decoder for ChatDecoder {
    fn event(
        &mut self,
        _name: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError> {
        if self.done {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            self.finish_calls(out);
            if let Some(raw) = self.finish.take() {
                out.push(StreamEvent::Finished {
                    reason: finish_reason(&raw),
                    raw,
                });
            }
            return Ok(());
        }
        self.chunks = self.chunks.saturating_add(1);
        let n = self.chunks;
        let chunk = json_object(data, format_args!("chat.completion.chunk {n}"))?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(inband_error(error));
        }
        if !self.started
            && let Some(id) = chunk
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        {
            self.started = true;
            out.push(StreamEvent::Started {
                id: id.to_owned(),
                model: chunk
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        if let Some(choices) = chunk.get("choices").and_then(Value::as_array) {
            for choice in choices {
                self.choice(choice, out);
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            out.push(StreamEvent::Usage {
                usage: usage_from(
                    u,
                    [
                        "prompt_tokens",
                        "completion_tokens",
                        "total_tokens",
                        "/prompt_tokens_details/cached_tokens",
                        "/completion_tokens_details/reasoning_tokens",
                    ],
                ),
            });
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.done
    }

    fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if self.done {
            return Ok(());
        }
        Err(DecodeError::ended_before("data: [DONE]"))
    }
}
