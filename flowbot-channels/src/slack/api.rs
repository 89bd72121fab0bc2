//! Slack's Web API: `POST {base}/{method}` with a JSON body and the bot token as a bearer
//! token, answered with `{"ok": true, …}` or `{"ok": false, "error": "…"}`. Rate limits are
//! honoured twice: sends are paced below each method's tier before they go out (and
//! `chat.postMessage` to one channel at most once a second), and a 429 is waited out for as
//! long as its `Retry-After` asks.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;

/// Why a Web API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackApiError {
    /// `ok: false` with Slack's error code (`channel_not_found`, `not_in_channel`, …).
    #[error("{method}: Slack answered error '{error}'")]
    Refused {
        /// The method.
        method: String,
        /// Slack's error code.
        error: String,
    },
    /// Still rate limited after waiting.
    #[error("{method}: rate limited by Slack; retry after {retry_after:?}")]
    RateLimited {
        /// The method.
        method: String,
        /// What Slack asked for.
        retry_after: Duration,
    },
    /// No answer, or not the Web API's.
    #[error("{method}: {detail}")]
    Transport {
        /// The method.
        method: String,
        /// What went wrong.
        detail: String,
    },
}

impl SlackApiError {
    /// Whether Slack's error code says the message can never be sent as it is (an unknown or
    /// archived channel, a channel the bot is not in, a malformed message), rather than that
    /// Slack was busy or failed (`ratelimited`, `internal_error`, `fatal_error`,
    /// `service_unavailable`, `request_timeout`, a 5xx) or that the bot's credentials need an
    /// operator (`invalid_auth`, `not_authed`, `token_expired`, `token_revoked`,
    /// `account_inactive`, a 401): those may pass, so the message waits in the queue.
    pub fn is_permanent(&self) -> bool {
        match self {
            // "HTTP 5xx": Slack failed without a Web API answer.
            SlackApiError::Refused { error, .. } => {
                !(matches!(
                    error.as_str(),
                    "ratelimited"
                        | "rate_limited"
                        | "internal_error"
                        | "fatal_error"
                        | "service_unavailable"
                        | "request_timeout"
                        | "team_added_to_org"
                        | "invalid_auth"
                        | "not_authed"
                        | "token_expired"
                        | "token_revoked"
                        | "account_inactive"
                        | "HTTP 401"
                        | "HTTP 408"
                        | "HTTP 409"
                        | "HTTP 429"
                ) || error.starts_with("HTTP 5"))
            }
            SlackApiError::RateLimited { .. } | SlackApiError::Transport { .. } => false,
        }
    }

    /// This error as a channel error's source: [`Permanent`](flowbot_core::Permanent) or
    /// [`Transient`](flowbot_core::Transient) with Slack's `Retry-After`.
    pub(crate) fn classified(self) -> flowbot_core::BoxError {
        if self.is_permanent() {
            return Box::new(flowbot_core::Permanent::new(self));
        }
        let wait = match &self {
            SlackApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        Box::new(flowbot_core::Transient::new(self).retry_after_opt(wait))
    }
}

#[derive(Clone, Copy)]
enum Body<'a> {
    Json(&'a Value),
    Form(&'a [(&'a str, String)]),
}

/// The longest `Retry-After` waited out in place; longer ones fail the call (the task queue
/// retries it later).
const MAX_WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    /// `Bearer <bot token>`.
    auth: String,
    /// `chat.postMessage`: about one message per second per channel.
    per_channel: DefaultKeyedRateLimiter<String>,
    /// Tier 3 (50+ a minute) for the other methods this adapter calls.
    tier3: DefaultDirectRateLimiter,
}

