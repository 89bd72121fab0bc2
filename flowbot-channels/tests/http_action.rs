//! `http_request` against a real HTTP server on 127.0.0.1, and its network guard.
#![cfg(all(feature = "http", feature = "web"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Redirect;
use axum::routing::{get, post};
use flowbot_channels::http_action::{HttpRequest, RefusedUrl};
use flowbot_core::net::{NetError, NetPolicy};
use flowbot_core::{ActionContext, ActionRegistry, Senders};
use serde_json::{Value, json};

/// A local server: its base URL, its port, and how many requests reached `/json`.
struct Fake {
    base: String,
    port: u16,
    hits: Arc<AtomicUsize>,
}

async fn fake() -> Fake {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app =
        Router::new()
            .route(
                "/json",
                get(move |Query(q): Query<Value>, headers: HeaderMap| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        axum::Json(json!({
                            "query": q,
                            "auth": headers.get("authorization").and_then(|v| v.to_str().ok()),
                        }))
                    }
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
            )
            // A redirect to `?to=`.
            .route(
                "/to",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    Redirect::temporary(&q["to"])
                }),
            )
            // Redirects to itself, forever.
            .route("/loop", get(|| async { Redirect::temporary("/loop") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake {
        base: format!("http://{addr}"),
        port: addr.port(),
        hits,
    }
}

async fn server() -> String {
    fake().await.base
}

/// Call `http_request` under `policy`; the error as the registry gives it.
async fn call_with(policy: NetPolicy, input: Value) -> Result<Value, flowbot_core::Error> {
    let mut registry = ActionRegistry::with_builtins();
    registry
        .register(HttpRequest::with_policy(Arc::new(policy)))
        .unwrap();
    let cx = ActionContext {
        store: None,
        senders: Arc::new(Senders::default()),
        source: None,
    };
    registry.call("http_request", &cx, input).await
}

/// Call with the local servers allowed.
async fn call(input: Value) -> Result<Value, String> {
    call_with(NetPolicy::allowing(["127.0.0.1"]).unwrap(), input)
        .await
        .map_err(|e| e.to_string())
}

/// The guard's refusal in an action error: its words, and the typed errors in its chain.
fn refusal(e: &flowbot_core::Error) -> String {
    let chain = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    });
    let refused = chain
        .clone()
        .find_map(|e| e.downcast_ref::<RefusedUrl>())
        .unwrap_or_else(|| panic!("not a refusal: {e}"));
    assert!(NetError::find(e).is_some_and(NetError::is_refusal), "{e}");
    assert!(e.to_string().contains(&refused.to_string()), "{e}");
    e.to_string()
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

#[tokio::test]
async fn the_default_policy_refuses_every_local_form_before_sending() {
    let local = fake().await;
    let port = local.port;
    for (written, shown, why) in [
        (
            format!("{}/json", local.base),
            format!("http://127.0.0.1:{port}/json"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://user:pw@127.0.0.1:{port}/json?token=t0ps3cret"),
            format!("http://127.0.0.1:{port}/json"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://2130706433:{port}/json"),
            format!("http://127.0.0.1:{port}/json"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://0177.0.0.1:{port}/json"),
            format!("http://127.0.0.1:{port}/json"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://0x7f.1:{port}/json"),
            format!("http://127.0.0.1:{port}/json"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/json"),
            format!("http://[::ffff:7f00:1]:{port}/json"),
            "::ffff:127.0.0.1 is a loopback address (IPv4-mapped 127.0.0.1)",
        ),
        (
            "http://[::1]/".to_owned(),
            "http://[::1]/".to_owned(),
            "::1 is a loopback address",
        ),
        (
            "http://10.0.0.5/x".to_owned(),
            "http://10.0.0.5/x".to_owned(),
            "10.0.0.5 is a private address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://[fd00:ec2::254]/".to_owned(),
            "http://[fd00:ec2::254]/".to_owned(),
            "fd00:ec2::254 is a cloud metadata address",
        ),
        (
            "http://[fe80::1]/".to_owned(),
            "http://[fe80::1]/".to_owned(),
            "fe80::1 is a link-local address",
        ),
        (
            "http://[64:ff9b::a00:5]/".to_owned(),
            "http://[64:ff9b::a00:5]/".to_owned(),
            "64:ff9b::a00:5 is a private address (NAT64 10.0.0.5)",
        ),
        (
            "http://[2002:a00:5::]/".to_owned(),
            "http://[2002:a00:5::]/".to_owned(),
            "2002:a00:5:: is a private address (6to4 10.0.0.5)",
        ),
    ] {
        let e = call_with(NetPolicy::default(), json!({"url": written}))
            .await
            .unwrap_err();
        let text = refusal(&e);
        assert!(
            text.contains(&format!(
                "{shown} refused: {why}; allow it in [network] allow"
            )),
            "{written}: {text}"
        );
        assert!(
            !text.contains("pw") && !text.contains("t0ps3cret"),
            "{text}"
        );
    }
    assert_eq!(local.hits.load(Ordering::SeqCst), 0, "nothing was sent");
    // HttpRequest::new() is the same default.
    assert_eq!(HttpRequest::new().policy(), &NetPolicy::default());
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_on_the_address_connected() {
    let local = fake().await;
    let url = format!("http://localhost:{}/json", local.port);
    let e = call_with(NetPolicy::default(), json!({"url": url}))
        .await
        .unwrap_err();
    let text = refusal(&e);
    assert!(
        text.contains(&format!("{url} refused: localhost resolves to "))
            && text.contains(", a loopback address; allow it in [network] allow"),
        "{text}"
    );
    assert_eq!(local.hits.load(Ordering::SeqCst), 0);
    // The address allowed without a port opens the name that resolves to it; the name
    // allowed opens it as well.
    for allow in ["127.0.0.1", "localhost"] {
        let out = call_with(NetPolicy::allowing([allow]).unwrap(), json!({"url": url}))
            .await
            .unwrap();
        assert_eq!(out["status"], 200, "{allow}");
    }
    assert_eq!(local.hits.load(Ordering::SeqCst), 2);
    // A name listed with another port stays refused on this one.
    let e = call_with(
        NetPolicy::allowing(["localhost:1"]).unwrap(),
        json!({"url": url}),
    )
    .await
    .unwrap_err();
    assert!(
        refusal(&e).contains("localhost is allowed on port 1 only, not on port"),
        "{e}"
    );
}

#[tokio::test]
async fn an_entry_with_a_port_opens_that_port_only() {
    let local = fake().await;
    let other = fake().await;
    let policy = || NetPolicy::allowing([format!("127.0.0.1:{}", local.port)]).unwrap();
    let out = call_with(policy(), json!({"url": format!("{}/json", local.base)}))
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    let e = call_with(policy(), json!({"url": format!("{}/json", other.base)}))
        .await
        .unwrap_err();
    assert!(
        refusal(&e).contains("127.0.0.1 is a loopback address"),
        "{e}"
    );
    assert_eq!(
        (
            local.hits.load(Ordering::SeqCst),
            other.hits.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
}

#[tokio::test]
async fn redirects_are_checked_at_every_hop() {
    let local = fake().await;
    let other = fake().await;
    let policy = || NetPolicy::allowing([format!("127.0.0.1:{}", local.port)]).unwrap();
    let via = |target: &str| {
        let mut u = reqwest::Url::parse(&format!("{}/to", local.base)).unwrap();
        u.query_pairs_mut().append_pair("to", target);
        json!({"url": u.as_str()})
    };
    // A redirect to an allowed place is followed.
    let out = call_with(policy(), via(&format!("{}/json?q=1", local.base)))
        .await
        .unwrap();
    assert_eq!(out["body"]["query"], json!({"q": "1"}));
    assert_eq!(local.hits.load(Ordering::SeqCst), 1);

    let from = format!("http://127.0.0.1:{}/to", local.port);
    for (target, hop, why) in [
        (
            format!("{}/json", other.base),
            format!("redirect to {}/json refused: ", other.base),
            "127.0.0.1 is a loopback address",
        ),
        (
            "http://[::1]/admin".to_owned(),
            "redirect to http://[::1]/admin refused: ".to_owned(),
            "::1 is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/iam".to_owned(),
            "redirect to http://169.254.169.254/latest/meta-data/iam refused: ".to_owned(),
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://user:pw@10.0.0.5/?token=t0ps3cret".to_owned(),
            "redirect to http://10.0.0.5/ refused: ".to_owned(),
            "10.0.0.5 is a private address",
        ),
        (
            "gopher://127.0.0.1:70/_SET".to_owned(),
            "redirect to gopher://127.0.0.1:70/_SET refused: ".to_owned(),
            "the scheme 'gopher' is not allowed",
        ),
    ] {
        let e = call_with(policy(), via(&target)).await.unwrap_err();
        let text = refusal(&e);
        assert!(
            text.contains(&format!("{from} refused: {hop}{why}")),
            "{target}: {text}"
        );
        assert!(
            !text.contains("pw@") && !text.contains("t0ps3cret"),
            "{text}"
        );
    }
    // A location without a host is no redirect to follow: the 307 is the answer.
    let e = call_with(policy(), via("file:///etc/passwd"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 307 (redirect)"), "{e}");
    // A hop to a name is checked by the resolver when it connects.
    let e = call_with(
        policy(),
        via(&format!("http://localhost:{}/json", other.port)),
    )
    .await
    .unwrap_err();
    let text = refusal(&e);
    assert!(
        text.contains("localhost resolves to ") && text.contains("a loopback address"),
        "{text}"
    );
    assert_eq!(other.hits.load(Ordering::SeqCst), 0, "no hop reached it");

    let e = call_with(policy(), json!({"url": format!("{}/loop", local.base)}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("more than 10 redirects"), "{e}");
}
