//! `flowbot-load`: the release `flowbot-server` binary under HTTP and WebSocket load, as a
//! child process of this tool, with a Markdown report on stdout (progress on stderr).
//!
//! ```text
//! benches/load.sh                                   # builds, raises `ulimit -n`, runs this
//! FLOWBOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test benches/load.sh
//! ```
//!
//! What it measures, each phase on a freshly started server:
//!
//! 1. **Ingestion**: `POST /hooks/webhook/bench` (202 once durably stored) requests/s next to
//!    `GET /healthz` requests/s on the same process, on SQLite and (when
//!    `FLOWBOT_BENCH_POSTGRES_URL` is set) on PostgreSQL, from a fixed number of keep-alive
//!    connections for a fixed time after a warm-up. Only 2xx answers count; everything else is
//!    reported as errors. The task backlog the webhooks leave is then drained (the embedded
//!    workers run during the measurement, as in production).
//! 2. **Web chat round trip**: many WebSocket sessions open at once, each sending `/echo`
//!    messages at a fixed pace; the time from sending to the bot's `message` frame.
//! 3. **Memory**: the server's `VmRSS` idle after start and with many idle WebSocket sessions,
//!    opened in batches, closed, and opened again (to see whether memory is reused).
//! 4. **Admin API credentials**: `GET /api/v1/rules` without a credential on an open loopback
//!    server, with an API key and with a JWT on a server that requires them (and on a build
//!    from before the security work, `--baseline-bin`, with its webhook ingestion next to
//!    this build's); see `load/auth.rs`.
//!
//! The HTTP load uses a minimal HTTP/1.1 client over `TcpStream` (status line and
//! `Content-Length` only) so the load generator, which shares the machine's cores with the
//! server, spends as little CPU as possible; readiness and metrics go through `reqwest`.
//!
//! Flags: `--connections N` (32), `--warmup SECS` (2), `--duration SECS` (10),
//! `--chat-sessions N` (1000), `--chat-messages N` (5), `--chat-interval-ms MS` (1000),
//! `--idle-sessions N` (10000), `--batch N` (250), `--ingest-cycles N` (1: webhook runs, each
//! followed by a drain, per ingestion server), `--skip-postgres`, `--auth-only` (phase 4
//! alone), `--baseline-bin PATH` (or `FLOWBOT_BASELINE_SERVER_BIN`).
//! Environment: `FLOWBOT_SERVER_BIN` (default: the workspace's `target/release/flowbot-server`),
//! `FLOWBOT_BENCH_DIR` (where SQLite files and server logs go; default: a new temp dir),
//! `FLOWBOT_BENCH_POSTGRES_URL`. On PostgreSQL the server uses its own schema, `flowbot_load`,
//! dropped before and after the run, so other users of the database are not disturbed.
//! All traffic goes to 127.0.0.1.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports on the terminal

#[path = "load/auth.rs"]
mod auth;
#[path = "load/http.rs"]
mod http;
#[path = "load/procfs.rs"]
mod procfs;
#[path = "load/report.rs"]
mod report;
#[path = "load/server.rs"]
mod server;
#[path = "load/ws.rs"]
mod ws;
use auth::*;
use http::*;
use procfs::*;
use report::*;
use server::*;
use ws::*;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The server binary used when `FLOWBOT_SERVER_BIN` is not set.
const DEFAULT_SERVER_BIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/release/flowbot-server"
);

/// Target: durable webhook ingestion at least this fraction of the `/healthz` rate (SQLite).
const TARGET_INGEST_RATIO: f64 = 0.25;
/// Target: web chat round trip p99 below this, at 1,000 sessions.
const TARGET_CHAT_P99: Duration = Duration::from_millis(10);
/// The session count the chat target is stated for.
const TARGET_CHAT_SESSIONS: usize = 1_000;
/// Target: resident memory idle after start, in MB (10^6 bytes).
const TARGET_IDLE_RSS_MB: f64 = 40.0;
/// Target: resident memory with [`TARGET_IDLE_SESSIONS`] idle sessions, in MB (10^6 bytes).
const TARGET_SESSIONS_RSS_MB: f64 = 300.0;
/// The session count the memory target is stated for.
const TARGET_IDLE_SESSIONS: usize = 10_000;

/// Longest wait for one HTTP answer or one chat reply before it counts as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a server to answer `/readyz` 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the webhook task backlog to drain after the ingestion run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// CPU of other processes (% of one core) above which a SQLite run is flagged as disturbed.
const DISTURBED_CPU: f64 = 20.0;
/// PostgreSQL schema the server uses during the run.
const PG_SCHEMA: &str = "flowbot_load";

