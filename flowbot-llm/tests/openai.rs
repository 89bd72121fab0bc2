//! The OpenAI dialects (Chat Completions and Responses) and embeddings against the fake
//! provider, which speaks OpenAI's published wire protocol and writes every body in random
//! pieces of 1 to 3 bytes, so events, JSON and UTF-8 sequences arrive cut anywhere.

#![cfg(all(feature = "openai", feature = "test-util"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod support;

use std::time::{Duration, Instant};

use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, FinishReason, ModelErrorKind, StreamEvent, TimeoutKind,
    ToolCall, ToolChoice, ToolResult, ToolSpec, Usage,
};
use flowbot_llm::fake::{FAKE_KEY, FakeProvider, Reply, Turn};
use flowbot_llm::{Dialect, ProviderConfig};
use serde_json::{Value, json};

use support::{ask, chunked_fake, completion, deltas, finished, pieces, run};

const DIALECTS: [Dialect; 2] = [Dialect::Openai, Dialect::OpenaiResponses];

fn model(config: &ProviderConfig) -> std::sync::Arc<dyn ChatModel> {
    flowbot_llm::connect(config).unwrap()
}

fn hi() -> ChatRequest {
    ask("Hi!")
}

fn finish_word(dialect: Dialect, chat: &str) -> String {
    match dialect {
        Dialect::Openai => chat.to_owned(),
        _ => "completed".to_owned(),
    }
}

#[tokio::test]
async fn streamed_text_arrives_in_deltas_with_reasoning_and_usage() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let text = "Grüße aus Köln — 你好, wörld! 👋";
        let mut reply = Reply::text(text);
        reply.delta_chars = 3;
        reply.reasoning = Some("Thinking ✓ about it".into());
        reply.ping = true;
        reply.usage = Usage {
            input_tokens: 21,
            output_tokens: 9,
            ..Usage::default()
        };
        fake.push(Turn::Reply(reply));
        let config = fake.config(dialect, "gpt-test");
        let m = model(&config);
        assert_eq!(m.name(), format!("{}/gpt-test", dialect.as_str()));
        let (events, error) = run(&*m, &hi()).await;
        assert!(error.is_none(), "{dialect:?}: {error:?}");
        assert_eq!(deltas(&events), pieces(text, 3), "{dialect:?}");
        let StreamEvent::Started { id, model } = &events[0] else {
            panic!("{dialect:?}: first event {:?}", events[0]);
        };
        let prefix = if dialect == Dialect::Openai {
            "chatcmpl-fake"
        } else {
            "resp_fake"
        };
        assert!(id.starts_with(prefix), "{id}");
        assert_eq!(model, "gpt-test");
        let want_raw = finish_word(dialect, "stop");
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Finished {
                reason: FinishReason::Stop,
                raw: want_raw.clone()
            }),
            "{dialect:?}"
        );
        let c = completion(&events);
        assert_eq!(c.text, text);
        assert_eq!(c.reasoning.as_deref(), Some("Thinking ✓ about it"));
        assert_eq!(c.refusal, None);
        assert!(c.tool_calls.is_empty());
        assert_eq!(c.finish_raw.as_deref(), Some(want_raw.as_str()));
        assert_eq!(
            c.usage,
            Some(Usage {
                input_tokens: 21,
                output_tokens: 9,
                total_tokens: Some(30),
                cached_input_tokens: Some(0),
                cache_creation_input_tokens: None,
                reasoning_tokens: Some(0),
            }),
            "{dialect:?}"
        );
        assert_eq!(fake.requests().len(), 1);
        assert_eq!(fake.requests()[0].model, "gpt-test");
    }
}

