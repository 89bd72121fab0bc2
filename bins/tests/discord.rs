//! The Discord channel (HTTP interactions) through the server, against a local Discord API:
//! the rules' commands registered as slash commands, PING, signatures and the replay window,
//! a command answered by replacing its deferred response, a button click answered with a
//! follow-up, a redelivered interaction handled once, and a 429 waited out.

mod common;
#[path = "discord/fake.rs"]
mod fake;
mod harness;

use fake::{APP_ID, BOT_TOKEN, FakeDiscord, click, command, public_key, sign};
use flowbot_server::config::DiscordSettings;
use harness::{Server, problem, start_with};
use serde_json::{Value, json};

/// The server channel commands are used in (a numeric snowflake, as Discord's ids are).
const C1: &str = "1100000000000000001";

fn entry(fake: &FakeDiscord) -> DiscordSettings {
    DiscordSettings::interactions_only(BOT_TOKEN.into(), APP_ID.into(), public_key(), fake.api())
}

async fn post(server: &Server, body: &str, ts: i64) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/discord/dc/interactions", server.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in sign(body, ts) {
        req = req.header(k, v);
    }
    req.send().await.expect("post")
}

async fn interact(server: &Server, body: &Value) -> Value {
    let res = post(server, &body.to_string(), chrono::Utc::now().timestamp()).await;
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_clicks_are_verified_and_answered() {
    let discord = FakeDiscord::start().await;
    let f = discord.clone();
    let server = start_with(move |c| {
        c.discord.insert("dc".into(), entry(&f));
    })
    .await;

    // The demo rules' commands, registered as global slash commands with typed options.
    let registered = discord.commands();
    let remind = registered
        .iter()
        .find(|c| c["name"] == "remind")
        .expect("remind registered");
    let options: Vec<(&str, bool)> = remind["options"]
        .as_array()
        .expect("options")
        .iter()
        .map(|o| (o["name"].as_str().expect("name"), o["required"] == true))
        .collect();
    assert_eq!(options, [("delay", true), ("text", true)]);
    assert!(registered.iter().any(|c| c["name"] == "feedback"));
    assert!(
        registered
            .iter()
            .all(|c| c["description"].as_str().is_some_and(|d| !d.is_empty()))
    );

    // PING, and what must be refused.
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        interact(&server, &json!({"type": 1})).await,
        json!({"type": 1})
    );
    // An interaction type newer than Discord's model here: acknowledged, not an event.
    assert_eq!(
        interact(&server, &json!({"type": 99, "id": "1", "token": "t"})).await,
        json!({"type": 6})
    );
    let body = json!({"type": 1}).to_string();
    let mut forged = reqwest::Client::new()
        .post(format!("{}/hooks/discord/dc/interactions", server.base))
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in sign("{\"type\":2}", now) {
        forged = forged.header(k, v);
    }
    problem(forged.send().await.expect("post"), 401).await;
    problem(post(&server, &body, now - 3600).await, 401).await;
    let unsigned = reqwest::Client::new()
        .post(format!("{}/hooks/discord/dc/interactions", server.base))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    problem(unsigned, 401).await;
    problem(post(&server, "{oops", now).await, 400).await;
    problem(
        post(&server, &json!({"kind": 2}).to_string(), now).await,
        422,
    )
    .await;
    // Interactions Discord's model does not describe: no token, a channel id that is not a
    // snowflake, a member without a user, a type as a string, not an object.
    let (id, token) = discord.interaction(C1);
    let complete = command(&id, &token, C1, "echo", &[("text", "x")]);
    let mut broken = Vec::new();
    for (field, value) in [
        ("token", Value::Null),
        ("channel_id", json!("general")),
        (
            "member",
            json!({"roles": [], "deaf": false, "mute": false, "flags": 0}),
        ),
        ("type", json!("2")),
    ] {
        let mut i = complete.clone();
        i[field] = value;
        broken.push(i);
    }
    broken.push(json!([complete]));
    for body in broken {
        let p = problem(post(&server, &body.to_string(), now).await, 422).await;
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("invalid interaction: ")),
            "{p}"
        );
    }

    // A command: acknowledged at once, the reply replaces the deferred response. Discord
    // delivering it again changes nothing.
    let (id, token) = discord.interaction(C1);
    let echo = command(&id, &token, C1, "echo", &[("text", "hello Discord")]);
    assert_eq!(interact(&server, &echo).await, json!({"type": 5}));
    assert_eq!(interact(&server, &echo).await, json!({"type": 5}));
    let sent = discord.wait_for(C1, "hello Discord").await;
    assert_eq!(sent.via, "original");
    assert_eq!(sent.body["allowed_mentions"], json!({"parse": []}));

    // Buttons: the dialog's choices as an action row; a click is acknowledged and answered
    // with a follow-up (after a 429, waited out).
    let (id, token) = discord.interaction(C1);
    interact(&server, &command(&id, &token, C1, "feedback", &[])).await;
    let ask = discord
        .wait_for(C1, "How would you rate this demo, from 1 to 5?")
        .await;
    let ids: Vec<&str> = ask.body["components"][0]["components"]
        .as_array()
        .expect("buttons")
        .iter()
        .map(|b| b["custom_id"].as_str().expect("custom_id"))
        .collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    discord.rate_limit_once();
    let (id, token) = discord.interaction(C1);
    assert_eq!(
        interact(&server, &click(&id, &token, C1, "5")).await,
        json!({"type": 6})
    );
    let answer = discord
        .wait_for(C1, "Glad you like it! Anything to add?")
        .await;
    assert_eq!(answer.via, "followup");

    assert_eq!(
        discord
            .sent_to(C1)
            .iter()
            .filter(|s| s.body["content"] == "hello Discord")
            .count(),
        1
    );
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", server.base))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"]["/hooks/discord/{channel}/interactions"]["post"].is_object());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_posts_to_channels_and_edits() {
    use flowbot_core::{Outbound, Target};
    let discord = FakeDiscord::start().await;
    let dir = common::TempDir::new("flowbot-discord-sender");
    let store: std::sync::Arc<dyn flowbot_core::Store> = std::sync::Arc::new(
        flowbot_store::SqliteStore::open_in_dir(&dir.0)
            .await
            .expect("store"),
    );
    let (_, channel) = flowbot_channels::discord::Discord::new(
        store,
        entry(&discord).channel_config("dc").expect("settings"),
    )
    .expect("discord");
    let target = Target {
        channel: "dc".into(),
        conversation: "C7".into(),
        thread: None,
    };
    let long = "line\n".repeat(500); // 2,500 characters: two messages
    let id = channel
        .sender()
        .send(
            &Outbound::markdown(long)
                .button("OK", "ok")
                .to(target.clone()),
        )
        .await
        .expect("send");
    let sent = discord.sent_to("C7");
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|s| s.via == "channel"));
    assert!(
        sent[0].body.get("components").is_none(),
        "buttons go with the last part"
    );
    assert_eq!(
        sent[1].body["components"][0]["components"][0]["custom_id"],
        "ok"
    );
    channel
        .sender()
        .edit(&id, &Outbound::text("edited").to(target))
        .await
        .expect("edit");
    assert_eq!(discord.edits()[0].1["content"], "edited");

    // A thread reply goes to the thread; images become embeds, other files links; a reply to
    // a message read from the gateway references it.
    let mut reply = Outbound::text("see attached").to(Target {
        channel: "dc".into(),
        conversation: "C7".into(),
        thread: Some("T7".into()),
    });
    reply.reply_to = Some(flowbot_core::MessageId("msg:5551".into()));
    for (url, mime) in [
        ("https://files.example/chart.png?x=1", None),
        ("https://files.example/photo", Some("image/jpeg")),
        ("https://files.example/report.pdf", None),
    ] {
        reply.attachments.push(flowbot_core::Attachment {
            url: url.into(),
            name: Some("file".into()),
            mime: mime.map(str::to_owned),
            size: None,
        });
    }
    channel.sender().send(&reply).await.expect("thread reply");
    let in_thread = discord.sent_to("T7");
    assert_eq!(in_thread.len(), 1, "sent to the thread");
    let body = &in_thread[0].body;
    assert_eq!(
        body["content"],
        "see attached\nhttps://files.example/report.pdf"
    );
    let images: Vec<&str> = body["embeds"]
        .as_array()
        .expect("embeds")
        .iter()
        .map(|e| e["image"]["url"].as_str().expect("image url"))
        .collect();
    assert_eq!(
        images,
        [
            "https://files.example/chart.png?x=1",
            "https://files.example/photo"
        ]
    );
    assert_eq!(body["message_reference"]["message_id"], "5551");

    // Discord reports the route's bucket empty for 0.4 s: the next send waits for it.
    discord.empty_bucket(0.4);
    let short = |t: &str| {
        Outbound::text(t).to(Target {
            channel: "dc".into(),
            conversation: "C8".into(),
            thread: None,
        })
    };
    channel.sender().send(&short("one")).await.expect("one");
    let started = std::time::Instant::now();
    channel.sender().send(&short("two")).await.expect("two");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(350),
        "waited {:?} for the bucket",
        started.elapsed()
    );
    assert_eq!(discord.sent_to("C8").len(), 2);
}

