//! Durable assistant runs, with the real server binary as a process: a server SIGKILLed in
//! the middle of a run with a tool call finishes the run after a restart without calling the
//! tool again; an approval question survives a restart and the click resumes the run. The
//! model is `flowbot_llm::fake::FakeProvider` (OpenAI's wire protocol on 127.0.0.1).

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    TempDir, callback_receiver, eventually, kv, post_hook, slow_endpoint, spawn, spawn_server,
    wait_ready,
};
use flowbot_llm::fake::{FakeProvider, Reply, Turn};
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_flowbot-agent");

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    /// One server with its embedded agent; "another agent" is the restarted server.
    Sqlite,
    /// A server without an agent and separate agent processes; another agent takes over.
    Postgres,
}

/// The processes of one test: the worker that runs the assistant can be killed and replaced.
struct Cluster {
    dir: TempDir,
    base: String,
    env: Vec<(String, String)>,
    backend: Backend,
    server: Option<tokio::process::Child>,
    worker: Option<tokio::process::Child>,
    lives: usize,
    pg: Option<(String, String)>,
}

impl Cluster {
    /// `None` when the backend is PostgreSQL and no server is configured (outside CI).
    async fn start(
        backend: Backend,
        fake: &FakeProvider,
        callback: &str,
        extra: &[(String, String)],
    ) -> Option<Cluster> {
        let dir = TempDir::new("flowbot-llm-processes");
        let mut env = vec![
            kv("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "100"),
            kv("FLOWBOT_WEBHOOKS__HOOK__CALLBACK_URL", callback),
            kv("OPENAI_BASE_URL", format!("http://{}/v1", fake.addr())),
            kv("OPENAI_MODEL", "fake-model"),
            kv("FLOWBOT_LLM__TOOLS", "[\"http_request\", \"send_later\"]"),
            // The tool calls a local endpoint, which the network guard refuses by default.
            kv("FLOWBOT_NETWORK__ALLOW", r#"["127.0.0.1"]"#),
        ];
        env.extend(extra.iter().cloned());
        let mut pg = None;
        match backend {
            Backend::Sqlite => env.push(kv(
                "FLOWBOT_DATABASE__URL",
                format!("sqlite://{}/flowbot.db", dir.0.display()),
            )),
            Backend::Postgres => {
                let url = common::postgres_url()?;
                let schema = format!("llm_{}", uuid::Uuid::new_v4().simple());
                env.push(kv("FLOWBOT_DATABASE__URL", url.clone()));
                env.push(kv("FLOWBOT_DATABASE__SCHEMA", schema.clone()));
                pg = Some((url, schema));
            }
        }
        let mut c = Cluster {
            dir,
            base: String::new(),
            env,
            backend,
            server: None,
            worker: None,
            lives: 0,
            pg,
        };
        if backend == Backend::Postgres {
            let log = c.dir.0.join("server.log");
            let (server, base) = spawn_server(&["--no-agent"], &c.env, &log).await;
            (c.server, c.base) = (Some(server), base);
            wait_ready(&c.base, &log).await;
        }
        c.new_worker().await;
        Some(c)
    }

    /// Start the process that runs the assistant (the server itself on SQLite).
    async fn new_worker(&mut self) {
        self.lives += 1;
        let log = self.dir.0.join(format!("worker-{}.log", self.lives));
        match self.backend {
            Backend::Sqlite => {
                let (worker, base) = spawn_server(&[], &self.env, &log).await;
                (self.worker, self.base) = (Some(worker), base);
                wait_ready(&self.base, &log).await;
            }
            Backend::Postgres => self.worker = Some(spawn(AGENT, &[], &self.env, &log)),
        }
    }

    async fn kill_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.start_kill().expect("SIGKILL");
            w.wait().await.expect("reaped");
        }
    }

    async fn end(self) {
        if let Some((url, schema)) = &self.pg {
            drop(self.worker);
            drop(self.server);
            common::drop_schema(url, schema).await;
        }
    }
}

async fn runs(base: &str) -> Vec<Value> {
    let page = common::get_json(format!("{base}/api/v1/llm/runs")).await;
    page["items"].as_array().unwrap().clone()
}

