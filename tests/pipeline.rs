//! The message pipeline end to end: in-process channel, real SQLite store, Rust handlers,
//! middleware, the task scheduler delivering delayed and retried messages.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::task::{
    KindOptions, NewTask, ScheduleDef, TaskFilter, TaskState, WorkerConfig, handler_fn,
};
use flowbot_core::{
    Bot, CancellationToken, Channel, ChannelSender, Event, FailureReply, Handlers, INBOUND_TASK,
    InProcess, InProcessHandle, Message, MessageId, Outbound, RateLimit, Refusal, Reply, Sender,
    SentId, Stage, Store, StoreError, async_trait,
};
use flowbot_store::SqliteStore;
use serde_json::json;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowbot-pipeline-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sqlite(dir: &TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open_in_dir(&dir.0).await.expect("open store"))
}

fn fast_workers() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

async fn reply(handle: &mut InProcessHandle) -> Outbound {
    tokio::time::timeout(Duration::from_secs(10), handle.next_reply())
        .await
        .expect("a reply in time")
        .expect("bot running")
}

async fn no_reply(handle: &mut InProcessHandle) {
    if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(300), handle.next_reply()).await
    {
        panic!("unexpected reply: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_bot_answers_persists_and_reminds() {
    let dir = TempDir::new();
    let store = sqlite(&dir).await;
    let (channel, mut handle) = InProcess::channel("local", 64);
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router(flowbot_examples::demo_router())
        .workers(fast_workers())
        .build()
        .expect("bot");
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));

    let id = handle
        .say("ada", "room-1", "/echo hello world")
        .await
        .expect("say");
    let r = reply(&mut handle).await;
    assert_eq!(r.text, "hello world");
    let target = r.target.expect("target");
    assert_eq!(
        (target.channel.as_str(), target.conversation.as_str()),
        ("local", "room-1")
    );
    assert_eq!(r.reply_to, Some(id));

    handle.say("ada", "room-1", "/help").await.expect("say");
    assert!(
        reply(&mut handle)
            .await
            .text
            .contains("/remind <duration> <text>")
    );
    handle
        .say("ada", "room-1", "good morning")
        .await
        .expect("say");
    assert_eq!(
        reply(&mut handle).await.text,
        "I didn't understand that. Try /help."
    );
    handle
        .say("ada", "room-1", "/remind soon x")
        .await
        .expect("say");
    assert!(
        reply(&mut handle)
            .await
            .text
            .contains("'soon' is not a duration")
    );

    let started = tokio::time::Instant::now();
    handle
        .say("ada", "room-1", "/remind 1s stretch")
        .await
        .expect("say");
    assert_eq!(reply(&mut handle).await.text, "OK, I'll remind you in 1s.");
    let reminder = reply(&mut handle).await;
    assert_eq!(reminder.text, "⏰ Reminder: stretch");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "reminder came after its delay"
    );
    assert_eq!(
        reminder.target.expect("target").conversation.as_str(),
        "room-1"
    );

    stop.cancel();
    running.await.expect("join").expect("bot stopped cleanly");
    let history = store
        .list_messages(&"local".into(), &"room-1".into(), None, 100)
        .await
        .expect("history");
    let texts: Vec<&str> = history.items.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts[..2], ["/echo hello world", "hello world"]);
    assert_eq!(
        history.items.len(),
        11,
        "5 messages in, 6 out (the reminder included): {texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_persist_across_bot_restarts_and_redeliveries_are_dropped() {
    let dir = TempDir::new();
    let counter = || {
        Handlers::new(()).command("count", |cx| async move {
            let n = cx
                .turn
                .session
                .var("count")
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
                + 1;
            cx.turn.session.set_var("count", json!(n));
            Ok(Reply::text(n.to_string()))
        })
    };
    for round in 0..2u64 {
        let store = sqlite(&dir).await;
        let (channel, mut handle) = InProcess::channel("local", 64);
        // Without the in-memory dedupe, the message store's unique key still drops redeliveries.
        let bot = Bot::builder()
            .channel(channel)
            .store(store)
            .router(counter())
            .without_dedupe()
            .build()
            .expect("bot");
        let stop = CancellationToken::new();
        let running = tokio::spawn(bot.run(stop.clone()));
        for i in 1..=2 {
            handle.say("ada", "c", "/count").await.expect("say");
            assert_eq!(reply(&mut handle).await.text, (round * 3 + i).to_string());
        }
        let mut m = Message::text("local", "c", Sender::user("ada"), "/count");
        m.id = MessageId::from(format!("platform-event-{round}"));
        handle.send(Event::Message(m.clone())).await.expect("send");
        assert_eq!(reply(&mut handle).await.text, (round * 3 + 3).to_string());
        handle.send(Event::Message(m)).await.expect("redeliver");
        no_reply(&mut handle).await;
        // Another user in the same conversation has a session of their own.
        handle.say("bob", "c", "/count").await.expect("say");
        assert_eq!(reply(&mut handle).await.text, (round + 1).to_string());
        stop.cancel();
        running.await.expect("join").expect("stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_rate_limits_and_errors_reach_on_error() {
    let errors: Arc<Mutex<Vec<(Stage, String)>>> = Arc::default();
    let e2 = errors.clone();
    let (channel, mut handle) = InProcess::channel("local", 64);
    let router = Handlers::new(())
        .command("fail", |_cx| async move {
            Err("database of jokes is empty".into())
        })
        .fallback(|cx| async move { Ok(Reply::text(format!("got {}", cx.args))) });
    let bot = Bot::builder()
        .channel(channel)
        .router(router)
        .middleware(
            RateLimit::per_user(3, Duration::from_secs(60))
                .expect("limit")
                .notice("Slow down, please."),
        )
        .on_error(move |e| {
            e2.lock()
                .expect("lock")
                .push((e.stage, e.error.to_string()))
        })
        .build()
        .expect("bot without a store");
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));

    handle.say("u1", "c", "/fail").await.expect("say");
    assert_eq!(
        reply(&mut handle).await.text,
        FailureReply::default().text.expect("an apology"),
        "a failed message is answered, not met with silence"
    );
    handle.say("u1", "c", "a").await.expect("say");
    assert_eq!(
        reply(&mut handle).await.text,
        "got a",
        "a failing handler does not stop the pipeline"
    );
    assert_eq!(
        errors.lock().expect("lock").clone(),
        vec![(
            Stage::Route,
            "handler failed: database of jokes is empty".to_owned()
        )]
    );
    handle.say("u1", "c", "b").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "got b");
    handle.say("u1", "c", "c").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "Slow down, please.");
    handle.say("u2", "c", "d").await.expect("say");
    assert_eq!(
        reply(&mut handle).await.text,
        "got d",
        "limits are per user"
    );
    stop.cancel();
    running.await.expect("join").expect("stopped");
}

