//! Unit tests of what is not on the wire alone: request encoding choices, error
//! classification, and decoding corner cases the recorded streams do not show.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use flowbot_core::llm::{
    ChatMessage, ChatRequest, FinishReason, ModelErrorKind, StreamEvent, ToolCall, ToolChoice,
    ToolSpec,
};
use serde_json::{Value, json};

use super::chat::ChatDecoder;
use super::errors::{classify, classify_inband};
use super::responses::ResponsesDecoder;
use super::{OpenAiChat, OpenAiResponses};
use crate::config::{Dialect, ProviderConfig};
use crate::transport::{DecodeError, Decoder};

fn chat_at(base: &str, azure: bool) -> OpenAiChat {
    let mut c = ProviderConfig::new(Dialect::Openai, "m").base_url(base);
    c.azure = azure;
    OpenAiChat::new(&c).unwrap()
}

fn limited() -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::user("hi")]).with_max_tokens(100)
}

#[test]
fn the_token_limit_is_max_completion_tokens_for_openai_and_azure_and_max_tokens_elsewhere() {
    let limit = |m: &OpenAiChat| {
        let body = m.body(&limited()).unwrap();
        let keys: Vec<&str> = ["max_tokens", "max_completion_tokens"]
            .into_iter()
            .filter(|k| body.get(*k).is_some())
            .collect();
        assert_eq!(keys.len(), 1, "{body}");
        assert_eq!(body[keys[0]], json!(100));
        keys[0]
    };
    assert_eq!(
        limit(&chat_at("https://api.openai.com/v1", false)),
        "max_completion_tokens"
    );
    assert_eq!(
        limit(&chat_at(
            "https://x.openai.azure.com/openai/deployments/d",
            true
        )),
        "max_completion_tokens"
    );
    assert_eq!(
        limit(&chat_at("http://127.0.0.1:11434/v1", false)),
        "max_tokens"
    );
    assert_eq!(
        limit(&chat_at("http://localhost:8000/v1", false)),
        "max_tokens"
    );
    // A host that merely starts with the name is not OpenAI.
    assert_eq!(
        limit(&chat_at("https://api.openai.com.example.net/v1", false)),
        "max_tokens"
    );
}

#[test]
fn tool_choice_maps_to_each_dialect() {
    let tool = ToolSpec {
        name: "lookup".into(),
        description: "Look up".into(),
        parameters: json!({"type": "object"}),
    };
    let chat = chat_at("http://127.0.0.1/v1", false);
    let responses = OpenAiResponses::new(
        &ProviderConfig::new(Dialect::OpenaiResponses, "m").base_url("http://127.0.0.1/v1"),
    )
    .unwrap();
    for (choice, want_chat, want_responses) in [
        (ToolChoice::Auto, json!("auto"), json!("auto")),
        (ToolChoice::None, json!("none"), json!("none")),
        (ToolChoice::Required, json!("required"), json!("required")),
        (
            ToolChoice::Tool("lookup".into()),
            json!({"type": "function", "function": {"name": "lookup"}}),
            json!({"type": "function", "name": "lookup"}),
        ),
    ] {
        let mut r = ChatRequest::new(vec![ChatMessage::user("hi")]).with_tools(vec![tool.clone()]);
        r.tool_choice = choice;
        assert_eq!(chat.body(&r).unwrap()["tool_choice"], want_chat);
        assert_eq!(responses.body(&r).unwrap()["tool_choice"], want_responses);
    }
    // Without tools there is no tool_choice and no parallel_tool_calls (OpenAI refuses them).
    let body = chat
        .body(&ChatRequest::new(vec![ChatMessage::user("hi")]))
        .unwrap();
    assert!(body.get("tool_choice").is_none() && body.get("parallel_tool_calls").is_none());
}

