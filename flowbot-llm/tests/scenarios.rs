//! The scenario suite (issue 20): every provider passes the same scenarios against the fake
//! provider. Each scenario runs for each of the four dialects (OpenAI Chat Completions,
//! OpenAI Responses, Anthropic Messages, Gemini), through `flowbot_llm::connect`, with the
//! fake writing every body in random pieces of at most 1, 3 and 17 bytes, so events, JSON
//! and UTF-8 sequences are cut anywhere. That is 12 cases per scenario; they run
//! concurrently, and a failure names its scenario, dialect and chunk size.
//!
//! Where the dialects differ (ids, the provider's word for a finish, which token counts it
//! reports, how an error is worded), the scenario states what each must do and why.

#![cfg(all(
    feature = "test-util",
    feature = "openai",
    feature = "anthropic",
    feature = "gemini"
))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, Completion, FinishReason, ModelError, ModelErrorKind,
    StreamEvent, TimeoutKind, ToolCall, ToolResult, ToolSpec, Usage,
};
use flowbot_llm::fake::{FakeProvider, Reply, Turn};
use flowbot_llm::{Dialect, ProviderConfig};
use serde_json::{Value, json};

use support::{ask, completion, deltas, finished, pieces, run};

/// Every dialect the suite runs for.
const DIALECTS: [Dialect; 4] = [
    Dialect::Openai,
    Dialect::OpenaiResponses,
    Dialect::Anthropic,
    Dialect::Gemini,
];

/// The largest write of the fake, per case: 1 cuts every multi-byte character.
const CHUNKS: [usize; 3] = [1, 3, 17];

/// The model every case asks for.
const MODEL: &str = "scenario-model";

/// How long one case may take before it counts as hung.
const CASE_LIMIT: Duration = Duration::from_secs(60);

// The table: each name is a test, and a function of `scenario` run for every dialect and
// chunk size.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                run_cases(stringify!($name), scenario::$name).await;
            }
        )*
    };
}

scenarios! {
    plain_text,
    reasoning_text,
    parallel_tool_calls,
    conversation_round_trip,
    structured_output,
    usage_with_cached_and_reasoning_tokens,
    stream_without_finish_reason,
    ping_and_in_band_error,
    dropped_connection,
    rate_limited_with_retry_after,
    overloaded_503_and_529,
    auth_error_hides_the_key,
    context_too_long,
    idle_stall,
    too_large,
    malformed_sse,
    body_not_sse,
    keep_raw,
}

/// One dialect at one chunk size, with its own fake provider.
struct Case {
    dialect: Dialect,
    fake: FakeProvider,
}

/// What one call gave: its events, and the error that ended it, if one did.
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<ModelError>,
}

impl Case {
    fn config(&self) -> ProviderConfig {
        self.fake.config(self.dialect, MODEL)
    }

    fn model(&self, config: &ProviderConfig) -> Arc<dyn ChatModel> {
        flowbot_llm::connect(config).unwrap()
    }

    /// Stream `request` with the fake's config to its end.
    async fn call(&self, request: &ChatRequest) -> Outcome {
        self.call_with(&self.config(), request).await
    }

    /// Stream `request` with `config` to its end.
    async fn call_with(&self, config: &ProviderConfig, request: &ChatRequest) -> Outcome {
        let model = self.model(config);
        assert_eq!(model.name(), config.name());
        let (events, error) = run(&*model, request).await;
        Outcome { events, error }
    }

    /// The only request the fake received.
    fn request(&self) -> Value {
        let requests = self.fake.requests();
        assert_eq!(requests.len(), 1, "requests: {requests:?}");
        let r = &requests[0];
        assert_eq!(r.dialect, self.dialect);
        assert_eq!(r.path, path(self.dialect));
        assert_eq!(r.model, MODEL);
        let key = match self.dialect {
            Dialect::Openai | Dialect::OpenaiResponses => "authorization",
            Dialect::Anthropic => "x-api-key",
            _ => "x-goog-api-key",
        };
        assert_eq!(r.headers.get(key).map(String::as_str), Some("[redacted]"));
        if self.dialect == Dialect::Gemini {
            assert_eq!(r.query, [("alt".to_owned(), "sse".to_owned())]);
        }
        r.body.clone()
    }
}

impl Outcome {
    /// What the events add up to.
    fn completion(&self) -> Completion {
        completion(&self.events)
    }

    /// The answer of a call that must have succeeded.
    fn ok(&self) -> Completion {
        if let Some(e) = &self.error {
            panic!("the call failed: {e} ({e:?})");
        }
        self.completion()
    }

    /// The error of a call that must have failed.
    fn err(&self) -> &ModelError {
        match &self.error {
            Some(e) => e,
            None => panic!("the call succeeded: {:?}", self.events),
        }
    }

    fn texts(&self) -> Vec<&str> {
        deltas(&self.events)
    }

    fn raws(&self) -> Vec<(Option<&str>, &str)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Raw { event, data } => Some((event.as_deref(), data.as_str())),
                _ => None,
            })
            .collect()
    }

    fn finished(&self) -> bool {
        finished(&self.events)
    }
}