#[tokio::test]
async fn parallel_tool_calls_with_non_ascii_arguments_are_merged() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let weather = json!({"city": "Zürich", "note": "☃ 東京 🌧"});
        let convert = json!({"from": "°C", "to": "°F", "value": -3.5});
        let mut reply = Reply::calls([
            ("get_weather", weather.clone()),
            ("convert", convert.clone()),
        ]);
        reply.delta_chars = 2;
        fake.push(Turn::Reply(reply));
        let m = model(&fake.config(dialect, "gpt-test"));
        let (events, error) = run(&*m, &hi()).await;
        assert!(error.is_none(), "{dialect:?}: {error:?}");
        let started: Vec<(usize, String, String)> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallStarted { index, id, name } => {
                    Some((*index, id.clone(), name.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            started,
            [
                (0, "call_1".to_owned(), "get_weather".to_owned()),
                (1, "call_2".to_owned(), "convert".to_owned())
            ]
        );
        // The arguments came in many fragments, each for its own call.
        let fragments: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments,
                } => Some(arguments),
                _ => None,
            })
            .collect();
        assert_eq!(
            fragments.len(),
            pieces(&weather.to_string(), 2).len(),
            "{dialect:?}"
        );
        let c = completion(&events);
        assert_eq!(
            c.tool_calls,
            [
                ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: weather.to_string()
                },
                ToolCall {
                    id: "call_2".into(),
                    name: "convert".into(),
                    arguments: convert.to_string()
                },
            ],
            "{dialect:?}"
        );
        assert_eq!(c.tool_calls[0].parsed_arguments().unwrap(), weather);
        assert_eq!(c.tool_calls[1].parsed_arguments().unwrap(), convert);
        assert_eq!(c.finish, Some(FinishReason::ToolCalls));
        assert_eq!(c.finish_raw, Some(finish_word(dialect, "tool_calls")));
        let finished = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::ToolCallFinished { .. }))
            .count();
        assert_eq!(finished, 2);
    }
}

#[tokio::test]
async fn the_usage_only_last_chunk_reports_cached_and_reasoning_tokens() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let mut reply = Reply::text("ok");
        reply.usage = Usage {
            input_tokens: 2006,
            output_tokens: 300,
            total_tokens: Some(2306),
            cached_input_tokens: Some(1920),
            cache_creation_input_tokens: None,
            reasoning_tokens: Some(256),
        };
        fake.push(Turn::Reply(reply.clone()));
        let m = model(&fake.config(dialect, "gpt-test"));
        let mut request = hi();
        request.keep_raw = true;
        let (events, error) = run(&*m, &request).await;
        assert!(error.is_none(), "{dialect:?}: {error:?}");
        assert_eq!(completion(&events).usage, Some(reply.usage), "{dialect:?}");
        let raws: Vec<Value> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Raw { data, .. } if data != "[DONE]" => {
                    Some(serde_json::from_str(data).unwrap())
                }
                _ => None,
            })
            .collect();
        let last = raws.last().unwrap();
        if dialect == Dialect::Openai {
            // A separate last chunk: no choices, all the counts.
            assert_eq!(last["choices"], json!([]));
            assert_eq!(
                last["usage"]["prompt_tokens_details"]["cached_tokens"],
                1920
            );
            assert_eq!(
                last["usage"]["completion_tokens_details"]["reasoning_tokens"],
                256
            );
            // Every other chunk has "usage": null.
            assert!(raws[..raws.len() - 1].iter().all(|r| r["usage"].is_null()));
        } else {
            assert_eq!(last["type"], "response.completed");
            assert_eq!(
                last["response"]["usage"]["input_tokens_details"]["cached_tokens"],
                1920
            );
        }
    }
}

#[tokio::test]
async fn a_chat_stream_that_reaches_done_without_a_finish_reason_has_no_finished_event() {
    let fake = chunked_fake().await;
    let mut reply = Reply::calls([("lookup", json!({"q": "ß"}))]);
    reply.text = "Let me look.".into();
    reply.finish = None;
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::Openai, "gpt-test"));
    let mut request = hi();
    request.keep_raw = true;
    let (events, error) = run(&*m, &request).await;
    assert!(error.is_none(), "{error:?}");
    // The fake really sent no finish_reason.
    for e in &events {
        if let StreamEvent::Raw { data, .. } = e
            && data != "[DONE]"
        {
            let chunk: Value = serde_json::from_str(data).unwrap();
            assert!(
                chunk["choices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["finish_reason"].is_null())
            );
        }
    }
    assert!(!finished(&events));
    let c = completion(&events);
    assert_eq!((c.finish, c.finish_raw), (None, None));
    assert_eq!(c.text, "Let me look.");
    // The call still finished, at [DONE].
    assert!(events.contains(&StreamEvent::ToolCallFinished {
        index: 0,
        call: ToolCall {
            id: "call_1".into(),
            name: "lookup".into(),
            arguments: r#"{"q":"ß"}"#.into()
        },
    }));
}

