//! One conformance suite for every channel with users on the other side: web chat, the
//! generic webhook, Telegram (against its local Bot API server), Tailchat, Slack and Discord
//! (against their local APIs), all served by one server with the demo bot. For each:
//!
//! - a message in is stored as an event with the platform's identities (user, conversation)
//!   and text, and the reply comes back in the platform's own form;
//! - a reply's buttons arrive as the platform's buttons, and a click on one reaches the bot
//!   (the demo's feedback dialog takes it as the answer); Tailchat has no buttons, so they are
//!   listed under the text and the user answers with one;
//! - after a dropped connection (a closed socket, a delivery retried after its answer was
//!   lost, a Bot API that fails two polls, a Tailchat session that expired, Slack redelivering
//!   an event whose 200 it missed, Discord's webhook failing a reply, Discord's gateway
//!   closing the socket) the channel carries on and nothing is handled twice.
//!
//! Discord runs twice: `discord` over the HTTP interactions endpoint (users reach the bot
//! through slash commands), `discord_gateway` over the gateway (plain messages).

mod common;
#[path = "discord/fake.rs"]
mod discord_fake;
#[path = "telegram/fake.rs"]
mod fake;
mod harness;
#[path = "slack/fake.rs"]
mod slack_fake;
#[path = "tailchat/fake.rs"]
mod tailchat_fake;

use std::collections::HashMap;
use std::time::Duration;

use discord_fake::FakeDiscord;
use fake::{FakeTelegram, Fault};
use flowbot_core::async_trait;
use flowbot_server::config::{
    DiscordEntry, SlackEntry, TailchatEntry, TelegramEntry, TelegramMode,
};
use futures_util::SinkExt;
use harness::{Chat, SECRET, Server, next_frame, start_with};
use serde_json::{Value, json};
use slack_fake::FakeSlack;
use tailchat_fake::FakeTailchat;
use tokio_tungstenite::tungstenite::Message as Ws;

/// A reply as the user sees it: its text and its buttons' values.
#[derive(Debug, PartialEq)]
struct Reply {
    text: String,
    buttons: Vec<String>,
}

/// A user on one platform.
#[async_trait]
trait Platform: Send {
    /// The FlowBot channel.
    fn channel(&self) -> &str;
    /// The user's id as the platform gives it.
    fn user(&self) -> &str;
    /// The platform's id for conversation `name`.
    fn conversation(&self, name: &str) -> String;
    /// The user writes `text` in conversation `name`.
    async fn say(&mut self, name: &str, text: &str);
    /// The user clicks the button with `value` in conversation `name`.
    async fn click(&mut self, name: &str, value: &str);
    /// The next reply the bot sends to conversation `name`.
    async fn reply(&mut self, name: &str) -> Reply;
    /// The connection drops and the platform recovers in its own way.
    async fn drop_connection(&mut self, name: &str);
}

