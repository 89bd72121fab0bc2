//! The Responses API: `POST {base}/responses` with `stream: true` and `store: false`,
//! answered by typed events (`response.created`, `response.output_text.delta`, …) until
//! `response.completed`, `response.incomplete` or `response.failed`.

use std::collections::HashMap;

use async_trait::async_trait;
use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, ChatStream, FinishReason, ModelError, ModelErrorKind,
    StreamEvent, ToolCall, ToolChoice,
};
use serde_json::{Map, Value, json};

use super::{
    bad_request, check_request, classify, endpoint, inband_error, json_object, temperature,
    tool_output, usage_from,
};
use crate::config::ProviderConfig;
use crate::transport::{DecodeError, Decoder, Endpoint};

/// A model behind OpenAI's Responses API.
#[derive(Debug, Clone)]
pub struct OpenAiResponses {
    endpoint: Endpoint,
    name: String,
    model: String,
}

impl OpenAiResponses {
    /// The model `config` describes (its `base_url`, key, Azure settings, timeouts).
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        Ok(OpenAiResponses {
            endpoint: endpoint(config)?,
            name: config.name(),
            model: config.model.clone(),
        })
    }

    /// The JSON body for `request`.
    pub(super) fn body(&self, request: &ChatRequest) -> Result<Value, ModelError> {
        check_request(request).map_err(|m| bad_request(&self.name, m))?;
        let mut instructions: Vec<&str> = Vec::new();
        let mut input: Vec<Value> = Vec::new();
        for m in &request.messages {
            match m {
                ChatMessage::System { content } => instructions.push(content),
                ChatMessage::User { content } => {
                    input.push(json!({"type": "message", "role": "user", "content": content}));
                }
                ChatMessage::Assistant {
                    content,
                    tool_calls,
                } => {
                    if !content.is_empty() || tool_calls.is_empty() {
                        input.push(
                            json!({"type": "message", "role": "assistant", "content": content}),
                        );
                    }
                    for c in tool_calls {
                        input.push(json!({
                            "type": "function_call",
                            "call_id": c.id,
                            "name": c.name,
                            "arguments": c.arguments,
                        }));
                    }
                }
                ChatMessage::Tool(r) => input.push(json!({
                    "type": "function_call_output",
                    "call_id": r.call_id,
                    "output": tool_output(&r.content, r.is_error),
                })),
                other => {
                    return Err(bad_request(
                        &self.name,
                        format!("a message this dialect cannot send: {other:?}"),
                    ));
                }
            }
        }
        if input.is_empty() {
            return Err(bad_request(
                &self.name,
                "the request has only system messages: the Responses API needs input".into(),
            ));
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        if !instructions.is_empty() {
            body.insert("instructions".into(), json!(instructions.join("\n\n")));
        }
        body.insert("input".into(), Value::Array(input));
        body.insert("stream".into(), json!(true));
        body.insert("store".into(), json!(false));
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                        "strict": false,
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
            body.insert("max_output_tokens".into(), json!(n));
        }
        if let Some(s) = &request.output_schema {
            body.insert(
                "text".into(),
                json!({"format": {
                    "type": "json_schema",
                    "name": s.name,
                    "schema": s.schema,
                    "strict": true,
                }}),
            );
        }
        Ok(Value::Object(body))
    }
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "name": name}),
        _ => json!("auto"),
    }
}

#[async_trait]
impl ChatModel for OpenAiResponses {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let body = self.body(request)?;
        self.endpoint
            .stream(
                "/responses",
                &[],
                &body,
                classify,
                ResponsesDecoder::default(),
                request.keep_raw,
            )
            .await
    }
}

/// One function (or custom tool) call item being streamed.
#[derive(Debug)]
struct Call {
    item_id: String,
    call_id: String,
    name: String,
    arguments: String,
    /// Some `*.delta` arrived (else the `*.done` event's text is the arguments).
    had_delta: bool,
    /// The text of `response.function_call_arguments.done`.
    done_arguments: Option<String>,
    finished: bool,
}

