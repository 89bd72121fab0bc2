//! The server as a library: FlowBot's routes mounted in an application's own axum app, with
//! Rust handlers as the router, served by the application on its own listener.

mod common;
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use common::TempDir;
use flowbot_channels::{AdapterCounters, AdapterStats, Built, ChannelSpec, CommandMenu, Setup};
use flowbot_core::{
    CancellationToken, Channel, ChannelListener, ChannelSender, CommandInfo, Event, Handlers,
    Inbox, Message, Outbound, Reply, Sender, SentId, async_trait,
};
use flowbot_server::config::Config;
use flowbot_server::run::Server;
use harness::{WEB_SECRET, chat_at, say};

/// Wait (at most 20 s) for `task` to end, and check it ended well (`what` says which).
async fn ended<E: std::fmt::Debug>(task: tokio::task::JoinHandle<Result<(), E>>, what: &str) {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not stopped in time"))
        .expect("join")
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
}

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
    ended(serving, "served").await;
    bot_stop.cancel();
    ended(bot, "bot ran").await;
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
    ended(task, "server ran").await;
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

/// A third party's channel: `POST /hooks/pager` brings a message in, the bot's answers are
/// handed to the test, and the commands the server declares are kept.
struct Pager {
    answers: tokio::sync::mpsc::UnboundedSender<String>,
    declared: Arc<Mutex<Vec<String>>>,
}

/// The pager's inbound half: what its route received, handed to the bot.
struct PagerListener(Mutex<Option<tokio::sync::mpsc::Receiver<String>>>);

