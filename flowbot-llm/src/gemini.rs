//! Google Gemini (`models/{model}:streamGenerateContent?alt=sse`) and its embeddings
//! (`models/{model}:batchEmbedContents`).
//!
//! The request: `contents` (`user` and `model` turns of parts: text, the model's
//! `functionCall`s, the user's `functionResponse`s; consecutive turns of one role merged),
//! `systemInstruction` from the system messages, `tools[].functionDeclarations`,
//! `toolConfig.functionCallingConfig` (`AUTO`, `ANY`, `NONE`, `allowedFunctionNames` for one
//! tool) and `generationConfig` (temperature, `maxOutputTokens`, structured output). The key
//! goes in `x-goog-api-key`.
//!
//! Schemas are sent as JSON Schema, unchanged: a tool's as `parametersJsonSchema` and the
//! answer's as `responseJsonSchema` (with `responseMimeType: application/json`). The older
//! `parameters` and `responseSchema` fields take only Google's OpenAPI subset (no `$ref`,
//! `oneOf`, `additionalProperties`, …), and FlowBot's tool schemas are full JSON Schema.
//!
//! A tool result goes back as a `functionResponse` whose `response` is the result when it is
//! a JSON object, `{"output": result}` otherwise, and `{"error": result}` when the call
//! failed, as Google's documentation suggests.
//!
//! The answer is a series of `data:` chunks with no terminal event: the end of the body ends
//! the answer. Only candidate 0 is read; `thought: true` parts are reasoning; each
//! `functionCall` part is a complete call (Gemini gives most calls no id: one is made up,
//! `call_<n>_<responseId>`, unique to the answer, and sent back with the call and its
//! result); `thoughtSignature`s are not kept. The last `finishReason` is the answer's, and
//! `STOP` after function calls means [`FinishReason::ToolCalls`]. `usageMetadata` is
//! cumulative: the last one counts.

use async_trait::async_trait;
use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, ChatStream, Embedder, FinishReason, ModelError,
    ModelErrorKind, StreamEvent, ToolCall, ToolChoice, ToolResult, Usage,
};
use serde_json::{Map, Value, json};

use crate::config::ProviderConfig;
use crate::transport::{DecodeError, Decoder, Endpoint, classify_status, is_context_message};

/// The most texts one `batchEmbedContents` call may carry.
const EMBED_BATCH: usize = 100;

/// A model behind the Gemini API.
#[derive(Debug)]
pub struct Gemini {
    endpoint: Endpoint,
    model: String,
    name: String,
}

/// A model name fit for the URL path: `models/` is optional, and only letters, digits, `.`,
/// `_` and `-` may follow.
fn model_path(config: &ProviderConfig, model: &str, key: &str) -> Result<String, ModelError> {
    let m = model.trim();
    let m = m.strip_prefix("models/").unwrap_or(m);
    if m.is_empty()
        || !m
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ModelError::new(
            ModelErrorKind::Config,
            config.name(),
            format!(
                "{key} '{model}': a Gemini model name has only letters, digits, '.', '_' and '-'"
            ),
        ));
    }
    Ok(m.to_owned())
}

fn endpoint(config: &ProviderConfig) -> Result<Endpoint, ModelError> {
    let mut endpoint = config.endpoint()?;
    if let Some(key) = config.key()? {
        endpoint.header("x-goog-api-key", &key, true)?;
    }
    Ok(endpoint)
}

impl Gemini {
    /// The model `config` names; its key (if any) is sent as `x-goog-api-key`.
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        let model = model_path(config, &config.model, "model")?;
        Ok(Gemini {
            endpoint: endpoint(config)?,
            model,
            name: config.name(),
        })
    }
}

#[async_trait]
impl ChatModel for Gemini {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let body = request_body(request)
            .map_err(|m| ModelError::new(ModelErrorKind::BadRequest, &self.name, m))?;
        let path = format!("/models/{}:streamGenerateContent", self.model);
        self.endpoint
            .stream(
                &path,
                &[("alt", "sse")],
                &body,
                classify,
                GeminiDecoder::new(self.model.clone()),
                request.keep_raw,
            )
            .await
    }
}

