//! Anthropic Messages against the fake provider, which speaks the Messages wire protocol on
//! 127.0.0.1 and writes every answer in random pieces of at most 3 bytes.

#![cfg(all(feature = "anthropic", feature = "test-util"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod support;

use std::time::Duration;

use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, Completion, FinishReason, ModelErrorKind, StreamEvent,
    TimeoutKind, ToolCall, ToolResult, ToolSpec, Usage,
};
use flowbot_llm::fake::{FAKE_KEY, Reply, Turn};
use flowbot_llm::{Anthropic, Dialect, ProviderConfig};
use serde_json::json;

use support::{ask, chunked_fake, deltas, finished, run, text_of, usages};

const MODEL: &str = "claude-test";

fn model(config: &ProviderConfig) -> Anthropic {
    Anthropic::new(config).unwrap()
}

#[tokio::test]
async fn text_streams_in_deltas_after_a_ping() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("Hello there, 世界! Ça va?");
    reply.ping = true;
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let (events, error) = run(&m, &ask("Hi")).await;
    assert!(error.is_none(), "{error:?}");
    let StreamEvent::Started { id, model } = &events[0] else {
        panic!("first event {:?}", events[0]);
    };
    assert!(id.starts_with("msg_") && id.len() == 28, "{id}");
    assert_eq!(model, MODEL);
    let deltas = deltas(&events);
    assert_eq!(deltas, ["Hell", "o th", "ere,", " 世界!", " Ça ", "va?"]);
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Finished {
            reason: FinishReason::Stop,
            raw: "end_turn".into()
        })
    );
    let usages = usages(&events);
    let last = Usage {
        input_tokens: 10,
        output_tokens: 6,
        total_tokens: None,
        cached_input_tokens: Some(0),
        cache_creation_input_tokens: Some(0),
        reasoning_tokens: None,
    };
    // The placeholder output count of message_start, then the total of message_delta.
    assert_eq!(
        usages,
        [
            Usage {
                output_tokens: 1,
                ..last
            },
            last
        ]
    );

    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.body,
        json!({
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "stream": true,
        })
    );
}

#[tokio::test]
async fn parallel_tool_calls_keep_non_ascii_arguments_whole() {
    let fake = chunked_fake().await;
    let mut reply = Reply::calls([
        (
            "weather",
            json!({"city": "東京", "note": "the \"naïve\" café\\"}),
        ),
        ("time", json!({"zone": "Europe/Zürich"})),
        ("ping", json!({})),
    ]);
    reply.delta_chars = 3;
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let tools = ["weather", "time", "ping"]
        .map(|n| ToolSpec {
            name: n.into(),
            description: format!("the {n} tool"),
            parameters: json!({"type": "object", "properties": {}}),
        })
        .to_vec();
    let request = ask("Weather and time in Tokyo?").with_tools(tools);
    let (events, error) = run(&m, &request).await;
    assert!(error.is_none(), "{error:?}");
    let started: Vec<(usize, &str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStarted { index, id, name } => {
                Some((*index, id.as_str(), name.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        [
            (0, "call_1", "weather"),
            (1, "call_2", "time"),
            (2, "call_3", "ping")
        ]
    );
    let deltas_of = |i: usize| -> String {
        events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallDelta { index, arguments } if *index == i => {
                    Some(arguments.as_str())
                }
                _ => None,
            })
            .collect()
    };
    let first = r#"{"city":"東京","note":"the \"naïve\" café\\"}"#;
    assert_eq!(deltas_of(0), first);
    let answer = Completion::collect(Box::pin(futures_util::stream::iter(
        events.clone().into_iter().map(Ok),
    )))
    .await
    .unwrap();
    assert_eq!(
        answer.tool_calls,
        [
            ToolCall {
                id: "call_1".into(),
                name: "weather".into(),
                arguments: first.into()
            },
            ToolCall {
                id: "call_2".into(),
                name: "time".into(),
                arguments: r#"{"zone":"Europe/Zürich"}"#.into()
            },
            ToolCall {
                id: "call_3".into(),
                name: "ping".into(),
                arguments: "{}".into()
            },
        ]
    );
    assert_eq!(
        answer.tool_calls[0].parsed_arguments().unwrap(),
        json!({"city": "東京", "note": "the \"naïve\" café\\"})
    );
    assert_eq!(answer.finish, Some(FinishReason::ToolCalls));
    assert_eq!(answer.finish_raw.as_deref(), Some("tool_use"));
    assert_eq!(answer.text, "");

    let sent = &fake.requests()[0].body;
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));
    assert_eq!(
        sent["tools"][0],
        json!({"name": "weather", "description": "the weather tool", "input_schema": {"type": "object", "properties": {}}})
    );
}

