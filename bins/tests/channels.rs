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
    DiscordSettings, SlackSettings, TailchatSettings, TelegramMode, TelegramSettings,
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
            let url = format!(
                "{}/ws/chat?token={}",
                self.ws_base,
                harness::visitor_token("ada", name)
            );
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
    /// A channel id as Discord gives them: a numeric snowflake, one per name and way in.
    fn conversation(&self, name: &str) -> String {
        let way = if self.gateway { "gateway" } else { "endpoint" };
        // FNV-1a of the way and the name, in the range of Discord's snowflakes.
        let hash = format!("{way}:{name}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        ((hash >> 5) | 1 << 58).to_string()
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
            DiscordSettings::interactions_only(
                discord_fake::BOT_TOKEN.into(),
                discord_fake::APP_ID.into(),
                discord_fake::public_key(),
                discord_api.clone(),
            ),
        );
        let gateway = DiscordSettings::gateway_only(
            discord_fake::BOT_TOKEN.into(),
            discord_fake::APP_ID.into(),
            discord_api,
        );
        c.discord.insert("dg".into(), gateway);
        c.slack.insert(
            "sl".into(),
            SlackSettings {
                bot_token: slack_fake::BOT_TOKEN.into(),
                signing_secret: slack_fake::SIGNING_SECRET.into(),
                api_base: slack_api,
                app_token: None,
            },
        );
        c.tailchat.insert(
            "tc".into(),
            TailchatSettings {
                api_base: tc_base,
                app_id: tailchat_fake::APP_ID.into(),
                app_secret: tailchat_fake::APP_SECRET.into(),
                callback_token: tailchat_fake::CALLBACK_TOKEN.into(),
                sends_per_second: 10,
            },
        );
        c.telegram.insert(
            "tg".into(),
            TelegramSettings {
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

/// Answers written piece by piece (a [`flowbot_core::Draft`], as a language model writes
/// them) are shown as they grow: web chat gets `partial` frames and then the final `message`
/// naming the draft; Telegram, Slack and Discord see one message, edited no more often than
/// each platform's interval, ending with the final text; a channel that cannot edit
/// (Tailchat) gets only the final message. The history holds the final text only. A test
/// writes the answer step by step through [`drafts::Writer`] and waits for what the platform
/// shows after each step.
mod drafts {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use flowbot_core::store::Direction;
    use flowbot_core::task::WorkerConfig;
    use flowbot_core::{
        Bot, CancellationToken, Channel, ChannelName, Draft, Event, Handlers, Message, Outbound,
        Reply, Sender, Store,
    };
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::sync::{mpsc, oneshot};
    use tokio_tungstenite::tungstenite::Message as Ws;

    use super::{FakeDiscord, FakeSlack, FakeTailchat, FakeTelegram, Fault};
    use super::{common, discord_fake, fake, slack_fake, tailchat_fake};

    /// What the answer's writer does next.
    enum Step {
        /// Add a piece to the draft; answer once it is there.
        Write(&'static str, oneshot::Sender<()>),
        /// Answer with this final text.
        Finish(&'static str),
    }

    /// The test's end of the bot's writer.
    struct Writer(mpsc::UnboundedSender<Step>);

    impl Writer {
        async fn write(&self, piece: &'static str) {
            let (done, written) = oneshot::channel();
            self.0.send(Step::Write(piece, done)).expect("writer");
            written.await.expect("written");
        }

        fn finish(&self, text: &'static str) {
            self.0.send(Step::Finish(text)).expect("writer");
        }
    }

    const FINAL: &str = "Once upon a time, a bot wrote this answer piece by piece.";

    /// What the platform should show, in order: the first piece, then three pieces written
    /// within one interval (shown together), then one more, then the final text.
    const SHOWN: [&str; 4] = ["Once", "Once upon a time", "Once upon a time,", FINAL];

    /// A router answering every message with a draft the test writes.
    fn writing_router() -> (
        Handlers<tokio::sync::Mutex<mpsc::UnboundedReceiver<Step>>>,
        Writer,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let router = Handlers::new(tokio::sync::Mutex::new(rx)).fallback(|cx| async move {
            let mut draft = Draft::for_turn(&cx.turn).expect("a conversation");
            let mut steps = cx.state.lock().await;
            let text = loop {
                match steps.recv().await {
                    Some(Step::Write(piece, done)) => {
                        draft.push(piece);
                        let _ = done.send(());
                    }
                    Some(Step::Finish(text)) => break text,
                    None => break "",
                }
            };
            Ok(Reply::from(draft.complete(Outbound::text(text)).await))
        });
        (router, Writer(tx))
    }

    async fn store(dir: &common::TempDir) -> Arc<dyn Store> {
        Arc::new(
            flowbot_store::SqliteStore::open_in_dir(&dir.0)
                .await
                .expect("store"),
        )
    }

    /// A bot with the writer's router and `channel`, without workers.
    fn bot(store: &Arc<dyn Store>, channel: Channel) -> (Arc<Bot>, Writer) {
        let (router, writer) = writing_router();
        let bot = Bot::builder()
            .store(store.clone())
            .router(router)
            .channel(channel)
            .without_workers()
            .build()
            .expect("bot");
        (Arc::new(bot), writer)
    }

    /// User 42 writes to the bot in `conversation` of `channel`; the pipeline handles it in
    /// the background, and the task ends with the replies delivered (or queued).
    fn ask(
        bot: &Arc<Bot>,
        channel: &str,
        conversation: &str,
    ) -> tokio::task::JoinHandle<Vec<Outbound>> {
        let event = Event::Message(Message::text(
            channel,
            conversation,
            Sender::user("42"),
            "tell me a story",
        ));
        let bot = bot.clone();
        tokio::spawn(async move { bot.handle(event).await })
    }

    /// The stored history of a conversation: (inbound?, text).
    async fn history(
        store: &Arc<dyn Store>,
        channel: &str,
        conversation: &str,
    ) -> Vec<(bool, String)> {
        store
            .list_messages(&ChannelName::from(channel), &conversation.into(), None, 100)
            .await
            .expect("history")
            .items
            .into_iter()
            .map(|m| (m.direction == Direction::Inbound, m.text))
            .collect()
    }

    fn only_the_final_text_is_stored(history: &[(bool, String)]) {
        assert_eq!(
            history,
            [
                (true, "tell me a story".to_owned()),
                (false, FINAL.to_owned())
            ],
            "the question and the final answer, no draft"
        );
    }

    /// One platform's view of a conversation: each message created or edited, in order, as
    /// (when it arrived, created?, text).
    type Shown = Box<dyn Fn() -> Vec<(Instant, bool, String)> + Send>;

    /// Wait until the last text `shown` is `want`.
    async fn until_last(shown: &Shown, want: &str) {
        let texts = || -> Vec<String> { shown().into_iter().map(|(_, _, t)| t).collect() };
        common::found(
            &format!("the platform never showed {want:?}"),
            || (texts().last().map(String::as_str) == Some(want)).then_some(()),
            texts,
        )
        .await
    }

    /// Write the story, waiting after each step for the platform to show it; then check that
    /// it saw one message created and then edited, each request at least `interval` after the
    /// one before, showing [`SHOWN`].
    async fn write_and_watch(
        writer: &Writer,
        answered: tokio::task::JoinHandle<Vec<Outbound>>,
        shown: Shown,
        interval: Duration,
    ) {
        writer.write("Once").await;
        until_last(&shown, SHOWN[0]).await;
        for piece in [" upon", " a", " time"] {
            writer.write(piece).await;
        }
        until_last(&shown, SHOWN[1]).await;
        writer.write(",").await;
        until_last(&shown, SHOWN[2]).await;
        writer.finish(FINAL);
        let delivered = answered.await.expect("handled");
        assert_eq!(delivered.len(), 1);
        let draft = delivered[0]
            .draft
            .as_ref()
            .expect("the answer completes its draft");
        assert!(draft.shown.is_some(), "{draft:?}");

        let seen = shown();
        let texts: Vec<&str> = seen.iter().map(|(_, _, t)| t.as_str()).collect();
        assert_eq!(texts, SHOWN, "one message, growing, then the final text");
        let created: Vec<bool> = seen.iter().map(|(_, c, _)| *c).collect();
        assert_eq!(
            created,
            [true, false, false, false],
            "sent once, then edited"
        );
        for pair in seen.windows(2) {
            let gap = pair[1].0.duration_since(pair[0].0);
            assert!(
                gap >= interval,
                "{:?} came {gap:?} after {:?}, sooner than {interval:?}",
                pair[1].2,
                pair[0].2
            );
        }
    }

    fn telegram_channel(store: &Arc<dyn Store>, tg: &FakeTelegram) -> Channel {
        flowbot_channels::telegram::Telegram::sender_only(
            store.clone(),
            flowbot_channels::telegram::TelegramConfig {
                api_base: tg.base.clone(),
                ..flowbot_channels::telegram::TelegramConfig::polling("tg", fake::TOKEN)
            },
        )
        .expect("telegram")
    }

    fn telegram_view(tg: &FakeTelegram, chat: i64) -> Shown {
        let tg = tg.clone();
        Box::new(move || {
            tg.texts_to(chat)
                .into_iter()
                .map(|(at, method, body)| {
                    let text = body["text"].as_str().unwrap_or_default().to_owned();
                    (at, method == "sendMessage", text)
                })
                .collect()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn telegram_edits_one_message_once_a_second_in_a_private_chat() {
        let tg = FakeTelegram::start().await;
        let dir = common::TempDir::new("flowbot-draft-telegram");
        let store = store(&dir).await;
        let (bot, writer) = bot(&store, telegram_channel(&store, &tg));
        let answered = ask(&bot, "tg", "7001");
        write_and_watch(
            &writer,
            answered,
            telegram_view(&tg, 7001),
            Duration::from_secs(1),
        )
        .await;
        only_the_final_text_is_stored(&history(&store, "tg", "7001").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slack_updates_one_message_within_tier_3() {
        let slack = FakeSlack::start().await;
        let dir = common::TempDir::new("flowbot-draft-slack");
        let store = store(&dir).await;
        let (_, channel) = flowbot_channels::slack::Slack::new(
            store.clone(),
            flowbot_channels::slack::SlackConfig {
                name: "sl".into(),
                bot_token: slack_fake::BOT_TOKEN.into(),
                signing_secret: slack_fake::SIGNING_SECRET.into(),
                api_base: slack.api(),
                app_token: None,
            },
        )
        .expect("slack");
        let (bot, writer) = bot(&store, channel);
        let answered = ask(&bot, "sl", "CSTORY");
        let view = slack.clone();
        let shown: Shown = Box::new(move || {
            view.messages_in("CSTORY")
                .into_iter()
                .map(|(at, method, body)| {
                    let text = body["text"].as_str().unwrap_or_default().to_owned();
                    (at, method == "chat.postMessage", text)
                })
                .collect()
        });
        write_and_watch(&writer, answered, shown, Duration::from_millis(1200)).await;
        // One message posted (the answer did not fall back to a new one), and every update
        // is of it.
        assert_eq!(slack.posted("CSTORY").len(), 1);
        let updates = slack.calls("chat.update");
        assert!(
            updates.windows(2).all(|w| w[0]["ts"] == w[1]["ts"]),
            "{updates:?}"
        );
        only_the_final_text_is_stored(&history(&store, "sl", "CSTORY").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discord_edits_one_message_within_its_channel_bucket() {
        let discord = FakeDiscord::start().await;
        let dir = common::TempDir::new("flowbot-draft-discord");
        let store = store(&dir).await;
        let settings = flowbot_server::config::DiscordSettings::interactions_only(
            discord_fake::BOT_TOKEN.into(),
            discord_fake::APP_ID.into(),
            discord_fake::public_key(),
            discord.api(),
        )
        .channel_config("dc")
        .expect("settings");
        let (_, channel) =
            flowbot_channels::discord::Discord::new(store.clone(), settings).expect("discord");
        let (bot, writer) = bot(&store, channel);
        let answered = ask(&bot, "dc", "D-story");
        let view = discord.clone();
        let shown: Shown = Box::new(move || {
            view.timeline("D-story")
                .into_iter()
                .map(|(at, what, body)| {
                    let text = body["content"].as_str().unwrap_or_default().to_owned();
                    (at, what == "create", text)
                })
                .collect()
        });
        write_and_watch(&writer, answered, shown, Duration::from_secs(1)).await;
        let sent = discord.sent_to("D-story");
        assert_eq!(sent.len(), 1, "{sent:?}");
        only_the_final_text_is_stored(&history(&store, "dc", "D-story").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_that_cannot_edit_gets_the_final_message_only() {
        let tc = FakeTailchat::start().await;
        let dir = common::TempDir::new("flowbot-draft-tailchat");
        let store = store(&dir).await;
        let (_, channel) = flowbot_channels::tailchat::Tailchat::new(
            store.clone(),
            flowbot_channels::tailchat::TailchatConfig {
                name: "tc".into(),
                api_base: tc.base.clone(),
                app_id: tailchat_fake::APP_ID.into(),
                app_secret: tailchat_fake::APP_SECRET.into(),
                callback_token: tailchat_fake::CALLBACK_TOKEN.into(),
                sends_per_second: 10,
            },
        )
        .expect("tailchat");
        let (bot, writer) = bot(&store, channel);
        let answered = ask(&bot, "tc", "g1:c-story");
        for piece in ["Once", " upon", " a", " time", ","] {
            writer.write(piece).await;
        }
        writer.finish(FINAL);
        let delivered = answered.await.expect("handled");
        assert_eq!(delivered.len(), 1);
        let sent = tc.sent_to("c-story");
        assert_eq!(sent.len(), 1, "exactly one message: {sent:?}");
        assert_eq!(sent[0]["content"], FINAL);
        only_the_final_text_is_stored(&history(&store, "tc", "g1:c-story").await);
    }

    /// The final edit fails and so does sending it anew (the Bot API is down): the answer is
    /// queued with its draft's reference, and another process, started later on the same
    /// database, turns the draft into the answer instead of sending a second message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_answer_completes_its_draft_after_a_restart() {
        let tg = FakeTelegram::start().await;
        let dir = common::TempDir::new("flowbot-draft-restart");
        let store = store(&dir).await;
        let (first, writer) = bot(&store, telegram_channel(&store, &tg));
        let answered = ask(&first, "tg", "7002");
        writer.write("Once").await;
        let view = telegram_view(&tg, 7002);
        common::found(
            "the draft shown",
            || (!view().is_empty()).then_some(()),
            &view,
        )
        .await;
        tg.fault("editMessageText", Fault::BadGateway);
        tg.fault("sendMessage", Fault::BadGateway);
        writer.finish(FINAL);
        let queued = answered.await.expect("handled");
        assert_eq!(queued.len(), 1, "queued for delivery");
        let draft_message = tg.sent_to(7002)[0].clone();
        assert_eq!(draft_message["text"], "Once");
        assert_eq!(
            history(&store, "tg", "7002").await.len(),
            1,
            "not delivered yet"
        );
        drop(first);

        // A new process on the same database, with workers.
        let (router, _writer) = writing_router();
        let second = Bot::builder()
            .store(store.clone())
            .router(router)
            .channel(telegram_channel(&store, &tg))
            .workers(WorkerConfig {
                poll_interval: Duration::from_millis(50),
                ..WorkerConfig::default()
            })
            .build()
            .expect("bot");
        let stop = CancellationToken::new();
        let running = tokio::spawn(second.run(stop.clone()));
        let edited = common::found(
            "the draft edited into the answer",
            || {
                tg.calls("editMessageText")
                    .into_iter()
                    .find(|b| b["text"] == FINAL)
            },
            || tg.calls("editMessageText"),
        )
        .await;
        assert_eq!(edited["message_id"], 1, "the draft's message");
        let sends: Vec<String> = view()
            .into_iter()
            .filter(|(_, created, _)| *created)
            .map(|(_, _, text)| text)
            .collect();
        assert_eq!(
            sends,
            ["Once", FINAL],
            "the draft, and the refused attempt to send the answer anew; nothing since"
        );
        // Delivered, then stored.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while history(&store, "tg", "7002").await.len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "never stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        running.await.expect("joined").expect("ran");
        only_the_final_text_is_stored(&history(&store, "tg", "7002").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn web_chat_shows_partial_frames_then_the_message_naming_the_draft() {
        let dir = common::TempDir::new("flowbot-draft-web");
        let store = store(&dir).await;
        let web = flowbot_channels::web::WebChat::new("web", Some(store.clone()))
            .with_identity(flowbot_channels::web::ChatIdentity::new(
                crate::harness::WEB_SECRET.as_bytes(),
            ))
            .expect("identity");
        let (router, writer) = writing_router();
        let bot = Bot::builder()
            .store(store.clone())
            .router(router)
            .channel(web.channel())
            .without_workers()
            .build()
            .expect("bot");
        let stop = CancellationToken::new();
        let running = tokio::spawn(bot.run(stop.clone()));
        web.listening().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = web.router();
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let url = format!(
            "ws://{addr}/ws/chat?token={}",
            crate::harness::visitor_token("ada", "story")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        super::next_frame(&mut ws, "history").await;
        ws.send(Ws::text(
            json!({"type": "message", "text": "tell me a story"}).to_string(),
        ))
        .await
        .expect("send");

        // Every frame after the question, until the final message.
        let mut partials: Vec<Value> = Vec::new();
        let mut until = async |ws: &mut super::Chat, want: &str| loop {
            let frame = next(ws).await;
            match frame["type"].as_str() {
                Some("partial") => {
                    let done = frame["text"] == want;
                    partials.push(frame);
                    if done {
                        return None;
                    }
                }
                Some("message") => return Some(frame),
                _ => {}
            }
        };
        writer.write("Once").await;
        assert!(until(&mut ws, SHOWN[0]).await.is_none());
        for piece in [" upon", " a", " time"] {
            writer.write(piece).await;
        }
        assert!(until(&mut ws, SHOWN[1]).await.is_none());
        writer.write(",").await;
        assert!(until(&mut ws, SHOWN[2]).await.is_none());
        writer.finish(FINAL);
        let message = until(&mut ws, "").await.expect("the final message");

        let draft = partials[0]["draft"].as_str().expect("draft id").to_owned();
        assert!(!draft.is_empty());
        let mut so_far = "";
        for p in &partials {
            assert_eq!(p["draft"], draft, "{p}");
            assert_eq!(p["conversation"], "story");
            assert_eq!(p["format"], "plain");
            let text = p["text"].as_str().expect("text");
            assert!(
                text.starts_with(so_far) && text.len() > so_far.len(),
                "grows: {partials:?}"
            );
            so_far = text;
        }
        assert_eq!(message["text"], FINAL);
        assert_eq!(
            message["draft"], draft,
            "the message names the draft it completes"
        );
        assert_eq!(message["conversation"], "story");

        // The history has the final text only, and so does a new connection's. The pipeline
        // records a reply once the channel took it, so the browser can see the message a
        // moment before the history has it: wait for the record (nothing signals it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut stored = history(&store, "web", "story").await;
        while stored.len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            stored = history(&store, "web", "story").await;
        }
        only_the_final_text_is_stored(&stored);
        let (mut again, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        let shown = super::next_frame(&mut again, "history").await;
        let texts: Vec<&str> = shown["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["text"].as_str().expect("text"))
            .collect();
        assert_eq!(texts, ["tell me a story", FINAL]);
        stop.cancel();
        running.await.expect("joined").expect("ran");
    }

    /// The next frame, as JSON.
    async fn next(ws: &mut super::Chat) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("frame in time")
                .expect("open")
                .expect("frame");
            if let Ws::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("JSON frame");
            }
        }
    }
}