#[tokio::test]
async fn a_responses_stream_without_its_terminal_event_is_a_connection_error() {
    let fake = chunked_fake().await;
    let mut reply = Reply::text("half an answer");
    reply.finish = None;
    fake.push(Turn::Reply(reply));
    let m = model(&fake.config(Dialect::OpenaiResponses, "gpt-test"));
    let (events, error) = run(&*m, &hi()).await;
    let e = error.unwrap();
    assert_eq!(e.kind, ModelErrorKind::Connection, "{e}");
    assert!(e.message.contains("ended before response.completed"), "{e}");
    assert_eq!(completion(&events).text, "half an answer");
}

#[tokio::test]
async fn finish_reasons_are_mapped_and_the_raw_word_kept() {
    for (finish, chat_raw, responses_raw) in [
        (FinishReason::Length, "length", "incomplete"),
        (FinishReason::ContentFilter, "content_filter", "incomplete"),
    ] {
        for dialect in DIALECTS {
            let fake = chunked_fake().await;
            let mut reply = Reply::text("cut");
            reply.finish = Some(finish.clone());
            fake.push(Turn::Reply(reply));
            let m = model(&fake.config(dialect, "gpt-test"));
            let (events, error) = run(&*m, &hi()).await;
            assert!(error.is_none(), "{error:?}");
            let raw = if dialect == Dialect::Openai {
                chat_raw
            } else {
                responses_raw
            };
            assert_eq!(
                events.last(),
                Some(&StreamEvent::Finished {
                    reason: finish.clone(),
                    raw: raw.into()
                }),
                "{dialect:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_rate_limited() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        fake.push(Turn::Status {
            status: 429,
            message: "Rate limit reached for gpt-test on requests per min".into(),
            retry_after: Some("7".into()),
        });
        let m = model(&fake.config(dialect, "gpt-test"));
        let Err(e) = m.stream(&hi()).await else {
            panic!("{dialect:?}: the call succeeded");
        };
        assert_eq!(e.kind, ModelErrorKind::RateLimited, "{e}");
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(e.status, Some(429));
        assert_eq!(e.model, format!("{}/gpt-test", dialect.as_str()));
        assert_eq!(
            e.message,
            "Rate limit reached for gpt-test on requests per min"
        );
        assert!(e.is_transient());
    }
}

#[tokio::test]
async fn quota_exhaustion_is_permanent() {
    let fake = chunked_fake().await;
    fake.push(Turn::Status {
        status: 429,
        message: "You exceeded your current quota, please check your plan and billing details."
            .into(),
        retry_after: None,
    });
    let m = model(&fake.config(Dialect::Openai, "gpt-test"));
    let e = m.stream(&hi()).await.err().unwrap();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Auth, Some(429)));
    assert!(!e.is_transient());
}

