//! The Tailchat channel through the server, against a local Tailchat API: a mention in a group
//! and in a direct message answered, the bot's login renewed when Tailchat stops taking its
//! token, the callback's token checked, bad callbacks refused, redeliveries handled once, and
//! a wrong app secret reported.

mod common;
#[path = "tailchat/fake.rs"]
mod fake;
mod harness;

use std::time::Duration;

use fake::{APP_ID, APP_SECRET, CALLBACK_TOKEN, FakeTailchat, mention};
use flowbot_server::config::TailchatSettings;
use harness::{Server, problem, start_with};
use serde_json::{Value, json};

fn entry(fake: &FakeTailchat, secret: &str) -> TailchatSettings {
    TailchatSettings {
        api_base: fake.base.clone(),
        app_id: APP_ID.into(),
        app_secret: secret.into(),
        callback_token: CALLBACK_TOKEN.into(),
        sends_per_second: 10,
    }
}

async fn callback(server: &Server, token: Option<&str>, body: String) -> reqwest::Response {
    let mut url = format!("{}/hooks/tailchat/tc", server.base);
    if let Some(t) = token {
        url = format!("{url}?token={t}");
    }
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_are_answered_and_the_login_renewed() {
    let tc = FakeTailchat::start().await;
    let f = tc.clone();
    let server = start_with(move |c| {
        c.tailchat.insert("tc".into(), entry(&f, APP_SECRET));
    })
    .await;
    assert_eq!(tc.logins(), 0, "no call to Tailchat before the first send");

    // A mention in a group: the reply names the group and the converse.
    let res = callback(
        &server,
        Some(CALLBACK_TOKEN),
        mention(Some("g1"), "c-general", "m-1", "/echo hello Tailchat").to_string(),
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    let sent = tc.wait_for("c-general", "hello Tailchat").await;
    assert_eq!(sent["groupId"], "g1");
    assert_eq!(sent["content"], "hello Tailchat");
    assert_eq!(tc.logins(), 1);

    // The stored message: the author's id, the text without the mention.
    let page: Value = reqwest::get(format!(
        "{}/api/v1/conversations/tc/g1:c-general/messages",
        server.base
    ))
    .await
    .expect("messages")
    .json()
    .await
    .expect("json");
    let inbound = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["direction"] == "inbound")
        .expect("stored")
        .clone();
    assert_eq!(inbound["sender"], "user-ada");
    assert_eq!(inbound["text"], "/echo hello Tailchat");

    // Tailchat stops taking the token: the bot logs in again and the reply still goes out.
    tc.revoke_tokens();
    callback(
        &server,
        Some(CALLBACK_TOKEN),
        mention(None, "c-dm", "m-2", "/echo after renewal").to_string(),
    )
    .await;
    let sent = tc.wait_for("c-dm", "after renewal").await;
    assert!(
        sent.get("groupId").is_none(),
        "a direct message has no group"
    );
    assert_eq!(tc.logins(), 2);

    // Buttons become a visible list under the text (Tailchat has none).
    callback(
        &server,
        Some(CALLBACK_TOKEN),
        mention(None, "c-dm", "m-3", "/feedback").to_string(),
    )
    .await;
    let ask = tc
        .wait_for("c-dm", "How would you rate this demo, from 1 to 5?")
        .await;
    assert_eq!(
        ask["content"],
        "How would you rate this demo, from 1 to 5?\nReply with: [b]1[/b] · [b]2[/b] · [b]3[/b] · [b]4[/b] · [b]5[/b]"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_need_the_token_and_bad_ones_are_refused() {
    let tc = FakeTailchat::start().await;
    let f = tc.clone();
    let server = start_with(move |c| {
        c.tailchat.insert("tc".into(), entry(&f, APP_SECRET));
    })
    .await;
    let body = mention(Some("g1"), "c-1", "m-10", "/echo once").to_string();
    problem(callback(&server, None, body.clone()).await, 401).await;
    problem(
        callback(&server, Some("callback-token-0123456780"), body.clone()).await,
        401,
    )
    .await;
    problem(
        callback(&server, Some(CALLBACK_TOKEN), "{nope".into()).await,
        400,
    )
    .await;
    let p = problem(
        callback(
            &server,
            Some(CALLBACK_TOKEN),
            json!({"type": "message", "payload": {"converseId": "c-1"}}).to_string(),
        )
        .await,
        422,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap_or("").contains("messageId"),
        "{p}"
    );

    // Other inbox kinds are ignored and counted.
    let res = callback(
        &server,
        Some(CALLBACK_TOKEN),
        json!({"type": "plugin:notice", "payload": {}}).to_string(),
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);

    // Delivered twice: answered once.
    for _ in 0..2 {
        assert_eq!(
            callback(&server, Some(CALLBACK_TOKEN), body.clone())
                .await
                .status()
                .as_u16(),
            200
        );
    }
    tc.wait_for("c-1", "once").await;
    callback(
        &server,
        Some(CALLBACK_TOKEN),
        mention(Some("g1"), "c-1", "m-11", "/echo next").to_string(),
    )
    .await;
    tc.wait_for("c-1", "next").await;
    assert_eq!(
        tc.sent_to("c-1")
            .iter()
            .filter(|m| m["plain"] == "once")
            .count(),
        1
    );
    let metrics = common::metrics(&server.base).await;
    assert!(
        metrics
            .contains("flowbot_channel_ignored_total{channel=\"tc\",reason=\"plugin:notice\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_app_secret_is_reported_and_nothing_is_sent() {
    let tc = FakeTailchat::start().await;
    let f = tc.clone();
    let server = start_with(move |c| {
        c.tailchat
            .insert("tc".into(), entry(&f, "not-the-secret-0000"));
    })
    .await;
    callback(
        &server,
        Some(CALLBACK_TOKEN),
        mention(None, "c-x", "m-20", "/echo lost?").to_string(),
    )
    .await;
    // The send fails at login; the failure is counted and the reply waits in the queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = common::metrics(&server.base).await;
        let errors = metrics
            .lines()
            .find_map(|l| l.strip_prefix("flowbot_channel_api_errors_total{channel=\"tc\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if errors >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tc.sent_to("c-x").is_empty());
    assert_eq!(tc.logins(), 0);
    let queued: Value = reqwest::get(format!("{}/api/v1/tasks?kind=flowbot.deliver", server.base))
        .await
        .expect("tasks")
        .json()
        .await
        .expect("json");
    assert_eq!(
        queued["items"].as_array().map(Vec::len),
        Some(1),
        "the reply is kept for a retry: {queued}"
    );
    server.stop().await;
}