#[async_trait]
impl ChannelListener for PagerListener {
    async fn listen(&self, inbox: Inbox, shutdown: CancellationToken) -> flowbot_core::Result<()> {
        let Some(mut received) = self.0.lock().expect("lock").take() else {
            return Ok(());
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                text = received.recv() => match text {
                    Some(text) => {
                        let message = Message::text("pager", "page-1", Sender::user("ada"), text);
                        inbox.send(Event::Message(message)).await?;
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// The pager's outbound half.
struct PagerSender(tokio::sync::mpsc::UnboundedSender<String>);

#[async_trait]
impl ChannelSender for PagerSender {
    async fn send(&self, message: &Outbound) -> flowbot_core::Result<SentId> {
        self.0
            .send(message.text.clone())
            .map_err(|_| flowbot_core::Error::channel("pager", "the test is gone"))?;
        Ok(SentId("sent".into()))
    }
}

/// The pager's counters and command menu.
struct PagerAdapter {
    counters: AdapterCounters,
    declared: Arc<Mutex<Vec<String>>>,
}

impl AdapterStats for PagerAdapter {
    fn channel(&self) -> &str {
        "pager"
    }
    fn counters(&self) -> &AdapterCounters {
        &self.counters
    }
}

#[async_trait]
impl CommandMenu for PagerAdapter {
    fn channel(&self) -> &str {
        "pager"
    }
    async fn declare(&self, commands: &[CommandInfo]) -> Result<usize, flowbot_channels::Error> {
        let mut declared = self.declared.lock().expect("lock");
        declared.extend(commands.iter().map(|c| c.name.clone()));
        Ok(commands.len())
    }
}

#[async_trait]
impl ChannelSpec for Pager {
    async fn build(&self, setup: &Setup) -> Result<Built, flowbot_channels::Error> {
        assert!(setup.receives(), "a server receives");
        let (to_bot, received) = tokio::sync::mpsc::channel(16);
        let adapter = Arc::new(PagerAdapter {
            counters: AdapterCounters::default(),
            declared: self.declared.clone(),
        });
        let counted = adapter.clone();
        let routes = axum::Router::new().route(
            "/hooks/pager",
            post(move |text: String| async move {
                counted.counters.accepted.fetch_add(1, Ordering::Relaxed);
                match to_bot.send(text).await {
                    Ok(()) => StatusCode::ACCEPTED,
                    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                }
            }),
        );
        let channel = Channel::new("pager", PagerSender(self.answers.clone()))
            .with_listener(PagerListener(Mutex::new(Some(received))));
        Ok(Built::new(channel)
            .routes(routes)
            .stats(adapter.clone())
            .menu(adapter))
    }
}

/// A channel of the application's own, added like a built-in one: the server mounts its
/// route, reports its counters in the metrics and declares the handlers' commands to its
/// menu; the Rust handlers answer through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_partys_channel_gets_its_routes_metrics_and_commands_from_the_server() {
    let dir = TempDir::new("flowbot-embedding-test");
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let declared = Arc::new(Mutex::new(Vec::new()));
    let pager = Pager {
        answers,
        declared: declared.clone(),
    };
    let handlers = Handlers::new(())
        .command("ping", |_cx| async move { Ok(Reply::text("pong")) })
        .command("time", |_cx| async move { Ok(Reply::text("noon")) });
    let stop = CancellationToken::new();
    let (ready, running) = tokio::sync::oneshot::channel();
    let server = Server::new(config_in(&dir))
        .handlers(handlers)
        .channel(pager);
    let task = tokio::spawn(server.run(stop.clone(), Some(ready)));
    let base = format!("http://{}", running.await.expect("server started").addr);

    let sent = reqwest::Client::new()
        .post(format!("{base}/hooks/pager"))
        .body("/ping")
        .send()
        .await
        .expect("POST");
    assert_eq!(sent.status(), 202);
    let answer = tokio::time::timeout(Duration::from_secs(20), answered.recv())
        .await
        .expect("answered in time");
    assert_eq!(answer.as_deref(), Some("pong"));
    assert_eq!(*declared.lock().expect("lock"), ["ping", "time"]);
    let metrics = common::metrics(&base).await;
    assert!(
        metrics.contains("flowbot_channel_accepted_total{channel=\"pager\"} 1"),
        "{metrics}"
    );
    // The built-in routes are still there beside it.
    let chat = reqwest::get(format!("{base}/chat")).await.expect("GET");
    assert_eq!(chat.status(), 200);

    stop.cancel();
    ended(task, "server ran").await;
}

/// A channel that cannot be built stops the server before it listens, with the channel's
/// error (not a string): the settings at fault, and that retrying cannot help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_cannot_be_built_stops_the_server_with_its_error() {
    let dir = TempDir::new("flowbot-embedding-test");
    let mut bad = flowbot_channels::webhook::WebhookConfig::new("hooks");
    bad.secret = Some("s3cr3t-Q7".into());
    let e = Server::new(config_in(&dir))
        .channel(vec![bad])
        .run(CancellationToken::new(), None)
        .await
        .expect_err("refused");
    let flowbot_server::run::RunError::Channel(e) = e else {
        panic!("a channel error: {e}");
    };
    assert_eq!(e.channel(), "hooks");
    assert!(e.is_permanent());
    assert!(
        e.to_string().contains("secret must be at least 16 bytes"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("s3cr3t"),
        "the secret is not shown: {e}"
    );
}

/// Two channels of one name, or a channel whose routes another already serves (generic
/// webhooks besides `[webhooks]`), stop the server with an error naming the channel, not a
/// panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_that_collide_stop_the_server_with_an_error() {
    let dir = TempDir::new("flowbot-embedding-test");
    let refused = |e: flowbot_server::run::RunError| match e {
        flowbot_server::run::RunError::Channel(e) => e,
        other => panic!("a channel error: {other}"),
    };
    let stop = CancellationToken::new();
    let (same_name, _) = flowbot_core::InProcess::channel("web", 8);
    let e = refused(
        Server::new(config_in(&dir))
            .channel(same_name)
            .run(stop.clone(), None)
            .await
            .expect_err("two channels named web"),
    );
    assert_eq!(e.channel(), "web");
    assert!(
        e.to_string().contains("another channel has this name"),
        "{e}"
    );

    let e = refused(
        Server::new(config_in(&dir))
            .channel(vec![flowbot_channels::webhook::WebhookConfig::new("extra")])
            .run(stop.clone(), None)
            .await
            .expect_err("a second webhook route"),
    );
    assert_eq!(e.channel(), "extra");
    assert!(e.to_string().contains("[webhooks]"), "{e}");
}

/// `Agent`, the library form of `flowbot-agent`: a server without workers stores a webhook
/// message on the queue, and an agent with its own Rust handlers, on the same database,
/// handles it and delivers the answer to the webhook's callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_rust_handlers_answers_what_a_server_without_workers_takes_in() {
    let dir = TempDir::new("flowbot-embedding-test");
    // The webhook's callback: each answer's text, handed to the test.
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<String>();
    let callback = axum::Router::new().route(
        "/cb",
        post(move |body: axum::Json<serde_json::Value>| {
            let answers = answers.clone();
            async move {
                let _ = answers.send(body["text"].as_str().unwrap_or_default().to_owned());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let callback_url = format!("http://{}/cb", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, callback).await });

    // The same command answered differently, to tell who answered.
    let handlers = |who: &'static str| {
        Handlers::new(who).command("who", |cx| async move { Ok(Reply::text(*cx.state())) })
    };
    let mut config = config_in(&dir);
    config.server.agent = false;
    config.webhooks.insert(
        "crm".into(),
        flowbot_channels::webhook::WebhookSettings {
            callback_url: Some(callback_url),
            ..Default::default()
        },
    );
    let stop = CancellationToken::new();
    let (ready, running) = tokio::sync::oneshot::channel();
    let server = Server::new(config.clone()).handlers(handlers("the server"));
    let server = tokio::spawn(server.run(stop.clone(), Some(ready)));
    let base = format!("http://{}", running.await.expect("server started").addr);
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(
        flowbot_server::run::Agent::new(config)
            .handlers(handlers("an agent"))
            .run(agent_stop.clone()),
    );

    let status = common::post_hook(
        &base,
        "crm",
        serde_json::json!({"user": "ada", "conversation": "c-agent", "text": "/who"}),
    )
    .await;
    assert_eq!(status, 202);
    let answer = tokio::time::timeout(Duration::from_secs(20), answered.recv())
        .await
        .expect("answered in time");
    assert_eq!(answer.as_deref(), Some("an agent"));

    agent_stop.cancel();
    ended(agent, "agent ran").await;
    stop.cancel();
    ended(server, "server ran").await;
}
