//! `flowbot-bench llm`: the LLM streaming path and durable runs, each measured against a
//! baseline in the same run (ratios and differences, never absolute pass marks):
//!
//! - **Time to first token**: flowbot-llm's Chat Completions model, and on through a
//!   [`Draft`] to a `partial` frame read by a WebSocket client of the web chat channel,
//!   against a bare reqwest + `sse-stream` loop that decodes each chunk into a
//!   `serde_json::Value`, both asking the fake provider; the two alternate request by request.
//! - **Parsing throughput**: a long prepared Chat Completions stream (thousands of chunks,
//!   taken once from the fake provider) served by a minimal axum server, read to its end by
//!   flowbot-llm and by the bare loop: events only counted, decoded into a `Value`, and (a
//!   diagnostic) decoded into a typed struct.
//! - **1,000 concurrent streamed conversations** against the fake provider: each answer's
//!   time through flowbot-llm and through the bare loops at the same concurrency, with the
//!   streams held open together by scripted stalls (the target's measure), and as a
//!   saturating burst.
//! - **A durable run's checkpoint**: `Runs::save` of a run with a few messages and two tool
//!   calls, against a bare `kv_set` of a small value, on SQLite (a temporary file) and on
//!   PostgreSQL (a fresh schema, dropped afterwards).
//! - **Memory per open stream**: child processes hold 1,000 answers stalled mid-stream (the
//!   fake's `Turn::Stall`), through flowbot-llm or through the bare loop; their `VmRSS` before
//!   and while they are open, divided by the number of streams.
//!
//! ```text
//! cargo build --release -p flowbot-bench --bin flowbot-bench
//! FLOWBOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     target/release/flowbot-bench llm [--only ttft,throughput,concurrency,checkpoint,memory]
//! ```
//!
//! Sizes: `--ttft N` (requests per path, 500), `--chunks N` and `--throughput-runs N` (the
//! prepared stream, 12,000 chunks, 12 runs), `--streams N`, `--per-stream N` and
//! `--answer-chunks N` (1,000 conversations of 5 answers of 100 chunks; `--paths
//! count,value,llm` and `--paces paced,burst` pick parts), `--saves N` (2,000). Without a
//! PostgreSQL URL the PostgreSQL checkpoint row is skipped.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, StreamEvent, ToolCall, ToolResult, Usage,
};
use flowbot_core::{
    CancellationToken, ChannelListener, ChannelName, ConversationId, Draft, Inbox, Senders, Store,
    Target,
};
use flowbot_llm::agent::{CallRecord, RunState, RunStatus, Runs};
use flowbot_llm::fake::{FAKE_KEY, FakeProvider, Reply, Turn};
use flowbot_llm::{Dialect, ProviderConfig};
use flowbot_store::{PostgresOptions, PostgresStore, SqliteStore};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use sse_stream::SseStream;

const MODEL: &str = "fake-model";

struct Args {
    only: Vec<String>,
    /// Concurrency: which paths (`count`, `value`, `llm`) and paces (`paced`, `burst`).
    paths: Vec<String>,
    paces: Vec<String>,
    ttft: usize,
    chunks: usize,
    throughput_runs: usize,
    streams: usize,
    per_stream: usize,
    answer_chunks: usize,
    saves: usize,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        only: Vec::new(),
        paths: Vec::new(),
        paces: Vec::new(),
        ttft: 500,
        chunks: 12_000,
        throughput_runs: 12,
        streams: 1000,
        per_stream: 5,
        answer_chunks: 100,
        saves: 2000,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{name} takes a positive number"))
        };
        match flag.as_str() {
            "--ttft" => a.ttft = value("--ttft")?,
            "--chunks" => a.chunks = value("--chunks")?,
            "--throughput-runs" => a.throughput_runs = value("--throughput-runs")?,
            "--streams" => a.streams = value("--streams")?,
            "--per-stream" => a.per_stream = value("--per-stream")?,
            "--answer-chunks" => a.answer_chunks = value("--answer-chunks")?,
            "--saves" => a.saves = value("--saves")?,
            "--paths" | "--paces" => {
                let list = it
                    .next()
                    .ok_or(format!("{flag} takes a comma-separated list"))?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if flag == "--paths" {
                    a.paths = list;
                } else {
                    a.paces = list;
                }
            }
            "--only" => {
                a.only = it
                    .next()
                    .ok_or("--only takes a list: ttft,throughput,concurrency,memory,checkpoint")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
            }
            other => return Err(format!("unknown flag '{other}'")),
        }
    }
    Ok(a)
}

/// Run the subcommand; the process's exit code.
pub(crate) async fn main(args: Vec<String>) -> i32 {
    if args.first().map(String::as_str) == Some("--memory-child") {
        return match memory_child(&args[1..]).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("memory child: {e}");
                1
            }
        };
    }
    let a = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flowbot-bench llm: {e}");
            return 2;
        }
    };
    let wants = |what: &str| a.only.is_empty() || a.only.iter().any(|o| o == what);
    println!("# LLM streaming and durable runs\n");
    println!("{}\n", machine());
    let mut failed = false;
    let mut report = |r: Result<(), String>, what: &str| {
        if let Err(e) = r {
            eprintln!("{what}: {e}");
            println!("\n**{what} failed: {e}**\n");
            failed = true;
        }
    };
    if wants("ttft") {
        report(ttft(a.ttft).await, "time to first token");
    }
    if wants("throughput") {
        report(
            throughput(a.chunks, a.throughput_runs).await,
            "parsing throughput",
        );
    }
    if wants("concurrency") {
        report(concurrency(&a).await, "concurrent streams");
    }
    if wants("checkpoint") {
        report(checkpoint(a.saves).await, "checkpoints");
    }
    // Last: closing its thousands of stalled sockets takes the kernel a moment.
    if wants("memory") {
        report(
            memory(a.streams, a.answer_chunks).await,
            "memory per stream",
        );
    }
    i32::from(failed)
}