#[test]
fn bad_requests_are_refused_before_sending_with_the_reason() {
    let chat = chat_at("http://127.0.0.1/v1", false);
    let refuse = |r: &ChatRequest| {
        let e = chat.body(r).unwrap_err();
        assert_eq!(e.kind, ModelErrorKind::BadRequest, "{e}");
        e.message
    };
    assert_eq!(
        refuse(&ChatRequest::new(vec![])),
        "the request has no messages"
    );
    let mut r = ChatRequest::new(vec![ChatMessage::user("hi")]);
    r.tool_choice = ToolChoice::Tool("nope".into());
    assert!(refuse(&r).contains("'nope'"));
    r.tool_choice = ToolChoice::Required;
    assert!(refuse(&r).contains("required"));
    let mut r = ChatRequest::new(vec![ChatMessage::user("hi")]);
    r.temperature = Some(f32::NAN);
    assert!(refuse(&r).starts_with("temperature NaN"));
    r.temperature = Some(0.7);
    assert_eq!(chat.body(&r).unwrap()["temperature"], json!(0.7));
    assert_eq!(
        refuse(&ChatRequest::new(vec![ChatMessage::user("hi")]).with_max_tokens(0)),
        "max_tokens must be at least 1"
    );
    let responses = OpenAiResponses::new(
        &ProviderConfig::new(Dialect::OpenaiResponses, "m").base_url("http://127.0.0.1/v1"),
    )
    .unwrap();
    let e = responses
        .body(&ChatRequest::new(vec![ChatMessage::system(
            "only instructions",
        )]))
        .unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::BadRequest);
}

#[test]
fn http_errors_are_classified_by_code_before_status() {
    let body =
        |code: &str| json!({"error": {"message": "m", "type": "x", "code": code, "param": null}});
    assert_eq!(
        classify(400, &body("context_length_exceeded"), "m"),
        Some(ModelErrorKind::ContextTooLong)
    );
    assert_eq!(
        classify(400, &body("content_filter"), "m"),
        Some(ModelErrorKind::ContentFilter)
    );
    assert_eq!(
        classify(400, &body("content_policy_violation"), "m"),
        Some(ModelErrorKind::ContentFilter)
    );
    // No credit left is permanent, not a rate limit.
    assert_eq!(
        classify(429, &body("insufficient_quota"), "m"),
        Some(ModelErrorKind::Auth)
    );
    assert_eq!(
        classify(404, &body("model_not_found"), "m"),
        Some(ModelErrorKind::Config)
    );
    // Where the code says no more than the status, the status decides.
    assert_eq!(classify(429, &body("rate_limit_exceeded"), "m"), None);
    assert_eq!(
        classify(
            503,
            &json!({"error": {"message": "m", "type": "server_error"}}),
            "m"
        ),
        None
    );
    // Azure names its content filter in innererror.
    let azure = json!({"error": {"message": "filtered", "code": "something",
        "innererror": {"code": "ResponsibleAIPolicyViolation"}}});
    assert_eq!(
        classify(400, &azure, "filtered"),
        Some(ModelErrorKind::ContentFilter)
    );
    assert_eq!(
        classify(
            400,
            &Value::Null,
            "This model's maximum context length is 8192 tokens"
        ),
        Some(ModelErrorKind::ContextTooLong)
    );
}

#[test]
fn in_band_errors_are_classified_by_code_type_or_status_number() {
    let e = |v: Value| classify_inband(&v, v["message"].as_str().unwrap_or_default());
    assert_eq!(
        e(json!({"message": "m", "type": "server_error", "code": null})),
        ModelErrorKind::Server
    );
    assert_eq!(
        e(json!({"message": "m", "type": "requests", "code": "rate_limit_exceeded"})),
        ModelErrorKind::RateLimited
    );
    assert_eq!(
        e(json!({"message": "m", "code": "context_length_exceeded"})),
        ModelErrorKind::ContextTooLong
    );
    assert_eq!(
        e(json!({"message": "m", "code": "insufficient_quota"})),
        ModelErrorKind::Auth
    );
    assert_eq!(
        e(json!({"message": "m", "code": "server_is_overloaded"})),
        ModelErrorKind::Overloaded
    );
    // vLLM: a status number in `code`.
    assert_eq!(
        e(json!({"message": "m", "type": "BadRequestError", "code": 400})),
        ModelErrorKind::BadRequest
    );
    assert_eq!(
        e(json!({"message": "m", "code": 503})),
        ModelErrorKind::Overloaded
    );
    assert_eq!(
        e(json!({"message": "m", "code": "429"})),
        ModelErrorKind::RateLimited
    );
    assert_eq!(e(json!({"message": "m"})), ModelErrorKind::Server);
}

fn feed(
    decoder: &mut dyn Decoder,
    events: &[(Option<&str>, &str)],
) -> Result<Vec<StreamEvent>, DecodeError> {
    let mut out = Vec::new();
    for (name, data) in events {
        decoder.event(*name, data, &mut out)?;
    }
    Ok(out)
}