#[tokio::test]
async fn a_503_is_overloaded() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        fake.push(Turn::Status {
            status: 503,
            message: "The engine is currently overloaded, please try again later".into(),
            retry_after: None,
        });
        let m = model(&fake.config(dialect, "gpt-test"));
        let e = m.stream(&hi()).await.err().unwrap();
        assert_eq!(
            (e.kind, e.status, e.retry_after),
            (ModelErrorKind::Overloaded, Some(503), None),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_401_is_auth_and_the_key_never_shows() {
    const KEY: &str = "sk-live-SECRET-9f8e7d6c5b4a";
    for dialect in DIALECTS {
        for azure in [false, true] {
            // The provider refuses the key and quotes it back, as OpenAI's 401 does.
            let fake = chunked_fake().await;
            fake.expect_key(Some(KEY));
            fake.push(Turn::Status {
                status: 401,
                message: format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
                retry_after: None,
            });
            let mut config = fake.config(dialect, "gpt-test");
            config.api_key = Some(KEY.into());
            config.azure = azure;
            let m = model(&config);
            let e = m.stream(&hi()).await.err().unwrap();
            assert_eq!((e.kind, e.status), (ModelErrorKind::Auth, Some(401)), "{e}");
            assert_eq!(
                fake.requests().len(),
                1,
                "the key was accepted, the 401 is scripted"
            );
            for shown in [e.to_string(), format!("{e:?}"), format!("{config:?}")] {
                assert!(!shown.contains(KEY), "{shown}");
                assert!(!shown.contains("9f8e7d6c5b4a"), "{shown}");
            }
            assert!(
                e.to_string()
                    .contains("Incorrect API key provided: [redacted]."),
                "{e}"
            );
            let chat = flowbot_llm::OpenAiChat::new(&config).unwrap();
            assert!(!format!("{chat:?}").contains(KEY));

            // A key the fake does not accept: its own 401.
            let fake = chunked_fake().await;
            fake.expect_key(Some("another-key"));
            let mut config = fake.config(dialect, "gpt-test");
            config.api_key = Some(KEY.into());
            config.azure = azure;
            let e = model(&config).stream(&hi()).await.err().unwrap();
            assert_eq!(e.kind, ModelErrorKind::Auth);
            assert!(!e.to_string().contains(KEY) && !format!("{e:?}").contains(KEY));
        }
    }
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_a_connection_error() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let mut reply = Reply::text("word ".repeat(100));
        reply.delta_chars = 5;
        fake.push(Turn::Drop {
            reply,
            after_bytes: 2500,
        });
        let m = model(&fake.config(dialect, "gpt-test"));
        let (events, error) = run(&*m, &hi()).await;
        let e = error.unwrap();
        assert_eq!(e.kind, ModelErrorKind::Connection, "{dialect:?}: {e}");
        assert!(e.is_transient());
        let text = completion(&events).text;
        assert!(
            !text.is_empty() && text.len() < 500,
            "{dialect:?}: {} bytes of text before the drop",
            text.len()
        );
    }
}

#[tokio::test]
async fn a_stall_past_the_idle_timeout_is_an_idle_timeout() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let mut reply = Reply::text("word ".repeat(100));
        reply.delta_chars = 5;
        fake.push(Turn::Stall {
            reply,
            after_bytes: 1500,
            pause: Duration::from_secs(600),
        });
        let mut config = fake.config(dialect, "gpt-test");
        config.idle_timeout_secs = Some(0.3);
        let m = model(&config);
        let began = Instant::now();
        let (events, error) = tokio::time::timeout(Duration::from_secs(30), run(&*m, &hi()))
            .await
            .unwrap();
        let e = error.unwrap();
        assert_eq!(
            e.kind,
            ModelErrorKind::Timeout(TimeoutKind::Idle),
            "{dialect:?}: {e}"
        );
        assert!(began.elapsed() >= Duration::from_millis(300));
        assert!(matches!(events[0], StreamEvent::Started { .. }));
    }
}

#[tokio::test]
async fn an_answer_over_max_response_bytes_is_too_large() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        fake.push(Turn::Reply(Reply::text("x".repeat(5000))));
        let mut config = fake.config(dialect, "gpt-test");
        config.max_response_bytes = Some(4096);
        let (_, error) = run(&*model(&config), &hi()).await;
        let e = error.unwrap();
        assert_eq!(e.kind, ModelErrorKind::TooLarge, "{dialect:?}: {e}");
        assert!(e.message.contains("4096"), "{e}");
    }
}