// ---------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------

/// Deterministic answer text of `chars` characters (words and spaces).
fn answer_text(chars: usize) -> String {
    const WORDS: [&str; 12] = [
        "the", "weather", "in", "Paris", "tomorrow", "looks", "mild,", "with", "light", "rain",
        "after", "noon.",
    ];
    let mut s = String::with_capacity(chars + 16);
    let mut i = 0;
    while s.len() < chars {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[i % WORDS.len()]);
        i += 1;
    }
    s.truncate(chars);
    s
}

/// A streamed reply of about `chunks` text chunks (4 characters each).
fn reply(chunks: usize) -> Reply {
    let mut r = Reply::text(answer_text(chunks.saturating_mul(4)));
    r.delta_chars = 4;
    r
}

const SYSTEM: &str = "You are a helpful assistant in a chat. Answer briefly.";
const QUESTION: &str = "What will the weather be like in Paris tomorrow?";

/// The request both paths send: a system prompt and a question.
fn request() -> ChatRequest {
    request_with(QUESTION)
}

fn request_with(question: &str) -> ChatRequest {
    ChatRequest::new(vec![
        ChatMessage::system(SYSTEM),
        ChatMessage::user(question),
    ])
}

/// The JSON body flowbot-llm's Chat Completions model sends for [`request`], written by hand
/// for the bare loop.
fn bare_body() -> Value {
    bare_body_with(QUESTION)
}

fn bare_body_with(question: &str) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

fn config_at(base: &str) -> ProviderConfig {
    ProviderConfig::new(Dialect::Openai, MODEL)
        .base_url(base)
        .api_key(FAKE_KEY)
}

/// How the bare loop reads each SSE event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    /// Count it (no JSON decoding).
    Count,
    /// Decode its data into a `serde_json::Value` and read the text delta.
    Value,
    /// Decode its data into a typed struct borrowing from it (a diagnostic: what a typed
    /// decoder would cost).
    Typed,
}

/// The part of a Chat Completions chunk the typed reader keeps; serde skips the rest.
#[derive(serde::Deserialize)]
struct TypedChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<TypedChoice<'a>>,
}

#[derive(serde::Deserialize)]
struct TypedChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<TypedDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct TypedDelta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

impl Parse {
    fn label(self) -> &'static str {
        match self {
            Parse::Count => "bare reqwest + sse-stream, events counted (no JSON)",
            Parse::Value => "bare reqwest + sse-stream + serde_json::Value",
            Parse::Typed => "bare reqwest + sse-stream + typed serde struct (diagnostic)",
        }
    }
}

/// What one read stream gave.
#[derive(Debug, Default, Clone, Copy)]
struct Read {
    /// SSE events with data (bare) or typed events (flowbot-llm).
    events: usize,
    /// Time from the start to the first non-empty text delta.
    first_token: Option<Duration>,
    /// Bytes of text read (0 for [`Parse::Count`]).
    text: usize,
}

type BareSse = Pin<Box<dyn Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

/// Send the request with a bare reqwest client; the SSE events of the answer.
async fn bare_open(client: &reqwest::Client, url: &str, body: &Value) -> Result<BareSse, String> {
    let response = client
        .post(url)
        .bearer_auth(FAKE_KEY)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("bare request: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("bare request: HTTP {}", response.status()));
    }
    Ok(Box::pin(SseStream::from_bytes_stream(
        response.bytes_stream(),
    )))
}

/// The bare loop: read the answer to its `[DONE]`, each event as `parse` says.
async fn bare_read(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    parse: Parse,
    t0: Instant,
) -> Result<Read, String> {
    let mut sse = bare_open(client, url, body).await?;
    let mut read = Read::default();
    while let Some(item) = sse.next().await {
        let event = item.map_err(|e| format!("bare stream: {e}"))?;
        let Some(data) = event.data else { continue };
        read.events += 1;
        if data == "[DONE]" {
            break;
        }
        match parse {
            Parse::Count => {}
            Parse::Value => {
                let v: Value =
                    serde_json::from_str(&data).map_err(|e| format!("bare stream JSON: {e}"))?;
                if let Some(t) = v
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    read.first_token.get_or_insert_with(|| t0.elapsed());
                    read.text += t.len();
                }
            }
            Parse::Typed => {
                let c: TypedChunk<'_> =
                    serde_json::from_str(&data).map_err(|e| format!("bare stream JSON: {e}"))?;
                if let Some(t) = c
                    .choices
                    .first()
                    .and_then(|c| c.delta.as_ref())
                    .and_then(|d| d.content.as_deref())
                    .filter(|t| !t.is_empty())
                {
                    read.first_token.get_or_insert_with(|| t0.elapsed());
                    read.text += t.len();
                }
            }
        }
    }
    Ok(read)
}

/// flowbot-llm: stream the answer to its end, handing each text delta to `on_text`.
async fn llm_read(
    model: &dyn ChatModel,
    request: &ChatRequest,
    t0: Instant,
    mut on_text: impl FnMut(&str),
) -> Result<Read, String> {
    let mut stream = model.stream(request).await.map_err(|e| e.to_string())?;
    let mut read = Read::default();
    let mut finished = false;
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| e.to_string())?;
        read.events += 1;
        match event {
            StreamEvent::TextDelta { text } => {
                read.first_token.get_or_insert_with(|| t0.elapsed());
                read.text += text.len();
                on_text(&text);
            }
            StreamEvent::Finished { .. } => finished = true,
            _ => {}
        }
    }
    if !finished {
        return Err("the stream ended without a finish reason".into());
    }
    Ok(read)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The machine: cores, CPU model, kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "Machine: {cores} cores ({cpu}); load average at the start {}. \"Other load\" below is \
         the CPU the machine spent outside this process (and outside PostgreSQL's processes), \
         in % of one core, over each measurement.",
        load.join(" ")
    )
}

