//! The Bot API over HTTP: `POST {base}/bot{token}/{method}` with a JSON body, answered with
//! `{"ok": true, "result": …}` or `{"ok": false, "error_code": …, "description": …,
//! "parameters": {"retry_after": …}}`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// A Bot API client for one bot.
#[derive(Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    /// `{base}/bot{token}/`: holds the token, so never logged.
    prefix: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// Why a Bot API call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Telegram answered `ok: false`.
    #[error("Telegram answered {code}: {description}")]
    Refused {
        /// `error_code` (an HTTP status).
        code: u16,
        /// `description`.
        description: String,
        /// `parameters.retry_after`, on 429, at most
        /// [`MAX_RETRY_AFTER`](crate::retry_after::MAX_RETRY_AFTER).
        retry_after: Option<Duration>,
    },
    /// No answer, or one that is not the Bot API's.
    #[error("Telegram API unreachable or answered garbage: {0}")]
    Transport(String),
}

impl ApiError {
    /// Whether Telegram refused an edit because it would change nothing (`Bad Request:
    /// message is not modified`): the message already shows what was asked.
    pub fn is_not_modified(&self) -> bool {
        matches!(self, ApiError::Refused { code: 400, description, .. }
            if description.contains("message is not modified"))
    }

    /// This error as a channel error's source: permanent or transient by its code (see
    /// [`retry_after::classified`](crate::retry_after)), with Telegram's wait.
    pub(crate) fn classified(self) -> flowbot_core::BoxError {
        let status = match &self {
            ApiError::Refused { code, .. } => Some(*code),
            ApiError::Transport(_) => None,
        };
        let wait = self.retry_after();
        crate::retry_after::classified(status, wait, self)
    }

    /// How long Telegram asked us to wait (429), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Refused { retry_after, .. } => *retry_after,
            ApiError::Transport(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    /// Seconds; read as any JSON value, so a negative, fractional, huge or non-numeric one
    /// does not make the whole answer unreadable (see `crate::retry_after`).
    #[serde(default)]
    retry_after: Option<Value>,
}

impl Api {
    pub(crate) fn new(base_url: &str, token: &str, timeout: Duration) -> Result<Api, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Api {
            client,
            prefix: format!("{}/bot{token}/", base_url.trim_end_matches('/')),
        })
    }

    /// Call `method` with `body`; its `result`.
    pub(crate) async fn call(&self, method: &str, body: &Value) -> Result<Value, ApiError> {
        self.call_with_timeout(method, body, None).await
    }

    /// [`Api::call`] with a longer HTTP timeout (long polling).
    pub(crate) async fn call_with_timeout(
        &self,
        method: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        let mut req = self
            .client
            .post(format!("{}{method}", self.prefix))
            .json(body);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        // reqwest's errors carry the URL, and with it the token: keep only what went wrong.
        let res = req
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(e)))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(describe(e)))?;
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::Transport(format!(
                "{method}: HTTP {status} with a body that is not the Bot API's ({e})"
            ))
        })?;
        if answer.ok {
            return Ok(answer.result);
        }
        Err(ApiError::Refused {
            code: answer.error_code.unwrap_or(status.as_u16()),
            description: answer
                .description
                .unwrap_or_else(|| format!("{method} failed")),
            retry_after: answer
                .parameters
                .and_then(|p| p.retry_after)
                .and_then(|v| crate::retry_after::from_json(&v)),
        })
    }
}

fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else {
        "request failed"
    };
    // Without the URL (it holds the token).
    format!("{what}: {}", e.without_url())
}
