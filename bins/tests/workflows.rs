//! Workflows through the server: the REST API (apply, list, get, delete, runs, cancel,
//! retry, analytics), trigger hooks with a bearer token and with an HMAC signature, a rule
//! that runs a workflow which answers in the chat, and an `http_request` node (and one the
//! network guard refuses).

mod common;
mod harness;

use std::time::Duration;

use harness::{chat, problem, say, start_with};
use serde_json::{Value, json};

const TOKEN: &str = "hook-token-0123456789";
const HMAC_SECRET: &str = "hmac-secret-0123456789";

async fn server() -> harness::Server {
    start_with(|c| {
        c.secrets.0.insert("hook_token".into(), TOKEN.into());
        c.secrets.0.insert("hmac_secret".into(), HMAC_SECRET.into());
    })
    .await
}

const GREET: &str = r#"
name: greet
inputs:
  who: { type: string, required: true }
nodes:
  - { id: hello, action: log, with: { message: "hello {{ inputs.who }}" } }
  - { id: shout, script: 'inputs.who.to_upper()' }
edges: [ { from: hello, to: shout } ]
output: { greeted: "{{ nodes.shout.output }}" }
triggers:
  - hook: greet-token
    token_secret: hook_token
  - hook: greet-signed
    hmac_secret: hmac_secret
"#;

async fn json_of(res: reqwest::Response, status: u16) -> Value {
    let code = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(code, status, "{body}");
    body
}

