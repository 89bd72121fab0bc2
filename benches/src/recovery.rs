//! `flowbot-recovery-bench`: how long a message that was in flight when its server was
//! SIGKILLed waits before the restarted server handles it, with the old worker settings and
//! with the new ones, on the release `flowbot-server`.
//!
//! ```text
//! cargo build --release -p flowbot-server -p flowbot-bench --bin flowbot-server --bin flowbot-recovery-bench
//! target/release/flowbot-recovery-bench [--runs N] [--skip-postgres]
//! FLOWBOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test target/release/flowbot-recovery-bench
//! ```
//!
//! Each run: a fresh database; a server (a child process, embedded agent on) gets one webhook
//! message, `/echo`, whose reply goes to a callback receiver in this process that never answers
//! the first delivery, so the message's task is running when the server is killed with SIGKILL
//! the moment that delivery arrives. The server is started again at once with the same
//! settings, and the figure is the time from the SIGKILL to the reply arriving again (the
//! restarted server handled the message): the time to recover. The restart's own part, until
//! `/readyz` answers, is reported next to it.
//!
//! Settings compared, each `--runs` times (default 3), in this order:
//! - **before**: the old defaults, a 30 s lease extended every 10 s, expired leases looked for
//!   every 5 s, no liveness lock (`workers.lease_secs = 30`, `recover_interval_ms = 5000`,
//!   `liveness = false`): the baseline;
//! - **shorter lease**: the new lease default alone (10 s, extended every 3.3 s, looked for
//!   every second, `liveness = false`), what a process on another host sees;
//! - **new default**: the same lease and the liveness lock, which the restarted server finds
//!   free as it starts.
//!
//! SQLite always; PostgreSQL too when `FLOWBOT_BENCH_POSTGRES_URL` is set (schema
//! `flowbot_recovery`, dropped before each run and at the end). The Markdown report goes to
//! stdout, progress to stderr. Environment: `FLOWBOT_SERVER_BIN` (default: the workspace's
//! `target/release/flowbot-server`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports on the terminal

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The server binary used when `FLOWBOT_SERVER_BIN` is not set.
const DEFAULT_SERVER_BIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/release/flowbot-server"
);

/// The PostgreSQL schema of the runs.
const SCHEMA: &str = "flowbot_recovery";

/// One set of worker settings.
struct Setting {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "before: lease 30 s, recovery every 5 s, no liveness lock",
        env: &[
            ("FLOWBOT_WORKERS__LEASE_SECS", "30"),
            ("FLOWBOT_WORKERS__RECOVER_INTERVAL_MS", "5000"),
            ("FLOWBOT_WORKERS__LIVENESS", "false"),
        ],
    },
    Setting {
        name: "shorter lease: 10 s, recovery every 1 s, no liveness lock",
        env: &[
            ("FLOWBOT_WORKERS__LEASE_SECS", "10"),
            ("FLOWBOT_WORKERS__RECOVER_INTERVAL_MS", "1000"),
            ("FLOWBOT_WORKERS__LIVENESS", "false"),
        ],
    },
    Setting {
        name: "new default: lease 10 s and the liveness lock",
        env: &[],
    },
];

/// What the callback receiver saw: reply texts with their arrival times.
#[derive(Default)]
struct Callbacks {
    seen: Mutex<Vec<(String, Instant)>>,
    arrived: Notify,
}

/// A minimal HTTP/1.1 receiver for the webhook channel's replies: it records each POST and
/// answers 204, except the first of each run, which it never answers (the delivery in
/// flight when the server is killed).
async fn callback_receiver(callbacks: Arc<Callbacks>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the callback receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let callbacks = callbacks.clone();
            tokio::spawn(async move {
                loop {
                    let Some(body) = read_request(&mut stream).await else {
                        return;
                    };
                    let text = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["text"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let first = {
                        let mut seen = callbacks.seen.lock().expect("lock");
                        seen.push((text, Instant::now()));
                        seen.len() == 1
                    };
                    callbacks.arrived.notify_waiters();
                    if first {
                        // Hold the connection until the server is gone.
                        let mut sink = [0u8; 64];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                    let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/cb")
}

/// One request's body (headers up to `Content-Length`), or `None` at the end of the stream.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[head_end..head_end + length].to_vec())
}

/// Where one run's server keeps its data, and how it reaches its database.
#[derive(Clone)]
enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

/// Start the server on a port the system picks; its base URL, from the address file it
/// writes once it listens.
async fn spawn_server(bin: &Path, env: &[(String, String)], log: &Path) -> (Child, String) {
    let file = std::fs::File::create(log).expect("log file");
    let address_file = log.with_extension("addr");
    let _ = std::fs::remove_file(&address_file);
    let mut child = Command::new(bin)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0")
        .env("FLOWBOT_SERVER__ADDRESS_FILE", &address_file)
        .env("FLOWBOT_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start flowbot-server");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&address_file)
            && let Some(base) = text.lines().next()
        {
            return (child, base.to_owned());
        }
        let exited = child.try_wait().expect("child status");
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "the server did not start listening ({exited:?}); its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server at {base} not ready; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn drop_schema(url: &str) {
    if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
        )))
        .execute(&mut c)
        .await;
    }
}

