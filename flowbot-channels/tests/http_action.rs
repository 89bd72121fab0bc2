//! `http_request` against a real HTTP server on 127.0.0.1.
#![cfg(all(feature = "http", feature = "web"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use flowbot_channels::http_action::HttpRequest;
use flowbot_core::{ActionContext, ActionRegistry, Senders};
use serde_json::{Value, json};

async fn server() -> String {
    let app = Router::new()
        .route(
            "/json",
            get(|Query(q): Query<Value>, headers: HeaderMap| async move {
                axum::Json(json!({
                    "query": q,
                    "auth": headers.get("authorization").and_then(|v| v.to_str().ok()),
                }))
            }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: Bytes| async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                format!("{ct}|{}", String::from_utf8_lossy(&body))
            }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
        )
        .route(
            "/broken",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn call(input: Value) -> Result<Value, String> {
    let mut registry = ActionRegistry::with_builtins();
    registry.register(HttpRequest::new()).unwrap();
    let cx = ActionContext {
        store: None,
        senders: Arc::new(Senders::default()),
        source: None,
    };
    registry
        .call("http_request", &cx, input)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn requests_map_status_headers_and_body() {
    let base = server().await;
    let out = call(json!({
        "url": format!("{base}/json"),
        "query": {"q": "rust", "page": 2},
        "headers": {"Authorization": "Bearer abc"}
    }))
    .await
    .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["ok"], true);
    assert_eq!(
        out["body"],
        json!({"query": {"q": "rust", "page": "2"}, "auth": "Bearer abc"})
    );
    assert!(
        out["headers"]["content-type"]
            .as_str()
            .unwrap()
            .contains("json")
    );

    let out = call(json!({"url": format!("{base}/echo"), "method": "POST", "json": {"a": 1}}))
        .await
        .unwrap();
    assert_eq!(out["body"], "application/json|{\"a\":1}");
    let out = call(
        json!({"url": format!("{base}/echo"), "method": "POST", "form": {"a": "b c", "n": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(out["body"], "application/x-www-form-urlencoded|a=b+c&n=1");
    let out = call(json!({"url": format!("{base}/echo"), "method": "POST", "body": "plain"}))
        .await
        .unwrap();
    assert_eq!(out["body"], "|plain");
}

#[tokio::test]
async fn errors_name_the_status_class_or_the_fault() {
    let base = server().await;
    let e = call(json!({"url": format!("{base}/missing")}))
        .await
        .unwrap_err();
    assert!(e.contains("HTTP 404 (client error): no such thing"), "{e}");
    let e = call(json!({"url": format!("{base}/broken")}))
        .await
        .unwrap_err();
    assert!(e.contains("HTTP 502 (server error): upstream down"), "{e}");
    // Without error_on_status every answer is an output.
    let out = call(json!({"url": format!("{base}/missing"), "error_on_status": false}))
        .await
        .unwrap();
    assert_eq!(
        (out["status"].clone(), out["ok"].clone()),
        (json!(404), json!(false))
    );
    let e = call(json!({"url": format!("{base}/slow"), "timeout_ms": 100}))
        .await
        .unwrap_err();
    assert!(e.contains("no answer within 100 ms"), "{e}");
    let e = call(json!({"url": "http://127.0.0.1:1/closed"}))
        .await
        .unwrap_err();
    assert!(e.contains("127.0.0.1:1"), "{e}");
    let e = call(json!({"url": "ftp://example"})).await.unwrap_err();
    assert!(e.contains("invalid input") && e.contains("url"), "{e}");
    let e = call(json!({"url": format!("{base}/echo"), "json": {}, "body": "x"}))
        .await
        .unwrap_err();
    assert!(e.contains("give one body"), "{e}");
}