/// The request body. `Err` names what in the request the API could not take.
fn request_body(request: &ChatRequest) -> Result<Value, String> {
    let mut system: Vec<&str> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, part: Value| match contents.last_mut() {
        Some((r, parts)) if *r == role => parts.push(part),
        _ => contents.push((role, vec![part])),
    };
    for (i, message) in request.messages.iter().enumerate() {
        match message {
            ChatMessage::System { content } => {
                if !content.is_empty() {
                    system.push(content);
                }
            }
            ChatMessage::User { content } => {
                if !content.is_empty() {
                    push("user", json!({"text": content}));
                }
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                if !content.is_empty() {
                    push("model", json!({"text": content}));
                }
                for call in tool_calls {
                    push("model", function_call(i, call)?);
                }
            }
            ChatMessage::Tool(result) => push("user", function_response(result)),
            _ => {
                return Err(format!(
                    "messages[{i}]: a kind of message this dialect cannot send"
                ));
            }
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    );
    if !system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "description": t.description});
                if !t.parameters.is_null() {
                    d["parametersJsonSchema"] = t.parameters.clone();
                }
                d
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let config = match &request.tool_choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            _ => json!({"mode": "AUTO"}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let mut generation = Map::new();
    if let Some(t) = request.temperature {
        generation.insert("temperature".into(), json!(t));
    }
    if let Some(n) = request.max_tokens {
        generation.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(out) = &request.output_schema {
        generation.insert("responseMimeType".into(), json!("application/json"));
        generation.insert("responseJsonSchema".into(), out.schema.clone());
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

fn function_call(i: usize, call: &ToolCall) -> Result<Value, String> {
    let args = match call.parsed_arguments() {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return Err(format!(
                "messages[{i}]: the arguments of tool call '{}' ({}) are not a JSON object",
                call.id, call.name
            ));
        }
        Err(e) => {
            return Err(format!(
                "messages[{i}]: the arguments of tool call '{}' ({}) are not JSON: {e}",
                call.id, call.name
            ));
        }
    };
    let mut fc = json!({"name": call.name, "args": args});
    if !call.id.is_empty() {
        fc["id"] = json!(call.id);
    }
    Ok(json!({"functionCall": fc}))
}

fn function_response(result: &ToolResult) -> Value {
    let value = serde_json::from_str::<Value>(&result.content)
        .unwrap_or_else(|_| Value::String(result.content.clone()));
    let response = if result.is_error {
        json!({"error": value})
    } else if value.is_object() {
        value
    } else {
        json!({"output": value})
    };
    let mut fr = json!({"name": result.name, "response": response});
    if !result.call_id.is_empty() {
        fr["id"] = json!(result.call_id);
    }
    json!({"functionResponse": fr})
}

/// The kind of a Gemini error (`error.status` of an error body or chunk).
fn kind_of(error: &Value) -> Option<ModelErrorKind> {
    let status = error.get("status").and_then(Value::as_str)?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let bad_key = lower.contains("api key not valid")
        || error
            .get("details")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x["reason"] == "API_KEY_INVALID"));
    Some(match status {
        "RESOURCE_EXHAUSTED" => ModelErrorKind::RateLimited,
        "UNAVAILABLE" => ModelErrorKind::Overloaded,
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => ModelErrorKind::Auth,
        "INVALID_ARGUMENT" if bad_key => ModelErrorKind::Auth,
        "INVALID_ARGUMENT" if is_context_message(&lower) => ModelErrorKind::ContextTooLong,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => ModelErrorKind::BadRequest,
        "NOT_FOUND" => ModelErrorKind::Config,
        "INTERNAL" | "DEADLINE_EXCEEDED" | "UNKNOWN" => ModelErrorKind::Server,
        _ => return None,
    })
}

/// Classify a failed HTTP answer by the body's `error.status`, else by status code.
fn classify(status: u16, body: &Value, message: &str) -> Option<ModelErrorKind> {
    // Overload is the status's to say, whatever the body calls it.
    if matches!(status, 503 | 529) {
        return Some(ModelErrorKind::Overloaded);
    }
    body.get("error")
        .and_then(kind_of)
        .or_else(|| Some(classify_status(status, message)))
}

/// The stream parser of this dialect, for the recorded-stream tests.
#[cfg(test)]
pub(crate) fn decoder() -> Box<dyn Decoder> {
    Box::new(GeminiDecoder::new(String::new()))
}

