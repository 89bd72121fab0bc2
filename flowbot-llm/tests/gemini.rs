//! Gemini against the fake provider, which speaks the Gemini wire protocol on 127.0.0.1
//! and writes every answer in random pieces of at most 3 bytes.

#![cfg(all(feature = "gemini", feature = "test-util"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod support;

use std::time::Duration;

use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, Embedder, FinishReason, ModelErrorKind, StreamEvent,
    TimeoutKind, ToolCall, ToolChoice, ToolResult, ToolSpec, Usage,
};
use flowbot_llm::fake::{Reply, Turn};
use flowbot_llm::{Dialect, Gemini, GeminiEmbedder, ProviderConfig};
use serde_json::{Value, json};

use support::{ask, chunked_fake, deltas, finished, run, text_of, usages};

const MODEL: &str = "gemini-test";

fn model(config: &ProviderConfig) -> Gemini {
    Gemini::new(config).unwrap()
}

fn tool(name: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: format!("the {name} tool"),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn text_streams_in_deltas_and_ends_with_the_body() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("Grüß Gott, 世界 – wie geht's?");
    reply.ping = true;
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Gemini, MODEL));
    let (events, error) = run(&m, &ask("Hi")).await;
    assert!(error.is_none(), "{error:?}");
    let StreamEvent::Started { id, model } = &events[0] else {
        panic!("first event {:?}", events[0]);
    };
    assert_eq!(id.len(), 20);
    assert_eq!(model, MODEL);
    let deltas = deltas(&events);
    assert_eq!(
        deltas,
        ["Grüß", " Got", "t, 世", "界 – ", "wie ", "geht", "'s?"]
    );
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Finished {
            reason: FinishReason::Stop,
            raw: "STOP".into()
        })
    );
    // Usage is cumulative on every chunk: a Usage event whenever it changes, the last whole.
    let usages = usages(&events);
    assert_eq!(
        usages.last(),
        Some(&Usage {
            input_tokens: 10,
            output_tokens: 7,
            total_tokens: Some(17),
            ..Usage::default()
        })
    );
    assert!(usages.len() > 1);

    let sent = &fake.requests()[0];
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-test:streamGenerateContent"
    );
    assert_eq!(sent.model, MODEL);
    assert_eq!(
        sent.body,
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    );
}

#[tokio::test]
async fn an_answer_without_a_finish_reason_has_none() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("unfinished");
    reply.finish = None;
    fake.push(Turn::Reply(reply));
    let answer = model(&fake.config(Dialect::Gemini, MODEL))
        .complete(&ask("Hi"))
        .await
        .unwrap();
    assert_eq!(answer.text, "unfinished");
    assert_eq!((answer.finish, answer.finish_raw), (None, None));
}

