//! OpenAI's error codes and types, as [`ModelErrorKind`]s.
//!
//! An error body is `{"error": {"message", "type", "code", "param"}}`. `code` says the most
//! (`context_length_exceeded`, `content_filter`, `insufficient_quota`, …); `type` is broad
//! (`invalid_request_error`, `server_error`, `requests`, `tokens`); compatible servers put
//! an HTTP status number in `code` (vLLM) or leave both out.

use flowbot_core::llm::ModelErrorKind;
use serde_json::Value;

use crate::transport::{classify_status, is_context_message};

/// What an error code or type alone says, when it says more than a status would.
fn by_code(word: &str) -> Option<ModelErrorKind> {
    let kind = match word.to_ascii_lowercase().as_str() {
        "context_length_exceeded" | "string_above_max_length" | "context_window_exceeded" => {
            ModelErrorKind::ContextTooLong
        }
        "content_filter"
        | "content_policy_violation"
        | "responsibleaipolicyviolation"
        | "invalid_prompt" => ModelErrorKind::ContentFilter,
        // The account is out of credit: permanent until someone pays (see the module doc).
        "insufficient_quota" | "billing_hard_limit_reached" | "billing_not_active" => {
            ModelErrorKind::Auth
        }
        "invalid_api_key" | "invalid_authentication" | "unauthorized" | "permission_denied" => {
            ModelErrorKind::Auth
        }
        "model_not_found" | "deploymentnotfound" | "deployment_not_found" => ModelErrorKind::Config,
        _ => return None,
    };
    Some(kind)
}

/// Broad types and codes that only decide in-band, where there is no status.
fn by_type(word: &str) -> Option<ModelErrorKind> {
    let kind = match word.to_ascii_lowercase().as_str() {
        "rate_limit_exceeded" | "rate_limit_error" | "requests" | "tokens" => {
            ModelErrorKind::RateLimited
        }
        "server_is_overloaded"
        | "engine_overloaded"
        | "overloaded"
        | "overloaded_error"
        | "slow_down" => ModelErrorKind::Overloaded,
        "server_error" | "internal_error" | "internal_server_error" | "api_error" => {
            ModelErrorKind::Server
        }
        "authentication_error" | "permission_error" => ModelErrorKind::Auth,
        "invalid_request_error" | "badrequesterror" | "bad_request" => ModelErrorKind::BadRequest,
        "timeout" | "request_timeout" => ModelErrorKind::Server,
        _ => return None,
    };
    Some(kind)
}

fn words(error: &Value) -> (Option<Value>, Option<&str>) {
    let code = error.get("code").filter(|c| !c.is_null()).cloned();
    let typ = error.get("type").and_then(Value::as_str);
    (code, typ)
}

/// Azure's content filter names itself in `innererror.code`.
fn inner_code(error: &Value) -> Option<&str> {
    error.pointer("/innererror/code").and_then(Value::as_str)
}

/// Classify a failed HTTP answer for [`Endpoint::post`](crate::transport::Endpoint): the
/// body's `error.code` where it is more precise than the status (`context_length_exceeded`
/// on a 400, `insufficient_quota` on a 429, `model_not_found` on a 404, a content filter on
/// a 400), else `None` and the status decides.
pub(crate) fn classify(_status: u16, body: &Value, message: &str) -> Option<ModelErrorKind> {
    let error = body.get("error").unwrap_or(body);
    let (code, _) = words(error);
    if let Some(kind) = code
        .as_ref()
        .and_then(Value::as_str)
        .and_then(by_code)
        .or_else(|| inner_code(error).and_then(by_code))
    {
        return Some(kind);
    }
    if is_context_message(&message.to_ascii_lowercase()) {
        return Some(ModelErrorKind::ContextTooLong);
    }
    None
}

/// Classify an error that arrived inside a stream, where no status tells anything.
pub(crate) fn classify_inband(error: &Value, message: &str) -> ModelErrorKind {
    let (code, typ) = words(error);
    let code_str = code.as_ref().and_then(Value::as_str);
    if let Some(kind) = code_str
        .and_then(by_code)
        .or_else(|| inner_code(error).and_then(by_code))
        .or_else(|| code_str.and_then(by_type))
    {
        return kind;
    }
    if is_context_message(&message.to_ascii_lowercase()) {
        return ModelErrorKind::ContextTooLong;
    }
    // A status number in `code` (vLLM) or as a string (Azure's "429").
    let status = code
        .as_ref()
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (400..600).contains(n));
    if let Some(status) = status {
        return classify_status(status, message);
    }
    if let Some(kind) = typ.and_then(|t| by_code(t).or_else(|| by_type(t))) {
        return kind;
    }
    ModelErrorKind::Server
}
