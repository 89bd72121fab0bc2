//! `flowbot-channel-bench`: what each platform adapter adds to taking a request in, next to
//! the generic webhook channel, on the release `flowbot-server` with SQLite.
//!
//! ```text
//! cargo build --release -p flowbot-server -p flowbot-bench --bin flowbot-server --bin flowbot-channel-bench
//! target/release/flowbot-channel-bench [--requests N] [--concurrency C]
//! ```
//!
//! One server (a child process, embedded agent off so the measure is the ingestion path:
//! verify, parse, convert, store the task, answer) serves five channels: the generic webhook
//! (HMAC-signed), Slack's Events API (signed `event_callback` messages), Telegram's webhook
//! (secret token), Tailchat's callback (URL token) and Discord's interactions endpoint
//! (Ed25519-signed slash commands). For each, `C` keep-alive clients send `N` requests in
//! total, each a new message, and the time from sending a request to its 2xx answer (the
//! message durably queued) is recorded. The generic webhook runs first and again last, so
//! drift during the run shows. The report gives p50 and p99 per adapter and the ratio of each
//! adapter's p50 and p99 to the generic webhook's (the mean of its two runs).
//!
//! Then the Discord gateway: the same Discord channel is connected to a gateway stand-in in
//! this process, which sends `N` MESSAGE_CREATE dispatches as fast as the server reads them;
//! the figure is events stored per second (from `flowbot_channel_accepted_total`), next to
//! the generic webhook's requests per second from one client (the gateway is one connection,
//! handled in order) measured just before.
//!
//! Telegram's and Discord's start-up calls (`getMe`, `GET /gateway/bot`, the commands) are
//! answered by a tiny HTTP stand-in in this process.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports on the terminal

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Ws;

const HOOK_SECRET: &str = "bench-webhook-secret-0123456789";
const SLACK_SECRET: &str = "bench-slack-signing-secret-0123";
const TG_SECRET: &str = "bench-telegram-secret";
const TC_TOKEN: &str = "bench-tailchat-token-0123";

/// Stands in for the Discord application's signing key.
fn discord_key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[9u8; 32]))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Webhook,
    Slack,
    Telegram,
    Tailchat,
    Discord,
}

