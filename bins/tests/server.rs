//! The server in-process on 127.0.0.1 with SQLite: HTTP bad input, webhooks with signatures
//! and callbacks, web chat over a real WebSocket, the REST API.

mod common;
mod harness;

use std::time::Duration;

use flowbot_channels::webhook::{SIGNATURE_HEADER, sign};
use flowbot_server::config::WebhookSettings;
use futures_util::{SinkExt, StreamExt};
use harness::{SECRET, next_frame, problem, start, start_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

fn signed(body: &str) -> String {
    sign(SECRET, chrono::Utc::now().timestamp(), body.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_accept_durably_verify_signatures_and_call_back() {
    let s = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/webhook/crm", s.base);
    let body = r#"{"user":"ada","conversation":"t-1","text":"/echo hello hooks","id":"ext-1"}"#;
    let post = |body: &'static str, sig: Option<String>, ct: &'static str| {
        let mut r = http.post(&url).header("content-type", ct).body(body);
        if let Some(sig) = sig {
            r = r.header(SIGNATURE_HEADER, sig);
        }
        r.send()
    };
    let res = post(body, Some(signed(body)), "application/json")
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 202);
    assert_eq!(res.json::<Value>().await.expect("json")["id"], "ext-1");
    // Redelivery with the same id is accepted again and handled once.
    let res = post(body, Some(signed(body)), "application/json")
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 202);

    // Both deliveries made one task; once it is done, every reply it makes has been sent
    // (a reply it could not send would wait as a `flowbot.deliver` task: there is none).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let tasks: Value = http
            .get(format!("{}/api/v1/tasks?kind=flowbot.inbound", s.base))
            .send()
            .await
            .expect("tasks")
            .json()
            .await
            .expect("json");
        let items = tasks["items"].as_array().expect("items");
        assert_eq!(
            items.len(),
            1,
            "one task for a redelivered message: {tasks}"
        );
        if items[0]["state"] == "done" {
            let deliveries: Value = http
                .get(format!("{}/api/v1/tasks?kind=flowbot.deliver", s.base))
                .send()
                .await
                .expect("tasks")
                .json()
                .await
                .expect("json");
            assert_eq!(deliveries["items"], json!([]), "{deliveries}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled in time: {tasks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let cbs = s.callbacks.lock().expect("lock");
        assert_eq!(cbs.len(), 1, "one reply for a redelivered message");
        let (cb, signature_ok) = &cbs[0];
        assert!(signature_ok, "callbacks are signed");
        assert_eq!(
            (
                cb.channel.as_str(),
                cb.conversation.as_str(),
                cb.text.as_str()
            ),
            ("crm", "t-1", "hello hooks")
        );
        assert_eq!(cb.reply_to.as_deref(), Some("ext-1"));
    }

    // Bad input: each answered with a problem naming the fault.
    let v = problem(
        post(body, None, "application/json").await.expect("post"),
        401,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("missing x-flowbot-signature")
    );
    let stale = sign(
        SECRET,
        chrono::Utc::now().timestamp() - 3600,
        body.as_bytes(),
    );
    let v = problem(
        post(body, Some(stale), "application/json")
            .await
            .expect("post"),
        401,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("replay window")
    );
    let forged = sign(
        "another-secret-0123456789",
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    problem(
        post(body, Some(forged), "application/json")
            .await
            .expect("post"),
        401,
    )
    .await;

    let open = format!("{}/hooks/webhook/open", s.base);
    let send = |body: String, ct: &'static str| {
        http.post(&open)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let v = problem(
        send("{\"user\":".into(), "application/json")
            .await
            .expect("post"),
        400,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .starts_with("invalid body")
    );
    let v = problem(
        send(
            r#"{"user":"u","conversation":"c"}"#.into(),
            "application/json",
        )
        .await
        .expect("post"),
        422,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("exactly one of 'text'"),
        "{v}"
    );
    let v = problem(
        send(
            r#"{"user":"","conversation":"c","text":"x"}"#.into(),
            "application/json",
        )
        .await
        .expect("post"),
        422,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("'user' must not be empty")
    );
    let v = problem(
        send(
            r#"{"user":"u","conversation":"c","text":"x"}"#.into(),
            "text/plain",
        )
        .await
        .expect("post"),
        415,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("application/json")
    );
    let big = format!(
        r#"{{"user":"u","conversation":"c","text":"{}"}}"#,
        "x".repeat(10_000)
    );
    problem(send(big, "application/json").await.expect("post"), 413).await;
    let v = problem(
        http.post(format!("{}/hooks/webhook/nobody", s.base))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("post"),
        404,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("no webhook channel named 'nobody'")
    );
    let ok = send(
        r#"{"user":"u","conversation":"c","text":"/echo fine"}"#.into(),
        "application/json; charset=utf-8",
    )
    .await
    .expect("post");
    assert_eq!(ok.status().as_u16(), 202);
    s.stop().await;
}

/// `/metrics` counts `failed` failures at the route stage, `answered` of them answered.
async fn assert_failures(base: &str, failed: u64, answered: u64) {
    let metrics = common::metrics(base).await;
    assert!(
        metrics.contains(&format!(
            "flowbot_pipeline_failures_total{{stage=\"route\"}} {failed}\n"
        )) && metrics.contains(&format!(
            "flowbot_pipeline_failures_answered_total {answered}\n"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_is_answered_never_met_with_silence() {
    // The refusal's own words: send_later refuses a zero delay.
    let s = start().await;
    let mut ws = harness::chat(&s, "ada", "refused").await;
    let answer = harness::say(&mut ws, "/remind 0s now").await;
    assert_eq!(
        answer["text"], "the delay must be more than zero",
        "{answer}"
    );
    assert_eq!(
        harness::say(&mut ws, "/echo still here").await["text"],
        "still here"
    );
    assert_failures(&s.base, 1, 1).await;
    s.stop().await;

    // The bot's own words for it, or its general apology when refusals are not shown.
    let s = start_with(|c| {
        c.bot.failure_reply = "That did not work, sorry.".into();
        c.bot.failure_reply_refusals = false;
    })
    .await;
    let mut ws = harness::chat(&s, "ada", "apology").await;
    assert_eq!(
        harness::say(&mut ws, "/remind 0s now").await["text"],
        "That did not work, sorry."
    );
    s.stop().await;

    // Silence only when asked for; the failure is still counted.
    let s = start_with(|c| {
        c.bot.failure_reply = String::new();
        c.bot.failure_reply_refusals = false;
    })
    .await;
    let mut ws = harness::chat(&s, "ada", "silent").await;
    ws.send(Ws::text(
        json!({"type": "message", "text": "/remind 0s now"}).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(
        harness::say(&mut ws, "/echo next").await["text"],
        "next",
        "no answer to the failed message"
    );
    assert_failures(&s.base, 1, 0).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_chat_round_trip_history_errors_and_reminders() {
    let s = start().await;
    let url = harness::chat_url(&s, "ada", "room1");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let welcome = next_frame(&mut ws, "welcome").await;
    assert_eq!(
        (welcome["conversation"].as_str(), welcome["user"].as_str()),
        (Some("room1"), Some("ada"))
    );
    assert_eq!(next_frame(&mut ws, "history").await["messages"], json!([]));

    ws.send(Ws::text(
        json!({"type": "message", "text": "/echo hi there"}).to_string(),
    ))
    .await
    .expect("send");
    next_frame(&mut ws, "typing").await;
    let m = next_frame(&mut ws, "message").await;
    assert_eq!(
        (m["text"].as_str(), m["conversation"].as_str()),
        (Some("hi there"), Some("room1"))
    );

    ws.send(Ws::text("{not json")).await.expect("send");
    assert!(
        next_frame(&mut ws, "error").await["detail"]
            .as_str()
            .expect("detail")
            .starts_with("malformed frame")
    );
    ws.send(Ws::text(
        json!({"type": "message", "text": "   "}).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(
        next_frame(&mut ws, "error").await["detail"],
        "empty message"
    );
    ws.send(Ws::text(
        json!({"type": "message", "text": "x".repeat(4001)}).to_string(),
    ))
    .await
    .expect("send");
    assert!(
        next_frame(&mut ws, "error").await["detail"]
            .as_str()
            .expect("detail")
            .contains("over the limit of 4000")
    );
    ws.send(Ws::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert!(
        next_frame(&mut ws, "error").await["detail"]
            .as_str()
            .expect("detail")
            .contains("binary")
    );

    ws.send(Ws::text(
        json!({"type": "message", "text": "/remind 1s stand up"}).to_string(),
    ))
    .await
    .expect("send");
    assert!(
        next_frame(&mut ws, "message").await["text"]
            .as_str()
            .expect("text")
            .starts_with("OK, I'll remind you")
    );
    assert_eq!(
        next_frame(&mut ws, "message").await["text"],
        "⏰ Reminder: stand up"
    );
    ws.close(None).await.expect("close");

    // A reconnect sees the conversation so far. A message enters the history once it has
    // been delivered, so the reminder the socket just received may land a moment later.
    let want = vec![
        "/echo hi there",
        "hi there",
        "/remind 1s stand up",
        "OK, I'll remind you in 1s.",
        "⏰ Reminder: stand up",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut ws = loop {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("reconnect");
        next_frame(&mut ws, "welcome").await;
        let history = next_frame(&mut ws, "history").await;
        let texts: Vec<String> = history["messages"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect();
        if texts == want || tokio::time::Instant::now() > deadline {
            assert_eq!(texts, want);
            break ws;
        }
        ws.close(None).await.expect("close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Bad ids are refused before the upgrade.
    let bad = format!("{}/ws/chat?user=a%20b", s.ws);
    assert!(tokio_tungstenite::connect_async(&bad).await.is_err());
    let res = reqwest::get(format!("{}/ws/chat?user=a%20b", s.base))
        .await
        .expect("get");
    assert_eq!(res.status().as_u16(), 400, "a plain GET is not an upgrade");
    // Shutdown closes the socket with "going away".
    s.stop.cancel();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Ws::Close(frame) = m {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(1001));
    tokio::time::timeout(Duration::from_secs(20), s.task)
        .await
        .expect("stopped")
        .expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_health_metrics_openapi_and_errors() {
    let s = start().await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", s.base)).send();
    assert_eq!(
        get("/healthz")
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")["status"],
        "ok"
    );
    assert_eq!(
        get("/readyz")
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")["status"],
        "ready"
    );

    // Traffic to look at.
    let res = http
        .post(format!("{}/hooks/webhook/open", s.base))
        .header("content-type", "application/json")
        .body(r#"{"user":"u9","conversation":"c9","text":"/echo api"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page: Value = get("/api/v1/conversations/open/c9/messages")
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if page["items"].as_array().is_some_and(|a| a.len() == 2) {
            assert_eq!(page["items"][1]["text"], "api");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reply stored: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let convs: Value = get("/api/v1/conversations?limit=10")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(convs["items"][0]["conversation"], "c9");
    let tasks: Value = get("/api/v1/tasks?state=done&kind=flowbot.inbound")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(tasks["items"].as_array().expect("items").len(), 1);
    let id = tasks["items"][0]["id"].as_i64().expect("id");
    assert_eq!(
        get(&format!("/api/v1/tasks/{id}"))
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")["state"],
        "done"
    );
    let v = problem(
        http.post(format!("{}/api/v1/tasks/{id}/cancel", s.base))
            .send()
            .await
            .expect("post"),
        409,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("only queued tasks")
    );
    problem(get("/api/v1/tasks/999999").await.expect("get"), 404).await;
    problem(get("/api/v1/tasks?state=sleeping").await.expect("get"), 400).await;
    problem(get("/api/v1/tasks?limit=5000").await.expect("get"), 400).await;
    problem(get("/api/v1/tasks?limit=abc").await.expect("get"), 400).await;
    problem(
        get("/api/v1/dead-letters?cursor=%21%21")
            .await
            .expect("get"),
        400,
    )
    .await;
    problem(
        http.post(format!("{}/api/v1/dead-letters/{id}/requeue", s.base))
            .send()
            .await
            .expect("post"),
        404,
    )
    .await;
    problem(
        get("/api/v1/sessions/open/c9/nobody").await.expect("get"),
        404,
    )
    .await;
    problem(get("/api/v1/nothing-here").await.expect("get"), 404).await;
    problem(
        http.delete(format!("{}/healthz", s.base))
            .send()
            .await
            .expect("delete"),
        405,
    )
    .await;

    // Schedules: create, read, pause, resume, delete; bad definitions are 422 with the reason.
    let schedules = format!("{}/api/v1/schedules", s.base);
    let res = http
        .post(&schedules)
        .json(&json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "kind": "flowbot.deliver", "misfire": "catch_up"}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(
        res.json::<Value>().await.expect("json")["def"]["timezone"],
        "Europe/Berlin"
    );
    let post = |body: Value| http.post(&schedules).json(&body).send();
    let v = problem(
        post(json!({"name": "x", "cron": "0 25 * * *", "kind": "k"}))
            .await
            .expect("post"),
        422,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("invalid cron schedule '0 25 * * *'")
    );
    let v = problem(
        post(json!({"name": "x", "cron": "0 3 * * *", "kind": "k", "timezone": "Mars/Base"}))
            .await
            .expect("post"),
        422,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("unknown time zone")
    );
    let v = problem(
        post(json!({"name": "x", "cron": "0 3 * * *", "kind": "k", "misfire": "later"}))
            .await
            .expect("post"),
        422,
    )
    .await;
    assert!(v["detail"].as_str().expect("detail").contains("misfire"));
    problem(
        post(json!({"name": "x", "cron": "0 3 * * *"}))
            .await
            .expect("post"),
        422,
    )
    .await;
    problem(
        http.post(&schedules)
            .header("content-type", "text/plain")
            .body("hi")
            .send()
            .await
            .expect("post"),
        415,
    )
    .await;
    problem(
        http.post(&schedules)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .expect("post"),
        400,
    )
    .await;
    assert_eq!(
        http.post(format!("{schedules}/nightly/pause"))
            .send()
            .await
            .expect("post")
            .status()
            .as_u16(),
        200
    );
    let st: Value = get("/api/v1/schedules/nightly")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(st["paused"], true);
    assert_eq!(
        http.post(format!("{schedules}/nightly/resume"))
            .send()
            .await
            .expect("post")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get("/api/v1/schedules")
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")["items"]
            .as_array()
            .expect("items")
            .len(),
        1
    );
    assert_eq!(
        http.delete(format!("{schedules}/nightly"))
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16(),
        204
    );
    problem(
        http.delete(format!("{schedules}/nightly"))
            .send()
            .await
            .expect("delete"),
        404,
    )
    .await;

    // Metrics in the Prometheus text format.
    let metrics = get("/metrics")
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("flowbot_messages_in_total{channel=\"open\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("flowbot_messages_out_total{channel=\"open\"} 1"));
    assert!(metrics.contains("flowbot_pipeline_latency_seconds_count 1"));
    assert!(metrics.contains("flowbot_tasks{state=\"done\"}"));
    assert!(metrics.contains("flowbot_task_run_seconds_bucket"));

    // Every route is in the OpenAPI document.
    let doc: Value = get("/api/v1/openapi.json")
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/conversations",
        "/api/v1/conversations/{channel}/{conversation}/messages",
        "/api/v1/sessions/{channel}/{conversation}/{user}",
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/dead-letters",
        "/api/v1/dead-letters/{id}/requeue",
        "/api/v1/schedules",
        "/api/v1/schedules/{name}",
        "/api/v1/schedules/{name}/pause",
        "/api/v1/schedules/{name}/resume",
        "/api/v1/rules",
        "/api/v1/rules/validate",
        "/api/v1/rules/{name}",
        "/chat",
        "/ws/chat",
        "/hooks/webhook/{channel}",
        "/api/v1/workflows",
        "/api/v1/workflows/validate",
        "/api/v1/workflows/{name}",
        "/api/v1/workflows/{name}/runs",
        "/api/v1/workflows/{name}/analytics",
        "/api/v1/runs",
        "/api/v1/runs/{id}",
        "/api/v1/runs/{id}/cancel",
        "/api/v1/runs/{id}/retry",
        "/hooks/trigger/{path}",
        "/api/v1/llm/runs",
        "/api/v1/llm/runs/{id}",
        "/api/v1/llm/usage",
        "/api/v1/llm/runs/{id}/feedback",
        "/api/v1/llm/prompts",
        "/api/v1/llm/prompts/{name}",
        "/api/v1/llm/prompts/{name}/activate",
        "/api/v1/llm/prompts/{name}/rollback",
        "/api/v1/llm/prompts/{name}/diff",
        "/api/v1/llm/prompts/{name}/split",
        "/api/v1/llm/prompts/{name}/stats",
        "/api/v1/whoami",
        "/api/v1/keys",
        "/api/v1/keys/{id}",
        "/api/v1/audit",
        "/api/v1/secrets",
        "/api/v1/secrets/{name}",
        "/api/v1/kb/collections",
        "/api/v1/kb/collections/{name}",
        "/api/v1/kb/collections/{name}/documents",
        "/api/v1/kb/collections/{name}/search",
        "/api/v1/kb/jobs",
        "/api/v1/kb/jobs/{id}",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        paths.len(),
        55,
        "no undocumented extras: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let preflight = |base: String| async move {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{base}/api/v1/tasks"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .expect("preflight")
    };
    let s = start().await;
    let res = preflight(s.base.clone()).await;
    assert!(
        res.headers().get("access-control-allow-origin").is_none(),
        "CORS off by default"
    );
    s.stop().await;
    let s = start_with(|c| c.server.cors_origins = vec!["https://app.example".into()]).await;
    let res = preflight(s.base.clone()).await;
    assert_eq!(
        res.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_callbacks_are_retried_through_the_queue() {
    let s = start_with(|c| {
        c.webhooks.insert(
            "down".into(),
            WebhookSettings {
                callback_url: Some(format!("http://{}/cb", common::REFUSED)),
                ..WebhookSettings::default()
            },
        );
    })
    .await;
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/hooks/webhook/down", s.base))
        .header("content-type", "application/json")
        .body(r#"{"user":"u","conversation":"c","text":"/echo anyone there?"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 202);
    // The direct send fails, the reply goes to the queue, and the queue's attempts fail too:
    // the delivery task is waiting for its next attempt with the error recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let tasks: Value = http
            .get(format!("{}/api/v1/tasks?kind=flowbot.deliver", s.base))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let retried = tasks["items"].as_array().expect("items").iter().any(|t| {
            t["state"] == "queued"
                && t["attempts"].as_u64().is_some_and(|a| a >= 1)
                && t["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("callback POST failed"))
                && t["payload"]["text"] == "anyone there?"
        });
        if retried {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retrying delivery task: {tasks}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