#[tokio::test]
async fn parallel_function_calls_keep_non_ascii_arguments_and_get_unique_ids() {
    let fake = chunked_fake().await;
    fake.push(Turn::Reply(Reply::calls([
        (
            "weather",
            json!({"city": "東京", "note": "the \"naïve\" café\\"}),
        ),
        ("weather", json!({"city": "Zürich"})),
    ])));
    let m = model(&fake.config(Dialect::Gemini, MODEL));
    let request = ask("Weather in Tokyo and Zürich?").with_tools(vec![tool("weather")]);
    let answer = m.complete(&request).await.unwrap();
    let id = answer.id.clone().unwrap();
    assert_eq!(
        answer.tool_calls,
        [
            ToolCall {
                id: format!("call_1_{id}"),
                name: "weather".into(),
                arguments: r#"{"city":"東京","note":"the \"naïve\" café\\"}"#.into(),
            },
            ToolCall {
                id: format!("call_2_{id}"),
                name: "weather".into(),
                arguments: r#"{"city":"Zürich"}"#.into()
            },
        ]
    );
    assert_eq!(answer.finish, Some(FinishReason::ToolCalls));
    assert_eq!(answer.finish_raw.as_deref(), Some("STOP"));

    // Another answer's calls get other ids.
    fake.push(Turn::Reply(Reply::calls([(
        "weather",
        json!({"city": "Oslo"}),
    )])));
    let again = m.complete(&request).await.unwrap();
    assert_ne!(again.tool_calls[0].id, answer.tool_calls[0].id);
    assert!(again.tool_calls[0].id.starts_with("call_1_"));

    let sent = &fake.requests()[0].body;
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{
            "name": "weather",
            "description": "the weather tool",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
}

#[tokio::test]
async fn usage_counts_cached_and_thought_tokens() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("42");
    reply.reasoning = Some("Six times seven is forty-two.".into());
    reply.usage = Usage {
        input_tokens: 5000,
        output_tokens: 12,
        total_tokens: None,
        cached_input_tokens: Some(4000),
        cache_creation_input_tokens: None,
        reasoning_tokens: Some(30),
    };
    fake.push(Turn::Reply(reply));
    let answer = model(&fake.config(Dialect::Gemini, MODEL))
        .complete(&ask("6*7?"))
        .await
        .unwrap();
    assert_eq!(answer.text, "42");
    assert_eq!(
        answer.reasoning.as_deref(),
        Some("Six times seven is forty-two.")
    );
    assert_eq!(
        answer.usage,
        Some(Usage {
            input_tokens: 5000,
            output_tokens: 12,
            total_tokens: Some(5042),
            cached_input_tokens: Some(4000),
            cache_creation_input_tokens: None,
            reasoning_tokens: Some(30),
        })
    );
}

#[tokio::test]
async fn an_error_chunk_fails_the_stream_after_the_text() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("Partial answer");
    reply.error_event = Some(("overloaded_error".into(), "The model is overloaded.".into()));
    fake.push(Turn::Reply(reply));
    let (events, error) = run(&model(&fake.config(Dialect::Gemini, MODEL)), &ask("Hi")).await;
    assert_eq!(text_of(&events), "Partial answer");
    let error = error.unwrap();
    assert_eq!(error.kind, ModelErrorKind::Overloaded);
    assert_eq!(
        error.message,
        "error in the answer: UNAVAILABLE: The model is overloaded."
    );
}

#[tokio::test]
async fn rate_limits_carry_retry_after_and_503_is_overload() {
    let fake = chunked_fake().await;
    fake.push(Turn::Status {
        status: 429,
        message: "Resource has been exhausted (e.g. check quota).".into(),
        retry_after: Some("12".into()),
    });
    fake.push(Turn::Status {
        status: 503,
        message: "The model is overloaded.".into(),
        retry_after: None,
    });
    let m = model(&fake.config(Dialect::Gemini, MODEL));
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::RateLimited, Some(429)));
    assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
    assert_eq!(e.message, "Resource has been exhausted (e.g. check quota).");
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Overloaded, Some(503)));
}

#[tokio::test]
async fn a_refused_key_is_auth_and_never_shown() {
    const KEY: &str = "AIzaSy-very-secret-gemini-key";
    let fake = chunked_fake().await;
    fake.expect_key(Some(KEY));
    fake.push(Turn::Status {
        status: 401,
        message: format!("API key {KEY} is not valid"),
        retry_after: None,
    });
    let config = fake.config(Dialect::Gemini, MODEL);
    let m = model(&config);
    let e = m.complete(&ask("Hi")).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Auth, Some(401)));
    assert_eq!(e.message, "API key [redacted] is not valid");
    for shown in [
        e.to_string(),
        format!("{e:?}"),
        format!("{m:?}"),
        format!("{config:?}"),
    ] {
        assert!(!shown.contains(KEY), "{shown}");
    }
    let wrong = fake.config(Dialect::Gemini, MODEL).api_key("AIza-wrong");
    let e = model(&wrong).complete(&ask("Hi")).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Auth);
    assert!(!format!("{e} {e:?}").contains("AIza-wrong"));
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_a_connection_error() {
    let fake = chunked_fake().await;
    fake.push(Turn::Drop {
        reply: Reply::text("word ".repeat(100)),
        after_bytes: 1200,
    });
    let (events, error) = run(&model(&fake.config(Dialect::Gemini, MODEL)), &ask("Hi")).await;
    assert!(text_of(&events).starts_with("word word"));
    assert!(!finished(&events));
    assert_eq!(error.unwrap().kind, ModelErrorKind::Connection);
}

