//! The `http_request` action: call an HTTP API from a rule or a workflow node, with the
//! response mapped into the output (status, headers, body parsed as JSON when it is JSON).
//!
//! A status outside 2xx is an error by default, naming the status class (client error,
//! server error), so a workflow node retries it under its retry policy; with
//! `"error_on_status": false` every response is an output instead.

use std::time::Duration;

use async_trait::async_trait;
use flowbot_core::{Action, ActionContext, BoxError};
use serde_json::{Map, Value, json};

/// Largest response body read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 10 << 20;
/// Timeout when the input gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `http_request` action.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    client: reqwest::Client,
}

impl Default for HttpRequest {
    fn default() -> Self {
        HttpRequest::new()
    }
}

impl HttpRequest {
    /// The action with its own connection pool.
    pub fn new() -> Self {
        HttpRequest {
            client: reqwest::Client::builder()
                .user_agent(concat!("flowbot/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn class(status: u16) -> &'static str {
    match status {
        300..=399 => "redirect",
        400..=499 => "client error",
        500..=599 => "server error",
        _ => "unexpected status",
    }
}

#[async_trait]
impl Action for HttpRequest {
    fn name(&self) -> &str {
        "http_request"
    }

    fn description(&self) -> &str {
        "Send an HTTP request; the output has the status, headers and body (parsed when JSON)"
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "pattern": "^https?://"},
                "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"], "default": "GET"},
                "headers": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                "json": {"description": "a JSON body"},
                "form": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}, "description": "a form body (application/x-www-form-urlencoded)"},
                "body": {"type": "string", "description": "a raw text body"},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 300000, "default": 10000},
                "error_on_status": {"type": "boolean", "default": true, "description": "a status outside 2xx is an error"}
            },
            "required": ["url"],
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "status": {"type": "integer"},
                "ok": {"type": "boolean"},
                "headers": {"type": "object"},
                "body": {}
            },
            "required": ["status", "ok", "headers", "body"]
        })
    }

    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let url = input["url"].as_str().unwrap_or_default();
        let method = input["method"].as_str().unwrap_or("GET");
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("unknown method '{method}'"))?;
        let bodies = ["json", "form", "body"]
            .iter()
            .filter(|k| input.get(**k).is_some())
            .count();
        if bodies > 1 {
            return Err("give one body: `json`, `form` or `body`".into());
        }
        let timeout = input["timeout_ms"]
            .as_u64()
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let mut req = self
            .client
            .request(method, url)
            .timeout(timeout)
            .query(&strings(input.get("query")));
        for (k, v) in strings(input.get("headers")) {
            req = req.header(k, v);
        }
        if let Some(j) = input.get("json") {
            req = req.json(j);
        } else if input.get("form").is_some() {
            req = req.form(&strings(input.get("form")));
        } else if let Some(b) = input["body"].as_str() {
            req = req.body(b.to_owned());
        }
        let mut resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("{url}: no answer within {} ms", timeout.as_millis())
            } else if e.is_builder() {
                format!("'{url}' is not a usable URL: {e}")
            } else {
                format!("{url}: {e}")
            }
        })?;
        let status = resp.status().as_u16();
        let mut headers = Map::new();
        for (k, v) in resp.headers() {
            if let Ok(v) = v.to_str() {
                headers.insert(k.as_str().to_owned(), json!(v));
            }
        }
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{url}: reading the response: {e}"))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(format!(
                    "{url}: the response is over the limit of {MAX_RESPONSE_BYTES} bytes"
                )
                .into());
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&bytes);
        let body = if is_json && !bytes.is_empty() {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(text))
        } else {
            json!(text)
        };
        let ok = (200..300).contains(&status);
        if !ok && input["error_on_status"].as_bool().unwrap_or(true) {
            let snippet: String = text.chars().take(200).collect();
            return Err(format!("{url}: HTTP {status} ({}): {snippet}", class(status)).into());
        }
        Ok(json!({"status": status, "ok": ok, "headers": headers, "body": body}))
    }
}
