//! Fuzz targets for every parser of untrusted input: rule files, rules and workflows (YAML and
//! JSON) through the admin API's validation, the configuration file and its environment
//! overrides, each platform's webhook payloads, workflow trigger hooks, web chat frames, and
//! the frames Discord's gateway and Slack's Socket Mode push to the bot.
//!
//! Deterministic and bounded: each target runs its committed seeds (`fuzz/corpus/<target>/`)
//! and a fixed number of mutants made with a fixed-seed PRNG (`fuzz/mutate.rs`), through the
//! real entry points: the parsers themselves where they are plain functions, and otherwise
//! the in-process server over HTTP and WebSocket on 127.0.0.1, with each platform configured
//! against its local fake and every mutant signed so that the parser behind the signature
//! check is reached. The assertion: no panic anywhere in the process (a server task's
//! included), no 5xx, every refusal a problem document, the server still answering
//! `/healthz` (and handling a last, valid message) afterwards.
//!
//! `FLOWBOT_FUZZ_CASES=20000 cargo nextest run -p flowbot-server --test fuzz` runs longer;
//! `FLOWBOT_FUZZ_SEED` picks another sequence. A failure prints the seed and the input and
//! saves it under `fuzz/crashes/` (see docs/security.md, "Fuzzing").

mod common;
#[path = "discord/fake.rs"]
mod discord_fake;
mod harness;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "slack/fake.rs"]
mod slack_fake;
#[path = "tailchat/fake.rs"]
mod tailchat_fake;
#[path = "telegram/fake.rs"]
mod telegram_fake;

use std::time::Duration;

use ed25519_dalek::Signer;
use flowbot_server::config::{
    Config, DiscordSettings, SlackSettings, TailchatSettings, TelegramMode, TelegramSettings,
};
use futures_util::{SinkExt, StreamExt};
use harness::{SECRET, Server, start_with};
use hmac::{Hmac, Mac};
use mutate::{Case, Format, Target, no_panic};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message as Ws;

/// The longest input sent over HTTP: a little over the server's body limit, so that some
/// mutants meet the limit.
const MAX_HTTP: usize = 70_000;
/// The server's body limit in these tests (the default).
const BODY_LIMIT: usize = 65_536;
/// The longest input given to a parser directly.
const MAX_DIRECT: usize = 200_000;

/// Timestamp headers for some signed requests: the signature matches, the value is odd.
const ODD_TIMESTAMPS: &[&str] = &[
    "-9223372036854775808",
    "9223372036854775807",
    "99999999999999999999",
    "-1",
    "0",
    "1e9",
    " 1700000000",
    "",
    "abc",
];

/// The timestamp header for case `i` of a signed target: now for a seed, mostly now for a
/// mutant, sometimes odd.
fn timestamp(i: usize, case: &Case) -> String {
    if i % 16 == 15 && !case.is_seed() {
        ODD_TIMESTAMPS[(i / 16) % ODD_TIMESTAMPS.len()].to_owned()
    } else {
        chrono::Utc::now().timestamp().to_string()
    }
}

/// An in-process server with the body limit at its default and `tweak` applied.
async fn server(tweak: impl FnOnce(&mut Config)) -> Server {
    start_with(|c| {
        c.server.body_limit_bytes = BODY_LIMIT;
        tweak(c);
    })
    .await
}

/// Check an answer to `case`: no 5xx, a refusal is a problem document, and no panic.
async fn answered(t: &Target, case: &Case, res: reqwest::Result<reqwest::Response>) -> u16 {
    let res = res.unwrap_or_else(|e| t.fail(case, &format!("no answer: {e}")));
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = res.text().await.unwrap_or_default();
    if status.is_server_error() {
        t.fail(case, &format!("answered {status}: {body}"));
    }
    if status.is_client_error() && content_type != "application/problem+json" {
        t.fail(
            case,
            &format!(
                "refused with {status} but not as a problem document ({content_type:?}): {body}"
            ),
        );
    }
    t.check_panics(case);
    status.as_u16()
}

