//! The OpenAI dialects: Chat Completions (and every server that speaks it: Ollama, vLLM,
//! llama.cpp's server, OpenRouter, LiteLLM, Azure OpenAI), the Responses API, and
//! embeddings.
//!
//! # Authentication
//!
//! The key goes in `Authorization: Bearer <key>`, or in Azure's `api-key: <key>` header when
//! [`ProviderConfig::azure`] is set; either header is marked sensitive and the key is
//! redacted from every error. Without a key (a local server) no header is sent.
//!
//! # Requests
//!
//! Both dialects always stream. A request without messages, a `tool_choice` that names a tool
//! not offered (or requires tools when none are), a temperature outside 0..=2 and a token
//! limit of 0 are refused before anything is sent, as [`ModelErrorKind::BadRequest`].
//!
//! - **Token limit (Chat).** The official API (`api.openai.com`) and Azure OpenAI get
//!   `max_completion_tokens`: OpenAI deprecated `max_tokens` in its favour and its reasoning
//!   models refuse `max_tokens`. Every other base URL (Ollama, vLLM, llama.cpp's server,
//!   LiteLLM, OpenRouter, …) gets `max_tokens`, which all of them read, while some of their
//!   released versions ignore or refuse `max_completion_tokens`. The Responses API has one
//!   name, `max_output_tokens`.
//! - **Tool results.** Chat Completions and Responses have no error flag on a tool result: a
//!   result with [`ToolResult::is_error`](flowbot_core::llm::ToolResult) set is sent as
//!   `error: <content>` so the model sees that the call failed.
//! - **Responses tools** are sent with `strict: false`: the Responses API makes function
//!   tools strict by default, and strict mode refuses most action schemas (every property
//!   required, no additional properties). Structured output is strict in both dialects.
//! - **Responses** calls are sent with `store: false`: the whole conversation travels in
//!   each request, nothing is kept at OpenAI.
//!
//! # Errors
//!
//! HTTP errors are classified by the body's `error.code` first, then by status
//! ([`classify`]). `insufficient_quota` (HTTP 429 at OpenAI) is **not** a rate limit: the
//! account has no credit left and no retry will succeed until someone pays, so it is
//! [`ModelErrorKind::Auth`], permanent, like a key that lacks permission. Errors inside a
//! stream (a Chat `{"error": …}` chunk, a Responses `error` event or `response.failed`) are
//! classified by their code and type the same way; an in-band error nothing recognises is
//! [`ModelErrorKind::Server`].

mod chat;
mod embeddings;
mod errors;
mod responses;

#[cfg(test)]
mod tests;

use flowbot_core::llm::{ChatRequest, ModelError, ModelErrorKind, ToolChoice, Usage};
use serde_json::Value;

use crate::config::ProviderConfig;
use crate::transport::{DecodeError, Decoder, Endpoint};

pub use chat::OpenAiChat;
pub use embeddings::OpenAiEmbedder;
pub use responses::OpenAiResponses;

pub(crate) use errors::classify;

/// The Chat Completions stream parser, for the recorded-stream tests.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn chat_decoder() -> Box<dyn Decoder> {
    Box::new(chat::ChatDecoder::default())
}

/// The Responses stream parser, for the recorded-stream tests.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn responses_decoder() -> Box<dyn Decoder> {
    Box::new(responses::ResponsesDecoder::default())
}

/// The endpoint `config` describes, with the key in OpenAI's or Azure's header.
fn endpoint(config: &ProviderConfig) -> Result<Endpoint, ModelError> {
    let mut e = config.endpoint()?;
    if let Some(key) = config.key()? {
        if config.azure {
            e.header("api-key", &key, true)?;
        } else {
            e.header("authorization", &format!("Bearer {key}"), true)?;
        }
    }
    Ok(e)
}

/// What both dialects refuse before sending: the reason, for a
/// [`ModelErrorKind::BadRequest`].
fn check_request(request: &ChatRequest) -> Result<(), String> {
    if request.messages.is_empty() {
        return Err("the request has no messages".into());
    }
    match &request.tool_choice {
        ToolChoice::Required if request.tools.is_empty() => {
            return Err("tool_choice is 'required' but no tools are offered".into());
        }
        ToolChoice::Tool(name) if !request.tools.iter().any(|t| &t.name == name) => {
            return Err(format!(
                "tool_choice names the tool '{name}', which is not among the tools offered"
            ));
        }
        _ => {}
    }
    for (i, tool) in request.tools.iter().enumerate() {
        if tool.name.is_empty() {
            return Err(format!("tools[{i}] has an empty name"));
        }
        if !tool.parameters.is_object() {
            return Err(format!(
                "tools[{i}] ('{}'): parameters must be a JSON Schema object",
                tool.name
            ));
        }
    }
    if let Some(t) = request.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(format!("temperature {t}: must be between 0 and 2"));
    }
    if request.max_tokens == Some(0) {
        return Err("max_tokens must be at least 1".into());
    }
    if let Some(s) = &request.output_schema
        && !s.schema.is_object()
    {
        return Err(format!(
            "output schema '{}': the schema must be a JSON object",
            s.name
        ));
    }
    Ok(())
}

fn bad_request(name: &str, message: String) -> ModelError {
    ModelError::new(ModelErrorKind::BadRequest, name, message)
}

/// A temperature as JSON, written as the shortest decimal that reads back as the same `f32`
/// (0.7, not 0.699999988079071).
fn temperature(t: f32) -> Value {
    format!("{t}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A tool result's text for the model: the content, marked when the call failed.
fn tool_output(content: &str, is_error: bool) -> String {
    if is_error {
        format!("error: {content}")
    } else {
        content.to_owned()
    }
}

/// The first `max` characters of `text`, for error messages quoting provider data.
fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// One event's data as a JSON object; `what` names the event in the error.
fn json_object(data: &str, what: impl std::fmt::Display) -> Result<Value, DecodeError> {
    let value: Value = serde_json::from_str(data).map_err(|e| {
        DecodeError::protocol(format!("{what} is not valid JSON ({e}): {}", snippet(data)))
    })?;
    if !value.is_object() {
        return Err(DecodeError::protocol(format!(
            "{what} is not a JSON object: {}",
            snippet(data)
        )));
    }
    Ok(value)
}

/// A count as the provider reported it: a non-negative integer, or nothing.
fn count(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// Token counts from a Chat Completions `usage` object (or the Responses one, with its
/// names): input, output, total, cached input, reasoning.
fn usage_from(u: &Value, names: [&str; 5]) -> Usage {
    let [input, output, total, cached, reasoning] = names;
    Usage {
        input_tokens: count(u.get(input)).unwrap_or(0),
        output_tokens: count(u.get(output)).unwrap_or(0),
        total_tokens: count(u.get(total)),
        cached_input_tokens: count(u.pointer(cached)),
        cache_creation_input_tokens: None,
        reasoning_tokens: count(u.pointer(reasoning)),
    }
}

/// An in-band error object (`{"message", "type", "code"}`) as a decode error.
fn inband_error(error: &Value) -> DecodeError {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .unwrap_or("the provider reported an error in the stream");
    let code = error.get("code").filter(|c| !c.is_null());
    let code_text = code.map(|c| match c {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let kind = errors::classify_inband(error, message);
    DecodeError {
        kind,
        message: match code_text {
            Some(c) => format!("{message} ({c})"),
            None => message.to_owned(),
        },
    }
}