/// Turns `GenerateContentResponse` chunks into typed events.
struct GeminiDecoder {
    /// The model asked for, when the answer names none.
    model: String,
    started: bool,
    response_id: String,
    calls: usize,
    finish: Option<String>,
    usage: Option<Usage>,
    /// Chunks seen, for error messages.
    chunks: usize,
}

impl GeminiDecoder {
    fn new(model: String) -> Self {
        GeminiDecoder {
            model,
            started: false,
            response_id: String::new(),
            calls: 0,
            finish: None,
            usage: None,
            chunks: 0,
        }
    }

    fn call_id(&self, index: usize) -> String {
        let n = index.saturating_add(1);
        if self.response_id.is_empty() {
            // No response id to make it unique: a random one.
            let tag: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(12)
                .collect();
            format!("call_{n}_{tag}")
        } else {
            format!("call_{n}_{}", self.response_id)
        }
    }

    fn finish_reason(&self, raw: &str) -> FinishReason {
        match raw {
            "STOP" if self.calls > 0 => FinishReason::ToolCalls,
            "STOP" => FinishReason::Stop,
            "MAX_TOKENS" => FinishReason::Length,
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT" => FinishReason::ContentFilter,
            _ => FinishReason::Other,
        }
    }
}

fn count(u: &Value, key: &str) -> Option<u64> {
    u.get(key).and_then(Value::as_u64)
}

impl Decoder for GeminiDecoder {
    fn event(
        &mut self,
        _name: Option<&str>,
        data: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), DecodeError> {
        self.chunks = self.chunks.saturating_add(1);
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            let snippet: String = data.chars().take(80).collect();
            DecodeError::protocol(format!(
                "chunk {} is not JSON ({e}): {snippet}",
                self.chunks
            ))
        })?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let status = error
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(DecodeError {
                kind: kind_of(error).unwrap_or(ModelErrorKind::Server),
                message: format!("error in the answer: {status}: {message}"),
            });
        }
        if !chunk.is_object() {
            return Err(DecodeError::protocol("a chunk is not a JSON object"));
        }
        if !self.started {
            self.started = true;
            self.response_id = chunk
                .get("responseId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let model = chunk
                .get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or(&self.model)
                .to_owned();
            out.push(StreamEvent::Started {
                id: self.response_id.clone(),
                model,
            });
        }
        if let Some(reason) = chunk
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Err(DecodeError {
                kind: ModelErrorKind::ContentFilter,
                message: format!("the prompt was blocked: {reason}"),
            });
        }
        let candidate = chunk
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            });
        if let Some(candidate) = candidate {
            let parts = candidate
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    if text.is_empty() {
                        continue;
                    }
                    let text = text.to_owned();
                    if part.get("thought").and_then(Value::as_bool) == Some(true) {
                        out.push(StreamEvent::ReasoningDelta { text });
                    } else {
                        out.push(StreamEvent::TextDelta { text });
                    }
                } else if let Some(fc) = part.get("functionCall") {
                    let name = fc.get("name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() {
                        return Err(DecodeError::protocol("a functionCall without a name"));
                    }
                    let index = self.calls;
                    let id = match fc.get("id").and_then(Value::as_str) {
                        Some(id) if !id.is_empty() => id.to_owned(),
                        _ => self.call_id(index),
                    };
                    let arguments = match fc.get("args") {
                        None | Some(Value::Null) => "{}".to_owned(),
                        Some(args) => args.to_string(),
                    };
                    self.calls = self.calls.saturating_add(1);
                    out.push(StreamEvent::ToolCallStarted {
                        index,
                        id: id.clone(),
                        name: name.to_owned(),
                    });
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: arguments.clone(),
                    });
                    out.push(StreamEvent::ToolCallFinished {
                        index,
                        call: ToolCall {
                            id,
                            name: name.to_owned(),
                            arguments,
                        },
                    });
                }
                // thoughtSignature-only parts, inline data, code execution: not shown.
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str)
                && !reason.is_empty()
            {
                self.finish = Some(reason.to_owned());
            }
        }
        if let Some(u) = chunk.get("usageMetadata").filter(|u| u.is_object()) {
            let usage = Usage {
                input_tokens: count(u, "promptTokenCount").unwrap_or(0),
                output_tokens: count(u, "candidatesTokenCount").unwrap_or(0),
                total_tokens: count(u, "totalTokenCount"),
                cached_input_tokens: count(u, "cachedContentTokenCount"),
                cache_creation_input_tokens: None,
                reasoning_tokens: count(u, "thoughtsTokenCount"),
            };
            if self.usage != Some(usage) {
                self.usage = Some(usage);
                out.push(StreamEvent::Usage { usage });
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        // No terminal event: the body's end is the answer's.
        false
    }

    fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if !self.started {
            return Err(DecodeError::protocol(
                "the answer ended without a single chunk",
            ));
        }
        if let Some(raw) = self.finish.take() {
            out.push(StreamEvent::Finished {
                reason: self.finish_reason(&raw),
                raw,
            });
        }
        Ok(())
    }
}

