//! The fake provider's Anthropic Messages wire, from Anthropic's API reference: requests
//! checked as `POST /v1/messages` checks them, answers streamed as `message_start`,
//! `content_block_start`/`_delta`/`_stop`, `message_delta` and `message_stop` events, and
//! errors in Anthropic's `{"type": "error", "error": {type, message}}` shape.

use std::collections::HashSet;

use flowbot_core::llm::FinishReason;
use serde_json::{Map, Value, json};

use super::{Reply, Wire};

/// Anthropic Messages.
pub(crate) struct Messages;

/// `text` in pieces of `n` characters (at least 1).
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

fn is_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn stop_reason(finish: Option<&FinishReason>) -> Value {
    match finish {
        None => Value::Null,
        Some(FinishReason::Stop) => json!("end_turn"),
        Some(FinishReason::Length) => json!("max_tokens"),
        Some(FinishReason::ToolCalls) => json!("tool_use"),
        Some(FinishReason::ContentFilter) => json!("refusal"),
        Some(_) => json!("pause_turn"),
    }
}

/// Which tool_use ids an assistant message's content holds.
fn tool_use_ids(message: &Value) -> Vec<&str> {
    message["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn check_block(i: usize, j: usize, role: &str, block: &Value) -> Result<(), String> {
    let at = format!("messages.{i}.content.{j}");
    match block["type"].as_str() {
        Some("text") => match block["text"].as_str() {
            Some("") => Err(format!("{at}.text: text content blocks must be non-empty")),
            Some(_) => Ok(()),
            None => Err(format!("{at}.text: Field required")),
        },
        Some("tool_use") => {
            if role != "assistant" {
                return Err(format!(
                    "{at}: tool_use blocks may only be in assistant messages"
                ));
            }
            if block["id"].as_str().is_none_or(str::is_empty) {
                return Err(format!("{at}.id: Field required"));
            }
            if !block["name"].as_str().is_some_and(is_tool_name) {
                return Err(format!(
                    "{at}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                ));
            }
            if !block["input"].is_object() {
                return Err(format!("{at}.input: Input should be a valid dictionary"));
            }
            Ok(())
        }
        Some("tool_result") => {
            if role != "user" {
                return Err(format!(
                    "{at}: tool_result blocks may only be in user messages"
                ));
            }
            if block["tool_use_id"].as_str().is_none_or(str::is_empty) {
                return Err(format!("{at}.tool_use_id: Field required"));
            }
            match &block["content"] {
                Value::Null | Value::String(_) | Value::Array(_) => {}
                _ => {
                    return Err(format!(
                        "{at}.content: Input should be a valid string or list"
                    ));
                }
            }
            match &block["is_error"] {
                Value::Null | Value::Bool(_) => Ok(()),
                _ => Err(format!("{at}.is_error: Input should be a valid boolean")),
            }
        }
        Some("image" | "document" | "thinking" | "redacted_thinking") => Ok(()),
        Some(other) => Err(format!("{at}.type: unknown content block type '{other}'")),
        None => Err(format!("{at}.type: Field required")),
    }
}

fn check_messages(messages: &[Value]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    for (i, m) in messages.iter().enumerate() {
        let role = match m["role"].as_str() {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
        };
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        if i > 0 && messages[i - 1]["role"] == role {
            return Err(format!(
                "messages.{i}: roles must alternate between \"user\" and \"assistant\", but \
                 found multiple \"{role}\" roles in a row"
            ));
        }
        match &m["content"] {
            Value::String(s) if s.is_empty() => {
                return Err(format!(
                    "messages.{i}: all messages must have non-empty content"
                ));
            }
            Value::String(_) => {}
            Value::Array(blocks) if blocks.is_empty() => {
                return Err(format!(
                    "messages.{i}: all messages must have non-empty content"
                ));
            }
            Value::Array(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    check_block(i, j, role, b)?;
                }
            }
            _ => return Err(format!("messages.{i}.content: Field required")),
        }
        // Every tool_result answers a tool_use of the message just before.
        let previous: Vec<&str> = if i > 0 {
            tool_use_ids(&messages[i - 1])
        } else {
            Vec::new()
        };
        if let Some(blocks) = m["content"].as_array() {
            for (j, b) in blocks.iter().enumerate() {
                if b["type"] == "tool_result" {
                    let id = b["tool_use_id"].as_str().unwrap_or_default();
                    if !previous.contains(&id) {
                        return Err(format!(
                            "messages.{i}.content.{j}: unexpected `tool_use_id` found in \
                             `tool_result` blocks: {id}. Each `tool_result` block must have a \
                             corresponding `tool_use` block in the previous message."
                        ));
                    }
                }
            }
        }
        // Every tool_use is answered in the next message.
        let uses = tool_use_ids(m);
        if !uses.is_empty()
            && let Some(next) = messages.get(i + 1)
        {
            let answered: HashSet<&str> = next["content"]
                .as_array()
                .map(|b| {
                    b.iter()
                        .filter(|b| b["type"] == "tool_result")
                        .filter_map(|b| b["tool_use_id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<&str> = uses.into_iter().filter(|u| !answered.contains(u)).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks \
                     immediately after: {}. Each `tool_use` block must have a corresponding \
                     `tool_result` block in the next message.",
                    i + 1,
                    missing.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn check_tools(body: &Map<String, Value>) -> Result<(), String> {
    let mut names = HashSet::new();
    if let Some(tools) = body.get("tools") {
        let tools = tools
            .as_array()
            .ok_or("tools: Input should be a valid list")?;
        for (i, t) in tools.iter().enumerate() {
            let name = t["name"].as_str().unwrap_or_default();
            if !is_tool_name(name) {
                return Err(format!(
                    "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                ));
            }
            if !names.insert(name) {
                return Err(format!("tools: Tool names must be unique, '{name}' is not"));
            }
            if t["input_schema"]["type"] != "object" {
                return Err(format!(
                    "tools.{i}.custom.input_schema.type: Input should be 'object'"
                ));
            }
            if !matches!(t["description"], Value::Null | Value::String(_)) {
                return Err(format!(
                    "tools.{i}.custom.description: Input should be a valid string"
                ));
            }
        }
    }
    if let Some(choice) = body.get("tool_choice") {
        if names.is_empty() {
            return Err("tool_choice may only be specified while providing tools".into());
        }
        match choice["type"].as_str() {
            Some("auto" | "any" | "none") => {}
            Some("tool") => {
                let name = choice["name"].as_str().unwrap_or_default();
                if !names.contains(name) {
                    return Err(format!(
                        "tool_choice.tool.name: tool '{name}' is not among the tools"
                    ));
                }
            }
            _ => {
                return Err(
                    "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'".into(),
                );
            }
        }
    }
    Ok(())
}

impl Wire for Messages {
    fn check(&self, body: &Value) -> Result<(), String> {
        let obj = body.as_object().ok_or("the body must be a JSON object")?;
        if obj
            .get("model")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("model: Field required".into());
        }
        match obj.get("max_tokens").map(Value::as_u64) {
            None => return Err("max_tokens: Field required".into()),
            Some(Some(n)) if n >= 1 => {}
            Some(_) => return Err("max_tokens: Input should be greater than or equal to 1".into()),
        }
        if obj.get("stream") != Some(&Value::Bool(true)) {
            return Err("stream: this server only streams; set stream to true".into());
        }
        match obj.get("system") {
            None | Some(Value::String(_)) => {}
            Some(Value::Array(blocks))
                if blocks
                    .iter()
                    .all(|b| b["type"] == "text" && b["text"].is_string()) => {}
            Some(_) => {
                return Err(
                    "system: Input should be a valid string or a list of text blocks".into(),
                );
            }
        }
        if let Some(t) = obj.get("temperature") {
            match t.as_f64() {
                Some(t) if (0.0..=1.0).contains(&t) => {}
                _ => return Err("temperature: Input should be between 0 and 1".into()),
            }
        }
        check_tools(obj)?;
        let messages = obj
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("messages: Field required")?;
        check_messages(messages)
    }

    fn stream(&self, reply: &Reply, model: &str) -> String {
        let n = reply.delta_chars.max(1);
        let u = &reply.usage;
        let id: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(24)
            .collect();
        let mut events: Vec<(&str, Value)> = vec![(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": format!("msg_{id}"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": u.input_tokens,
                        "cache_creation_input_tokens": u.cache_creation_input_tokens.unwrap_or(0),
                        "cache_read_input_tokens": u.cached_input_tokens.unwrap_or(0),
                        "output_tokens": 1,
                        "service_tier": "standard",
                    },
                },
            }),
        )];
        let mut index = 0u64;
        let mut ping = reply.ping;
        let mut block = |events: &mut Vec<(&str, Value)>, start: Value, deltas: Vec<Value>| {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            // As the API does: the keep-alive comes after the first block starts.
            if std::mem::take(&mut ping) {
                events.push(("ping", json!({"type": "ping"})));
            }
            for d in deltas {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": d}),
                ));
            }
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        };
        if let Some(reasoning) = &reply.reasoning {
            let mut deltas: Vec<Value> = pieces(reasoning, n)
                .into_iter()
                .map(|t| json!({"type": "thinking_delta", "thinking": t}))
                .collect();
            deltas.push(json!({"type": "signature_delta", "signature": "ZmFrZS1zaWduYXR1cmU="}));
            block(
                &mut events,
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                deltas,
            );
        }
        if !reply.text.is_empty() {
            let deltas = pieces(&reply.text, n)
                .into_iter()
                .map(|t| json!({"type": "text_delta", "text": t}))
                .collect();
            block(&mut events, json!({"type": "text", "text": ""}), deltas);
        }
        for call in &reply.calls {
            // The first fragment is empty, as the API sends it.
            let mut deltas = vec![json!({"type": "input_json_delta", "partial_json": ""})];
            deltas.extend(
                pieces(&call.arguments, n)
                    .into_iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p})),
            );
            block(
                &mut events,
                json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}),
                deltas,
            );
        }
        if std::mem::take(&mut ping) {
            events.push(("ping", json!({"type": "ping"})));
        }
        if let Some((kind, message)) = &reply.error_event {
            events.push((
                "error",
                json!({"type": "error", "error": {"type": kind, "message": message}}),
            ));
        } else if reply.finish.is_some() {
            // Without a finish reason the stream ends after the content, before its
            // terminal events: what a cut-off answer looks like.
            let mut usage = json!({
                "input_tokens": u.input_tokens,
                "cache_creation_input_tokens": u.cache_creation_input_tokens.unwrap_or(0),
                "cache_read_input_tokens": u.cached_input_tokens.unwrap_or(0),
                "output_tokens": u.output_tokens,
            });
            if let Some(t) = u.reasoning_tokens {
                usage["output_tokens_details"] = json!({"thinking_tokens": t});
            }
            events.push((
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(reply.finish.as_ref()), "stop_sequence": null},
                    "usage": usage,
                }),
            ));
            events.push(("message_stop", json!({"type": "message_stop"})));
        }
        events
            .into_iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect()
    }

    fn error(&self, status: u16, message: &str) -> Value {
        let kind = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            503 | 529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        let id: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(24)
            .collect();
        json!({
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": format!("req_{id}"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use super::*;

    fn body(messages: &Value) -> Value {
        json!({"model": "m", "max_tokens": 10, "stream": true, "messages": messages})
    }

    #[test]
    fn requests_are_checked_as_the_api_checks_them() {
        let w = Messages;
        assert_eq!(
            w.check(&body(&json!([{"role": "user", "content": "hi"}]))),
            Ok(())
        );
        let no_max =
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(w.check(&no_max).unwrap_err(), "max_tokens: Field required");
        let e = w
            .check(&body(&json!([{"role": "assistant", "content": "x"}])))
            .unwrap_err();
        assert!(e.contains("first message"), "{e}");
        let e = w
            .check(&body(
                &json!([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]),
            ))
            .unwrap_err();
        assert!(e.contains("alternate"), "{e}");
        let call = json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "a", "input": {}}]});
        let e = w
            .check(&body(
                &json!([{"role": "user", "content": "x"}, call, {"role": "user", "content": "y"}]),
            ))
            .unwrap_err();
        assert!(
            e.contains("without `tool_result`") && e.contains("t1"),
            "{e}"
        );
        let wrong = json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
            {"type": "tool_result", "tool_use_id": "t2", "content": "r"},
        ]});
        let e = w
            .check(&body(
                &json!([{"role": "user", "content": "x"}, call, wrong]),
            ))
            .unwrap_err();
        assert!(
            e.contains("unexpected `tool_use_id`") && e.contains("t2"),
            "{e}"
        );
        let mut no_stream = body(&json!([{"role": "user", "content": "x"}]));
        no_stream["stream"] = json!(false);
        assert!(w.check(&no_stream).unwrap_err().starts_with("stream"));
        let mut choice = body(&json!([{"role": "user", "content": "x"}]));
        choice["tool_choice"] = json!({"type": "auto"});
        assert!(w.check(&choice).unwrap_err().contains("providing tools"));
    }

    #[test]
    fn arguments_stream_in_fragments_of_the_asked_size_after_an_empty_one() {
        let mut reply = Reply::calls([("f", json!({"a": "é"}))]);
        reply.delta_chars = 3;
        let body = Messages.stream(&reply, "m");
        let fragments: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter(|e| e["delta"]["type"] == "input_json_delta")
            .map(|e| e["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(fragments, ["", "{\"a", "\":\"", "é\"}"]);
        assert!(body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}
