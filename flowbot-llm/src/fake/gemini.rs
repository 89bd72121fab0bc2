//! The fake provider's Gemini wire, from the Gemini API reference: `streamGenerateContent`
//! requests checked as the API checks them, answers streamed as `data:` chunks framed with
//! CRLF and no terminal event (cumulative `usageMetadata` on every chunk, parallel
//! `functionCall` parts, `finishReason` on the last chunk), `batchEmbedContents`, and errors
//! in Google's `{"error": {code, message, status}}` shape.

use flowbot_core::llm::FinishReason;
use serde_json::{Map, Value, json};

use super::{Reply, Wire};

/// Gemini `generateContent`.
pub(crate) struct Gemini;

/// The most requests one `batchEmbedContents` call may hold.
const MAX_BATCH: usize = 100;

/// Length of the fake's embedding vectors.
const DIMENSION: usize = 8;

/// `text` in pieces of `n` characters (at least 1).
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

fn is_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn finish_reason(finish: &FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
        _ => "OTHER",
    }
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// Fields of a `GenerateContentRequest`, in both spellings the API accepts.
const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
];

fn check_part(i: usize, j: usize, role: &str, part: &Value) -> Result<(), String> {
    let at = format!("contents[{i}].parts[{j}]");
    let obj = part
        .as_object()
        .ok_or_else(|| format!("{at}: a part must be an object"))?;
    if let Some(text) = obj.get("text") {
        return if text.is_string() {
            Ok(())
        } else {
            Err(format!("{at}.text: Invalid value (a string is required)"))
        };
    }
    if let Some(fc) = obj.get("functionCall") {
        if role != "model" {
            return Err(format!(
                "{at}: a functionCall part may only be in a model turn"
            ));
        }
        if !fc["name"].as_str().is_some_and(is_function_name) {
            return Err(format!("{at}.functionCall.name: Invalid function name"));
        }
        if !matches!(fc["args"], Value::Null | Value::Object(_)) {
            return Err(format!(
                "{at}.functionCall.args: Invalid value (an object is required)"
            ));
        }
        return Ok(());
    }
    if let Some(fr) = obj.get("functionResponse") {
        if role != "user" {
            return Err(format!(
                "{at}: a functionResponse part may only be in a user turn"
            ));
        }
        if !fr["name"].as_str().is_some_and(is_function_name) {
            return Err(format!("{at}.functionResponse.name: Invalid function name"));
        }
        if !fr["response"].is_object() {
            return Err(format!(
                "{at}.functionResponse.response: Invalid value (an object is required)"
            ));
        }
        return Ok(());
    }
    if [
        "inlineData",
        "fileData",
        "executableCode",
        "codeExecutionResult",
    ]
    .iter()
    .any(|k| obj.contains_key(*k))
    {
        return Ok(());
    }
    Err(format!(
        "{at}: the part has no data (text, functionCall, functionResponse, …)"
    ))
}

fn names_of<'a>(content: &'a Value, kind: &str) -> Vec<&'a str> {
    content["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get(kind).and_then(|f| f["name"].as_str()))
                .collect()
        })
        .unwrap_or_default()
}

fn check_contents(contents: &[Value]) -> Result<(), String> {
    if contents.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    }
    for (i, c) in contents.iter().enumerate() {
        let role = match c["role"].as_str() {
            None => "user",
            Some(r @ ("user" | "model")) => r,
            Some(r) => {
                return Err(format!(
                    "contents[{i}].role: Please use a valid role: user, model (not '{r}')."
                ));
            }
        };
        let parts = c["parts"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
            })?;
        for (j, p) in parts.iter().enumerate() {
            check_part(i, j, role, p)?;
        }
        let calls = names_of(c, "functionCall");
        if !calls.is_empty() {
            let after_user = i > 0 && contents[i - 1]["role"].as_str().unwrap_or("user") == "user";
            if !after_user {
                return Err(format!(
                    "contents[{i}]: Please ensure that function call turn comes immediately \
                     after a user turn or after a function response turn."
                ));
            }
        }
        let responses = names_of(c, "functionResponse");
        if !responses.is_empty() {
            let previous = if i > 0 {
                names_of(&contents[i - 1], "functionCall")
            } else {
                Vec::new()
            };
            if responses.len() != previous.len() {
                return Err(format!(
                    "contents[{i}]: Please ensure that the number of function response parts \
                     is equal to the number of function call parts of the function call turn."
                ));
            }
            if let Some(name) = responses.iter().find(|n| !previous.contains(n)) {
                return Err(format!(
                    "contents[{i}]: a functionResponse names '{name}', which the function call \
                     turn before it did not call."
                ));
            }
        }
    }
    Ok(())
}