#[tokio::test]
async fn usage_counts_cached_and_thinking_tokens() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("42");
    reply.reasoning = Some("Six times seven.".into());
    reply.usage = Usage {
        input_tokens: 12,
        output_tokens: 57,
        total_tokens: None,
        cached_input_tokens: Some(3000),
        cache_creation_input_tokens: Some(250),
        reasoning_tokens: Some(40),
    };
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let answer = m.complete(&ask("6*7?")).await.unwrap();
    assert_eq!(answer.text, "42");
    assert_eq!(answer.reasoning.as_deref(), Some("Six times seven."));
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 12,
            output_tokens: 57,
            total_tokens: None,
            cached_input_tokens: Some(3000),
            cache_creation_input_tokens: Some(250),
            reasoning_tokens: Some(40),
        })
    );
}

#[tokio::test]
async fn an_in_band_error_event_fails_the_stream_after_the_text() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("Partial answer");
    reply.ping = true;
    reply.error_event = Some(("overloaded_error".into(), "Overloaded".into()));
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let (events, error) = run(&m, &ask("Hi")).await;
    assert_eq!(text_of(&events), "Partial answer");
    assert!(!finished(&events));
    let error = error.unwrap();
    assert_eq!(error.kind, ModelErrorKind::Overloaded);
    assert_eq!(error.model, "anthropic/claude-test");
    assert_eq!(error.message, "error event: overloaded_error: Overloaded");
    assert!(error.is_transient());
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let fake = chunked_fake().await;
    fake.push(Turn::Status {
        status: 429,
        message: "Number of request tokens has exceeded your per-minute rate limit".into(),
        retry_after: Some("7".into()),
    });
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::RateLimited);
    assert_eq!(e.status, Some(429));
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        e.message,
        "Number of request tokens has exceeded your per-minute rate limit"
    );
}

#[tokio::test]
async fn status_529_is_overload() {
    let fake = chunked_fake().await;
    fake.push(Turn::Status {
        status: 529,
        message: "Overloaded".into(),
        retry_after: None,
    });
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Overloaded, Some(529)));
}