#[tokio::test]
async fn malformed_event_json_is_a_protocol_error_naming_the_event() {
    let fake = chunked_fake().await;
    fake.push(Turn::Raw(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: {\"id\": oops}\n\ndata: [DONE]\n\n"
            .into(),
    ));
    let (events, error) = run(&*model(&fake.config(Dialect::Openai, "gpt-test")), &hi()).await;
    let e = error.unwrap();
    assert_eq!(e.kind, ModelErrorKind::Protocol, "{e}");
    assert!(
        e.message
            .starts_with("chat.completion.chunk 2 is not valid JSON"),
        "{e}"
    );
    assert!(e.message.ends_with("{\"id\": oops}"), "{e}");
    assert_eq!(completion(&events).text, "hi");

    let fake = chunked_fake().await;
    fake.push(Turn::Raw(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-test\"}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\n"
            .into(),
    ));
    let (events, error) = run(
        &*model(&fake.config(Dialect::OpenaiResponses, "gpt-test")),
        &hi(),
    )
    .await;
    let e = error.unwrap();
    assert_eq!(e.kind, ModelErrorKind::Protocol, "{e}");
    assert!(
        e.message
            .starts_with("event response.output_text.delta is not valid JSON"),
        "{e}"
    );
    assert_eq!(
        events,
        [StreamEvent::Started {
            id: "resp_1".into(),
            model: "gpt-test".into()
        }]
    );
}

#[tokio::test]
async fn in_band_errors_are_classified() {
    for dialect in DIALECTS {
        for (code, kind) in [
            ("rate_limit_exceeded", ModelErrorKind::RateLimited),
            ("server_error", ModelErrorKind::Server),
            ("context_length_exceeded", ModelErrorKind::ContextTooLong),
            ("content_filter", ModelErrorKind::ContentFilter),
        ] {
            let fake = chunked_fake().await;
            let mut reply = Reply::text("partial answer");
            reply.error_event = Some((code.into(), format!("in-band {code}")));
            fake.push(Turn::Reply(reply));
            let (events, error) = run(&*model(&fake.config(dialect, "gpt-test")), &hi()).await;
            let e = error.unwrap();
            assert_eq!(e.kind, kind, "{dialect:?} {code}: {e}");
            assert!(e.message.starts_with(&format!("in-band {code}")), "{e}");
            assert_eq!(completion(&events).text, "partial answer");
        }
    }
}

#[tokio::test]
async fn structured_output_requests_carry_the_schema() {
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
        "required": ["city", "temp_c"],
        "additionalProperties": false,
    });
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let answer = json!({"city": "Zürich", "temp_c": -2});
        fake.push(Turn::Reply(Reply::text(answer.to_string())));
        let request = hi().with_output_schema("weather_report", schema.clone());
        let (events, error) = run(&*model(&fake.config(dialect, "gpt-test")), &request).await;
        assert!(error.is_none(), "{error:?}");
        let body = &fake.requests()[0].body;
        if dialect == Dialect::Openai {
            assert_eq!(
                body["response_format"],
                json!({"type": "json_schema", "json_schema": {"name": "weather_report", "schema": schema, "strict": true}})
            );
            assert!(body.get("text").is_none());
        } else {
            assert_eq!(
                body["text"],
                json!({"format": {"type": "json_schema", "name": "weather_report", "schema": schema, "strict": true}})
            );
            assert!(body.get("response_format").is_none());
        }
        let text = completion(&events).text;
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), answer);
    }
}