/// CPU counters at one moment, to tell how much else ran during a measurement.
struct Cpu {
    at: Instant,
    busy: u64,
    steal: u64,
    own: u64,
    postgres: u64,
}

fn stat_ticks(stat: &str) -> u64 {
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// CPU ticks of every process named `postgres`.
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains("(postgres)"))
        .map(|s| stat_ticks(&s))
        .sum()
}

impl Cpu {
    fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Cpu {
            at: Instant::now(),
            busy: total.saturating_sub(idle),
            steal: fields.get(7).copied().unwrap_or(0),
            own: std::fs::read_to_string("/proc/self/stat")
                .map(|s| stat_ticks(&s))
                .unwrap_or(0),
            postgres: postgres_ticks(),
        }
    }

    /// CPU seconds this process used since `self`.
    fn own_secs(&self) -> f64 {
        let now = std::fs::read_to_string("/proc/self/stat")
            .map(|s| stat_ticks(&s))
            .unwrap_or(0);
        now.saturating_sub(self.own) as f64 / 100.0
    }

    /// "other load N % (steal M %)" since `self`, in % of one core (100 ticks a second).
    fn other(&self) -> String {
        let now = Cpu::now();
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let busy = now.busy.saturating_sub(self.busy);
        let own = now.own.saturating_sub(self.own);
        let pg = now.postgres.saturating_sub(self.postgres);
        let other = busy.saturating_sub(own).saturating_sub(pg) as f64 / secs;
        let steal = now.steal.saturating_sub(self.steal) as f64 / secs;
        let own = own as f64 / secs;
        if pg > 0 {
            format!(
                "other load {other:.0} % (steal {steal:.0} %; this process {own:.0} %, PostgreSQL {:.0} %)",
                pg as f64 / secs
            )
        } else {
            format!("other load {other:.0} % (steal {steal:.0} %; this process {own:.0} %)")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Time to first token, and to the web chat's first partial frame
// ---------------------------------------------------------------------------------------

/// A web chat channel with one browser connected over a real WebSocket: the senders a
/// [`Draft`] shows through, the target, and the partial frames the browser reads (draft id,
/// when it arrived).
struct WebChat {
    senders: Senders,
    target: Target,
    partials: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    stop: CancellationToken,
    _inbox: tokio::sync::mpsc::Receiver<flowbot_core::Event>,
}

impl Drop for WebChat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn web_chat() -> Result<WebChat, String> {
    let web = flowbot_channels::web::WebChat::new("web", None);
    let channel = web.channel();
    let (inbox, inbox_rx) = Inbox::new(16);
    let stop = CancellationToken::new();
    let listener: Arc<dyn ChannelListener> = channel
        .listener()
        .ok_or("the web chat channel has no listener")?
        .clone();
    let s = stop.clone();
    tokio::spawn(async move { listener.listen(inbox, s).await });
    web.listening().await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = tcp.local_addr().map_err(|e| e.to_string())?;
    let router = web.router();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(tcp, router)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/ws/chat?user=bench&conversation=bench"
    ))
    .await
    .map_err(|e| format!("web chat socket: {e}"))?;
    // Welcome, then history.
    for _ in 0..2 {
        match ws.next().await {
            Some(Ok(_)) => {}
            other => return Err(format!("web chat socket: {other:?}")),
        }
    }
    let (tx, partials) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let at = Instant::now();
            if let tokio_tungstenite::tungstenite::Message::Text(text) = msg
                && let Ok(v) = serde_json::from_str::<Value>(text.as_str())
                && v.get("type").and_then(Value::as_str) == Some("partial")
                && let Some(draft) = v.get("draft").and_then(Value::as_str)
                && tx.send((draft.to_owned(), at)).is_err()
            {
                break;
            }
        }
    });
    let mut senders = Senders::default();
    senders
        .insert(channel.name().clone(), channel.sender().clone())
        .map_err(|e| e.to_string())?;
    Ok(WebChat {
        senders,
        target: Target {
            channel: ChannelName::from("web"),
            conversation: ConversationId::from("bench"),
            thread: None,
        },
        partials,
        stop,
        _inbox: inbox_rx,
    })
}

impl WebChat {
    /// When the browser read the first partial frame of `draft`.
    async fn first_partial(&mut self, draft: &str) -> Result<Instant, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.partials.recv()).await {
                Err(_) => return Err(format!("no partial frame of draft {draft} within 5 s")),
                Ok(None) => return Err("the web chat socket closed".into()),
                Ok(Some((id, at))) if id == draft => return Ok(at),
                Ok(Some(_)) => {}
            }
        }
    }
}

/// One flowbot-llm request shown through a draft: (first text delta, first partial frame at
/// the browser), both from the start of the request.
async fn llm_with_draft(
    model: &dyn ChatModel,
    req: &ChatRequest,
    web: &mut WebChat,
) -> Result<(Duration, Duration), String> {
    let mut draft = Draft::new(&web.senders, web.target.clone());
    let t0 = Instant::now();
    let read = llm_read(model, req, t0, |t| draft.push(t)).await?;
    let partial = web.first_partial(draft.id()).await?;
    draft.finish().await;
    let token = read.first_token.ok_or("no text in the answer")?;
    Ok((token, partial.duration_since(t0)))
}