/// Gemini's embeddings (`batchEmbedContents`), for the config's `embedding_model`.
#[derive(Debug)]
pub struct GeminiEmbedder {
    endpoint: Endpoint,
    model: String,
    name: String,
}

impl GeminiEmbedder {
    /// The embedding model `config` names in `embedding_model` (e.g. `gemini-embedding-001`);
    /// a [`ModelErrorKind::Config`] error when it names none.
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        let Some(model) = config.embedding_model.as_deref() else {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                config.name(),
                "embedding_model is not set: Gemini embeddings need one, e.g. gemini-embedding-001",
            ));
        };
        let model = model_path(config, model, "embedding_model")?;
        let mut endpoint = endpoint(config)?;
        let name = format!("{}/{model}", config.dialect.as_str());
        endpoint.name = name.clone();
        Ok(GeminiEmbedder {
            endpoint,
            model,
            name,
        })
    }

    fn protocol(&self, message: String) -> ModelError {
        ModelError::new(ModelErrorKind::Protocol, &self.name, message)
    }
}

#[async_trait]
impl Embedder for GeminiEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> Option<usize> {
        None
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let path = format!("/models/{}:batchEmbedContents", self.model);
        let qualified = format!("models/{}", self.model);
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
        for batch in texts.chunks(EMBED_BATCH) {
            let requests: Vec<Value> = batch
                .iter()
                .map(|t| json!({"model": qualified, "content": {"parts": [{"text": t}]}}))
                .collect();
            let answer = self
                .endpoint
                .post_json(&path, &[], &json!({"requests": requests}), classify)
                .await?;
            let embeddings = answer
                .get("embeddings")
                .and_then(Value::as_array)
                .ok_or_else(|| self.protocol("the answer has no 'embeddings' list".into()))?;
            if embeddings.len() != batch.len() {
                return Err(self.protocol(format!(
                    "{} embeddings for {} texts",
                    embeddings.len(),
                    batch.len()
                )));
            }
            for (i, e) in embeddings.iter().enumerate() {
                let values = e
                    .get("values")
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.protocol(format!("embeddings[{i}] has no 'values'")))?;
                let vector = values
                    .iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| {
                        self.protocol(format!("embeddings[{i}] has a value that is not a number"))
                    })?;
                if let Some(first) = vectors.first()
                    && first.len() != vector.len()
                {
                    return Err(self.protocol(format!(
                        "embeddings of {} and {} dimensions in one answer",
                        first.len(),
                        vector.len()
                    )));
                }
                vectors.push(vector);
            }
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use flowbot_core::llm::ToolSpec;

    use super::*;

    #[test]
    fn errors_are_classified_by_status() {
        let body = |s: &str, m: &str| json!({"error": {"code": 400, "message": m, "status": s}});
        let k = |s: &str, m: &str| classify(400, &body(s, m), m);
        assert_eq!(
            k("RESOURCE_EXHAUSTED", "quota"),
            Some(ModelErrorKind::RateLimited)
        );
        assert_eq!(
            k("UNAVAILABLE", "overloaded"),
            Some(ModelErrorKind::Overloaded)
        );
        assert_eq!(k("UNAUTHENTICATED", "x"), Some(ModelErrorKind::Auth));
        assert_eq!(k("PERMISSION_DENIED", "x"), Some(ModelErrorKind::Auth));
        assert_eq!(
            k(
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key."
            ),
            Some(ModelErrorKind::Auth)
        );
        assert_eq!(
            k(
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
            ),
            Some(ModelErrorKind::ContextTooLong)
        );
        assert_eq!(
            k("INVALID_ARGUMENT", "bad"),
            Some(ModelErrorKind::BadRequest)
        );
        assert_eq!(
            k("NOT_FOUND", "models/x is not found"),
            Some(ModelErrorKind::Config)
        );
        assert_eq!(
            classify(502, &Value::Null, "gateway"),
            Some(ModelErrorKind::Server)
        );
    }

    #[test]
    fn model_names_are_checked_for_the_path() {
        let c = ProviderConfig::new(crate::Dialect::Gemini, "models/gemini-2.5-flash");
        assert_eq!(
            model_path(&c, &c.model, "model").unwrap(),
            "gemini-2.5-flash"
        );
        let e = model_path(&c, "../x?y", "model").unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::Config);
        assert!(e.message.contains("'../x?y'"), "{}", e.message);
    }

    #[test]
    fn tools_choices_and_results_take_gemini_shapes() {
        let tool = ToolSpec {
            name: "t".into(),
            description: "d".into(),
            parameters: json!({"type": "object", "$defs": {}}),
        };
        let mut request = ChatRequest::new(vec![
            ChatMessage::system("s1"),
            ChatMessage::system("s2"),
            ChatMessage::user("u"),
            ChatMessage::Assistant {
                content: "a".into(),
                tool_calls: vec![ToolCall {
                    id: "c".into(),
                    name: "t".into(),
                    arguments: "".into(),
                }],
            },
            ChatMessage::Tool(ToolResult {
                call_id: "c".into(),
                name: "t".into(),
                content: "[1]".into(),
                is_error: false,
            }),
        ])
        .with_tools(vec![tool]);
        request.tool_choice = ToolChoice::Tool("t".into());
        let body = request_body(&request).unwrap();
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "s1\n\ns2"}]})
        );
        assert_eq!(
            body["contents"],
            json!([
                {"role": "user", "parts": [{"text": "u"}]},
                {"role": "model", "parts": [{"text": "a"}, {"functionCall": {"name": "t", "args": {}, "id": "c"}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "t", "response": {"output": [1]}, "id": "c"}}]},
            ])
        );
        assert_eq!(
            body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["$defs"],
            json!({})
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["t"]}})
        );
        assert!(body.get("generationConfig").is_none());
        let failed = function_response(&ToolResult {
            call_id: String::new(),
            name: "t".into(),
            content: "boom".into(),
            is_error: true,
        });
        assert_eq!(
            failed,
            json!({"functionResponse": {"name": "t", "response": {"error": "boom"}}})
        );
    }

    #[test]
    fn chunks_that_are_errors_blocks_or_garbage_fail_the_stream() {
        let mut d = GeminiDecoder::new("m".into());
        let mut out = Vec::new();
        let e = d
            .event(
                None,
                r#"{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::Overloaded);
        let e = d
            .event(
                None,
                r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                ModelErrorKind::ContentFilter,
                "the prompt was blocked: SAFETY"
            )
        );
        assert_eq!(
            d.event(None, "[1", &mut out).unwrap_err().kind,
            ModelErrorKind::Protocol
        );
        assert_eq!(
            d.event(None, "[1]", &mut out).unwrap_err().kind,
            ModelErrorKind::Protocol
        );
        let mut empty = GeminiDecoder::new("m".into());
        assert_eq!(
            empty.end(&mut out).unwrap_err().kind,
            ModelErrorKind::Protocol
        );
    }

    #[test]
    fn calls_without_ids_get_ids_unique_to_the_answer() {
        let mut d = GeminiDecoder::new("m".into());
        let mut out = Vec::new();
        d.event(None, r#"{"responseId":"r9","candidates":[{"content":{"parts":[{"functionCall":{"name":"a"}},{"functionCall":{"name":"b","args":{"x":1},"id":"given"}}]},"finishReason":"STOP"}]}"#, &mut out).unwrap();
        d.end(&mut out).unwrap();
        let calls: Vec<ToolCall> = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallFinished { call, .. } => Some(call.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            calls[0],
            ToolCall {
                id: "call_1_r9".into(),
                name: "a".into(),
                arguments: "{}".into()
            }
        );
        assert_eq!(
            calls[1],
            ToolCall {
                id: "given".into(),
                name: "b".into(),
                arguments: r#"{"x":1}"#.into()
            }
        );
        assert_eq!(
            out.last(),
            Some(&StreamEvent::Finished {
                reason: FinishReason::ToolCalls,
                raw: "STOP".into()
            })
        );
    }
}
