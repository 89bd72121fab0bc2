//! The fake's OpenAI dialects, written from OpenAI's API reference: Chat Completions
//! (`POST /v1/chat/completions`), Responses (`POST /v1/responses`) and embeddings
//! (`POST /v1/embeddings`).
//!
//! Requests are checked the way the API does (the model, the messages or input items and
//! their roles and shapes, tool calls answered by tool results, the tools, `tool_choice`,
//! the token limit, `response_format` / `text.format`), and this fake only streams: a
//! request without `stream: true` is refused.
//!
//! Streams look like the real API's: Chat chunks carry `id`, `object`, `created`, `model`,
//! `system_fingerprint`, `usage: null` and an `obfuscation` padding field; the first chunk
//! carries the role, text comes in deltas of [`Reply::delta_chars`] characters, reasoning
//! as `delta.reasoning_content` (what vLLM and DeepSeek send; OpenAI streams none), each
//! tool call's id and name only in its first fragment and its arguments in fragments keyed
//! by `index`, the finish chunk has an empty `delta`, then a usage-only chunk with
//! `choices: []`, then `[DONE]`. A reply with `finish: None` has no `finish_reason`
//! anywhere (Chat) or no terminal event at all (Responses: the body just ends).

use std::sync::atomic::{AtomicU64, Ordering};

use flowbot_core::llm::{FinishReason, Usage};
use serde_json::{Value, json};

use super::{Reply, Wire};

/// Chat Completions.
pub(crate) struct Chat;

/// The Responses API.
pub(crate) struct Responses;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `text` in pieces of `n` characters (at least 1).
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

/// The `obfuscation` padding OpenAI adds to stream events (random-looking, ignorable).
fn padding(seed: usize) -> String {
    let letters = b"qZ3xLp9WmR2tKv7B";
    (0..(seed % 7 + 3))
        .map(|i| letters[(seed.wrapping_mul(31).wrapping_add(i * 7)) % letters.len()] as char)
        .collect()
}

fn sse_data(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

fn sse_event(out: &mut String, name: &str, v: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    sse_data(out, v);
}

/// OpenAI's error object for a code or type word, as the API fills `type` and `code`.
fn error_object(word: &str, message: &str) -> Value {
    let (typ, code) = match word {
        "server_error" => ("server_error", Value::Null),
        "invalid_request_error" => ("invalid_request_error", Value::Null),
        "rate_limit_exceeded" => ("requests", json!("rate_limit_exceeded")),
        "insufficient_quota" => ("insufficient_quota", json!("insufficient_quota")),
        "context_length_exceeded" | "content_filter" | "invalid_api_key" | "model_not_found" => {
            ("invalid_request_error", json!(word))
        }
        other => (other, json!(other)),
    };
    json!({"message": message, "type": typ, "param": null, "code": code})
}

fn finish_word(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        _ => "function_call",
    }
}

fn total(u: &Usage) -> u64 {
    u.total_tokens
        .unwrap_or_else(|| u.input_tokens.saturating_add(u.output_tokens))
}

/// `name` as OpenAI accepts function and schema names: 1 to 64 of `a-zA-Z0-9_-`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_text_or_parts(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(parts) => parts
            .iter()
            .all(|p| p.get("type").and_then(Value::as_str).is_some()),
        _ => false,
    }
}

fn check_model(body: &Value) -> Result<(), String> {
    if body
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("Missing required parameter: 'model'.".into());
    }
    Ok(())
}

/// `tool_choice`: a word, or a function object whose name (at `name_at`, shaped as
/// `expected` says) is among `tools`.
fn check_tool_choice(
    body: &Value,
    tools: &[String],
    name_at: &str,
    expected: &str,
) -> Result<(), String> {
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if ["none", "auto", "required"].contains(&s.as_str()) => {}
        Some(c @ Value::Object(_)) => {
            let name = c.pointer(name_at).and_then(Value::as_str);
            if c.get("type").and_then(Value::as_str) != Some("function") || name.is_none() {
                return Err(format!("Invalid 'tool_choice': expected {expected}."));
            }
            if let Some(n) = name
                && !tools.iter().any(|t| t == n)
            {
                return Err(format!(
                    "Invalid 'tool_choice': no tool named '{n}' was given."
                ));
            }
        }
        Some(other) => return Err(format!("Invalid value for 'tool_choice': {other}.")),
    }
    Ok(())
}