async fn ttft(n: usize) -> Result<(), String> {
    let fake = FakeProvider::start().await.map_err(|e| e.to_string())?;
    // A short answer: about 30 chunks.
    let answer = reply(30);
    fake.respond_with(move |_| Turn::Reply(answer.clone()));
    let model =
        flowbot_llm::connect(&fake.config(Dialect::Openai, MODEL)).map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", fake.addr());
    let body = bare_body();
    let req = request();
    let mut web = web_chat().await?;

    let warmup = (n / 10).max(20);
    let mut bare = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut partial = Vec::with_capacity(n);
    let cpu = Cpu::now();
    let mut cpu_measured = None;
    for i in 0..warmup + n {
        if i == warmup {
            cpu_measured = Some(Cpu::now());
        }
        let one_bare = async || -> Result<Duration, String> {
            let t0 = Instant::now();
            let r = bare_read(&client, &url, &body, Parse::Value, t0).await?;
            r.first_token
                .ok_or_else(|| "no text in the bare answer".to_owned())
        };
        let (b, (t, p)) = if i % 2 == 0 {
            let b = one_bare().await?;
            (b, llm_with_draft(model.as_ref(), &req, &mut web).await?)
        } else {
            let tp = llm_with_draft(model.as_ref(), &req, &mut web).await?;
            (one_bare().await?, tp)
        };
        if i >= warmup {
            bare.push(b);
            token.push(t);
            partial.push(p);
        }
    }
    let load = cpu_measured.unwrap_or(cpu).other();
    for v in [&mut bare, &mut token, &mut partial] {
        v.sort_unstable();
    }
    println!("## Time to first token\n");
    println!(
        "{n} requests each (after {warmup} of warm-up), the two paths alternating, against the \
         fake provider (about 30 chunks an answer, keep-alive connections); {load}.\n"
    );
    println!("| path | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, v: &[Duration]| {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.9)),
            ms(pct(v, 0.99)),
            ms(pct(v, 0.5)) - ms(pct(&bare, 0.5)),
            ms(pct(v, 0.99)) - ms(pct(&bare, 0.99)),
        );
    };
    row("bare loop (baseline): first non-empty content delta", &bare);
    row("flowbot-llm: first `TextDelta`", &token);
    row(
        "flowbot-llm → Draft → web chat `partial` frame read by the browser",
        &partial,
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parsing throughput on a long prepared stream
// ---------------------------------------------------------------------------------------

/// A minimal server answering every Chat Completions request with `body`.
async fn prepared_server(body: Bytes) -> Result<(String, CancellationToken), String> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                    body,
                )
            }
        }),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = tcp.local_addr().map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(tcp, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok((format!("http://{addr}/v1"), stop))
}

async fn throughput(chunks: usize, runs: usize) -> Result<(), String> {
    // The stream the fake provider writes for a long answer, taken once.
    let fake = FakeProvider::start().await.map_err(|e| e.to_string())?;
    fake.push(Turn::Reply(reply(chunks)));
    let body: Bytes = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", fake.addr()))
        .bearer_auth(FAKE_KEY)
        .json(&bare_body())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    drop(fake);
    let sse_events = body
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"data:"))
        .count();
    let (base, stop) = prepared_server(body.clone()).await?;
    let config = config_at(&base);
    if body.len() > flowbot_llm::DEFAULT_MAX_RESPONSE_BYTES {
        return Err(format!(
            "the prepared stream ({} bytes) is over the default answer limit; use fewer --chunks",
            body.len()
        ));
    }
    let model = flowbot_llm::connect(&config).map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let url = format!("{base}/chat/completions");
    let req = request();
    let bare_req = bare_body();
    let text_len = answer_text(chunks.saturating_mul(4)).len();

    let readers = [
        Path::Bare(Parse::Count),
        Path::Bare(Parse::Value),
        Path::Bare(Parse::Typed),
        Path::Llm,
    ];
    let mut secs: [Vec<f64>; 4] = Default::default();
    let mut typed_events = 0;
    let warmup = 2;
    let mut cpu = Cpu::now();
    for run in 0..warmup + runs {
        if run == warmup {
            cpu = Cpu::now();
        }
        // Rotate the order so that none always runs first.
        for k in 0..readers.len() {
            let which = (run + k) % readers.len();
            let t0 = Instant::now();
            let read = match readers[which] {
                Path::Bare(parse) => bare_read(&client, &url, &bare_req, parse, t0).await?,
                Path::Llm => llm_read(model.as_ref(), &req, t0, |_| {}).await?,
            };
            let took = t0.elapsed().as_secs_f64();
            match readers[which] {
                Path::Bare(Parse::Count) if read.events != sse_events => {
                    return Err(format!(
                        "bare loop read {} of {sse_events} events",
                        read.events
                    ));
                }
                Path::Bare(Parse::Value | Parse::Typed) | Path::Llm if read.text != text_len => {
                    return Err(format!("read {} of {text_len} bytes of text", read.text));
                }
                Path::Llm => typed_events = read.events,
                _ => {}
            }
            if run >= warmup {
                secs[which].push(took);
            }
        }
    }
    let load = cpu.other();
    stop.cancel();
    let mb = body.len() as f64 / 1e6;
    let rate = |i: usize| {
        let s = median(secs[i].clone());
        (mb / s, sse_events as f64 / s, s)
    };
    let llm = rate(3);
    println!("## Parsing throughput\n");
    println!(
        "One prepared Chat Completions stream: {sse_events} SSE events ({chunks} text chunks of 4 \
         characters, the role chunk, the finish and usage chunks, `[DONE]`), {:.2} MB, as the \
         fake provider writes it, served whole by a minimal axum server on 127.0.0.1 and read \
         to its end {runs} times by each reader (after {warmup} rounds of warm-up, the order \
         rotating each round); medians; {load}. flowbot-llm turned it into {typed_events} typed \
         events.\n",
        mb
    );
    println!("| reader | MB/s | SSE events/s | µs per event | flowbot-llm ÷ reader |");
    println!("|---|---|---|---|---|");
    for (i, path) in readers.iter().enumerate() {
        let (r_mb, r_ev, r_s) = rate(i);
        let name = match path {
            Path::Llm => "flowbot-llm (`OpenAiChat::stream`, typed events)",
            other => other.label(),
        };
        println!(
            "| {name} | {r_mb:.1} | {r_ev:.0} | {:.2} | {:.2}× |",
            r_s * 1e6 / sse_events as f64,
            llm.1 / r_ev
        );
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1,000 concurrent streamed conversations
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Bare(Parse),
    Llm,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Bare(p) => p.label(),
            Path::Llm => "flowbot-llm",
        }
    }
}