/// The server still answers `/healthz`, and nothing panicked since `last`.
async fn still_healthy(t: &Target, last: &Case, s: &Server) {
    let res = reqwest::get(format!("{}/healthz", s.base)).await;
    let ok = res.as_ref().is_ok_and(|r| r.status().is_success());
    if !ok {
        t.fail(last, &format!("/healthz after the run: {res:?}"));
    }
    t.check_panics(last);
}

/// Run every case of `t` through `send`, then check the server's health.
async fn run_http<F, Fut>(t: &Target, s: &Server, mut send: F)
where
    F: FnMut(usize, &Case) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let cases = t.cases(MAX_HTTP);
    for (i, case) in cases.iter().enumerate() {
        t.running(case);
        let status = answered(t, case, send(i, case).await).await;
        let accepted = (200..300).contains(&status);
        t.outcome(accepted);
        if case.must_be_valid() && !accepted {
            t.fail(case, &format!("a seed must be accepted, got {status}"));
        }
    }
    t.summary();
    still_healthy(t, cases.last().expect("cases"), s).await;
}

/// The last, valid message sent after a target's cases: its answer shows that the server
/// handled what came before.
fn last_case(bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        label: "the last, valid message".into(),
        bytes: bytes.into(),
    }
}

/// HMAC-SHA256 of `parts`, in hex.
fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------
// Parsers called directly.

#[test]
fn rule_files() {
    let t = Target::new("rule_file", Format::Toml);
    let plugins = flowbot_rules::Plugins::default();
    for case in t.cases(MAX_DIRECT) {
        t.running(&case);
        let source = flowbot_rules::Source::inline(case.text());
        let parsed = no_panic(|| flowbot_rules::parse_file(&source).map(|_| ()))
            .unwrap_or_else(|p| t.fail(&case, &format!("parse_file panicked: {p}")));
        let compiled = no_panic(|| {
            flowbot_rules::RuleSet::compile(std::slice::from_ref(&source), &plugins).map(|_| ())
        })
        .unwrap_or_else(|p| t.fail(&case, &format!("RuleSet::compile panicked: {p}")));
        if case.must_be_valid() && (parsed.is_err() || compiled.is_err()) {
            t.fail(
                &case,
                &format!("a seed must be a valid rule file: {parsed:?} {compiled:?}"),
            );
        }
        t.outcome(compiled.is_ok());
        // An error names what was wrong.
        if let Err(e) = compiled
            && e.to_string().trim().is_empty()
        {
            t.fail(&case, "an empty error message");
        }
        t.check_panics(&case);
    }
    t.summary();
}

/// Load `toml_text` (if any) with `env` through `Config::load`, the path `flowbot-server`
/// and `flowbot-agent` take at start.
fn load_config(
    t: &Target,
    case: &Case,
    file: Option<&std::path::Path>,
    env: Vec<(String, String)>,
) -> Result<Config, String> {
    no_panic(|| Config::load(file, env))
        .unwrap_or_else(|p| t.fail(case, &format!("Config::load panicked: {p}")))
        .map_err(|e| {
            if e.path.is_empty() || e.message.is_empty() {
                t.fail(case, &format!("an error without a key or a message: {e:?}"));
            }
            e.to_string()
        })
}

#[test]
fn config_files() {
    let t = Target::new("config", Format::Toml);
    let dir = common::TempDir::new("flowbot-fuzz-config");
    let path = dir.0.join("flowbot.toml");
    for case in t.cases(MAX_DIRECT) {
        t.running(&case);
        std::fs::write(&path, &case.bytes).expect("write the config file");
        let loaded = load_config(&t, &case, Some(&path), Vec::new());
        if case.must_be_valid()
            && let Err(e) = &loaded
        {
            t.fail(&case, &format!("a seed must be a valid configuration: {e}"));
        }
        t.outcome(loaded.is_ok());
        t.check_panics(&case);
    }
    t.summary();
}