fn check_temperature_and_stream(body: &Value) -> Result<(), String> {
    if let Some(t) = body.get("temperature").filter(|t| !t.is_null()) {
        match t.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => {}
            _ => {
                return Err(format!(
                    "Invalid 'temperature': {t} is not a number between 0 and 2."
                ));
            }
        }
    }
    match body.get("stream") {
        Some(Value::Bool(true)) => Ok(()),
        Some(Value::Bool(false)) | None | Some(Value::Null) => {
            Err("stream: this fake provider only answers streaming requests (stream: true)".into())
        }
        Some(other) => Err(format!(
            "Invalid type for 'stream': expected a boolean, got {other}."
        )),
    }
}

fn check_positive(body: &Value, key: &str, min: u64) -> Result<(), String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_u64() {
            Some(n) if n >= min => Ok(()),
            _ => Err(format!(
                "Invalid '{key}': {v}. Expected an integer of at least {min}."
            )),
        },
    }
}

fn check_json_schema(at: &str, name: Option<&Value>, schema: Option<&Value>) -> Result<(), String> {
    match name.and_then(Value::as_str) {
        Some(n) if valid_name(n) => {}
        Some(n) => {
            return Err(format!(
                "Invalid '{at}.name': '{n}' must match ^[a-zA-Z0-9_-]{{1,64}}$."
            ));
        }
        None => return Err(format!("Missing required parameter: '{at}.name'.")),
    }
    if !schema.is_some_and(Value::is_object) {
        return Err(format!(
            "Missing required parameter: '{at}.schema' (a JSON Schema object)."
        ));
    }
    Ok(())
}