#[tokio::test]
async fn a_stall_past_the_idle_timeout_is_an_idle_timeout() {
    let fake = chunked_fake().await;
    fake.push(Turn::Stall {
        reply: Reply::text("slow ".repeat(100)),
        after_bytes: 1200,
        pause: Duration::from_secs(600),
    });
    let mut config = fake.config(Dialect::Gemini, MODEL);
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
    let mut config = fake.config(Dialect::Gemini, MODEL);
    config.max_response_bytes = Some(2000);
    let e = model(&config).complete(&ask("Hi")).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::TooLarge);
}

#[tokio::test]
async fn malformed_chunk_json_is_a_protocol_error() {
    let fake = chunked_fake().await;
    fake.push(Turn::Raw(
        "data: {\"candidates\":[{\"content\":\r\n\r\n".into(),
    ));
    let e = model(&fake.config(Dialect::Gemini, MODEL))
        .complete(&ask("Hi"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Protocol);
    assert!(
        e.message.starts_with("chunk 1 is not JSON"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn structured_output_asks_for_json_against_the_schema() {
    let fake = chunked_fake().await;
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"],
        "additionalProperties": false,
    });
    fake.push(Turn::Reply(Reply::text(
        r#"{"city": "Zürich", "temp_c": 21.5}"#,
    )));
    let mut request = ask("Weather?").with_output_schema("weather", schema.clone());
    request.temperature = Some(0.2);
    request.max_tokens = Some(200);
    let answer = model(&fake.config(Dialect::Gemini, MODEL))
        .complete(&request)
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(parsed, json!({"city": "Zürich", "temp_c": 21.5}));
    assert_eq!(
        fake.requests()[0].body["generationConfig"],
        json!({
            "temperature": 0.2f32,
            "maxOutputTokens": 200,
            "responseMimeType": "application/json",
            "responseJsonSchema": schema,
        })
    );
}

#[tokio::test]
async fn a_conversation_with_function_calls_and_responses_round_trips() {
    let fake = chunked_fake().await;
    fake.push(Turn::Reply(Reply::calls([
        ("weather", json!({"city": "Köln"})),
        ("time", json!({})),
    ])));
    fake.push(Turn::Reply(Reply::text("It is 12 °C in Köln at noon.")));
    let m = model(&fake.config(Dialect::Gemini, MODEL));
    let tools = vec![tool("weather"), tool("time")];
    let mut messages = vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user("Weather and time in Köln?"),
    ];
    let mut first = ChatRequest::new(messages.clone()).with_tools(tools.clone());
    first.tool_choice = ToolChoice::Required;
    let first = m.complete(&first).await.unwrap();
    let calls = first.tool_calls.clone();
    assert_eq!(calls.len(), 2);
    messages.push(ChatMessage::Assistant {
        content: String::new(),
        tool_calls: calls.clone(),
    });
    messages.push(ChatMessage::Tool(ToolResult {
        call_id: calls[0].id.clone(),
        name: "weather".into(),
        content: r#"{"temp_c":12}"#.into(),
        is_error: false,
    }));
    messages.push(ChatMessage::Tool(ToolResult {
        call_id: calls[1].id.clone(),
        name: "time".into(),
        content: "clock unavailable".into(),
        is_error: true,
    }));
    let second = m
        .complete(&ChatRequest::new(messages).with_tools(tools))
        .await
        .unwrap();
    assert_eq!(second.text, "It is 12 °C in Köln at noon.");
    let requests = fake.requests();
    assert_eq!(
        requests[0].body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    let sent = &requests[1].body;
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather and time in Köln?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Köln"}, "id": calls[0].id}},
                {"functionCall": {"name": "time", "args": {}, "id": calls[1].id}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp_c": 12}, "id": calls[0].id}},
                {"functionResponse": {"name": "time", "response": {"error": "clock unavailable"}, "id": calls[1].id}},
            ]},
        ])
    );

    // A response to a function the model did not call is refused, as the API refuses it.
    let wrong = ChatRequest::new(vec![
        ChatMessage::user("x"),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![calls[0].clone()],
        },
        ChatMessage::Tool(ToolResult {
            call_id: calls[0].id.clone(),
            name: "time".into(),
            content: "1".into(),
            is_error: false,
        }),
    ]);
    let e = m.complete(&wrong).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::BadRequest, Some(400)));
    assert!(e.message.contains("'time'"), "{}", e.message);
    assert_eq!(fake.pending(), 0);
}