#[test]
fn config_environment() {
    let t = Target::new("config_env", Format::Env);
    for case in t.cases(MAX_DIRECT) {
        t.running(&case);
        let env: Vec<(String, String)> = case
            .text()
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (l.to_owned(), String::new()),
            })
            .collect();
        let loaded = load_config(&t, &case, None, env);
        if case.must_be_valid()
            && let Err(e) = &loaded
        {
            t.fail(&case, &format!("a seed must be a valid environment: {e}"));
        }
        t.outcome(loaded.is_ok());
        t.check_panics(&case);
    }
    t.summary();
}

// ---------------------------------------------------------------------------------------
// The admin API's validation of rules and workflows, and workflow trigger hooks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_through_the_api() {
    let s = server(|_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/rules/validate", s.base);
    let t = Target::new("rule_json", Format::Json);
    run_http(&t, &s, |_, case| {
        http.post(&url)
            .header("content-type", "application/json")
            .body(case.bytes.clone())
            .send()
    })
    .await;
    s.stop().await;
}

const HOOK_TOKEN: &str = "hook-token-0123456789";
const HMAC_SECRET: &str = "hmac-secret-0123456789";

/// A server with the secrets the workflow seeds name.
async fn workflow_server() -> Server {
    server(|c| {
        for (name, value) in [
            ("hook_token", HOOK_TOKEN),
            ("hmac_secret", HMAC_SECRET),
            ("deploy_token", "deploy-token-0123456789"),
            ("ops_token", "ops-token-0123456789"),
        ] {
            c.secrets.0.insert(name.into(), value.into());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_through_the_api() {
    let s = workflow_server().await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/workflows/validate", s.base);
    for (target, format, content_type) in [
        ("workflow_yaml", Format::Yaml, "application/yaml"),
        ("workflow_json", Format::Json, "application/json"),
    ] {
        let t = Target::new(target, format);
        run_http(&t, &s, |_, case| {
            http.post(&url)
                .header("content-type", content_type)
                .body(case.bytes.clone())
                .send()
        })
        .await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_trigger_hooks() {
    let s = workflow_server().await;
    let http = reqwest::Client::new();
    let greet = mutate::corpus("workflow_yaml")
        .into_iter()
        .find(|(name, _)| name == "greet.yaml")
        .expect("the greet workflow in the corpus")
        .1;
    let applied = http
        .post(format!("{}/api/v1/workflows", s.base))
        .header("content-type", "application/yaml")
        .body(greet)
        .send()
        .await
        .expect("apply");
    assert_eq!(applied.status().as_u16(), 201, "the greet workflow applies");
    let hook = |p: &str| format!("{}/hooks/trigger/{p}", s.base);
    let t = Target::new("trigger_hook", Format::Json);
    run_http(&t, &s, |i, case| {
        if i % 2 == 0 {
            http.post(hook("greet-token"))
                .bearer_auth(HOOK_TOKEN)
                .body(case.bytes.clone())
                .send()
        } else {
            let ts = timestamp(i, case);
            let sig = format!(
                "t={ts},v1={}",
                hmac_hex(HMAC_SECRET, &[ts.as_bytes(), b".", &case.bytes])
            );
            http.post(hook("greet-signed"))
                .header(flowbot_channels::webhook::SIGNATURE_HEADER, sig)
                .body(case.bytes.clone())
                .send()
        }
    })
    .await;
    // The runs started go on in the background: one more, waited for, so that what they
    // do happens while the test looks.
    let last = last_case(json!({"who": "drain"}).to_string());
    let started: Value = http
        .post(hook("greet-token"))
        .bearer_auth(HOOK_TOKEN)
        .body(last.bytes.clone())
        .send()
        .await
        .expect("last run")
        .json()
        .await
        .expect("run JSON");
    let run = format!(
        "{}/api/v1/runs/{}",
        s.base,
        started["run_id"].as_str().expect("run id")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r: Value = http
            .get(&run)
            .send()
            .await
            .expect("run")
            .json()
            .await
            .expect("run JSON");
        if r["status"] == "completed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && r["status"] != "failed",
            "the last run: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_healthy(&t, &last, &s).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Chat platforms' webhooks, each against its local fake.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_webhook() {
    use telegram_fake::{FakeTelegram, TOKEN, text};
    const SECRET_TOKEN: &str = "hook-secret_0123456789";
    let tg = FakeTelegram::start().await;
    let base = tg.base.clone();
    let s = server(move |c| {
        c.telegram.insert(
            "tg".into(),
            TelegramSettings {
                token: TOKEN.into(),
                mode: TelegramMode::Webhook,
                api_base: base,
                poll_timeout_secs: 1,
                secret_token: Some(SECRET_TOKEN.into()),
                public_url: Some("https://bot.example.com".into()),
                sends_per_second: 1000,
                lease_ttl_secs: 15,
            },
        );
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/telegram/tg", s.base);
    let t = Target::new("telegram_update", Format::Json);
    run_http(&t, &s, |_, case| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("X-Telegram-Bot-Api-Secret-Token", SECRET_TOKEN)
            .body(case.bytes.clone())
            .send()
    })
    .await;
    let mut last = text(424_242, "/echo fuzz-drain");
    last["update_id"] = 9_000_000_001_i64.into();
    let last = last_case(last.to_string());
    let res = http
        .post(&url)
        .header("content-type", "application/json")
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET_TOKEN)
        .body(last.bytes.clone())
        .send()
        .await;
    answered(&t, &last, res).await;
    tg.wait_for_text(424_242, "fuzz-drain").await;
    t.check_panics(&last);
    s.stop().await;
}

/// A fake Slack and a server with its app `sl` (over Socket Mode too with `app_token`).
async fn slack_server(app_token: Option<&str>) -> (slack_fake::FakeSlack, Server) {
    use slack_fake::{BOT_TOKEN, FakeSlack, SIGNING_SECRET};
    let slack = FakeSlack::start().await;
    let api = slack.api();
    let app_token = app_token.map(str::to_owned);
    let s = server(move |c| {
        c.slack.insert(
            "sl".into(),
            SlackSettings {
                bot_token: BOT_TOKEN.into(),
                signing_secret: SIGNING_SECRET.into(),
                api_base: api,
                app_token,
            },
        );
    })
    .await;
    (slack, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_webhooks() {
    use slack_fake::{SIGNING_SECRET, message_event};
    let (slack, s) = slack_server(None).await;
    let http = reqwest::Client::new();
    let mut targets = Vec::new();
    let post = |path: &str, content_type: &'static str, i: usize, case: &Case| {
        let ts = timestamp(i, case);
        let body = &case.bytes;
        let sig = hmac_hex(SIGNING_SECRET, &[b"v0:", ts.as_bytes(), b":", body]);
        http.post(format!("{}/hooks/slack/sl/{path}", s.base))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", format!("v0={sig}"))
            .body(body.to_vec())
            .send()
    };
    for (target, format, path, content_type) in [
        ("slack_event", Format::Json, "events", "application/json"),
        (
            "slack_interaction",
            Format::Form,
            "interactions",
            "application/x-www-form-urlencoded",
        ),
        (
            "slack_command",
            Format::Form,
            "commands",
            "application/x-www-form-urlencoded",
        ),
    ] {
        let t = Target::new(target, format);
        run_http(&t, &s, |i, case| post(path, content_type, i, case)).await;
        targets.push(t);
    }
    let t = &targets[0];
    let last = last_case(
        message_event("EvDrain", "CDRAIN", "1700000099.000100", "/echo fuzz-drain").to_string(),
    );
    let res = post("events", "application/json", 0, &last).await;
    answered(t, &last, res).await;
    slack.wait_for("CDRAIN", "fuzz-drain").await;
    t.check_panics(&last);
    s.stop().await;
}

/// Discord channels the last, valid message goes to, and the gateway's sentinels (numeric
/// snowflakes, as Discord's ids are).
const DRAIN: &str = "1100000000000000099";
const SENTINEL: &str = "1100000000000000098";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_interactions() {
    use discord_fake::{APP_ID, BOT_TOKEN, FakeDiscord, command, public_key};
    let discord = FakeDiscord::start().await;
    let api = discord.api();
    let s = server(move |c| {
        c.discord.insert(
            "dc".into(),
            DiscordSettings::interactions_only(BOT_TOKEN.into(), APP_ID.into(), public_key(), api),
        );
    })
    .await;
    // The fake's signing key (discord/fake.rs), which signs bytes here: mutants need not be
    // UTF-8.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    assert_eq!(hex::encode(key.verifying_key().to_bytes()), public_key());
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/discord/dc/interactions", s.base);
    let post = |i: usize, case: &Case| {
        let ts = timestamp(i, case);
        let body = &case.bytes;
        let signed = [ts.as_bytes(), body].concat();
        http.post(&url)
            .header("content-type", "application/json")
            .header("x-signature-timestamp", ts)
            .header(
                "x-signature-ed25519",
                hex::encode(key.sign(&signed).to_bytes()),
            )
            .body(body.to_vec())
            .send()
    };
    let t = Target::new("discord_interaction", Format::Json);
    run_http(&t, &s, |i, case| post(i, case)).await;
    let (id, token) = discord.interaction(DRAIN);
    let last =
        last_case(command(&id, &token, DRAIN, "echo", &[("text", "fuzz-drain")]).to_string());
    answered(&t, &last, post(0, &last).await).await;
    discord.wait_for(DRAIN, "fuzz-drain").await;
    t.check_panics(&last);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailchat_callbacks() {
    use tailchat_fake::{APP_ID, APP_SECRET, CALLBACK_TOKEN, FakeTailchat, mention};
    let tc = FakeTailchat::start().await;
    let base = tc.base.clone();
    let s = server(move |c| {
        c.tailchat.insert(
            "tc".into(),
            TailchatSettings {
                api_base: base,
                app_id: APP_ID.into(),
                app_secret: APP_SECRET.into(),
                callback_token: CALLBACK_TOKEN.into(),
                sends_per_second: 1000,
            },
        );
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/hooks/tailchat/tc?token={CALLBACK_TOKEN}", s.base);
    let t = Target::new("tailchat_callback", Format::Json);
    run_http(&t, &s, |_, case| {
        http.post(&url)
            .header("content-type", "application/json")
            .body(case.bytes.clone())
            .send()
    })
    .await;
    let last = last_case(mention(None, "c-drain", "m-drain", "/echo fuzz-drain").to_string());
    let res = http
        .post(&url)
        .header("content-type", "application/json")
        .body(last.bytes.clone())
        .send()
        .await;
    answered(&t, &last, res).await;
    tc.wait_for("c-drain", "fuzz-drain").await;
    t.check_panics(&last);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_webhooks() {
    let s = server(|_| {}).await;
    let http = reqwest::Client::new();
    let t = Target::new("webhook_message", Format::Json);
    // `crm` checks signatures (signed here), `open` has no secret.
    run_http(&t, &s, |i, case| {
        let mut req = http
            .post(format!(
                "{}/hooks/webhook/{}",
                s.base,
                if i % 2 == 0 { "crm" } else { "open" }
            ))
            .header("content-type", "application/json")
            .body(case.bytes.clone());
        if i % 2 == 0 {
            let ts = timestamp(i, case);
            let sig = hmac_hex(SECRET, &[ts.as_bytes(), b".", &case.bytes]);
            req = req.header(
                flowbot_channels::webhook::SIGNATURE_HEADER,
                format!("t={ts},v1={sig}"),
            );
        }
        req.send()
    })
    .await;
    let last = last_case(
        json!({"user": "drain", "conversation": "drain", "text": "/echo fuzz-drain"}).to_string(),
    );
    let now = chrono::Utc::now().timestamp();
    let res = http
        .post(format!("{}/hooks/webhook/crm", s.base))
        .header("content-type", "application/json")
        .header(
            flowbot_channels::webhook::SIGNATURE_HEADER,
            flowbot_channels::webhook::sign(SECRET, now, &last.bytes),
        )
        .body(last.bytes.clone())
        .send()
        .await;
    answered(&t, &last, res).await;
    let callbacks = s.callbacks.clone();
    common::eventually("the last message answered", Duration::from_secs(20), || {
        callbacks
            .lock()
            .expect("callbacks")
            .iter()
            .any(|(cb, _)| cb.text == "fuzz-drain")
    })
    .await;
    t.check_panics(&last);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Web chat frames over a real WebSocket.

/// Read frames until an `error` frame whose detail contains `marker`: whether another error
/// came before it; `None` if the socket ends first.
async fn until_error(ws: &mut harness::Chat, marker: &str) -> Option<bool> {
    let mut refused = false;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .ok()??
            .ok()?;
        if let Ws::Text(t) = msg
            && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
            && v["type"] == "error"
        {
            if v["detail"].as_str().is_some_and(|d| d.contains(marker)) {
                return Some(refused);
            }
            refused = true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_chat_frames() {
    let s = server(|_| {}).await;
    let t = Target::new("chat_frame", Format::Json);
    let mut ws = harness::chat(&s, "fuzz", "fuzz").await;
    // Larger frames close the socket by design (the protocol's size limit).
    let cases = t.cases(flowbot_channels::web::MAX_FRAME_BYTES);
    for (i, case) in cases.iter().enumerate() {
        t.running(case);
        let frame = match std::str::from_utf8(&case.bytes) {
            Ok(text) => Ws::text(text),
            Err(_) => Ws::binary(case.bytes.clone()),
        };
        if let Err(e) = ws.send(frame).await {
            t.fail(case, &format!("the socket refused the frame: {e}"));
        }
        // A frame of an unknown type answers an error naming it: the socket read the case.
        let marker = format!("fuzz-sentinel-{i}");
        let sentinel = json!({"type": marker}).to_string();
        if ws.send(Ws::text(sentinel)).await.is_err() {
            t.fail(case, "the socket closed");
        }
        match until_error(&mut ws, &marker).await {
            Some(true) if case.must_be_valid() => t.fail(case, "a seed must be accepted"),
            Some(refused) => t.outcome(!refused),
            None => t.fail(case, "the socket closed or stopped answering"),
        }
        t.check_panics(case);
        // Now and then, a connection whose user and conversation are the case's bytes.
        if i % 25 == 0 {
            let q: String =
                url::form_urlencoded::byte_serialize(&case.bytes[..case.bytes.len().min(300)])
                    .collect();
            let url = format!("{}/ws/chat?user={q}&conversation={q}", s.ws);
            match tokio_tungstenite::connect_async(&url).await {
                Ok((mut other, _)) => {
                    let _ = other.close(None).await;
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(res))
                    if res.status().is_client_error() => {}
                Err(e) => t.fail(
                    case,
                    &format!("connecting with it as user and conversation: {e}"),
                ),
            }
        }
    }
    t.summary();
    still_healthy(&t, cases.last().expect("cases"), &s).await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Frames the platforms push over WebSockets: Discord's gateway and Slack's Socket Mode.

/// Wait until `seen` holds, woken by `changed` (the fake's notice that something
/// happened), calling `send` first and again whenever a second passes without it (the bot
/// may have been reconnecting when it was sent); fail `case` after 20 s.
async fn until_seen(
    t: &Target,
    case: &Case,
    what: &str,
    changed: &tokio::sync::Notify,
    mut send: impl FnMut(),
    seen: impl Fn() -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let woken = changed.notified();
        tokio::pin!(woken);
        // Registered before looking, so a change between the look and the wait wakes it.
        woken.as_mut().enable();
        send();
        let resend = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            if seen() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                t.fail(case, &format!("{what} never came: the session stopped"));
            }
            if tokio::time::timeout_at(resend.min(deadline), woken.as_mut())
                .await
                .is_err()
            {
                break; // a second without it: send again
            }
            woken.set(changed.notified());
            woken.as_mut().enable();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_gateway_frames() {
    use discord_fake::{APP_ID, BOT_TOKEN, FakeDiscord, message};
    let discord = FakeDiscord::start().await;
    let api = discord.api();
    let s = server(move |c| {
        let entry = DiscordSettings::gateway_only(BOT_TOKEN.into(), APP_ID.into(), api);
        c.discord.insert("dg".into(), entry);
    })
    .await;
    discord.wait_connected(0).await;
    let t = Target::new("discord_gateway", Format::Json);
    let cases = t.cases(MAX_HTTP);
    for (i, case) in cases.iter().enumerate() {
        t.running(case);
        // Sent on a live connection (the bot may be reconnecting after the case before).
        until_seen(
            &t,
            case,
            "a live gateway connection",
            &discord.changed,
            || {},
            || discord.try_send_raw(0, &case.text()),
        )
        .await;
        // Then a message the bot answers: once the answer is there, the bot read every frame
        // before it.
        let sentinel = format!("fuzz-sentinel-{i}");
        let id = format!("{}", 500_000 + i);
        until_seen(
            &t,
            case,
            "the answer to the sentinel",
            &discord.changed,
            || {
                if discord.connected(0) {
                    let echo = message(&id, SENTINEL, &format!("/echo {sentinel}"));
                    discord.dispatch(0, "MESSAGE_CREATE", echo);
                }
            },
            || {
                discord
                    .sent_to(SENTINEL)
                    .iter()
                    .any(|m| m.body["content"] == sentinel.as_str())
            },
        )
        .await;
        t.outcome(true);
        t.check_panics(case);
    }
    t.summary();
    still_healthy(&t, cases.last().expect("cases"), &s).await;
    let last = last_case(message("9999", DRAIN, "/echo fuzz-drain").to_string());
    discord.wait_connected(0).await;
    discord.dispatch(
        0,
        "MESSAGE_CREATE",
        message("9999", DRAIN, "/echo fuzz-drain"),
    );
    discord.wait_for(DRAIN, "fuzz-drain").await;
    t.check_panics(&last);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_socket_mode_envelopes() {
    use slack_fake::{APP_TOKEN, message_event};
    let (slack, s) = slack_server(Some(APP_TOKEN)).await;
    let t = Target::new("slack_socket", Format::Json);
    let cases = t.cases(MAX_HTTP);
    // The socket is open and read before the first case.
    until_seen(
        &t,
        &cases[0],
        "the first acknowledgement",
        &slack.changed,
        || {
            let _ = slack.send_raw(
                json!({"envelope_id": "fuzz-ready", "type": "fuzz_sentinel"}).to_string(),
            );
        },
        || slack.acks().iter().any(|a| a == "fuzz-ready"),
    )
    .await;
    for (i, case) in cases.iter().enumerate() {
        t.running(case);
        // Sent while a socket listens (the app may be reconnecting after the case before).
        until_seen(
            &t,
            case,
            "a Socket Mode connection",
            &slack.changed,
            || {},
            || slack.send_raw(case.text()),
        )
        .await;
        // Then an envelope of a type the app does not handle: acknowledged once the app read
        // every frame before it (sent again if the app was reconnecting).
        let mut n = 0;
        let prefix = format!("fuzz-sentinel-{i}-");
        until_seen(
            &t,
            case,
            "the sentinel's acknowledgement",
            &slack.changed,
            || {
                n += 1;
                let frame = json!({"envelope_id": format!("{prefix}{n}"), "type": "fuzz_sentinel"});
                let _ = slack.send_raw(frame.to_string());
            },
            || slack.acks().iter().any(|a| a.starts_with(&prefix)),
        )
        .await;
        t.outcome(true);
        t.check_panics(case);
    }
    t.summary();
    still_healthy(&t, cases.last().expect("cases"), &s).await;
    let event = message_event("EvDrain", "CDRAIN", "1700000099.000100", "/echo fuzz-drain");
    let last = last_case(event.to_string());
    let acked = slack.envelope("events_api", &event);
    slack.wait_for("CDRAIN", "fuzz-drain").await;
    assert!(slack.acks().contains(&acked));
    t.check_panics(&last);
    s.stop().await;
}