struct Round {
    /// Each answer's time (burst: from the request to its last event; paced: the same less
    /// the scripted pause).
    samples: Vec<Duration>,
    wall: Duration,
    /// Streams open at once while measuring: mean and most.
    open: (f64, usize),
    /// CPU this process spent per answer (the fake provider's share included).
    cpu_per_answer: Duration,
    load: String,
}

/// A scripted pause in a question: `[pause=<ms> at=<bytes>]`; the fake stalls the answer
/// `at` bytes in for `ms`.
fn scripted_pause(question: &str) -> Option<(u64, usize)> {
    let rest = question.split("[pause=").nth(1)?;
    let (ms, rest) = rest.split_once(" at=")?;
    let (at, _) = rest.split_once(']')?;
    Some((ms.parse().ok()?, at.parse().ok()?))
}

/// A reproducible number from `seed` (splitmix64), so every path gets the same schedule.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How a concurrent round is driven.
#[derive(Clone, Copy)]
enum Pace {
    /// Every conversation starts at once and asks again as soon as an answer ends.
    Burst,
    /// Conversations start spread over `spread`; each answer stalls once at a random byte
    /// in `at` for a random pause in `pause_ms`, so the streams stay open together.
    Paced {
        spread: Duration,
        pause_ms: (u64, u64),
        at: (usize, usize),
    },
}

struct Shared {
    path: Path,
    per: usize,
    streams: usize,
    pace: Pace,
    model: Arc<dyn ChatModel>,
    client: reqwest::Client,
    url: String,
    open: std::sync::atomic::AtomicUsize,
}

/// One conversation: a warm-up answer, then (after the barrier) `per` answers in a row.
async fn conversation(
    sh: Arc<Shared>,
    c: usize,
    barrier: Arc<tokio::sync::Barrier>,
) -> Result<Vec<Duration>, String> {
    use std::sync::atomic::Ordering::Relaxed;
    let one = async |question: &str| -> Result<Duration, String> {
        let req = request_with(question);
        let body = bare_body_with(question);
        sh.open.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        let r = match sh.path {
            Path::Bare(parse) => bare_read(&sh.client, &sh.url, &body, parse, t0).await,
            Path::Llm => llm_read(sh.model.as_ref(), &req, t0, |_| {}).await,
        };
        let took = t0.elapsed();
        sh.open.fetch_sub(1, Relaxed);
        r.map(|_| took)
    };
    let warm = one(QUESTION).await;
    barrier.wait().await;
    let start = tokio::time::Instant::now();
    warm?;
    let mut v = Vec::with_capacity(sh.per);
    match sh.pace {
        Pace::Burst => {
            for _ in 0..sh.per {
                v.push(one(QUESTION).await?);
            }
        }
        Pace::Paced {
            spread,
            pause_ms,
            at,
        } => {
            let offset = spread.mul_f64(c as f64 / sh.streams.max(1) as f64);
            tokio::time::sleep_until(start + offset).await;
            for k in 0..sh.per {
                let r = mix(((c as u64) << 32) | k as u64);
                let pause = pause_ms.0 + r % (pause_ms.1 - pause_ms.0 + 1).max(1);
                let at = at.0 + (r >> 20) as usize % (at.1 - at.0 + 1).max(1);
                let took = one(&format!("{QUESTION} [pause={pause} at={at}]")).await?;
                v.push(took.saturating_sub(Duration::from_millis(pause)));
            }
        }
    }
    Ok(v)
}