/// Parses a Responses stream as OpenAI documents it: text from `response.output_text.delta`,
/// refusals from `response.refusal.delta`, reasoning from the reasoning summary and text
/// deltas; a call's `call_id` and name from `response.output_item.added`, its arguments from
/// `response.function_call_arguments.delta` keyed by item id, complete at
/// `response.output_item.done`; usage and status from the terminal event.
#[derive(Debug, Default)]
pub(crate) struct ResponsesDecoder {
    started: bool,
    terminal: bool,
    calls: Vec<Call>,
    by_item: HashMap<String, usize>,
    by_output_index: HashMap<i64, usize>,
}

const TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl ResponsesDecoder {
    fn start(&mut self, response: Option<&Value>, out: &mut Vec<StreamEvent>) {
        let Some(r) = response else { return };
        if self.started {
            return;
        }
        let id = text(r, "id");
        if id.is_empty() {
            return;
        }
        self.started = true;
        out.push(StreamEvent::Started {
            id,
            model: text(r, "model"),
        });
    }

    fn item_added(&mut self, event: &Value, out: &mut Vec<StreamEvent>) {
        let Some(item) = event.get("item") else {
            return;
        };
        let kind = item.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("function_call" | "custom_tool_call")) {
            return;
        }
        let item_id = text(item, "id");
        if self.by_item.contains_key(&item_id) {
            return;
        }
        let mut call_id = text(item, "call_id");
        if call_id.is_empty() {
            call_id = if item_id.is_empty() {
                format!("call_{}", super::chat::random_id())
            } else {
                item_id.clone()
            };
        }
        let pos = self.calls.len();
        self.calls.push(Call {
            item_id: item_id.clone(),
            call_id: call_id.clone(),
            name: text(item, "name"),
            arguments: String::new(),
            had_delta: false,
            done_arguments: None,
            finished: false,
        });
        self.by_item.insert(item_id, pos);
        if let Some(i) = event.get("output_index").and_then(Value::as_i64) {
            self.by_output_index.insert(i, pos);
        }
        out.push(StreamEvent::ToolCallStarted {
            index: pos,
            id: call_id,
            name: text(item, "name"),
        });
    }

    /// The call an arguments event is about: by `item_id`, else by `output_index`.
    fn call_of(&self, event: &Value, typ: &str) -> Result<usize, DecodeError> {
        let item_id = event.get("item_id").and_then(Value::as_str);
        item_id
            .and_then(|id| self.by_item.get(id))
            .or_else(|| {
                event
                    .get("output_index")
                    .and_then(Value::as_i64)
                    .and_then(|i| self.by_output_index.get(&i))
            })
            .copied()
            .ok_or_else(|| {
                DecodeError::protocol(format!(
                    "event {typ}: item {} was never announced by response.output_item.added",
                    item_id.unwrap_or("(no item_id)")
                ))
            })
    }

    fn item_done(&mut self, event: &Value, out: &mut Vec<StreamEvent>) {
        let Some(item) = event.get("item") else {
            return;
        };
        let Some(&pos) = self.by_item.get(&text(item, "id")) else {
            return;
        };
        let call = &mut self.calls[pos];
        if call.finished {
            return;
        }
        if call.name.is_empty() {
            call.name = text(item, "name");
        }
        if let Some(id) = item.get("call_id").and_then(Value::as_str)
            && call.call_id == call.item_id
            && !id.is_empty()
        {
            call.call_id = id.to_owned();
        }
        if !call.had_delta {
            // No deltas: the arguments come whole, in `.done` or in the item itself.
            let whole = call
                .done_arguments
                .take()
                .or_else(|| {
                    item.get("arguments")
                        .or_else(|| item.get("input"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            if !whole.is_empty() {
                call.arguments = whole.clone();
                out.push(StreamEvent::ToolCallDelta {
                    index: pos,
                    arguments: whole,
                });
            }
        }
        call.finished = true;
        out.push(StreamEvent::ToolCallFinished {
            index: pos,
            call: ToolCall {
                id: call.call_id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            },
        });
    }

    fn terminal(
        &mut self,
        typ: &str,
        event: &Value,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError> {
        self.terminal = true;
        let r = event.get("response");
        self.start(r, out);
        let r = r.unwrap_or(&Value::Null);
        let status = r
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| typ.trim_start_matches("response.").to_owned());
        if typ == "response.failed" || status == "failed" {
            let error = r.get("error").filter(|e| !e.is_null());
            return Err(match error {
                Some(e) => inband_error(e),
                None => DecodeError {
                    kind: ModelErrorKind::Server,
                    message: "the response failed without saying why".into(),
                },
            });
        }
        if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
            out.push(StreamEvent::Usage {
                usage: usage_from(
                    u,
                    [
                        "input_tokens",
                        "output_tokens",
                        "total_tokens",
                        "/input_tokens_details/cached_tokens",
                        "/output_tokens_details/reasoning_tokens",
                    ],
                ),
            });
        }
        let reason = match status.as_str() {
            "completed" if !self.calls.is_empty() => FinishReason::ToolCalls,
            "completed" => FinishReason::Stop,
            "incomplete" => match r
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
            {
                Some("max_output_tokens") => FinishReason::Length,
                Some("content_filter") => FinishReason::ContentFilter,
                _ => FinishReason::Other,
            },
            _ => FinishReason::Other,
        };
        out.push(StreamEvent::Finished {
            reason,
            raw: status,
        });
        Ok(())
    }
}

impl Decoder for ResponsesDecoder {
    fn event(
        &mut self,
        name: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError> {
        if self.terminal {
            return Ok(());
        }
        let event = json_object(
            data,
            format_args!("event {}", name.unwrap_or("(without a name)")),
        )?;
        let typ = event
            .get("type")
            .and_then(Value::as_str)
            .or(name)
            .unwrap_or_default()
            .to_owned();
        let delta = || text(&event, "delta");
        match typ.as_str() {
            "response.created" | "response.in_progress" => self.start(event.get("response"), out),
            t if TERMINAL.contains(&t) => self.terminal(t, &event, out)?,
            "response.output_item.added" => self.item_added(&event, out),
            "response.output_item.done" => self.item_done(&event, out),
            "response.output_text.delta" => {
                let t = delta();
                if !t.is_empty() {
                    out.push(StreamEvent::TextDelta { text: t });
                }
            }
            "response.refusal.delta" => {
                let t = delta();
                if !t.is_empty() {
                    out.push(StreamEvent::RefusalDelta { text: t });
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let t = delta();
                if !t.is_empty() {
                    out.push(StreamEvent::ReasoningDelta { text: t });
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let pos = self.call_of(&event, &typ)?;
                let call = &mut self.calls[pos];
                let t = delta();
                if !call.finished && !t.is_empty() {
                    call.had_delta = true;
                    call.arguments.push_str(&t);
                    out.push(StreamEvent::ToolCallDelta {
                        index: pos,
                        arguments: t,
                    });
                }
            }
            "response.function_call_arguments.done" | "response.custom_tool_call_input.done" => {
                let pos = self.call_of(&event, &typ)?;
                let key = if typ.starts_with("response.function_call") {
                    "arguments"
                } else {
                    "input"
                };
                if let Some(a) = event.get(key).and_then(Value::as_str) {
                    self.calls[pos].done_arguments = Some(a.to_owned());
                }
            }
            "error" => {
                // `{"type": "error", "code", "message", "param"}`; some versions nest it.
                let e = event
                    .get("error")
                    .filter(|e| e.is_object())
                    .unwrap_or(&event);
                return Err(inband_error(e));
            }
            _ => {}
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.terminal
    }

    fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if self.terminal {
            return Ok(());
        }
        Err(DecodeError::ended_before(
            "response.completed (or another terminal event)",
        ))
    }
}