/// Run `check` for every dialect and chunk size, concurrently; fail with every case that
/// failed, each named.
async fn run_cases<F, Fut>(scenario: &str, check: F)
where
    F: Fn(Case) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut cases = Vec::new();
    for dialect in DIALECTS {
        for chunk in CHUNKS {
            let fake = FakeProvider::start().await.unwrap();
            fake.chunked(chunk);
            let label = format!("{scenario} / {} / chunk {chunk}", dialect.as_str());
            let task = tokio::spawn(tokio::time::timeout(
                CASE_LIMIT,
                check(Case { dialect, fake }),
            ));
            cases.push((label, task));
        }
    }
    let total = cases.len();
    let mut failures = Vec::new();
    for (label, task) in cases {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => failures.push(format!("{label}: still running after {CASE_LIMIT:?}")),
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                failures.push(format!("{label}: {message}"));
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The route each dialect posts to.
fn path(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Openai => "/v1/chat/completions",
        Dialect::OpenaiResponses => "/v1/responses",
        Dialect::Anthropic => "/v1/messages",
        _ => "/v1beta/models/scenario-model:streamGenerateContent",
    }
}

/// The provider's own word for `reason`, as each fake (and API) writes it. Responses says
/// `completed` for a normal end, with or without tool calls; Gemini says `STOP` after tool
/// calls too.
fn finish_raw(dialect: Dialect, reason: &FinishReason) -> &'static str {
    match (dialect, reason) {
        (Dialect::Openai, FinishReason::Stop) => "stop",
        (Dialect::Openai, FinishReason::ToolCalls) => "tool_calls",
        (Dialect::OpenaiResponses, _) => "completed",
        (Dialect::Anthropic, FinishReason::Stop) => "end_turn",
        (Dialect::Anthropic, FinishReason::ToolCalls) => "tool_use",
        (Dialect::Gemini, _) => "STOP",
        other => panic!("no finish word for {other:?}"),
    }
}

/// Check the shape of the response id each fake makes: Chat `chatcmpl-fake<n>`, Responses
/// `resp_fake<n>`, Anthropic `msg_` and 24 letters or digits, Gemini 20 letters or digits.
fn check_id(dialect: Dialect, id: Option<&str>) {
    let id = id.unwrap_or_else(|| panic!("no response id"));
    let alnum = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_alphanumeric());
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let ok = match dialect {
        Dialect::Openai => id.strip_prefix("chatcmpl-fake").is_some_and(digits),
        Dialect::OpenaiResponses => id.strip_prefix("resp_fake").is_some_and(digits),
        Dialect::Anthropic => id.strip_prefix("msg_").is_some_and(|s| alnum(s, 24)),
        _ => alnum(id, 20),
    };
    assert!(ok, "response id '{id}'");
}

/// The usage each dialect reports for a reply whose script says `u` (input, output, and
/// whatever cache and reasoning counts it has):
///
/// - Chat and Responses report a total (input + output) and always send the cached and
///   reasoning counts in their `*_details` objects, 0 when there were none; they have no
///   count of cache writes.
/// - Anthropic reports no total; `message_delta` always carries `cache_read_input_tokens`
///   and `cache_creation_input_tokens` (0 when none), and a thinking count only when there
///   was one.
/// - Gemini's `totalTokenCount` adds the thoughts to input and output; it sends
///   `cachedContentTokenCount` and `thoughtsTokenCount` only when there are some, and has no
///   count of cache writes.
fn expected_usage(dialect: Dialect, u: &Usage) -> Usage {
    let sum = u.input_tokens + u.output_tokens;
    match dialect {
        Dialect::Openai | Dialect::OpenaiResponses => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: Some(sum),
            cached_input_tokens: Some(u.cached_input_tokens.unwrap_or(0)),
            cache_creation_input_tokens: None,
            reasoning_tokens: Some(u.reasoning_tokens.unwrap_or(0)),
        },
        Dialect::Anthropic => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: None,
            cached_input_tokens: Some(u.cached_input_tokens.unwrap_or(0)),
            cache_creation_input_tokens: Some(u.cache_creation_input_tokens.unwrap_or(0)),
            reasoning_tokens: u.reasoning_tokens,
        },
        _ => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: Some(sum + u.reasoning_tokens.unwrap_or(0)),
            cached_input_tokens: u.cached_input_tokens,
            cache_creation_input_tokens: None,
            reasoning_tokens: u.reasoning_tokens,
        },
    }
}

fn tool(name: &str, properties: Value) -> ToolSpec {
    let mut parameters = json!({"type": "object"});
    parameters["properties"] = properties;
    ToolSpec {
        name: name.into(),
        description: format!("the {name} tool"),
        parameters,
    }
}

/// The text of the first user message as the fake received it, in the dialect's shape.
fn first_user_text(dialect: Dialect, body: &Value) -> Option<&str> {
    let at = match dialect {
        Dialect::Openai => "/messages/0/content",
        Dialect::OpenaiResponses => "/input/0/content",
        Dialect::Anthropic => "/messages/0/content/0/text",
        _ => "/contents/0/parts/0/text",
    };
    body.pointer(at).and_then(Value::as_str)
}