impl Api {
    pub(crate) fn new(base: &str, bot_token: &str) -> Result<Api, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let second = Quota::per_second(NonZeroU32::MIN)
            .allow_burst(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN));
        let tier3 = Quota::per_minute(NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {bot_token}"),
            per_channel: RateLimiter::keyed(second),
            tier3: RateLimiter::direct(tier3),
        })
    }

    /// Call `method` with `body`; the whole answer.
    pub(crate) async fn call(&self, method: &str, body: &Value) -> Result<Value, SlackApiError> {
        match (method, body["channel"].as_str()) {
            ("chat.postMessage", Some(channel)) => {
                self.per_channel.until_key_ready(&channel.to_owned()).await;
            }
            _ => self.tier3.until_ready().await,
        }
        self.call_unpaced(method, Body::Json(body)).await
    }

    /// Call `method` with form fields (for the methods that take no JSON, such as
    /// `files.getUploadURLExternal`).
    pub(crate) async fn call_form(
        &self,
        method: &str,
        fields: &[(&str, String)],
    ) -> Result<Value, SlackApiError> {
        self.tier3.until_ready().await;
        self.call_unpaced(method, Body::Form(fields)).await
    }

    async fn call_unpaced(&self, method: &str, body: Body<'_>) -> Result<Value, SlackApiError> {
        let transport = |detail: String| SlackApiError::Transport {
            method: method.to_owned(),
            detail,
        };
        let mut waited = 0;
        loop {
            let req = self
                .client
                .post(format!("{}/{method}", self.base))
                .header(reqwest::header::AUTHORIZATION, &self.auth);
            let req = match body {
                Body::Json(v) => req.json(v),
                Body::Form(f) => req.form(f),
            };
            let res = req
                .send()
                .await
                .map_err(|e| transport(e.without_url().to_string()))?;
            if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                // At most an hour; one second when Slack sends none we understand.
                let retry_after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::retry_after::parse_header(v, flowbot_core::clock::now()))
                    .unwrap_or(Duration::from_secs(1));
                if waited < 2 && retry_after <= MAX_WAIT {
                    tracing::info!(method, ?retry_after, "Slack rate limit; waiting");
                    tokio::time::sleep(retry_after).await;
                    waited += 1;
                    continue;
                }
                return Err(SlackApiError::RateLimited {
                    method: method.to_owned(),
                    retry_after,
                });
            }
            let status = res.status();
            let answer: Value = res
                .json()
                .await
                .map_err(|e| transport(format!("HTTP {status}, not the Web API's JSON: {e}")))?;
            if answer["ok"] == true {
                return Ok(answer);
            }
            return Err(SlackApiError::Refused {
                method: method.to_owned(),
                error: answer["error"]
                    .as_str()
                    .map_or_else(|| format!("HTTP {}", status.as_u16()), str::to_owned),
            });
        }
    }

    /// A Socket Mode URL (`apps.connections.open`, with the app-level token).
    pub(crate) async fn open_connection(&self, app_token: &str) -> Result<String, SlackApiError> {
        let method = "apps.connections.open";
        let res = self
            .client
            .post(format!("{}/{method}", self.base))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {app_token}"),
            )
            .send()
            .await
            .map_err(|e| SlackApiError::Transport {
                method: method.to_owned(),
                detail: e.without_url().to_string(),
            })?;
        let answer: Value = res.json().await.map_err(|e| SlackApiError::Transport {
            method: method.to_owned(),
            detail: format!("not the Web API's JSON: {e}"),
        })?;
        match (answer["ok"].as_bool(), answer["url"].as_str()) {
            (Some(true), Some(url)) => Ok(url.to_owned()),
            _ => Err(SlackApiError::Refused {
                method: method.to_owned(),
                error: answer["error"].as_str().unwrap_or("no url").to_owned(),
            }),
        }
    }

    /// `GET` a file for an upload (attachments are given by URL).
    pub(crate) async fn download(&self, url: &str) -> Result<Vec<u8>, String> {
        let res = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", res.status()));
        }
        res.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("fetching {url}: {e}"))
    }

    /// `POST` a file's bytes to the upload URL Slack gave.
    pub(crate) async fn upload(&self, upload_url: &str, bytes: Vec<u8>) -> Result<(), String> {
        let res = self
            .client
            .post(upload_url)
            .body(bytes)
            .send()
            .await
            .map_err(|e| format!("uploading: {}", e.without_url()))?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("uploading: HTTP {}", res.status()))
        }
    }
}