impl Chat {
    fn check_messages(messages: &[Value]) -> Result<(), String> {
        // Tool call ids the last assistant message asked for and not yet answered.
        let mut open: Vec<String> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("Missing required parameter: '{at}.role'."))?;
            if role != "tool" && !open.is_empty() {
                return Err(format!(
                    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                    open.join(", ")
                ));
            }
            let content = m.get("content").filter(|c| !c.is_null());
            match role {
                "system" | "developer" | "user" => {
                    if !content.is_some_and(is_text_or_parts) {
                        return Err(format!(
                            "Invalid '{at}.content': a {role} message needs content (a string or an array of parts)."
                        ));
                    }
                }
                "assistant" => {
                    if let Some(c) = content
                        && !is_text_or_parts(c)
                    {
                        return Err(format!(
                            "Invalid '{at}.content': expected a string or an array of parts."
                        ));
                    }
                    let calls = m.get("tool_calls").filter(|c| !c.is_null());
                    if content.is_none() && calls.is_none() && m.get("refusal").is_none() {
                        return Err(format!(
                            "Invalid '{at}': an assistant message needs 'content' or 'tool_calls'."
                        ));
                    }
                    if let Some(calls) = calls {
                        let calls =
                            calls.as_array().filter(|c| !c.is_empty()).ok_or_else(|| {
                                format!("Invalid '{at}.tool_calls': expected a non-empty array.")
                            })?;
                        for (j, c) in calls.iter().enumerate() {
                            let at = format!("{at}.tool_calls[{j}]");
                            let id = c
                                .get("id")
                                .and_then(Value::as_str)
                                .filter(|s| !s.is_empty());
                            let Some(id) = id else {
                                return Err(format!("Missing required parameter: '{at}.id'."));
                            };
                            if c.get("type").and_then(Value::as_str) != Some("function") {
                                return Err(format!("Invalid '{at}.type': expected 'function'."));
                            }
                            if c.pointer("/function/name")
                                .and_then(Value::as_str)
                                .is_none()
                            {
                                return Err(format!(
                                    "Missing required parameter: '{at}.function.name'."
                                ));
                            }
                            if c.pointer("/function/arguments")
                                .and_then(Value::as_str)
                                .is_none()
                            {
                                return Err(format!(
                                    "Missing required parameter: '{at}.function.arguments' (a string)."
                                ));
                            }
                            open.push(id.to_owned());
                        }
                    }
                }
                "tool" => {
                    let id = m
                        .get("tool_call_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            format!("Missing required parameter: '{at}.tool_call_id'.")
                        })?;
                    if !content.is_some_and(is_text_or_parts) {
                        return Err(format!(
                            "Invalid '{at}.content': a tool message needs content."
                        ));
                    }
                    match open.iter().position(|o| o == id) {
                        Some(p) => {
                            open.remove(p);
                        }
                        None => {
                            return Err(format!(
                                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls' ({at}.tool_call_id '{id}')."
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'assistant', 'user', 'tool', and 'developer' ({at}.role)."
                    ));
                }
            }
        }
        if !open.is_empty() {
            return Err(format!(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                open.join(", ")
            ));
        }
        Ok(())
    }

    fn check_tools(body: &Value) -> Result<Vec<String>, String> {
        let Some(tools) = body.get("tools").filter(|t| !t.is_null()) else {
            return Ok(Vec::new());
        };
        let tools = tools
            .as_array()
            .ok_or("Invalid type for 'tools': expected an array.")?;
        let mut names = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(format!(
                    "Invalid value for 'tools[{i}].type': expected 'function'."
                ));
            }
            let name = t
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    format!("Missing required parameter: 'tools[{i}].function.name'.")
                })?;
            if !valid_name(name) {
                return Err(format!(
                    "Invalid 'tools[{i}].function.name': '{name}' must match ^[a-zA-Z0-9_-]{{1,64}}$."
                ));
            }
            if let Some(p) = t.pointer("/function/parameters")
                && !p.is_object()
            {
                return Err(format!(
                    "Invalid 'tools[{i}].function.parameters': expected an object."
                ));
            }
            if let Some(d) = t.pointer("/function/description")
                && !d.is_string()
            {
                return Err(format!(
                    "Invalid 'tools[{i}].function.description': expected a string."
                ));
            }
            names.push(name.to_owned());
        }
        Ok(names)
    }
}

impl Wire for Chat {
    fn check(&self, body: &Value) -> Result<(), String> {
        check_model(body)?;
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("Missing required parameter: 'messages'.")?;
        if messages.is_empty() {
            return Err("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.".into());
        }
        Self::check_messages(messages)?;
        check_temperature_and_stream(body)?;
        if let Some(o) = body.get("stream_options").filter(|o| !o.is_null())
            && !o.get("include_usage").is_none_or(Value::is_boolean)
        {
            return Err(
                "Invalid type for 'stream_options.include_usage': expected a boolean.".into(),
            );
        }
        let tools = Self::check_tools(body)?;
        if tools.is_empty() {
            for key in ["tool_choice", "parallel_tool_calls"] {
                if body.get(key).is_some_and(|v| !v.is_null()) {
                    return Err(format!(
                        "Invalid value for '{key}': '{key}' is only allowed when 'tools' are specified."
                    ));
                }
            }
        }
        check_tool_choice(
            body,
            &tools,
            "/function/name",
            "{\"type\": \"function\", \"function\": {\"name\": …}}",
        )?;
        check_positive(body, "max_tokens", 1)?;
        check_positive(body, "max_completion_tokens", 1)?;
        if body.get("max_tokens").is_some_and(|v| !v.is_null())
            && body
                .get("max_completion_tokens")
                .is_some_and(|v| !v.is_null())
        {
            return Err("max_tokens and max_completion_tokens cannot both be set: use max_completion_tokens.".into());
        }
        if let Some(f) = body.get("response_format").filter(|f| !f.is_null()) {
            match f.get("type").and_then(Value::as_str) {
                Some("text" | "json_object") => {}
                Some("json_schema") => {
                    let s = f.get("json_schema");
                    check_json_schema(
                        "response_format.json_schema",
                        s.and_then(|s| s.get("name")),
                        s.and_then(|s| s.get("schema")),
                    )?;
                }
                _ => return Err("Invalid 'response_format.type': expected 'text', 'json_object' or 'json_schema'.".into()),
            }
        }
        Ok(())
    }