/// A channel whose platform refuses the first `failures` sends (like an HTTP 503).
struct Flaky {
    failures: AtomicU32,
    delivered: tokio::sync::mpsc::UnboundedSender<Outbound>,
}

#[async_trait]
impl ChannelSender for Flaky {
    async fn send(&self, message: &Outbound) -> flowbot_core::Result<SentId> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(flowbot_core::Error::channel(
                "flaky",
                "503 Service Unavailable",
            ));
        }
        self.delivered
            .send(message.clone())
            .map_err(|_| flowbot_core::Error::channel("flaky", "closed"))?;
        Ok(SentId("ok".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_through_the_queue() {
    let dir = TempDir::new();
    let store = sqlite(&dir).await;
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let flaky = Channel::new(
        "flaky",
        Flaky {
            failures: AtomicU32::new(2),
            delivered: tx,
        },
    );
    let bot = Bot::builder()
        .channel(flaky)
        .store(store.clone())
        .router(Handlers::new(()).fallback(|_cx| async move { Ok(Reply::text("pong")) }))
        .workers(fast_workers())
        .build()
        .expect("bot");
    let pipeline = bot.pipeline().clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));
    // Feed the event straight into the pipeline (this channel has no listener).
    let queued = pipeline
        .handle(Event::Message(Message::text(
            "flaky",
            "c9",
            Sender::user("u"),
            "ping",
        )))
        .await;
    assert_eq!(queued.len(), 1, "the reply was accepted for delivery");
    // First direct send failed; the queue retries (1 s backoff, then 2 s) until it goes through.
    let out = tokio::time::timeout(Duration::from_secs(15), delivered.recv())
        .await
        .expect("delivered in time")
        .expect("open");
    assert_eq!(out.text, "pong");
    stop.cancel();
    running.await.expect("join").expect("stopped");
}