#[tokio::test]
async fn a_refused_key_is_auth_and_never_shown() {
    const KEY: &str = "sk-ant-api03-very-secret-key";
    let fake = chunked_fake().await;
    fake.expect_key(Some(KEY));
    // A provider that repeats the key in its message: it must not get through.
    fake.push(Turn::Status {
        status: 401,
        message: format!("invalid x-api-key: {KEY}"),
        retry_after: None,
    });
    let config = fake.config(Dialect::Anthropic, MODEL);
    assert_eq!(config.api_key.as_deref(), Some(KEY));
    let m = model(&config);
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Auth, Some(401)));
    assert_eq!(e.message, "invalid x-api-key: [redacted]");
    for shown in [
        e.to_string(),
        format!("{e:?}"),
        format!("{m:?}"),
        format!("{config:?}"),
    ] {
        assert!(!shown.contains(KEY), "{shown}");
    }

    // The fake's own check of a wrong key.
    let wrong = fake
        .config(Dialect::Anthropic, MODEL)
        .api_key("sk-ant-wrong-one");
    let e = model(&wrong).complete(&ask("Hi")).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Auth);
    assert_eq!(e.message, "invalid API key");
    assert!(!format!("{e} {e:?}").contains("sk-ant-wrong-one"));
    assert_ne!(KEY, FAKE_KEY);
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_a_connection_error() {
    let fake = chunked_fake().await;
    fake.push(Turn::Drop {
        reply: Reply::text("word ".repeat(100)),
        after_bytes: 900,
    });
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let (events, error) = run(&m, &ask("Hi")).await;
    assert!(matches!(events[0], StreamEvent::Started { .. }));
    assert!(text_of(&events).starts_with("word word"));
    assert_eq!(error.unwrap().kind, ModelErrorKind::Connection);

    // A body that ends cleanly but before message_stop is as incomplete.
    fake.push(Turn::Raw(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"c\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
         event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"cut\"}}\n\n"
            .into(),
    ));
    let (events, error) = run(&m, &ask("Hi")).await;
    assert_eq!(text_of(&events), "cut");
    let error = error.unwrap();
    assert_eq!(error.kind, ModelErrorKind::Connection);
    assert_eq!(error.message, "the answer ended before message_stop");
}

#[tokio::test]
async fn a_stall_past_the_idle_timeout_is_an_idle_timeout() {
    let fake = chunked_fake().await;
    fake.push(Turn::Stall {
        reply: Reply::text("slow ".repeat(100)),
        after_bytes: 900,
        pause: Duration::from_secs(600),
    });
    let mut config = fake.config(Dialect::Anthropic, MODEL);
    config.idle_timeout_secs = Some(0.3);
    let (events, error) = run(&model(&config), &ask("Hi")).await;
    assert!(text_of(&events).starts_with("slow"));
    assert_eq!(
        error.unwrap().kind,
        ModelErrorKind::Timeout(TimeoutKind::Idle)
    );
}

#[tokio::test]
async fn an_answer_over_the_size_limit_is_too_large() {
    let fake = chunked_fake().await;
    fake.push(Turn::Reply(Reply::text("big ".repeat(500))));
    let mut config = fake.config(Dialect::Anthropic, MODEL);
    config.max_response_bytes = Some(2000);
    let e = model(&config).complete(&ask("Hi")).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::TooLarge);
    assert!(e.message.contains("2000 bytes"), "{}", e.message);
}