    fn stream(&self, reply: &Reply, model: &str) -> String {
        let id = format!("chatcmpl-fake{}", next_id());
        let created = now();
        let mut n = 0usize;
        let mut chunk = |choices: Value, usage: Value| {
            n += 1;
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": choices,
                "usage": usage,
                "obfuscation": padding(n),
            })
        };
        let choice = |delta: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]);
        let mut out = String::new();
        if reply.ping {
            out.push_str(": keep-alive\n\n");
        }
        let first_content = if reply.text.is_empty() && !reply.calls.is_empty() {
            Value::Null
        } else {
            json!("")
        };
        sse_data(
            &mut out,
            &chunk(
                choice(json!({"role": "assistant", "content": first_content, "refusal": null})),
                Value::Null,
            ),
        );
        if let Some(r) = &reply.reasoning {
            for p in pieces(r, reply.delta_chars) {
                sse_data(
                    &mut out,
                    &chunk(choice(json!({"reasoning_content": p})), Value::Null),
                );
            }
        }
        for p in pieces(&reply.text, reply.delta_chars) {
            sse_data(&mut out, &chunk(choice(json!({"content": p})), Value::Null));
        }
        for (i, call) in reply.calls.iter().enumerate() {
            let first = json!({"tool_calls": [{
                "index": i,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }]});
            sse_data(&mut out, &chunk(choice(first), Value::Null));
            for p in pieces(&call.arguments, reply.delta_chars) {
                let next = json!({"tool_calls": [{"index": i, "function": {"arguments": p}}]});
                sse_data(&mut out, &chunk(choice(next), Value::Null));
            }
        }
        if let Some((kind, message)) = &reply.error_event {
            // The API sends the error and ends the stream: no finish, no [DONE].
            sse_data(&mut out, &json!({"error": error_object(kind, message)}));
            return out;
        }
        if let Some(f) = &reply.finish {
            let finish = json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_word(f)}]);
            sse_data(&mut out, &chunk(finish, Value::Null));
        }
        let u = &reply.usage;
        let usage = json!({
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": total(u),
            "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens.unwrap_or(0), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": u.reasoning_tokens.unwrap_or(0),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        });
        sse_data(&mut out, &chunk(json!([]), usage));
        out.push_str("data: [DONE]\n\n");
        out
    }

    fn error(&self, status: u16, message: &str) -> Value {
        json!({"error": status_error(status, message)})
    }
}

