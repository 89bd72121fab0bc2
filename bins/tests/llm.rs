//! The server with a language model: the quick start (one environment variable naming an
//! OpenAI-compatible server), free text answered by the model, a tool call that sets a real
//! reminder on the durable queue, and the errors a user sees when the model fails. The model
//! is `flowbot_llm::fake::FakeProvider`, a local server speaking OpenAI's wire protocol.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;
mod harness;

use std::collections::BTreeMap;

use flowbot_llm::fake::{FakeProvider, Reply, Turn};
use serde_json::{Value, json};

/// A server whose `[llm]` comes from `OPENAI_BASE_URL` alone, as in the README.
async fn server_with(fake: &FakeProvider) -> harness::Server {
    let base = format!("http://{}/v1", fake.addr());
    harness::start_with(move |c| {
        let env = BTreeMap::from([("OPENAI_BASE_URL".to_owned(), base)]);
        c.llm.from_openai_env(&env);
    })
    .await
}

fn chat_requests(fake: &FakeProvider) -> Vec<Value> {
    fake.requests().into_iter().map(|r| r.body).collect()
}

#[tokio::test]
async fn a_base_url_alone_gives_a_model_that_answers_free_text_and_sets_reminders() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.chunked(5);
    fake.push(Turn::Reply(Reply::calls([(
        "send_later",
        json!({"delay": "10m", "text": "⏰ Time to stretch"}),
    )])));
    fake.push(Turn::Reply(Reply::text(
        "Done: I'll remind you to stretch in 10 minutes.",
    )));
    let s = server_with(&fake).await;
    let mut ws = harness::chat(&s, "ann", "c1").await;

    // Commands still go to their rules.
    assert!(harness::say(&mut ws, "/echo hi").await["text"] == "hi");
    let answer = harness::say(&mut ws, "remind me in 10 minutes to stretch").await;
    assert_eq!(
        answer["text"],
        "Done: I'll remind you to stretch in 10 minutes."
    );

    let sent = chat_requests(&fake);
    assert_eq!(sent.len(), 2, "one turn to call the tool, one to answer");
    // The model found by listing the server's models, the tool offered with its schema.
    assert_eq!(sent[0]["model"], "fake-model");
    let tools = sent[0]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["function"]["name"], "send_later");
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["text", "delay"])
    );
    let messages = sent[0]["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        messages.last().unwrap()["content"],
        "remind me in 10 minutes to stretch"
    );
    // The second turn carries the call and its real result: a task on the queue, 600 s out.
    let second = sent[1]["messages"].as_array().unwrap();
    let result = second.last().unwrap();
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call_1");
    let output: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(output["delay_secs"], 600.0);
    assert!(output["task_id"].as_i64().unwrap() > 0);

    // The next message carries the history: the earlier question and answer.
    fake.push(Turn::Reply(Reply::text("You asked me to remind you.")));
    let again = harness::say(&mut ws, "what did I ask?").await;
    assert_eq!(again["text"], "You asked me to remind you.");
    let third = &chat_requests(&fake)[2]["messages"];
    let texts: Vec<&str> = third
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        texts.contains(&"remind me in 10 minutes to stretch"),
        "{texts:?}"
    );
    assert!(texts.contains(&"Done: I'll remind you to stretch in 10 minutes."));
    s.stop().await;
}

#[tokio::test]
async fn without_a_model_free_text_gets_the_hint_and_no_request_leaves() {
    let s = harness::start().await;
    let mut ws = harness::chat(&s, "bob", "c2").await;
    let answer = harness::say(&mut ws, "hello there").await;
    assert_eq!(answer["text"], "I didn't understand that. Try /help.");
    s.stop().await;
}

#[tokio::test]
async fn bad_tool_calls_go_back_to_the_model_and_the_user_still_gets_an_answer() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    // Not JSON, a tool that is not offered, and arguments against the schema.
    let mut bad = Reply::calls([("send_later", json!({}))]);
    bad.calls[0].arguments = "{\"delay\": \"10m\", ".into();
    fake.push(Turn::Reply(bad));
    fake.push(Turn::Reply(Reply::calls([(
        "kv.delete",
        json!({"namespace": "x", "key": "y"}),
    )])));
    fake.push(Turn::Reply(Reply::calls([(
        "send_later",
        json!({"delay": -5, "text": ""}),
    )])));
    fake.push(Turn::Reply(Reply::text("Sorry, I could not set that.")));
    let s = server_with(&fake).await;
    let mut ws = harness::chat(&s, "cy", "c3").await;
    let answer = harness::say(&mut ws, "remind me").await;
    assert_eq!(
        answer["text"],
        "I could not complete this: 3 tool calls in a row failed."
    );
    let sent = chat_requests(&fake);
    assert_eq!(
        sent.len(),
        3,
        "the run stops after three failed calls in a row"
    );
    let result = |i: usize| {
        let m = sent[i]["messages"].as_array().unwrap();
        m.last().unwrap()["content"].as_str().unwrap().to_owned()
    };
    assert!(result(1).contains("not valid JSON"), "{}", result(1));
    assert!(
        result(2).contains("no tool named 'kv.delete'"),
        "{}",
        result(2)
    );
    assert_eq!(fake.pending(), 1, "the fourth turn was never asked for");
    s.stop().await;
}