impl Adapter {
    fn name(self) -> &'static str {
        match self {
            Adapter::Webhook => "generic webhook",
            Adapter::Slack => "Slack Events API",
            Adapter::Telegram => "Telegram webhook",
            Adapter::Tailchat => "Tailchat callback",
            Adapter::Discord => "Discord interactions",
        }
    }

    /// The request for message `n`: path, body, headers.
    fn request(self, n: u64) -> (String, String, Vec<(String, String)>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let hmac = |key: &str, data: &str| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
            mac.update(data.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        match self {
            Adapter::Webhook => {
                let body = json!({"user": format!("u{}", n % 100), "conversation": format!("c{}", n % 100),
                                  "text": "/echo benchmark", "id": format!("m-{n}")})
                .to_string();
                let sig = format!("t={now},v1={}", hmac(HOOK_SECRET, &format!("{now}.{body}")));
                (
                    "/hooks/webhook/bench".into(),
                    body,
                    vec![("x-flowbot-signature".into(), sig)],
                )
            }
            Adapter::Slack => {
                let ts = format!("1700000000.{n:06}");
                let body = json!({"token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
                    "event_id": format!("Ev{n}"), "event_time": 1_700_000_000,
                    "event": {"type": "message", "channel": format!("C{}", n % 100), "channel_type": "channel",
                              "user": format!("U{}", n % 100), "text": "/echo benchmark", "ts": ts, "event_ts": ts}})
                .to_string();
                let sig = format!("v0={}", hmac(SLACK_SECRET, &format!("v0:{now}:{body}")));
                (
                    "/hooks/slack/sl/events".into(),
                    body,
                    vec![
                        ("x-slack-signature".into(), sig),
                        ("x-slack-request-timestamp".into(), now.to_string()),
                    ],
                )
            }
            Adapter::Telegram => {
                let body = json!({"update_id": n, "message": {"message_id": n, "date": now,
                    "chat": {"id": 1000 + n % 100, "type": "private"},
                    "from": {"id": 1000 + n % 100, "is_bot": false, "first_name": "Ada"},
                    "text": "/echo benchmark"}})
                .to_string();
                (
                    "/hooks/telegram/tg".into(),
                    body,
                    vec![("x-telegram-bot-api-secret-token".into(), TG_SECRET.into())],
                )
            }
            Adapter::Tailchat => {
                let body = json!({"_id": format!("i{n}"), "userId": "bot", "type": "message", "readed": false,
                    "payload": {"groupId": "g1", "converseId": format!("c{}", n % 100), "messageId": format!("m{n}"),
                                "messageAuthor": format!("u{}", n % 100), "messageSnippet": "[at=bot]Bot[/at] /echo benchmark"}})
                .to_string();
                (format!("/hooks/tailchat/tc?token={TC_TOKEN}"), body, vec![])
            }
            Adapter::Discord => {
                // A complete interaction, as Discord sends it (serenity's model decodes it).
                let member = json!({"user": {"id": format!("{}", 42 + n % 100), "username": "ada",
                        "discriminator": "0", "global_name": null, "avatar": null},
                    "roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false,
                    "mute": false, "flags": 0, "permissions": "0"});
                let body =
                    json!({"id": format!("{}", 1_000_000 + n), "application_id": "4242", "type": 2,
                    "token": format!("bench-token-{n}"), "version": 1, "guild_id": "777",
                    "channel_id": format!("{}", 500 + n % 100), "member": member,
                    "app_permissions": "0", "locale": "en-US", "guild_locale": "en-US",
                    "entitlements": [], "authorizing_integration_owners": {"0": "777"},
                    "context": 0, "attachment_size_limit": 10_485_760,
                    "data": {"id": "1", "name": "echo", "type": 1,
                             "options": [{"name": "text", "type": 3, "value": "benchmark"}]}})
                    .to_string();
                let sig = discord_key().sign(format!("{now}{body}").as_bytes());
                (
                    "/hooks/discord/dc/interactions".into(),
                    body,
                    vec![
                        ("x-signature-ed25519".into(), hex::encode(sig.to_bytes())),
                        ("x-signature-timestamp".into(), now.to_string()),
                    ],
                )
            }
        }
    }
}