#[tokio::test]
async fn embeddings_come_back_in_order_across_batches() {
    let fake = chunked_fake().await;
    let mut config = fake.config(Dialect::Gemini, MODEL);
    config.embedding_model = Some("gemini-embedding-001".into());
    let embedder = GeminiEmbedder::new(&config).unwrap();
    assert_eq!(embedder.name(), "gemini/gemini-embedding-001");
    let mut texts: Vec<String> = (0..150).map(|i| format!("text number {i} – ü")).collect();
    texts[149] = texts[3].clone();
    let vectors = embedder.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 150);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for (r, range) in requests.iter().zip([0..100, 100..150]) {
        assert_eq!(
            r.path,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        let sent: Vec<&str> = r.body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                assert_eq!(q["model"], "models/gemini-embedding-001");
                q["content"]["parts"][0]["text"].as_str().unwrap()
            })
            .collect();
        let want: Vec<&str> = texts[range].iter().map(String::as_str).collect();
        assert_eq!(sent, want);
    }
    for v in &vectors {
        assert_eq!(v.len(), 8);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    // The same text (in the other batch) has the same vector; each vector is its own text's.
    assert_eq!(vectors[149], vectors[3]);
    assert_ne!(vectors[3], vectors[4]);
    for i in [0, 99, 100, 120] {
        let alone = embedder
            .embed(std::slice::from_ref(&texts[i]))
            .await
            .unwrap();
        assert_eq!(alone, [vectors[i].clone()]);
    }
    assert!(embedder.embed(&[]).await.unwrap().is_empty());
    assert_eq!(fake.requests().len(), 6);
}

#[tokio::test]
async fn an_embedder_needs_an_embedding_model() {
    let fake = chunked_fake().await;
    let config = fake.config(Dialect::Gemini, MODEL);
    let e = GeminiEmbedder::new(&config).unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Config);
    assert!(e.message.contains("embedding_model"), "{}", e.message);
    let e = flowbot_llm::connect_embedder(&config).err().unwrap();
    assert_eq!(e.kind, ModelErrorKind::Config);

    let mut bad = config.clone();
    bad.embedding_model = Some("a/b".into());
    assert_eq!(
        GeminiEmbedder::new(&bad).unwrap_err().kind,
        ModelErrorKind::Config
    );

    // An embedding call's errors are classified like a chat call's, the key redacted.
    let mut wrong = config.api_key("AIza-wrong-embedding-key");
    wrong.embedding_model = Some("models/gemini-embedding-001".into());
    let embedder = GeminiEmbedder::new(&wrong).unwrap();
    let e = embedder.embed(&["x".into()]).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Auth, Some(401)));
    assert_eq!(e.model, "gemini/gemini-embedding-001");
    assert!(!format!("{e} {e:?} {embedder:?}").contains("AIza-wrong-embedding-key"));
}