#[tokio::test]
async fn azure_settings_send_the_api_key_header_and_the_query() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        fake.push(Turn::Reply(Reply::text("azure")));
        fake.push(Turn::Reply(Reply::text("openai")));
        fake.push(Turn::Reply(Reply::text("local")));
        let request = hi().with_max_tokens(64);

        let mut azure = fake.config(dialect, "gpt-test");
        azure.azure = true;
        azure
            .query
            .insert("api-version".into(), "2024-10-21".into());
        azure
            .headers
            .insert("x-ms-client-request-id".into(), "req-1".into());
        let (_, error) = run(&*model(&azure), &request).await;
        assert!(error.is_none(), "{error:?}");

        let plain = fake.config(dialect, "gpt-test");
        let (_, error) = run(&*model(&plain), &request).await;
        assert!(error.is_none(), "{error:?}");

        fake.expect_key(None);
        let mut local = fake.config(dialect, "gpt-test");
        local.api_key = None;
        let (_, error) = run(&*model(&local), &request).await;
        assert!(error.is_none(), "{error:?}");

        let requests = fake.requests();
        let [a, p, l] = &requests[..] else {
            panic!("{} requests", requests.len());
        };
        assert_eq!(
            a.headers.get("api-key").map(String::as_str),
            Some("[redacted]")
        );
        assert_eq!(a.headers.get("authorization"), None);
        assert_eq!(
            a.headers.get("x-ms-client-request-id").map(String::as_str),
            Some("req-1")
        );
        assert_eq!(
            a.query,
            [("api-version".to_owned(), "2024-10-21".to_owned())]
        );
        assert_eq!(
            p.headers.get("authorization").map(String::as_str),
            Some("[redacted]")
        );
        assert_eq!(p.headers.get("api-key"), None);
        assert!(p.query.is_empty());
        assert_eq!(
            (l.headers.get("authorization"), l.headers.get("api-key")),
            (None, None)
        );
        // The token limit's name: Azure (like api.openai.com) takes max_completion_tokens,
        // other compatible servers max_tokens; the Responses API has its own.
        let limit = |r: &flowbot_llm::fake::FakeRequest| {
            ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                .into_iter()
                .filter(|k| r.body.get(*k).is_some())
                .map(|k| (k, r.body[k].clone()))
                .collect::<Vec<_>>()
        };
        if dialect == Dialect::Openai {
            assert_eq!(limit(a), [("max_completion_tokens", json!(64))]);
            assert_eq!(limit(p), [("max_tokens", json!(64))]);
        } else {
            assert_eq!(limit(a), [("max_output_tokens", json!(64))]);
            assert_eq!(limit(p), [("max_output_tokens", json!(64))]);
        }
        assert_eq!(FAKE_KEY, "fake-key");
    }
}

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".into(),
            description: "The weather in a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        },
        ToolSpec {
            name: "get_time".into(),
            description: "The time in a zone".into(),
            parameters: json!({"type": "object", "properties": {"tz": {"type": "string"}}}),
        },
    ]
}

#[tokio::test]
async fn a_conversation_with_tool_calls_and_results_round_trips() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        let mut calls = Reply::calls([
            ("get_weather", json!({"city": "Zürich"})),
            ("get_time", json!({"tz": "Europe/Zurich"})),
        ]);
        calls.text = "Checking both.".into();
        fake.push(Turn::Reply(calls));
        fake.push(Turn::Reply(Reply::text("−2 °C at 09:00.")));
        let m = model(&fake.config(dialect, "gpt-test"));

        let mut request = ChatRequest::new(vec![
            ChatMessage::system("You are terse."),
            ChatMessage::user("Weather in Zürich, and the time?"),
        ])
        .with_tools(tools())
        .with_max_tokens(256);
        request.temperature = Some(0.2);
        let first = m.complete(&request).await.unwrap();
        assert_eq!(first.text, "Checking both.");
        request.messages.push(ChatMessage::Assistant {
            content: first.text.clone(),
            tool_calls: first.tool_calls.clone(),
        });
        request.messages.push(ChatMessage::Tool(ToolResult {
            call_id: first.tool_calls[0].id.clone(),
            name: "get_weather".into(),
            content: r#"{"temp_c":-2}"#.into(),
            is_error: false,
        }));
        request.messages.push(ChatMessage::Tool(ToolResult {
            call_id: first.tool_calls[1].id.clone(),
            name: "get_time".into(),
            content: "clock unavailable".into(),
            is_error: true,
        }));
        let second = m.complete(&request).await.unwrap();
        assert_eq!(second.text, "−2 °C at 09:00.");

        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        let body = &requests[1].body;
        let want = if dialect == Dialect::Openai {
            json!({
                "model": "gpt-test",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Weather in Zürich, and the time?"},
                    {"role": "assistant", "content": "Checking both.", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Zürich\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"Europe/Zurich\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":-2}"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "error: clock unavailable"},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": tools()[0].parameters}},
                    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": tools()[1].parameters}},
                ],
                "tool_choice": "auto",
                "parallel_tool_calls": true,
                "temperature": 0.2,
                "max_tokens": 256,
            })
        } else {
            json!({
                "model": "gpt-test",
                "instructions": "You are terse.",
                "input": [
                    {"type": "message", "role": "user", "content": "Weather in Zürich, and the time?"},
                    {"type": "message", "role": "assistant", "content": "Checking both."},
                    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Zürich\"}"},
                    {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{\"tz\":\"Europe/Zurich\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp_c\":-2}"},
                    {"type": "function_call_output", "call_id": "call_2", "output": "error: clock unavailable"},
                ],
                "stream": true,
                "store": false,
                "tools": [
                    {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": tools()[0].parameters, "strict": false},
                    {"type": "function", "name": "get_time", "description": "The time in a zone", "parameters": tools()[1].parameters, "strict": false},
                ],
                "tool_choice": "auto",
                "parallel_tool_calls": true,
                "temperature": 0.2,
                "max_output_tokens": 256,
            })
        };
        assert_eq!(body, &want, "{dialect:?}");
    }
}