/// Poll a run until it is final.
async fn finished(http: &reqwest::Client, base: &str, id: &str) -> Value {
    for _ in 0..300 {
        let run = json_of(
            http.get(format!("{base}/api/v1/runs/{id}"))
                .send()
                .await
                .expect("get run"),
            200,
        )
        .await;
        if ["completed", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_applied_run_and_inspected_through_the_api() {
    let s = server().await;
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", s.base);
    let yaml = |body: &str| {
        http.post(api("/workflows"))
            .header("content-type", "application/yaml")
            .body(body.to_owned())
    };

    let applied = json_of(yaml(GREET).send().await.expect("apply"), 201).await;
    assert_eq!(
        applied,
        json!({"name": "greet", "version": 1, "created": true})
    );
    let again = json_of(yaml(GREET).send().await.expect("apply again"), 200).await;
    assert_eq!(again["created"], false);
    // The same workflow as JSON, changed: version 2.
    let mut spec: Value = json_of(
        http.get(api("/workflows/greet")).send().await.expect("get"),
        200,
    )
    .await["definition"]
        .clone();
    spec["description"] = json!("now with a description");
    let v2 = json_of(
        http.post(api("/workflows"))
            .json(&spec)
            .send()
            .await
            .expect("apply json"),
        201,
    )
    .await;
    assert_eq!(v2["version"], 2);
    let v1 = json_of(
        http.get(api("/workflows/greet?version=1"))
            .send()
            .await
            .expect("get v1"),
        200,
    )
    .await;
    assert!(v1["definition"].get("description").is_none());
    let list = json_of(http.get(api("/workflows")).send().await.expect("list"), 200).await;
    assert_eq!(list["items"][0]["name"], "greet");
    assert_eq!(list["items"][0]["version"], 2);

    // A run through the API, and its timeline.
    let run = json_of(
        http.post(api("/workflows/greet/runs"))
            .json(&json!({"inputs": {"who": "ada"}}))
            .send()
            .await
            .expect("start"),
        202,
    )
    .await;
    let done = finished(&http, &s.base, run["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], json!({"greeted": "ADA"}));
    assert_eq!(done["version"], 2);
    assert_eq!(done["trigger"]["kind"], "manual");
    let nodes: Vec<&str> = done["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node"].as_str().expect("node"))
        .collect();
    assert_eq!(nodes, ["hello", "shout"]);
    assert_eq!(done["nodes"][0]["input"], json!({"message": "hello ada"}));

    let runs = json_of(
        http.get(api("/runs?workflow=greet&status=completed&limit=5"))
            .send()
            .await
            .expect("runs"),
        200,
    )
    .await;
    assert_eq!(runs["items"].as_array().expect("items").len(), 1);
    let stats = json_of(
        http.get(api("/workflows/greet/analytics"))
            .send()
            .await
            .expect("analytics"),
        200,
    )
    .await;
    assert_eq!(stats["runs"]["counts"]["completed"], 1);
    assert_eq!(stats["runs"]["success_rate"], 1.0);
    assert_eq!(stats["nodes"]["shout"]["counts"]["completed"], 1);

    // Retrying a completed run is a conflict; cancelling it answers its status.
    let id = done["id"].as_str().expect("id");
    problem(
        http.post(api(&format!("/runs/{id}/retry")))
            .send()
            .await
            .expect("retry"),
        409,
    )
    .await;
    let cancelled = json_of(
        http.post(api(&format!("/runs/{id}/cancel")))
            .send()
            .await
            .expect("cancel"),
        200,
    )
    .await;
    assert_eq!(cancelled["status"], "completed");

    // Delete: gone from the listing, the run stays.
    let res = http
        .delete(api("/workflows/greet"))
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 204);
    problem(
        http.get(api("/workflows/greet")).send().await.expect("get"),
        404,
    )
    .await;
    json_of(
        http.get(api(&format!("/runs/{id}")))
            .send()
            .await
            .expect("run"),
        200,
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_and_requests_get_problems_naming_the_fault() {
    let s = server().await;
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", s.base);

    let bad = r#"
name: bad
nodes:
  - { id: a, action: nope }
  - { id: b, action: log, with: { message: "{{ nodes.zz.output }}" } }
edges: [ { from: a, to: b }, { from: b, to: a } ]
"#;
    let p = problem(
        http.post(api("/workflows"))
            .header("content-type", "application/yaml")
            .body(bad)
            .send()
            .await
            .expect("apply"),
        422,
    )
    .await;
    assert!(
        p["detail"].as_str().expect("detail").contains("cycle"),
        "{p}"
    );
    let bad_graph_fixed = bad.replace("{ from: b, to: a }", "{ from: a, to: b, when: true }");
    let p = problem(
        http.post(api("/workflows/validate"))
            .header("content-type", "application/yaml")
            .body(bad_graph_fixed)
            .send()
            .await
            .expect("validate"),
        422,
    )
    .await;
    let errors = p["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["node"] == "a" && e["field"] == "action"),
        "{p}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["node"] == "b" && e["field"] == "with.message"),
        "{p}"
    );
    let p = problem(
        http.post(api("/workflows"))
            .header("content-type", "application/yaml")
            .body("name: x\nnodes: [ { id: a, acton: log } ]\n")
            .send()
            .await
            .expect("typo"),
        422,
    )
    .await;
    assert!(
        p["detail"].as_str().expect("detail").contains("acton"),
        "{p}"
    );
    problem(
        http.post(api("/workflows"))
            .header("content-type", "text/csv")
            .body("a,b")
            .send()
            .await
            .expect("csv"),
        415,
    )
    .await;
    problem(
        http.post(api("/workflows"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("broken json"),
        422,
    )
    .await;
    let ok = http
        .post(api("/workflows/validate"))
        .header("content-type", "application/yaml")
        .body(GREET)
        .send()
        .await
        .expect("validate good");
    assert_eq!(ok.status().as_u16(), 200);

    // Runs of unknown workflows, bad inputs, bad bodies, bad filters.
    problem(
        http.post(api("/workflows/ghost/runs"))
            .send()
            .await
            .expect("ghost"),
        404,
    )
    .await;
    http.post(api("/workflows"))
        .header("content-type", "application/yaml")
        .body(GREET)
        .send()
        .await
        .expect("apply");
    let p = problem(
        http.post(api("/workflows/greet/runs"))
            .json(&json!({"inputs": {"who": 7}}))
            .send()
            .await
            .expect("bad input"),
        422,
    )
    .await;
    assert!(
        p["detail"].as_str().expect("detail").contains("inputs.who"),
        "{p}"
    );
    problem(
        http.post(api("/workflows/greet/runs"))
            .json(&json!({"who": "ada"}))
            .send()
            .await
            .expect("unwrapped inputs"),
        400,
    )
    .await;
    problem(
        http.post(api("/workflows/greet/runs"))
            .body("[1")
            .send()
            .await
            .expect("broken"),
        400,
    )
    .await;
    problem(
        http.get(api("/runs?status=sleepy"))
            .send()
            .await
            .expect("status"),
        400,
    )
    .await;
    problem(
        http.get(api("/runs?cursor=%%%"))
            .send()
            .await
            .expect("cursor"),
        400,
    )
    .await;
    problem(http.get(api("/runs/nope")).send().await.expect("run"), 404).await;
    problem(
        http.post(api("/runs/nope/cancel"))
            .send()
            .await
            .expect("cancel"),
        404,
    )
    .await;
    problem(
        http.get(api("/workflows/greet/analytics?since=yesterday"))
            .send()
            .await
            .expect("since"),
        400,
    )
    .await;
    s.stop().await;
}

/// The issue's example: a delay of 300000 years is refused when the workflow is applied,
/// naming the node and the field, instead of reaching date arithmetic when it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_past_the_limit_is_refused_at_apply() {
    let s = server().await;
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", s.base);
    let far = "name: far\nnodes:\n  - id: later\n    delay: 300000y\n";
    let p = problem(
        http.post(api("/workflows"))
            .header("content-type", "application/yaml")
            .body(far)
            .send()
            .await
            .expect("apply"),
        422,
    )
    .await;
    let detail = p["detail"].as_str().expect("detail");
    assert!(
        detail.contains("node `later`, field `delay`") && detail.contains("3650 days"),
        "{p}"
    );
    let errors = p["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["node"] == "later" && e["field"] == "delay"),
        "{p}"
    );
    // Nothing was stored, so nothing can be started.
    problem(
        http.post(api("/workflows/far/runs"))
            .send()
            .await
            .expect("start"),
        404,
    )
    .await;
    // Within the limit it is applied, and a run starts and waits.
    let near = far.replace("300000y", "3650d");
    json_of(
        http.post(api("/workflows"))
            .header("content-type", "application/yaml")
            .body(near)
            .send()
            .await
            .expect("apply near"),
        201,
    )
    .await;
    let run = json_of(
        http.post(api("/workflows/far/runs"))
            .send()
            .await
            .expect("start near"),
        202,
    )
    .await;
    assert!(run["id"].is_string(), "{run}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_hooks_need_the_token_or_a_valid_signature() {
    let s = server().await;
    let http = reqwest::Client::new();
    http.post(format!("{}/api/v1/workflows", s.base))
        .header("content-type", "application/yaml")
        .body(GREET)
        .send()
        .await
        .expect("apply");
    let hook = |p: &str| format!("{}/hooks/trigger/{p}", s.base);
    let body = json!({"who": "grace"}).to_string();

    let started = json_of(
        http.post(hook("greet-token"))
            .bearer_auth(TOKEN)
            .body(body.clone())
            .send()
            .await
            .expect("token"),
        202,
    )
    .await;
    let run = finished(&http, &s.base, started["run_id"].as_str().expect("run id")).await;
    assert_eq!(run["output"], json!({"greeted": "GRACE"}));
    assert_eq!(
        run["trigger"],
        json!({"kind": "hook", "hook": "greet-token"})
    );
    for (auth, why) in [(Some("Bearer wrong"), "does not match"), (None, "missing")] {
        let mut req = http.post(hook("greet-token")).body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let p = problem(req.send().await.expect("bad token"), 401).await;
        assert!(p["detail"].as_str().expect("detail").contains(why), "{p}");
    }

    let now = chrono::Utc::now().timestamp();
    let sig = flowbot_channels::webhook::sign(HMAC_SECRET, now, body.as_bytes());
    let started = json_of(
        http.post(hook("greet-signed"))
            .header(flowbot_channels::webhook::SIGNATURE_HEADER, sig)
            .body(body.clone())
            .send()
            .await
            .expect("signed"),
        202,
    )
    .await;
    finished(&http, &s.base, started["run_id"].as_str().expect("run id")).await;
    let forged = flowbot_channels::webhook::sign("not-the-secret", now, body.as_bytes());
    let old = flowbot_channels::webhook::sign(HMAC_SECRET, now - 3600, body.as_bytes());
    for (sig, why) in [(forged, "does not match"), (old, "replay window")] {
        let p = problem(
            http.post(hook("greet-signed"))
                .header(flowbot_channels::webhook::SIGNATURE_HEADER, sig)
                .body(body.clone())
                .send()
                .await
                .expect("bad signature"),
            401,
        )
        .await;
        assert!(p["detail"].as_str().expect("detail").contains(why), "{p}");
    }
    problem(
        http.post(hook("nobody")).send().await.expect("unknown"),
        404,
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_runs_a_workflow_that_answers_in_the_chat() {
    // The workflow calls the server's own /healthz, on loopback.
    let s = start_with(|c| c.network.allow = vec!["127.0.0.1".into()]).await;
    let http = reqwest::Client::new();
    let approve = format!(
        r#"
name: approve
inputs:
  item: {{ type: string, required: true }}
nodes:
  - {{ id: check, action: http_request, with: {{ url: "{}/healthz" }} }}
  - {{ id: tell, action: send_message, with: {{ text: "{{{{ inputs.item }}}} approved (health {{{{ nodes.check.output.status }}}})" }} }}
edges: [ {{ from: check, to: tell }} ]
"#,
        s.base
    );
    json_of(
        http.post(format!("{}/api/v1/workflows", s.base))
            .header("content-type", "application/yaml")
            .body(approve)
            .send()
            .await
            .expect("apply"),
        201,
    )
    .await;
    let rule = json!({
        "name": "approve",
        "when": {"command": "approve <item...>"},
        "then": [
            {"workflow": {"name": "approve", "input": {"item": "{{ args.item }}"}, "save_as": "last_run"}},
            {"reply": "started"}
        ]
    });
    let res = http
        .post(format!("{}/api/v1/rules", s.base))
        .json(&rule)
        .send()
        .await
        .expect("rule");
    assert_eq!(
        res.status().as_u16(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let mut ws = chat(&s, "ada", "approvals").await;
    assert_eq!(say(&mut ws, "/approve the budget").await["text"], "started");
    let answer = harness::next_frame(&mut ws, "message").await;
    assert_eq!(answer["text"], "the budget approved (health 200)");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_to_a_private_address_fails_with_the_reason_in_the_run() {
    let s = harness::start().await;
    let http = reqwest::Client::new();
    let def = r#"
name: probe
nodes:
  - { id: fetch, action: http_request, with: { url: "http://10.0.0.5/admin?token=t0ps3cret" }, retry: { max_attempts: 5, backoff: fixed, delay: 1h } }
"#;
    json_of(
        http.post(format!("{}/api/v1/workflows", s.base))
            .header("content-type", "application/yaml")
            .body(def)
            .send()
            .await
            .expect("apply"),
        201,
    )
    .await;
    let run = json_of(
        http.post(format!("{}/api/v1/workflows/probe/runs", s.base))
            .send()
            .await
            .expect("start"),
        202,
    )
    .await;
    let done = finished(&http, &s.base, run["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["nodes"][0]["error"]
        .as_str()
        .expect("the node's error");
    assert!(
        error.contains(
            "http://10.0.0.5/admin refused: 10.0.0.5 is a private address; allow it in [network] allow"
        ),
        "{done}"
    );
    assert!(!error.contains("t0ps3cret"), "{error}");
    // Another attempt cannot help: the node failed at once, whatever its retry policy.
    assert_eq!(done["nodes"][0]["attempt"], 1, "{done}");
    s.stop().await;
}

/// A local ntfy server: what it received, as (topic, title header, body).
async fn fake_ntfy() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
) {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>> =
        std::sync::Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/{topic}",
        axum::routing::post(
            move |axum::extract::Path(topic): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: String| {
                let s = s.clone();
                async move {
                    let title = headers
                        .get("title")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    s.lock().expect("lock").push((topic, title, body));
                    axum::Json(json!({"id": "n1"}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_node_reaches_the_configured_notifier() {
    let (ntfy, seen) = fake_ntfy().await;
    let s = start_with(|c| {
        c.notifiers.insert(
            "ops".into(),
            flowbot_server::config::NotifierSettings::Ntfy {
                base_url: ntfy.clone(),
                topic: "alerts".into(),
                token: None,
            },
        );
    })
    .await;
    let http = reqwest::Client::new();
    let def = r#"
name: alert
inputs:
  text: { type: string, required: true }
nodes:
  - { id: tell, action: notify, with: { notifier: ops, title: "FlowBot", message: "{{ inputs.text }}", priority: high } }
"#;
    json_of(
        http.post(format!("{}/api/v1/workflows", s.base))
            .header("content-type", "application/yaml")
            .body(def)
            .send()
            .await
            .expect("apply"),
        201,
    )
    .await;
    // An unknown notifier is caught when the workflow is applied.
    let p = problem(
        http.post(format!("{}/api/v1/workflows", s.base))
            .header("content-type", "application/yaml")
            .body(def.replace("notifier: ops", "notifier: pager"))
            .send()
            .await
            .expect("apply"),
        422,
    )
    .await;
    assert!(
        p["errors"][0]["field"] == "with.notifier",
        "the field is named: {p}"
    );
    let run = json_of(
        http.post(format!("{}/api/v1/workflows/alert/runs", s.base))
            .json(&json!({"inputs": {"text": "disk almost full"}}))
            .send()
            .await
            .expect("start"),
        202,
    )
    .await;
    let done = finished(&http, &s.base, run["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["response"], json!({"id": "n1"}));
    assert_eq!(
        seen.lock().expect("lock").clone(),
        vec![(
            "alerts".to_owned(),
            "FlowBot".to_owned(),
            "disk almost full".to_owned()
        )]
    );
    s.stop().await;
}