/// Handlers by event kind: a command with typed arguments (and the usage shown when they do
/// not fit), a button value, any other button, a join, a reaction; the session and store
/// reached from the handler's context; `?` on an application error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_dispatch_by_event_kind_with_typed_arguments() {
    use flowbot_core::{ConversationId, Interaction};
    #[derive(Debug)]
    struct NotAWord;
    impl std::fmt::Display for NotAWord {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the word is not in the dictionary")
        }
    }
    impl std::error::Error for NotAWord {}

    let dir = TempDir::new();
    let store = sqlite(&dir).await;
    let (channel, mut handle) = InProcess::channel("local", 64);
    let router = Handlers::new(10_i64)
        .command_usage("add", "/add <a> <b>", |cx| async move {
            let (a, b): (i64, i64) = cx.parse()?;
            Ok(Reply::text(format!("{}", a + b + *cx.state())))
        })
        .command("count", |cx| async move {
            let n = cx.session().var("n").and_then(|v| v.as_i64()).unwrap_or(0) + 1;
            cx.session().set_var("n", n.into());
            let backend = cx.store().map(|s| s.backend()).unwrap_or("none");
            Ok(Reply::text(format!("{n} on {backend}")))
        })
        .command("define", |cx| async move {
            if cx.args != "flowbot" {
                return Err(NotAWord.into());
            }
            Ok(Reply::text("a bot"))
        })
        .button("yes", |_cx| async move { Ok(Reply::text("you said yes")) })
        .any_button(|cx| async move { Ok(Reply::text(format!("clicked {}", cx.args))) })
        .on_join(|cx| async move {
            let who = cx
                .event()
                .sender()
                .map(|s| s.id.to_string())
                .unwrap_or_default();
            Ok(Reply::text(format!("welcome {who}")))
        })
        .on_reaction(|cx| async move { Ok(Reply::text(format!("thanks for the {}", cx.args))) })
        .on_edit(|cx| async move {
            let id = cx.event().as_edit().map(|m| m.id.to_string());
            Ok(Reply::text(format!(
                "{} now reads {:?}",
                id.unwrap_or_default(),
                cx.text().unwrap_or_default()
            )))
        });
    assert_eq!(router.command_names(), ["add", "count", "define"]);
    assert_eq!(
        router
            .commands()
            .iter()
            .map(|c| c.usage.as_str())
            .collect::<Vec<_>>(),
        ["/add <a> <b>", "/count", "/define"]
    );
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router(router)
        .workers(fast_workers())
        .build()
        .expect("bot");
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));

    handle.say("ada", "r", "/add 2 3").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "15");
    handle.say("ada", "r", "/add two 3").await.expect("say");
    let refused = reply(&mut handle).await.text;
    assert!(
        refused.contains("argument 1 ('two')") && refused.ends_with("Usage: /add <a> <b>"),
        "{refused}"
    );
    handle.say("ada", "r", "/count").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "1 on sqlite");
    handle.say("ada", "r", "/count").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "2 on sqlite");
    handle
        .say("ada", "r", "/define flowbot")
        .await
        .expect("say");
    assert_eq!(reply(&mut handle).await.text, "a bot");
    // The application's own error through `?`: the generic apology, not its words.
    handle.say("ada", "r", "/define x").await.expect("say");
    let apology = reply(&mut handle).await.text;
    assert!(!apology.contains("dictionary"), "{apology}");

    let click = |value: &str, id: &str| {
        Event::Interaction(Interaction {
            channel: "local".into(),
            conversation: ConversationId::from("r"),
            sender: Sender::user("ada"),
            value: value.into(),
            id: MessageId(id.into()),
            raw: None,
        })
    };
    handle.send(click("yes", "i1")).await.expect("send");
    assert_eq!(reply(&mut handle).await.text, "you said yes");
    handle.send(click("maybe", "i2")).await.expect("send");
    assert_eq!(reply(&mut handle).await.text, "clicked maybe");
    handle
        .send(Event::MemberJoined {
            channel: "local".into(),
            conversation: "r".into(),
            user: Sender::user("bob"),
            raw: None,
        })
        .await
        .expect("send");
    assert_eq!(reply(&mut handle).await.text, "welcome bob");
    handle
        .send(Event::Reaction {
            channel: "local".into(),
            conversation: "r".into(),
            message: MessageId("m1".into()),
            user: Sender::user("bob"),
            emoji: "👍".into(),
            raw: None,
        })
        .await
        .expect("send");
    assert_eq!(reply(&mut handle).await.text, "thanks for the 👍");
    // An edit of a command goes to `on_edit`, not to the command again.
    let mut edited = Message::text("local", "r", Sender::user("ada"), "/add 2 4");
    edited.id = MessageId("m7".into());
    handle
        .send(Event::MessageEdited(edited))
        .await
        .expect("send");
    assert_eq!(reply(&mut handle).await.text, "m7 now reads \"/add 2 4\"");
    // A message no command matches, with no fallback: no answer.
    handle.say("ada", "r", "hello").await.expect("say");
    no_reply(&mut handle).await;
    stop.cancel();
    running.await.expect("join").expect("stopped");
}