/// What to run, from flags and the environment.
#[derive(Debug, Clone)]
struct Settings {
    /// The `flowbot-server` binary.
    server_bin: PathBuf,
    /// Where SQLite databases and server logs go.
    dir: PathBuf,
    /// PostgreSQL for the second ingestion run, if any.
    postgres_url: Option<String>,
    /// Keep-alive HTTP connections of the ingestion runs.
    connections: usize,
    /// Load before the measurement window.
    warmup: Duration,
    /// The measurement window.
    duration: Duration,
    /// WebSocket sessions of the chat run.
    chat_sessions: usize,
    /// Messages each chat session sends.
    chat_messages: usize,
    /// Time between two messages of one chat session.
    chat_interval: Duration,
    /// Idle WebSocket sessions of the memory run.
    idle_sessions: usize,
    /// WebSocket connections opened at once.
    batch: usize,
    /// Webhook runs (each followed by a drain) per ingestion server, to watch memory.
    ingest_cycles: usize,
    /// Run only the admin API credentials phase.
    auth_only: bool,
    /// A server build from before the security work, for the credentials phase's baseline.
    baseline_bin: Option<PathBuf>,
}

impl Settings {
    /// Flags and environment variables; see the crate docs.
    fn from_args() -> Result<Settings, String> {
        let dir = match std::env::var_os("FLOWBOT_BENCH_DIR") {
            Some(d) => PathBuf::from(d),
            None => std::env::temp_dir().join(format!("flowbot-load-{}", std::process::id())),
        };
        let mut s = Settings {
            server_bin: std::env::var_os("FLOWBOT_SERVER_BIN")
                .map_or_else(|| PathBuf::from(DEFAULT_SERVER_BIN), PathBuf::from),
            dir,
            postgres_url: std::env::var("FLOWBOT_BENCH_POSTGRES_URL")
                .ok()
                .filter(|u| !u.is_empty()),
            connections: 32,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            chat_sessions: 1_000,
            chat_messages: 5,
            chat_interval: Duration::from_secs(1),
            idle_sessions: 10_000,
            batch: 250,
            ingest_cycles: 1,
            auth_only: false,
            baseline_bin: std::env::var_os("FLOWBOT_BASELINE_SERVER_BIN").map(PathBuf::from),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--skip-postgres" {
                s.postgres_url = None;
                continue;
            }
            if flag == "--auth-only" {
                s.auth_only = true;
                continue;
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            if flag == "--baseline-bin" {
                s.baseline_bin = Some(PathBuf::from(value));
                continue;
            }
            let n: u64 = value
                .parse()
                .map_err(|_| format!("{flag}: '{value}' is not a whole number"))?;
            let count = usize::try_from(n).map_err(|_| format!("{flag}: {n} is too large"))?;
            match flag.as_str() {
                "--connections" => s.connections = count.max(1),
                "--warmup" => s.warmup = Duration::from_secs(n),
                "--duration" => s.duration = Duration::from_secs(n.max(1)),
                "--chat-sessions" => s.chat_sessions = count.max(1),
                "--chat-messages" => s.chat_messages = count.max(1),
                "--chat-interval-ms" => s.chat_interval = Duration::from_millis(n.max(1)),
                "--idle-sessions" => s.idle_sessions = count,
                "--batch" => s.batch = count.max(1),
                "--ingest-cycles" => s.ingest_cycles = count.max(1),
                other => return Err(format!("unknown flag '{other}'")),
            }
        }
        Ok(s)
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flowbot-load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime can be built");
    match runtime.block_on(Box::pin(run(&settings))) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowbot-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A progress line on stderr.
fn progress(what: &str) {
    eprintln!("[flowbot-load] {what}");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// Drop the benchmark's schema (and everything in it).
async fn drop_pg_schema(url: &str) -> Result<(), String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
    let sql = format!("DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .map_err(|e| format!("dropping schema {PG_SCHEMA}: {e}"))?;
    pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run

/// Everything measured.
struct Results {
    /// Ingestion per backend (or why it could not run).
    ingestion: Vec<Result<Ingestion, String>>,
    /// The chat phase.
    chat: Result<ChatRun, String>,
    /// The memory phase.
    memory: Result<MemoryRun, String>,
    /// The admin API credentials phase.
    auth: Result<AuthRun, String>,
    /// Every server started.
    servers: Vec<ServerSummary>,
    /// Wall time of the whole run.
    secs: f64,
}

/// A SQLite URL for a fresh database in the server's working directory.
fn sqlite_url(s: &Settings, label: &str) -> String {
    format!("sqlite://{}/flowbot.db", s.dir.join(label).display())
}

/// Start a server, wait for it, run `phase` and stop it.
async fn with_server<T>(
    s: &Settings,
    http: &reqwest::Client,
    servers: &mut Vec<ServerSummary>,
    label: &str,
    database_url: &str,
    extra: &[(&str, &str)],
    phase: impl AsyncFnOnce(&mut Server) -> T,
) -> Result<T, String> {
    progress(&format!("{label}: starting {}", s.server_bin.display()));
    let mut server = Server::spawn(s, label, database_url, extra)?;
    let ready = match server.wait_ready(http).await {
        Ok(d) => d,
        Err(e) => {
            servers.push(server.stop(http, database_url).await);
            return Err(e);
        }
    };
    progress(&format!("{label}: ready in {:.2} s", ready.as_secs_f64()));
    let out = phase(&mut server).await;
    servers.push(server.stop(http, database_url).await);
    Ok(out)
}

/// Run every phase and build the report.
async fn run(s: &Settings) -> Result<String, String> {
    if !s.server_bin.is_file() {
        return Err(format!(
            "no server binary at {} (build it with `cargo build --release -p flowbot-server`, or set FLOWBOT_SERVER_BIN)",
            s.server_bin.display()
        ));
    }
    std::fs::create_dir_all(&s.dir).map_err(|e| format!("creating {}: {e}", s.dir.display()))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let started = Instant::now();
    let mut servers = Vec::new();
    if s.auth_only {
        let auth = Box::pin(auth_phase(s, &http, &mut servers)).await;
        let mut out = String::new();
        auth_report(&mut out, &auth);
        return Ok(out);
    }
    let mut ingestions = Vec::new();

    let url = sqlite_url(s, "sqlite-ingest");
    ingestions.push(
        with_server(
            s,
            &http,
            &mut servers,
            "sqlite-ingest",
            &url,
            &[],
            async |srv| {
                tokio::time::sleep(Duration::from_secs(1)).await;
                srv.record_rss("idle after start");
                Box::pin(ingestion(s, &http, srv, "SQLite", false)).await
            },
        )
        .await,
    );

    // Diagnostic: the same without embedded workers, to separate the cost of storing from
    // that of processing at the same time.
    let url = sqlite_url(s, "sqlite-ingest-no-workers");
    ingestions.push(
        with_server(
            s,
            &http,
            &mut servers,
            "sqlite-ingest-no-workers",
            &url,
            &[("FLOWBOT_SERVER__AGENT", "false")],
            async |srv| {
                tokio::time::sleep(Duration::from_secs(1)).await;
                srv.record_rss("idle after start");
                Box::pin(ingestion(s, &http, srv, "SQLite, no workers", true)).await
            },
        )
        .await,
    );

    if let Some(pg) = &s.postgres_url {
        let result = match drop_pg_schema(pg).await {
            Ok(()) => {
                let r = with_server(
                    s,
                    &http,
                    &mut servers,
                    "postgres-ingest",
                    pg,
                    &[("FLOWBOT_DATABASE__SCHEMA", PG_SCHEMA)],
                    async |srv| {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        srv.record_rss("idle after start");
                        Box::pin(ingestion(s, &http, srv, "PostgreSQL", false)).await
                    },
                )
                .await;
                if let Err(e) = drop_pg_schema(pg).await {
                    progress(&format!("cleaning up: {e}"));
                }
                r
            }
            Err(e) => Err(e),
        };
        ingestions.push(result);
    }

    let url = sqlite_url(s, "sqlite-chat");
    let chat = with_server(
        s,
        &http,
        &mut servers,
        "sqlite-chat",
        &url,
        &[],
        async |srv| {
            tokio::time::sleep(Duration::from_secs(1)).await;
            srv.record_rss("idle after start");
            Box::pin(chat(s, srv)).await
        },
    )
    .await;

    let url = sqlite_url(s, "sqlite-memory");
    let memory = with_server(
        s,
        &http,
        &mut servers,
        "sqlite-memory",
        &url,
        &[],
        async |srv| Box::pin(memory(s, srv)).await,
    )
    .await;

    let auth = Box::pin(auth_phase(s, &http, &mut servers)).await;

    let results = Results {
        ingestion: ingestions,
        chat,
        memory,
        auth,
        servers,
        secs: started.elapsed().as_secs_f64(),
    };
    Ok(report(s, &results))
}