#[tokio::test]
async fn malformed_event_json_is_a_protocol_error() {
    let fake = chunked_fake().await;
    fake.push(Turn::Raw(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\n\n".into(),
    ));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Protocol);
    assert!(
        e.message.starts_with("event 'message_start' is not JSON"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn structured_output_comes_back_as_text_through_the_answer_tool() {
    let fake = chunked_fake().await;
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"],
    });
    let mut reply = Reply::calls([("final_answer", json!({"city": "Zürich", "temp_c": 21.5}))]);
    reply.delta_chars = 5;
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let request = ask("Weather?").with_output_schema("weather", schema.clone());
    let answer = m.complete(&request).await.unwrap();
    assert_eq!(answer.text, r#"{"city":"Zürich","temp_c":21.5}"#);
    assert!(answer.tool_calls.is_empty());
    assert_eq!(answer.finish, Some(FinishReason::Stop));
    assert_eq!(answer.finish_raw.as_deref(), Some("tool_use"));
    let sent = &fake.requests()[0].body;
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "final_answer"})
    );
    assert_eq!(sent["tools"][0]["name"], "final_answer");
    assert_eq!(sent["tools"][0]["input_schema"], schema);

    // A schema that is not an object travels wrapped and comes back unwrapped.
    fake.push(Turn::Reply(Reply::calls([(
        "final_answer",
        json!({"value": ["a", "ü"]}),
    )])));
    let list = ask("Two letters?").with_output_schema(
        "letters",
        json!({"type": "array", "items": {"type": "string"}}),
    );
    let answer = m.complete(&list).await.unwrap();
    assert_eq!(answer.text, r#"["a","ü"]"#);
    assert_eq!(
        fake.requests()[1].body["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {"value": {"type": "array", "items": {"type": "string"}}}, "required": ["value"]})
    );
}

#[tokio::test]
async fn a_conversation_with_tool_calls_and_results_round_trips() {
    let fake = chunked_fake().await;
    fake.push(Turn::Reply(Reply::calls([
        ("weather", json!({"city": "Köln"})),
        ("time", json!({})),
    ])));
    fake.push(Turn::Reply(Reply::text("It is 12 °C in Köln at noon.")));
    let m = model(&fake.config(Dialect::Anthropic, MODEL));
    let tools = vec![
        ToolSpec {
            name: "weather".into(),
            description: "Weather".into(),
            parameters: json!({"type": "object"}),
        },
        ToolSpec {
            name: "time".into(),
            description: "Time".into(),
            parameters: json!({"type": "object"}),
        },
    ];
    let mut messages = vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user("Weather and time in Köln?"),
    ];
    let first = m
        .complete(&ChatRequest::new(messages.clone()).with_tools(tools.clone()))
        .await
        .unwrap();
    assert_eq!(first.tool_calls.len(), 2);
    messages.push(ChatMessage::Assistant {
        content: first.text.clone(),
        tool_calls: first.tool_calls.clone(),
    });
    messages.push(ChatMessage::Tool(ToolResult {
        call_id: first.tool_calls[0].id.clone(),
        name: "weather".into(),
        content: r#"{"temp_c":12}"#.into(),
        is_error: false,
    }));
    messages.push(ChatMessage::Tool(ToolResult {
        call_id: first.tool_calls[1].id.clone(),
        name: "time".into(),
        content: "clock unavailable".into(),
        is_error: true,
    }));
    let mut request = ChatRequest::new(messages).with_tools(tools);
    request.temperature = Some(0.5);
    request.max_tokens = Some(300);
    let second = m.complete(&request).await.unwrap();
    assert_eq!(second.text, "It is 12 °C in Köln at noon.");
    let sent = &fake.requests()[1].body;
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather and time in Köln?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Köln"}},
                {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"temp_c\":12}", "is_error": false},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "clock unavailable", "is_error": true},
            ]},
        ])
    );

    // A result for a call the model never made is refused, as the API refuses it.
    let orphan = ChatRequest::new(vec![
        ChatMessage::user("x"),
        ChatMessage::Assistant {
            content: "Let me look.".into(),
            tool_calls: Vec::new(),
        },
        ChatMessage::Tool(ToolResult {
            call_id: "toolu_ghost".into(),
            name: "time".into(),
            content: "1".into(),
            is_error: false,
        }),
    ]);
    let e = m.complete(&orphan).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::BadRequest, Some(400)));
    assert!(e.message.contains("toolu_ghost"), "{}", e.message);
    assert_eq!(fake.pending(), 0);
}

#[tokio::test]
async fn a_configured_version_header_is_kept_and_a_model_is_required() {
    let fake = chunked_fake().await;
    fake.push(Turn::Reply(Reply::text("ok")));
    let mut config = fake.config(Dialect::Anthropic, MODEL);
    config
        .headers
        .insert("Anthropic-Version".into(), "2023-06-01".into());
    assert_eq!(
        model(&config).complete(&ask("Hi")).await.unwrap().text,
        "ok"
    );
    let e = Anthropic::new(&ProviderConfig::new(Dialect::Anthropic, " ")).unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Config);
    let e = flowbot_llm::connect_embedder(&fake.config(Dialect::Anthropic, MODEL))
        .err()
        .unwrap();
    assert_eq!(e.kind, ModelErrorKind::Config);
}