/// Whether `value` matches `schema`, for the keywords the structured-output scenario uses
/// (`type`, `properties`, `required`, `additionalProperties: false`, `items`).
fn conforms(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            other => return Err(format!("{at}: unknown type '{other}' in the schema")),
        };
        if !ok {
            return Err(format!("{at}: {value} is not of type {t}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                return Err(format!("{at}: the required property '{name}' is missing"));
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => conforms(s, v, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: the property '{name}' is not allowed"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            conforms(items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Multi-byte text: accents, CJK, an emoji with a skin tone, a ZWJ family, a flag, and
/// combining marks (e + U+0301, n + U+0303, o + U+0308).
const TEXT: &str = "Héllo, 世界! 👋🏽 Family: 👩‍👩‍👧 🇨🇭 — cafe\u{301}, man\u{303}ana, Ko\u{308}ln ✓";

/// The scenarios, one function each; `run` calls each for every dialect and chunk size.
mod scenario {
    use super::*;

    /// Multi-byte text streams in the fake's deltas, unchanged, and ends normally.
    pub(super) async fn plain_text(c: Case) {
        let d = c.dialect;
        let mut reply = Reply::text(TEXT);
        reply.delta_chars = 3;
        let usage = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let prompt = "Grüß dich — 你好 👋 e\u{301}";
        let out = c.call(&ask(prompt)).await;
        let got = out.ok();
        check_id(d, got.id.as_deref());
        assert_eq!(
            got,
            Completion {
                id: got.id.clone(),
                model: Some(MODEL.into()),
                text: TEXT.into(),
                reasoning: None,
                refusal: None,
                tool_calls: Vec::new(),
                finish: Some(FinishReason::Stop),
                finish_raw: Some(finish_raw(d, &FinishReason::Stop).into()),
                usage: Some(expected_usage(d, &usage)),
            }
        );
        // Each delta as the fake cut it: nothing held back, nothing re-cut.
        assert_eq!(out.texts(), pieces(TEXT, 3));
        assert!(matches!(out.events[0], StreamEvent::Started { .. }));
        assert!(matches!(
            out.events.last(),
            Some(StreamEvent::Finished { .. })
        ));
        assert!(out.raws().is_empty(), "Raw events without keep_raw");
        let body = c.request();
        assert_eq!(first_user_text(d, &body), Some(prompt));
    }

    /// Reasoning text comes apart from the answer, and before it.
    pub(super) async fn reasoning_text(c: Case) {
        let d = c.dialect;
        let thinking = "First, 考える 🤔: the user greets — answer in kind (naïve ok).";
        let answer = "Bonjour ! 你好!";
        let mut reply = Reply::text(answer);
        reply.reasoning = Some(thinking.into());
        reply.delta_chars = 2;
        let usage = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let out = c.call(&ask("Salut")).await;
        let got = out.ok();
        assert_eq!(
            got,
            Completion {
                id: got.id.clone(),
                model: Some(MODEL.into()),
                text: answer.into(),
                reasoning: Some(thinking.into()),
                refusal: None,
                tool_calls: Vec::new(),
                finish: Some(FinishReason::Stop),
                finish_raw: Some(finish_raw(d, &FinishReason::Stop).into()),
                usage: Some(expected_usage(d, &usage)),
            }
        );
        let reasoning: Vec<&str> = out
            .events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ReasoningDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reasoning, pieces(thinking, 2));
        let last_reasoning = out
            .events
            .iter()
            .rposition(|e| matches!(e, StreamEvent::ReasoningDelta { .. }));
        let first_text = out
            .events
            .iter()
            .position(|e| matches!(e, StreamEvent::TextDelta { .. }));
        assert!(last_reasoning < first_text, "{:?}", out.events);
    }

    /// Two calls in one answer, their non-ASCII arguments sent one character per fragment:
    /// every fragment is passed on as it came, and each call completes whole.
    pub(super) async fn parallel_tool_calls(c: Case) {
        let d = c.dialect;
        let weather = json!({"city": "東京", "note": "naïve \"café\" 🌧️ e\u{301}\\"});
        let convert = json!({"from": "°C", "to": "°F", "label": "Zürich ✓"});
        let mut reply = Reply::calls([("weather", weather.clone()), ("convert", convert.clone())]);
        reply.delta_chars = 1;
        let usage = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let request = ask("Weather in Tokyo, in °F?").with_tools(vec![
            tool("weather", json!({"city": {"type": "string"}})),
            tool("convert", json!({"from": {"type": "string"}})),
        ]);
        let out = c.call(&request).await;
        let got = out.ok();
        // Gemini gives calls no id: the decoder makes `call_<n>_<responseId>`; the others
        // pass the fake's ids on.
        let id = |n: usize| match d {
            Dialect::Gemini => format!("call_{n}_{}", got.id.as_deref().unwrap_or_default()),
            _ => format!("call_{n}"),
        };
        let calls = [("weather", &weather), ("convert", &convert)];
        assert_eq!(
            got,
            Completion {
                id: got.id.clone(),
                model: Some(MODEL.into()),
                text: String::new(),
                reasoning: None,
                refusal: None,
                tool_calls: calls
                    .iter()
                    .enumerate()
                    .map(|(i, (name, args))| ToolCall {
                        id: id(i + 1),
                        name: (*name).into(),
                        arguments: args.to_string(),
                    })
                    .collect(),
                finish: Some(FinishReason::ToolCalls),
                finish_raw: Some(finish_raw(d, &FinishReason::ToolCalls).into()),
                usage: Some(expected_usage(d, &usage)),
            }
        );
        for (i, (_, args)) in calls.iter().enumerate() {
            let of_call: Vec<&StreamEvent> = out
                .events
                .iter()
                .filter(|e| match e {
                    StreamEvent::ToolCallStarted { index, .. }
                    | StreamEvent::ToolCallDelta { index, .. }
                    | StreamEvent::ToolCallFinished { index, .. } => *index == i,
                    _ => false,
                })
                .collect();
            assert!(
                matches!(of_call.first(), Some(StreamEvent::ToolCallStarted { .. })),
                "call {i}: {of_call:?}"
            );
            assert!(
                matches!(of_call.last(), Some(StreamEvent::ToolCallFinished { .. })),
                "call {i}: {of_call:?}"
            );
            let fragments: Vec<&str> = of_call
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
                    _ => None,
                })
                .collect();
            // Gemini sends each call whole, in one part; the others in the fake's
            // one-character fragments, which must come out one by one.
            let want = match d {
                Dialect::Gemini => vec![args.to_string()],
                _ => pieces(&args.to_string(), 1),
            };
            assert_eq!(fragments, want, "call {i}");
        }
        let body = c.request();
        let names: Vec<&str> = match d {
            Dialect::Openai => body["tools"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
                .collect(),
            Dialect::Gemini => body["tools"][0]["functionDeclarations"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["name"].as_str())
                .collect(),
            _ => body["tools"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["name"].as_str())
                .collect(),
        };
        assert_eq!(names, ["weather", "convert"]);
    }

    /// A whole conversation (system, user, the assistant's text and two tool calls, their
    /// results, one of them an error, the user again) goes out in the dialect's shape and
    /// passes the fake's checks, which are the API's.
    pub(super) async fn conversation_round_trip(c: Case) {
        let d = c.dialect;
        const SYSTEM: &str = "You are FlowBot. Réponds brièvement; 简短.";
        const USER_1: &str = "Weather in 東京, and 21 °C in °F?";
        const ASSISTANT: &str = "Let me check… ☂️";
        const RESULT_A: &str = r#"{"temp_c":21,"sky":"☀️"}"#;
        const RESULT_B: &str = "unknown unit: °F → K?";
        const USER_2: &str = "Merci ! Et demain ?";
        let args_a = json!({"city": "東京", "units": "metric"});
        let args_b = json!({"from": "°C", "value": 21});
        let messages = vec![
            ChatMessage::system(SYSTEM),
            ChatMessage::user(USER_1),
            ChatMessage::Assistant {
                content: ASSISTANT.into(),
                tool_calls: vec![
                    ToolCall {
                        id: "call_a".into(),
                        name: "weather".into(),
                        arguments: args_a.to_string(),
                    },
                    ToolCall {
                        id: "call_b".into(),
                        name: "convert".into(),
                        arguments: args_b.to_string(),
                    },
                ],
            },
            ChatMessage::Tool(ToolResult {
                call_id: "call_a".into(),
                name: "weather".into(),
                content: RESULT_A.into(),
                is_error: false,
            }),
            ChatMessage::Tool(ToolResult {
                call_id: "call_b".into(),
                name: "convert".into(),
                content: RESULT_B.into(),
                is_error: true,
            }),
            ChatMessage::user(USER_2),
        ];
        let request = ChatRequest::new(messages).with_tools(vec![
            tool("weather", json!({"city": {"type": "string"}})),
            tool("convert", json!({"from": {"type": "string"}})),
        ]);
        let answer = "Demain : 23 °C, ☀️.";
        let reply = Reply::text(answer);
        let usage = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let out = c.call(&request).await;
        let got = out.ok();
        assert_eq!(
            got,
            Completion {
                id: got.id.clone(),
                model: Some(MODEL.into()),
                text: answer.into(),
                reasoning: None,
                refusal: None,
                tool_calls: Vec::new(),
                finish: Some(FinishReason::Stop),
                finish_raw: Some(finish_raw(d, &FinishReason::Stop).into()),
                usage: Some(expected_usage(d, &usage)),
            }
        );
        let body = c.request();
        // Chat and Responses have no error flag on a tool result: the failed one is marked
        // in its text. Anthropic has `is_error`; Gemini puts it under `error`.
        let failed = format!("error: {RESULT_B}");
        match d {
            Dialect::Openai => assert_eq!(
                body["messages"],
                json!([
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": USER_1},
                    {"role": "assistant", "content": ASSISTANT, "tool_calls": [
                        {"id": "call_a", "type": "function",
                         "function": {"name": "weather", "arguments": args_a.to_string()}},
                        {"id": "call_b", "type": "function",
                         "function": {"name": "convert", "arguments": args_b.to_string()}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_a", "content": RESULT_A},
                    {"role": "tool", "tool_call_id": "call_b", "content": failed},
                    {"role": "user", "content": USER_2},
                ])
            ),
            Dialect::OpenaiResponses => {
                assert_eq!(body["instructions"], SYSTEM);
                assert_eq!(
                    body["input"],
                    json!([
                        {"type": "message", "role": "user", "content": USER_1},
                        {"type": "message", "role": "assistant", "content": ASSISTANT},
                        {"type": "function_call", "call_id": "call_a", "name": "weather",
                         "arguments": args_a.to_string()},
                        {"type": "function_call", "call_id": "call_b", "name": "convert",
                         "arguments": args_b.to_string()},
                        {"type": "function_call_output", "call_id": "call_a", "output": RESULT_A},
                        {"type": "function_call_output", "call_id": "call_b", "output": failed},
                        {"type": "message", "role": "user", "content": USER_2},
                    ])
                );
            }
            Dialect::Anthropic => {
                assert_eq!(body["system"], SYSTEM);
                assert_eq!(
                    body["messages"],
                    json!([
                        {"role": "user", "content": [{"type": "text", "text": USER_1}]},
                        {"role": "assistant", "content": [
                            {"type": "text", "text": ASSISTANT},
                            {"type": "tool_use", "id": "call_a", "name": "weather", "input": args_a},
                            {"type": "tool_use", "id": "call_b", "name": "convert", "input": args_b},
                        ]},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": "call_a", "content": RESULT_A,
                             "is_error": false},
                            {"type": "tool_result", "tool_use_id": "call_b", "content": RESULT_B,
                             "is_error": true},
                            {"type": "text", "text": USER_2},
                        ]},
                    ])
                );
            }
            _ => {
                assert_eq!(
                    body["systemInstruction"],
                    json!({"parts": [{"text": SYSTEM}]})
                );
                assert_eq!(
                    body["contents"],
                    json!([
                        {"role": "user", "parts": [{"text": USER_1}]},
                        {"role": "model", "parts": [
                            {"text": ASSISTANT},
                            {"functionCall": {"name": "weather", "args": args_a, "id": "call_a"}},
                            {"functionCall": {"name": "convert", "args": args_b, "id": "call_b"}},
                        ]},
                        {"role": "user", "parts": [
                            {"functionResponse": {"name": "weather",
                             "response": {"temp_c": 21, "sky": "☀️"}, "id": "call_a"}},
                            {"functionResponse": {"name": "convert",
                             "response": {"error": RESULT_B}, "id": "call_b"}},
                            {"text": USER_2},
                        ]},
                    ])
                );
            }
        }
    }

    /// An answer constrained to a JSON Schema: the schema goes out in the dialect's shape,
    /// and the answer's text parses and matches it.
    pub(super) async fn structured_output(c: Case) {
        let d = c.dialect;
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "temp_c": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["city", "temp_c", "tags"],
            "additionalProperties": false,
        });
        let value =
            json!({"city": "Zürich", "temp_c": 21.5, "tags": ["☀️", "晴れ", "e\u{301}t\u{e9}"]});
        // Anthropic answers through the forced `final_answer` tool; the others in text.
        let mut reply = match d {
            Dialect::Anthropic => Reply::calls([("final_answer", value.clone())]),
            _ => Reply::text(value.to_string()),
        };
        reply.delta_chars = 2;
        let usage = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let out = c
            .call(&ask("Weather in Zürich?").with_output_schema("weather", schema.clone()))
            .await;
        let got = out.ok();
        let answer: Value = serde_json::from_str(&got.text)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {}", got.text));
        assert_eq!(answer, value);
        conforms(&schema, &answer, "answer").unwrap();
        // Anthropic's answer tool is no tool call: the finish is Stop, in its word tool_use.
        let raw = match d {
            Dialect::Anthropic => "tool_use",
            _ => finish_raw(d, &FinishReason::Stop),
        };
        assert_eq!(
            got,
            Completion {
                id: got.id.clone(),
                model: Some(MODEL.into()),
                text: got.text.clone(),
                reasoning: None,
                refusal: None,
                tool_calls: Vec::new(),
                finish: Some(FinishReason::Stop),
                finish_raw: Some(raw.into()),
                usage: Some(expected_usage(d, &usage)),
            }
        );
        let body = c.request();
        match d {
            Dialect::Openai => assert_eq!(
                body["response_format"],
                json!({"type": "json_schema",
                       "json_schema": {"name": "weather", "schema": schema, "strict": true}})
            ),
            Dialect::OpenaiResponses => assert_eq!(
                body["text"]["format"],
                json!({"type": "json_schema", "name": "weather", "schema": schema, "strict": true})
            ),
            Dialect::Anthropic => {
                assert_eq!(body["tools"][0]["name"], "final_answer");
                assert_eq!(body["tools"][0]["input_schema"], schema);
                assert_eq!(
                    body["tool_choice"],
                    json!({"type": "tool", "name": "final_answer"})
                );
            }
            _ => assert_eq!(
                body["generationConfig"],
                json!({"responseMimeType": "application/json", "responseJsonSchema": schema})
            ),
        }
    }

    /// Cached and reasoning tokens reach the answer's usage where the dialect reports them
    /// (see `expected_usage`: Chat and Responses report cached and reasoning tokens and a
    /// total, no cache writes; Anthropic cache reads and writes and its thinking count, no
    /// total; Gemini cached and thought tokens, with the thoughts in its total).
    pub(super) async fn usage_with_cached_and_reasoning_tokens(c: Case) {
        let d = c.dialect;
        let mut reply = Reply::text("Counted, 数えた.");
        reply.reasoning = Some("Sum the cache…".into());
        reply.usage = Usage {
            input_tokens: 1200,
            output_tokens: 300,
            total_tokens: None,
            cached_input_tokens: Some(1024),
            cache_creation_input_tokens: Some(64),
            reasoning_tokens: Some(128),
        };
        let script = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let got = c.call(&ask("Count")).await.ok();
        let want = expected_usage(d, &script);
        assert_eq!(got.usage, Some(want));
        // Spelled out, so that `expected_usage` cannot hide a mistake.
        let (total, cached, written, reasoning) = match d {
            Dialect::Openai | Dialect::OpenaiResponses => (Some(1500), Some(1024), None, Some(128)),
            Dialect::Anthropic => (None, Some(1024), Some(64), Some(128)),
            _ => (Some(1628), Some(1024), None, Some(128)),
        };
        assert_eq!(
            want,
            Usage {
                input_tokens: 1200,
                output_tokens: 300,
                total_tokens: total,
                cached_input_tokens: cached,
                cache_creation_input_tokens: written,
                reasoning_tokens: reasoning,
            }
        );
    }

    /// A stream that ends without a finish reason. Chat's fake still ends at `[DONE]`: the
    /// answer is whole, with no `Finished`. Responses and Anthropic must fail with
    /// `Connection`: their terminal event (`response.completed`, `message_stop`) never came,
    /// so the answer may be cut. Gemini has no terminal event: the end of its body is the
    /// answer's end.
    pub(super) async fn stream_without_finish_reason(c: Case) {
        let d = c.dialect;
        let text = "Half an answer… 半分";
        let mut reply = Reply::text(text);
        reply.finish = None;
        let usage = reply.usage;
        c.fake.push(Turn::Reply(reply));
        let out = c.call(&ask("Hi")).await;
        assert_eq!(out.texts().concat(), text);
        assert!(!out.finished(), "{:?}", out.events);
        match d {
            Dialect::Openai | Dialect::Gemini => {
                let got = out.ok();
                assert_eq!(
                    got,
                    Completion {
                        id: got.id.clone(),
                        model: Some(MODEL.into()),
                        text: text.into(),
                        reasoning: None,
                        refusal: None,
                        tool_calls: Vec::new(),
                        finish: None,
                        finish_raw: None,
                        usage: Some(expected_usage(d, &usage)),
                    }
                );
            }
            _ => {
                let e = out.err();
                assert_eq!(e.kind, ModelErrorKind::Connection, "{e}");
                assert_eq!(e.status, None);
                let message = match d {
                    Dialect::OpenaiResponses => {
                        "the answer ended before response.completed (or another terminal event)"
                    }
                    _ => "the answer ended before message_stop",
                };
                assert_eq!(e.message, message);
            }
        }
    }

    /// A keep-alive before the content (Anthropic's `ping` event, an SSE comment elsewhere)
    /// is passed over, and an in-band `overloaded_error` after the content fails the stream
    /// as `Overloaded`, in each dialect's form: Anthropic's `error` event, a Chat
    /// `{"error": …}` chunk, a Responses `error` event, a Gemini chunk with `error.status`
    /// `UNAVAILABLE`.
    pub(super) async fn ping_and_in_band_error(c: Case) {
        let d = c.dialect;
        let text = "Partial 部分 answer";
        let mut reply = Reply::text(text);
        reply.ping = true;
        reply.error_event = Some(("overloaded_error".into(), "Overloaded".into()));
        c.fake.push(Turn::Reply(reply));
        let mut request = ask("Hi");
        request.keep_raw = true;
        let out = c.call(&request).await;
        let e = out.err();
        assert_eq!(e.kind, ModelErrorKind::Overloaded, "{e}");
        assert_eq!(e.status, None);
        assert_eq!(e.model, c.config().name());
        let message = match d {
            Dialect::Openai | Dialect::OpenaiResponses => "Overloaded (overloaded_error)",
            Dialect::Anthropic => "error event: overloaded_error: Overloaded",
            _ => "error in the answer: UNAVAILABLE: Overloaded",
        };
        assert_eq!(e.message, message);
        // Everything before the error arrived.
        assert_eq!(out.texts().concat(), text);
        assert!(!out.finished());
        let pings = out
            .raws()
            .iter()
            .filter(|(name, _)| *name == Some("ping"))
            .count();
        assert_eq!(pings, usize::from(d == Dialect::Anthropic));
    }

    /// The connection drops in the middle of the answer: `Connection`, after the text that
    /// did arrive.
    pub(super) async fn dropped_connection(c: Case) {
        let text = "word ".repeat(200);
        c.fake.push(Turn::Drop {
            reply: Reply::text(text.clone()),
            after_bytes: 2500,
        });
        let out = c.call(&ask("Hi")).await;
        let e = out.err();
        assert_eq!(e.kind, ModelErrorKind::Connection, "{e}");
        assert_eq!(e.status, None);
        assert!(
            e.message.starts_with("reading the answer: body error: "),
            "{}",
            e.message
        );
        assert!(matches!(out.events[0], StreamEvent::Started { .. }));
        let got = out.texts().concat();
        assert!(
            !got.is_empty() && got.len() < text.len() && text.starts_with(&got),
            "{got:?}"
        );
        assert!(!out.finished());
    }

    /// 429 with `Retry-After`: `RateLimited`, with the wait and the provider's words.
    pub(super) async fn rate_limited_with_retry_after(c: Case) {
        let message = "Rate limit reached for requests: 3 per minute. Réessayez.";
        c.fake.push(Turn::Status {
            status: 429,
            message: message.into(),
            retry_after: Some("7".into()),
        });
        let out = c.call(&ask("Hi")).await;
        let e = out.err();
        assert_eq!(e.kind, ModelErrorKind::RateLimited, "{e}");
        assert_eq!(e.status, Some(429));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(e.message, message);
        assert!(e.is_transient());
        assert!(out.events.is_empty());
        // Tried once: retrying is the chain's decision, not the provider's.
        c.request();
    }

    /// 503 and Anthropic's 529: `Overloaded`, whatever the dialect.
    pub(super) async fn overloaded_503_and_529(c: Case) {
        for status in [503, 529] {
            let message = format!("The server is overloaded ({status}).");
            c.fake.push(Turn::Status {
                status,
                message: message.clone(),
                retry_after: None,
            });
            let e = c.call(&ask("Hi")).await.err().clone();
            assert_eq!(e.kind, ModelErrorKind::Overloaded, "HTTP {status}: {e}");
            assert_eq!(e.status, Some(status));
            assert_eq!(e.message, message);
            assert_eq!(e.retry_after, None);
        }
        assert_eq!(c.fake.requests().len(), 2);
    }

    /// 401: `Auth`, and the key appears nowhere: not in the error's Display or Debug, even
    /// when the provider's message quotes it, nor in the config's Debug.
    pub(super) async fn auth_error_hides_the_key(c: Case) {
        const KEY: &str = "sk-scenario-S3CRET-key-0123456789";
        // A key the fake does not know: its own 401.
        let wrong = c.config().api_key(KEY);
        let e = c.call_with(&wrong, &ask("Hi")).await.err().clone();
        assert_eq!(e.kind, ModelErrorKind::Auth, "{e}");
        assert_eq!(e.status, Some(401));
        assert_eq!(e.message, "invalid API key");
        assert!(!e.is_transient());
        // The right key, and a 401 whose message quotes it (as OpenAI's does).
        c.fake.expect_key(Some(KEY));
        c.fake.push(Turn::Status {
            status: 401,
            message: format!("Incorrect API key provided: {KEY}. Find yours in the console."),
            retry_after: None,
        });
        let quoted = c.call_with(&wrong, &ask("Hi")).await.err().clone();
        assert_eq!(quoted.kind, ModelErrorKind::Auth, "{quoted}");
        assert_eq!(quoted.status, Some(401));
        assert_eq!(
            quoted.message,
            "Incorrect API key provided: [redacted]. Find yours in the console."
        );
        for shown in [
            format!("{e}"),
            format!("{e:?}"),
            format!("{quoted}"),
            format!("{quoted:?}"),
            format!("{quoted:#?}"),
            format!("{wrong:?}"),
        ] {
            assert!(!shown.contains(KEY), "the key is shown: {shown}");
            assert!(
                !shown.contains("S3CRET"),
                "part of the key is shown: {shown}"
            );
        }
        // The fake records only the requests whose key it accepted.
        assert_eq!(c.fake.requests().len(), 1);
    }

    /// 400 "context too long", in each provider's own words: `ContextTooLong`.
    pub(super) async fn context_too_long(c: Case) {
        let message = match c.dialect {
            Dialect::Openai => {
                "This model's maximum context length is 128000 tokens. However, your messages \
                 resulted in 131072 tokens. Please reduce the length of the messages."
            }
            Dialect::OpenaiResponses => {
                "Your input exceeds the context window of this model. Please adjust your input \
                 and try again."
            }
            Dialect::Anthropic => "prompt is too long: 210000 tokens > 200000 maximum",
            _ => {
                "The input token count (1200000) exceeds the maximum number of tokens allowed \
                 (1048576)."
            }
        };
        c.fake.push(Turn::Status {
            status: 400,
            message: message.into(),
            retry_after: None,
        });
        let e = c.call(&ask(&"long ".repeat(100))).await.err().clone();
        assert_eq!(e.kind, ModelErrorKind::ContextTooLong, "{e}");
        assert_eq!(e.status, Some(400));
        assert_eq!(e.message, message);
        assert!(!e.is_transient());
    }

    /// The answer falls silent past the idle timeout: `Timeout(Idle)`, after the text that
    /// came before the silence. The idle timeout is short (0.5 s) and the fake's pause long
    /// (10 minutes), so the call ends on the timeout, not on the fake.
    pub(super) async fn idle_stall(c: Case) {
        let text = "slow ".repeat(200);
        c.fake.push(Turn::Stall {
            reply: Reply::text(text.clone()),
            after_bytes: 2500,
            pause: Duration::from_secs(600),
        });
        let mut config = c.config();
        config.idle_timeout_secs = Some(0.5);
        config.first_token_timeout_secs = Some(20.0);
        let began = Instant::now();
        let out = c.call_with(&config, &ask("Hi")).await;
        let e = out.err();
        assert_eq!(e.kind, ModelErrorKind::Timeout(TimeoutKind::Idle), "{e}");
        assert_eq!(e.status, None);
        assert_eq!(e.message, "the answer stalled for 500ms");
        assert!(began.elapsed() >= Duration::from_millis(500));
        assert!(matches!(out.events[0], StreamEvent::Started { .. }));
        let got = out.texts().concat();
        assert!(
            !got.is_empty() && got.len() < text.len() && text.starts_with(&got),
            "{got:?}"
        );
        assert!(!out.finished());
    }

    /// An answer longer than `max_response_bytes`: `TooLarge`, naming the limit. (The body
    /// is about 20 KB in every dialect, several times the limit, and small enough that the
    /// fake writes it quickly one byte at a time.)
    pub(super) async fn too_large(c: Case) {
        let text = "big ".repeat(300);
        c.fake.push(Turn::Reply(Reply::text(text.clone())));
        let mut config = c.config();
        config.max_response_bytes = Some(2048);
        let out = c.call_with(&config, &ask("Hi")).await;
        let e = out.err();
        assert_eq!(e.kind, ModelErrorKind::TooLarge, "{e}");
        assert_eq!(e.status, None);
        assert_eq!(
            e.message,
            "reading the answer: body error: the answer is over 2048 bytes"
        );
        assert!(text.starts_with(&out.texts().concat()));
        assert!(!out.finished());
    }

    /// A body whose second event is broken JSON: `Protocol`, with the message naming the
    /// event (Chat its position, Responses and Anthropic its name, Gemini its position, as
    /// its events have no names), after the first event's content.
    pub(super) async fn malformed_sse(c: Case) {
        let (body, names, before) = match c.dialect {
            Dialect::Openai => (
                "data: {\"id\":\"chatcmpl-raw1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"scenario-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hé\"},\"finish_reason\":null}]}\n\n\
                 data: {\"id\": oops}\n\n\
                 data: [DONE]\n\n",
                "chat.completion.chunk 2",
                vec![
                    StreamEvent::Started {
                        id: "chatcmpl-raw1".into(),
                        model: MODEL.into(),
                    },
                    StreamEvent::TextDelta { text: "hé".into() },
                ],
            ),
            Dialect::OpenaiResponses => (
                "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_raw1\",\"object\":\"response\",\"model\":\"scenario-model\",\"status\":\"in_progress\",\"output\":[]}}\n\n\
                 event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\n",
                "response.output_text.delta",
                vec![StreamEvent::Started {
                    id: "resp_raw1".into(),
                    model: MODEL.into(),
                }],
            ),
            Dialect::Anthropic => (
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_raw1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"scenario-model\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
                 event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\n\n",
                "content_block_start",
                vec![
                    StreamEvent::Started {
                        id: "msg_raw1".into(),
                        model: MODEL.into(),
                    },
                    StreamEvent::Usage {
                        usage: Usage {
                            input_tokens: 3,
                            output_tokens: 1,
                            ..Usage::default()
                        },
                    },
                ],
            ),
            _ => (
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hé\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"scenario-model\",\"responseId\":\"raw1\"}\r\n\r\n\
                 data: {\"candidates\":[oops\r\n\r\n",
                "chunk 2",
                vec![
                    StreamEvent::Started {
                        id: "raw1".into(),
                        model: MODEL.into(),
                    },
                    StreamEvent::TextDelta { text: "hé".into() },
                ],
            ),
        };
        c.fake.push(Turn::Raw(body.into()));
        let out = c.call(&ask("Hi")).await;
        let e = out.err();
        assert_eq!(e.kind, ModelErrorKind::Protocol, "{e}");
        assert_eq!(e.status, None);
        assert!(
            e.message.contains(names),
            "the message does not name the event ({names}): {}",
            e.message
        );
        assert_eq!(out.events, before);
    }

    /// A 200 answer whose body is not an event stream at all (a proxy's HTML page, a whole
    /// JSON answer from a server that ignored `stream: true`): `Protocol`, since the answer
    /// is not what the dialect says. It is no dropped connection, and retrying it as one
    /// (`Connection` is transient) would only get the same page again.
    pub(super) async fn body_not_sse(c: Case) {
        let bodies = [
            "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>Bad Gateway</h1></body></html>\n",
            "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"model\":\"scenario-model\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n",
        ];
        for body in bodies {
            c.fake.push(Turn::Raw(body.into()));
            let out = c.call(&ask("Hi")).await;
            let e = out.err();
            assert_eq!(
                e.kind,
                ModelErrorKind::Protocol,
                "body {body:?}: {} ({e})",
                e.kind.as_str()
            );
            assert_eq!(e.status, None);
            assert!(!e.is_transient());
            assert!(out.events.is_empty(), "{:?}", out.events);
        }
    }

    /// `keep_raw`: every SSE event with data comes as a `Raw` event (its name, its data)
    /// before what it decodes to, and the answer is the same.
    pub(super) async fn keep_raw(c: Case) {
        let d = c.dialect;
        let text = "raw ✓ 生";
        c.fake.push(Turn::Reply(Reply::text(text)));
        let mut request = ask("Hi");
        request.keep_raw = true;
        let out = c.call(&request).await;
        let got = out.ok();
        assert_eq!(got.text, text);
        assert_eq!(got.finish, Some(FinishReason::Stop));
        assert!(matches!(out.events[0], StreamEvent::Raw { .. }));
        let raws = out.raws();
        let names: Vec<Option<&str>> = raws.iter().map(|(n, _)| *n).collect();
        // The fake's events for a text of 2 deltas (4 characters each).
        let deltas = pieces(text, 4).len();
        assert_eq!(deltas, 2);
        let want: Vec<Option<&str>> = match d {
            // The role chunk, 2 text chunks, the finish chunk, the usage chunk, [DONE].
            Dialect::Openai => vec![None; 6],
            Dialect::OpenaiResponses => [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
            .into_iter()
            .map(Some)
            .collect(),
            Dialect::Anthropic => [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
            .into_iter()
            .map(Some)
            .collect(),
            // One chunk per delta, no names.
            _ => vec![None; 2],
        };
        assert_eq!(names, want);
        for (name, data) in &raws {
            if *data == "[DONE]" {
                assert_eq!(d, Dialect::Openai);
                continue;
            }
            let v: Value = serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("Raw data is not the event's JSON ({e}): {data}"));
            if let Some(name) = name {
                assert_eq!(v["type"], *name, "{data}");
            }
        }
        if d == Dialect::Openai {
            assert_eq!(raws.last().map(|(_, data)| *data), Some("[DONE]"));
        }
    }
}
