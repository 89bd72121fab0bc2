//! The real binaries as processes: durability across SIGKILL, configuration errors, and the
//! distributed mode (two servers and two agents on PostgreSQL).

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    TempDir, callback_receiver, eventually, kv, post_hook, slow_endpoint, spawn, spawn_server,
    wait_ready,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

const SERVER: &str = env!("CARGO_BIN_EXE_flowbot-server");
const AGENT: &str = env!("CARGO_BIN_EXE_flowbot-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_survives_sigkill_right_after_its_202() {
    let dir = TempDir::new("flowbot-sigkill");
    let (cb, seen, _) = callback_receiver(None).await;
    let env = |agent: bool| {
        vec![
            kv(
                "FLOWBOT_DATABASE__URL",
                format!("sqlite://{}/flowbot.db", dir.0.display()),
            ),
            kv("FLOWBOT_SERVER__AGENT", agent.to_string()),
            kv("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "100"),
            kv("FLOWBOT_WEBHOOKS__HOOK__CALLBACK_URL", cb.clone()),
        ]
    };
    // First life: no agent, so nothing is processed before the kill.
    let log = dir.0.join("first.log");
    let (mut first, base) = spawn_server(&[], &env(false), &log).await;
    wait_ready(&base, &log).await;
    let status = post_hook(
        &base,
        "hook",
        json!({"user": "u", "conversation": "c", "text": "/echo survived"}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("reaped");
    assert!(seen.lock().expect("lock").is_empty());

    // Second life: the stored message is processed and the reply is called back.
    let log = dir.0.join("second.log");
    let (_second, base) = spawn_server(&[], &env(true), &log).await;
    wait_ready(&base, &log).await;
    eventually("the reply after restart", Duration::from_secs(20), || {
        !seen.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(seen.lock().expect("lock")[0].0.text, "survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_is_refused_at_start_with_the_key_path() {
    let dir = TempDir::new("flowbot-badconfig");
    let run = |args: Vec<String>, env: Vec<(String, String)>| async move {
        let out = tokio::process::Command::new(SERVER)
            .args(&args)
            .envs(env)
            .output()
            .await
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(vec![], vec![kv("FLOWBOT_SERVER__LISTEN", "nonsense")]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid configuration: server:") && err.contains("invalid socket address"),
        "{err}"
    );
    let file = dir.0.join("flowbot.toml");
    std::fs::write(&file, "[server]\nlisen = \"127.0.0.1:1\"\n").expect("write");
    let (code, err) = run(vec!["--config".into(), file.display().to_string()], vec![]).await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("invalid configuration: server.lisen: unknown field `lisen`"),
        "{err}"
    );
    let (code, err) = run(vec!["--bogus".into()], vec![]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown argument '--bogus'"), "{err}");
    let (code, err) = run(
        vec![],
        vec![kv("FLOWBOT_DATABASE__URL", "mysql://root:hunter2@db/x")],
    )
    .await;
    assert_eq!(code, Some(2));
    assert!(
        err.contains("database.url") && !err.contains("hunter2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_channel_talks_on_stdin_and_stdout() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = TempDir::new("flowbot-console");
    let mut child = tokio::process::Command::new(SERVER)
        .arg("--console")
        .env("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0")
        .env(
            "FLOWBOT_DATABASE__URL",
            format!("sqlite://{}/flowbot.db", dir.0.display()),
        )
        .env("FLOWBOT_LOG__LEVEL", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    stdin
        .write_all(b"/echo from the terminal\n")
        .await
        .expect("write");
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("bot: from the terminal"));
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open web chat on a server (`query`: empty for a new visitor, or `?token=…`); the socket,
/// the welcome frame and the history frame.
async fn chat(base_ws: &str, query: &str) -> (WsStream, Value, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base_ws}/ws/chat{query}"))
        .await
        .expect("connect");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    let history = next_json(&mut ws).await;
    assert_eq!(history["type"], "history");
    (ws, welcome, history)
}

async fn next_json(ws: &mut WsStream) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Ws::Text(t))) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// The next bot message (skipping typing frames).
async fn next_message(ws: &mut WsStream) -> String {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "message" {
            return v["text"].as_str().unwrap_or_default().to_owned();
        }
    }
}

async fn no_more_messages(ws: &mut WsStream) {
    let r = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            let v = next_json(ws).await;
            if v["type"] == "message" {
                return v;
            }
        }
    })
    .await;
    assert!(r.is_err(), "unexpected extra message: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_servers_and_agents_on_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let dir = TempDir::new("flowbot-distributed");
    let schema = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let (cb, seen, delay) = callback_receiver(None).await;
    let env = || {
        vec![
            kv("FLOWBOT_DATABASE__URL", url.clone()),
            kv("FLOWBOT_DATABASE__SCHEMA", schema.clone()),
            kv("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "200"),
            kv("FLOWBOT_WORKERS__LEASE_SECS", "2"),
            kv("FLOWBOT_WORKERS__CONCURRENCY", "4"),
            kv("FLOWBOT_WEBHOOKS__HOOK__CALLBACK_URL", cb.clone()),
        ]
    };
    // The first server creates the schema; then the rest start.
    let (_s1, b1) = spawn_server(&["--no-agent"], &env(), &dir.0.join("s1.log")).await;
    wait_ready(&b1, &dir.0.join("s1.log")).await;
    let (_s2, b2) = spawn_server(&["--no-agent"], &env(), &dir.0.join("s2.log")).await;
    let mut a1 = spawn(AGENT, &[], &env(), &dir.0.join("a1.log"));
    let a1_pid = a1.id().expect("agent pid");
    let _a2 = spawn(AGENT, &[], &env(), &dir.0.join("a2.log"));
    wait_ready(&b2, &dir.0.join("s2.log")).await;

    // Webhooks to both servers: every reply exactly once.
    for i in 0..20 {
        let base = if i % 2 == 0 { &b1 } else { &b2 };
        let body = json!({"user": format!("u{i}"), "conversation": format!("wc{}", i % 3), "text": format!("/echo w{i}"), "id": format!("w{i}")});
        assert_eq!(post_hook(base, "hook", body).await.as_u16(), 202);
    }
    // Web chat on both servers, with reminders delivered by the agents over the bus.
    let ws_base = |b: &str| b.replace("http://", "ws://");
    let (mut ws1, visitor_a, _) = chat(&ws_base(&b1), "").await;
    let (mut ws2, _, _) = chat(&ws_base(&b2), "").await;
    for (ws, tag) in [(&mut ws1, "a"), (&mut ws2, "b")] {
        ws.send(Ws::text(
            json!({"type": "message", "text": format!("/echo hello-{tag}")}).to_string(),
        ))
        .await
        .expect("send");
        assert_eq!(next_message(ws).await, format!("hello-{tag}"));
        ws.send(Ws::text(
            json!({"type": "message", "text": format!("/remind 1s ping-{tag}")}).to_string(),
        ))
        .await
        .expect("send");
        assert!(next_message(ws).await.starts_with("OK, I'll remind you"));
    }
    for (ws, tag) in [(&mut ws1, "a"), (&mut ws2, "b")] {
        assert_eq!(next_message(ws).await, format!("⏰ Reminder: ping-{tag}"));
        no_more_messages(ws).await;
    }
    // The token server 1 issued resumes that conversation on server 2: the servers share the
    // token secret (generated once, kept in the database).
    let token = visitor_a["token"].as_str().expect("visitor token");
    let (_, resumed, history) = chat(&ws_base(&b2), &format!("?token={token}")).await;
    assert_eq!(
        resumed["conversation"], visitor_a["conversation"],
        "{resumed}"
    );
    assert!(resumed.get("refused").is_none(), "{resumed}");
    assert_eq!(history["messages"][0]["text"], "/echo hello-a", "{history}");

    // A rule stored through one server's API answers on the other server (every process
    // reloads when the change is announced on the bus).
    let rule = json!({"name": "shared", "when": {"text": "shibboleth"}, "then": [{"reply": "stored through s1"}]});
    let res = reqwest::Client::new()
        .post(format!("{b1}/api/v1/rules"))
        .json(&rule)
        .send()
        .await
        .expect("create rule");
    assert_eq!(res.status().as_u16(), 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        ws2.send(Ws::text(
            json!({"type": "message", "text": "shibboleth"}).to_string(),
        ))
        .await
        .expect("send");
        let got = next_message(&mut ws2).await;
        if got == "stored through s1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server 2 never used the new rule: {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("20 webhook replies", Duration::from_secs(30), || {
        seen.lock().expect("lock").len() >= 20
    })
    .await;
    // Every webhook's task done and no reply left to send: the count is final.
    let http = reqwest::Client::new();
    drained(&http, &b1, Some("flowbot.inbound")).await;
    drained(&http, &b1, Some("flowbot.deliver")).await;
    {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (cb, _) in seen.lock().expect("lock").iter() {
            *counts.entry(cb.text.clone()).or_default() += 1;
        }
        for i in 0..20 {
            assert_eq!(
                counts.get(&format!("w{i}")),
                Some(&1),
                "reply w{i} exactly once: {counts:?}"
            );
        }
        assert_eq!(counts.len(), 20);
    }

    // Kill an agent while it is in the middle of tasks: they complete on the other agent.
    seen.lock().expect("lock").clear();
    delay.store(1500, Ordering::Relaxed);
    for i in 0..10 {
        let body =
            json!({"user": "k", "conversation": format!("kc{i}"), "text": format!("/echo k{i}")});
        assert_eq!(post_hook(&b1, "hook", body).await.as_u16(), 202);
    }
    let owner = format!("agent-{a1_pid}-");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let running: Value = http
            .get(format!("{b1}/api/v1/tasks?state=running&limit=100"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let mine = running["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|t| {
                t["lease_owner"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(&owner))
            })
            .count();
        if mine > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent 1 never held a running task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a1.start_kill().expect("SIGKILL agent 1");
    a1.wait().await.expect("reaped");
    delay.store(0, Ordering::Relaxed);
    eventually(
        "every task of the killed agent finished on the other",
        Duration::from_secs(40),
        || {
            let texts: Vec<String> = seen
                .lock()
                .expect("lock")
                .iter()
                .map(|(c, _)| c.text.clone())
                .collect();
            (0..10).all(|i| texts.contains(&format!("k{i}")))
        },
    )
    .await;
    drained(&http, &b2, None).await;
    let dead: Value = http
        .get(format!("{b2}/api/v1/dead-letters"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(dead["items"], json!([]), "nothing dead-lettered");

    common::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_run_finishes_on_another_agent_after_sigkill() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let dir = TempDir::new("flowbot-wf-sigkill");
    let schema = format!("wf_{}", uuid::Uuid::new_v4().simple());
    let (slow, calls) = slow_endpoint().await;
    let env = || {
        vec![
            kv("FLOWBOT_DATABASE__URL", url.clone()),
            kv("FLOWBOT_DATABASE__SCHEMA", schema.clone()),
            kv("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "200"),
            kv("FLOWBOT_WORKERS__LEASE_SECS", "2"),
            // The slow endpoint is on loopback, which the network guard refuses by default.
            kv("FLOWBOT_NETWORK__ALLOW", r#"["127.0.0.1"]"#),
        ]
    };
    let (_server, base) = spawn_server(&["--no-agent"], &env(), &dir.0.join("s.log")).await;
    wait_ready(&base, &dir.0.join("s.log")).await;
    let mut agents = HashMap::new();
    for name in ["a1", "a2"] {
        let child = spawn(AGENT, &[], &env(), &dir.0.join(format!("{name}.log")));
        agents.insert(child.id().expect("pid"), child);
    }
    let http = reqwest::Client::new();
    let definition = format!(
        "name: killed\nnodes:\n  - {{ id: before, action: log, with: {{ message: start }} }}\n  - {{ id: slow, action: http_request, with: {{ url: \"{slow}\" }}, retry: {{ max_attempts: 3, delay: 100ms }} }}\n  - {{ id: after, script: 'nodes.slow.output.body[\"call\"]' }}\nedges: [ {{ from: before, to: slow }}, {{ from: slow, to: after }} ]\n"
    );
    let res = http
        .post(format!("{base}/api/v1/workflows"))
        .header("content-type", "application/yaml")
        .body(definition)
        .send()
        .await
        .expect("apply");
    let status = res.status().as_u16();
    assert_eq!(status, 201, "{}", res.text().await.unwrap_or_default());
    let run: Value = http
        .post(format!("{base}/api/v1/workflows/killed/runs"))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let id = run["id"].as_str().expect("run id").to_owned();

    // Find the agent executing the slow node and kill it mid-request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let owner_pid = loop {
        let running: Value = http
            .get(format!(
                "{base}/api/v1/tasks?state=running&kind=flowbot.workflow.node"
            ))
            .send()
            .await
            .expect("tasks")
            .json()
            .await
            .expect("json");
        let pid = running["items"].as_array().and_then(|items| {
            items.iter().find_map(|t| {
                let owner = t["lease_owner"].as_str()?;
                owner
                    .strip_prefix("agent-")?
                    .split('-')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
        });
        if let Some(pid) = pid
            && calls.load(Ordering::SeqCst) == 1
        {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agent took the slow node: {running}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut victim = agents.remove(&owner_pid).expect("the owner is one of ours");
    victim.start_kill().expect("SIGKILL");
    victim.wait().await.expect("reaped");

    // The other agent takes the node over once the lease expires; the run completes and the
    // node's completion is recorded once, on its second attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let done = loop {
        let r: Value = http
            .get(format!("{base}/api/v1/runs/{id}"))
            .send()
            .await
            .expect("run")
            .json()
            .await
            .expect("json");
        if r["status"] != "running" {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run never finished: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], json!(2), "the second call's answer: {done}");
    let slow_node = done["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == "slow")
        .expect("slow node")
        .clone();
    assert_eq!(slow_node["status"], "completed");
    assert_eq!(slow_node["attempt"], 2, "{slow_node}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    common::drop_schema(&url, &schema).await;
}

/// A server SIGKILLed in the middle of a message: the restarted server finds the liveness
/// lock of the killed process free as it starts and handles the message again at once. The
/// lease is an hour long, so nothing but the lock can explain the second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_takes_over_its_in_flight_message_at_once() {
    let dir = TempDir::new("flowbot-liveness");
    let (cb, seen, delay) = callback_receiver(None).await;
    // The first delivery hangs: the message is in flight when the server is killed.
    delay.store(600_000, Ordering::Relaxed);
    let env = vec![
        kv(
            "FLOWBOT_DATABASE__URL",
            format!("sqlite://{}/flowbot.db", dir.0.display()),
        ),
        kv("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "100"),
        kv("FLOWBOT_WORKERS__LEASE_SECS", "3600"),
        kv("FLOWBOT_WEBHOOKS__HOOK__CALLBACK_URL", cb),
    ];
    let log = dir.0.join("first.log");
    let (mut first, base) = spawn_server(&[], &env, &log).await;
    wait_ready(&base, &log).await;
    let status = post_hook(
        &base,
        "hook",
        json!({"user": "u", "conversation": "c", "text": "/echo in flight"}),
    )
    .await;
    assert_eq!(status.as_u16(), 202);
    eventually("the reply on its way", Duration::from_secs(20), || {
        !seen.lock().expect("lock").is_empty()
    })
    .await;
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("reaped");
    delay.store(0, Ordering::Relaxed);

    let log = dir.0.join("second.log");
    let (_second, base) = spawn_server(&[], &env, &log).await;
    wait_ready(&base, &log).await;
    eventually(
        "the reply delivered by the restarted server",
        Duration::from_secs(30),
        || seen.lock().expect("lock").len() >= 2,
    )
    .await;
    let texts: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(c, _)| c.text.clone())
        .collect();
    assert_eq!(
        texts,
        ["in flight", "in flight"],
        "at least once, here twice"
    );
    // The message's task: done on its second attempt; the first was cut off by the end of
    // the process holding it, not by an expired lease.
    let tasks: Value = reqwest::get(format!("{base}/api/v1/tasks?kind=flowbot.inbound"))
        .await
        .expect("tasks")
        .json()
        .await
        .expect("json");
    let items = tasks["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{tasks}");
    let task = &items[0];
    assert_eq!(task["state"], "done", "{task}");
    assert_eq!(task["attempts"], 2, "{task}");
    assert!(
        task["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("worker ended")),
        "{task}"
    );
    // The killed process's lock file goes; the running server's own stays.
    let locks = dir.0.join("flowbot.db.workers");
    eventually("one lock file left", Duration::from_secs(20), || {
        std::fs::read_dir(&locks).map_or(0, |d| d.flatten().count()) == 1
    })
    .await;
}

/// Waits (20 s at most) until no task (of `kind`) is queued or running on the queue the
/// server at `base` shares.
async fn drained(http: &reqwest::Client, base: &str, kind: Option<&str>) {
    let kind = kind.map(|k| format!("&kind={k}")).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = Vec::new();
        for state in ["running", "queued"] {
            let page: Value = http
                .get(format!("{base}/api/v1/tasks?state={state}{kind}"))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            left.extend(page["items"].as_array().cloned().unwrap_or_default());
        }
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tasks left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
