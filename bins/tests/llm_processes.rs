//! Durable assistant runs, with the real server binary as a process: a server SIGKILLed in
//! the middle of a run with a tool call finishes the run after a restart without calling the
//! tool again; an approval question survives a restart and the click resumes the run. The
//! model is `flowbot_llm::fake::FakeProvider` (OpenAI's wire protocol on 127.0.0.1).

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TempDir, callback_receiver, eventually, free_port, kv, post_hook, slow_endpoint, spawn, wait_ready};
use flowbot_llm::fake::{FakeProvider, Reply, Turn};
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_flowbot-server");

fn env(port: u16, dir: &TempDir, fake: &FakeProvider, callback: &str) -> Vec<(String, String)> {
    vec![
        kv("FLOWBOT_SERVER__LISTEN", format!("127.0.0.1:{port}")),
        kv(
            "FLOWBOT_DATABASE__URL",
            format!("sqlite://{}/flowbot.db", dir.0.display()),
        ),
        kv("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "100"),
        kv("FLOWBOT_WEBHOOKS__HOOK__CALLBACK_URL", callback),
        kv("OPENAI_BASE_URL", format!("http://{}/v1", fake.addr())),
        kv("OPENAI_MODEL", "fake-model"),
        kv("FLOWBOT_LLM__TOOLS", "[\"http_request\", \"send_later\"]"),
    ]
}

async fn runs(base: &str) -> Vec<Value> {
    let page: Value = reqwest::get(format!("{base}/api/v1/llm/runs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_finishes_after_a_restart_and_no_tool_call_runs_twice() {
    let dir = TempDir::new("flowbot-llm-kill");
    let (cb, seen, _) = callback_receiver(None).await;
    let (slow, calls) = slow_endpoint().await;
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.push(Turn::Reply(Reply::calls([("http_request", json!({"url": slow}))])));
    // The second model turn hangs: the process is killed while the run waits for it, after
    // the tool call's result was checkpointed.
    fake.push(Turn::Stall {
        reply: Reply::text("never sent"),
        after_bytes: 0,
        pause: Duration::from_secs(600),
    });
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env = env(port, &dir, &fake, &cb);
    let log = dir.0.join("first.log");
    let mut first = spawn(SERVER, &[], &env, &log);
    wait_ready(&base, &log).await;
    let status = post_hook(
        &base,
        "hook",
        json!({"user": "u", "conversation": "c", "text": "call the slow endpoint"}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    eventually("the second model turn in flight", Duration::from_secs(30), || {
        fake.requests().len() == 2
    })
    .await;
    let tool = fake.requests()[1].body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the tool ran once: {tool}");
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("reaped");

    fake.push(Turn::Reply(Reply::text("The endpoint answered.")));
    let log = dir.0.join("second.log");
    let _second = spawn(SERVER, &[], &env, &log);
    wait_ready(&base, &log).await;
    eventually("the answer from the restarted server", Duration::from_secs(30), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let texts: Vec<String> = seen.lock().unwrap().iter().map(|(c, _)| c.text.clone()).collect();
    assert_eq!(texts, ["The endpoint answered."]);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the completed call did not run again");
    let sent = fake.requests();
    assert_eq!(sent.len(), 3);
    // The resumed turn sends the checkpointed result, the same as the interrupted one.
    assert_eq!(sent[1].body["messages"], sent[2].body["messages"]);
    let last = sent[2].body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "tool");
    assert!(last["content"].as_str().unwrap().contains("\"call\":1"), "{last}");

    let runs = runs(&base).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"]["state"], "done");
    assert_eq!(runs[0]["turns"], 2, "one turn before the kill, one after: {}", runs[0]);
    let call = &runs[0]["calls"]["call_1"];
    assert_eq!(call["call"]["name"], "http_request");
    assert!(call["result"]["content"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_question_survives_a_restart_and_the_click_resumes_the_run() {
    let dir = TempDir::new("flowbot-llm-approval");
    let (cb, seen, _) = callback_receiver(None).await;
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.push(Turn::Reply(Reply::calls([(
        "send_later",
        json!({"delay": "1h", "text": "stand up"}),
    )])));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = env(port, &dir, &fake, &cb);
    env.push(kv("FLOWBOT_LLM__APPROVAL", "[\"send_later\"]"));
    let log = dir.0.join("first.log");
    let mut first = spawn(SERVER, &[], &env, &log);
    wait_ready(&base, &log).await;
    let status = post_hook(
        &base,
        "hook",
        json!({"user": "u", "conversation": "c", "text": "remind me in an hour to stand up"}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    eventually("the approval question", Duration::from_secs(30), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let question = seen.lock().unwrap()[0].0.clone();
    assert!(question.text.contains("send_later"), "{}", question.text);
    assert_eq!(question.buttons.len(), 2);
    assert_eq!(question.buttons[0].label, "Approve");
    let approve = question.buttons[0].value.clone();
    // Nothing was scheduled yet.
    assert_eq!(runs(&base).await[0]["status"]["state"], "waiting_approval");
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("reaped");

    fake.push(Turn::Reply(Reply::text("Reminder set for an hour from now.")));
    let log = dir.0.join("second.log");
    let _second = spawn(SERVER, &[], &env, &log);
    wait_ready(&base, &log).await;
    // Someone else's click is refused; the asker's resumes the run.
    let status = post_hook(&base, "hook", json!({"user": "mallory", "conversation": "c", "button": approve})).await;
    assert_eq!(status.as_u16(), 202);
    let status = post_hook(&base, "hook", json!({"user": "u", "conversation": "c", "button": approve})).await;
    assert_eq!(status.as_u16(), 202);
    eventually("the answer after the approval", Duration::from_secs(30), || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(c, _)| c.text == "Reminder set for an hour from now.")
    })
    .await;
    let texts: Vec<String> = seen.lock().unwrap().iter().map(|(c, _)| c.text.clone()).collect();
    assert!(
        texts.iter().any(|t| t == "Only the person who asked can approve this."),
        "{texts:?}"
    );
    let runs = runs(&base).await;
    assert_eq!(runs[0]["status"]["state"], "done");
    assert_eq!(runs[0]["calls"]["call_1"]["approved"], true);
    let tasks: Value = reqwest::get(format!("{base}/api/v1/tasks?kind=flowbot.deliver&state=queued"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks["items"].as_array().unwrap().len(), 1, "the reminder, once: {tasks}");
}