async fn a_run_killed_mid_way_finishes_on_another_agent(backend: Backend) {
    let (cb, seen, _) = callback_receiver(None).await;
    let (slow, calls) = slow_endpoint().await;
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.push(Turn::Reply(Reply::calls([(
        "http_request",
        json!({"url": slow}),
    )])));
    // The second model turn hangs: the worker is killed while the run waits for it, after
    // the tool call's result was checkpointed.
    fake.push(Turn::Stall {
        reply: Reply::text("never sent"),
        after_bytes: 0,
        pause: Duration::from_secs(600),
    });
    let Some(mut c) = Cluster::start(backend, &fake, &cb, &[]).await else {
        return;
    };
    let status = post_hook(
        &c.base,
        "hook",
        json!({"user": "u", "conversation": "c", "text": "call the slow endpoint"}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    eventually(
        "the second model turn in flight",
        Duration::from_secs(30),
        || fake.requests().len() == 2,
    )
    .await;
    let tool = fake.requests()[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the tool ran once: {tool}");
    c.kill_worker().await;

    fake.push(Turn::Reply(Reply::text("The endpoint answered.")));
    c.new_worker().await;
    eventually(
        "the answer from another agent",
        Duration::from_secs(30),
        || !seen.lock().unwrap().is_empty(),
    )
    .await;
    let texts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.text.clone())
        .collect();
    assert_eq!(texts, ["The endpoint answered."]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the completed call did not run again"
    );
    let sent = fake.requests();
    assert_eq!(sent.len(), 3);
    // The resumed turn sends the checkpointed result, the same as the interrupted one.
    assert_eq!(sent[1].body["messages"], sent[2].body["messages"]);
    let last = sent[2].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "tool");
    assert!(
        last["content"].as_str().unwrap().contains("\"call\":1"),
        "{last}"
    );

    let runs = runs(&c.base).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"]["state"], "done");
    assert_eq!(
        runs[0]["turns"], 2,
        "one turn before the kill, one after: {}",
        runs[0]
    );
    let call = &runs[0]["calls"]["call_1"];
    assert_eq!(call["call"]["name"], "http_request");
    assert!(call["result"]["content"].is_string());
    c.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_finishes_after_a_restart_on_sqlite() {
    a_run_killed_mid_way_finishes_on_another_agent(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_finishes_on_another_agent_on_postgres() {
    a_run_killed_mid_way_finishes_on_another_agent(Backend::Postgres).await;
}

async fn an_approval_survives_the_agent(backend: Backend) {
    let (cb, seen, _) = callback_receiver(None).await;
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    fake.push(Turn::Reply(Reply::calls([(
        "send_later",
        json!({"delay": "1h", "text": "stand up"}),
    )])));
    let approval = [kv("FLOWBOT_LLM__APPROVAL", "[\"send_later\"]")];
    let Some(mut c) = Cluster::start(backend, &fake, &cb, &approval).await else {
        return;
    };
    let status = post_hook(
        &c.base,
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
    assert_eq!(
        runs(&c.base).await[0]["status"]["state"],
        "waiting_approval"
    );
    c.kill_worker().await;

    fake.push(Turn::Reply(Reply::text(
        "Reminder set for an hour from now.",
    )));
    c.new_worker().await;
    // Someone else's click is refused; the asker's resumes the run.
    let status = post_hook(
        &c.base,
        "hook",
        json!({"user": "mallory", "conversation": "c", "button": approve}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    let status = post_hook(
        &c.base,
        "hook",
        json!({"user": "u", "conversation": "c", "button": approve}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    eventually(
        "the answer after the approval",
        Duration::from_secs(30),
        || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|(c, _)| c.text == "Reminder set for an hour from now.")
        },
    )
    .await;
    let texts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.text.clone())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t == "Only the person who asked can approve this."),
        "{texts:?}"
    );
    let runs = runs(&c.base).await;
    assert_eq!(runs[0]["status"]["state"], "done");
    assert_eq!(runs[0]["calls"]["call_1"]["approved"], true);
    let tasks: Value = common::get_json(format!(
        "{}/api/v1/tasks?kind=flowbot.deliver&state=queued",
        c.base
    ))
    .await;
    assert_eq!(
        tasks["items"].as_array().unwrap().len(),
        1,
        "the reminder, once: {tasks}"
    );
    c.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_question_survives_a_restart_on_sqlite() {
    an_approval_survives_the_agent(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_click_is_taken_by_another_agent_on_postgres() {
    an_approval_survives_the_agent(Backend::Postgres).await;
}