#[test]
fn chat_calls_without_ids_get_unique_ones_and_fragments_without_index_follow_the_last() {
    let mut d = ChatDecoder::default();
    let out = feed(
        &mut d,
        &[
            (None, r#"{"id":"c1","model":"llama","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"name":"a","arguments":"{\"x\""}}]}}]}"#),
            (None, r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]}}]}"#),
            (None, r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"id":"given","function":{"name":"b","arguments":"{}"}}]}}]}"#),
            (None, "[DONE]"),
        ],
    )
    .unwrap();
    let finished: Vec<&ToolCall> = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallFinished { call, .. } => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 2, "{out:?}");
    assert!(
        finished[0].id.starts_with("call_") && finished[0].id.len() == 29,
        "{:?}",
        finished[0]
    );
    assert_eq!(
        (finished[0].name.as_str(), finished[0].arguments.as_str()),
        ("a", "{\"x\":1}")
    );
    assert_eq!(
        finished[1],
        &ToolCall {
            id: "given".into(),
            name: "b".into(),
            arguments: "{}".into()
        }
    );
    // No finish_reason anywhere: no Finished.
    assert!(
        !out.iter()
            .any(|e| matches!(e, StreamEvent::Finished { .. }))
    );
    assert!(d.done());
}

#[test]
fn chat_reasoning_comes_from_either_field_and_other_choices_are_ignored() {
    let mut d = ChatDecoder::default();
    let out = feed(
        &mut d,
        &[
            (None, r#"{"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"think "}}]}"#),
            (None, r#"{"id":"c","choices":[{"index":0,"delta":{"reasoning":"more"}},{"index":1,"delta":{"content":"other"}}]}"#),
            (None, r#"{"id":"c","choices":[{"index":0,"delta":{"content":"yes"},"finish_reason":"length"}]}"#),
            (None, "[DONE]"),
        ],
    )
    .unwrap();
    assert_eq!(
        out[1..],
        [
            StreamEvent::ReasoningDelta {
                text: "think ".into()
            },
            StreamEvent::ReasoningDelta {
                text: "more".into()
            },
            StreamEvent::TextDelta { text: "yes".into() },
            StreamEvent::Finished {
                reason: FinishReason::Length,
                raw: "length".into()
            },
        ]
    );
}

#[test]
fn responses_failed_and_error_events_are_errors_and_unknown_items_are_protocol_errors() {
    let mut d = ResponsesDecoder::default();
    let e = feed(
        &mut d,
        &[(
            Some("response.failed"),
            r#"{"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":"rate_limit_exceeded","message":"slow down"}}}"#,
        )],
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ModelErrorKind::RateLimited,
            "slow down (rate_limit_exceeded)"
        )
    );
    let mut d = ResponsesDecoder::default();
    let e = feed(
        &mut d,
        &[(
            Some("error"),
            r#"{"type":"error","code":"server_error","message":"boom","param":null}"#,
        )],
    )
    .unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Server);
    let mut d = ResponsesDecoder::default();
    let e = feed(
        &mut d,
        &[(
            None,
            r#"{"type":"response.function_call_arguments.delta","item_id":"fc_9","delta":"{"}"#,
        )],
    )
    .unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Protocol);
    assert!(
        e.message.contains("fc_9") && e.message.contains("response.function_call_arguments.delta"),
        "{}",
        e.message
    );
}

#[test]
fn responses_arguments_sent_only_whole_are_used() {
    let mut d = ResponsesDecoder::default();
    let out = feed(
        &mut d,
        &[
            (None, r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc","call_id":"call_1","name":"f","arguments":""}}"#),
            (None, r#"{"type":"response.function_call_arguments.done","item_id":"fc","output_index":0,"arguments":"{\"a\":1}"}"#),
            (None, r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"fc","call_id":"call_1","name":"f","arguments":"{\"a\":1}"}}"#),
            (None, r#"{"type":"response.completed","response":{"id":"r","model":"m","status":"completed","usage":null}}"#),
        ],
    )
    .unwrap();
    assert!(out.contains(&StreamEvent::ToolCallFinished {
        index: 0,
        call: ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{\"a\":1}".into()
        },
    }));
    assert_eq!(
        out.last(),
        Some(&StreamEvent::Finished {
            reason: FinishReason::ToolCalls,
            raw: "completed".into()
        })
    );
    assert!(d.done());
}

#[test]
fn an_assistant_turn_with_only_tool_calls_has_null_content() {
    let chat = chat_at("http://127.0.0.1/v1", false);
    let r = ChatRequest::new(vec![
        ChatMessage::user("hi"),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "c".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
        },
    ]);
    assert_eq!(
        chat.body(&r).unwrap()["messages"][1]["content"],
        Value::Null
    );
}