/// One kill-and-restart: (time to recover, time until the restarted server was ready).
async fn run_once(
    bin: &Path,
    backend: &Backend,
    setting: &Setting,
    run_dir: &Path,
) -> (Duration, Duration) {
    let callbacks = Arc::new(Callbacks::default());
    let callback = callback_receiver(callbacks.clone()).await;
    std::fs::create_dir_all(run_dir).expect("run dir");
    let mut env: Vec<(String, String)> = vec![
        ("FLOWBOT_WORKERS__POLL_INTERVAL_MS".into(), "100".into()),
        ("FLOWBOT_WEBHOOKS__HOOK__CALLBACK_URL".into(), callback),
    ];
    match backend {
        Backend::Sqlite => env.push((
            "FLOWBOT_DATABASE__URL".into(),
            format!("sqlite://{}/flowbot.db", run_dir.display()),
        )),
        Backend::Postgres(url) => {
            drop_schema(url).await;
            env.push(("FLOWBOT_DATABASE__URL".into(), url.clone()));
            env.push(("FLOWBOT_DATABASE__SCHEMA".into(), SCHEMA.into()));
        }
    }
    env.extend(
        setting
            .env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let http = reqwest::Client::new();
    let log = run_dir.join("first.log");
    let (mut first, base) = spawn_server(bin, &env, &log).await;
    wait_ready(&http, &base, &log).await;

    let arrived = callbacks.arrived.notified();
    tokio::pin!(arrived);
    arrived.as_mut().enable();
    let status = http
        .post(format!("{base}/hooks/webhook/hook"))
        .json(&serde_json::json!({"user": "u", "conversation": "c", "text": "/echo in flight"}))
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status.as_u16(), 202, "webhook accepted");
    tokio::time::timeout(Duration::from_secs(30), arrived)
        .await
        .expect("the first delivery arrives");

    // The reply is on its way (its task running): kill the server now.
    first.kill().expect("SIGKILL");
    let killed = Instant::now();
    first.wait().expect("reaped");
    let log = run_dir.join("second.log");
    let (mut second, base) = spawn_server(bin, &env, &log).await;
    wait_ready(&http, &base, &log).await;
    let ready = killed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let recovered = loop {
        let arrived = callbacks.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if let Some((_, at)) = callbacks.seen.lock().expect("lock").get(1) {
            break at.duration_since(killed);
        }
        assert!(
            Instant::now() < deadline,
            "the message was never handled again"
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), arrived).await;
    };
    // A graceful stop, so the server removes its liveness lock.
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ = second.wait();
    (recovered, ready)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut runs = 3usize;
    let mut skip_postgres = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => runs = n,
                _ => {
                    eprintln!("--runs needs a number above zero");
                    return ExitCode::from(2);
                }
            },
            "--skip-postgres" => skip_postgres = true,
            other => {
                eprintln!("unknown argument '{other}'; flags: --runs N, --skip-postgres");
                return ExitCode::from(2);
            }
        }
    }
    let bin = std::env::var_os("FLOWBOT_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER_BIN));
    if !bin.exists() {
        eprintln!(
            "{} not found: build it with cargo build --release -p flowbot-server",
            bin.display()
        );
        return ExitCode::from(2);
    }
    let dir = std::env::temp_dir().join(format!("flowbot-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut backends = vec![Backend::Sqlite];
    match std::env::var("FLOWBOT_BENCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() && !skip_postgres => backends.push(Backend::Postgres(url)),
        _ => {}
    }

    println!("## Recovery after SIGKILL ({runs} runs per setting)\n");
    println!(
        "| database | setting | time to recover, median (min–max) | restart until ready, median | vs before |"
    );
    println!("|---|---|---|---|---|");
    for backend in &backends {
        let mut baseline = None;
        for (i, setting) in SETTINGS.iter().enumerate() {
            let mut recovered = Vec::new();
            let mut ready = Vec::new();
            for run in 0..runs {
                let run_dir = dir.join(format!("{}-{i}-{run}", backend.label()));
                let (r, s) = run_once(&bin, backend, setting, &run_dir).await;
                eprintln!(
                    "{} · {} · run {}: recovered after {}, ready after {}",
                    backend.label(),
                    setting.name,
                    run + 1,
                    secs(r),
                    secs(s)
                );
                recovered.push(r);
                ready.push(s);
            }
            let (lo, hi) = (
                *recovered.iter().min().expect("runs"),
                *recovered.iter().max().expect("runs"),
            );
            let med = median(recovered);
            let base = *baseline.get_or_insert(med);
            println!(
                "| {} | {} | {} ({}–{}) | {} | {:.3}× |",
                backend.label(),
                setting.name,
                secs(med),
                secs(lo),
                secs(hi),
                secs(median(ready)),
                med.as_secs_f64() / base.as_secs_f64()
            );
        }
        if let Backend::Postgres(url) = backend {
            drop_schema(url).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}