/// The first message for `key` not returned before, from what `sent` lists (waiting up to
/// 20 s for it).
async fn next_unseen<T>(
    seen: &mut HashMap<String, usize>,
    key: &str,
    mut sent: impl FnMut() -> Vec<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = seen.get(key).copied().unwrap_or(0);
        if let Some(m) = sent().into_iter().nth(n) {
            seen.insert(key.to_owned(), n + 1);
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reply in {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Web {
    ws_base: String,
    sockets: HashMap<String, Chat>,
}

impl Web {
    async fn socket(&mut self, name: &str) -> &mut Chat {
        if !self.sockets.contains_key(name) {
            let url = format!("{}/ws/chat?user=ada&conversation={name}", self.ws_base);
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("connect");
            next_frame(&mut ws, "history").await;
            self.sockets.insert(name.to_owned(), ws);
        }
        self.sockets.get_mut(name).expect("just opened")
    }
}

#[async_trait]
impl Platform for Web {
    fn channel(&self) -> &str {
        "web"
    }
    fn user(&self) -> &str {
        "ada"
    }
    fn conversation(&self, name: &str) -> String {
        name.to_owned()
    }
    async fn say(&mut self, name: &str, text: &str) {
        let frame = json!({"type": "message", "text": text}).to_string();
        self.socket(name)
            .await
            .send(Ws::text(frame))
            .await
            .expect("send");
    }
    async fn click(&mut self, name: &str, value: &str) {
        let frame = json!({"type": "button", "value": value}).to_string();
        self.socket(name)
            .await
            .send(Ws::text(frame))
            .await
            .expect("send");
    }
    async fn reply(&mut self, name: &str) -> Reply {
        let frame = next_frame(self.socket(name).await, "message").await;
        Reply {
            text: frame["text"].as_str().unwrap_or_default().to_owned(),
            buttons: frame["buttons"]
                .as_array()
                .map(|b| {
                    b.iter()
                        .map(|b| b["value"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
    async fn drop_connection(&mut self, name: &str) {
        // The browser loses its socket; the next message reconnects.
        if let Some(mut ws) = self.sockets.remove(name) {
            let _ = ws.close(None).await;
        }
    }
}

struct Webhook {
    base: String,
    callbacks: common::Received,
    seen: HashMap<String, usize>,
    http: reqwest::Client,
}

impl Webhook {
    async fn post(&self, body: &Value) {
        let bytes = body.to_string();
        let signature = flowbot_channels::webhook::sign(
            SECRET,
            chrono::Utc::now().timestamp(),
            bytes.as_bytes(),
        );
        let res = self
            .http
            .post(format!("{}/hooks/webhook/crm", self.base))
            .header("content-type", "application/json")
            .header(flowbot_channels::webhook::SIGNATURE_HEADER, signature)
            .body(bytes)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 202, "{:?}", res.text().await);
    }
}

#[async_trait]
impl Platform for Webhook {
    fn channel(&self) -> &str {
        "crm"
    }
    fn user(&self) -> &str {
        "u-17"
    }
    fn conversation(&self, name: &str) -> String {
        format!("ticket-{name}")
    }
    async fn say(&mut self, name: &str, text: &str) {
        let body = json!({"user": "u-17", "conversation": self.conversation(name), "text": text,
                          "id": uuid::Uuid::new_v4().to_string()});
        self.post(&body).await;
    }
    async fn click(&mut self, name: &str, value: &str) {
        let body =
            json!({"user": "u-17", "conversation": self.conversation(name), "button": value});
        self.post(&body).await;
    }
    async fn reply(&mut self, name: &str) -> Reply {
        let conversation = self.conversation(name);
        let callbacks = self.callbacks.clone();
        let (callback, signed) = next_unseen(&mut self.seen, &conversation, || {
            let all = callbacks.lock().expect("lock");
            all.iter()
                .filter(|(c, _)| c.conversation == conversation)
                .cloned()
                .collect()
        })
        .await;
        assert!(signed, "the reply carries a valid signature");
        Reply {
            text: callback.text,
            buttons: callback.buttons.into_iter().map(|b| b.value).collect(),
        }
    }
    async fn drop_connection(&mut self, name: &str) {
        // The connection drops before the sender sees its 202: it delivers the message again
        // with the same id.
        let body = json!({"user": "u-17", "conversation": self.conversation(name),
                          "text": "/echo delivered twice", "id": "drop-1"});
        self.post(&body).await;
        self.post(&body).await;
        assert_eq!(self.reply(name).await.text, "delivered twice");
    }
}

struct Telegram {
    fake: FakeTelegram,
    seen: HashMap<String, usize>,
    clicks: u32,
}

impl Telegram {
    fn chat(name: &str) -> i64 {
        7_000 + name.bytes().map(i64::from).sum::<i64>()
    }
}

#[async_trait]
impl Platform for Telegram {
    fn channel(&self) -> &str {
        "tg"
    }
    fn user(&self) -> &str {
        "42"
    }
    fn conversation(&self, name: &str) -> String {
        Telegram::chat(name).to_string()
    }
    async fn say(&mut self, name: &str, text: &str) {
        self.fake.push(fake::text(Telegram::chat(name), text));
    }
    async fn click(&mut self, name: &str, value: &str) {
        self.clicks += 1;
        let id = format!("cbq-{}", self.clicks);
        self.fake
            .push(fake::click(Telegram::chat(name), &id, value));
    }
    async fn reply(&mut self, name: &str) -> Reply {
        let chat = Telegram::chat(name);
        let fake = self.fake.clone();
        let m = next_unseen(&mut self.seen, &chat.to_string(), || fake.sent_to(chat)).await;
        let buttons = m["reply_markup"]["inline_keyboard"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .flat_map(|r| r.as_array().cloned().unwrap_or_default())
                    .map(|b| b["callback_data"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        Reply {
            text: m["text"].as_str().unwrap_or_default().to_owned(),
            buttons,
        }
    }
    async fn drop_connection(&mut self, _name: &str) {
        // The Bot API fails the next two polls (a proxy's 502s).
        self.fake.fault("getUpdates", Fault::BadGateway);
        self.fake.fault("getUpdates", Fault::BadGateway);
    }
}

struct Tailchat {
    fake: FakeTailchat,
    base: String,
    seen: HashMap<String, usize>,
    messages: u32,
}

#[async_trait]
impl Platform for Tailchat {
    fn channel(&self) -> &str {
        "tc"
    }
    fn user(&self) -> &str {
        "user-ada"
    }
    fn conversation(&self, name: &str) -> String {
        format!("g1:c-{name}")
    }
    async fn say(&mut self, name: &str, text: &str) {
        self.messages += 1;
        let body = tailchat_fake::mention(
            Some("g1"),
            &format!("c-{name}"),
            &format!("m-{}", self.messages),
            text,
        );
        let res = reqwest::Client::new()
            .post(format!(
                "{}/hooks/tailchat/tc?token={}",
                self.base,
                tailchat_fake::CALLBACK_TOKEN
            ))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 200);
    }
    async fn click(&mut self, name: &str, value: &str) {
        // No buttons on Tailchat: the user answers with the listed value.
        self.say(name, value).await;
    }
    async fn reply(&mut self, name: &str) -> Reply {
        let converse = format!("c-{name}");
        let fake = self.fake.clone();
        let m = next_unseen(&mut self.seen, &converse, || fake.sent_to(&converse)).await;
        assert_eq!(m["groupId"], "g1");
        let content = m["content"].as_str().unwrap_or_default();
        let (text, options) = content
            .split_once("\nReply with: ")
            .unwrap_or((content, ""));
        let buttons = options
            .split(" · ")
            .filter(|o| !o.is_empty())
            .map(|o| {
                o.rsplit_once("[b]")
                    .map_or(o, |(_, v)| v)
                    .trim_end_matches(')')
                    .trim_end_matches("[/b]")
                    .to_owned()
            })
            .collect();
        Reply {
            text: text.to_owned(),
            buttons,
        }
    }
    async fn drop_connection(&mut self, _name: &str) {
        // The bot's session ends on Tailchat's side: its token is refused from now on.
        self.fake.revoke_tokens();
    }
}

struct SlackUser {
    fake: FakeSlack,
    base: String,
    seen: HashMap<String, usize>,
    events: u32,
    last: Option<String>,
}

impl SlackUser {
    async fn post(&self, path: &str, body: &str, content_type: &str, extra: &[(&str, &str)]) {
        let mut req = reqwest::Client::new()
            .post(format!("{}/hooks/slack/sl/{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_owned());
        for (k, v) in slack_fake::sign(body, chrono::Utc::now().timestamp()) {
            req = req.header(k, v);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("post");
        assert_eq!(res.status().as_u16(), 200);
    }
}

#[async_trait]
impl Platform for SlackUser {
    fn channel(&self) -> &str {
        "sl"
    }
    fn user(&self) -> &str {
        "U42"
    }
    fn conversation(&self, name: &str) -> String {
        format!("C{}", name.to_uppercase())
    }
    async fn say(&mut self, name: &str, text: &str) {
        self.events += 1;
        let body = slack_fake::message_event(
            &format!("Ev{}", self.events),
            &self.conversation(name),
            &format!("1700000100.{:06}", self.events),
            text,
        )
        .to_string();
        self.post("events", &body, "application/json", &[]).await;
        self.last = Some(body);
    }
    async fn click(&mut self, name: &str, value: &str) {
        self.events += 1;
        let form = slack_fake::block_action(
            &self.conversation(name),
            &format!("trig-{}", self.events),
            value,
        );
        self.post(
            "interactions",
            &form,
            "application/x-www-form-urlencoded",
            &[],
        )
        .await;
    }
    async fn reply(&mut self, name: &str) -> Reply {
        let channel = self.conversation(name);
        let fake = self.fake.clone();
        let m = next_unseen(&mut self.seen, &channel, || fake.posted(&channel)).await;
        let buttons = m["blocks"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["type"] == "actions"))
            .and_then(|a| a["elements"].as_array())
            .map(|e| {
                e.iter()
                    .map(|b| b["value"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        Reply {
            text: m["text"].as_str().unwrap_or_default().to_owned(),
            buttons,
        }
    }
    async fn drop_connection(&mut self, _name: &str) {
        // Slack missed the 200 for the last event and delivers it again.
        if let Some(body) = self.last.clone() {
            self.post(
                "events",
                &body,
                "application/json",
                &[
                    ("x-slack-retry-num", "1"),
                    ("x-slack-retry-reason", "http_timeout"),
                ],
            )
            .await;
        }
    }
}

struct DiscordUser {
    fake: FakeDiscord,
    base: String,
    seen: HashMap<String, usize>,
    /// Over the gateway (channel `dg`), not the interactions endpoint (`dc`).
    gateway: bool,
    messages: u64,
}

impl DiscordUser {
    async fn post(&self, body: &Value) {
        let text = body.to_string();
        let mut req = reqwest::Client::new()
            .post(format!("{}/hooks/discord/dc/interactions", self.base))
            .header("content-type", "application/json")
            .body(text.clone());
        for (k, v) in discord_fake::sign(&text, chrono::Utc::now().timestamp()) {
            req = req.header(k, v);
        }
        let res = req.send().await.expect("post");
        assert_eq!(res.status().as_u16(), 200);
    }
}

#[async_trait]
impl Platform for DiscordUser {
    fn channel(&self) -> &str {
        if self.gateway { "dg" } else { "dc" }
    }
    fn user(&self) -> &str {
        "42"
    }
    fn conversation(&self, name: &str) -> String {
        if self.gateway {
            format!("G-{name}")
        } else {
            format!("D-{name}")
        }
    }
    async fn say(&mut self, name: &str, text: &str) {
        let channel = self.conversation(name);
        if self.gateway {
            self.messages += 1;
            let id = format!("{}", 880_000 + self.messages);
            self.fake.dispatch(
                0,
                "MESSAGE_CREATE",
                discord_fake::message(&id, &channel, text),
            );
            return;
        }
        // Users reach a bot without a gateway through its slash commands.
        let (command, rest) = text
            .trim_start_matches('/')
            .split_once(' ')
            .unwrap_or((text.trim_start_matches('/'), ""));
        let options: Vec<(&str, &str)> = if rest.is_empty() {
            vec![]
        } else {
            vec![("text", rest)]
        };
        let (id, token) = self.fake.interaction(&channel);
        self.post(&discord_fake::command(
            &id, &token, &channel, command, &options,
        ))
        .await;
    }
    async fn click(&mut self, name: &str, value: &str) {
        let channel = self.conversation(name);
        let (id, token) = self.fake.interaction(&channel);
        let click = discord_fake::click(&id, &token, &channel, value);
        if self.gateway {
            self.fake.dispatch(0, "INTERACTION_CREATE", click);
        } else {
            self.post(&click).await;
        }
    }
    async fn reply(&mut self, name: &str) -> Reply {
        let channel = self.conversation(name);
        let fake = self.fake.clone();
        let m = next_unseen(&mut self.seen, &channel, || fake.sent_to(&channel)).await;
        let buttons = m.body["components"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
            .map(|b| b["custom_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        Reply {
            text: m.body["content"].as_str().unwrap_or_default().to_owned(),
            buttons,
        }
    }
    async fn drop_connection(&mut self, _name: &str) {
        if self.gateway {
            // Discord closes the socket (4000, unknown error): the bot resumes the session, and
            // what was dispatched meanwhile is replayed.
            self.fake.close(0, 4000);
            return;
        }
        // Discord's side fails the next reply (a 502): the task queue delivers it again.
        self.fake.fail_once();
    }
}

async fn server_and(platform: &str) -> (Server, Box<dyn Platform>) {
    let discord = FakeDiscord::start().await;
    let discord_api = discord.api();
    let slack = FakeSlack::start().await;
    let slack_api = slack.api();
    let tg = FakeTelegram::start().await;
    let fake = tg.clone();
    let tc = FakeTailchat::start().await;
    let tc_base = tc.base.clone();
    let server = start_with(move |c| {
        c.discord.insert(
            "dc".into(),
            DiscordEntry::interactions_only(
                discord_fake::BOT_TOKEN.into(),
                discord_fake::APP_ID.into(),
                discord_fake::public_key(),
                discord_api.clone(),
            ),
        );
        let mut gateway = DiscordEntry::interactions_only(
            discord_fake::BOT_TOKEN.into(),
            discord_fake::APP_ID.into(),
            String::new(),
            discord_api,
        );
        gateway.public_key = None;
        gateway.gateway = true;
        c.discord.insert("dg".into(), gateway);
        c.slack.insert(
            "sl".into(),
            SlackEntry {
                bot_token: slack_fake::BOT_TOKEN.into(),
                signing_secret: slack_fake::SIGNING_SECRET.into(),
                api_base: slack_api,
                app_token: None,
            },
        );
        c.tailchat.insert(
            "tc".into(),
            TailchatEntry {
                api_base: tc_base,
                app_id: tailchat_fake::APP_ID.into(),
                app_secret: tailchat_fake::APP_SECRET.into(),
                callback_token: tailchat_fake::CALLBACK_TOKEN.into(),
                sends_per_second: 10,
            },
        );
        c.telegram.insert(
            "tg".into(),
            TelegramEntry {
                token: fake::TOKEN.into(),
                mode: TelegramMode::Polling,
                api_base: fake.base,
                poll_timeout_secs: 1,
                secret_token: None,
                public_url: None,
                sends_per_second: 25,
                lease_ttl_secs: 15,
            },
        );
    })
    .await;
    let p: Box<dyn Platform> = match platform {
        "web" => Box::new(Web {
            ws_base: server.ws.clone(),
            sockets: HashMap::new(),
        }),
        "webhook" => Box::new(Webhook {
            base: server.base.clone(),
            callbacks: server.callbacks.clone(),
            seen: HashMap::new(),
            http: reqwest::Client::new(),
        }),
        "telegram" => Box::new(Telegram {
            fake: tg,
            seen: HashMap::new(),
            clicks: 0,
        }),
        "tailchat" => Box::new(Tailchat {
            fake: tc,
            base: server.base.clone(),
            seen: HashMap::new(),
            messages: 0,
        }),
        "slack" => Box::new(SlackUser {
            fake: slack,
            base: server.base.clone(),
            seen: HashMap::new(),
            events: 0,
            last: None,
        }),
        "discord" | "discord_gateway" => {
            let gateway = platform == "discord_gateway";
            if gateway {
                discord.wait_connected(0).await;
            }
            Box::new(DiscordUser {
                fake: discord,
                base: server.base.clone(),
                seen: HashMap::new(),
                gateway,
                messages: 0,
            })
        }
        other => panic!("no platform {other}"),
    };
    (server, p)
}

/// The stored inbound messages of a conversation: (sender, text).
async fn stored(server: &Server, channel: &str, conversation: &str) -> Vec<(String, String)> {
    let page: Value = reqwest::get(format!(
        "{}/api/v1/conversations/{channel}/{conversation}/messages",
        server.base
    ))
    .await
    .expect("messages")
    .json()
    .await
    .expect("json");
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .map(|m| {
            (
                m["sender"].as_str().unwrap_or_default().to_owned(),
                m["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn a_message_in_becomes_an_event_and_the_reply_comes_out(platform: &str) {
    let (server, mut p) = server_and(platform).await;
    p.say("one", "/echo hello, conformance").await;
    assert_eq!(
        p.reply("one").await,
        Reply {
            text: "hello, conformance".into(),
            buttons: vec![]
        }
    );
    let conversation = p.conversation("one");
    let inbound = stored(&server, p.channel(), &conversation).await;
    assert_eq!(
        inbound,
        [(p.user().to_owned(), "/echo hello, conformance".to_owned())],
        "stored under the platform's user and conversation"
    );
    server.stop().await;
}

async fn a_button_click_round_trips(platform: &str) {
    let (server, mut p) = server_and(platform).await;
    p.say("two", "/feedback").await;
    let ask = p.reply("two").await;
    assert_eq!(ask.text, "How would you rate this demo, from 1 to 5?");
    assert_eq!(ask.buttons, ["1", "2", "3", "4", "5"]);
    p.click("two", "2").await;
    assert_eq!(
        p.reply("two").await.text,
        "Sorry to hear that. What should we improve?"
    );
    server.stop().await;
}

async fn a_dropped_connection_recovers(platform: &str) {
    let (server, mut p) = server_and(platform).await;
    p.say("three", "/echo before").await;
    assert_eq!(p.reply("three").await.text, "before");
    p.drop_connection("three").await;
    p.say("three", "/echo after").await;
    assert_eq!(p.reply("three").await.text, "after");
    // Nothing was handled twice: the next reply is the next message's.
    p.say("three", "/echo last").await;
    assert_eq!(p.reply("three").await.text, "last");
    server.stop().await;
}

macro_rules! conformance {
    ($($platform:ident),* $(,)?) => {
        $(
            mod $platform {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn a_message_in_becomes_an_event_and_the_reply_comes_out() {
                    super::a_message_in_becomes_an_event_and_the_reply_comes_out(stringify!($platform)).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn a_button_click_round_trips() {
                    super::a_button_click_round_trips(stringify!($platform)).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn a_dropped_connection_recovers() {
                    super::a_dropped_connection_recovers(stringify!($platform)).await;
                }
            }
        )*
    };
}

conformance!(
    web,
    webhook,
    telegram,
    tailchat,
    slack,
    discord,
    discord_gateway
);
