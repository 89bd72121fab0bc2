//! The workflow guide's examples are real: every YAML block of docs/workflows.md and every
//! file in examples/workflows matches docs/workflow.schema.json and is applied by a running
//! server; the digest example runs against a local JSON endpoint, and the approval example
//! runs end to end through the web chat with its rules.

mod common;
mod harness;

use std::path::{Path, PathBuf};

use futures_util::SinkExt;
use harness::{Server, chat, next_frame, say, start_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// (where, YAML text) of every workflow in the guide and the examples, in order.
fn documents() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let guide = std::fs::read_to_string(root().join("docs/workflows.md")).expect("guide");
    let mut lines = guide.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim() == "```yaml" {
            let block: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim() != "```")
                .collect();
            out.push((format!("docs/workflows.md:{}", n + 1), block.join("\n")));
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples/workflows"))
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("example");
        out.push((f.display().to_string(), text));
    }
    out
}

async fn server(rules: Option<PathBuf>) -> Server {
    start_with(|c| {
        c.server.body_limit_bytes = 64 * 1024;
        c.secrets
            .0
            .insert("ops_token".into(), "ops-token-value".into());
        c.secrets
            .0
            .insert("deploy_token".into(), "deploy-token-value".into());
        if let Some(dir) = rules {
            c.rules.dir = Some(dir);
        }
        // The digest example fetches from a local endpoint, on loopback.
        c.network.allow = vec!["127.0.0.1".into()];
    })
    .await
}

async fn apply(s: &Server, text: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/v1/workflows", s.base))
        .header("content-type", "application/yaml")
        .body(text.to_owned())
        .send()
        .await
        .expect("apply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_workflow_matches_the_schema_and_applies() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/workflow.schema.json")).expect("schema"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let docs = documents();
    assert!(
        docs.len() >= 6,
        "the guide and the examples have workflows: {}",
        docs.len()
    );
    let s = server(None).await;
    for (at, text) in &docs {
        let value: Value = serde_norway::from_str(text).unwrap_or_else(|e| panic!("{at}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{at} does not match the schema: {errors:#?}"
        );
        let res = apply(&s, text).await;
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 201, "{at} was refused: {body}");
    }
    s.stop().await;
}

/// A JSON endpoint answering `issues` at /issues.
async fn issues_endpoint(issues: Value) -> String {
    let app = axum::Router::new().route(
        "/issues",
        axum::routing::get(move || {
            let issues = issues.clone();
            async move { axum::Json(issues) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/issues")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_example_posts_a_summary_to_the_chat() {
    let s = server(None).await;
    let text = std::fs::read_to_string(root().join("examples/workflows/daily-digest.yaml"))
        .expect("example");
    assert_eq!(apply(&s, &text).await.status().as_u16(), 201);
    let some =
        issues_endpoint(json!([{"title": "A"}, {"title": "B"}, {"title": "C"}, {"title": "D"}]))
            .await;
    let none = issues_endpoint(json!([])).await;
    let mut ws = chat(&s, "ops", "digest").await;
    for url in [&some, &none] {
        let res = reqwest::Client::new()
            .post(format!("{}/api/v1/workflows/daily-digest/runs", s.base))
            .json(&json!({"inputs": {"url": url, "conversation": "digest"}}))
            .send()
            .await
            .expect("start");
        assert_eq!(res.status().as_u16(), 202);
    }
    let first = next_frame(&mut ws, "message").await;
    let second = next_frame(&mut ws, "message").await;
    let mut texts = [
        first["text"].as_str().expect("text").to_owned(),
        second["text"].as_str().expect("text").to_owned(),
    ];
    texts.sort();
    assert_eq!(
        texts,
        [
            "4 open issues:\n• A\n• B\n• C".to_owned(),
            "No open issues today. 🎉".to_owned()
        ]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_example_waits_for_the_button_click() {
    let s = server(Some(root().join("examples/workflows/rules"))).await;
    let text = std::fs::read_to_string(root().join("examples/workflows/expense-approval.yaml"))
        .expect("example");
    assert_eq!(apply(&s, &text).await.status().as_u16(), 201);
    let mut ws = chat(&s, "ada", "expenses").await;
    for (amount, click, answer) in [
        ("12.5", 0, "Paid 12.5 € for team lunch (approved by ada)."),
        ("80.25", 1, "Declined by ada: team lunch."),
    ] {
        let ask = say(&mut ws, &format!("/expense {amount} team lunch")).await;
        assert_eq!(ask["text"], format!("Approve {amount} € for team lunch?"));
        let buttons = ask["buttons"].as_array().expect("buttons");
        assert_eq!(buttons.len(), 2);
        let value = buttons[click]["value"].as_str().expect("value");
        ws.send(Ws::text(
            json!({"type": "button", "value": value}).to_string(),
        ))
        .await
        .expect("click");
        assert_eq!(next_frame(&mut ws, "message").await["text"], answer);
    }
    s.stop().await;
}