#[tokio::test]
async fn a_model_that_keeps_failing_is_answered_with_an_apology_not_silence() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.respond_with(|_| Turn::Status {
        status: 401,
        message: "invalid key".into(),
        retry_after: None,
    });
    let s = server_with(&fake).await;
    let mut ws = harness::chat(&s, "di", "c4").await;
    let answer = harness::say(&mut ws, "hello?").await;
    let text = answer["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert!(
        !text.contains("invalid key"),
        "provider details stay in the log: {text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failing_model_falls_back_to_the_next_and_metrics_count_both() {
    let fake = FakeProvider::start().await.unwrap();
    // The main model's key is wrong (OpenAI dialect); the fallback speaks Anthropic's.
    fake.push(Turn::Status {
        status: 401,
        message: "Incorrect API key provided".into(),
        retry_after: None,
    });
    fake.push(Turn::Reply(Reply::text("Hello from the fallback.")));
    let main = {
        let mut p = fake.config(flowbot_llm::Dialect::Openai, "gpt-4o-mini");
        p.api_key = Some("wrong-key-123".into());
        p
    };
    let backup = fake.config(flowbot_llm::Dialect::Anthropic, "claude-haiku-4-5");
    fake.expect_key(None);
    let s = harness::start_with(move |c| {
        c.llm.models.insert("main".into(), main);
        c.llm.models.insert("backup".into(), backup);
        c.llm.default = Some("main".into());
        c.llm.fallbacks = vec!["backup".into()];
    })
    .await;
    let mut ws = harness::chat(&s, "eve", "c5").await;
    let answer = harness::say(&mut ws, "hi").await;
    assert_eq!(answer["text"], "Hello from the fallback.");
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/chat/completions", "/v1/messages"]);

    let metrics = common::metrics(&s.base).await;
    assert!(
        metrics.contains("flowbot_llm_errors_total{model=\"openai/gpt-4o-mini\",kind=\"auth\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowbot_llm_calls_total{model=\"anthropic/claude-haiku-4-5\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("wrong-key-123"));
    // The run is visible through the API, with its usage.
    let runs = common::get_json(format!("{}/api/v1/llm/runs", s.base)).await;
    let run = &runs["items"][0];
    assert_eq!(run["status"]["state"], "done");
    assert_eq!(run["answer"], "Hello from the fallback.");
    let one: Value = common::get_json(format!(
        "{}/api/v1/llm/runs/{}",
        s.base,
        run["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(one["id"], run["id"]);
    // Usage by user: the fake reports 10 tokens in and one more than the words out.
    let usage: Value = common::get_json(format!("{}/api/v1/llm/usage?by=user", s.base)).await;
    assert_eq!(usage["items"][0]["user"], "web:eve", "{usage}");
    assert_eq!(usage["items"][0]["runs"], 1);
    assert_eq!(usage["items"][0]["input_tokens"], 10);
    assert_eq!(usage["items"][0]["output_tokens"], 5);
    let bad = reqwest::get(format!("{}/api/v1/llm/usage?by=planet", s.base))
        .await
        .unwrap();
    harness::problem(bad, 400).await;
    let missing = reqwest::get(format!("{}/api/v1/llm/runs/nope", s.base))
        .await
        .unwrap();
    harness::problem(missing, 404).await;
    s.stop().await;
}

#[tokio::test]
async fn the_answer_streams_into_web_chat_as_partial_frames_before_the_message() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    let mut reply = Reply::text("one two three four five six seven eight nine ten");
    reply.delta_chars = 3;
    fake.push(Turn::Stall {
        reply,
        after_bytes: 600,
        pause: std::time::Duration::from_millis(300),
    });
    let s = server_with(&fake).await;
    let mut ws = harness::chat(&s, "fay", "c6").await;
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "message", "text": "count"}).to_string(),
        ),
    )
    .await
    .unwrap();
    let partial = harness::next_frame(&mut ws, "partial").await;
    let shown = partial["text"].as_str().unwrap().to_owned();
    assert!(
        "one two three four five six seven eight nine ten".starts_with(&shown) && !shown.is_empty(),
        "{shown}"
    );
    let done = harness::next_frame(&mut ws, "message").await;
    assert_eq!(
        done["text"],
        "one two three four five six seven eight nine ten"
    );
    assert_eq!(done["draft"], partial["draft"]);
    // Only the final text is in the history.
    let page = common::get_json(format!("{}/api/v1/conversations/web/c6/messages", s.base)).await;
    let texts: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["count", "one two three four five six seven eight nine ten"]
    );
    s.stop().await;
}