#[tokio::test]
async fn the_fake_refuses_a_tool_result_for_a_call_never_made() {
    for dialect in DIALECTS {
        let fake = chunked_fake().await;
        fake.push(Turn::Reply(Reply::text("never sent")));
        let mut request = ChatRequest::new(vec![
            ChatMessage::user("hi"),
            ChatMessage::Tool(ToolResult {
                call_id: "call_zzz".into(),
                name: "get_time".into(),
                content: "12:00".into(),
                is_error: false,
            }),
        ])
        .with_tools(tools());
        request.tool_choice = ToolChoice::Required;
        let e = model(&fake.config(dialect, "gpt-test"))
            .stream(&request)
            .await
            .err()
            .unwrap();
        assert_eq!(
            (e.kind, e.status),
            (ModelErrorKind::BadRequest, Some(400)),
            "{e}"
        );
        assert!(
            e.message.contains("call_zzz") || e.message.contains("'tool'"),
            "{e}"
        );
        assert_eq!(fake.pending(), 1);
    }
}

#[tokio::test]
async fn embeddings_come_back_in_order_across_batches() {
    let fake = FakeProvider::start().await.unwrap();
    let mut config = fake.config(Dialect::Openai, "gpt-test");
    config.embedding_model = Some("text-embedding-3-small".into());
    let embedder = flowbot_llm::connect_embedder(&config).unwrap();
    assert_eq!(embedder.name(), "openai/text-embedding-3-small");
    assert_eq!(embedder.dimension(), None);
    assert_eq!(embedder.embed(&[]).await.unwrap(), Vec::<Vec<f32>>::new());
    assert!(fake.requests().is_empty());

    let texts: Vec<String> = (0..2050).map(|i| format!("text number {i}")).collect();
    let vectors = embedder.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 2050);
    assert_eq!(embedder.dimension(), Some(8));
    let requests = fake.requests();
    let inputs: Vec<Vec<String>> = requests
        .iter()
        .map(|r| serde_json::from_value(r.body["input"].clone()).unwrap())
        .collect();
    assert_eq!(inputs.iter().map(Vec::len).collect::<Vec<_>>(), [2048, 2]);
    assert_eq!(inputs.concat(), texts);
    assert_eq!(requests[0].path, "/v1/embeddings");
    assert_eq!(requests[0].body["model"], "text-embedding-3-small");
    assert_eq!(requests[0].body["encoding_format"], "float");
    // Each text's vector is the one it gets alone (the fake derives it from the text).
    for i in [0, 1, 2047, 2048, 2049] {
        let alone = embedder
            .embed(std::slice::from_ref(&texts[i]))
            .await
            .unwrap();
        assert_eq!(alone, [vectors[i].clone()], "text {i}");
    }
    assert_ne!(vectors[0], vectors[1]);
    for v in &vectors {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }

    let mut no_model = fake.config(Dialect::Openai, "gpt-test");
    no_model.embedding_model = None;
    let e = flowbot_llm::connect_embedder(&no_model).err().unwrap();
    assert_eq!(e.kind, ModelErrorKind::Config);
    assert!(e.message.contains("embedding_model"), "{e}");

    // The provider's errors come back classified.
    let e = embedder.embed(&[String::new()]).await.unwrap_err();
    assert_eq!(
        (e.kind, e.status),
        (ModelErrorKind::BadRequest, Some(400)),
        "{e}"
    );
    assert!(e.message.contains("input[0]"), "{e}");
}
