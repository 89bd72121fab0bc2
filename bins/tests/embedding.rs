//! The server as a library: FlowBot's routes mounted in an application's own axum app, with
//! Rust handlers as the router, served by the application on its own listener.

mod common;
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use common::TempDir;
use flowbot_core::{CancellationToken, Handlers, Reply};
use flowbot_server::config::Config;
use flowbot_server::run::Server;
use harness::{WEB_SECRET, chat_at, say};

/// A server on loopback (port 0) with SQLite in `dir` and web chat tokens signed with the
/// test secret.
fn config_in(dir: &TempDir) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.database.url = format!("sqlite://{}/flowbot.db", dir.0.display());
    config.web.secret = Some(WEB_SECRET.into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowbot_routes_mount_in_an_applications_axum_app_with_rust_handlers() {
    let dir = TempDir::new("flowbot-embedding-test");
    let config = config_in(&dir);
    let handlers = Handlers::new("pong")
        .command("ping", |cx| async move { Ok(Reply::text(*cx.state())) })
        .fallback(|_cx| async move { Ok(Reply::text("only /ping here")) });

    let stop = CancellationToken::new();
    let assembled = Server::new(config)
        .handlers(handlers)
        .assemble(&stop)
        .await
        .expect("assembled");
    let bot_stop = CancellationToken::new();
    let (routes, bot) = assembled
        .start_bot(bot_stop.clone())
        .await
        .expect("bot started");
    // The application's own app, with FlowBot's routes merged in.
    let app = axum::Router::new()
        .route("/app/hello", get(|| async { "hello from the application" }))
        .merge(routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let until = stop.clone();
    let serving = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { until.cancelled().await })
        .await
    });

    let base = format!("http://{addr}");
    let own = reqwest::get(format!("{base}/app/hello"))
        .await
        .expect("GET");
    assert_eq!(
        own.text().await.expect("body"),
        "hello from the application"
    );
    let health = reqwest::get(format!("{base}/healthz")).await.expect("GET");
    assert_eq!(health.status(), 200);
    let doc = common::get_json(format!("{base}/api/v1/openapi.json")).await;
    assert!(
        doc["paths"]["/api/v1/tasks"].is_object(),
        "the API is mounted"
    );
    let missing = reqwest::get(format!("{base}/nowhere")).await.expect("GET");
    assert_eq!(missing.status(), 404);

    // Web chat through the application's listener, answered by the Rust handlers (not the
    // demo rules: `/echo` is theirs).
    let mut ws = chat_at(&format!("ws://{addr}"), "ada", "c1").await;
    assert_eq!(say(&mut ws, "/ping").await["text"], "pong");
    assert_eq!(say(&mut ws, "/echo x").await["text"], "only /ping here");

    // HTTP drained first, then the bot.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("drained in time")
        .expect("join")
        .expect("served");
    bot_stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), bot)
        .await
        .expect("stopped in time")
        .expect("join")
        .expect("bot ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handlers_go_first_and_the_rules_take_the_rest() {
    let dir = TempDir::new("flowbot-embedding-test");
    let config = config_in(&dir);
    let handlers = Handlers::new(())
        .command(
            "ping",
            |_cx| async move { Ok(Reply::text("pong from Rust")) },
        )
        .command("echo", |cx| async move {
            Ok(Reply::text(format!("Rust echo: {}", cx.args)))
        });
    let stop = CancellationToken::new();
    let (ready, running) = tokio::sync::oneshot::channel();
    let server = Server::new(config).handlers_then_rules(handlers);
    let task = tokio::spawn(server.run(stop.clone(), Some(ready)));
    let addr = running.await.expect("server started").addr;

    let mut ws = chat_at(&format!("ws://{addr}"), "ada", "c2").await;
    assert_eq!(say(&mut ws, "/ping").await["text"], "pong from Rust");
    // A command both have: the handlers win.
    assert_eq!(say(&mut ws, "/echo hi").await["text"], "Rust echo: hi");
    // What the handlers do not take goes to the demo rules.
    let help = say(&mut ws, "/help").await;
    assert!(
        help["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Commands:")),
        "{help}"
    );
    // The rules' dialog starts (its steps are the rules' own tests).
    let ask = say(&mut ws, "/feedback").await;
    assert_eq!(ask["text"], "How would you rate this demo, from 1 to 5?");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("stopped in time")
        .expect("join")
        .expect("server ran");
}

/// A listener handed over is held to the same rule as `server.listen`: open to the network,
/// the admin API needs credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_open_to_the_network_needs_credentials_for_the_admin_api() {
    let open = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let e = Server::new(Config::default())
        .listener(open)
        .expect_err("an open admin API without credentials");
    let text = e.to_string();
    assert!(
        text.contains("server.listen") && text.contains("allow_unauthenticated"),
        "{text}"
    );
    let loopback = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    assert!(Server::new(Config::default()).listener(loopback).is_ok());
}