async fn concurrent_round(
    path: Path,
    streams: usize,
    per: usize,
    pace: Pace,
    model: Arc<dyn ChatModel>,
    client: reqwest::Client,
    url: &str,
) -> Result<Round, String> {
    let sh = Arc::new(Shared {
        path,
        per,
        streams,
        pace,
        model,
        client,
        url: url.to_owned(),
        open: std::sync::atomic::AtomicUsize::new(0),
    });
    let barrier = Arc::new(tokio::sync::Barrier::new(streams + 1));
    let tasks: Vec<_> = (0..streams)
        .map(|c| tokio::spawn(conversation(sh.clone(), c, barrier.clone())))
        .collect();
    barrier.wait().await;
    let cpu = Cpu::now();
    let t0 = Instant::now();
    // Count the open streams every 10 ms while the round runs.
    let done = CancellationToken::new();
    let gauge = {
        let (sh, done) = (sh.clone(), done.clone());
        tokio::spawn(async move {
            let (mut sum, mut n, mut most) = (0usize, 0usize, 0usize);
            while !done.is_cancelled() {
                let now = sh.open.load(std::sync::atomic::Ordering::Relaxed);
                sum += now;
                n += 1;
                most = most.max(now);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (sum as f64 / n.max(1) as f64, most)
        })
    };
    let mut samples = Vec::with_capacity(streams * per);
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => samples.extend(v),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let wall = t0.elapsed();
    let load = cpu.other();
    let cpu_per_answer =
        Duration::from_secs_f64(cpu.own_secs() / (streams.saturating_mul(per)).max(1) as f64);
    done.cancel();
    let open = gauge.await.map_err(|e| e.to_string())?;
    if let Some(e) = first_error {
        return Err(format!("{}: {e}", path.label()));
    }
    samples.sort_unstable();
    Ok(Round {
        samples,
        wall,
        open,
        cpu_per_answer,
        load,
    })
}

async fn concurrency(a: &Args) -> Result<(), String> {
    let (streams, per, answer_chunks) = (a.streams, a.per_stream, a.answer_chunks);
    let path_wanted = |p: &str| a.paths.is_empty() || a.paths.iter().any(|x| x == p);
    let pace_wanted = |p: &str| a.paces.is_empty() || a.paces.iter().any(|x| x == p);
    let fake = FakeProvider::start().await.map_err(|e| e.to_string())?;
    // The answer's length, and where its second event ends (the first text is in it).
    fake.push(Turn::Reply(reply(answer_chunks)));
    let sample = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", fake.addr()))
        .bearer_auth(FAKE_KEY)
        .json(&bare_body())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let second_end = sample
        .match_indices("\n\n")
        .nth(1)
        .map(|(i, _)| i + 2)
        .ok_or("the sample answer has fewer than two events")?;
    let answer = reply(answer_chunks);
    fake.respond_with(move |r| {
        let question = r
            .body
            .pointer("/messages/1/content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match scripted_pause(question) {
            Some((ms, at)) => Turn::Stall {
                reply: answer.clone(),
                after_bytes: at,
                pause: Duration::from_millis(ms),
            },
            None => Turn::Reply(answer.clone()),
        }
    });
    let model =
        flowbot_llm::connect(&fake.config(Dialect::Openai, MODEL)).map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", fake.addr());
    let paths: Vec<Path> = [
        ("count", Path::Bare(Parse::Count)),
        ("value", Path::Bare(Parse::Value)),
        ("llm", Path::Llm),
    ]
    .into_iter()
    .filter(|(name, _)| path_wanted(name))
    .map(|(_, p)| p)
    .collect();
    let paced = Pace::Paced {
        spread: Duration::from_secs(1),
        pause_ms: (500, 1500),
        at: (second_end, sample.len().saturating_sub(200).max(second_end)),
    };
    println!("## {streams} concurrent streamed conversations\n");
    println!(
        "{streams} conversations against the fake provider (in this process, on the same two \
         cores), each answer about {answer_chunks} chunks ({} bytes); each conversation takes \
         one warm-up answer (connecting), then {per} answers in a row. Two rounds, the \
         paths in turn (the second round in the reverse order).\n",
        sample.len()
    );
    for (name, title, pace, what) in [
        (
            "paced",
            "Open together (the target's measure)",
            paced,
            "Conversations start evenly over the first second; every answer stalls once, at \
             a random byte between the first text chunk and the end, for a random 500–1500 ms \
             (the same schedule for every path), so about all of them are open at once. The \
             figure is each answer's time from the request to its last event **less its \
             scripted pause**: what reading the stream adds, with every other stream open.",
        ),
        (
            "burst",
            "Saturating burst (reported)",
            Pace::Burst,
            "All start at once and ask again as soon as an answer ends, so the two cores run \
             flat out and an answer's time is mostly its wait behind the others: the p99 is \
             close to the round's length, and it grows with the CPU each path spends.",
        ),
    ] {
        if !pace_wanted(name) {
            continue;
        }
        println!("### {title}\n\n{what}\n");
        println!(
            "| round | path | answers | open at once, mean / most | p50 ms | p99 ms | max ms | wall s | CPU per answer, ms | p99 added by flowbot-llm | load |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for round in 1..=2 {
            let mut rows = Vec::new();
            // The second round runs the paths in the reverse order.
            let order: Vec<Path> = if round % 2 == 0 {
                paths.iter().rev().copied().collect()
            } else {
                paths.clone()
            };
            for path in order {
                let r = concurrent_round(
                    path,
                    streams,
                    per,
                    pace,
                    model.clone(),
                    client.clone(),
                    &url,
                )
                .await?;
                rows.push((path, r));
            }
            rows.sort_by_key(|(p, _)| paths.iter().position(|q| q == p));
            let p99_of = |p: Path| {
                rows.iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, r)| ms(pct(&r.samples, 0.99)))
            };
            let llm = p99_of(Path::Llm);
            for (path, r) in &rows {
                let added = match (path, llm) {
                    (Path::Llm, Some(l)) => [("no JSON", Parse::Count), ("Value", Parse::Value)]
                        .iter()
                        .filter_map(|(n, p)| {
                            p99_of(Path::Bare(*p)).map(|b| format!("{:+.2} ms vs {n}", l - b))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => "—".into(),
                };
                println!(
                    "| {round} | {} | {} | {:.0} / {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {added} | {} |",
                    path.label(),
                    r.samples.len(),
                    r.open.0,
                    r.open.1,
                    ms(pct(&r.samples, 0.5)),
                    ms(pct(&r.samples, 0.99)),
                    ms(r.samples.last().copied().unwrap_or_default()),
                    r.wall.as_secs_f64(),
                    ms(r.cpu_per_answer),
                    r.load
                );
            }
        }
        println!();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Memory per open stream (child processes)
// ---------------------------------------------------------------------------------------

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Open a stream and read it up to its first text delta; the stream, still open.
enum Held {
    Bare(#[allow(dead_code)] BareSse),
    Llm(#[allow(dead_code)] flowbot_core::llm::ChatStream),
}

async fn open_to_first_token(
    llm: bool,
    model: &dyn ChatModel,
    client: &reqwest::Client,
    url: &str,
) -> Result<Held, String> {
    if llm {
        let mut s = model.stream(&request()).await.map_err(|e| e.to_string())?;
        while let Some(e) = s.next().await {
            if let StreamEvent::TextDelta { .. } = e.map_err(|e| e.to_string())? {
                return Ok(Held::Llm(s));
            }
        }
        Err("the stream ended before its first text".into())
    } else {
        let mut s = bare_open(client, url, &bare_body()).await?;
        while let Some(e) = s.next().await {
            let e = e.map_err(|e| e.to_string())?;
            if let Some(data) = e.data
                && data != "[DONE]"
            {
                let v: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
                if v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .is_some_and(|t| !t.is_empty())
                {
                    return Ok(Held::Bare(s));
                }
            }
        }
        Err("the stream ended before its first text".into())
    }
}

/// The child: `--memory-child <llm|bare> <base url> <streams>`. Prints `before open` (KiB).
async fn memory_child(args: &[String]) -> Result<(), String> {
    let [variant, base, n] = args else {
        return Err("usage: --memory-child <llm|bare> <base url> <streams>".into());
    };
    let llm = match variant.as_str() {
        "llm" => true,
        "bare" => false,
        other => return Err(format!("unknown variant '{other}'")),
    };
    let n: usize = n
        .parse()
        .map_err(|_| format!("streams '{n}' is not a number"))?;
    let model = flowbot_llm::connect(&config_at(base)).map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let url: Arc<str> = format!("{base}/chat/completions").into();
    // Warm-up: a few streams opened and dropped, so the runtime, the client and the allocator
    // are set up before the first reading.
    for _ in 0..8 {
        drop(open_to_first_token(llm, model.as_ref(), &client, &url).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (model, client, url) = (model.clone(), client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            open_to_first_token(llm, model.as_ref(), &client, &url).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await.map_err(|e| e.to_string())??);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open = rss_kib();
    println!("{before} {open} {}", held.len());
    drop(held);
    Ok(())
}

async fn memory(streams: usize, answer_chunks: usize) -> Result<(), String> {
    let fake = FakeProvider::start().await.map_err(|e| e.to_string())?;
    // Where to stall: a little into the third event (role chunk, first text chunk, …).
    fake.push(Turn::Reply(reply(answer_chunks)));
    let sample = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", fake.addr()))
        .bearer_auth(FAKE_KEY)
        .json(&bare_body())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let second_end = sample
        .match_indices("\n\n")
        .nth(1)
        .map(|(i, _)| i + 2)
        .ok_or("the sample answer has fewer than two events")?;
    let after_bytes = second_end + 20;
    let answer = reply(answer_chunks);
    fake.respond_with(move |_| Turn::Stall {
        reply: answer.clone(),
        after_bytes,
        pause: Duration::from_secs(20),
    });
    let base = format!("http://{}/v1", fake.addr());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for variant in ["bare", "llm", "bare", "llm"] {
        let (exe, base) = (exe.clone(), base.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(exe)
                .args([
                    "llm",
                    "--memory-child",
                    variant,
                    &base,
                    &streams.to_string(),
                ])
                .output()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("starting the memory child: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = stdout
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [before, open, held] = nums[..] else {
            return Err(format!(
                "memory child ({variant}) failed: {}{}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        };
        rows.push((variant, before, open, held));
    }
    println!("## Memory per open stream\n");
    println!(
        "A child process opens {streams} streams to the fake provider (in the parent process), \
         reads each to its first text delta and holds it, the answer stalled {after_bytes} bytes \
         in (the fake's `Turn::Stall`); `VmRSS` after a warm-up of 8 streams and while all \
         {streams} are open. The fake's own memory is in the parent, not in these figures.\n"
    );
    println!(
        "| client | RSS before, KiB | RSS with the streams open, KiB | streams | per stream, KiB |"
    );
    println!("|---|---|---|---|---|");
    let mut per = [Vec::new(), Vec::new()];
    for (variant, before, open, held) in &rows {
        let each = open.saturating_sub(*before) as f64 / (*held).max(1) as f64;
        per[usize::from(*variant == "llm")].push(each);
        let name = if *variant == "llm" {
            "flowbot-llm (`ChatStream`)"
        } else {
            "bare reqwest + sse-stream"
        };
        println!("| {name} | {before} | {open} | {held} | {each:.1} |");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let bare = mean(&per[0]);
    let llm = mean(&per[1]);
    println!(
        "\nflowbot-llm {llm:.1} KiB per open stream, the bare loop {bare:.1} KiB: flowbot-llm's \
         own share {:.1} KiB.\n",
        llm - bare
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A durable run's checkpoint
// ---------------------------------------------------------------------------------------

/// A run after its second tool call: system prompt, an earlier exchange, the question, the
/// model's turn with two parallel calls and both results.
fn sample_run() -> Result<RunState, String> {
    let calls = vec![
        ToolCall {
            id: "call_Xk2PqL8vR3tY7wZ1".into(),
            name: "weather_forecast".into(),
            arguments: r#"{"city":"Paris","country":"FR","date":"2026-12-06","units":"metric"}"#
                .into(),
        },
        ToolCall {
            id: "call_Mn4BcV6xJ9sD2fG5".into(),
            name: "calendar_events".into(),
            arguments:
                r#"{"user":"ada","from":"2026-12-06T00:00:00Z","to":"2026-12-06T23:59:59Z"}"#.into(),
        },
    ];
    let results = vec![
        ToolResult {
            call_id: calls[0].id.clone(),
            name: calls[0].name.clone(),
            content: r#"{"city":"Paris","date":"2026-12-06","min_c":4,"max_c":9,"summary":"light rain after noon","precipitation_mm":3.2,"wind_kmh":18}"#.into(),
            is_error: false,
        },
        ToolResult {
            call_id: calls[1].id.clone(),
            name: calls[1].name.clone(),
            content: r#"[{"title":"Team lunch","start":"2026-12-06T12:30:00Z","place":"Le Petit Bistro, terrace"},{"title":"Museum visit","start":"2026-12-06T15:00:00Z","place":"Musée d'Orsay"}]"#.into(),
            is_error: false,
        },
    ];
    let now = chrono::Utc::now();
    let mut records = std::collections::BTreeMap::new();
    for (call, result) in calls.iter().zip(&results) {
        records.insert(
            call.id.clone(),
            CallRecord {
                call: call.clone(),
                result: Some(result.clone()),
                approved: None,
                finished_at: Some(now),
            },
        );
    }
    let mut messages = vec![
        ChatMessage::system(
            "You are a helpful assistant in a chat. Answer briefly. Use the tools to look up \
             the weather and the user's calendar; never guess either. Today is 2026-12-05.",
        ),
        ChatMessage::user("Hi! Can you help me plan tomorrow?"),
        ChatMessage::assistant("Of course. What would you like to plan?"),
        ChatMessage::user("Will it rain in Paris tomorrow, and does that clash with my plans?"),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: calls,
        },
    ];
    messages.extend(results.into_iter().map(ChatMessage::Tool));
    // Built from its JSON form, as a checkpoint is read back: fields added to `RunState`
    // later with a default keep this benchmark building.
    let usage = Usage {
        input_tokens: 412,
        output_tokens: 58,
        total_tokens: Some(470),
        cached_input_tokens: Some(0),
        cache_creation_input_tokens: None,
        reasoning_tokens: None,
    };
    let run = json!({
        "id": "0193a4f2-7c1e-7b3a-9f4d-2e8c5a1b6d70",
        "status": RunStatus::Running,
        "model": "default",
        "channel": "web",
        "conversation": "c-4821",
        "user": "ada",
        "messages": messages,
        "calls": records,
        "turns": 1,
        "failed_calls": 0,
        "usage": usage,
        "cost_micros": 93,
        "answer": "",
        "created_at": now,
        "updated_at": now,
    });
    serde_json::from_value(run).map_err(|e| format!("the sample run: {e}"))
}

struct Checkpoints {
    save: Vec<Duration>,
    kv: Vec<Duration>,
    bytes: usize,
    load: String,
}

/// `n` checkpoints of one run and `n` bare `kv_set`s, alternating, after a warm-up.
async fn checkpoints(store: Arc<dyn Store>, n: usize) -> Result<Checkpoints, String> {
    let runs = Runs::new(Some(store.clone()));
    let mut run = sample_run()?;
    let bytes = serde_json::to_vec(&run).map_err(|e| e.to_string())?.len();
    let warmup = (n / 10).max(50);
    let mut save = Vec::with_capacity(n);
    let mut kv = Vec::with_capacity(n);
    let mut cpu = Cpu::now();
    for i in 0..warmup + n {
        if i == warmup {
            cpu = Cpu::now();
        }
        run.turns = u32::try_from(i % 50).unwrap_or(0) + 1;
        let t = Instant::now();
        runs.save(&mut run)
            .await
            .map_err(|e| format!("Runs::save: {e}"))?;
        let s = t.elapsed();
        let t = Instant::now();
        store
            .kv_set("bench.kv", "small", &json!({ "n": i }))
            .await
            .map_err(|e| format!("kv_set: {e}"))?;
        let k = t.elapsed();
        if i >= warmup {
            save.push(s);
            kv.push(k);
        }
    }
    let load = cpu.other();
    // The checkpoint reads back as it was written.
    let back = runs
        .load(&run.id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the run was not stored")?;
    if back != run {
        return Err("the run read back differs from the one saved".into());
    }
    save.sort_unstable();
    kv.sort_unstable();
    Ok(Checkpoints {
        save,
        kv,
        bytes,
        load,
    })
}

async fn checkpoint(n: usize) -> Result<(), String> {
    let mut rows = Vec::new();
    {
        let dir = crate::TempDir::new("llm-runs");
        let store = SqliteStore::open_in_dir(&dir.0)
            .await
            .map_err(|e| format!("sqlite: {e}"))?;
        rows.push((
            "SQLite (temporary file)",
            checkpoints(Arc::new(store), n).await?,
        ));
    }
    let pg = std::env::var("FLOWBOT_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("FLOWBOT_TEST_POSTGRES_URL"))
        .ok()
        .filter(|u| !u.is_empty());
    match &pg {
        Some(url) => {
            let schema = format!("bench_llm_runs_{}", std::process::id());
            let store = PostgresStore::connect_with(
                PostgresOptions::new(url.clone()).schema(schema.clone()),
            )
            .await
            .map_err(|e| format!("postgres: {e}"))?;
            let result = checkpoints(Arc::new(store.clone()), n).await;
            store.pool().close().await;
            drop(store);
            let admin = PostgresStore::connect(url)
                .await
                .map_err(|e| format!("postgres: {e}"))?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(admin.pool())
            .await
            .map_err(|e| format!("dropping schema {schema}: {e}"))?;
            admin.pool().close().await;
            rows.push(("PostgreSQL (fresh schema)", result?));
        }
        None => eprintln!("FLOWBOT_BENCH_POSTGRES_URL not set: the PostgreSQL row is skipped"),
    }
    println!("## A durable run's checkpoint\n");
    println!(
        "`Runs::save` of one run after its second tool call (system prompt, an earlier \
         exchange, the question, the model's turn with two parallel calls, both results, the \
         two call records; {} bytes of JSON), {n} times, alternating with a bare `kv_set` of \
         `{{\"n\": i}}` on the same store (the baseline), after a warm-up.\n",
        rows.first().map_or(0, |(_, c)| c.bytes)
    );
    println!(
        "| store | bare kv_set p50 / p99 ms | Runs::save p50 / p99 ms | save ÷ kv_set (p50) | load |"
    );
    println!("|---|---|---|---|---|");
    for (name, c) in &rows {
        println!(
            "| {name} | {:.3} / {:.3} | {:.3} / {:.3} | {:.2}× | {} |",
            ms(pct(&c.kv, 0.5)),
            ms(pct(&c.kv, 0.99)),
            ms(pct(&c.save, 0.5)),
            ms(pct(&c.save, 0.99)),
            pct(&c.save, 0.5).as_secs_f64() / pct(&c.kv, 0.5).as_secs_f64().max(1e-9),
            c.load
        );
    }
    println!();
    Ok(())
}