/// The final answer completing a draft ([`flowbot_core::Draft`]) edits the draft's message,
/// once a second at most: a text longer than one message edits its first part into the draft
/// and sends the rest, the buttons with the last; a draft message Discord no longer knows gets
/// the answer as a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_becomes_the_answer() {
    use flowbot_core::{Draft, DraftRef, Outbound, Senders, SentId, Streaming, Target};

    let discord = FakeDiscord::start().await;
    let dir = common::TempDir::new("flowbot-discord-draft");
    let store: std::sync::Arc<dyn flowbot_core::Store> = std::sync::Arc::new(
        flowbot_store::SqliteStore::open_in_dir(&dir.0)
            .await
            .expect("store"),
    );
    let (_, channel) = flowbot_channels::discord::Discord::new(
        store,
        entry(&discord).channel_config("dc").expect("settings"),
    )
    .expect("discord");
    let mut senders = Senders::default();
    senders
        .insert("dc".into(), channel.sender().clone())
        .expect("one channel");
    let target = Target {
        channel: "dc".into(),
        conversation: "C-draft".into(),
        thread: None,
    };
    assert_eq!(
        channel.sender().streaming(&target),
        Streaming::Edit {
            interval: std::time::Duration::from_secs(1)
        }
    );

    let mut draft = Draft::new(&senders, target.clone());
    draft.update("line");
    common::found(
        "the draft shown",
        || discord.sent_to("C-draft").first().cloned(),
        || (),
    )
    .await;
    let reference = draft.finish().await;
    let shown = reference.shown.clone().expect("shown");
    let long = "line\n".repeat(500); // 2,500 characters: two messages
    let answer = Outbound {
        draft: Some(reference),
        ..Outbound::markdown(long)
            .button("OK", "ok")
            .to(target.clone())
    };
    let id = senders.send(&answer).await.expect("answer");
    let timeline = discord.timeline("C-draft");
    let what: Vec<&str> = timeline.iter().map(|(_, w, _)| *w).collect();
    assert_eq!(what, ["create", "edit", "create"]);
    let (edit, rest) = (&timeline[1].2, &timeline[2].2);
    assert_eq!(edit["content"].as_str().map(str::len), Some(2000));
    assert!(
        edit.get("components").is_none(),
        "buttons go with the last part"
    );
    assert_eq!(rest["content"].as_str().map(str::len), Some(500));
    assert_eq!(rest["components"][0]["components"][0]["custom_id"], "ok");
    assert_eq!(
        discord.edits()[0].0,
        shown.0,
        "the draft's message was edited"
    );
    assert_ne!(id, shown, "the id of the last part");

    // A draft message Discord does not know (deleted): the answer is sent anew.
    let answer = Outbound {
        draft: Some(DraftRef {
            id: "d-gone".into(),
            shown: Some(SentId("C-gone:1".into())),
        }),
        ..Outbound::text("Here it is.").to(Target {
            conversation: "C-gone".into(),
            ..target
        })
    };
    senders.send(&answer).await.expect("answer");
    let sent = discord.sent_to("C-gone");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["content"], "Here it is.");
}