/// The error object OpenAI answers a failed request with, by status.
fn status_error(status: u16, message: &str) -> Value {
    let lower = message.to_ascii_lowercase();
    let word = match status {
        400 if lower.contains("maximum context length") => "context_length_exceeded",
        400 => "invalid_request_error",
        401 => "invalid_api_key",
        404 => "model_not_found",
        429 if lower.contains("quota") => "insufficient_quota",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    error_object(word, message)
}

impl Responses {
    fn check_input(input: &Value) -> Result<(), String> {
        let items = match input {
            Value::String(s) if !s.is_empty() => return Ok(()),
            Value::Array(items) if !items.is_empty() => items,
            _ => return Err(
                "Invalid 'input': expected a non-empty string or a non-empty array of input items."
                    .into(),
            ),
        };
        let mut calls: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("input[{i}]");
            let typ = item
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            let str_field = |key: &str| {
                item.get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("Missing required parameter: '{at}.{key}'."))
            };
            match typ {
                "message" => {
                    let role = str_field("role")?;
                    if !["user", "assistant", "system", "developer"].contains(&role) {
                        return Err(format!(
                            "Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system', and 'developer' ({at}.role)."
                        ));
                    }
                    if !item.get("content").is_some_and(is_text_or_parts) {
                        return Err(format!(
                            "Invalid '{at}.content': expected a string or an array of content parts."
                        ));
                    }
                }
                "function_call" => {
                    let call_id = str_field("call_id")?;
                    str_field("name")?;
                    str_field("arguments")?;
                    calls.push(call_id.to_owned());
                }
                "function_call_output" => {
                    let call_id = str_field("call_id")?;
                    str_field("output")?;
                    if !calls.iter().any(|c| c == call_id) {
                        return Err(format!(
                            "No tool call found for function call output with call_id {call_id} ({at})."
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "Invalid '{at}.type': '{other}' is not an input item type this fake knows."
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Wire for Responses {
    fn check(&self, body: &Value) -> Result<(), String> {
        check_model(body)?;
        let input = body
            .get("input")
            .ok_or("Missing required parameter: 'input'.")?;
        Self::check_input(input)?;
        if let Some(i) = body.get("instructions").filter(|i| !i.is_null())
            && !i.is_string()
        {
            return Err("Invalid type for 'instructions': expected a string.".into());
        }
        check_temperature_and_stream(body)?;
        if let Some(s) = body.get("store").filter(|s| !s.is_null())
            && !s.is_boolean()
        {
            return Err("Invalid type for 'store': expected a boolean.".into());
        }
        let mut names = Vec::new();
        if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
            let tools = tools
                .as_array()
                .ok_or("Invalid type for 'tools': expected an array.")?;
            for (i, t) in tools.iter().enumerate() {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(format!(
                        "Invalid value for 'tools[{i}].type': this fake knows function tools only."
                    ));
                }
                let name = t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("Missing required parameter: 'tools[{i}].name'."))?;
                if !valid_name(name) {
                    return Err(format!(
                        "Invalid 'tools[{i}].name': '{name}' must match ^[a-zA-Z0-9_-]{{1,64}}$."
                    ));
                }
                if !t.get("parameters").is_some_and(Value::is_object) {
                    return Err(format!(
                        "Missing required parameter: 'tools[{i}].parameters'."
                    ));
                }
                names.push(name.to_owned());
            }
        }
        check_tool_choice(
            body,
            &names,
            "/name",
            "{\"type\": \"function\", \"name\": …}",
        )?;
        check_positive(body, "max_output_tokens", 16)?;
        if let Some(f) = body.pointer("/text/format").filter(|f| !f.is_null()) {
            match f.get("type").and_then(Value::as_str) {
                Some("text" | "json_object") => {}
                Some("json_schema") => {
                    check_json_schema("text.format", f.get("name"), f.get("schema"))?;
                }
                _ => return Err(
                    "Invalid 'text.format.type': expected 'text', 'json_object' or 'json_schema'."
                        .into(),
                ),
            }
        }
        Ok(())
    }

    fn stream(&self, reply: &Reply, model: &str) -> String {
        let n = next_id();
        let rid = format!("resp_fake{n}");
        let created = now();
        let mut seq = 0u64;
        let mut out = String::new();
        let mut emit = |out: &mut String, typ: &str, mut v: Value| {
            v["type"] = json!(typ);
            v["sequence_number"] = json!(seq);
            seq += 1;
            sse_event(out, typ, &v);
        };
        let response =
            |status: &str, output: &[Value], usage: Value, incomplete: Value, error: Value| {
                json!({
                    "id": rid,
                    "object": "response",
                    "created_at": created,
                    "status": status,
                    "error": error,
                    "incomplete_details": incomplete,
                    "model": model,
                    "output": output,
                    "parallel_tool_calls": true,
                    "store": false,
                    "text": {"format": {"type": "text"}},
                    "usage": usage,
                })
            };
        if reply.ping {
            out.push_str(": keep-alive\n\n");
        }
        let start = response("in_progress", &[], Value::Null, Value::Null, Value::Null);
        emit(&mut out, "response.created", json!({"response": start}));
        emit(&mut out, "response.in_progress", json!({"response": start}));
        let item_status = if reply.finish == Some(FinishReason::Length) {
            "incomplete"
        } else {
            "completed"
        };
        let mut output: Vec<Value> = Vec::new();
        if let Some(r) = &reply.reasoning {
            let id = format!("rs_fake{n}");
            let index = output.len();
            emit(
                &mut out,
                "response.output_item.added",
                json!({
                    "output_index": index,
                    "item": {"id": id, "type": "reasoning", "summary": []},
                }),
            );
            emit(
                &mut out,
                "response.reasoning_summary_part.added",
                json!({
                    "item_id": id, "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                }),
            );
            for (k, p) in pieces(r, reply.delta_chars).into_iter().enumerate() {
                emit(
                    &mut out,
                    "response.reasoning_summary_text.delta",
                    json!({
                        "item_id": id, "output_index": index, "summary_index": 0, "delta": p,
                        "obfuscation": padding(k),
                    }),
                );
            }
            emit(
                &mut out,
                "response.reasoning_summary_text.done",
                json!({
                    "item_id": id, "output_index": index, "summary_index": 0, "text": r,
                }),
            );
            let part = json!({"type": "summary_text", "text": r});
            emit(
                &mut out,
                "response.reasoning_summary_part.done",
                json!({
                    "item_id": id, "output_index": index, "summary_index": 0, "part": part,
                }),
            );
            let item = json!({"id": id, "type": "reasoning", "summary": [part]});
            emit(
                &mut out,
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            output.push(item);
        }
        if !reply.text.is_empty() || reply.calls.is_empty() {
            let id = format!("msg_fake{n}");
            let index = output.len();
            emit(
                &mut out,
                "response.output_item.added",
                json!({
                    "output_index": index,
                    "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
                }),
            );
            emit(
                &mut out,
                "response.content_part.added",
                json!({
                    "item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
                }),
            );
            for (k, p) in pieces(&reply.text, reply.delta_chars)
                .into_iter()
                .enumerate()
            {
                emit(
                    &mut out,
                    "response.output_text.delta",
                    json!({
                        "item_id": id, "output_index": index, "content_index": 0, "delta": p,
                        "logprobs": [], "obfuscation": padding(k),
                    }),
                );
            }
            emit(
                &mut out,
                "response.output_text.done",
                json!({
                    "item_id": id, "output_index": index, "content_index": 0,
                    "text": reply.text, "logprobs": [],
                }),
            );
            let part = json!({"type": "output_text", "annotations": [], "logprobs": [], "text": reply.text});
            emit(
                &mut out,
                "response.content_part.done",
                json!({
                    "item_id": id, "output_index": index, "content_index": 0, "part": part,
                }),
            );
            let item = json!({"id": id, "type": "message", "status": item_status, "role": "assistant", "content": [part]});
            emit(
                &mut out,
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            output.push(item);
        }
        for (c, call) in reply.calls.iter().enumerate() {
            let id = format!("fc_fake{n}_{c}");
            let index = output.len();
            emit(
                &mut out,
                "response.output_item.added",
                json!({
                    "output_index": index,
                    "item": {
                        "id": id, "type": "function_call", "status": "in_progress",
                        "arguments": "", "call_id": call.id, "name": call.name,
                    },
                }),
            );
            for (k, p) in pieces(&call.arguments, reply.delta_chars)
                .into_iter()
                .enumerate()
            {
                emit(
                    &mut out,
                    "response.function_call_arguments.delta",
                    json!({
                        "item_id": id, "output_index": index, "delta": p, "obfuscation": padding(k),
                    }),
                );
            }
            emit(
                &mut out,
                "response.function_call_arguments.done",
                json!({
                    "item_id": id, "output_index": index, "arguments": call.arguments,
                }),
            );
            let item = json!({
                "id": id, "type": "function_call", "status": item_status,
                "arguments": call.arguments, "call_id": call.id, "name": call.name,
            });
            emit(
                &mut out,
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            output.push(item);
        }
        if let Some((kind, message)) = &reply.error_event {
            let error = error_object(kind, message);
            emit(
                &mut out,
                "error",
                json!({
                    "code": error["code"].as_str().unwrap_or(kind),
                    "message": message,
                    "param": null,
                }),
            );
            let failed = response(
                "failed",
                &output,
                Value::Null,
                Value::Null,
                json!({
                    "code": error["code"].as_str().unwrap_or(kind),
                    "message": message,
                }),
            );
            emit(&mut out, "response.failed", json!({"response": failed}));
            return out;
        }
        let Some(finish) = &reply.finish else {
            // No terminal event: the body just ends.
            return out;
        };
        let u = &reply.usage;
        let usage = json!({
            "input_tokens": u.input_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_input_tokens.unwrap_or(0)},
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens.unwrap_or(0)},
            "total_tokens": total(u),
        });
        let (typ, status, incomplete) = match finish {
            FinishReason::Length => (
                "response.incomplete",
                "incomplete",
                json!({"reason": "max_output_tokens"}),
            ),
            FinishReason::ContentFilter => (
                "response.incomplete",
                "incomplete",
                json!({"reason": "content_filter"}),
            ),
            _ => ("response.completed", "completed", Value::Null),
        };
        let done = response(status, &output, usage, incomplete, Value::Null);
        emit(&mut out, typ, json!({"response": done}));
        out
    }

    fn error(&self, status: u16, message: &str) -> Value {
        json!({"error": status_error(status, message)})
    }
}

/// FNV-1a over `seed` and `text`.
fn fnv(seed: u32, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(text.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fake's vector for `text`: `dims` numbers derived from the text alone, normalised to
/// length 1, so the same text always gets the same vector and different texts differ.
fn vector(text: &str, dims: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..dims)
        .map(|j| {
            let h = fnv(u32::try_from(j).unwrap_or(u32::MAX), text) >> 11;
            (h as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        raw.iter().map(|x| x / norm).collect()
    } else {
        raw
    }
}

/// Answer an embeddings request (`{model, input, encoding_format?, dimensions?}`): one
/// deterministic unit vector per input (8 numbers unless `dimensions` says otherwise), in
/// OpenAI's shape with usage. The `data` list comes in reverse order, each item with its
/// `index`: the API reference gives every item an index, and a client must use it.
pub(crate) fn embeddings(body: &Value) -> Result<Value, String> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("Missing required parameter: 'model'.")?;
    let inputs: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or("Invalid 'input': this fake takes strings only (no token arrays).")?,
        _ => return Err("Missing required parameter: 'input'.".into()),
    };
    if inputs.is_empty() {
        return Err("Invalid 'input': empty array.".into());
    }
    if inputs.len() > 2048 {
        return Err(format!(
            "Invalid 'input': {} inputs; at most 2048 per request.",
            inputs.len()
        ));
    }
    if let Some(i) = inputs.iter().position(|s| s.is_empty()) {
        return Err(format!("Invalid 'input[{i}]': the string is empty."));
    }
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => {}
        Some(other) => {
            return Err(format!(
                "encoding_format '{other}': this fake answers 'float' only."
            ));
        }
    }
    let dims = match body.get("dimensions") {
        None | Some(Value::Null) => 8,
        Some(d) => d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=3072).contains(d))
            .ok_or("Invalid 'dimensions': expected an integer from 1 to 3072.")?,
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(
            |(i, text)| json!({"object": "embedding", "index": i, "embedding": vector(text, dims)}),
        )
        .collect();
    let tokens: usize = inputs
        .iter()
        .map(|t| t.split_whitespace().count().max(1))
        .sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