/// Handler functions of extractors: typed arguments (refused with the usage when they do not
/// fit), the application state, the session, the store, the text and the raw arguments;
/// a parameter that cannot be had (the text of a join) fails the handler, not the bot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_functions_take_what_they_need_as_extractors() {
    use flowbot_core::HandlerResult;
    use flowbot_core::extract::{Args, Db, RawArgs, Session, State, Text, handler};

    struct App {
        bonus: i64,
    }
    async fn add(
        Args((a, b)): Args<(i64, i64)>,
        State(app): State<App>,
        Session(session): Session,
    ) -> HandlerResult {
        let sum = a + b + app.bonus;
        session.set_var("last", sum.into());
        Ok(Reply::text(sum.to_string()))
    }
    async fn last(Session(session): Session, Db(store): Db) -> HandlerResult {
        let last = session.var("last").unwrap_or_default();
        Ok(Reply::text(format!("{last} on {}", store.backend())))
    }

    let dir = TempDir::new();
    let store = sqlite(&dir).await;
    let (channel, mut handle) = InProcess::channel("local", 64);
    let router = Handlers::new(App { bonus: 100 })
        .command_usage("add", "/add <a> <b>", handler(add))
        .command("last", handler(last))
        .command(
            "shout",
            handler(|Text(text): Text, RawArgs(args): RawArgs| async move {
                Ok(Reply::text(format!("{} ({text})", args.to_uppercase())))
            }),
        )
        .command(
            "none",
            handler(|| async { Ok(Reply::text("no parameters")) }),
        )
        .on_join(handler(
            |Text(text): Text| async move { Ok(Reply::text(text)) },
        ));
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router(router)
        .workers(fast_workers())
        .build()
        .expect("bot");
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));

    handle.say("ada", "r", "/add 2 3").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "105");
    handle.say("ada", "r", "/last").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "105 on sqlite");
    handle.say("ada", "r", "/add 2 x").await.expect("say");
    let refused = reply(&mut handle).await.text;
    assert!(
        refused.contains("argument 2 ('x')") && refused.ends_with("Usage: /add <a> <b>"),
        "{refused}"
    );
    handle.say("ada", "r", "/shout hey you").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "HEY YOU (/shout hey you)");
    handle.say("ada", "r", "/none").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "no parameters");
    // A join has no text: the handler fails (the apology), and the bot goes on.
    handle
        .send(Event::MemberJoined {
            channel: "local".into(),
            conversation: "r".into(),
            user: Sender::user("bob"),
            raw: None,
        })
        .await
        .expect("send");
    let apology = reply(&mut handle).await.text;
    assert_eq!(
        Some(apology),
        FailureReply::default().text,
        "the apology, not the internal error"
    );
    handle.say("ada", "r", "/last").await.expect("say");
    assert_eq!(reply(&mut handle).await.text, "105 on sqlite");
    stop.cancel();
    running.await.expect("join").expect("stopped");
}

