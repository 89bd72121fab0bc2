//! The Slack channel through the server, against a local Slack: the Events API (URL
//! verification, signatures, replay window, retried deliveries handled once, threads, bot
//! messages and unknown events ignored), button clicks, slash commands, and a 429 waited out.

mod common;
#[path = "slack/fake.rs"]
mod fake;
mod harness;

use fake::{BOT_TOKEN, FakeSlack, SIGNING_SECRET, block_action, message_event, sign};
use flowbot_server::config::SlackSettings;
use harness::{Server, problem, start_with};
use serde_json::{Value, json};

fn entry(fake: &FakeSlack) -> SlackSettings {
    SlackSettings {
        bot_token: BOT_TOKEN.into(),
        signing_secret: SIGNING_SECRET.into(),
        api_base: fake.api(),
        app_token: None,
    }
}

async fn server(fake: &FakeSlack) -> Server {
    let f = fake.clone();
    start_with(move |c| {
        c.slack.insert("sl".into(), entry(&f));
    })
    .await
}

/// POST `body` to the app's `path`, signed at `ts` (now when `None`), with `headers`.
async fn post(
    server: &Server,
    path: &str,
    body: &str,
    content_type: &str,
    ts: Option<i64>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let ts = ts.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/slack/sl/{path}", server.base))
        .header("content-type", content_type)
        .body(body.to_owned());
    for (k, v) in sign(body, ts) {
        req = req.header(k, v);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.expect("post")
}

async fn event(server: &Server, body: &Value, extra: &[(&str, &str)]) -> u16 {
    post(
        server,
        "events",
        &body.to_string(),
        "application/json",
        None,
        extra,
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_verified_stored_once_and_answered() {
    let slack = FakeSlack::start().await;
    let server = server(&slack).await;

    // URL verification.
    let res = post(
        &server,
        "events",
        &json!({"token": "x", "challenge": "ch-4711", "type": "url_verification"}).to_string(),
        "application/json",
        None,
        &[],
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    let v: Value = res.json().await.expect("json");
    assert_eq!(v["challenge"], "ch-4711");

    // Forged, replayed and unsigned requests.
    let body = message_event("Ev1", "C1", "1700000001.000100", "/echo hi Slack").to_string();
    let mut forged = reqwest::Client::new()
        .post(format!("{}/hooks/slack/sl/events", server.base))
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in sign(&format!("{body} "), chrono::Utc::now().timestamp()) {
        forged = forged.header(k, v);
    }
    problem(forged.send().await.expect("post"), 401).await;
    let stale = chrono::Utc::now().timestamp() - 600;
    problem(
        post(
            &server,
            "events",
            &body,
            "application/json",
            Some(stale),
            &[],
        )
        .await,
        401,
    )
    .await;
    let unsigned = reqwest::Client::new()
        .post(format!("{}/hooks/slack/sl/events", server.base))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    problem(unsigned, 401).await;
    problem(
        post(
            &server,
            "events",
            "{not json",
            "application/json",
            None,
            &[],
        )
        .await,
        400,
    )
    .await;

    // A message, delivered three times (Slack retries when it misses the 200), and the
    // app_mention event of the same message: answered once.
    assert_eq!(
        event(&server, &serde_json::from_str(&body).expect("json"), &[]).await,
        200
    );
    let retry: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        event(
            &server,
            &retry,
            &[
                ("x-slack-retry-num", "1"),
                ("x-slack-retry-reason", "http_timeout")
            ]
        )
        .await,
        200
    );
    let mention = json!({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": "Ev2", "event_time": 1_700_000_000,
        "event": {"type": "app_mention", "channel": "C1", "user": "U42", "text": "<@U0BOT> /echo hi Slack",
                  "ts": "1700000001.000100", "event_ts": "1700000001.000100"}});
    assert_eq!(event(&server, &mention, &[]).await, 200);
    let sent = slack.wait_for("C1", "hi Slack").await;
    assert_eq!(sent["mrkdwn"], false);

    // A reply in a thread stays in the thread.
    let mut threaded = message_event("Ev3", "C1", "1700000002.000200", "/echo in thread");
    threaded["event"]["thread_ts"] = "1700000000.000050".into();
    assert_eq!(event(&server, &threaded, &[]).await, 200);
    let sent = slack.wait_for("C1", "in thread").await;
    assert_eq!(sent["thread_ts"], "1700000000.000050");

    // An edit is an event of its own, which the demo's `echo-edited` rule answers; an
    // unfurl (a `message_changed` that leaves the text alone) is not an edit.
    let edit = |id: &str, text: &str| {
        json!({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
            "event_id": id, "event_time": 1_700_000_000,
            "event": {"type": "message", "subtype": "message_changed", "hidden": true, "channel": "C1",
                      "ts": "1700000004.000400", "event_ts": "1700000004.000400",
                      "message": {"type": "message", "user": "U42", "text": text, "ts": "1700000001.000100",
                                  "edited": {"user": "U42", "ts": "1700000004.000400"}},
                      "previous_message": {"type": "message", "user": "U42", "text": "/echo hi Slack",
                                           "ts": "1700000001.000100"}}})
    };
    assert_eq!(
        event(&server, &edit("Ev5", "/echo hi there"), &[]).await,
        200
    );
    slack.wait_for("C1", "hi there (edited)").await;
    assert_eq!(
        event(&server, &edit("Ev5b", "/echo hi Slack"), &[]).await,
        200
    );

    // Bot messages and unknown events are ignored and counted.
    let mut from_bot = message_event("Ev4", "C1", "1700000003.000300", "/echo loop?");
    from_bot["event"]["bot_id"] = "B1".into();
    assert_eq!(event(&server, &from_bot, &[]).await, 200);
    let unknown = json!({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": "Ev6", "event_time": 1_700_000_000, "event": {"type": "pin_added", "channel_id": "C1", "user": "U42"}});
    assert_eq!(event(&server, &unknown, &[]).await, 200);

    let last = message_event("Ev7", "C1", "1700000005.000500", "/echo last");
    assert_eq!(event(&server, &last, &[]).await, 200);
    slack.wait_for("C1", "last").await;
    assert_eq!(
        slack
            .posted("C1")
            .iter()
            .filter(|b| b["text"] == "hi Slack")
            .count(),
        1,
        "{:?}",
        slack.posted("C1")
    );
    assert!(slack.posted("C1").iter().all(|b| b["text"] != "loop?"));
    let metrics = common::metrics(&server.base).await;
    for reason in [
        "message from a bot",
        "message_changed without a person's text",
        "pin_added",
    ] {
        assert!(
            metrics.contains(&format!(
                "flowbot_channel_ignored_total{{channel=\"sl\",reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_round_trip_and_slash_commands_answer() {
    let slack = FakeSlack::start().await;
    let server = server(&slack).await;
    let ask = message_event("Ev10", "C2", "1700000010.000100", "/feedback");
    assert_eq!(event(&server, &ask, &[]).await, 200);
    let asked = slack
        .wait_for("C2", "How would you rate this demo, from 1 to 5?")
        .await;
    let values: Vec<&str> = asked["blocks"][1]["elements"]
        .as_array()
        .expect("buttons")
        .iter()
        .map(|b| b["value"].as_str().expect("value"))
        .collect();
    assert_eq!(values, ["1", "2", "3", "4", "5"]);
    assert_eq!(asked["blocks"][1]["type"], "actions");

    let res = post(
        &server,
        "interactions",
        &block_action("C2", "trig-1", "4"),
        "application/x-www-form-urlencoded",
        None,
        &[],
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    slack
        .wait_for("C2", "Glad you like it! Anything to add?")
        .await;
    problem(
        post(
            &server,
            "interactions",
            "payload=%7Bnope",
            "application/x-www-form-urlencoded",
            None,
            &[],
        )
        .await,
        400,
    )
    .await;

    // A slash command, answered in its channel; Slack rate-limits the first post.
    slack.rate_limit_once(1);
    let form = "token=x&team_id=T1&team_domain=acme&channel_id=C3&channel_name=ops&user_id=U42&user_name=ada\
                &command=%2Fecho&text=from+a+slash+command&response_url=https%3A%2F%2Fhooks.slack.com%2Fx&trigger_id=trig-2";
    let res = post(
        &server,
        "commands",
        form,
        "application/x-www-form-urlencoded",
        None,
        &[],
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    slack.wait_for("C3", "from a slash command").await;
    common::eventually(
        "the 429 waited out",
        std::time::Duration::from_secs(10),
        || {
            slack
                .posted("C3")
                .iter()
                .filter(|b| b["text"] == "from a slash command")
                .count()
                == 2
        },
    )
    .await;
    let metrics = common::metrics(&server.base).await;
    assert!(
        metrics.contains("flowbot_channel_api_errors_total{channel=\"sl\"} 0"),
        "a 429 waited out is not a failure: {metrics}"
    );
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", server.base))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    for path in ["events", "interactions", "commands"] {
        assert!(doc["paths"][format!("/hooks/slack/{{channel}}/{path}")]["post"].is_object());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_posts_ephemeral_markdown_edits_and_files() {
    use flowbot_core::{Attachment, Outbound, Target, UserId};
    let slack = FakeSlack::start().await;
    let dir = common::TempDir::new("flowbot-slack-sender");
    let store: std::sync::Arc<dyn flowbot_core::Store> = std::sync::Arc::new(
        flowbot_store::SqliteStore::open_in_dir(&dir.0)
            .await
            .expect("store"),
    );
    let (_, channel) =
        flowbot_channels::slack::Slack::new(store, entry(&slack).channel_config("sl"))
            .expect("slack");
    let sender = channel.sender();
    let target = Target {
        channel: "sl".into(),
        conversation: "C9".into(),
        thread: Some("1700000000.000001".into()),
    };

    // Ephemeral: only for the user it answers.
    let mut only_you = Outbound::text("just for you").to(target.clone());
    only_you.ephemeral = true;
    only_you.recipient = Some(UserId("U42".into()));
    sender.send(&only_you).await.expect("ephemeral");
    let e = &slack.calls("chat.postEphemeral")[0];
    assert_eq!(
        (e["user"].as_str(), e["channel"].as_str()),
        (Some("U42"), Some("C9"))
    );
    assert_eq!(e["thread_ts"], "1700000000.000001");

    // Markdown as Slack's standard Markdown; an edit with chat.update.
    let id = sender
        .send(&Outbound::markdown("**Deploy** done").to(target.clone()))
        .await
        .expect("markdown");
    assert_eq!(slack.posted("C9")[0]["markdown_text"], "**Deploy** done");
    sender
        .edit(
            &id,
            &Outbound::markdown("**Deploy** rolled back").to(target.clone()),
        )
        .await
        .expect("edit");
    let u = &slack.calls("chat.update")[0];
    assert_eq!(u["ts"], id.0.split_once(':').expect("channel:ts").1);
    assert_eq!(u["markdown_text"], "**Deploy** rolled back");

    // A file, fetched from its URL and uploaded the external way, into the thread.
    let mut with_file = Outbound::text("").to(target.clone());
    with_file.attachments.push(Attachment {
        url: format!("{}/files/report.txt", slack.base),
        name: Some("report.txt".into()),
        mime: Some("text/plain".into()),
        size: None,
    });
    sender.send(&with_file).await.expect("file");
    let ask = &slack.calls("files.getUploadURLExternal")[0];
    assert_eq!(
        (ask["filename"].as_str(), ask["length"].as_str()),
        (Some("report.txt"), Some("22"))
    );
    assert_eq!(slack.uploads()[0].1, b"contents of report.txt");
    let done = &slack.calls("files.completeUploadExternal")[0];
    assert_eq!(done["channel_id"], "C9");
    assert_eq!(done["thread_ts"], "1700000000.000001");

    // Slack's refusals name Slack's error.
    let (_, bad) = flowbot_channels::slack::Slack::new(
        std::sync::Arc::new(
            flowbot_store::SqliteStore::open_in_dir(dir.0.join("2"))
                .await
                .expect("store"),
        ),
        flowbot_channels::slack::SlackConfig {
            bot_token: "xoxb-wrong".into(),
            ..entry(&slack).channel_config("sl")
        },
    )
    .expect("slack");
    let err = bad
        .sender()
        .send(&Outbound::text("x").to(target))
        .await
        .expect_err("a wrong token");
    assert!(err.to_string().contains("invalid_auth"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_receives_acknowledges_and_reconnects() {
    let slack = FakeSlack::start().await;
    let f = slack.clone();
    let server = start_with(move |c| {
        let mut e = entry(&f);
        e.app_token = Some(fake::APP_TOKEN.into());
        c.slack.insert("sl".into(), e);
    })
    .await;
    common::eventually(
        "the socket opened",
        std::time::Duration::from_secs(10),
        || slack.sockets_opened() == 1,
    )
    .await;

    // An event over the socket: stored, acknowledged, answered.
    let event = message_event("EvS1", "C5", "1700000050.000100", "/echo via the socket");
    let id = slack.envelope("events_api", &event);
    slack.wait_for("C5", "via the socket").await;
    common::eventually("acknowledged", std::time::Duration::from_secs(10), || {
        slack.acks().contains(&id)
    })
    .await;

    // Slack asks for a new connection: the app reconnects and carries on.
    slack.disconnect();
    common::eventually("reconnected", std::time::Duration::from_secs(10), || {
        slack.sockets_opened() == 2
    })
    .await;
    let command = json!({"token": "x", "team_id": "T1", "team_domain": "acme", "channel_id": "C5",
        "channel_name": "ops", "user_id": "U42", "user_name": "ada", "command": "/echo",
        "text": "a socket command", "response_url": "https://hooks.slack.com/x", "trigger_id": "trig-s2"});
    let id = slack.envelope("slash_commands", &command);
    slack.wait_for("C5", "a socket command").await;
    common::eventually("acknowledged", std::time::Duration::from_secs(10), || {
        slack.acks().contains(&id)
    })
    .await;

    // No connection failed along the way.
    let metrics = common::metrics(&server.base).await;
    assert!(
        metrics.contains("flowbot_channel_api_errors_total{channel=\"sl\"} 0"),
        "{metrics}"
    );
    server.stop().await;
}

/// The final answer completing a draft ([`flowbot_core::Draft`]) updates the draft's message
/// with `chat.update` (every 1.2 s at most: Tier 3) and uploads its files after it; a draft
/// message Slack does not know gets the answer as a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_becomes_the_answer() {
    use flowbot_core::{Attachment, Draft, DraftRef, Outbound, Senders, SentId, Streaming, Target};

    let slack = FakeSlack::start().await;
    let dir = common::TempDir::new("flowbot-slack-draft");
    let store: std::sync::Arc<dyn flowbot_core::Store> = std::sync::Arc::new(
        flowbot_store::SqliteStore::open_in_dir(&dir.0)
            .await
            .expect("store"),
    );
    let (_, channel) =
        flowbot_channels::slack::Slack::new(store, entry(&slack).channel_config("sl"))
            .expect("slack");
    let mut senders = Senders::default();
    senders
        .insert("sl".into(), channel.sender().clone())
        .expect("one channel");
    let target = Target {
        channel: "sl".into(),
        conversation: "CDRAFT".into(),
        thread: None,
    };
    assert_eq!(
        channel.sender().streaming(&target),
        Streaming::Edit {
            interval: std::time::Duration::from_millis(1200)
        }
    );

    let mut draft = Draft::new(&senders, target.clone()).format(flowbot_core::Format::Markdown);
    draft.update("The **report**");
    common::found(
        "the draft shown",
        || slack.posted("CDRAFT").first().cloned(),
        || (),
    )
    .await;
    let reference = draft.finish().await;
    let shown = reference.shown.clone().expect("shown");
    let mut answer = Outbound {
        draft: Some(reference),
        ..Outbound::markdown("The **report** is attached.").to(target.clone())
    };
    answer.attachments.push(Attachment {
        url: format!("{}/files/report.txt", slack.base),
        name: Some("report.txt".into()),
        mime: Some("text/plain".into()),
        size: None,
    });
    assert_eq!(senders.send(&answer).await.expect("answer"), shown);
    let methods: Vec<String> = slack
        .messages_in("CDRAFT")
        .into_iter()
        .map(|(_, m, _)| m)
        .collect();
    assert_eq!(methods, ["chat.postMessage", "chat.update"]);
    let update = &slack.calls("chat.update")[0];
    assert_eq!(update["markdown_text"], "The **report** is attached.");
    assert_eq!(
        Some(format!("CDRAFT:{}", update["ts"].as_str().expect("ts"))),
        Some(shown.0)
    );
    assert_eq!(slack.uploads()[0].1, b"contents of report.txt");
    assert_eq!(
        slack.calls("files.completeUploadExternal")[0]["channel_id"],
        "CDRAFT"
    );

    // A draft message Slack does not know: the answer is posted anew.
    let answer = Outbound {
        draft: Some(DraftRef {
            id: "d-gone".into(),
            shown: Some(SentId("CGONE:1700000000.999999".into())),
        }),
        ..Outbound::text("Here it is.").to(Target {
            conversation: "CGONE".into(),
            ..target
        })
    };
    senders.send(&answer).await.expect("answer");
    let posted = slack.posted("CGONE");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["text"], "Here it is.");
}