fn check_tools(obj: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let Some(tools) = obj.get("tools") else {
        return Ok(names);
    };
    let tools = tools
        .as_array()
        .ok_or("tools: Invalid value (a list is required)")?;
    for (i, t) in tools.iter().enumerate() {
        let Some(decls) = t.get("functionDeclarations") else {
            continue;
        };
        let decls = decls
            .as_array()
            .ok_or_else(|| format!("tools[{i}].functionDeclarations: a list is required"))?;
        for (j, d) in decls.iter().enumerate() {
            let at = format!("tools[{i}].function_declarations[{j}]");
            let name = d["name"].as_str().unwrap_or_default();
            if !is_function_name(name) {
                return Err(format!(
                    "* GenerateContentRequest.{at}.name: Invalid function name. Must start with \
                     a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores \
                     (_), dots (.), colons (:) or dashes (-), with a maximum length of 64."
                ));
            }
            if d.get("parameters").is_some() && d.get("parametersJsonSchema").is_some() {
                return Err(format!(
                    "{at}: parameters and parametersJsonSchema are mutually exclusive"
                ));
            }
            if let Some(schema) = d.get("parametersJsonSchema")
                && !schema.is_object()
            {
                return Err(format!(
                    "{at}.parametersJsonSchema: a JSON Schema object is required"
                ));
            }
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn check_tool_config(obj: &Map<String, Value>, names: &[String]) -> Result<(), String> {
    let Some(config) = obj
        .get("toolConfig")
        .and_then(|c| c.get("functionCallingConfig"))
    else {
        return Ok(());
    };
    let mode = config["mode"].as_str().unwrap_or("AUTO");
    if !matches!(
        mode,
        "AUTO" | "ANY" | "NONE" | "VALIDATED" | "MODE_UNSPECIFIED"
    ) {
        return Err(format!(
            "toolConfig.functionCallingConfig.mode: Invalid value \"{mode}\""
        ));
    }
    if let Some(allowed) = config.get("allowedFunctionNames") {
        if !matches!(mode, "ANY" | "VALIDATED") {
            return Err(
                "toolConfig.functionCallingConfig.allowedFunctionNames: only allowed \
                        when the mode is ANY"
                    .into(),
            );
        }
        for n in allowed.as_array().into_iter().flatten() {
            let n = n.as_str().unwrap_or_default();
            if !names.iter().any(|x| x == n) {
                return Err(format!(
                    "toolConfig.functionCallingConfig.allowedFunctionNames: '{n}' is not a \
                     declared function"
                ));
            }
        }
    }
    Ok(())
}

fn check_generation(obj: &Map<String, Value>) -> Result<(), String> {
    let Some(g) = obj.get("generationConfig") else {
        return Ok(());
    };
    if let Some(t) = g.get("temperature")
        && !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t))
    {
        return Err("generationConfig.temperature: must be between 0 and 2".into());
    }
    if let Some(n) = g.get("maxOutputTokens")
        && n.as_u64().is_none_or(|n| n < 1)
    {
        return Err("generationConfig.maxOutputTokens: must be a positive integer".into());
    }
    let json_schema = g.get("responseJsonSchema").is_some();
    if json_schema && g.get("responseSchema").is_some() {
        return Err(
            "generationConfig: responseSchema and responseJsonSchema are mutually exclusive".into(),
        );
    }
    if (json_schema || g.get("responseSchema").is_some())
        && !matches!(
            g["responseMimeType"].as_str(),
            Some("application/json" | "text/x.enum")
        )
    {
        return Err(
            "generationConfig.responseMimeType: a response schema needs \
                    responseMimeType application/json"
                .into(),
        );
    }
    Ok(())
}

impl Wire for Gemini {
    fn check(&self, body: &Value) -> Result<(), String> {
        let obj = body.as_object().ok_or("the body must be a JSON object")?;
        if let Some(k) = obj.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."
            ));
        }
        if let Some(s) = obj.get("systemInstruction") {
            let ok = s["parts"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["text"].is_string()));
            if !ok {
                return Err("systemInstruction.parts: a list of text parts is required".into());
            }
        }
        let names = check_tools(obj)?;
        check_tool_config(obj, &names)?;
        check_generation(obj)?;
        let contents = obj
            .get("contents")
            .and_then(Value::as_array)
            .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
        check_contents(contents)
    }

    fn stream(&self, reply: &Reply, model: &str) -> String {
        let n = reply.delta_chars.max(1);
        let id: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(20)
            .collect();
        // Each chunk's parts, already JSON text (arguments go out as the script wrote them).
        let mut chunks: Vec<Vec<String>> = Vec::new();
        if let Some(reasoning) = &reply.reasoning {
            for p in pieces(reasoning, n) {
                chunks.push(vec![json!({"text": p, "thought": true}).to_string()]);
            }
        }
        for p in pieces(&reply.text, n) {
            chunks.push(vec![json!({"text": p}).to_string()]);
        }
        if !reply.calls.is_empty() {
            chunks.push(
                reply
                    .calls
                    .iter()
                    .map(|c| {
                        let args = if c.arguments.trim().is_empty() {
                            "{}"
                        } else {
                            &c.arguments
                        };
                        format!(
                            "{{\"functionCall\":{{\"args\":{args},\"name\":{}}}}}",
                            json!(c.name)
                        )
                    })
                    .collect(),
            );
        }
        let failing = reply.error_event.is_some();
        if chunks.is_empty() && !failing {
            chunks.push(vec![json!({"text": ""}).to_string()]);
        }
        let u = &reply.usage;
        let total = chunks.len();
        let mut body = String::new();
        if reply.ping {
            body.push_str(": keep-alive\r\n\r\n");
        }
        for (k, parts) in chunks.into_iter().enumerate() {
            let last = k + 1 == total;
            // Cumulative: the candidates' count grows to the total on the last chunk.
            let output = u.output_tokens.saturating_mul(k as u64 + 1) / total as u64;
            let thoughts = u.reasoning_tokens.unwrap_or(0);
            let mut usage = json!({
                "promptTokenCount": u.input_tokens,
                "candidatesTokenCount": output,
                "totalTokenCount": u.input_tokens.saturating_add(output).saturating_add(thoughts),
            });
            if last && let Some(t) = u.total_tokens {
                usage["totalTokenCount"] = json!(t);
            }
            if let Some(c) = u.cached_input_tokens {
                usage["cachedContentTokenCount"] = json!(c);
            }
            if let Some(t) = u.reasoning_tokens {
                usage["thoughtsTokenCount"] = json!(t);
            }
            let mut candidate =
                json!({"content": {"parts": "@PARTS@", "role": "model"}, "index": 0});
            if last
                && !failing
                && let Some(f) = &reply.finish
            {
                candidate["finishReason"] = json!(finish_reason(f));
            }
            let chunk = json!({
                "candidates": [candidate],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": id,
            })
            .to_string()
            .replace("\"@PARTS@\"", &format!("[{}]", parts.join(",")));
            body.push_str(&format!("data: {chunk}\r\n\r\n"));
        }
        if let Some((kind, message)) = &reply.error_event {
            let (code, status) = match kind.as_str() {
                "overloaded_error" => (503, "UNAVAILABLE"),
                "rate_limit_error" => (429, "RESOURCE_EXHAUSTED"),
                s if s.chars().all(|c| c.is_ascii_uppercase() || c == '_') => (500, s),
                _ => (500, "INTERNAL"),
            };
            let error = json!({"error": {"code": code, "message": message, "status": status}});
            body.push_str(&format!("data: {error}\r\n\r\n"));
        }
        body
    }

    fn error(&self, status: u16, message: &str) -> Value {
        json!({"error": {"code": status, "message": message, "status": status_name(status)}})
    }
}

