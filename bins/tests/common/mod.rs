//! Helpers shared by the server's integration tests.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)] // helpers; skip notices go to the terminal

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use flowbot_channels::webhook::{Callback, SIGNATURE_HEADER, verify};
use serde_json::{Value, json};

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replies received by a callback receiver, with whether their signature checked.
pub type Received = Arc<Mutex<Vec<(Callback, bool)>>>;

/// A webhook callback receiver on 127.0.0.1. `delay_ms` slows every answer down (settable
/// while running); `secret` checks signatures.
pub async fn callback_receiver(secret: Option<&'static str>) -> (String, Received, Arc<AtomicU64>) {
    let seen: Received = Arc::default();
    let delay = Arc::new(AtomicU64::new(0));
    let (s, d) = (seen.clone(), delay.clone());
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
                let ok = match secret {
                    Some(secret) => verify(
                        secret,
                        sig,
                        &body,
                        chrono::Utc::now().timestamp(),
                        Duration::from_secs(60),
                    )
                    .is_ok(),
                    None => true,
                };
                let cb: Callback = serde_json::from_slice(&body).expect("callback JSON");
                s.lock().expect("lock").push((cb, ok));
                tokio::time::sleep(Duration::from_millis(d.load(Ordering::Relaxed))).await;
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/cb"), seen, delay)
}

/// An address nothing listens on: port 1 is privileged and no test binds it (ports the
/// system hands out for port 0 are far above it), so a connection there is refused.
pub const REFUSED: &str = "127.0.0.1:1";

/// `flowbot-server` as a child process (see [`spawn`]) listening on a port the system picks
/// (`127.0.0.1:0`, unless `env` sets `FLOWBOT_SERVER__LISTEN`), and its base URL, read from
/// the address file it writes once it listens (`server.address_file`, beside `log`). No port
/// is chosen beforehand, so no other process can take it in between.
pub async fn spawn_server(
    args: &[&str],
    env: &[(String, String)],
    log: &std::path::Path,
) -> (tokio::process::Child, String) {
    let file = log.with_extension("addr");
    let _ = std::fs::remove_file(&file);
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| k == "FLOWBOT_SERVER__LISTEN") {
        env.push(kv("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0"));
    }
    env.push(kv(
        "FLOWBOT_SERVER__ADDRESS_FILE",
        file.display().to_string(),
    ));
    let mut child = spawn(env!("CARGO_BIN_EXE_flowbot-server"), args, &env, log);
    let base = listening_at(&mut child, &file, log).await;
    (child, base)
}

/// The base URL a server `child` writes to its address `file` once it listens; the test
/// fails, showing `log`, when the child exits first or takes over a minute.
pub async fn listening_at(
    child: &mut tokio::process::Child,
    file: &std::path::Path,
    log: &std::path::Path,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Some(base) = text.lines().next()
        {
            // A server on every address (0.0.0.0) is reached on loopback.
            return base.replace("://0.0.0.0:", "://127.0.0.1:");
        }
        let exited = child.try_wait().expect("child status");
        assert!(
            exited.is_none() && tokio::time::Instant::now() < deadline,
            "the server did not start listening ({exited:?}); its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A FlowBot binary as a child process, killed when dropped; its stderr goes to `log`.
pub fn spawn(
    bin: &str,
    args: &[&str],
    env: &[(String, String)],
    log: &std::path::Path,
) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("log file");
    tokio::process::Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLOWBOT_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn binary")
}

/// Wait until `base/readyz` answers 200.
pub async fn wait_ready(base: &str, log: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server at {base} not ready; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait up to 20 s until `find` gives something; else fail, saying `what` and what `seen`
/// shows by then.
pub async fn found<T, S: std::fmt::Debug>(
    what: &str,
    mut find: impl FnMut() -> Option<T>,
    seen: impl Fn() -> S,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = find() {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; seen: {:?}",
            seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's `/metrics` text.
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Wait until `check` holds, or fail with `what`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The PostgreSQL URL for tests: required with CI=true, else a skip notice.
pub fn postgres_url() -> Option<String> {
    match std::env::var("FLOWBOT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!(
                "CI=true but FLOWBOT_TEST_POSTGRES_URL is not set: the distributed test must run in CI"
            )
        }
        _ => {
            eprintln!("SKIPPED: PostgreSQL test (set FLOWBOT_TEST_POSTGRES_URL to run it)");
            None
        }
    }
}

/// `flowbot-server` processes named `names` on PostgreSQL (`url`, in `schema`), with fast
/// worker polling and 2 s task leases, and the settings in `extra`; started one after another
/// (the first migrates the schema; the others join it); by pid. Their logs go to `dir`.
pub async fn start_servers(
    names: &[&'static str],
    dir: &std::path::Path,
    (url, schema): (&str, &str),
    extra: &[(&str, String)],
) -> std::collections::HashMap<u32, (&'static str, tokio::process::Child)> {
    let mut servers = std::collections::HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let env: Vec<(String, String)> = [
            ("FLOWBOT_DATABASE__URL", url.to_owned()),
            ("FLOWBOT_DATABASE__SCHEMA", schema.to_owned()),
            ("FLOWBOT_WORKERS__POLL_INTERVAL_MS", "100".to_owned()),
            ("FLOWBOT_WORKERS__LEASE_SECS", "2".to_owned()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let log = dir.join(format!("{name}.log"));
        let (child, base) = spawn_server(&[], &env, &log).await;
        wait_ready(&base, &log).await;
        servers.insert(child.id().expect("pid"), (*name, child));
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    servers
}

/// The pid holding lease `name` in `schema` and its fencing token, unless it expired (lease
/// owners are `<pid>-<random>`).
pub async fn lease_holder(url: &str, schema: &str, name: &str) -> Option<(u32, i64)> {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .ok()?;
    let row: Option<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT owner, token, expires_at FROM {schema}.flowbot_leases WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(&mut c)
    .await
    .ok()?;
    let (owner, token, expires_at) = row?;
    if expires_at < chrono::Utc::now().timestamp_millis() {
        return None;
    }
    Some((owner.split('-').next()?.parse().ok()?, token))
}

/// Drop a test's PostgreSQL schema (best effort).
pub async fn drop_schema(url: &str, schema: &str) {
    if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut c)
        .await;
    }
}

/// An environment variable for a spawned binary.
pub fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

/// POST a message to the generic webhook channel `channel`.
pub async fn post_hook(base: &str, channel: &str, body: Value) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/hooks/webhook/{channel}"))
        .json(&body)
        .send()
        .await
        .expect("post")
        .status()
}

/// A slow HTTP endpoint that counts its calls (the node the agent is killed in).
pub async fn slow_endpoint() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(move || {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                axum::Json(json!({"call": n}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/slow"), calls)
}

/// GET `url` and its JSON body, whatever the status.
pub async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}
