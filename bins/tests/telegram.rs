//! The Telegram channel through the server, against a local Bot API server: long polling and
//! webhook delivery, commands, inline keyboard clicks, 429s and a Bot API that drops out,
//! ignored update kinds in the metrics, secret-token checks, and a wrong token at start.

mod common;
#[path = "telegram/fake.rs"]
mod fake;
mod harness;

use std::time::Duration;

use fake::{FakeTelegram, Fault, TOKEN, USERNAME, click, text};
use flowbot_server::config::{TelegramMode, TelegramSettings};
use harness::{problem, start_with};
use serde_json::{Value, json};

const SECRET_TOKEN: &str = "hook-secret_0123456789";

fn entry(fake: &FakeTelegram, mode: TelegramMode) -> TelegramSettings {
    TelegramSettings {
        token: TOKEN.into(),
        mode,
        api_base: fake.base.clone(),
        poll_timeout_secs: 1,
        secret_token: (mode == TelegramMode::Webhook).then(|| SECRET_TOKEN.into()),
        public_url: (mode == TelegramMode::Webhook).then(|| "https://bot.example.com".into()),
        sends_per_second: 25,
        lease_ttl_secs: 15,
    }
}

/// A server with one polling bot, `tg`, on the fake Bot API.
async fn polling_server(tg: &FakeTelegram) -> harness::Server {
    let f = tg.clone();
    start_with(move |c| {
        c.telegram
            .insert("tg".into(), entry(&f, TelegramMode::Polling));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_answers_commands_and_clicks_and_rides_out_faults() {
    let tg = FakeTelegram::start().await;
    let server = polling_server(&tg).await;
    assert_eq!(tg.calls("getMe").len(), 1);
    assert_eq!(
        tg.calls("deleteWebhook").len(),
        1,
        "polling needs no webhook"
    );
    // The demo rules' commands are in the bot's command menu.
    let menu = tg.calls("setMyCommands");
    let listed = menu[0]["commands"].as_array().expect("commands").clone();
    let names: Vec<&str> = listed
        .iter()
        .map(|c| c["command"].as_str().expect("name"))
        .collect();
    for want in ["help", "echo", "remind", "feedback"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    assert!(
        listed
            .iter()
            .all(|c| c["description"].as_str().is_some_and(|d| !d.is_empty()))
    );

    // A command addressed to this bot by name, in a private chat.
    tg.push(text(1001, &format!("/echo@{USERNAME} hello from Telegram")));
    let sent = tg.wait_for_text(1001, "hello from Telegram").await;
    assert!(sent.get("parse_mode").is_none(), "plain text: {sent}");
    let poll = tg.calls("getUpdates").last().cloned().expect("polled");
    assert_eq!(
        poll["allowed_updates"],
        json!([
            "message",
            "edited_message",
            "callback_query",
            "message_reaction",
            "chat_member"
        ])
    );

    // A command for another bot in the same group is not ours.
    tg.push(text(-2002, "/echo@other_bot not for us"));

    // Buttons: the feedback dialog offers its choices as an inline keyboard; a click answers.
    tg.push(text(1001, "/feedback"));
    let ask = tg
        .wait_for_text(1001, "How would you rate this demo, from 1 to 5?")
        .await;
    let keys: Vec<&str> = ask["reply_markup"]["inline_keyboard"]
        .as_array()
        .expect("keyboard")
        .iter()
        .flat_map(|row| row.as_array().expect("row").iter())
        .map(|b| b["callback_data"].as_str().expect("data"))
        .collect();
    assert_eq!(keys, ["1", "2", "3", "4", "5"]);
    tg.push(click(1001, "cbq-1", "4"));
    tg.wait_for_text(1001, "Glad you like it! Anything to add?")
        .await;
    tg.push(text(1001, "great demo"));
    tg.wait_for_text(1001, "Send rating 4 with \"great demo\"?")
        .await;
    tg.push(click(1001, "cbq-2", "yes"));
    tg.wait_for_text(1001, "Thank you! Your feedback (4/5) is saved.")
        .await;
    common::eventually("the click answered", Duration::from_secs(10), || {
        tg.calls("answerCallbackQuery")
            .iter()
            .any(|b| b["callback_query_id"] == "cbq-1")
    })
    .await;

    // Telegram answers 429 with retry_after: the send waits and goes through.
    tg.fault("sendMessage", Fault::TooMany(1));
    tg.push(text(1001, "/echo after a rate limit"));
    // The refused call is recorded too: wait for the accepted one, a second later.
    common::eventually(
        "one send refused with 429, then one accepted",
        Duration::from_secs(10),
        || {
            tg.sent_to(1001)
                .iter()
                .filter(|b| b["text"] == "after a rate limit")
                .count()
                == 2
        },
    )
    .await;

    // The Bot API drops out for two polls (a proxy's 502): polling backs off and resumes.
    tg.fault("getUpdates", Fault::BadGateway);
    tg.fault("getUpdates", Fault::BadGateway);
    tg.push(text(1001, "/echo after an outage"));
    tg.wait_for_text(1001, "after an outage").await;

    // An edited message is an event of its own, which the demo's `echo-edited` rule answers.
    tg.push(json!({"edited_message": {"message_id": 1, "date": 0, "edit_date": 5, "chat": {"id": 1001, "type": "private"},
        "from": {"id": 1001, "is_bot": false, "first_name": "Ada"}, "text": "/echo corrected"}}));
    tg.wait_for_text(1001, "corrected (edited)").await;

    // Update kinds the bot does not handle are ignored and counted.
    tg.push(json!({"edited_channel_post": {"message_id": 1, "date": 0, "chat": {"id": -1001, "type": "channel"}, "text": "x"}}));
    tg.push(text(1001, "/echo last"));
    tg.wait_for_text(1001, "last").await;
    let metrics = common::metrics(&server.base).await;
    assert!(
        metrics.contains(
            "flowbot_channel_ignored_total{channel=\"tg\",reason=\"edited_channel_post\"} 1"
        ) && metrics.contains(
            "flowbot_channel_ignored_total{channel=\"tg\",reason=\"command for @other_bot\"} 1"
        ),
        "{metrics}"
    );
    assert!(tg.sent_to(-2002).is_empty(), "{:?}", tg.sent_to(-2002));
    // Every update was confirmed once, and each reply sent once.
    assert_eq!(
        tg.sent_to(1001)
            .iter()
            .filter(|b| b["text"] == "hello from Telegram")
            .count(),
        1
    );
    server.stop().await;
}

/// The deliveries handed to the queue (`flowbot.deliver` tasks) in any state.
async fn deliveries(base: &str) -> Vec<Value> {
    let page = common::get_json(format!("{base}/api/v1/tasks?kind=flowbot.deliver")).await;
    page["items"].as_array().cloned().expect("a page of tasks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reply_is_not_retried_and_a_long_rate_limit_is_waited_out_in_the_queue() {
    let tg = FakeTelegram::start().await;
    let server = polling_server(&tg).await;
    let tries = |text: &str| {
        tg.calls("sendMessage")
            .iter()
            .filter(|b| b["text"] == text)
            .count()
    };

    // 403 "bot was blocked by the user": permanent. The reply is tried once and not queued.
    tg.fault("sendMessage", Fault::Blocked);
    tg.push(text(1001, "/echo to a user who blocked the bot"));
    // Events of one conversation are handled in order: once the next one is answered, the
    // blocked reply was handled.
    tg.push(text(1001, "/echo next"));
    tg.wait_for_text(1001, "next").await;
    assert_eq!(tries("to a user who blocked the bot"), 1);
    assert_eq!(deliveries(&server.base).await, Vec::<Value>::new());

    // 429 with retry_after 120: too long to wait in the request, so the reply goes to the
    // queue, due no earlier than Telegram asked.
    tg.fault("sendMessage", Fault::TooMany(120));
    let asked = chrono::Utc::now();
    tg.push(text(1001, "/echo in two minutes"));
    tg.push(text(1001, "/echo meanwhile"));
    tg.wait_for_text(1001, "meanwhile").await;
    assert_eq!(tries("in two minutes"), 1);
    let queued = deliveries(&server.base).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["state"], "queued");
    assert_eq!(queued[0]["payload"]["text"], "in two minutes");
    let due: chrono::DateTime<chrono::Utc> = queued[0]["run_at"]
        .as_str()
        .expect("run_at")
        .parse()
        .expect("a time");
    let waits = (due - asked).num_seconds();
    assert!((118..=125).contains(&waits), "due {waits} s after the 429");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_checks_the_secret_token_and_stores_before_answering() {
    let tg = FakeTelegram::start().await;
    let f = tg.clone();
    let server = start_with(move |c| {
        c.telegram
            .insert("hook".into(), entry(&f, TelegramMode::Webhook));
    })
    .await;
    let set = tg.calls("setWebhook");
    assert_eq!(set.len(), 1);
    assert_eq!(set[0]["url"], "https://bot.example.com/hooks/telegram/hook");
    assert_eq!(set[0]["secret_token"], SECRET_TOKEN);
    assert!(
        tg.calls("getUpdates").is_empty(),
        "webhook mode does not poll"
    );

    let http = reqwest::Client::new();
    let url = format!("{}/hooks/telegram/hook", server.base);
    let post = |secret: Option<&str>, body: String| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        req.send()
    };
    let mut update = text(3003, "/echo via webhook");
    update["update_id"] = 77.into();
    let body = update.to_string();

    let p = problem(post(None, body.clone()).await.expect("post"), 401).await;
    assert!(p["detail"].as_str().unwrap_or("").contains("secret"), "{p}");
    problem(
        post(Some("hook-secret_0123456780"), body.clone())
            .await
            .expect("post"),
        401,
    )
    .await;
    problem(
        post(Some(SECRET_TOKEN), "{not json".into())
            .await
            .expect("post"),
        400,
    )
    .await;
    let p = problem(
        post(Some(SECRET_TOKEN), json!({"hello": 1}).to_string())
            .await
            .expect("post"),
        422,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap_or("").contains("update_id"),
        "{p}"
    );

    // Accepted, and delivered twice (Telegram retries when it misses the answer): one reply.
    for _ in 0..2 {
        let res = post(Some(SECRET_TOKEN), body.clone()).await.expect("post");
        assert_eq!(res.status().as_u16(), 200);
    }
    tg.wait_for_text(3003, "via webhook").await;
    let mut next = text(3003, "/echo second");
    next["update_id"] = 78.into();
    assert_eq!(
        post(Some(SECRET_TOKEN), next.to_string())
            .await
            .expect("post")
            .status()
            .as_u16(),
        200
    );
    tg.wait_for_text(3003, "second").await;
    assert_eq!(
        tg.sent_to(3003)
            .iter()
            .filter(|b| b["text"] == "via webhook")
            .count(),
        1,
        "a redelivered update is handled once"
    );

    // The route is in the OpenAPI document.
    let doc: Value = http
        .get(format!("{}/api/v1/openapi.json", server.base))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"]["/hooks/telegram/{channel}"]["post"].is_object());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_stops_the_server_at_start_with_telegrams_answer() {
    let tg = FakeTelegram::start().await;
    let dir = common::TempDir::new("flowbot-telegram-token");
    let mut config = flowbot_server::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.database.url = format!("sqlite://{}/flowbot.db", dir.0.display());
    let mut e = entry(&tg, TelegramMode::Polling);
    e.token = "123456:wrong-token_abcdefghij".into();
    config.telegram.insert("tg".into(), e);
    let err = flowbot_server::run::run_server(config, flowbot_core::CancellationToken::new(), None)
        .await
        .expect_err("a wrong token must not start");
    let msg = err.to_string();
    assert!(
        msg.contains("channel 'tg'") && msg.contains("getMe") && msg.contains("401"),
        "{msg}"
    );
    // The channel's error, with Telegram's own answer in its chain.
    let flowbot_server::run::RunError::Channel(e) = &err else {
        panic!("a channel error: {err}");
    };
    assert_eq!(e.channel(), "tg");
    let mut link: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut api = None;
    while let Some(l) = link {
        api = api.or(l.downcast_ref::<flowbot_channels::telegram::ApiError>());
        link = l.source();
    }
    assert!(
        matches!(
            api,
            Some(flowbot_channels::telegram::ApiError::Refused { code: 401, .. })
        ),
        "{e:?}"
    );
    assert!(!e.is_permanent(), "credentials an operator can fix");
    assert!(
        !msg.contains("wrong-token"),
        "the token must not be shown: {msg}"
    );
}

/// The polling lease's holder: its pid and fencing token.
async fn poller_pid(url: &str, schema: &str) -> Option<(u32, i64)> {
    common::lease_holder(url, schema, "telegram:poll:tg").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_moves_to_another_server_when_its_holder_is_killed() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let tg = FakeTelegram::start().await;
    let dir = common::TempDir::new("flowbot-telegram-lease");
    let schema = format!("tg_{}", uuid::Uuid::new_v4().simple());
    let extra = [
        ("FLOWBOT_TELEGRAM__TG__TOKEN", TOKEN.into()),
        ("FLOWBOT_TELEGRAM__TG__API_BASE", format!("\"{}\"", tg.base)),
        ("FLOWBOT_TELEGRAM__TG__POLL_TIMEOUT_SECS", "1".into()),
        ("FLOWBOT_TELEGRAM__TG__LEASE_TTL_SECS", "3".into()),
    ];
    let mut servers = common::start_servers(&["s1", "s2"], &dir.0, (&url, &schema), &extra).await;
    // One of them holds the polling lease and answers.
    let before = tg.push(text(5005, "/echo before"));
    tg.wait_for_text(5005, "before").await;
    // The holder confirms the update with its next poll. Kill it only after that: an update
    // stored and answered but not yet confirmed when its poller dies is fetched and answered
    // again by the next one (at least once, as documented), which is not what this checks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !tg
        .calls("getUpdates")
        .iter()
        .any(|c| c["offset"].as_i64().unwrap_or(0) > before)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update was never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (holder, token) = poller_pid(&url, &schema).await.expect("a holder");
    assert!(servers.contains_key(&holder), "the holder is one of ours");

    // Kill the holder: no release. The other server takes the lease over and polls.
    let (_, mut victim) = servers.remove(&holder).expect("holder");
    victim.start_kill().expect("SIGKILL");
    victim.wait().await.expect("reaped");
    let killed = tokio::time::Instant::now();
    tg.push(text(5005, "/echo after"));
    tg.wait_for_text(5005, "after").await;
    let took = killed.elapsed();
    let (new_holder, new_token) = poller_pid(&url, &schema).await.expect("a holder");
    assert_ne!(new_holder, holder);
    assert!(new_token > token, "a new holder gets a larger token");
    // ttl 3 s, renewed every second: taken over within about 4 s (plus a poll and a reply).
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for text in ["before", "after"] {
        assert_eq!(
            tg.sent_to(5005)
                .iter()
                .filter(|b| b["text"] == text)
                .count(),
            1,
            "{text} answered once"
        );
    }
    drop(servers);
    common::drop_schema(&url, &schema).await;
}

/// The final answer completing a draft ([`flowbot_core::Draft`]) edits the draft's message:
/// a text longer than one message edits its first piece into the draft and sends the rest
/// (the buttons with the last), an edit that changes nothing is no error, and a draft message
/// that is gone gets the answer as a new message. Private chats are edited once a second,
/// groups every three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_becomes_the_answer() {
    use flowbot_core::{Draft, DraftRef, Outbound, Senders, SentId, Streaming, Target};

    let tg = FakeTelegram::start().await;
    let dir = common::TempDir::new("flowbot-telegram-draft");
    let store: std::sync::Arc<dyn flowbot_core::Store> = std::sync::Arc::new(
        flowbot_store::SqliteStore::open_in_dir(&dir.0)
            .await
            .expect("store"),
    );
    let channel = flowbot_channels::telegram::Telegram::sender_only(
        store,
        flowbot_channels::telegram::TelegramConfig {
            api_base: tg.base.clone(),
            ..flowbot_channels::telegram::TelegramConfig::polling("tg", TOKEN)
        },
    )
    .expect("telegram");
    let mut senders = Senders::default();
    senders
        .insert("tg".into(), channel.sender().clone())
        .expect("one channel");
    let target = |chat: &str| Target {
        channel: "tg".into(),
        conversation: chat.into(),
        thread: None,
    };
    for (chat, secs) in [("9009", 1), ("-1001234", 3), ("@news", 3)] {
        assert_eq!(
            channel.sender().streaming(&target(chat)),
            Streaming::Edit {
                interval: Duration::from_secs(secs)
            },
            "{chat}"
        );
    }

    // A draft, then an answer of two messages with a button.
    let mut draft = Draft::new(&senders, target("9009"));
    draft.update("Chapter one");
    common::found(
        "the draft shown",
        || tg.sent_to(9009).first().cloned(),
        || (),
    )
    .await;
    let reference = draft.finish().await;
    assert_eq!(reference.shown, Some(SentId("9009:1".into())));
    let long = format!("Chapter one {}", "word ".repeat(1000).trim_end());
    let answer = Outbound {
        draft: Some(reference),
        ..Outbound::text(long.clone())
            .button("More", "more")
            .to(target("9009"))
    };
    let id = senders.send(&answer).await.expect("answer");
    let calls: Vec<(String, Value)> = tg
        .texts_to(9009)
        .into_iter()
        .map(|(_, method, body)| (method, body))
        .collect();
    let methods: Vec<&str> = calls.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["sendMessage", "editMessageText", "sendMessage"]);
    let (edit, rest) = (&calls[1].1, &calls[2].1);
    assert_eq!(edit["message_id"], 1);
    let (first, second) = (
        edit["text"].as_str().expect("text"),
        rest["text"].as_str().expect("text"),
    );
    assert!(first.starts_with("Chapter one") && first.chars().count() <= 4096);
    assert_eq!(
        format!("{first} {second}"),
        long,
        "the whole answer, in two pieces"
    );
    assert!(
        edit.get("reply_markup").is_none(),
        "buttons go with the last piece"
    );
    assert_eq!(
        rest["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        "more"
    );
    assert_eq!(id, SentId("9009:2".into()), "the last message's id");

    // The draft shows the answer already: Telegram's "message is not modified" is no error.
    let mut draft = Draft::new(&senders, target("9010"));
    draft.update("Short answer.");
    common::found(
        "the draft shown",
        || tg.sent_to(9010).first().cloned(),
        || (),
    )
    .await;
    let answer = Outbound {
        draft: Some(draft.finish().await),
        ..Outbound::text("Short answer.").to(target("9010"))
    };
    senders.send(&answer).await.expect("answer");
    let methods: Vec<String> = tg
        .texts_to(9010)
        .into_iter()
        .map(|(_, method, _)| method)
        .collect();
    assert_eq!(methods, ["sendMessage", "editMessageText"]);

    // The draft's message is gone (deleted by the user): the answer is sent anew.
    let answer = Outbound {
        draft: Some(DraftRef {
            id: "d-gone".into(),
            shown: Some(SentId("9011:999".into())),
        }),
        ..Outbound::text("Here it is.").to(target("9011"))
    };
    senders.send(&answer).await.expect("answer");
    let calls = tg.texts_to(9011);
    let methods: Vec<&str> = calls.iter().map(|(_, m, _)| m.as_str()).collect();
    assert_eq!(methods, ["editMessageText", "sendMessage"]);
    assert_eq!(calls[1].2["text"], "Here it is.");
}