/// Poll a workflow run until it is final.
async fn finished_run(base: &str, id: &str) -> Value {
    for _ in 0..400 {
        let run: Value = common::get_json(format!("{base}/api/v1/runs/{id}")).await;
        if ["completed", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {id} did not finish");
}

#[tokio::test]
async fn a_workflow_llm_node_gives_structured_output_checked_against_its_schema() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    // The first answer misses a required field: the node asks once more, saying why.
    fake.push(Turn::Reply(Reply::text(r#"{"sentiment": "positive"}"#)));
    fake.push(Turn::Reply(Reply::text(
        r#"{"sentiment": "positive", "score": 0.9}"#,
    )));
    let s = server_with(&fake).await;
    // The example of docs/llm.md, as written there.
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/llm.md")).unwrap();
    let start = guide.find("```yaml\n").unwrap() + 8;
    let workflow = &guide[start..start + guide[start..].find("```").unwrap()];
    let http = reqwest::Client::new();
    let applied = http
        .post(format!("{}/api/v1/workflows", s.base))
        .header("content-type", "application/yaml")
        .body(workflow.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(
        applied.status().as_u16(),
        201,
        "{}",
        applied.text().await.unwrap()
    );
    let run: Value = http
        .post(format!("{}/api/v1/workflows/triage/runs", s.base))
        .json(&json!({"inputs": {"review": "Lovely service!"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done = finished_run(&s.base, run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "thank", "{done}");
    let sent = chat_requests(&fake);
    assert_eq!(sent.len(), 2);
    // Structured output was asked for with the schema, and the retry said what was wrong.
    assert_eq!(sent[0]["response_format"]["type"], "json_schema");
    assert_eq!(
        sent[0]["response_format"]["json_schema"]["schema"]["required"],
        json!(["sentiment", "score"])
    );
    let retry = sent[1]["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(retry.contains("score"), "{retry}");
    assert_eq!(
        sent[0]["messages"][1]["content"],
        "Rate this review: Lovely service!"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_workflow_llm_node_without_a_model_is_refused_when_applied() {
    let s = harness::start().await;
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/workflows", s.base))
        .header("content-type", "application/yaml")
        .body("name: ask\nnodes:\n  - { id: q, llm: { text: hi } }\n")
        .send()
        .await
        .unwrap();
    let p = harness::problem(res, 422).await;
    assert!(p.to_string().contains("needs a language model"), "{p}");
    s.stop().await;
}

#[tokio::test]
async fn a_daily_cost_budget_stops_the_assistant_for_that_user_once_spent() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.respond_with(|_| Turn::Reply(Reply::text("An answer.")));
    let base = format!("http://{}/v1", fake.addr());
    let s = harness::start_with(move |c| {
        let env = BTreeMap::from([
            ("OPENAI_BASE_URL".to_owned(), base),
            ("OPENAI_MODEL".to_owned(), "priced-model".to_owned()),
        ]);
        c.llm.from_openai_env(&env);
        // 10 tokens in and 3 out at a dollar per token: 13 dollars a run.
        let price: flowbot_llm::PriceConfig =
            toml::from_str("input = 1000000.0\noutput = 1000000.0").unwrap();
        c.llm
            .prices
            .models
            .insert("openai/priced-model".into(), price);
        c.llm.limits.max_user_daily_cost_usd = 20.0;
    })
    .await;
    let mut ws = harness::chat(&s, "gil", "c7").await;
    assert_eq!(harness::say(&mut ws, "one").await["text"], "An answer.");
    assert_eq!(harness::say(&mut ws, "two").await["text"], "An answer.");
    // 26 dollars spent: the third is refused without a call, and says why.
    let third = harness::say(&mut ws, "three").await;
    assert_eq!(
        third["text"],
        "You have used today's allowance of the assistant. Please try again tomorrow."
    );
    assert_eq!(fake.requests().len(), 2);
    // Another user still gets answers.
    let mut other = harness::chat(&s, "hal", "c7").await;
    assert_eq!(harness::say(&mut other, "hi").await["text"], "An answer.");
    let usage: Value = common::get_json(format!("{}/api/v1/llm/usage?by=user", s.base)).await;
    let gil = usage["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["user"] == "web:gil")
        .unwrap()
        .clone();
    assert_eq!(gil["cost_usd"], "26.000000", "{usage}");
    s.stop().await;
}

#[tokio::test]
async fn a_newer_message_stops_the_answer_being_written_and_is_answered_next() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    let mut long = Reply::text("Once upon a time there was a very long story that never ended");
    long.delta_chars = 5;
    // The first answer shows its beginning, then hangs far longer than the test waits.
    fake.push(Turn::Stall {
        reply: long,
        after_bytes: 700,
        pause: std::time::Duration::from_secs(600),
    });
    fake.push(Turn::Reply(Reply::text("It is noon.")));
    let s = server_with(&fake).await;
    let mut ws = harness::chat(&s, "jo", "c8").await;
    let send = |text: &str| {
        tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "message", "text": text}).to_string(),
        )
    };
    futures_util::SinkExt::send(&mut ws, send("tell me a long story"))
        .await
        .unwrap();
    let partial = harness::next_frame(&mut ws, "partial").await;
    assert!(
        partial["text"].as_str().unwrap().starts_with("Once"),
        "{partial}"
    );
    futures_util::SinkExt::send(&mut ws, send("never mind, what time is it?"))
        .await
        .unwrap();
    // The story stops where it was shown, then the new question is answered.
    let cut = harness::next_frame(&mut ws, "message").await;
    let cut_text = cut["text"].as_str().unwrap();
    assert!(
        cut_text.starts_with("Once") && cut_text.ends_with(" …"),
        "{cut}"
    );
    assert_eq!(cut["draft"], partial["draft"]);
    let next = harness::next_frame(&mut ws, "message").await;
    assert_eq!(next["text"], "It is noon.");
    let runs = common::get_json(format!("{}/api/v1/llm/runs", s.base)).await;
    let states: Vec<(String, String)> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"]["state"].as_str().unwrap().to_owned(),
                r["status"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&("stopped".into(), "a newer message arrived".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("done".into(), String::new())),
        "{states:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_newer_message_from_the_queue_stops_the_answer_too() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.push(Turn::Stall {
        reply: Reply::text("A long answer that hangs"),
        after_bytes: 300,
        pause: std::time::Duration::from_secs(600),
    });
    fake.push(Turn::Reply(Reply::text("The second answer.")));
    let s = server_with(&fake).await;
    // The generic webhook channel queues each message as a task keyed by its conversation.
    let post = |text: &'static str| {
        let url = format!("{}/hooks/webhook/open", s.base);
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"user": "kim", "conversation": "q1", "text": text}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("first question").await, 202);
    common::eventually(
        "the first answer streaming",
        std::time::Duration::from_secs(10),
        || fake.requests().len() == 1,
    )
    .await;
    assert_eq!(post("second question").await, 202);
    let mut states = Vec::new();
    for _ in 0..200 {
        let runs = common::get_json(format!("{}/api/v1/llm/runs", s.base)).await;
        states = runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["status"]["state"].as_str().unwrap().to_owned(),
                    r["status"]["reason"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect::<Vec<_>>();
        if states.len() == 2 && states.iter().all(|(st, _)| st != "running") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    states.sort();
    assert_eq!(
        states,
        [
            ("done".to_owned(), String::new()),
            ("stopped".to_owned(), "a newer message arrived".to_owned())
        ]
    );
    assert_eq!(fake.requests().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn with_keyword_relevance_unrelated_older_turns_stay_out_of_the_prompt() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.respond_with(|_| Turn::Reply(Reply::text("Noted.")));
    let base = format!("http://{}/v1", fake.addr());
    let s = harness::start_with(move |c| {
        let env = BTreeMap::from([("OPENAI_BASE_URL".to_owned(), base)]);
        c.llm.from_openai_env(&env);
        c.llm.relevance = flowbot_server::config::Relevance::Keywords;
    })
    .await;
    let mut ws = harness::chat(&s, "lee", "c9").await;
    for text in [
        "what is the price of apples",
        "how is the weather in Oslo",
        "who won the football match",
        "recommend some jazz music",
        "and the price of pears",
    ] {
        assert_eq!(harness::say(&mut ws, text).await["text"], "Noted.");
    }
    let last = &chat_requests(&fake)[4]["messages"];
    let texts: Vec<&str> = last
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    // The turn sharing "price" stays, the two latest stay, the unrelated weather goes.
    assert!(texts.contains(&"what is the price of apples"), "{texts:?}");
    assert!(texts.contains(&"who won the football match"), "{texts:?}");
    assert!(texts.contains(&"recommend some jazz music"), "{texts:?}");
    assert!(!texts.contains(&"how is the weather in Oslo"), "{texts:?}");
    s.stop().await;
}