/// Answers `GET …/gateway/bot` with the gateway stand-in's URL, and every other HTTP request
/// with a Bot API `getMe`-shaped success (enough for start-up).
async fn api_stand_in(gateway_port: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let gateway = String::from_utf8_lossy(&buf[..n]).contains("/gateway/bot");
                let body = if gateway {
                    json!({"url": format!("ws://127.0.0.1:{gateway_port}"), "shards": 1,
                        "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})
                    .to_string()
                } else {
                    r#"{"ok":true,"result":{"id":1,"is_bot":true,"first_name":"Bench","username":"bench_bot"}}"#.to_owned()
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// A Discord gateway stand-in for one connection: Hello, READY after Identify, heartbeats
/// acknowledged. Once ready it says so on `ready`; each number then received on the returned
/// sender makes it send that many MESSAGE_CREATE dispatches back to back.
async fn gateway_stand_in() -> (
    u16,
    tokio::sync::mpsc::UnboundedSender<u64>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (burst_tx, mut burst_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(sock)
            .await
            .expect("upgrade");
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (identified_tx, identified_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut identified = Some(identified_tx);
            while let Some(Ok(Ws::Text(t))) = stream.next().await {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                match v["op"].as_u64() {
                    Some(1) => {
                        let _ = out_tx.send(json!({"op": 11}).to_string());
                    }
                    Some(2) => {
                        if let Some(i) = identified.take() {
                            let _ = i.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        let hello = json!({"op": 10, "d": {"heartbeat_interval": 41250}});
        sink.send(Ws::text(hello.to_string())).await.expect("hello");
        identified_rx.await.expect("identify");
        let ready = json!({"op": 0, "t": "READY", "s": 1, "d": {"v": 10, "session_id": "bench",
            "resume_gateway_url": format!("ws://127.0.0.1:{port}"),
            "user": {"id": "4243", "username": "bench", "bot": true}, "guilds": [], "shard": [0, 1],
            "application": {"id": "4242", "flags": 0}}});
        sink.send(Ws::text(ready.to_string())).await.expect("ready");
        let _ = ready_tx.send(());
        let mut seq = 1u64;
        loop {
            tokio::select! {
                Some(frame) = out_rx.recv() => {
                    if sink.send(Ws::text(frame)).await.is_err() { return }
                }
                Some(n) = burst_rx.recv() => {
                    for i in 0..n {
                        seq += 1;
                        let d = json!({"id": format!("{}", 2_000_000 + seq), "channel_id": format!("{}", 600 + i % 100),
                            "guild_id": "777", "type": 0, "content": "/echo benchmark",
                            "author": {"id": format!("{}", 42 + i % 100), "username": "ada"},
                            "timestamp": "2026-11-22T10:00:00.000000+00:00", "tts": false,
                            "mention_everyone": false, "mentions": [], "mention_roles": [],
                            "attachments": [], "embeds": [], "pinned": false});
                        let frame = json!({"op": 0, "t": "MESSAGE_CREATE", "s": seq, "d": d});
                        if sink.feed(Ws::text(frame.to_string())).await.is_err() { return }
                    }
                    if sink.flush().await.is_err() { return }
                }
                else => return,
            }
        }
    });
    (port, burst_tx, ready_rx)
}

/// The server's count of events stored for channel `channel`.
async fn accepted(http: &reqwest::Client, base: &str, channel: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let prefix = format!("flowbot_channel_accepted_total{{channel=\"{channel}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

struct Run {
    adapter: Adapter,
    p50: Duration,
    p99: Duration,
    rate: f64,
}

async fn measure(
    base: &str,
    adapter: Adapter,
    requests: u64,
    concurrency: u64,
    first: &AtomicU64,
) -> Run {
    // Every request is built and signed before the clock starts: the client's signing (an
    // Ed25519 signature for Discord) would otherwise take CPU from the server it measures.
    let from = first.fetch_add(requests, Ordering::Relaxed);
    let prepared: Arc<Vec<_>> = Arc::new(
        (from..from + requests)
            .map(|n| adapter.request(n))
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (base, next, prepared) = (base.to_owned(), next.clone(), prepared.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, body, headers)) = usize::try_from(n)
                    .ok()
                    .and_then(|n| prepared.get(n))
                    .cloned()
                else {
                    break;
                };
                let mut req = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let t = Instant::now();
                let res = req.send().await.expect("request");
                let status = res.status();
                let _ = res.bytes().await;
                assert!(status.is_success(), "{}: HTTP {status}", adapter.name());
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let took = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        adapter,
        p50: pct(0.50),
        p99: pct(0.99),
        rate: lat.len() as f64 / took.as_secs_f64(),
    }
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let requests = flag(&args, "--requests", 4000);
    let concurrency = flag(&args, "--concurrency", 8);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = std::env::var_os("FLOWBOT_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/flowbot-server"));
    let dir = std::env::temp_dir().join(format!("flowbot-channel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (gateway_port, burst, gateway_ready) = gateway_stand_in().await;
    let api_port = api_stand_in(gateway_port).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let env: Vec<(&str, String)> = vec![
        ("FLOWBOT_SERVER__LISTEN", format!("127.0.0.1:{port}")),
        ("FLOWBOT_SERVER__AGENT", "false".into()),
        (
            "FLOWBOT_DATABASE__URL",
            format!("sqlite://{}/bench.db", dir.display()),
        ),
        ("FLOWBOT_LOG__LEVEL", "warn".into()),
        ("FLOWBOT_WEBHOOKS__BENCH__SECRET", HOOK_SECRET.into()),
        ("FLOWBOT_SLACK__SL__BOT_TOKEN", "xoxb-bench".into()),
        ("FLOWBOT_SLACK__SL__SIGNING_SECRET", SLACK_SECRET.into()),
        (
            "FLOWBOT_TELEGRAM__TG__TOKEN",
            "123456:bench-token-abcdefghij".into(),
        ),
        ("FLOWBOT_TELEGRAM__TG__MODE", "webhook".into()),
        ("FLOWBOT_TELEGRAM__TG__SECRET_TOKEN", TG_SECRET.into()),
        (
            "FLOWBOT_TELEGRAM__TG__API_BASE",
            format!("\"http://127.0.0.1:{api_port}\""),
        ),
        (
            "FLOWBOT_TAILCHAT__TC__API_BASE",
            "\"http://127.0.0.1:9\"".into(),
        ),
        ("FLOWBOT_TAILCHAT__TC__APP_ID", "bench".into()),
        ("FLOWBOT_TAILCHAT__TC__APP_SECRET", "bench-secret".into()),
        ("FLOWBOT_TAILCHAT__TC__CALLBACK_TOKEN", TC_TOKEN.into()),
        (
            "FLOWBOT_DISCORD__DC__BOT_TOKEN",
            "bench-discord-token-0123456789".into(),
        ),
        ("FLOWBOT_DISCORD__DC__APPLICATION_ID", "\"4242\"".into()),
        (
            "FLOWBOT_DISCORD__DC__PUBLIC_KEY",
            hex::encode(discord_key().verifying_key().to_bytes()),
        ),
        (
            "FLOWBOT_DISCORD__DC__API_BASE",
            format!("\"http://127.0.0.1:{api_port}/api/v10\""),
        ),
    ];
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    let child = match Command::new(&bin)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
    {
        Ok(c) => Killed(c),
        Err(e) => {
            eprintln!(
                "starting {}: {e} (build it with --release first)",
                bin.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "server not ready; its log:\n{}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids = AtomicU64::new(1);
    // Warm-up: every route, a few hundred requests each.
    for a in [
        Adapter::Webhook,
        Adapter::Slack,
        Adapter::Telegram,
        Adapter::Tailchat,
        Adapter::Discord,
    ] {
        measure(&base, a, 300, concurrency, &ids).await;
    }
    let mut runs = Vec::new();
    for a in [
        Adapter::Webhook,
        Adapter::Slack,
        Adapter::Telegram,
        Adapter::Tailchat,
        Adapter::Discord,
        Adapter::Webhook,
    ] {
        eprintln!("{}: {requests} requests, {concurrency} clients…", a.name());
        runs.push(measure(&base, a, requests, concurrency, &ids).await);
    }

    // The gateway: one connection, events in order, next to one webhook client.
    eprintln!("generic webhook: {requests} requests, 1 client…");
    let sequential = measure(&base, Adapter::Webhook, requests, 1, &ids).await;
    if tokio::time::timeout(Duration::from_secs(30), gateway_ready)
        .await
        .is_err()
    {
        eprintln!("the server never connected to the gateway stand-in");
        return ExitCode::FAILURE;
    }
    eprintln!("Discord gateway: {requests} MESSAGE_CREATE dispatches…");
    let before = accepted(&http, &base, "dc").await;
    let started = Instant::now();
    burst.send(requests).expect("burst");
    let deadline = started + Duration::from_secs(300);
    while accepted(&http, &base, "dc").await < before + requests {
        if Instant::now() > deadline {
            eprintln!("the gateway's events were not all stored in 300 s");
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gateway_rate = requests as f64 / started.elapsed().as_secs_f64();
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);

    let webhook: Vec<&Run> = runs
        .iter()
        .filter(|r| r.adapter == Adapter::Webhook)
        .collect();
    let mean = |f: fn(&Run) -> Duration| {
        webhook.iter().map(|r| f(r).as_secs_f64()).sum::<f64>() / webhook.len() as f64
    };
    let (base50, base99) = (mean(|r| r.p50), mean(|r| r.p99));
    println!("| adapter | p50 ms | p99 ms | requests/s | p50 / webhook | p99 / webhook |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.3} | {:.3} | {:.0} | {:.2} | {:.2} |",
            r.adapter.name(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.rate,
            r.p50.as_secs_f64() / base50,
            r.p99.as_secs_f64() / base99
        );
    }
    println!(
        "\n{requests} requests per run, {concurrency} keep-alive clients, SQLite, embedded agent off.\n"
    );
    println!("| path | events/s | / webhook, 1 client |");
    println!("|---|---|---|");
    println!(
        "| generic webhook, 1 client (p50 {:.3} ms) | {:.0} | 1.00 |",
        sequential.p50.as_secs_f64() * 1e3,
        sequential.rate
    );
    println!(
        "| Discord gateway, MESSAGE_CREATE to stored event | {gateway_rate:.0} | {:.2} |",
        gateway_rate / sequential.rate
    );
    ExitCode::SUCCESS
}
