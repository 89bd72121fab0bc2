//! The `http_request` action: call an HTTP API from a rule or a workflow node, with the
//! response mapped into the output (status, headers, body parsed as JSON when it is JSON).
//!
//! A status outside 2xx is an error by default, naming the status class (client error,
//! server error), so a workflow node retries it under its retry policy; with
//! `"error_on_status": false` every response is an output instead.
//!
//! ## The network guard
//!
//! The URL comes from a rule, a workflow or a model's tool call, which people edit at run
//! time, so the action is guarded by a [`NetPolicy`]: [`HttpRequest::new`] refuses loopback,
//! private, link-local, unique-local and cloud metadata addresses and every scheme but http
//! and https, checks each name on the address it connects to and each redirect again (see
//! [`flowbot_core::net`]). [`HttpRequest::with_policy`] takes an allow-list (the server's
//! `[network] allow`). A refused URL fails the call with a [`RefusedUrl`] naming the URL
//! (without user name, password or query) and the reason, marked
//! [`Permanent`]: a workflow node fails at once instead of retrying.
//!
//! URLs an operator wrote in the configuration file are not guarded: adapters' `api_base`,
//! webhook channels' `callback_url`, notifiers' URLs and language model providers'
//! `base_url` reach loopback and private addresses as configured. The `notify` action only
//! picks a configured notifier by name; no other action of this crate takes a URL from its
//! input.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowbot_core::net::{NetError, NetPolicy, redacted_url};
use flowbot_core::{Action, ActionContext, BoxError, Permanent};
use serde_json::{Map, Value, json};

/// Largest response body read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 10 << 20;
/// Timeout when the input gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The error of a call whose URL, or a redirect of it, the [`NetPolicy`] refused. Retrying
/// does not help: the address stays refused until the allow-list opens it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url} refused: {reason}")]
#[non_exhaustive]
pub struct RefusedUrl {
    /// The URL asked for, without user name, password, query or fragment.
    pub url: String,
    /// Why.
    #[source]
    pub reason: NetError,
}

/// The `http_request` action.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The guarded client, or why it could not be built (reported by each call).
    client: Result<reqwest::Client, String>,
    policy: Arc<NetPolicy>,
}

impl Default for HttpRequest {
    fn default() -> Self {
        HttpRequest::new()
    }
}

impl HttpRequest {
    /// The action with its own connection pool, guarded by the default [`NetPolicy`]:
    /// public addresses only.
    pub fn new() -> Self {
        HttpRequest::with_policy(Arc::new(NetPolicy::default()))
    }

    /// The action guarded by `policy` (an allow-list, or [`NetPolicy::open`]).
    pub fn with_policy(policy: Arc<NetPolicy>) -> Self {
        let builder =
            reqwest::Client::builder().user_agent(concat!("flowbot/", env!("CARGO_PKG_VERSION")));
        let client = policy
            .apply(builder)
            .build()
            .map_err(|e| format!("the HTTP client could not be built: {e}"));
        HttpRequest { client, policy }
    }

    /// The policy guarding the calls.
    pub fn policy(&self) -> &NetPolicy {
        &self.policy
    }
}

/// A reqwest error in words: its own (without the URL, which may hold secrets) and its
/// sources'.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
        let written = input["url"].as_str().unwrap_or_default();
        let parsed = reqwest::Url::parse(written)
            .map_err(|e| format!("'{written}' is not a usable URL: {e}"))?;
        let url = redacted_url(&parsed);
        self.policy.check_url(&parsed).map_err(|reason| {
            Permanent::new(RefusedUrl {
                url: url.clone(),
                reason,
            })
        })?;
        let client = self.client.as_ref().map_err(|e| format!("{url}: {e}"))?;
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
        let mut req = client
            .request(method, parsed)
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
        let mut resp = req.send().await.map_err(|e| -> BoxError {
            if let Some(reason) = NetError::find(&e).filter(|n| n.is_refusal()) {
                return Box::new(Permanent::new(RefusedUrl {
                    url: url.clone(),
                    reason: reason.clone(),
                }));
            }
            if e.is_timeout() {
                format!("{url}: no answer within {} ms", timeout.as_millis()).into()
            } else if e.is_builder() {
                format!("'{url}' is not a usable URL: {}", describe(e)).into()
            } else {
                format!("{url}: {}", describe(e)).into()
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
            .map_err(|e| format!("{url}: reading the response: {}", describe(e)))?
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