/// A queued message whose handling fails: a transient error is retried (and then answered
/// as usual), a refusal is answered in its own words and ends the task, any other error is
/// answered with the apology and dead-letters the task with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_failures_are_retried_refused_or_dead_lettered() {
    let dir = TempDir::new();
    let store = sqlite(&dir).await;
    let (channel, mut handle) = InProcess::channel("local", 64);
    let router = Handlers::new(AtomicU32::new(0))
        .command("flaky", |cx| async move {
            if cx.state.fetch_add(1, Ordering::SeqCst) == 0 {
                // Any error converts; a transient one in the chain has the event retried.
                return Err(StoreError::Unavailable("the database is away".into()).into());
            }
            Ok(Reply::text("flaky ok"))
        })
        .command("refuse", |_cx| async move {
            Err(Refusal::new("no, not like that").into())
        })
        .command("broken", |_cx| async move { Err("a bug".into()) });
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router(router)
        .workers(fast_workers())
        .build()
        .expect("bot");
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));
    for (n, text) in ["/flaky", "/refuse", "/broken"].into_iter().enumerate() {
        let event = Event::Message(Message::text(
            "local",
            format!("c{n}"),
            Sender::user("u"),
            text,
        ));
        store
            .enqueue(&NewTask::new(INBOUND_TASK, &event).expect("task"))
            .await
            .expect("enqueue");
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(reply(&mut handle).await.text);
    }
    answers.sort();
    let apology = FailureReply::default().text.expect("an apology");
    let mut want = vec![
        apology,
        "flaky ok".to_owned(),
        "no, not like that".to_owned(),
    ];
    want.sort();
    assert_eq!(answers, want);
    no_reply(&mut handle).await;

    let tasks = store
        .list_tasks(&TaskFilter {
            kind: Some(INBOUND_TASK.into()),
            limit: 10,
            ..TaskFilter::default()
        })
        .await
        .expect("tasks");
    let text_of = |t: &flowbot_core::task::TaskRecord| {
        t.payload["text"].as_str().unwrap_or_default().to_owned()
    };
    let mut outcomes: Vec<(String, TaskState, u32)> = tasks
        .items
        .iter()
        .map(|t| (text_of(t), t.state, t.attempts))
        .collect();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        vec![
            ("/broken".to_owned(), TaskState::Dead, 1),
            ("/flaky".to_owned(), TaskState::Done, 2),
            ("/refuse".to_owned(), TaskState::Done, 1),
        ],
        "{:?}",
        tasks.items
    );
    let dead = tasks
        .items
        .iter()
        .find(|t| t.state == TaskState::Dead)
        .expect("dead letter");
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("route failed: handler failed: a bug")),
        "{:?}",
        dead.last_error
    );
    stop.cancel();
    running.await.expect("join").expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_rejects_missing_and_inconsistent_parts() {
    let dir = TempDir::new();
    let store = sqlite(&dir).await;
    let router = || Handlers::new(()).fallback(|_cx| async move { Ok(Reply::none()) });
    let ch = |name: &str| InProcess::channel(name, 4).0;
    let err = |b: flowbot_core::BotBuilder| b.build().expect_err("must be rejected").to_string();

    assert!(err(Bot::builder().channel(ch("a"))).contains("no router"));
    assert!(err(Bot::builder().router(router())).contains("no channels"));
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .channel(ch("a")))
        .contains("channel 'a' is registered twice")
    );
    let noop = || handler_fn(|_cx| async { Ok(()) });
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .task("job", noop()))
        .contains("there is no store")
    );
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .store(store.clone())
            .task("job", noop())
            .task("job", noop()))
        .contains("task kind 'job' is registered twice")
    );
    let bad_timeout = KindOptions {
        timeout: Some(Duration::ZERO),
        ..KindOptions::default()
    };
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .store(store.clone())
            .task_with("job", bad_timeout, noop()))
        .contains("timeout must be greater than zero")
    );
    let sched = ScheduleDef::new("nightly", "0 3 * * *", "backup", &()).expect("def");
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .store(store.clone())
            .schedule(sched))
        .contains("schedule 'nightly' enqueues task kind 'backup', which has no handler")
    );
    let sched = ScheduleDef::new("nightly", "0 25 * * *", "backup", &()).expect("def");
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .store(store.clone())
            .task("backup", noop())
            .schedule(sched))
        .contains("invalid cron schedule '0 25 * * *'")
    );
    let workers = WorkerConfig {
        concurrency: 0,
        ..WorkerConfig::default()
    };
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .store(store.clone())
            .workers(workers))
        .contains("concurrency must be at least 1")
    );
    let workers = WorkerConfig {
        heartbeat: Duration::from_secs(60),
        ..WorkerConfig::default()
    };
    assert!(
        err(Bot::builder()
            .router(router())
            .channel(ch("a"))
            .store(store)
            .workers(workers))
        .contains("must be shorter than the lease")
    );
}