/// FNV-1a of `bytes`, from `seed`.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fake's embedding of `text`: a unit vector that depends only on the text.
fn embed(text: &str) -> Vec<f64> {
    let raw: Vec<f64> = (0..DIMENSION)
        .map(|d| {
            let h = fnv(0xcbf2_9ce4_8422_2325 ^ d as u64, text.as_bytes());
            (h % 2001) as f64 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        let mut unit = vec![0.0; DIMENSION];
        unit[0] = 1.0;
        return unit;
    }
    raw.iter().map(|x| x / norm).collect()
}

/// Answer a `batchEmbedContents` body: one deterministic unit vector per request, in order.
pub(crate) fn embeddings(body: &Value) -> Result<Value, String> {
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("requests: Field required")?;
    if requests.is_empty() {
        return Err("requests: at least one request is required".into());
    }
    if requests.len() > MAX_BATCH {
        return Err(format!(
            "* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one \
             batch, got {}",
            requests.len()
        ));
    }
    let mut out = Vec::with_capacity(requests.len());
    let mut model: Option<&str> = None;
    for (i, r) in requests.iter().enumerate() {
        let m = r["model"]
            .as_str()
            .filter(|m| m.starts_with("models/"))
            .ok_or_else(|| format!("requests[{i}].model: a model name 'models/…' is required"))?;
        if model.is_some_and(|first| first != m) {
            return Err(format!(
                "requests[{i}].model: every request of a batch must name the batch's model"
            ));
        }
        model = Some(m);
        let parts = r["content"]["parts"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("requests[{i}].content.parts: must not be empty"))?;
        let mut text = String::new();
        for (j, p) in parts.iter().enumerate() {
            text.push_str(
                p["text"]
                    .as_str()
                    .ok_or_else(|| format!("requests[{i}].content.parts[{j}].text: required"))?,
            );
        }
        out.push(json!({"values": embed(&text)}));
    }
    Ok(json!({"embeddings": out}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use super::*;

    #[test]
    fn requests_are_checked_as_the_api_checks_them() {
        let w = Gemini;
        let user = json!({"role": "user", "parts": [{"text": "hi"}]});
        assert_eq!(w.check(&json!({"contents": [user]})), Ok(()));
        assert!(
            w.check(&json!({"contents": []}))
                .unwrap_err()
                .contains("not specified")
        );
        let e = w
            .check(&json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}))
            .unwrap_err();
        assert!(e.contains("valid role"), "{e}");
        let call = json!({"role": "model", "parts": [{"functionCall": {"name": "a", "args": {}}}]});
        let answer = |name: &str| json!({"role": "user", "parts": [{"functionResponse": {"name": name, "response": {}}}]});
        assert_eq!(
            w.check(&json!({"contents": [user, call, answer("a")]})),
            Ok(())
        );
        let e = w
            .check(&json!({"contents": [user, call, answer("b")]}))
            .unwrap_err();
        assert!(e.contains("'b'"), "{e}");
        let e = w.check(&json!({"contents": [call]})).unwrap_err();
        assert!(e.contains("immediately after a user turn"), "{e}");
        let e = w
            .check(&json!({"contents": [user], "system_prompt": "x"}))
            .unwrap_err();
        assert!(e.contains("Unknown name \"system_prompt\""), "{e}");
        let e = w
            .check(&json!({"contents": [user], "generationConfig": {"responseJsonSchema": {}}}))
            .unwrap_err();
        assert!(e.contains("responseMimeType"), "{e}");
    }

    #[test]
    fn embeddings_are_unit_vectors_of_the_text_in_order() {
        let req = |t: &str| json!({"model": "models/e", "content": {"parts": [{"text": t}]}});
        let a = embeddings(&json!({"requests": [req("a"), req("b"), req("a")]})).unwrap();
        let v: Vec<Vec<f64>> = a["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(v[0], v[2]);
        assert_ne!(v[0], v[1]);
        for x in &v {
            assert_eq!(x.len(), DIMENSION);
            assert!((x.iter().map(|y| y * y).sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let many: Vec<Value> = (0..101).map(|i| req(&i.to_string())).collect();
        assert!(
            embeddings(&json!({"requests": many}))
                .unwrap_err()
                .contains("at most 100")
        );
    }

    #[test]
    fn chunks_are_crlf_framed_with_cumulative_usage_and_parallel_calls() {
        let mut reply = Reply::calls([("a", json!({"x": 1})), ("b", json!({}))]);
        reply.text = "hey".into();
        reply.delta_chars = 2;
        reply.usage.output_tokens = 9;
        let body = Gemini.stream(&reply, "g");
        let chunks: Vec<Value> = body
            .split("\r\n\r\n")
            .filter(|c| !c.is_empty())
            .map(|c| serde_json::from_str(c.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(chunks.len(), 3);
        let counts: Vec<u64> = chunks
            .iter()
            .map(|c| c["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [3, 6, 9]);
        assert_eq!(
            chunks[2]["candidates"][0]["content"]["parts"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
        assert!(chunks[1]["candidates"][0].get("finishReason").is_none());
    }
}
